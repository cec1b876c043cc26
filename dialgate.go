package raft

// The dial gate: how often Raft's transport may dial a peer it cannot
// reach. Raft itself retries a follower that is down every ten seconds or
// so per replication goroutine, and every election dials every voter;
// libp2p's own dial backoff is bypassed on purpose (a restarted member must
// be reachable at once). Left alone, a leader dials a member that is gone
// for good several times a minute for as long as it stays in the
// configuration, every address it ever had. The gate lets the first
// failures through at Raft's own pace and then spaces the network dials
// out, by how long the peer has been unreachable.

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// dialGraceAfterFailure is how long after a peer's first failed dial
	// Raft's own pace is left alone: a member restarting, or a short
	// partition, is dialled as often as Raft likes.
	dialGraceAfterFailure = 10 * time.Second
	// maxDialWait is the longest pause between network dials of a peer
	// that stays unreachable: at most 60/20 = 3 dials a minute from the
	// transport.
	maxDialWait = 20 * time.Second
	// maxGatedPeers bounds the gate's memory (Raft only dials servers of
	// the configuration, so this is never reached in practice).
	maxGatedPeers = 1024
)

// dialWait is how long to wait after a failed dial before the next one,
// for a peer that has failed every dial for downFor: nothing during the
// grace period, then half of downFor, at most maxDialWait. So a member that
// comes back is dialled again within half of the time it was away (at most
// 20 s later; sooner when it dials in itself, since a connected peer is
// never gated), and one that stays away is dialled 3 times a minute once it
// has been gone for 40 s.
func dialWait(downFor time.Duration) time.Duration {
	if downFor < dialGraceAfterFailure {
		return 0
	}
	return min(downFor/2, maxDialWait)
}

// gateState is one unreachable peer: when its first failed dial in a row
// was, and when the next network dial may go out.
type gateState struct {
	since time.Time
	next  time.Time
}

// dialGate remembers the peers whose dials fail. It is safe for concurrent
// use.
type dialGate struct {
	mu    sync.Mutex
	peers map[peer.ID]*gateState
}

// allow reports whether a network dial of id may go out at now.
func (g *dialGate) allow(id peer.ID, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.peers[id]
	return !ok || !now.Before(s.next)
}

// failed records a failed dial of id at now.
func (g *dialGate) failed(id peer.ID, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.peers[id]
	if !ok {
		if g.peers == nil {
			g.peers = map[peer.ID]*gateState{}
		}
		if len(g.peers) >= maxGatedPeers {
			clear(g.peers)
		}
		s = &gateState{since: now}
		g.peers[id] = s
	}
	s.next = now.Add(dialWait(now.Sub(s.since)))
}

// reached records that id is reachable again (a dial succeeded, or it is
// connected): its next failure starts a new grace period.
func (g *dialGate) reached(id peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.peers, id)
}
