package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runLock runs "tauraft lock ..." for at most 60s and returns its exit code
// and outputs.
func runLock(ctx context.Context, bin string, args ...string) (code int, stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"lock"}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, outBuf.String(), errBuf.String(), nil
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), outBuf.String(), errBuf.String(), nil
	}
	return -1, outBuf.String(), errBuf.String(), err
}

// "tauraft lock NAME -- CMD": CMD runs with the token and the lock key in
// its environment and its exit status comes back; while it runs the lock is
// held (--try: exit 4); after it, the lock is free and the next token is
// higher; when the lock is lost (its key deleted) CMD is stopped, with
// SIGKILL if it ignores SIGTERM, and tauraft lock exits 1.
func TestLockCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	const ns = "/raft/clilock"
	n1 := startNode(t, bin, "node1", "--namespace", ns, "--preset", "local", "--bootstrap-timeout", "1s",
		"--data", filepath.Join(t.TempDir(), "n1"))
	a1 := n1.addr(t)
	common := []string{"--namespace", ns, "--peer", a1, "--timeout", "5s"}
	lockArgs := func(extra ...string) []string { return append(append([]string{}, common...), extra...) }

	// CMD's status and environment; retried while the node elects itself.
	var code int
	var out, stderr string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		code, out, stderr, err = runLock(context.Background(), bin, lockArgs("job", "--", "sh", "-c", `echo "$TAURAFT_FENCE $TAURAFT_LOCK_KEY"; exit 3`)...)
		if err != nil {
			t.Fatal(err)
		}
		if code == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	fields := strings.Fields(out)
	if code != 3 || len(fields) != 2 || fields[1] != "_tauraft/lock/h/job" {
		t.Fatalf("lock -- sh: exit %d, stdout %q, stderr %q; want exit 3 and the token and key", code, out, stderr)
	}
	first, err := strconv.ParseUint(fields[0], 10, 64)
	if err != nil || first == 0 {
		t.Fatalf("token %q", fields[0])
	}

	// Held while CMD runs: --try fails with 4. Then the key is deleted
	// behind the holder's back: CMD, which ignores SIGTERM, is killed after
	// the grace, and tauraft lock exits 1.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		code           int
		stdout, stderr string
		err            error
		took           time.Duration
	}
	held := make(chan result, 1)
	go func() {
		start := time.Now()
		c, o, e, err := runLock(ctx, bin, lockArgs("--ttl", "2s", "--grace", "500ms", "job", "--", "sh", "-c", `trap "" TERM; echo started; sleep 60`)...)
		held <- result{c, o, e, err, time.Since(start)}
	}()
	var token uint64
	deadline = time.Now().Add(20 * time.Second)
	for {
		c, o, _ := kv(t, bin, "--namespace", ns, "--peer", a1, "get", "--entry", "--barrier", "3s", "_tauraft/lock/h/job")
		if c == 0 {
			for _, l := range strings.Split(o, "\n") {
				if v, ok := strings.CutPrefix(l, "create-index "); ok {
					token, _ = strconv.ParseUint(v, 10, 64)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second holder never took the lock")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if token <= first {
		t.Fatalf("second token %d not above the first %d", token, first)
	}
	if c, _, e, err := runLock(context.Background(), bin, lockArgs("--try", "job", "--", "true")...); err != nil || c != exitNotOK {
		t.Fatalf("lock --try while held: exit %d, stderr %q, %v; want 4", c, e, err)
	}
	lostAt := time.Now()
	if c, _, e := kv(t, bin, "--namespace", ns, "--peer", a1, "delete", "_tauraft/lock/h/job"); c != 0 {
		t.Fatalf("kv delete of the lock key: exit %d: %s", c, e)
	}
	select {
	case r := <-held:
		if r.err != nil || r.code != exitFailure || !strings.Contains(r.stderr, "lost") || !strings.Contains(r.stdout, "started") {
			t.Fatalf("holder after its lock was lost: exit %d, stdout %q, stderr %q, %v; want exit 1 saying lost", r.code, r.stdout, r.stderr, r.err)
		}
		if d := time.Since(lostAt); d > 15*time.Second {
			t.Fatalf("holder stopped %v after the loss", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the holder kept running after its lock was lost")
	}

	// Free again: --try succeeds, with a higher token.
	c, o, e, err := runLock(context.Background(), bin, lockArgs("--try", "job", "--", "sh", "-c", `echo "$TAURAFT_FENCE"`)...)
	if err != nil || c != 0 {
		t.Fatalf("lock --try when free: exit %d, stderr %q, %v", c, e, err)
	}
	if last, _ := strconv.ParseUint(strings.TrimSpace(o), 10, 64); last <= token {
		t.Fatalf("token %q after %d", o, token)
	}
	// Usage errors.
	for _, args := range [][]string{
		lockArgs("job"),
		lockArgs("job", "true"),
		lockArgs("--ttl", "1ms", "job", "--", "true"),
		lockArgs("", "--", "true"),
	} {
		if c, _, e, err := runLock(context.Background(), bin, args...); err != nil || c != exitUsage {
			t.Fatalf("lock %q: exit %d, stderr %q, %v; want 2", args, c, e, err)
		}
	}
	n1.stop(t)
}
