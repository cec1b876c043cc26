package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// TestSwarmKeyCommand checks "tauraft swarm-key": a fresh key in the
// standard format on stdout, or in a new 0600 file that is never overwritten.
func TestSwarmKeyCommand(t *testing.T) {
	var keys [2]string
	for i := range keys {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"swarm-key"}, &stdout, &stderr); code != exitOK || stderr.Len() != 0 {
			t.Fatalf("swarm-key: exit %d, stderr %q", code, stderr.String())
		}
		if !strings.HasPrefix(stdout.String(), "/key/swarm/psk/1.0.0/\n/base16/\n") {
			t.Fatalf("swarm-key printed %q", stdout.String())
		}
		if _, err := p2pnode.ParseSwarmKey(stdout.Bytes()); err != nil {
			t.Fatalf("swarm-key printed an unreadable key: %v", err)
		}
		keys[i] = stdout.String()
	}
	if keys[0] == keys[1] {
		t.Fatal("two runs printed the same key")
	}

	path := filepath.Join(t.TempDir(), "swarm.key")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"swarm-key", "--output", path}, &stdout, &stderr); code != exitOK || stdout.Len() != 0 || stderr.Len() != 0 {
		t.Fatalf("swarm-key --output: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p2pnode.ReadSwarmKeyFile(path); err != nil {
		t.Fatalf("written key unreadable: %v", err)
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"swarm-key", "-o", path}, &stdout, &stderr); code != exitFailure ||
		strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), "exists") {
		t.Fatalf("swarm-key over an existing file: exit %d, stderr %q; want exit 1 and one line", code, stderr.String())
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, written) {
		t.Fatal("an existing key file was overwritten")
	}
}

// makeSwarmKey writes a new swarm key to path with "tauraft swarm-key" and
// returns path.
func makeSwarmKey(t *testing.T, bin, path string) string {
	t.Helper()
	if out, err := exec.Command(bin, "swarm-key", "--output", path).CombinedOutput(); err != nil {
		t.Fatalf("tauraft swarm-key: %v: %s", err, out)
	}
	return path
}

// makeKeyFile writes a random 32-byte encryption key (--key-file) to path.
func makeKeyFile(t *testing.T, path string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startCluster starts n "tauraft node" processes with args (plus --data
// under dir, and --bootstrap to the first one for the others) and waits
// until each of them reports n members.
func startCluster(t *testing.T, bin, dir string, n int, args ...string) (procs []*proc, addrs []string) {
	t.Helper()
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		a := append([]string{"--data", filepath.Join(dir, name)}, args...)
		if i > 0 {
			a = append(a, "--bootstrap", addrs[0])
		}
		p := startNode(t, bin, name, a...)
		procs, addrs = append(procs, p), append(addrs, p.addr(t))
	}
	want := fmt.Sprintf("%d:", n)
	rafttest.WaitFor(t, 30*time.Second, "every node to report "+want+" members", func() bool {
		for _, p := range procs {
			if !strings.HasPrefix(p.last("members"), want) {
				return false
			}
		}
		return true
	})
	return procs, addrs
}

// kvUntil runs "tauraft kv args..." until it exits 0 (a fresh cluster may
// still be electing its leader) and returns its stdout.
func kvUntil(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var code int
	var out, stderr string
	rafttest.WaitFor(t, 20*time.Second, fmt.Sprintf("kv %v to succeed", args), func() bool {
		code, out, stderr = kv(t, bin, args...)
		if code != exitOK {
			t.Logf("kv %v: exit %d: %s", args, code, strings.TrimSpace(stderr))
		}
		return code == exitOK
	})
	return out
}

// TestSwarmKeyCluster runs three "tauraft node" processes in a private
// network (--swarm-key-file) and checks that they form a cluster that serves
// kv clients holding the key, while clients without it or with another key
// cannot reach them, and nodes without it or with another key never become
// members: they cannot even connect, so each founds a cluster of its own.
func TestSwarmKeyCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	key := makeSwarmKey(t, bin, filepath.Join(dir, "swarm.key"))
	otherKey := makeSwarmKey(t, bin, filepath.Join(dir, "other.key"))
	const ns = "/raft/swarmtest"
	common := []string{"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s"}

	members, addrs := startCluster(t, bin, dir, 3, append(common, "--swarm-key-file", key)...)
	for _, a := range addrs {
		if !strings.Contains(a, "/tcp/") {
			t.Errorf("private node address %s is not TCP", a)
		}
	}
	kvUntil(t, bin, "--namespace", ns, "--swarm-key-file", key, "--peer", addrs[1], "set", "greeting", "hello private network")
	if out := kvUntil(t, bin, "--namespace", ns, "--swarm-key-file", key, "--peer", addrs[2], "get", "--barrier", "3s", "greeting"); out != "hello private network\n" {
		t.Fatalf("kv get through a member: %q", out)
	}

	// Clients outside the private network cannot reach a member.
	for _, c := range []struct {
		name string
		args []string
	}{
		{"no swarm key", nil},
		{"another swarm key", []string{"--swarm-key-file", otherKey}},
	} {
		args := append([]string{"--namespace", ns, "--timeout", "3s", "--peer", addrs[0]}, c.args...)
		code, out, stderr := kv(t, bin, append(args, "get", "greeting")...)
		if code != exitFailure || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "cannot reach any --peer") {
			t.Errorf("kv client with %s: exit %d, stdout %q, stderr %q; want exit 1 and one line about the unreachable peer",
				c.name, code, out, stderr)
		}
	}

	// Nodes outside the private network, bootstrapped to a member.
	var outsiders []*proc
	for _, o := range []struct {
		name string
		args []string
	}{
		{"public", nil},
		{"otherkey", []string{"--swarm-key-file", otherKey}},
	} {
		args := append(append([]string{"--data", filepath.Join(dir, o.name), "--bootstrap", addrs[0]}, common...), o.args...)
		p := startNode(t, bin, o.name, args...)
		p.addr(t)
		outsiders = append(outsiders, p)
	}
	// Each one gives up on its bootstrap peer and, finding nobody in the
	// namespace during its bootstrap window, founds a cluster of its own.
	rafttest.WaitFor(t, 30*time.Second, "the outsiders to found clusters of their own", func() bool {
		for _, p := range outsiders {
			if v := p.last("members"); !strings.HasPrefix(v, "1:") || !strings.HasSuffix(p.last("leader"), "(self)") {
				return false
			}
		}
		return true
	})
	var memberIDs []string
	for _, m := range members {
		memberIDs = append(memberIDs, m.peerID(t))
	}
	for _, o := range outsiders {
		id := o.peerID(t)
		for _, m := range members {
			if strings.Contains(m.stdout.String(), id) {
				t.Errorf("member %s saw outsider %s (%s)", m.name, o.name, id)
			}
			if v := m.last("members"); !strings.HasPrefix(v, "3:") {
				t.Errorf("member %s reports members %q", m.name, v)
			}
		}
		for _, mid := range memberIDs {
			if strings.Contains(o.stdout.String(), mid) {
				t.Errorf("outsider %s saw member %s", o.name, mid)
			}
		}
	}
	// A kv call through an outsider does not reach the cluster's data.
	for i, o := range outsiders {
		args := []string{"--namespace", ns, "--peer", o.addr(t)}
		if i == 1 {
			args = append(args, "--swarm-key-file", otherKey)
		}
		code, out, stderr := kv(t, bin, append(args, "get", "--barrier", "3s", "greeting")...)
		if code != exitNotFound || out != "" {
			t.Errorf("kv get through outsider %s: exit %d, stdout %q, stderr %q; want exit 3 (its own, empty cluster)",
				o.name, code, out, stderr)
		}
	}

	// The private cluster still serves its clients.
	if out := kvUntil(t, bin, "--namespace", ns, "--swarm-key-file", key, "--peer", addrs[0], "get", "--barrier", "3s", "greeting"); out != "hello private network\n" {
		t.Fatalf("kv get after the outsiders tried: %q", out)
	}
	for _, p := range append(outsiders, members...) {
		p.stop(t)
	}
}

// keyWord finds a log line about the key: "key" as a word, not inside a
// path or a namespace.
var keyWord = regexp.MustCompile(`(?i)\bkey\b`)

// wrongKeyWindow is how long TestWrongKeyFileLogsOneLine watches the node
// with the wrong --key-file after its line about the key: several rounds of
// peer exchange (every 3s once steady) and discovery (every 5s). In the
// second half of it, once startup is over, a node that floods keeps logging.
const wrongKeyWindow = 10 * time.Second

// TestWrongKeyFileLogsOneLine starts a node that is in the cluster's
// private network but has the wrong --key-file, so it cannot talk to the
// members. It must say so in one clear line on stderr, not once per refused
// request: exactly one of its lines is about the key, and it falls silent
// once it has started. The members, for their part, log at most one line
// each about it.
func TestWrongKeyFileLogsOneLine(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	swarm := makeSwarmKey(t, bin, filepath.Join(dir, "swarm.key"))
	key := makeKeyFile(t, filepath.Join(dir, "right.key"))
	wrong := makeKeyFile(t, filepath.Join(dir, "wrong.key"))
	const ns = "/raft/oddmember"
	common := []string{"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s", "--swarm-key-file", swarm}

	members, addrs := startCluster(t, bin, dir, 3, append(common, "--key-file", key)...)
	kvUntil(t, bin, "--namespace", ns, "--swarm-key-file", swarm, "--key-file", key, "--peer", addrs[0], "set", "k", "v")

	odd := startNode(t, bin, "wrongkey", append(common, "--data", filepath.Join(dir, "wrongkey"), "--key-file", wrong, "--bootstrap", addrs[0])...)
	odd.addr(t)
	oddID := odd.peerID(t)
	stderrLines := func(p *proc) []string {
		return strings.FieldsFunc(p.stderr.String(), func(r rune) bool { return r == '\n' })
	}
	keyLines := func() (out []string) {
		for _, l := range stderrLines(odd) {
			if keyWord.MatchString(l) {
				out = append(out, l)
			}
		}
		return out
	}
	aboutOdd := func(p *proc) (out []string) {
		for _, l := range stderrLines(p) {
			if strings.Contains(l, oddID) {
				out = append(out, l)
			}
		}
		return out
	}
	rafttest.WaitFor(t, 30*time.Second, "the node with the wrong --key-file to log a line about the key", func() bool {
		return len(keyLines()) > 0
	})

	// Shut out, the node ends up leading a cluster of its own: it first
	// defers to the smaller peers it has heard of but cannot reach (for
	// two bootstrap windows past its own), and the election it then
	// starts logs once. The window below is for what follows.
	rafttest.WaitFor(t, 30*time.Second, "the node with the wrong --key-file to lead a cluster of its own", func() bool {
		return strings.Contains(odd.stdout.String(), "state: leader")
	})

	// Not a wait for a condition: the window in which a flood would show.
	start := time.Now()
	var midway int // the node's stderr lines halfway through the window
	for time.Since(start) < wrongKeyWindow {
		if midway == 0 && time.Since(start) >= wrongKeyWindow/2 {
			midway = len(stderrLines(odd))
		}
		time.Sleep(100 * time.Millisecond)
	}
	lines, keyed := stderrLines(odd), keyLines()
	t.Logf("the node with the wrong key logged %d lines, %d about the key, in %s", len(lines), len(keyed), time.Since(start).Round(time.Second))
	if midway > 0 {
		t.Logf("%d of them in the second half of the window", len(lines)-midway)
	}
	for _, m := range members {
		t.Logf("member %s logged %d lines about it", m.name, len(aboutOdd(m)))
	}
	show := func(ls []string) string {
		if len(ls) > 6 {
			ls = append(ls[:6:6], fmt.Sprintf("... and %d more", len(ls)-6))
		}
		return strings.Join(ls, "\n")
	}
	if len(keyed) != 1 {
		t.Errorf("the node with the wrong --key-file logged %d lines about the key, want 1:\n%s", len(keyed), show(keyed))
	}
	if midway > 0 && len(lines) > midway {
		t.Errorf("the node with the wrong --key-file still logged %d lines in the second half of the window:\n%s",
			len(lines)-midway, show(lines[midway:]))
	}
	for _, m := range members {
		if ls := aboutOdd(m); len(ls) > 1 {
			t.Errorf("member %s logged %d lines about the node with the wrong key, want at most 1:\n%s", m.name, len(ls), show(ls))
		}
	}
	if v := odd.last("members"); strings.HasPrefix(v, "4:") {
		t.Errorf("the node with the wrong key became a member: %q", v)
	}
	for _, p := range append([]*proc{odd}, members...) {
		p.stop(t)
	}
}
