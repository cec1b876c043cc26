package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// dialCounter listens on a dead member's old TCP address and records every
// connection made to it: each is one dial of that address by someone (the
// connection is closed at once, so the dial fails as it would on a dead
// port, a little later).
type dialCounter struct {
	l     net.Listener
	mu    sync.Mutex
	times []time.Time
	done  chan struct{}
}

// listenCounter starts a dialCounter on maddr (/ip4/.../tcp/PORT). The port
// was just freed by the killed member; the listen is retried briefly.
func listenCounter(t *testing.T, maddr string) *dialCounter {
	t.Helper()
	m, err := ma.NewMultiaddr(maddr)
	if err != nil {
		t.Fatal(err)
	}
	na, err := manet.ToNetAddr(m)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; {
		if l, err = net.Listen("tcp", na.String()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen on the dead member's port %s: %v", na, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d := &dialCounter{l: l, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d.mu.Lock()
			d.times = append(d.times, time.Now())
			d.mu.Unlock()
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-d.done
	})
	return d
}

// between counts the dials in [from, to).
func (d *dialCounter) between(from, to time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, at := range d.times {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// waitBook waits until the node's address book holds every one of ids
// with an address on the given port.
func (p *proc) waitBook(t *testing.T, want map[string]string, deadline time.Time) {
	t.Helper()
	for {
		book := p.last("address book")
		ok := true
		for id, addr := range want {
			if !strings.Contains(book, id+" [") || !strings.Contains(book, addr) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: address book %q, want %v", p.name, book, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not die", p.name)
	}
}

// TestAddressBookWithoutBootstrapPeer runs three "tauraft node" processes
// where n1 is the only --bootstrap address of the others. n1 dies for good
// and n2 is killed and restarted on a new port: n2 and n3 must have a leader
// again within 5 s, from what their address books saved (n2 can ask no DHT:
// its only bootstrap peer is dead). Listeners on the dead ports then count
// the dials: n2's old address is never dialled once n2 is back, and n1, dead,
// is dialled at most a few times a minute once the warm-up is over.
//
// CI counts n1's dials over 15 s after 15 s; TAURAFT_ADDR_LONG=1 keeps n1
// dead for 10 minutes and bounds the dials of its last minute (see README
// "Long runs").
func TestAddressBookWithoutBootstrapPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	// A dead member's dials: the leader's transport waits half of how long
	// the member has been unreachable between dials, after 10 s at Raft's
	// own pace, and at most 20 s (3 a minute from 40 s on); peer exchange,
	// the restarted member's probes of its book and the DHT add a few,
	// behind libp2p's own dial backoff (5 s, growing). CI counts over 15 s
	// from 15 s after the death, while the waits still grow: the transport
	// 2, the probes 1 or 2, so at most 5. The long run counts over the 10th
	// minute: at most 5 (the transport's 3 and a little).
	warmup, window, maxDials := 15*time.Second, 15*time.Second, 5
	if os.Getenv("TAURAFT_ADDR_LONG") != "" {
		warmup, window, maxDials = 9*time.Minute, time.Minute, 5
	}

	bin := buildBinary(t)
	dir := t.TempDir()
	ports := freeListenAddrs(t, 4)
	const ns = "/raft/addrbook"
	common := []string{"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s"}
	start := func(name, data, listen string, extra ...string) *proc {
		args := append(slices.Clone(common), "--data", filepath.Join(dir, data), "--listen", listen)
		return startNode(t, bin, name, append(args, extra...)...)
	}
	n1 := start("n1", "n1", ports[0])
	a1 := n1.addr(t)
	n2 := start("n2", "n2", ports[1], "--bootstrap", a1)
	n3 := start("n3", "n3", ports[2], "--bootstrap", a1)
	n2.addr(t)
	n3.addr(t)
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range []*proc{n1, n2, n3} {
		for !strings.HasPrefix(p.last("members"), "3:") {
			if time.Now().After(deadline) {
				t.Fatalf("%s never saw 3 members", p.name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	id1, id2, id3 := n1.peerID(t), n2.peerID(t), n3.peerID(t)
	n2.waitBook(t, map[string]string{id1: ports[0], id3: ports[2]}, time.Now().Add(15*time.Second))
	n3.waitBook(t, map[string]string{id1: ports[0], id2: ports[1]}, time.Now().Add(15*time.Second))

	// n1 dies for good; n2 is killed and comes back on a new port.
	n1.kill(t)
	n1Dead := time.Now()
	dead1 := listenCounter(t, ports[0])
	n2.kill(t)
	dead2 := listenCounter(t, ports[1])
	restart := time.Now()
	n2 = start("n2 (restarted)", "n2", ports[3], "--bootstrap", a1)
	ms := []*member{{name: "n2", p: n2, id: id2}, {name: "n3", p: n3, id: id3}}
	waitLeader(t, ms, []int{0, 1}, restart.Add(5*time.Second))
	took := time.Since(restart)
	t.Logf("n2 (new port) and n3 agree on a leader %v after n2's restart", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("a leader again after %v, want at most 5s", took)
	}
	if code, _, stderr := kv(t, bin, "--namespace", ns, "--peer", n2.addr(t), "--timeout", "5s", "set", "after", "restart"); code != 0 {
		t.Fatalf("kv set through the restarted n2: exit %d: %s", code, stderr)
	}
	// n3's book follows n2 to its new port.
	n3.waitBook(t, map[string]string{id2: ports[3]}, time.Now().Add(10*time.Second))

	// The dials: from the warm-up's end on, over the window.
	back := time.Now()
	from := n1Dead.Add(warmup)
	to := from.Add(window)
	for time.Now().Before(to) {
		select {
		case <-n2.done:
			t.Fatalf("n2 exited: %v", n2.err)
		case <-n3.done:
			t.Fatalf("n3 exited: %v", n3.err)
		case <-time.After(time.Until(to)):
		}
	}
	n1Dials := dead1.between(from, to)
	oldN2Dials := dead2.between(back, to)
	t.Logf("dead n1: %d dials in the first %v after its death, %d over the %v after that; n2's old port: %d dials before n2 was back, %d after",
		dead1.between(n1Dead, from), warmup, n1Dials, window, dead2.between(restart, back), oldN2Dials)
	if oldN2Dials != 0 {
		t.Errorf("n2's old address was dialled %d times after n2 was back at a new one, want 0", oldN2Dials)
	}
	if n1Dials > maxDials {
		t.Errorf("dead n1 dialled %d times over %v, %v after its death; want at most %d", n1Dials, window, warmup, maxDials)
	}
	if code, out, stderr := kv(t, bin, "--namespace", ns, "--peer", n3.addr(t), "get", "--barrier", "3s", "after"); code != 0 || out != "restart\n" {
		t.Fatalf("kv get through n3: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}
