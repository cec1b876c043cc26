package raft

import (
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/tauraft/raft/rafttest"
)

// newIdleTracker is a peer tracker on a real host whose loops never start:
// what it holds changes only through the calls a test makes.
func newIdleTracker(t *testing.T) (*peerTracker, *rafttest.Mesh) {
	mesh := rafttest.NewMesh(t, 1)
	node := mesh.Node(0)
	return newPeerTracker(trackerConfig{
		node:      node,
		namespace: "/raft/tracker",
		window:    time.Second,
		logger:    hclog.NewNullLogger(),
		caller:    newCaller(node.Peer(), Protocol("/raft/tracker"), codec{}),
		status:    nil,
	}), mesh
}

// randomPeers makes n peer IDs from fresh keys.
func randomPeers(t *testing.T, n int) []peer.ID {
	out := make([]peer.ID, n)
	for i := range out {
		_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = peer.IDFromPublicKey(pub); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// madeUpPeers returns n peer IDs nobody runs, as an exchange list with
// addrs long addresses each.
func madeUpPeers(t *testing.T, n, addrs, addrLen int) ([]peer.ID, []wirePeer) {
	ids := randomPeers(t, n)
	var list []wirePeer
	for i, id := range ids {
		wp := wirePeer{ID: []byte(id)}
		for j := range addrs {
			a, err := ma.NewMultiaddr(fmt.Sprintf("/dns4/%0*d.example/tcp/%d", addrLen, i, 1000+j))
			if err != nil {
				t.Fatal(err)
			}
			wp.Addrs = append(wp.Addrs, a.Bytes())
		}
		list = append(list, wp)
	}
	return ids, list
}

func TestTrackerBoundsWhatAnExchangeAdds(t *testing.T) {
	tr, mesh := newIdleTracker(t)
	from := randomPeers(t, 1)[0]
	_, list := madeUpPeers(t, 1000, 64, 20)
	tr.merge(from, list, &status{})
	view := tr.view()
	if len(view) != 1+maxExchangePeers {
		t.Fatalf("tracker holds %d peers after a list of %d; want the sender plus %d", len(view), len(list), maxExchangePeers)
	}
	ps := mesh.Node(0).Peer().Peerstore()
	for _, v := range view {
		if n := len(ps.Addrs(v.id)); n > maxPeerAddrs {
			t.Fatalf("peer %s has %d addresses; want at most %d", v.id, n, maxPeerAddrs)
		}
	}
	// Long addresses are not kept at all.
	long, longList := madeUpPeers(t, 1, 2, maxAddrSize)
	tr.merge(from, longList, &status{})
	if n := len(ps.Addrs(long[0])); n != 0 {
		t.Fatalf("kept %d addresses over %d bytes", n, maxAddrSize)
	}
}

func TestTrackerListsOnlyProvenPeers(t *testing.T) {
	tr, _ := newIdleTracker(t)
	from := randomPeers(t, 1)[0]
	ids, list := madeUpPeers(t, 10, 1, 4)
	tr.merge(from, list, &status{})
	got := tr.wireList()
	if len(got) != 1 || peer.ID(got[0].ID) != from {
		t.Fatalf("wire list has %d peers; want only the sender, which proved itself", len(got))
	}
	tr.answered(ids[3], &status{})
	if got := tr.wireList(); len(got) != 2 {
		t.Fatalf("wire list has %d peers after one more answered; want 2", len(got))
	}
}

func TestTrackerDropsStrangersAndMakesRoom(t *testing.T) {
	tr, _ := newIdleTracker(t)
	stranger := randomPeers(t, 1)[0]
	tr.learn(stranger, nil, 0, false)
	for i := range maxProbeFailures {
		if len(tr.view()) != 1 {
			t.Fatalf("stranger dropped after %d failures; want %d", i, maxProbeFailures)
		}
		tr.failed(stranger)
	}
	if len(tr.view()) != 0 {
		t.Fatalf("a peer that never answered is kept after %d failed probes", maxProbeFailures)
	}

	member := randomPeers(t, 1)[0]
	tr.answered(member, &status{})
	for i := range maxProbeFailures * 2 {
		tr.failed(member)
		if len(tr.view()) != 1 {
			t.Fatalf("a proven member was dropped after %d failures", i+1)
		}
	}

	// Full of strangers: a newcomer replaces one; the member stays.
	_, list := madeUpPeers(t, maxTrackedPeers+10, 0, 0)
	for i := 0; i < len(list); i += maxExchangePeers {
		tr.merge(member, list[i:min(i+maxExchangePeers, len(list))], &status{})
	}
	view := tr.view()
	if len(view) != maxTrackedPeers {
		t.Fatalf("tracker holds %d peers; want the cap %d", len(view), maxTrackedPeers)
	}
	found := false
	for _, v := range view {
		found = found || v.id == member
	}
	if !found {
		t.Fatal("a proven member was pushed out by strangers")
	}
}

func TestExchangeBackoff(t *testing.T) {
	base := 100 * time.Millisecond
	for _, tc := range []struct {
		failures int
		proven   bool
		want     time.Duration
	}{
		{1, false, base},
		{2, false, 2 * base},
		{4, false, 8 * base},
		{30, false, maxProbeBackoff},
		{1, true, base},
		{30, true, maxMemberBackoff},
	} {
		if got := exchangeBackoff(base, tc.failures, tc.proven); got != tc.want {
			t.Errorf("exchangeBackoff(%v, %d, proven %v) = %v, want %v", base, tc.failures, tc.proven, got, tc.want)
		}
	}
}

func TestPickProbes(t *testing.T) {
	c := func(id string, heardOf bool, failures int) probeCandidate {
		return probeCandidate{id: peer.ID(id), heardOf: heardOf, failures: failures}
	}
	for _, tc := range []struct {
		name       string
		candidates []probeCandidate
		n          int
		want       []peer.ID
	}{
		{"none", nil, 4, nil},
		{"no room", []probeCandidate{c("a", true, 0)}, 0, nil},
		{"negative room", []probeCandidate{c("a", true, 0)}, -1, nil},
		{"named before connected", []probeCandidate{c("a", false, 0), c("b", true, 3)}, 1, []peer.ID{"b"}},
		{"fewer failures first", []probeCandidate{c("a", true, 2), c("b", true, 0), c("c", true, 1)}, 2, []peer.ID{"b", "c"}},
		{"stable by id", []probeCandidate{c("z", false, 0), c("m", false, 0), c("a", false, 0)}, 2, []peer.ID{"a", "m"}},
		{"all fit", []probeCandidate{c("x", false, 1), c("y", true, 5)}, 4, []peer.ID{"y", "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pickProbes(tc.candidates, tc.n)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pickProbes = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWireListPassesOnFirstHandAddrsOnly: a member passes on the addresses
// of the peers it is connected to (what they announced themselves), never
// what it heard of the others, and takes no second-hand address for a peer
// it is connected to. Otherwise a dead member's old address would circulate
// for ever, each member refreshing the others' copy.
func TestWireListPassesOnFirstHandAddrsOnly(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3)
	node := mesh.Node(0)
	tr := newPeerTracker(trackerConfig{
		node: node, namespace: "/raft/tracker", window: time.Second,
		logger: hclog.NewNullLogger(), caller: newCaller(node.Peer(), Protocol("/raft/tracker"), codec{}),
	})
	if err := mesh.Connect(0, 1); err != nil {
		t.Fatal(err)
	}
	connected, away := mesh.ID(1), mesh.ID(2)
	tr.answered(connected, &status{})
	tr.answered(away, &status{})
	// away last answered a while ago: what others say of the addresses of
	// a peer that answered just now is not even looked at (learn).
	tr.mu.Lock()
	tr.peers[away].lastAnswer = time.Now().Add(-time.Minute)
	tr.mu.Unlock()
	_, fake := madeUpPeers(t, 2, 2, 8)
	fake[0].ID, fake[1].ID = []byte(connected), []byte(away)
	tr.merge(connected, fake, &status{})
	ps := node.Peer().Peerstore()
	if got, want := sortedAddrs(ps.Addrs(connected)), sortedAddrs(mesh.Node(1).Peer().Addrs()); got != want {
		t.Fatalf("addresses of a connected peer: %s; want only what it announced, %s", got, want)
	}
	if n := len(ps.Addrs(away)); n != 2 {
		t.Fatalf("%d addresses heard for a peer we are not connected to; want the 2 heard (short-lived)", n)
	}
	for _, wp := range tr.wireList() {
		switch peer.ID(wp.ID) {
		case connected:
			if len(wp.Addrs) != len(mesh.Node(1).Peer().Addrs()) {
				t.Fatalf("passed on %d addresses of a connected peer, want its own %d", len(wp.Addrs), len(mesh.Node(1).Peer().Addrs()))
			}
		case away:
			if len(wp.Addrs) != 0 {
				t.Fatalf("passed on %d second-hand addresses of a peer we are not connected to", len(wp.Addrs))
			}
		}
	}
}
