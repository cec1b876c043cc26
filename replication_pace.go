package raft

import (
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Pacing the leader's replication to non-voters.
//
// hashicorp/raft replicates to every follower in its own goroutine, and each
// goroutine sends whatever the log holds beyond what its follower has as soon
// as there is anything: with a steady stream of writes, every write costs one
// AppendEntries round trip per member, whether the member votes or not. At 48
// members on shared cores that is 47 encodings, sealings, decodings, log
// writes and applies per write, and the voters' round trips, which are what a
// write waits for, queue behind the 43 that nobody waits for.
//
// A non-voter never decides a commit, so the leader may let its entries
// accumulate: after an AppendEntries that carried entries to a non-voter
// succeeds, that follower's replication rests for a short pause, and the next
// round carries everything written meanwhile in one message. The first entry
// after a quiet spell still leaves at once (the rest comes after the work,
// not before it), heartbeats are never delayed, and a non-voter that is
// behind (a round that carried nonVoterCatchUp entries or more) is fed
// without pauses until it has caught up.

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
	// nonVoterCatchUp is the round size from which the next round follows
	// without a pause: half of MaxAppendEntries, so a non-voter never trails
	// by much more than one full round.
	nonVoterCatchUp = 128
)

// nonVoterPause is how long replication to one non-voter rests after a round
// that carried sent entries, when the configuration has nonVoters of them.
func nonVoterPause(sent, nonVoters int) time.Duration {
	if sent == 0 || nonVoters <= 0 || sent >= nonVoterCatchUp {
		return 0
	}
	return min(time.Duration(nonVoters)*time.Second/nonVoterRoundsPerSecond, nonVoterMaxPause)
}

// suffrageLookup tells whether a server is a non-voter of the current
// configuration, and how many non-voters it has.
type suffrageLookup func(id hraft.ServerID) (nonVoter bool, nonVoters int)

// pacedTransport is hashicorp's NetworkTransport with the leader's
// replication to non-voters paced (see above). Every other RPC is the
// embedded transport's own.
type pacedTransport struct {
	*hraft.NetworkTransport
	lookup    suffrageLookup
	pause     func(sent, nonVoters int) time.Duration // nonVoterPause
	closed    chan struct{}
	closeOnce sync.Once
}

func newPacedTransport(t *hraft.NetworkTransport, lookup suffrageLookup) *pacedTransport {
	return &pacedTransport{NetworkTransport: t, lookup: lookup, pause: nonVoterPause, closed: make(chan struct{})}
}

// AppendEntries sends the RPC, then, for a non-voter, rests before the
// caller (that follower's replication goroutine) builds its next round.
func (t *pacedTransport) AppendEntries(id hraft.ServerID, target hraft.ServerAddress, args *hraft.AppendEntriesRequest, resp *hraft.AppendEntriesResponse) error {
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err != nil || len(args.Entries) == 0 || !resp.Success {
		return err
	}
	nonVoter, count := t.lookup(id)
	if !nonVoter {
		return nil
	}
	if d := t.pause(len(args.Entries), count); d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-t.closed:
			timer.Stop()
		}
	}
	return nil
}

// Close ends any pause at once, then closes the transport.
func (t *pacedTransport) Close() error {
	t.closeOnce.Do(func() { close(t.closed) })
	return t.NetworkTransport.Close()
}

// nonVoterOf answers suffrageLookup from the latest configuration (as read
// at most configViewTTL ago).
func (c *cluster) nonVoterOf(id hraft.ServerID) (nonVoter bool, nonVoters int) {
	servers, err := c.recentServers(false)
	if err != nil {
		return false, 0
	}
	for _, s := range servers {
		if s.Suffrage == hraft.Nonvoter {
			nonVoters++
			if s.ID == id {
				nonVoter = true
			}
		}
	}
	return nonVoter, nonVoters
}
