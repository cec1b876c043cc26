package raft

// Stats: a typed snapshot of one member's view of its cluster, for an
// operator's first questions (who leads, who is behind, how did this member
// come to be here). It is built only from accessors that never block (see
// "Under failure" in the README), so it can be asked of a member that is
// stuck, cut off or shutting down. Followers' lag on the leader comes from
// lag.go; the status command that carries Stats over the wire is in
// status_wire.go.

import (
	"strconv"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Stats is one member's view of its cluster at one moment (Cluster.Stats
// locally, Client.Status from any member).
type Stats struct {
	// ID is the member that made the snapshot.
	ID peer.ID
	// State is its Raft state (Follower, Candidate, Leader, Shutdown).
	State hraft.RaftState
	// Term is its current Raft term.
	Term uint64
	// Leader is the leader it knows; empty when it knows none.
	Leader peer.ID
	// CommitIndex is the highest log index it knows to be committed.
	CommitIndex uint64
	// AppliedIndex is the highest log index Raft has handed to its state
	// machine (every entry kind counts, barriers and configurations too, so
	// after a Barrier it equals CommitIndex once the member is caught up).
	AppliedIndex uint64
	// LastIndex is the last index of its Raft log (or of its latest
	// snapshot, when that is newer).
	LastIndex uint64
	// LastContact is how long ago the leader last contacted this member:
	// 0 on the leader itself, -1 when no leader ever has (since this run
	// started).
	LastContact time.Duration
	// LastSnapshotIndex is the log index its latest snapshot covers; 0
	// when it has none.
	LastSnapshotIndex uint64
	// Bootstrap is how this member came to be in its cluster (see
	// BootstrapOutcome).
	Bootstrap BootstrapOutcome
	// PeersTracked is how many peers of the namespace its peer tracker
	// knows (discovery, connections and peer exchange; at most 1024), and
	// PeersAnswered how many of those have completed an exchange with it.
	PeersTracked  int
	PeersAnswered int
	// Members lists the servers of its latest configuration, in the
	// configuration's order (at most MaxStatusMembers over the wire).
	Members []MemberStats
}

// MemberStats is one server of the configuration as a Stats sees it.
type MemberStats struct {
	// ID is the server's peer ID.
	ID peer.ID
	// Suffrage is Voter, Nonvoter or Staging.
	Suffrage hraft.ServerSuffrage
	// Leader marks the leader the snapshot's member knows.
	Leader bool
	// LagKnown tells whether MatchIndex, Lag and LagAge hold a report. Only
	// a leader tracks its followers, so they are known only in a leader's
	// Stats (and there, for a member that has answered it at least once).
	LagKnown bool
	// MatchIndex is the member's last log index as it last reported it to
	// the leader (the leader's own: its last index).
	MatchIndex uint64
	// Lag is how many entries the member is behind: the leader's last log
	// index now minus MatchIndex (0 when it has them all). A report LagAge
	// old can overstate the lag of a member that kept up since.
	Lag uint64
	// LagAge is how old the member's report is (0 for the leader itself).
	// The leader asks again when a Stats finds its reports older than
	// lagRefreshInterval, without waiting for the answers.
	LagAge time.Duration
}

// BootstrapOutcome is what a member did to be in its cluster. The first
// outcome of a run sticks; a member that drops its state to join another
// cluster (a merge) becomes BootstrapPending again, then BootstrapJoined.
type BootstrapOutcome uint8

const (
	// BootstrapPending: still looking. The member is in its bootstrap
	// window, or asking to join in the background.
	BootstrapPending BootstrapOutcome = iota
	// BootstrapBootstrapped: this member bootstrapped the configuration
	// (alone, with WithForceBootstrap, or as the smallest founder).
	BootstrapBootstrapped
	// BootstrapFounder: another founder bootstrapped a configuration that
	// included this member, during its window.
	BootstrapFounder
	// BootstrapJoined: a leader added this member on its request.
	BootstrapJoined
	// BootstrapRestored: the member resumed from Raft state of an earlier
	// run and decided nothing.
	BootstrapRestored

	maxBootstrapOutcome = BootstrapRestored
)

// String names the outcome as the CLI prints it.
func (o BootstrapOutcome) String() string {
	switch o {
	case BootstrapPending:
		return "pending"
	case BootstrapBootstrapped:
		return "bootstrapped"
	case BootstrapFounder:
		return "founder"
	case BootstrapJoined:
		return "joined"
	case BootstrapRestored:
		return "restored"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// outcomeEvent is what happened that may settle the bootstrap outcome.
type outcomeEvent uint8

const (
	evRestored outcomeEvent = iota + 1
	evBootstrapped
	evFounder
	evJoined
	// evReset: the member dropped its state to join another cluster.
	evReset
)

// nextOutcome is the rule that records how a member came to be in its
// cluster: the first settling event of a run wins (a member that
// bootstrapped and is later seen as a member is still "bootstrapped"),
// and only a reset makes it pending again.
func nextOutcome(cur BootstrapOutcome, ev outcomeEvent) BootstrapOutcome {
	if ev == evReset {
		return BootstrapPending
	}
	if cur != BootstrapPending {
		return cur
	}
	switch ev {
	case evRestored:
		return BootstrapRestored
	case evBootstrapped:
		return BootstrapBootstrapped
	case evFounder:
		return BootstrapFounder
	case evJoined:
		return BootstrapJoined
	}
	return cur
}

// outcomeCell holds a member's bootstrap outcome; every update goes
// through nextOutcome.
type outcomeCell struct{ v atomic.Uint32 }

func (o *outcomeCell) note(ev outcomeEvent) {
	for {
		cur := o.v.Load()
		next := uint32(nextOutcome(BootstrapOutcome(cur), ev))
		if next == cur || o.v.CompareAndSwap(cur, next) {
			return
		}
	}
}

func (o *outcomeCell) get() BootstrapOutcome { return BootstrapOutcome(o.v.Load()) }

// Stats returns this member's snapshot of its cluster. It never blocks: it
// reads Raft's counters and configuration without waiting on Raft's loops,
// and on the leader it returns the followers' latest reports at once
// (asking them again in the background when they are old). After Close,
// or once the state machine has stopped, it still answers, with State
// Shutdown and what the member knew last.
func (c *cluster) Stats() Stats {
	st := Stats{ID: c.self, State: hraft.Shutdown, LastContact: -1, Bootstrap: c.outcome.get()}
	st.PeersTracked, st.PeersAnswered = c.peers.counts()
	run := c.run.Load()
	if run == nil {
		return st
	}
	r := run.raft
	if !c.closed.Load() && c.failure.Load() == nil {
		st.State = r.State()
	}
	st.Term = r.CurrentTerm()
	if _, id := r.LeaderWithID(); id != "" {
		if p, err := peer.Decode(string(id)); err == nil {
			st.Leader = p
		}
	}
	st.CommitIndex = r.CommitIndex()
	st.AppliedIndex = r.AppliedIndex()
	st.LastIndex = r.LastIndex()
	switch last := r.LastContact(); {
	case st.State == hraft.Leader:
		st.LastContact = 0
	case !last.IsZero():
		st.LastContact = max(time.Since(last), 0)
	}
	// Raft's Stats map is the only public reader of the latest snapshot's
	// index; it takes two short locks and reads the configuration as
	// GetConfiguration does, without the main loop.
	if v, err := strconv.ParseUint(r.Stats()["last_snapshot_index"], 10, 64); err == nil {
		st.LastSnapshotIndex = v
	}
	servers := r.GetConfiguration().Configuration().Servers
	var reports map[peer.ID]lagReport
	if st.State == hraft.Leader {
		reports = c.lags.reports(c.self, st.LastIndex)
		c.refreshLags(servers)
	}
	now := time.Now()
	st.Members = make([]MemberStats, 0, len(servers))
	for _, s := range servers {
		id, err := peer.Decode(string(s.ID))
		if err != nil {
			continue
		}
		m := MemberStats{ID: id, Suffrage: s.Suffrage, Leader: id == st.Leader && id != ""}
		if reports != nil {
			rep, ok := reports[id]
			m.MatchIndex, m.Lag, m.LagAge, m.LagKnown = memberLag(st.LastIndex, rep, ok, now)
		}
		st.Members = append(st.Members, m)
	}
	return st
}

// counts tells how many peers the tracker knows, and how many of them
// have answered an exchange.
func (t *peerTracker) counts() (tracked, answered int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.peers {
		if p.proven() {
			answered++
		}
	}
	return len(t.peers), answered
}

// membershipEvent tells how this member, seen in the configuration for the
// first time this run without having settled its outcome, got there: as a
// founder when the log's first entry (a bootstrap configuration) lists it,
// else joined. Reads one log entry; called by the membership loop only.
func (c *cluster) membershipEvent() outcomeEvent {
	var first hraft.Log
	if err := c.logs.GetLog(1, &first); err != nil {
		return joinedOrFounder(nil, c.self)
	}
	return joinedOrFounder(&first, c.self)
}

// joinedOrFounder is the rule behind membershipEvent: a member whose
// log starts with a configuration that holds it was among the founders
// (whoever of them bootstrapped); a member whose log starts elsewhere (a
// snapshot, or a later entry) was added later: it joined.
func joinedOrFounder(first *hraft.Log, self peer.ID) outcomeEvent {
	if first == nil || first.Index != 1 || first.Type != hraft.LogConfiguration {
		return evJoined
	}
	conf := hraft.DecodeConfiguration(first.Data)
	for _, s := range conf.Servers {
		if s.ID == hraft.ServerID(self.String()) {
			return evFounder
		}
	}
	return evJoined
}
