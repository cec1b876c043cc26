package memdisc_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft/memdisc"
)

// These tests need no libp2p host: a Registry only stores peer IDs and
// addresses, so made-up ones exercise it fully and start no goroutines.

const ns = "/raft/test"

// fixture is a registry and the nodes that share it, addressed by index
// like the nodes of a rafttest.Mesh.
type fixture struct {
	t     *testing.T
	reg   *memdisc.Registry
	ids   []peer.ID
	addrs [][]multiaddr.Multiaddr
	views []discovery.Discovery
}

func newFixture(t *testing.T, n int) *fixture {
	f := &fixture{t: t, reg: memdisc.NewRegistry()}
	for range n {
		f.add()
	}
	return f
}

// add joins a node that has not advertised yet and returns its index.
func (f *fixture) add() int {
	i := len(f.ids)
	id := peer.ID(fmt.Sprintf("peer-%02d", i)) // zero-padded: sorts like i
	f.ids = append(f.ids, id)
	f.addrs = append(f.addrs, []multiaddr.Multiaddr{
		multiaddr.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i)),
	})
	f.views = append(f.views, f.reg.Discovery(id, func() []multiaddr.Multiaddr { return f.addrs[i] }))
	return i
}

func (f *fixture) index(id peer.ID) int { return slices.Index(f.ids, id) }

// find returns the sorted indices that node i discovers under ns, checking
// that each comes with the addresses it advertised.
func (f *fixture) find(i int, opts ...discovery.Option) []int {
	f.t.Helper()
	ch, err := f.views[i].FindPeers(context.Background(), ns, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	var got []int
	for ai := range ch {
		j := f.index(ai.ID)
		if j < 0 {
			f.t.Fatalf("node %d found unknown peer %s", i, ai.ID)
		}
		if !sameAddrs(ai.Addrs, f.addrs[j]) {
			f.t.Errorf("node %d found %d at %v, want %v", i, j, ai.Addrs, f.addrs[j])
		}
		got = append(got, j)
	}
	slices.Sort(got)
	return got
}

func (f *fixture) advertiseAll() {
	f.t.Helper()
	for _, d := range f.views {
		ttl, err := d.Advertise(context.Background(), ns)
		if err != nil || ttl <= 0 {
			f.t.Fatalf("Advertise = %v, %v", ttl, err)
		}
	}
}

func sameAddrs(a, b []multiaddr.Multiaddr) bool {
	return slices.EqualFunc(a, b, multiaddr.Multiaddr.Equal)
}

func TestVisibility(t *testing.T) {
	f := newFixture(t, 3)
	f.advertiseAll()
	all := []int{0, 1, 2}
	for i := range 3 {
		if got := f.find(i); !slices.Equal(got, all) {
			t.Fatalf("node %d finds %v, want %v", i, got, all)
		}
	}

	// Node 0 discoverable by node 1 only (the partial discovery scenario).
	f.reg.ShowOnlyTo(f.ids[0], f.ids[1])
	if got := f.find(1); !slices.Equal(got, all) {
		t.Errorf("node 1 finds %v, want %v", got, all)
	}
	if got := f.find(2); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("node 2 finds %v, want [1 2]", got)
	}
	if got := f.find(0); !slices.Equal(got, all) {
		t.Errorf("node 0 finds %v, want %v (a node always sees itself)", got, all)
	}
	// ShowOnlyTo also holds for nodes added later.
	late := f.add()
	if got := f.find(late); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("late node %d finds %v, want [1 2]", late, got)
	}

	f.reg.Hide(f.ids[1], f.ids[2])
	if got := f.find(2); !slices.Equal(got, []int{2}) {
		t.Errorf("node 2 finds %v, want [2]", got)
	}
	f.reg.Reveal(f.ids[0], f.ids[2])
	if got := f.find(2); !slices.Equal(got, []int{0, 2}) {
		t.Errorf("after Reveal(0, 2) node 2 finds %v, want [0 2]", got)
	}
	f.reg.Reveal(f.ids[0])
	if got := f.find(late); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("after Reveal(0) node %d finds %v, want [0 1 2]", late, got)
	}
	f.reg.RevealAll()
	if got := f.find(2); !slices.Equal(got, all) {
		t.Errorf("after RevealAll node 2 finds %v, want %v", got, all)
	}
}

func TestVisibilityRules(t *testing.T) {
	f := newFixture(t, 3)
	a, b, c := f.ids[0], f.ids[1], f.ids[2]
	if !f.reg.Visible(a, b) {
		t.Fatal("a provider without rules is hidden")
	}
	f.reg.Hide(a, a)
	if !f.reg.Visible(a, a) {
		t.Error("Hide(a, a) hid a node from itself")
	}
	// Hide takes the seeker off a ShowOnlyTo list.
	f.reg.ShowOnlyTo(a, b, c)
	f.reg.Hide(a, b)
	if f.reg.Visible(a, b) || !f.reg.Visible(a, c) {
		t.Errorf("after ShowOnlyTo(a, b, c), Hide(a, b): visible to b %v, to c %v; want false, true",
			f.reg.Visible(a, b), f.reg.Visible(a, c))
	}
	// ShowOnlyTo replaces earlier rules, Hide included.
	f.reg.Hide(a, c)
	f.reg.ShowOnlyTo(a, c)
	if !f.reg.Visible(a, c) || f.reg.Visible(a, b) {
		t.Error("ShowOnlyTo did not replace the earlier rules")
	}
	// Reveal with seekers extends the list.
	f.reg.Reveal(a, b)
	if !f.reg.Visible(a, b) || f.reg.Visible(a, "stranger") {
		t.Error("Reveal(a, b) did not just add b to a's list")
	}
}

func TestTTLAndLimit(t *testing.T) {
	f := newFixture(t, 3)
	ctx := context.Background()
	d := f.views[0]
	ttl, err := d.Advertise(ctx, "/short", discovery.TTL(50*time.Millisecond))
	if err != nil || ttl != 50*time.Millisecond {
		t.Fatalf("Advertise = %v, %v; want the requested TTL", ttl, err)
	}
	if ttl, _ := d.Advertise(ctx, "/default"); ttl != memdisc.DefaultTTL {
		t.Fatalf("default TTL = %v, want %v", ttl, memdisc.DefaultTTL)
	}
	if len(f.reg.Providers("/short")) != 1 {
		t.Fatal("advertisement missing")
	}
	for deadline := time.Now().Add(2 * time.Second); len(f.reg.Providers("/short")) != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the advertisement did not expire within 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(f.reg.Providers("/default")) != 1 {
		t.Error("the default-TTL advertisement expired with the short one")
	}

	f.advertiseAll()
	if got := f.find(1, discovery.Limit(2)); len(got) != 2 {
		t.Fatalf("FindPeers with limit 2 returned %v", got)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.FindPeers(cctx, ns); err == nil {
		t.Error("FindPeers ignored a cancelled context")
	}
	if _, err := d.Advertise(cctx, ns); err == nil {
		t.Error("Advertise ignored a cancelled context")
	}
	f.reg.Forget(f.ids[0])
	if got := f.find(1); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("after Forget(0) node 1 finds %v", got)
	}
}

func TestSetDefaultTTL(t *testing.T) {
	f := newFixture(t, 1)
	f.reg.SetDefaultTTL(time.Hour)
	if ttl, err := f.views[0].Advertise(context.Background(), ns); err != nil || ttl != time.Hour {
		t.Fatalf("Advertise = %v, %v; want the new default of 1h", ttl, err)
	}
}

// A record keeps the addresses of its Advertise call until UpdateAddrs or
// the next Advertise, like a DHT provider record.
func TestAddressesAndUpdateAddrs(t *testing.T) {
	f := newFixture(t, 2)
	f.advertiseAll()
	old := f.addrs[0]
	moved := []multiaddr.Multiaddr{multiaddr.StringCast("/ip4/127.0.0.1/tcp/5000")}
	f.addrs[0] = moved
	if p := f.reg.Providers(ns); len(p) != 2 || !sameAddrs(p[0].Addrs, old) {
		t.Fatalf("Providers = %v, want node 0 still at its advertised %v", p, old)
	}
	f.reg.UpdateAddrs(f.ids[0], moved)
	if got := f.find(1); !slices.Equal(got, []int{0, 1}) { // find checks the addresses
		t.Fatalf("after UpdateAddrs node 1 finds %v", got)
	}
	// UpdateAddrs creates no record.
	f.reg.UpdateAddrs("stranger", moved)
	if p := f.reg.Providers(ns); len(p) != 2 {
		t.Fatalf("UpdateAddrs of an unknown peer changed the providers: %v", p)
	}

	// A node without addresses cannot advertise: nobody could dial it.
	f.addrs[1] = nil
	if _, err := f.views[1].Advertise(context.Background(), "/other"); err == nil {
		t.Error("Advertise without addresses succeeded")
	}
	if p := f.reg.Providers("/other"); len(p) != 0 {
		t.Errorf("a record without addresses was stored: %v", p)
	}
}

// fakeHost is the part of a host.Host that DiscoveryFor uses.
type fakeHost struct {
	host.Host // nil: any other method panics
	id        peer.ID
	addrs     []multiaddr.Multiaddr
}

func (h *fakeHost) ID() peer.ID                  { return h.id }
func (h *fakeHost) Addrs() []multiaddr.Multiaddr { return h.addrs }

func TestDiscoveryFor(t *testing.T) {
	reg := memdisc.NewRegistry()
	h := &fakeHost{id: "host", addrs: []multiaddr.Multiaddr{multiaddr.StringCast("/ip4/127.0.0.1/tcp/6000")}}
	d := reg.DiscoveryFor(h)
	if _, err := d.Advertise(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	// Read when advertising, not when DiscoveryFor was called.
	h.addrs = []multiaddr.Multiaddr{multiaddr.StringCast("/ip4/127.0.0.1/tcp/6001")}
	if _, err := d.Advertise(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	p := reg.Providers(ns)
	if len(p) != 1 || p[0].ID != h.id || !sameAddrs(p[0].Addrs, h.addrs) {
		t.Fatalf("Providers = %v, want the host at %v", p, h.addrs)
	}
}
