package p2pnode

import (
	"context"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/tauraft/raft/addrbook"
)

// TestDHTDiscovery checks that a small private DHT is enough for discovery:
// nodes bootstrapped to a single seed find each other's advertisements.
func TestDHTDiscovery(t *testing.T) {
	seed := newTestNode(t, Config{})
	all := []*Node{seed}
	for range 3 {
		all = append(all, newTestNode(t, Config{BootstrapPeers: []peer.AddrInfo{seed.AddrInfo()}}))
	}
	checkDHTDiscovery(t, all)
}

// TestDHTDiscoveryChain bootstraps each node to the previous one only, so
// the ends of the chain know each other only through routing table refreshes.
func TestDHTDiscoveryChain(t *testing.T) {
	all := []*Node{newTestNode(t, Config{})}
	for range 4 {
		prev := all[len(all)-1]
		all = append(all, newTestNode(t, Config{BootstrapPeers: []peer.AddrInfo{prev.AddrInfo()}}))
	}
	checkDHTDiscovery(t, all)
}

// checkDHTDiscovery makes every node advertise the same namespace and
// checks that each of them finds all the others.
func checkDHTDiscovery(t *testing.T, all []*Node) {
	t.Helper()
	const ns = "/raft/test"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// Advertise fails while a node's routing table is still empty (the
	// bootstrap connection is added to it asynchronously), so retry.
	for _, n := range all {
		for {
			ttl, err := n.Discovery().Advertise(ctx, ns)
			if err == nil {
				if ttl <= 0 {
					t.Fatalf("Advertise returned TTL %v", ttl)
				}
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s could not advertise: %v", n.ID(), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	for _, n := range all {
		want := map[peer.ID]bool{}
		for _, o := range all {
			want[o.ID()] = true
		}
		for len(want) > 0 {
			if ctx.Err() != nil {
				t.Fatalf("%s did not find %v", n.ID(), want)
			}
			fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
			ch, err := n.Discovery().FindPeers(fctx, ns)
			if err != nil {
				fcancel()
				t.Fatalf("FindPeers: %v", err)
			}
			for ai := range ch {
				// Must come with addresses: the caller connects with them.
				if ai.ID == n.ID() || len(ai.Addrs) > 0 || len(n.Peer().Peerstore().Addrs(ai.ID)) > 0 {
					delete(want, ai.ID)
				}
			}
			fcancel()
			if len(want) > 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// TestDHTSeedNamespaces: a node whose only bootstrap peer is gone, but
// whose datastore holds a raft namespace's address book, reaches the
// members it names at start and finds the others' advertisements through
// them.
func TestDHTSeedNamespaces(t *testing.T) {
	const ns = "/raft/seeded"
	seed := newTestNode(t, Config{})
	member := newTestNode(t, Config{BootstrapPeers: []peer.AddrInfo{seed.AddrInfo()}})
	gone := newTestNode(t, Config{})
	goneInfo := gone.AddrInfo()
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}

	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	ctx := context.Background()
	// The book names the member, and a member that is gone (its dial
	// fails at once) must not hold New up.
	for _, ai := range []peer.AddrInfo{member.AddrInfo(), goneInfo} {
		if err := ds.Put(ctx, addrbook.Key(ns, ai.ID), addrbook.Encode(ai.Addrs)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	n := newTestNode(t, Config{Datastore: ds, SeedNamespaces: []string{ns, "/raft/empty"}})
	if took := time.Since(start); took > seedTimeout+2*time.Second {
		t.Fatalf("New took %v with a dead member in the book; want at most seedTimeout (%v) and a little", took, seedTimeout)
	}
	if n.Peer().Network().Connectedness(member.ID()) != network.Connected {
		t.Fatal("New returned without a connection to the member its address book names")
	}
	checkDHTDiscovery(t, []*Node{seed, member, n})
}
