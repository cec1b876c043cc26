package raft

import (
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Pacing the leader's replication to the followers a commit does not wait
// for.
//
// hashicorp/raft replicates to every follower in its own goroutine, and each
// goroutine sends whatever the log holds beyond what its follower has as soon
// as there is anything: with a steady stream of writes, every write costs one
// AppendEntries round trip per member, whether the commit waits for it or
// not. At 48 members on shared cores that is 47 encodings, sealings,
// decodings, log writes and applies per write; with 5 voters, four, of which
// the commit waits for two. The round trips a write waits for queue behind
// the ones nobody waits for.
//
// So the leader lets entries accumulate for a follower whose answers no
// commit is waiting on: after an AppendEntries that carried entries
// succeeds, that follower's replication rests for a short pause before it
// hands the answer back to Raft and builds its next round, which then
// carries everything written meanwhile in one message.
//   - A non-voter never decides a commit: it always rests, for a pause that
//     grows with the number of non-voters (a budget of rounds per second
//     for all of them together).
//   - With spareVotersFrom voters or more, a voter rests only when the
//     leader and the other voters that Raft already knows to hold the
//     entries just sent make a quorum without it: the commit of those
//     entries did not need it. Its answer is handed to
//     Raft after the rest, and only answers Raft has been handed count for
//     the others, so a resting voter never stands in for a quorum Raft does
//     not have. At a steady stream of writes this settles to a quorum of
//     voters fed at once and the rest fed in batches; when an eager voter
//     falls behind or goes away, a spare one no longer finds a quorum
//     without it and is fed at once again, after one pause at most.
//
// The first entry after a quiet spell still leaves at once for every
// follower (the rest comes after the work, not before it), heartbeats are
// never delayed, and a follower that is behind (a round that carried
// catchUpRound entries or more) is fed without pauses until it has caught
// up.

const (
	// nonVoterRoundsPerSecond is the budget of entry-bearing rounds a
	// leader spends on all its non-voters together while writes flow: the
	// pause grows with their number so that the total stays about this.
	nonVoterRoundsPerSecond = 1000
	// nonVoterMaxPause bounds the pause, and with it how far a non-voter
	// trails the leader while writes flow (it serves barrier reads once it
	// has applied the read index, so this is also what such a read may
	// wait for).
	nonVoterMaxPause = 50 * time.Millisecond
	// spareVoterPause is the rest of a voter the last commit did not need:
	// how far it may trail the quorum while writes flow, and the most a
	// commit waits for it when a voter it counted on stops answering.
	spareVoterPause = 2 * time.Millisecond
	// spareVotersFrom is the smallest voter count whose spare voters rest.
	// With three, the commit waits for the faster of two followers;
	// resting one leaves it waiting on the other alone, and a sequential
	// write measured slower. From five, resting the spares halves what a
	// write costs the leader and the cores it shares.
	spareVotersFrom = 5
	// catchUpRound is the round size from which the next round follows
	// without a pause: half of MaxAppendEntries, so a follower never trails
	// by much more than one full round.
	catchUpRound = 128
)

// nonVoterPause is how long replication to one non-voter rests after a round
// that carried sent entries, when the configuration has nonVoters of them.
func nonVoterPause(sent, nonVoters int) time.Duration {
	if sent == 0 || nonVoters <= 0 || sent >= catchUpRound {
		return 0
	}
	return min(time.Duration(nonVoters)*time.Second/nonVoterRoundsPerSecond, nonVoterMaxPause)
}

// replicaPause is how long the leader (self) rests replication to target
// after a round that carried sent entries, up to index reached, succeeded,
// in the configuration servers; acked tells up to which index Raft knows
// each follower holds the log.
func replicaPause(self, target hraft.ServerID, servers []hraft.Server, sent int, reached uint64,
	acked func(hraft.ServerID) uint64) time.Duration {
	if sent == 0 || sent >= catchUpRound {
		return 0
	}
	voters, nonVoters, covered := 0, 0, 0
	targetVotes, known := false, false
	for _, s := range servers {
		if s.ID == target {
			known = true
			targetVotes = s.Suffrage == hraft.Voter
		}
		switch {
		case s.Suffrage == hraft.Nonvoter:
			nonVoters++
		case s.Suffrage != hraft.Voter:
		case s.ID == target:
			voters++
		case s.ID == self || acked(s.ID) >= reached:
			voters++
			covered++
		default:
			voters++
		}
	}
	switch {
	case !known:
		return 0
	case !targetVotes:
		return nonVoterPause(sent, nonVoters)
	case voters >= spareVotersFrom && covered >= voters/2+1:
		return spareVoterPause
	}
	return 0
}

// serversLookup returns the servers of the latest configuration (shared:
// read only), nil when there is none.
type serversLookup func() []hraft.Server

// ackedIndex is the last index a follower was known to hold, in a term.
type ackedIndex struct {
	term, index uint64
}

// pacedTransport is hashicorp's NetworkTransport with the leader's
// replication paced (see above). Every other RPC is the embedded
// transport's own.
type pacedTransport struct {
	*hraft.NetworkTransport
	servers   serversLookup
	pause     func(self, target hraft.ServerID, servers []hraft.Server, sent int, reached uint64, acked func(hraft.ServerID) uint64) time.Duration
	closed    chan struct{}
	closeOnce sync.Once

	mu sync.Mutex
	// acked is, per follower, the highest index of an append it answered
	// that was handed back to Raft, in the current term; bounded by the
	// configuration (see record).
	acked map[hraft.ServerID]ackedIndex
}

func newPacedTransport(t *hraft.NetworkTransport, servers serversLookup) *pacedTransport {
	return &pacedTransport{NetworkTransport: t, servers: servers, pause: replicaPause,
		closed: make(chan struct{}), acked: make(map[hraft.ServerID]ackedIndex)}
}

// AppendEntries sends the RPC, then, for a follower no commit waits for,
// rests before the caller (that follower's replication goroutine) learns
// the answer and builds its next round.
func (t *pacedTransport) AppendEntries(id hraft.ServerID, target hraft.ServerAddress, args *hraft.AppendEntriesRequest, resp *hraft.AppendEntriesResponse) error {
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err != nil || !resp.Success || len(args.Entries) == 0 {
		return err
	}
	reached := args.Entries[len(args.Entries)-1].Index
	servers := t.servers()
	t.mu.Lock()
	d := t.pause(hraft.ServerID(args.ID), id, servers, len(args.Entries), reached, func(s hraft.ServerID) uint64 {
		if a, ok := t.acked[s]; ok && a.term == args.Term {
			return a.index
		}
		return 0
	})
	t.mu.Unlock()
	if d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-t.closed:
			timer.Stop()
		}
	}
	t.record(id, args.Term, reached, len(servers))
	return nil
}

// record notes that id holds the log up to index in term: Raft is about to
// learn it. The table keeps at most a few entries beyond the configuration's
// servers: past that it starts over (it only ever makes a follower rest
// less).
func (t *pacedTransport) record(id hraft.ServerID, term, index uint64, servers int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.acked[id]; !ok && len(t.acked) > servers+8 {
		clear(t.acked)
	}
	if a := t.acked[id]; a.term != term || a.index < index {
		t.acked[id] = ackedIndex{term: term, index: index}
	}
}

// Close ends any pause at once, then closes the transport.
func (t *pacedTransport) Close() error {
	t.closeOnce.Do(func() { close(t.closed) })
	return t.NetworkTransport.Close()
}

// latestServers answers serversLookup from the latest configuration (as
// read at most configViewTTL ago).
func (c *cluster) latestServers() []hraft.Server {
	servers, err := c.recentServers(false)
	if err != nil {
		return nil
	}
	return servers
}
