package rafttest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multiaddr"
	"github.com/tauraft/raft/p2pnode"
	"go.uber.org/goleak"
)

// TestMain fails the package if a mesh leaves goroutines behind after its
// automatic cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	echoProto = protocol.ID("/rafttest/echo/1.0.0")
	ns        = "/raft/test"
)

// serveEcho makes every running node of m echo streams of echoProto.
func serveEcho(m *Mesh) {
	for _, n := range m.Nodes() {
		n.Peer().SetStreamHandler(echoProto, func(s network.Stream) {
			defer s.Close()
			_, _ = io.Copy(s, s)
		})
	}
}

// echo opens a stream from node a to node b and round-trips a message.
func echo(m *Mesh, a, b int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := m.Node(a).Peer().NewStream(ctx, m.ID(b), echoProto)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(3 * time.Second))
	msg := fmt.Sprintf("%d->%d", a, b)
	if _, err := s.Write([]byte(msg)); err != nil {
		return err
	}
	if err := s.CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func connected(m *Mesh, a, b int) bool {
	return m.Node(a).Peer().Network().Connectedness(m.ID(b)) == network.Connected
}

func TestConnectedMesh(t *testing.T) {
	m := NewMesh(t, 4, Connected())
	if m.Len() != 4 || len(m.Nodes()) != 4 {
		t.Fatalf("Len() = %d, Nodes() = %d, want 4", m.Len(), len(m.Nodes()))
	}
	serveEcho(m)
	for a := range 4 {
		if m.Index(m.ID(a)) != a || m.Node(a).ID() != m.ID(a) {
			t.Fatalf("index/ID mismatch for node %d", a)
		}
		for b := range 4 {
			if a == b {
				continue
			}
			if !connected(m, a, b) {
				t.Errorf("node %d not connected to %d", a, b)
			}
			if err := echo(m, a, b); err != nil {
				t.Errorf("echo %d->%d: %v", a, b, err)
			}
		}
	}
	if got := m.Index(peer.ID("nobody")); got != -1 {
		t.Errorf("Index(unknown) = %d, want -1", got)
	}
}

func TestUnconnectedMeshWithQUIC(t *testing.T) {
	m := NewMesh(t, 2, WithQUIC())
	if connected(m, 0, 1) {
		t.Fatal("nodes connected without Connected()")
	}
	var quic bool
	for _, a := range m.Node(1).AddrInfo().Addrs {
		quic = quic || strings.Contains(a.String(), "/quic-v1")
	}
	if !quic {
		t.Fatalf("no QUIC address with WithQUIC: %v", m.Node(1).AddrInfo().Addrs)
	}
	if err := m.Connect(0, 1); err != nil {
		t.Fatal(err)
	}
	serveEcho(m)
	if err := echo(m, 0, 1); err != nil {
		t.Fatal(err)
	}
}

func TestCutAndHeal(t *testing.T) {
	m := NewMesh(t, 3, Connected())
	serveEcho(m)

	m.Cut(0, 1)
	if connected(m, 0, 1) || connected(m, 1, 0) {
		t.Fatal("connection survived Cut")
	}
	// Both directions, and more than once, to be sure no redial slips
	// through either gater.
	for range 2 {
		if err := echo(m, 0, 1); err == nil {
			t.Fatal("stream 0->1 opened across a cut link")
		}
		if err := echo(m, 1, 0); err == nil {
			t.Fatal("stream 1->0 opened across a cut link")
		}
	}
	if err := m.Connect(1, 0); err == nil {
		t.Fatal("Connect succeeded across a cut link")
	}
	// Other links are unaffected.
	if err := echo(m, 0, 2); err != nil {
		t.Fatalf("echo 0->2: %v", err)
	}
	if err := echo(m, 2, 1); err != nil {
		t.Fatalf("echo 2->1: %v", err)
	}

	m.Heal(0, 1)
	// Immediately: failed dials above must not have left a dial backoff.
	if err := echo(m, 0, 1); err != nil {
		t.Fatalf("echo 0->1 after Heal: %v", err)
	}
	if err := echo(m, 1, 0); err != nil {
		t.Fatalf("echo 1->0 after Heal: %v", err)
	}
}

func TestCutResetsOpenStreams(t *testing.T) {
	m := NewMesh(t, 2, Connected())
	block := make(chan struct{})
	defer close(block)
	m.Node(1).Peer().SetStreamHandler(echoProto, func(s network.Stream) {
		<-block
		_ = s.Reset()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := m.Node(0).Peer().NewStream(ctx, m.ID(1), echoProto)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	m.Cut(0, 1)
	_ = s.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "deadline") {
		t.Fatalf("read on a stream across a cut link: %v, want a reset", err)
	}
}

func TestIsolatePartitionHealAll(t *testing.T) {
	m := NewMesh(t, 5, Connected())
	serveEcho(m)

	m.Isolate(4)
	for j := range 4 {
		if echo(m, j, 4) == nil || echo(m, 4, j) == nil {
			t.Fatalf("isolated node 4 reachable from %d", j)
		}
	}
	if err := echo(m, 0, 3); err != nil {
		t.Fatalf("echo 0->3 with 4 isolated: %v", err)
	}
	m.Rejoin(4)
	if err := echo(m, 4, 0); err != nil {
		t.Fatalf("echo 4->0 after Rejoin: %v", err)
	}

	// {0,1} | {2,3} | 4 alone (listed nowhere).
	m.Partition([]int{0, 1}, []int{2, 3})
	reach := func(a, b int) bool { return echo(m, a, b) == nil }
	cases := []struct {
		a, b int
		want bool
	}{{0, 1, true}, {2, 3, true}, {0, 2, false}, {3, 1, false}, {4, 0, false}, {2, 4, false}}
	for _, c := range cases {
		if got := reach(c.a, c.b); got != c.want {
			t.Errorf("partitioned: %d reaches %d = %v, want %v", c.a, c.b, got, c.want)
		}
	}

	m.HealAll()
	for _, c := range cases {
		if err := echo(m, c.a, c.b); err != nil {
			t.Errorf("after HealAll: echo %d->%d: %v", c.a, c.b, err)
		}
	}
}

// find returns the sorted mesh indices that node i discovers under ns.
func find(t *testing.T, m *Mesh, i int) []int {
	t.Helper()
	ch, err := m.Node(i).Discovery().FindPeers(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for ai := range ch {
		if len(ai.Addrs) == 0 {
			t.Errorf("node %d found %s without addresses", i, ai.ID)
		}
		got = append(got, m.Index(ai.ID))
	}
	slices.Sort(got)
	return got
}

func advertiseAll(t *testing.T, m *Mesh) {
	t.Helper()
	for _, n := range m.Nodes() {
		ttl, err := n.Discovery().Advertise(context.Background(), ns)
		if err != nil || ttl <= 0 {
			t.Fatalf("Advertise = %v, %v", ttl, err)
		}
	}
}

// TestMeshDiscovery covers what the Mesh adds to memdisc.Registry, whose own
// rules are tested in package memdisc: every node, including one added
// later, shares the mesh's registry under its own identity, advertises
// addresses that can be dialled, and the visibility methods translate node
// indices into the registry's rules.
func TestMeshDiscovery(t *testing.T) {
	m := NewMesh(t, 3)
	advertiseAll(t, m)
	all := []int{0, 1, 2}
	for i := range 3 {
		if got := find(t, m, i); !slices.Equal(got, all) {
			t.Fatalf("node %d finds %v, want %v", i, got, all)
		}
	}

	// Node 0 discoverable by node 1 only, including to a node added later.
	m.ShowOnlyTo(0, 1)
	if got := find(t, m, 1); !slices.Equal(got, all) {
		t.Errorf("node 1 finds %v, want %v", got, all)
	}
	if got := find(t, m, 2); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("node 2 finds %v, want [1 2]", got)
	}
	late := m.Add()
	if got := find(t, m, late); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("late node %d finds %v, want [1 2]", late, got)
	}

	m.HideFrom(1, 2)
	if got := find(t, m, 2); !slices.Equal(got, []int{2}) {
		t.Errorf("node 2 finds %v, want [2]", got)
	}
	m.Reveal(0, 2)
	if got := find(t, m, 2); !slices.Equal(got, []int{0, 2}) {
		t.Errorf("after Reveal(0, 2) node 2 finds %v, want [0 2]", got)
	}
	m.Reveal(0)
	if got := find(t, m, late); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("after Reveal(0) node %d finds %v, want [0 1 2]", late, got)
	}
	m.RevealAll()
	if got := find(t, m, 2); !slices.Equal(got, all) {
		t.Errorf("after RevealAll node 2 finds %v, want %v", got, all)
	}

	// The advertised addresses are dialable: connect through discovery only.
	ch, err := m.Node(2).Discovery().FindPeers(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(m)
	for ai := range ch {
		if ai.ID == m.ID(2) {
			continue
		}
		if err := m.Node(2).Peer().Connect(context.Background(), ai); err != nil {
			t.Fatalf("connect to discovered %s: %v", ai.ID, err)
		}
		if err := echo(m, 2, m.Index(ai.ID)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMeshDiscoveryTTL checks that WithDiscoveryTTL reaches the mesh's
// registry and that Mesh.Registry is the registry the nodes advertise in.
func TestMeshDiscoveryTTL(t *testing.T) {
	m := NewMesh(t, 1, WithDiscoveryTTL(time.Hour))
	ttl, err := m.Node(0).Discovery().Advertise(context.Background(), ns)
	if err != nil || ttl != time.Hour {
		t.Fatalf("Advertise = %v, %v; want the mesh's TTL of 1h", ttl, err)
	}
	if p := m.Registry().Providers(ns); len(p) != 1 || p[0].ID != m.ID(0) {
		t.Fatalf("Registry().Providers = %v, want node 0", p)
	}
	// The forwarding names still describe a registry of its own.
	if r := NewRegistry(); r == m.Registry() || len(r.Providers(ns)) != 0 {
		t.Fatal("NewRegistry did not return a new, empty registry")
	}
	if NewMesh(t, 0).Registry() == m.Registry() {
		t.Fatal("two meshes share a registry")
	}
}

func testRestart(t *testing.T, opts ...MeshOption) {
	m := NewMesh(t, 3, append(opts, Connected())...)
	ctx := context.Background()
	key := datastore.NewKey("/raft/vote")
	if err := m.Node(0).Store().Put(ctx, key, []byte("node2")); err != nil {
		t.Fatal(err)
	}
	advertiseAll(t, m)
	oldID, oldAddrs := m.ID(0), m.Node(0).AddrInfo().Addrs

	m.Stop(0)
	if m.Node(0) != nil || m.Running(0) {
		t.Fatal("Node(0) still set after Stop")
	}
	m.Stop(0) // idempotent
	if m.ID(0) != oldID {
		t.Fatal("ID changed while stopped")
	}
	WaitFor(t, 5*time.Second, "peers to notice node 0 stopped", func() bool {
		return !connected(m, 1, 0) && !connected(m, 2, 0)
	})

	m.Restart(0)
	n := m.Node(0)
	if n == nil || n.ID() != oldID {
		t.Fatalf("restarted node has ID %v, want %s", n, oldID)
	}
	if sameAddrs(n.AddrInfo().Addrs, oldAddrs) {
		t.Errorf("restarted node reuses its old addresses %v", oldAddrs)
	}
	got, err := n.Store().Get(ctx, key)
	if err != nil || string(got) != "node2" {
		t.Fatalf("datastore after restart: %q, %v", got, err)
	}
	// Re-registered with discovery under its new addresses.
	for _, ai := range m.Registry().Providers(ns) {
		if ai.ID == oldID && !sameAddrs(ai.Addrs, n.AddrInfo().Addrs) {
			t.Errorf("registry has %v for node 0, want %v", ai.Addrs, n.AddrInfo().Addrs)
		}
	}
	// Connected mesh: the restarted node reconnected to everyone.
	serveEcho(m)
	for j := 1; j < 3; j++ {
		if err := echo(m, j, 0); err != nil {
			t.Errorf("echo %d->0 after restart: %v", j, err)
		}
	}

	// Restarting a running node works too, and Add joins a new one.
	m.Restart(1)
	i := m.Add()
	if i != 3 || m.Len() != 4 || !connected(m, 3, 1) {
		t.Fatalf("Add = %d, Len = %d, connected to 1 = %v", i, m.Len(), connected(m, 3, 1))
	}
}

func sameAddrs(a, b []multiaddr.Multiaddr) bool {
	return slices.EqualFunc(a, b, multiaddr.Multiaddr.Equal)
}

func TestRestartInMemory(t *testing.T) { testRestart(t) }
func TestRestartPebble(t *testing.T)   { testRestart(t, WithPebble()) }

func TestCutSurvivesRestart(t *testing.T) {
	m := NewMesh(t, 2, Connected())
	m.Cut(0, 1)
	m.Restart(1) // Connected: tries to reconnect, must skip the cut link
	serveEcho(m)
	if err := echo(m, 1, 0); err == nil {
		t.Fatal("restarted node reached a peer it is cut from")
	}
	m.Heal(0, 1)
	m.ConnectAll()
	if err := echo(m, 0, 1); err != nil {
		t.Fatal(err)
	}
}

func TestClearAddrs(t *testing.T) {
	m := NewMesh(t, 3, Connected())
	m.Stop(0)
	m.ClearAddrs(0)
	for j := 1; j < 3; j++ {
		if addrs := m.Node(j).Peer().Peerstore().Addrs(m.ID(0)); len(addrs) != 0 {
			t.Errorf("node %d still has addresses %v for node 0", j, addrs)
		}
	}
	// Restart reconnects (Connected mesh), which teaches the others the new
	// addresses through identify; drop that connection and the addresses
	// again, and node 1 has no way left to reach node 0 by itself.
	m.Restart(0)
	m.Cut(0, 1)
	m.Heal(0, 1)
	// Identify puts a peer's addresses back when its last connection
	// closes (with a shorter TTL), from a notification that runs after
	// Cut returns: clear them until they stay cleared.
	deadline := time.Now().Add(5 * time.Second)
	for cleared := 0; cleared < 20; {
		if len(m.Node(1).Peer().Peerstore().Addrs(m.ID(0))) > 0 {
			if time.Now().After(deadline) {
				t.Fatal("node 1 keeps learning node 0's addresses")
			}
			m.ClearAddrs(0)
			cleared = 0
		}
		cleared++
		time.Sleep(time.Millisecond)
	}
	serveEcho(m)
	if err := echo(m, 1, 0); err == nil {
		t.Fatal("node 1 reached node 0 without knowing its addresses")
	}
}

func TestNodeConfigHook(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]int{}
	m := NewMesh(t, 2, WithNodeConfig(func(i int, cfg *p2pnode.Config) {
		mu.Lock()
		seen[i]++
		mu.Unlock()
	}))
	m.Restart(1)
	mu.Lock()
	defer mu.Unlock()
	if seen[0] != 1 || seen[1] != 2 {
		t.Fatalf("hook calls per node = %v, want map[0:1 1:2]", seen)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, time.Second, "the counter to reach 3", func() bool { n++; return n >= 3 })

	ft := &fakeTB{TB: t}
	start := time.Now()
	WaitFor(ft, 100*time.Millisecond, "never", func() bool { return false })
	if !strings.Contains(ft.msg, "timed out after 100ms waiting for never") {
		t.Fatalf("failure message %q", ft.msg)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > time.Second {
		t.Fatalf("WaitFor gave up after %v", d)
	}
}

// fakeTB records Fatalf instead of ending the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }
