package raft

// Follower lag as the leader sees it. hashicorp/raft keeps each follower's
// match index inside its replication goroutines and exposes none of it
// (neither Raft.Stats nor the observations carry it), so the leader asks:
// a peer exchange answers with the member's last log index (status.
// LastIndex, the same report autopilot's caught-up check uses). The
// reports are cached here; Stats reads the cache and, when it is old,
// starts one background round of asks, so it never waits on the network.
// A round asks at most maxLagAsks members, lagAskParallel at a time, each
// for at most exchangeTimeout, and rounds are at least lagRefreshInterval
// apart: however often Stats (or the status command) is called, the
// leader spends a bounded number of exchanges on it.

import (
	"slices"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// lagRefreshInterval is the least time between two rounds of asks:
	// reports at most about this old (plus a round trip) when Stats is
	// called often, and no more than a round per interval however often.
	lagRefreshInterval = 500 * time.Millisecond
	// maxLagAsks bounds the members one round asks (the least recently
	// reported first): a leader with hundreds of non-voters spreads its
	// asks over several rounds.
	maxLagAsks = 64
	// lagAskParallel bounds the asks of one round in flight at once.
	lagAskParallel = 8
)

// lagReport is a member's last log index as it reported it, and when.
type lagReport struct {
	last uint64
	at   time.Time
}

// lagBook caches the reports of the current configuration's members. It
// holds at most one report per server of the configuration the last round
// saw (older ones are pruned then).
type lagBook struct {
	mu       sync.Mutex
	byPeer   map[peer.ID]lagReport
	running  bool      // a round is in flight
	lastTurn time.Time // when the last round started
}

// reports copies the cache, with self's own report (last, now) added.
func (b *lagBook) reports(self peer.ID, last uint64) map[peer.ID]lagReport {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[peer.ID]lagReport, len(b.byPeer)+1)
	for id, r := range b.byPeer {
		out[id] = r
	}
	out[self] = lagReport{last: last, at: time.Now()}
	return out
}

// record keeps a member's report, unless a newer one is in.
func (b *lagBook) record(id peer.ID, r lagReport) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.byPeer == nil {
		b.byPeer = map[peer.ID]lagReport{}
	}
	if old, ok := b.byPeer[id]; !ok || r.at.After(old.at) {
		b.byPeer[id] = r
	}
}

// startRound reports whether a new round may start now (none in flight,
// the last one at least lagRefreshInterval ago), and marks it started. It
// prunes reports of peers not among ids, and returns ids ordered for
// asking: never reported first, then the oldest reports, at most
// maxLagAsks of them.
func (b *lagBook) startRound(ids []peer.ID, now time.Time) ([]peer.ID, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running || now.Sub(b.lastTurn) < lagRefreshInterval {
		return nil, false
	}
	for id := range b.byPeer {
		if !slices.Contains(ids, id) {
			delete(b.byPeer, id)
		}
	}
	ask := slices.Clone(ids)
	slices.SortStableFunc(ask, func(x, y peer.ID) int {
		return b.byPeer[x].at.Compare(b.byPeer[y].at) // zero (never) first
	})
	if len(ask) > maxLagAsks {
		ask = ask[:maxLagAsks]
	}
	b.running, b.lastTurn = true, now
	return ask, true
}

// endRound marks the round finished.
func (b *lagBook) endRound() {
	b.mu.Lock()
	b.running = false
	b.mu.Unlock()
}

// memberLag is a member's row as the leader sees it: its reported last
// index, how far that is behind the leader's last index leaderLast (0 when
// it is not behind: a report can be newer than leaderLast was read), and
// the report's age. known is false without a report.
func memberLag(leaderLast uint64, rep lagReport, ok bool, now time.Time) (match, lag uint64, age time.Duration, known bool) {
	if !ok {
		return 0, 0, 0, false
	}
	if leaderLast > rep.last {
		lag = leaderLast - rep.last
	}
	return rep.last, lag, max(now.Sub(rep.at), 0), true
}

// refreshLags starts a round of asks of the other servers when the cache
// is due (see lagBook.startRound); it returns at once.
func (c *cluster) refreshLags(servers []hraft.Server) {
	if c.ctx.Err() != nil {
		return
	}
	ids := make([]peer.ID, 0, len(servers))
	for _, s := range servers {
		if id, err := peer.Decode(string(s.ID)); err == nil && id != c.self {
			ids = append(ids, id)
		}
	}
	ask, ok := c.lags.startRound(ids, time.Now())
	if !ok {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.lags.endRound()
		c.askLags(ask)
	}()
}

// askLags asks each member for its status, lagAskParallel at a time, and
// records the last index of those that answer with Raft state.
func (c *cluster) askLags(ids []peer.ID) {
	sem := make(chan struct{}, lagAskParallel)
	var wg sync.WaitGroup
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-c.ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, ok := c.askStatus(id)
			if !ok {
				return
			}
			c.peers.answered(id, st)
			if st.Formed {
				c.lags.record(id, lagReport{last: st.LastIndex, at: time.Now()})
			}
		}()
	}
	wg.Wait()
}
