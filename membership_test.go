package raft

// Unit tests of the pure rules of membership.go (whom to ask to join, and
// when a voter was removed while away) and of status.listsEveryVoter, which
// gates every conclusion drawn from a voter's absence. The peer and view
// builders are in bootstrap_test.go.

import (
	"slices"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestLeaderOf(t *testing.T) {
	a, b, c, d, _, _ := ruleNamed()
	for _, tc := range []struct {
		name string
		view []peerView
		want peer.ID
	}{
		{name: "nobody in sight", want: ""},
		{name: "only clusterless peers", view: ruleView(pvIdle(a), pvIdle(b)), want: ""},
		{name: "a live formed peer reports its leader", view: ruleView(pvIdle(a), pvIn(b, c, b, c)), want: c},
		{name: "two reports: the first in view order", view: ruleView(pvIn(a, c, a, c), pvIn(b, d, b, d)), want: c},
		{name: "stale view: a dead peer's leader is ignored", view: ruleView(pvDead(pvIn(a, c, a, c)), pvIn(b, d, b, d)), want: d},
		{name: "stale view only: no leader", view: ruleView(pvDead(pvIn(a, a, a, b))), want: ""},
		{name: "a leader named without Raft state is not one to join", view: ruleView(pvLeaderOnly(a, c)), want: ""},
		{name: "a formed peer in an election is skipped", view: ruleView(pvIn(a, "", a, b), pvIn(b, d, b, d)), want: d},
		{name: "malformed leader bytes are skipped", view: ruleView(pvBadLeader(pvIn(a, a, a)), pvIn(b, c, b, c)), want: c},
		{name: "malformed leader bytes only: no leader", view: ruleView(pvBadLeader(pvIn(a, a, a))), want: ""},
		{name: "a peer that reports a cluster it is not in still names its leader", view: ruleView(pvIn(a, c, c, d)), want: c},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := leaderOf(tc.view); got != tc.want {
				t.Fatalf("leaderOf = %s, want %s", ruleName(got), ruleName(tc.want))
			}
		})
	}
}

func TestJoinTargets(t *testing.T) {
	a, b, c, d, e, _ := ruleNamed()
	abc := []peer.ID{a, b, c}
	for _, tc := range []struct {
		name string
		self peer.ID
		view []peerView
		want []peer.ID
	}{
		{name: "nobody in sight: nobody to ask", self: d},
		{name: "no cluster anywhere: nobody to ask", self: d, view: ruleView(pvIdle(a), pvIdle(b))},
		{name: "leader first, then the other live formed members, leader not repeated", self: d,
			view: ruleView(pvIn(a, b, abc...), pvIn(b, b, abc...), pvIn(c, b, abc...)), want: []peer.ID{b, a, c}},
		{name: "a lone node that bootstrapped alone: ask it", self: b,
			view: ruleView(pvIn(a, a, a)), want: []peer.ID{a}},
		{name: "clusterless peers are not asked", self: d,
			view: ruleView(pvIdle(a), pvIn(b, c, b, c), pvIdle(e)), want: []peer.ID{c, b}},
		{name: "the leader is asked even when only another member reports it", self: e,
			view: ruleView(pvIn(a, d, a, d)), want: []peer.ID{d, a}},
		{name: "never self: self reported as leader", self: a,
			view: ruleView(pvIn(b, a, a, b, c), pvIn(c, a, a, b, c)), want: []peer.ID{b, c}},
		{name: "never self: self in its own view as a formed member", self: c,
			view: ruleView(pvIn(a, a, abc...), pvIn(c, a, abc...)), want: []peer.ID{a}},
		{name: "dead members are skipped, and their stale leader is not followed", self: e,
			view: ruleView(pvDead(pvIn(a, a, a, b)), pvIn(c, d, c, d), pvDead(pvIn(b, a, a, b))), want: []peer.ID{d, c}},
		{name: "stale views only: nobody to ask", self: e,
			view: ruleView(pvDead(pvIn(a, a, abc...)), pvDead(pvIn(b, a, abc...)))},
		{name: "formed members in an election (no leader) are still asked", self: d,
			view: ruleView(pvIn(a, "", abc...), pvIn(b, "", abc...)), want: []peer.ID{a, b}},
		{name: "a member naming an unreadable leader is still asked", self: d,
			view: ruleView(pvBadLeader(pvIn(a, a, a, b)), pvIn(b, "", a, b)), want: []peer.ID{a, b}},
		{name: "a peer that names a leader without state is not asked", self: d,
			view: ruleView(pvLeaderOnly(a, b)), want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := joinTargets(tc.self, tc.view); !slices.Equal(got, tc.want) {
				t.Fatalf("joinTargets(%s) = %v, want %v", ruleName(tc.self), ruleNames(got), ruleNames(tc.want))
			}
		})
	}
}

func TestRemovedBy(t *testing.T) {
	a, b, c, d, _, _ := ruleNamed()
	// The big configuration: a, b, c and 67 more; without c it has 69
	// voters, more than a status lists.
	many := ruleConfig(70, a, b, c)
	manyWithoutC := slices.DeleteFunc(slices.Clone(many), func(id peer.ID) bool { return id == c })
	for _, tc := range []struct {
		name string
		self peer.ID
		mine []peer.ID
		view []peerView
		want []peer.ID
	}{
		{name: "removed while away: the leader of my configuration no longer lists me, listed once",
			self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(a, a, a, b), pvIn(b, a, a, b)), want: []peer.ID{a}},
		{name: "reports name two leaders of my configuration: each once, in view order",
			self: c, mine: []peer.ID{a, b, c, d},
			view: ruleView(pvIn(a, b, a, b, d), pvIn(b, a, a, b, d), pvIn(d, b, a, b, d)), want: []peer.ID{b, a}},
		{name: "still listed: nothing", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(a, a, a, b, c), pvIn(b, a, a, b, c))},
		{name: "a leader outside my configuration is ignored", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(a, d, a, b, d), pvIn(b, d, a, b, d))},
		{name: "a reporter outside my configuration is ignored", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(d, a, a, b, d))},
		{name: "stale view: a dead voter's old report is ignored", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvDead(pvIn(a, a, a, b)), pvDead(pvIn(b, a, a, b)))},
		{name: "a voter with no leader proves nothing", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(a, "", a, b), pvIn(b, "", a, b))},
		{name: "malformed leader bytes are ignored", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvBadLeader(pvIn(a, a, a, b)))},
		{name: "a voter that reports me as its leader is ignored", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIn(a, c, a, b))},
		{name: "a voter without Raft state proves nothing", self: c, mine: []peer.ID{a, b, c},
			view: ruleView(pvIdle(a), pvLeaderOnly(b, a))},
		{name: "voter list cut at maxStatusVoters: my absence proves nothing", self: c, mine: many,
			view: ruleView(pvIn(a, a, manyWithoutC...), pvIn(b, a, manyWithoutC...))},
		{name: "the same configuration listed in full (under the cap) without me: removed",
			self: c, mine: many[:maxStatusVoters],
			view: ruleView(pvIn(a, a, manyWithoutC[:maxStatusVoters-1]...)), want: []peer.ID{a}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := removedBy(tc.self, ruleSet(tc.mine...), tc.view)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("removedBy(%s) = %v, want %v", ruleName(tc.self), ruleNames(got), ruleNames(tc.want))
			}
		})
	}
}

func TestListsEveryVoter(t *testing.T) {
	a, b, c, _, _, _ := ruleNamed()
	for _, tc := range []struct {
		name string
		st   status
		want bool
	}{
		{name: "leader and every voter", st: ruleStatus(a, a, a, b, c), want: true},
		{name: "a single voter leading itself", st: ruleStatus(a, a, a), want: true},
		{name: "no leader known", st: ruleStatus(a, "", a, b, c)},
		{name: "no voter listed", st: status{Leader: []byte(a), Formed: true, Voters: 3}},
		{name: "no Raft state at all", st: status{}},
		{name: "exactly maxStatusVoters voters: listed in full", st: ruleStatus(a, a, ruleConfig(maxStatusVoters, a)...), want: true},
		{name: "one more than maxStatusVoters: the list is cut", st: ruleStatus(a, a, ruleConfig(maxStatusVoters+1, a)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.listsEveryVoter(); got != tc.want {
				t.Fatalf("listsEveryVoter = %v, want %v (leader %d bytes, %d of %d voters listed)",
					got, tc.want, len(tc.st.Leader), len(tc.st.VoterIDs), tc.st.Voters)
			}
		})
	}
}

// ruleServers is a configuration of the given voters (and non-voters).
func ruleServers(voters []peer.ID, nonvoters ...peer.ID) []hraft.Server {
	var out []hraft.Server
	for _, id := range voters {
		out = append(out, hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(id.String()), Address: hraft.ServerAddress(id.String())})
	}
	for _, id := range nonvoters {
		out = append(out, hraft.Server{Suffrage: hraft.Nonvoter, ID: hraft.ServerID(id.String()), Address: hraft.ServerAddress(id.String())})
	}
	return out
}

func TestConfigViewHasServer(t *testing.T) {
	a, b, c, _, _, x := ruleNamed()
	servers := append(ruleServers([]peer.ID{a, b}, c), hraft.Server{ID: "not-a-peer-id", Suffrage: hraft.Voter})
	v := newConfigView(nil, time.Time{}, servers, nil)
	for _, tc := range []struct {
		id   peer.ID
		want bool
	}{{a, true}, {b, true}, {c, true}, {x, false}, {"", false}} {
		if got := v.hasServer(tc.id); got != tc.want {
			t.Errorf("hasServer(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
	if newConfigView(nil, time.Time{}, nil, v).hasServer(a) {
		t.Error("an empty configuration has a server")
	}
	// The next view of the same servers (a fresh copy, suffrages changed)
	// reuses the decoded IDs; one whose servers changed decodes its own.
	same := slices.Clone(servers)
	same[0].Suffrage = hraft.Nonvoter
	if w := newConfigView(nil, time.Time{}, same, v); &w.ids[0] != &v.ids[0] || !w.hasServer(a) || w.hasServer(x) {
		t.Error("a view of the same servers did not reuse the decoded IDs, or answers differently")
	}
	changed := append(slices.Clone(servers[1:]), hraft.Server{ID: hraft.ServerID(x.String()), Suffrage: hraft.Voter})
	w := newConfigView(nil, time.Time{}, changed, v)
	for _, tc := range []struct {
		id   peer.ID
		want bool
	}{{a, false}, {b, true}, {c, true}, {x, true}} {
		if got := w.hasServer(tc.id); got != tc.want {
			t.Errorf("after a change, hasServer(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestAdmitRPC(t *testing.T) {
	a, b, c, d, e, x := ruleNamed()
	abc := ruleServers([]peer.ID{a, b, c})
	leaderOnly := []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot, rpcTypeTimeoutNow}
	for _, tc := range []struct {
		name    string
		types   []byte
		from    peer.ID
		servers []hraft.Server
		view    []peerView
		asking  peer.ID // the peer this member's join request is with
		admit   bool
	}{
		{name: "votes go to Raft, which checks membership itself", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote}, from: x, servers: abc, admit: true},
		{name: "a voter of the configuration", types: leaderOnly, from: b, servers: abc, admit: true},
		{name: "a non-voter of the configuration", types: leaderOnly, from: d, servers: ruleServers([]peer.ID{a, b, c}, d), admit: true},
		{name: "an outsider", types: leaderOnly, from: x, servers: abc},
		{name: "an outsider that one voter follows (no majority)", types: leaderOnly, from: x, servers: abc,
			view: ruleView(pvIn(b, x, b, c, x))},
		{name: "a leader added later, which two of three voters follow", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: d, servers: abc,
			view: ruleView(pvIn(b, d, a, b, c, d), pvIn(c, d, a, b, c, d)), admit: true},
		{name: "TimeoutNow only from the configuration, even from a followed leader", types: []byte{rpcTypeTimeoutNow}, from: d, servers: abc,
			view: ruleView(pvIn(b, d, a, b, c, d), pvIn(c, d, a, b, c, d))},
		{name: "stale reports of following do not count", types: leaderOnly, from: d, servers: abc,
			view: ruleView(pvDead(pvIn(b, d, a, b, c, d)), pvDead(pvIn(c, d, a, b, c, d)))},
		{name: "reports from outside the configuration do not count", types: leaderOnly, from: x, servers: abc,
			view: ruleView(pvIn(d, x, d, e, x), pvIn(e, x, d, e, x))},
		{name: "a joining member (no configuration) takes the appends of the leader its peers report", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x,
			view: ruleView(pvIn(a, x, a, x)), admit: true},
		{name: "a joining member refuses appends from a peer nobody reports as leader", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x,
			view: ruleView(pvIn(a, b, a, b))},
		{name: "a joining member refuses appends from a leader only a dead peer reported", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x,
			view: ruleView(pvDead(pvIn(a, x, a, x)))},
		{name: "a joining member takes no votes and no TimeoutNow from a reported leader", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote, rpcTypeTimeoutNow}, from: x,
			view: ruleView(pvIn(b, x, b, x))},
		{name: "a founder waiting for its configuration takes the votes and appends of the founder that bootstrapped it", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote, rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: b,
			view: ruleView(pvIn(b, "", a, b, c)), admit: true},
		{name: "a founder whose exchanges time out for a while is still taken (recent, not alive)", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote, rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: b,
			view: ruleView(pvDead(pvIn(b, "", a, b, c))), admit: true},
		{name: "a founder silent for longer than clusterMemory is not", types: []byte{rpcTypeRequestVote, rpcTypeAppendEntries}, from: b,
			view: ruleView(pvGone(pvIn(b, "", a, b, c)))},
		{name: "a founder takes no TimeoutNow before its configuration", types: []byte{rpcTypeTimeoutNow}, from: b,
			view: ruleView(pvIn(b, "", a, b, c))},
		{name: "a peer whose configuration does not list this member gets no vote", types: []byte{rpcTypeRequestVote, rpcTypeAppendEntries}, from: b,
			view: ruleView(pvIn(b, "", b, c))},
		{name: "a stranger gets no vote from a member without configuration", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote}, from: x},
		{name: "a joining member takes the appends of the peer its join request is with", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x,
			asking: x, admit: true},
		{name: "a joining member takes no votes and no TimeoutNow from the peer it asks", types: []byte{rpcTypeRequestVote, rpcTypeRequestPreVote, rpcTypeTimeoutNow}, from: x,
			asking: x},
		{name: "a joining member refuses appends from a peer other than the one it asks", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x,
			asking: b},
		{name: "the peer asked counts only before a configuration", types: []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot}, from: x, servers: abc,
			asking: x},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The guard's shortcut (a server of the configuration is
			// admitted without the rule) never admits what it refuses.
			v := newConfigView(nil, time.Time{}, tc.servers, nil)
			if len(tc.servers) > 0 && v.hasServer(tc.from) && !tc.admit {
				t.Fatalf("the shortcut admits %s, which the rule refuses", ruleName(tc.from))
			}
			for _, typ := range tc.types {
				err := admitRPC(typ, a, tc.from, tc.servers, tc.view, tc.asking)
				if (err == nil) != tc.admit {
					t.Fatalf("admitRPC(type %d, %s) = %v, want admitted %v", typ, ruleName(tc.from), err, tc.admit)
				}
			}
		})
	}
}
