package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tauraft/raft"
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
		{"kv", "restore", "--peer", member},
		{"kv", "watch", "--peer", member},
		{"kv", "watch", "a", "--after", "-1", "--peer", member},
		{"kv", "restore", "/does/not/exist", "--peer", member},
		{"kv", "set", "k", "v", "--key-file", "/does/not/exist", "--peer", member},
		{"kv", "get", "k", "--swarm-key-file", "/does/not/exist", "--peer", member},
		{"kv", "get", "k", "--swarm-key-file", "main_test.go", "--peer", member},
		{"node"},
		{"node", "--data", "x", "--preset", "fast"},
		{"node", "--data", "x", "--namespace", "raft/x"},
		{"node", "--data", "x", "--bootstrap", "/ip4/127.0.0.1/tcp/1"},
		{"node", "--data", "x", "--swarm-key-file", "/does/not/exist"},
		{"node", "--data", "x", "--swarm-key-file", "main_test.go"},
		{"node", "--data", "x", "--name", "two words"},
		{"node", "--data", "x", "--name", strings.Repeat("n", 33)},
		{"swarm-key", "extra"},
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

// built is the tauraft binary shared by the tests that start processes: it
// is built once per test binary run, and TestMain removes it.
var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildBinary builds tauraft into a temporary directory, once.
func buildBinary(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "tauraft-test-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "tauraft")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, goCmd, "build", "-o", built.bin, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
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

// kvWatch runs "tauraft kv watch" over the history of the greeting key (one
// set, one delete): it prints one line per change, then exits 0 on SIGINT.
func kvWatch(t *testing.T, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"kv"}, args...)...)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	want := []string{`set "greeting" "hello world"`, `set "greeting" "hello again"`, `delete "greeting"`}
	for _, w := range want {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("kv watch ended early: %s", errBuf.String())
			}
			if _, rest, _ := strings.Cut(line, " "); rest != w {
				t.Fatalf("kv watch printed %q, want INDEX %s", line, w)
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("kv watch printed nothing for 15s: %s", errBuf.String())
		}
	}
	_ = cmd.Process.Signal(os.Interrupt)
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kv watch after SIGINT: %v: %s", err, errBuf.String())
	}
}

// kv runs "tauraft kv ..." and returns its exit code and outputs.
func kv(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	code, stdout, stderr, err := runKV(context.Background(), bin, args...)
	if err != nil {
		t.Fatalf("run kv %v: %v", args, err)
	}
	return code, stdout, stderr
}

// runKV runs "tauraft kv ..." for at most 30s (less if ctx ends first) and
// returns its exit code and outputs. err is set only when the command could
// not be run or was killed; it is safe to call from any goroutine.
func runKV(ctx context.Context, bin string, args ...string) (code int, stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"kv"}, args...)...)
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
	n1 := startNode(t, bin, "node1", append(common, "--data", filepath.Join(dir, "n1"), "--name", "first", "--log-level", "info")...)
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

	checkNodeOutput(t, n1, n2, n3)

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
	// Versions and compare-and-set.
	code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a2, "get", "--entry", "--barrier", "3s", "greeting")
	var create, mod, lease uint64
	if n, _ := fmt.Sscanf(out, "hello world\ncreate-index %d\nmod-index %d\nlease %d\n", &create, &mod, &lease); code != 0 || n != 3 || mod == 0 || create != mod || lease != 0 {
		t.Fatalf("kv get --entry: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a3, "cas", "greeting", "stale", "--mod-index", fmt.Sprint(mod-1)); code != exitNotOK || !strings.HasPrefix(out, "not applied index ") {
		t.Fatalf("kv cas with a stale index: exit %d, stdout %q, stderr %q; want exit 4", code, out, stderr)
	}
	code, out, stderr = kv(t, bin, "--namespace", ns, "--peer", a3, "cas", "greeting", "hello again", "--mod-index", fmt.Sprint(mod))
	var applied uint64
	if n, _ := fmt.Sscanf(out, "applied index %d\n", &applied); code != 0 || n != 1 || applied <= mod {
		t.Fatalf("kv cas: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", a1, "get", "--entry", "--barrier", "3s", "greeting"); code != 0 || out != fmt.Sprintf("hello again\ncreate-index %d\nmod-index %d\nlease 0\n", create, applied) {
		t.Fatalf("kv get --entry after cas: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, _, stderr := kv(t, bin, "--namespace", ns, "--peer", a1, "cas", "greeting", "x"); code != exitUsage {
		t.Fatalf("kv cas without --mod-index: exit %d, stderr %q; want exit 2", code, stderr)
	}
	if code, _, stderr := kv(t, bin, "--namespace", ns, "--peer", a1, "delete", "greeting"); code != 0 {
		t.Fatalf("kv delete: exit %d, stderr %q", code, stderr)
	}
	kvWatch(t, bin, "--namespace", ns, "--peer", a1, "--peer", a2, "watch", "greet", "--after", "0")
	code, out, stderr = kv(t, bin, "--namespace", ns, "--peer", a2, "get", "--barrier", "3s", "greeting")
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

// lines returns the complete lines the node has printed so far; a last line
// still being written is left out.
func (p *proc) lines() []string {
	out := p.stdout.String()
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = out[:i]
	} else {
		return nil
	}
	return strings.Split(out, "\n")
}

// peerID returns the peer ID the node printed at start.
func (p *proc) peerID(t *testing.T) string {
	t.Helper()
	for _, l := range p.lines() {
		if id, ok := strings.CutPrefix(l, "peer ID: "); ok {
			return id
		}
	}
	t.Fatalf("%s printed no peer ID", p.name)
	return ""
}

// last returns what follows "] what: " on the last such status line the node
// printed ("leader", "members", "state"), or "" if there is none yet.
func (p *proc) last(what string) string {
	ls := p.lines()
	for i := len(ls) - 1; i >= 0; i-- {
		if _, v, ok := strings.Cut(ls[i], "] "+what+": "); ok {
			return v
		}
	}
	return ""
}

// member is one "tauraft node" of TestKillLeaderMidWrites across restarts.
type member struct {
	name string
	args []string // the node's command line, reused on restart
	p    *proc
	addr string // full /p2p/ address
	id   string // peer ID
}

// leaderOf returns the index of the member that all of the given members
// currently report as leader (the leader itself with "(self)"), or -1.
func leaderOf(ms []*member, idx []int) int {
	found := -1
	for _, i := range idx {
		v := ms[i].p.last("leader")
		self := strings.HasSuffix(v, " (self)")
		id := strings.TrimSuffix(v, " (self)")
		j := slices.IndexFunc(ms, func(m *member) bool { return m.id == id })
		if j < 0 || (self != (j == i)) || !slices.Contains(idx, j) || (found >= 0 && found != j) {
			return -1
		}
		found = j
	}
	return found
}

// waitLeader waits until the members idx agree on a leader among them.
func waitLeader(t *testing.T, ms []*member, idx []int, deadline time.Time) int {
	t.Helper()
	for {
		if l := leaderOf(ms, idx); l >= 0 {
			return l
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, i := range idx {
				fmt.Fprintf(&b, " %s: leader %q;", ms[i].name, ms[i].p.last("leader"))
			}
			t.Fatalf("members %v agree on no leader among them:%s", idx, b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeListenAddrs returns n loopback TCP multiaddrs on free ports below the
// kernel's ephemeral range, so that no outgoing connection can take one while
// its node is down between a kill and a restart.
func freeListenAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			t.Fatalf("found only %d free ports", len(out))
		}
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		a := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// write is one "tauraft kv set" of the stream in TestKillLeaderMidWrites.
type write struct {
	key, value string
	via        string // name of the member the write was sent to
	code       int    // exit code; -1 if the command could not run
	stderr     string
	start, end time.Time
}

// TestKillLeaderMidWrites starts three "tauraft node" processes on fixed
// loopback ports with separate data directories (the 2nd and 3rd know only the
// 1st, as DHT bootstrap peer), writes through a follower, then runs a stream
// of sequential "tauraft kv set" commands, each sent to a random live member.
// In the middle of the stream the leader process is killed with SIGKILL and
// later restarted from its data directory with the same command line. Every
// write that kv reported as done (exit 0) must then be in every member's
// local replica, the restarted old leader's included.
func TestKillLeaderMidWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	began := time.Now()
	bin := buildBinary(t)
	dir := t.TempDir()
	const (
		ns          = "/raft/killtest"
		writes      = 60
		beforeKill  = 15 // acknowledged writes before the leader is killed
		whileDown   = 5  // acknowledged writes while it is down
		kvTimeout   = "2s"
		wantAckedAt = writes / 2 // at least this many writes must succeed
	)
	deadline := time.Now().Add(45 * time.Second)
	listen := freeListenAddrs(t, 3)
	common := []string{"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s"}

	ms := make([]*member, 3)
	for i := range ms {
		m := &member{name: fmt.Sprintf("node%d", i+1)}
		m.args = append(slices.Clone(common), "--data", filepath.Join(dir, fmt.Sprintf("n%d", i+1)), "--listen", listen[i])
		if i > 0 {
			m.args = append(m.args, "--bootstrap", ms[0].addr)
		}
		m.p = startNode(t, bin, m.name, m.args...)
		m.addr, m.id = m.p.addr(t), m.p.peerID(t)
		ms[i] = m
	}
	all := []int{0, 1, 2}
	for _, m := range ms {
		for !strings.HasPrefix(m.p.last("members"), "3:") {
			if time.Now().After(deadline) {
				t.Fatalf("%s never saw 3 members (last: %q)", m.name, m.p.last("members"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	leader := waitLeader(t, ms, all, deadline)
	t.Logf("%.1fs: cluster formed, leader %s", time.Since(began).Seconds(), ms[leader].name)

	// kvSet writes key=value through member i.
	kvSet := func(ctx context.Context, i int, key, value string) (int, string, error) {
		code, _, stderr, err := runKV(ctx, bin, "--namespace", ns, "--peer", ms[i].addr, "--timeout", kvTimeout, "set", key, value)
		return code, stderr, err
	}

	// A write through a follower, retried while the cluster settles. The
	// member it went through must never have been the leader.
	everLeader := func(m *member) bool {
		return strings.Contains(m.p.stdout.String(), "leader: "+m.id+" (self)")
	}
	for {
		follower := slices.IndexFunc(ms, func(m *member) bool { return !everLeader(m) })
		if follower < 0 {
			t.Fatal("every member has been the leader: no follower to write through")
		}
		code, stderr, err := kvSet(context.Background(), follower, "via-follower", "forwarded")
		if err != nil {
			t.Fatal(err)
		}
		if code == 0 && !everLeader(ms[follower]) {
			t.Logf("%.1fs: wrote through follower %s", time.Since(began).Seconds(), ms[follower].name)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv set through follower %s kept failing: exit %d: %s", ms[follower].name, code, stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The stream of writes, each to a random live member.
	var (
		mu       sync.Mutex
		live     = []int{0, 1, 2}
		results  []write
		inflight = -1 // the member the current write was sent to
	)
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, w := range results {
			if w.code == 0 {
				n++
			}
		}
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	streamDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-streamDone }) // runs before the nodes are killed
	go func() {
		defer close(streamDone)
		for i := range writes {
			mu.Lock()
			via := live[rand.IntN(len(live))]
			inflight = via
			mu.Unlock()
			w := write{key: fmt.Sprintf("stream/%03d", i), value: fmt.Sprintf("value-%d", i), via: ms[via].name, start: time.Now()}
			code, stderr, err := kvSet(ctx, via, w.key, w.value)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				stderr += err.Error()
			}
			w.code, w.stderr, w.end = code, strings.TrimSpace(stderr), time.Now()
			mu.Lock()
			results = append(results, w)
			inflight = -1
			mu.Unlock()
		}
	}()
	waitAcked := func(n int, what string) {
		t.Helper()
		for acked() < n {
			select {
			case <-streamDone:
				t.Fatalf("the write stream ended with %d acknowledged writes, before %s", acked(), what)
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d writes acknowledged, want %d before %s", acked(), n, what)
			}
		}
	}

	// Kill the leader in the middle of the stream, preferably while a write
	// sent to it is in flight.
	waitAcked(beforeKill, "the kill")
	leader = waitLeader(t, ms, all, deadline) // still the leader?
	old := ms[leader]
	for wait := time.Now().Add(3 * time.Second); time.Now().Before(wait); {
		mu.Lock()
		target := inflight
		mu.Unlock()
		if target == leader {
			// Somewhere within the last write's duration: the kill lands
			// before, while or after this one reaches the leader.
			mu.Lock()
			last := results[len(results)-1]
			mu.Unlock()
			time.Sleep(rand.N(last.end.Sub(last.start) + time.Millisecond))
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := old.p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", old.name, err)
	}
	killedAt := time.Now()
	mu.Lock()
	live = slices.DeleteFunc(live, func(i int) bool { return i == leader })
	survivors := slices.Clone(live)
	mu.Unlock()
	<-old.p.done
	ackedAtKill := acked()
	t.Logf("%.1fs: SIGKILLed leader %s after %d acknowledged writes", time.Since(began).Seconds(), old.name, ackedAtKill)

	newLeader := waitLeader(t, ms, survivors, deadline)
	t.Logf("%.1fs: %s took over %.1fs after the kill", time.Since(began).Seconds(), ms[newLeader].name, time.Since(killedAt).Seconds())
	waitAcked(ackedAtKill+whileDown, "the restart")

	// Restart the old leader from its data directory, same command line.
	old.p = startNode(t, bin, old.name+"-restarted", old.args...)
	if a := old.p.addr(t); a != old.addr {
		t.Errorf("%s restarted with address %s, want %s", old.name, a, old.addr)
	}
	if id := old.p.peerID(t); id != old.id {
		t.Fatalf("%s restarted as %s, want the same identity %s", old.name, id, old.id)
	}
	restartedAt := time.Now()
	mu.Lock()
	live = append(live, leader)
	mu.Unlock()
	t.Logf("%.1fs: restarted %s", time.Since(began).Seconds(), old.name)

	select {
	case <-streamDone:
	case <-time.After(time.Until(deadline)):
		t.Fatalf("the write stream did not finish in time (%d acknowledged)", acked())
	}
	mu.Lock()
	done := slices.Clone(results)
	mu.Unlock()
	var ackedKeys []string
	var before, during, after int
	var checkValues []write
	for _, w := range done {
		switch w.code {
		case 0:
			ackedKeys = append(ackedKeys, w.key)
			if w.end.Before(killedAt) {
				checkValues = append(checkValues[:0], w)
			} else if len(checkValues) == 1 {
				checkValues = append(checkValues, w)
			}
			switch {
			case w.end.Before(killedAt):
				before++
			case w.start.After(killedAt) && w.end.Before(restartedAt):
				during++
			case w.start.After(restartedAt):
				after++
			}
		case exitFailure:
			t.Logf("write %s via %s (sent %+.2fs from the kill) failed: %s", w.key, w.via, w.start.Sub(killedAt).Seconds(), w.stderr)
		default:
			t.Errorf("write %s via %s: exit %d, want 0 or 1: %s", w.key, w.via, w.code, w.stderr)
		}
	}
	t.Logf("%.1fs: %d of %d writes acknowledged: %d before the kill, %d while the leader was down, %d after the restart",
		time.Since(began).Seconds(), len(ackedKeys), len(done), before, during, after)
	if len(done) != writes || len(ackedKeys) < wantAckedAt || before == 0 || during == 0 || after == 0 {
		t.Fatalf("want all %d writes run, at least %d acknowledged, some before the kill, while down and after the restart",
			writes, wantAckedAt)
	}
	checkValues = append(checkValues, done[slices.IndexFunc(done, func(w write) bool { return w.key == ackedKeys[len(ackedKeys)-1] })])
	ackedKeys = append(ackedKeys, "via-follower")

	// The restarted member rejoins, and every acknowledged write reaches
	// every member's local replica (kv keys reads locally).
	for !strings.HasPrefix(old.p.last("members"), "3:") || old.p.last("leader") == "none" || old.p.last("leader") == "" {
		if time.Now().After(deadline) {
			t.Fatalf("restarted %s did not rejoin: members %q, leader %q", old.name, old.p.last("members"), old.p.last("leader"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, l := range old.p.lines() {
		// "[2006-01-02T15:04:05.000Z07:00] leader: <ID>": when the restarted member first knew a leader.
		if ts, v, ok := strings.Cut(strings.TrimPrefix(l, "["), "] leader: "); ok && v != "none" {
			if at, err := time.Parse(raft.LogTimeFormat, ts); err == nil {
				t.Logf("restarted %s followed a leader %.1fs after its restart", old.name, at.Sub(restartedAt).Seconds())
			}
			break
		}
	}
	for _, m := range ms {
		var missing []string
		for {
			code, out, stderr, err := runKV(context.Background(), bin, "--namespace", ns, "--peer", m.addr, "keys")
			if err != nil {
				t.Fatal(err)
			}
			have := strings.Fields(out)
			missing = missing[:0]
			for _, k := range ackedKeys {
				if !slices.Contains(have, k) {
					missing = append(missing, k)
				}
			}
			if code == 0 && len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks acknowledged writes %v (kv keys: exit %d, %s)", m.name, missing, code, stderr)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Values too, on the local replica: the last write acknowledged
		// before the kill, the first one after it and the last one.
		for _, w := range checkValues {
			code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", m.addr, "get", w.key)
			if code != 0 || out != w.value+"\n" {
				t.Errorf("%s: kv get %s: exit %d, stdout %q, stderr %q; want %q", m.name, w.key, code, out, stderr, w.value)
			}
		}
	}
	t.Logf("%.1fs: all %d acknowledged writes are on all 3 members", time.Since(began).Seconds(), len(ackedKeys))

	for _, m := range ms {
		m.p.stop(t)
	}
}

var _ io.Writer = (*syncBuffer)(nil)

// checkNodeOutput checks what starting nodes printed: every line stamped
// with raft.LogTimeFormat, stdout and stderr alike; the bootstrap window's
// progress on stderr; no warning or error (a normal start); with --name,
// the name on the node's log lines. n1 runs with --name first and
// --log-level info.
func checkNodeOutput(t *testing.T, n1 *proc, others ...*proc) {
	t.Helper()
	for _, p := range append([]*proc{n1}, others...) {
		progress := 0
		for _, l := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
			ts, rest, _ := strings.Cut(l, " ")
			if _, err := time.Parse(raft.LogTimeFormat, ts); err != nil {
				t.Errorf("%s: stderr line not stamped with raft.LogTimeFormat: %q", p.name, l)
			}
			if strings.HasPrefix(rest, "looking for peers: ") {
				progress++
			}
			if strings.Contains(l, "[WARN]") || strings.Contains(l, "[ERROR]") {
				t.Errorf("%s: a normal start logged %q", p.name, l)
			}
			if p == n1 && strings.Contains(l, "[INFO]") && !strings.Contains(l, "tauraft.first") {
				t.Errorf("%s: a log line without the node's --name: %q", p.name, l)
			}
		}
		if progress == 0 || progress > 3 {
			t.Errorf("%s printed %d bootstrap progress lines in a 2 s window, want 1 to 3", p.name, progress)
		}
		for _, l := range p.lines() {
			ts, _, ok := strings.Cut(strings.TrimPrefix(l, "["), "] ")
			if !ok || !strings.HasPrefix(l, "[") {
				continue // the start banner: peer ID, addresses
			}
			if _, err := time.Parse(raft.LogTimeFormat, ts); err != nil {
				t.Errorf("%s: stdout line not stamped with raft.LogTimeFormat: %q", p.name, l)
			}
		}
	}
}
