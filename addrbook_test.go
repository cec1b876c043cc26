package raft

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft/addrbook"
	"github.com/tauraft/raft/rafttest"
)

func TestBookPlan(t *testing.T) {
	ids := randomPeers(t, 4)
	slices.Sort(ids)
	a, b, c, d := ids[0], ids[1], ids[2], ids[3]
	addr := func(port int) []ma.Multiaddr {
		return []ma.Multiaddr{ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))}
	}
	enc := func(port int) string { return string(addrbook.Encode(addr(port))) }
	many := make([]peer.ID, addrbook.MaxPeers+3)
	for i := range many {
		many[i] = peer.ID(fmt.Sprintf("p%03d", i))
	}
	manyCurrent := map[peer.ID][]ma.Multiaddr{}
	for _, id := range many {
		manyCurrent[id] = addr(1)
	}
	for _, tc := range []struct {
		name    string
		saved   map[peer.ID]string
		members []peer.ID
		current map[peer.ID][]ma.Multiaddr
		put     map[peer.ID]string
		del     []peer.ID
	}{
		{name: "no configuration: nothing changes", saved: map[peer.ID]string{a: enc(1)},
			current: map[peer.ID][]ma.Multiaddr{b: addr(2)}},
		{name: "connected members are saved", members: []peer.ID{a, b},
			current: map[peer.ID][]ma.Multiaddr{a: addr(1), b: addr(2)},
			put:     map[peer.ID]string{a: enc(1), b: enc(2)}},
		{name: "unchanged: no write", saved: map[peer.ID]string{a: enc(1)}, members: []peer.ID{a},
			current: map[peer.ID][]ma.Multiaddr{a: addr(1)}},
		{name: "moved: rewritten", saved: map[peer.ID]string{a: enc(1)}, members: []peer.ID{a},
			current: map[peer.ID][]ma.Multiaddr{a: addr(9)}, put: map[peer.ID]string{a: enc(9)}},
		{name: "a member not connected keeps its last entry", saved: map[peer.ID]string{a: enc(1)},
			members: []peer.ID{a, b}},
		{name: "a peer that is not a member is never saved", members: []peer.ID{a},
			current: map[peer.ID][]ma.Multiaddr{a: addr(1), c: addr(3)}, put: map[peer.ID]string{a: enc(1)}},
		{name: "a removed member is deleted", saved: map[peer.ID]string{a: enc(1), d: enc(4)},
			members: []peer.ID{a, b, c}, del: []peer.ID{d}},
		{name: "no addresses: nothing saved", members: []peer.ID{a},
			current: map[peer.ID][]ma.Multiaddr{a: nil}},
		{name: "at most MaxPeers members, smallest IDs first", members: many, current: manyCurrent,
			put: func() map[peer.ID]string {
				m := map[peer.ID]string{}
				for _, id := range many[:addrbook.MaxPeers] {
					m[id] = enc(1)
				}
				return m
			}()},
		{name: "beyond MaxPeers: deleted", members: many,
			saved: map[peer.ID]string{many[len(many)-1]: enc(1)}, del: []peer.ID{many[len(many)-1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			put, del := bookPlan(tc.saved, tc.members, tc.current)
			if !maps.Equal(put, tc.put) || !slices.Equal(del, tc.del) {
				t.Fatalf("bookPlan = put %v, del %v; want put %v, del %v", put, del, tc.put, tc.del)
			}
		})
	}
}

// TestAddrBookKeepsMembersOnly forms a 3-member cluster, then a stranger
// (a host of the same mesh that is no member) sends a member an exchange
// listing the most peers an exchange may carry, each with many addresses,
// and also made-up addresses for the other members: the member's book holds
// the two other members at the addresses they announced themselves, and
// nothing else, however often it is written.
func TestAddrBookKeepsMembersOnly(t *testing.T) {
	mesh := rafttest.NewMesh(t, 4)
	const ns = "/raft/addrbook"
	tc := newTestCluster(t, mesh, ns)
	tc.form(20*time.Second, 0, 1, 2)
	store := mesh.Node(0).Store()
	saved := func() map[peer.ID]string {
		infos, err := SavedPeers(context.Background(), store, ns)
		if err != nil {
			t.Fatal(err)
		}
		out := map[peer.ID]string{}
		for _, ai := range infos {
			out[ai.ID] = sortedAddrs(ai.Addrs)
		}
		return out
	}
	want := map[peer.ID]string{}
	for _, i := range []int{1, 2} {
		want[mesh.ID(i)] = sortedAddrs(addrbook.Bound(mesh.Node(i).Peer().Addrs()))
	}
	tc.waitFor(10*time.Second, "node 0's book to hold the other members", func() bool {
		return maps.Equal(saved(), want)
	})

	// The stranger's exchange: maxExchangePeers made-up peers (64
	// addresses each, the tracker keeps 8) and the two members again, at
	// addresses of its own making.
	_, list := madeUpPeers(t, maxExchangePeers, 64, 20)
	for _, i := range []int{1, 2} {
		_, fake := madeUpPeers(t, 1, maxPeerAddrs, 8)
		fake[0].ID = []byte(mesh.ID(i))
		list = append([]wirePeer{fake[0]}, list...)
	}
	if err := mesh.Connect(3, 0); err != nil {
		t.Fatal(err)
	}
	stranger := newCaller(mesh.Node(3).Peer(), Protocol(ns), codec{})
	req := &request{Cmd: cmdExchangePeers, Peers: list}
	req.setStatus(&status{})
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	if _, err := stranger.ask(ctx, mesh.ID(0), req, time.Now().Add(5*time.Second)); err != nil {
		t.Fatalf("the stranger's exchange: %v", err)
	}
	c0 := tc.get(0).(*cluster)
	r, err := c0.r()
	if err != nil {
		t.Fatal(err)
	}
	members := serverPeers(r.GetConfiguration().Configuration().Servers, mesh.ID(0))
	for range 3 {
		if err := c0.book.update(context.Background(), hostView{mesh.Node(0)}, members); err != nil {
			t.Fatal(err)
		}
	}
	if got := saved(); !maps.Equal(got, want) {
		t.Fatalf("after the stranger's exchange node 0's book is %v, want %v", got, want)
	}
}

// sortedAddrs is addrs as sorted strings, for comparing sets.
func sortedAddrs(addrs []ma.Multiaddr) string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}
