package p2pnode

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
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
