package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs the whole demo in-process and checks its timeline.
func TestDemo(t *testing.T) {
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"demo", "--log-level", "off"}, &stdout, &stderr)
	out := stdout.String()
	if code != exitOK {
		t.Fatalf("demo exited %d after %s\nstdout:\n%s\nstderr:\n%s", code, time.Since(start), out, stderr.String())
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("demo took %s, want under 30s", time.Since(start))
	}
	for _, want := range []string{
		`bootstrap window opened \(2s\)`,
		`leader elected: node-\d \(12D3…\w{4}\)`,
		`cluster formed [\d.]+s after the window opened: voters \[node-1 node-2 node-3\], leader node-\d`,
		`write demo/key-3="value-3" committed by node-\d .* present on all 3 running members`,
		`new leader elected: node-\d .*failover took [\d.]+s`,
		`node-\d is back as a follower of node-\d and caught up`,
		`late node joined: node-4 is a voter .* voters now \[node-1 node-2 node-3 node-4\]`,
		`present on all 4 running members`,
		`all clusters and nodes closed, temporary files removed`,
		`(?m)^summary:$`,
		`failover +[\d.]+s`,
		`writes checked +5,`,
		`(?m)^demo ok$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
	t.Logf("demo took %s", time.Since(start).Round(time.Millisecond))
}

// TestUsageErrors checks that bad input exits with code 2 and exactly one
// line on stderr that points at --help, and nothing on stdout.
func TestUsageErrors(t *testing.T) {
	const member = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHaWctUZCzG1qoDwTRtmuYhoeBAHURqV2T3bUEFx6wvm7"
	for _, args := range [][]string{
		{"bogus"},
		{"kv"},
		{"kv", "get"},
		{"kv", "get", "a", "b", "--peer", member},
		{"kv", "set", "only-key", "--peer", member},
		{"kv", "get", "k"}, // no --peer
		{"kv", "get", "k", "--peer", "/ip4/127.0.0.1/tcp/1"},
		{"kv", "get", "k", "--peer", "not-a-multiaddr"},
		{"kv", "get", "", "--peer", member},
		{"kv", "get", "k", "--barrier", "-1s", "--peer", member},
		{"kv", "get", "k", "--barrier", "soon", "--peer", member},
		{"kv", "get", "k", "--namespace", "/nope", "--peer", member},
		{"kv", "keys", "a", "b", "--peer", member},
		{"kv", "delete", "--peer", member},
		{"kv", "--bogus"},
		{"kv", "set", "k", "v", "--key-file", "/does/not/exist", "--peer", member},
		{"node"},
		{"node", "--data", "x", "--preset", "fast"},
		{"node", "--data", "x", "--namespace", "raft/x"},
		{"node", "--data", "x", "--bootstrap", "/ip4/127.0.0.1/tcp/1"},
		{"demo", "--nodes", "2"},
		{"demo", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), args, &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d (stderr %q)", code, exitUsage, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasSuffix(msg, "\n") {
				t.Errorf("stderr is not exactly one line: %q", msg)
			}
			if !strings.HasPrefix(msg, "tauraft: ") || !strings.Contains(msg, "--help") {
				t.Errorf("stderr %q lacks the tauraft: prefix or the --help hint", msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
		})
	}
}

// TestUnreachablePeer checks that a runtime failure exits 1 with one line.
func TestUnreachablePeer(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"kv", "get", "k", "--timeout", "2s",
		"--peer", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHaWctUZCzG1qoDwTRtmuYhoeBAHURqV2T3bUEFx6wvm7"}, &stdout, &stderr)
	if code != exitFailure {
		t.Fatalf("exit code %d, want %d (stderr %q)", code, exitFailure, stderr.String())
	}
	if msg := stderr.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "cannot reach any --peer") {
		t.Errorf("stderr %q: want one line about the unreachable peer", msg)
	}
}

// buildBinary builds tauraft into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	bin := filepath.Join(t.TempDir(), "tauraft")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goCmd, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a running "tauraft node".
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{} // closed once the process has exited
	err    error         // Wait's result, set before done is closed
}

func startNode(t *testing.T, bin, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"node"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	// Wait must not hang on output pipes after the process is gone.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr:\n%s", name, p.stdout, name, p.stderr)
		}
	})
	return p
}

// addr waits for the node to print its first address.
func (p *proc) addr(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.stdout.String()))
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "address: "); ok {
				return a
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited early: %v", p.name, p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s printed no address within 15s", p.name)
	return ""
}

// stop sends SIGINT and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Errorf("signal %s: %v", p.name, err)
		return
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s exited with %v", p.name, p.err)
		}
		if !strings.Contains(p.stdout.String(), "stopped") {
			t.Errorf("%s did not report a clean stop", p.name)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not stop within 15s of SIGINT", p.name)
	}
}

// kv runs "tauraft kv ..." and returns its exit code and outputs.
func kv(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"kv"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("run kv %v: %v", args, err)
	return 0, "", ""
}

// TestNodesAndKV starts three "tauraft node" processes with separate data
// directories, the 2nd and 3rd given the 1st as DHT bootstrap peer, and
// checks that they form one cluster that "tauraft kv" can use.
func TestNodesAndKV(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	const ns = "/raft/clitest"
	common := []string{"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s"}
	n1 := startNode(t, bin, "node1", append(common, "--data", filepath.Join(dir, "n1"))...)
	a1 := n1.addr(t)
	n2 := startNode(t, bin, "node2", append(common, "--data", filepath.Join(dir, "n2"), "--bootstrap", a1)...)
	n3 := startNode(t, bin, "node3", append(common, "--data", filepath.Join(dir, "n3"), "--bootstrap", a1)...)
	a2, a3 := n2.addr(t), n3.addr(t)

	// One cluster: every node reports three members.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range []*proc{n1, n2, n3} {
		for !strings.Contains(p.stdout.String(), "members: 3:") {
			if time.Now().After(deadline) {
				t.Fatalf("%s never saw 3 members", p.name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// A write through node3 (retried while a leader is being elected), then
	// a linearizable read through node2.
	for {
		code, _, stderr := kv(t, bin, "--namespace", ns, "--peer", a3, "--timeout", "5s", "set", "greeting", "hello world")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv set kept failing: exit %d: %s", code, stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a2, "get", "--barrier", "3s", "greeting"); code != 0 || out != "hello world\n" {
		t.Fatalf("kv get: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a1, "keys", "greet"); code != 0 || out != "greeting\n" {
		t.Fatalf("kv keys: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, _, stderr := kv(t, bin, "--namespace", ns, "--peer", a1, "delete", "greeting"); code != 0 {
		t.Fatalf("kv delete: exit %d, stderr %q", code, stderr)
	}
	code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a2, "get", "--barrier", "3s", "greeting")
	if code != exitNotFound || out != "" || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("kv get of a deleted key: exit %d, stdout %q, stderr %q; want exit 3 and one line", code, out, stderr)
	}
	if code, _, stderr := kv(t, bin, "get"); code != exitUsage || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("kv get without a key: exit %d, stderr %q; want exit 2 and one line", code, stderr)
	}

	for _, p := range []*proc{n3, n2, n1} {
		p.stop(t)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		for _, f := range []string{"identity.key", "datastore", "snapshots"} {
			if _, err := os.Stat(filepath.Join(dir, n, f)); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
	}
}

var _ io.Writer = (*syncBuffer)(nil)
