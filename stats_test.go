package raft

import (
	"errors"
	"fmt"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestNextOutcome(t *testing.T) {
	for _, tc := range []struct {
		cur  BootstrapOutcome
		ev   outcomeEvent
		want BootstrapOutcome
	}{
		{BootstrapPending, evRestored, BootstrapRestored},
		{BootstrapPending, evBootstrapped, BootstrapBootstrapped},
		{BootstrapPending, evFounder, BootstrapFounder},
		{BootstrapPending, evJoined, BootstrapJoined},
		{BootstrapPending, evReset, BootstrapPending},
		// The first outcome sticks: a bootstrapper later seen as a member
		// stays a bootstrapper, a restored member that rejoins stays
		// restored.
		{BootstrapBootstrapped, evJoined, BootstrapBootstrapped},
		{BootstrapBootstrapped, evFounder, BootstrapBootstrapped},
		{BootstrapFounder, evJoined, BootstrapFounder},
		{BootstrapRestored, evJoined, BootstrapRestored},
		{BootstrapJoined, evBootstrapped, BootstrapJoined},
		// Only a reset (dropping the state for another cluster) reopens it.
		{BootstrapRestored, evReset, BootstrapPending},
		{BootstrapBootstrapped, evReset, BootstrapPending},
		{BootstrapPending, outcomeEvent(0), BootstrapPending},
	} {
		if got := nextOutcome(tc.cur, tc.ev); got != tc.want {
			t.Errorf("nextOutcome(%v, %d) = %v, want %v", tc.cur, tc.ev, got, tc.want)
		}
	}
}

func TestBootstrapOutcomeNames(t *testing.T) {
	want := map[BootstrapOutcome]string{
		BootstrapPending: "pending", BootstrapBootstrapped: "bootstrapped", BootstrapFounder: "founder",
		BootstrapJoined: "joined", BootstrapRestored: "restored", maxBootstrapOutcome + 1: "outcome(5)",
	}
	for o, name := range want {
		if o.String() != name {
			t.Errorf("%d.String() = %q, want %q", o, o.String(), name)
		}
	}
}

func TestJoinedOrFounder(t *testing.T) {
	self, other := seededPeerID(t, 1), seededPeerID(t, 2)
	conf := func(ids ...peer.ID) []byte {
		var c hraft.Configuration
		for _, id := range ids {
			c.Servers = append(c.Servers, hraft.Server{ID: hraft.ServerID(id.String()), Address: hraft.ServerAddress(id.String())})
		}
		return hraft.EncodeConfiguration(c)
	}
	for _, tc := range []struct {
		name  string
		first *hraft.Log
		want  outcomeEvent
	}{
		{"no first entry (log starts at a snapshot)", nil, evJoined},
		{"founding configuration holds self", &hraft.Log{Index: 1, Type: hraft.LogConfiguration, Data: conf(other, self)}, evFounder},
		{"founding configuration without self", &hraft.Log{Index: 1, Type: hraft.LogConfiguration, Data: conf(other)}, evJoined},
		{"first entry is a command", &hraft.Log{Index: 1, Type: hraft.LogCommand, Data: []byte{1}}, evJoined},
		{"configuration at a later index", &hraft.Log{Index: 7, Type: hraft.LogConfiguration, Data: conf(self)}, evJoined},
	} {
		if got := joinedOrFounder(tc.first, self); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestMemberLag(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name      string
		last      uint64
		rep       lagReport
		ok        bool
		match     uint64
		lag       uint64
		age       time.Duration
		wantKnown bool
	}{
		{"no report", 10, lagReport{}, false, 0, 0, 0, false},
		{"caught up", 10, lagReport{last: 10, at: now}, true, 10, 0, 0, true},
		{"behind", 10, lagReport{last: 4, at: now.Add(-time.Second)}, true, 4, 6, time.Second, true},
		{"report newer than the leader's read", 10, lagReport{last: 12, at: now}, true, 12, 0, 0, true},
		{"empty log", 3, lagReport{last: 0, at: now}, true, 0, 3, 0, true},
		{"clock step: never a negative age", 5, lagReport{last: 5, at: now.Add(time.Second)}, true, 5, 0, 0, true},
	} {
		match, lag, age, known := memberLag(tc.last, tc.rep, tc.ok, now)
		if match != tc.match || lag != tc.lag || age != tc.age || known != tc.wantKnown {
			t.Errorf("%s: memberLag = %d, %d, %v, %v; want %d, %d, %v, %v", tc.name, match, lag, age, known, tc.match, tc.lag, tc.age, tc.wantKnown)
		}
	}
}

func TestLagBookRounds(t *testing.T) {
	a, b, c := seededPeerID(t, 1), seededPeerID(t, 2), seededPeerID(t, 3)
	var book lagBook
	t0 := time.Now()
	book.record(a, lagReport{last: 5, at: t0.Add(-2 * time.Second)})
	book.record(c, lagReport{last: 9, at: t0.Add(-time.Second)})
	book.record(c, lagReport{last: 1, at: t0.Add(-3 * time.Second)}) // older: ignored
	gone := seededPeerID(t, 4)
	book.record(gone, lagReport{last: 1, at: t0})

	ask, ok := book.startRound([]peer.ID{a, b, c}, t0)
	if !ok {
		t.Fatal("first round refused")
	}
	// Never reported first, then the oldest report.
	if want := []peer.ID{b, a, c}; fmt.Sprint(ask) != fmt.Sprint(want) {
		t.Errorf("ask order %v, want %v", ask, want)
	}
	if _, ok := book.reports("", 0)[gone]; ok {
		t.Error("a server gone from the configuration kept its report")
	}
	if got := book.reports("", 0)[c].last; got != 9 {
		t.Errorf("c's report %d, want the newer 9", got)
	}
	if _, ok := book.startRound([]peer.ID{a}, t0.Add(time.Second)); ok {
		t.Error("a second round started while one is in flight")
	}
	book.endRound()
	if _, ok := book.startRound([]peer.ID{a}, t0.Add(lagRefreshInterval/2)); ok {
		t.Error("a round started sooner than lagRefreshInterval after the last")
	}
	if _, ok := book.startRound([]peer.ID{a}, t0.Add(lagRefreshInterval)); !ok {
		t.Error("a round due was refused")
	}
	book.endRound()
	many := make([]peer.ID, maxLagAsks+10)
	for i := range many {
		many[i] = seededPeerID(t, 100+i)
	}
	ask, _ = book.startRound(many, t0.Add(2*lagRefreshInterval))
	if len(ask) != maxLagAsks {
		t.Errorf("a round asks %d members, want at most %d", len(ask), maxLagAsks)
	}
}

// seededPeerID is a peer ID made from a seed, without a node.
func seededPeerID(t testing.TB, seed int) peer.ID {
	t.Helper()
	id, err := peer.IDFromBytes(append([]byte{0x00, 0x08}, []byte(fmt.Sprintf("peer%04d", seed))...))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A live three-member cluster: every member's Stats lists the three, all
// agree on one leader, each has applied what is committed after a barrier,
// and the leader's Stats shows every member with a lag of 0; each member
// settled its bootstrap outcome, exactly one by bootstrapping. A Client
// gets the same view from any member with Status, a follower included.
func TestStatsLiveCluster(t *testing.T) {
	f := newCSFixture(t, "/raft/stats-live")
	tc, mesh := f.tc, f.mesh
	l := tc.leader(10 * time.Second)
	tc.set("stats/k", []byte("v"), 0, 1, 2)
	leaderID := mesh.ID(l)
	members := map[peer.ID]bool{mesh.ID(0): true, mesh.ID(1): true, mesh.ID(2): true}

	for i := range 3 {
		c := tc.get(i)
		tc.waitFor(10*time.Second, fmt.Sprintf("member %d's Stats: leader known, applied == commit after a barrier", i), func() bool {
			if err := c.Barrier(5 * time.Second); err != nil {
				return false
			}
			st := c.Stats()
			return st.Leader == leaderID && st.AppliedIndex == st.CommitIndex && st.CommitIndex > 0
		})
		st := c.Stats()
		if st.ID != mesh.ID(i) || st.Term == 0 || st.LastIndex < st.CommitIndex {
			t.Errorf("member %d: ID %s, term %d, last %d, commit %d", i, shortID(st.ID), st.Term, st.LastIndex, st.CommitIndex)
		}
		if (i == l) != (st.State == hraft.Leader) {
			t.Errorf("member %d: state %v, leader is %d", i, st.State, l)
		}
		if i != l && (st.LastContact < 0 || st.LastContact > 5*time.Second) {
			t.Errorf("follower %d: last contact %v ago", i, st.LastContact)
		}
		if st.PeersTracked < 2 || st.PeersAnswered < 2 {
			t.Errorf("member %d tracks %d peers, %d answered; want at least the 2 others", i, st.PeersTracked, st.PeersAnswered)
		}
		checkMembers(t, fmt.Sprintf("member %d", i), st, members, leaderID)
	}
	// A member that was added while its membership loop slept settles
	// its outcome when the loop next looks (within about 2 s).
	tc.waitFor(10*time.Second, "every member to settle its bootstrap outcome", func() bool {
		for i := range 3 {
			if tc.get(i).Stats().Bootstrap == BootstrapPending {
				return false
			}
		}
		return true
	})
	bootstrapped := 0
	for i := range 3 {
		switch o := tc.get(i).Stats().Bootstrap; o {
		case BootstrapBootstrapped:
			bootstrapped++
		case BootstrapFounder, BootstrapJoined:
		default:
			t.Errorf("member %d: bootstrap outcome %v after forming", i, o)
		}
	}
	if bootstrapped != 1 {
		t.Errorf("%d members say they bootstrapped, want 1", bootstrapped)
	}

	// The leader's view: every member caught up after a barrier. Its
	// reports refresh in the background, so poll.
	lc := tc.get(l)
	// (A barrier appends an entry: once, then no more writes.)
	if err := lc.Barrier(5 * time.Second); err != nil {
		t.Fatalf("barrier on the leader: %v", err)
	}
	var last Stats
	tc.waitFor(10*time.Second, "the leader to see every member with lag 0", func() bool {
		last = lc.Stats()
		for _, m := range last.Members {
			if !m.LagKnown || m.Lag != 0 {
				return false
			}
		}
		return len(last.Members) == 3
	})
	defer func() {
		if t.Failed() {
			t.Logf("leader's last Stats: %+v", last)
		}
	}()
	// A follower does not track lag.
	for _, m := range tc.get(tc.follower(l, 3)).Stats().Members {
		if m.LagKnown {
			t.Errorf("a follower's Stats claims a lag for %s", shortID(m.ID))
		}
	}

	// Client.Status through a follower answers the follower's own view;
	// through the leader, the lags.
	fol := tc.follower(l, 3)
	st, err := f.client.Status(5*time.Second, mesh.ID(fol))
	if err != nil {
		t.Fatalf("Status through follower %d: %v", fol, err)
	}
	if st.ID != mesh.ID(fol) || st.State != hraft.Follower || st.Leader != leaderID {
		t.Errorf("Status through follower %d: ID %s, state %v, leader %s", fol, shortID(st.ID), st.State, shortID(st.Leader))
	}
	checkMembers(t, "Status through a follower", st, members, leaderID)
	st, err = f.client.Status(5*time.Second, leaderID)
	if err != nil {
		t.Fatalf("Status through the leader: %v", err)
	}
	checkMembers(t, "Status through the leader", st, members, leaderID)
	for _, m := range st.Members {
		if !m.LagKnown {
			t.Errorf("Status through the leader: no lag for %s", shortID(m.ID))
		}
	}
	if _, err := f.client.Status(0, leaderID); !errors.Is(err, ErrInvalidTimeout) {
		t.Errorf("Status with timeout 0: %v, want ErrInvalidTimeout", err)
	}

	// Closed, a member still answers Stats at once, as shut down.
	c := tc.get(fol)
	tc.stop(fol)
	done := make(chan Stats, 1)
	go func() { done <- c.Stats() }()
	select {
	case st := <-done:
		if st.State != hraft.Shutdown {
			t.Errorf("a closed member's Stats says %v", st.State)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Stats blocked on a closed member")
	}
}

// checkMembers checks that st lists exactly want, with the leader marked.
func checkMembers(t *testing.T, who string, st Stats, want map[peer.ID]bool, leader peer.ID) {
	t.Helper()
	seen := map[peer.ID]bool{}
	for _, m := range st.Members {
		if !want[m.ID] || seen[m.ID] {
			t.Errorf("%s: unexpected or repeated member %s", who, shortID(m.ID))
		}
		seen[m.ID] = true
		if m.Suffrage != hraft.Voter {
			t.Errorf("%s: member %s is %v", who, shortID(m.ID), m.Suffrage)
		}
		if m.Leader != (m.ID == leader) {
			t.Errorf("%s: member %s leader mark %v", who, shortID(m.ID), m.Leader)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%s: %d members listed, want %d", who, len(seen), len(want))
	}
}
