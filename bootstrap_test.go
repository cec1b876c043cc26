package raft

// Unit tests of the pure decision rules of formation (bootstrap.go), and the
// builders of peer IDs and peer views that membership_test.go and
// merge_test.go share. No network: each row is the view a node holds, built
// by hand, and the rule's answer to it.

import (
	"cmp"
	"crypto/ed25519"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// rulePoolSize is how many peer IDs the rule tests can draw on: enough for
// two clusters whose voter lists are cut at maxStatusVoters.
const rulePoolSize = 200

// rulePool is a fixed set of real peer IDs (Ed25519 keys from fixed seeds),
// sorted the way the rules compare them (peer.ID order, as
// peerTracker.view sorts its views).
var rulePool = sync.OnceValue(func() []peer.ID {
	ids := make([]peer.ID, rulePoolSize)
	for i := range ids {
		seed := make([]byte, ed25519.SeedSize)
		copy(seed, fmt.Sprintf("tauraft rule peer %d", i))
		key, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
		if err != nil {
			panic(err)
		}
		if ids[i], err = peer.IDFromPrivateKey(key); err != nil {
			panic(err)
		}
	}
	slices.Sort(ids)
	if len(slices.Compact(slices.Clone(ids))) != len(ids) {
		panic("rule tests: duplicate peer IDs")
	}
	return ids
})

// ruleNamed returns the six smallest IDs of the pool: a < b < c < d < e < f.
func ruleNamed() (a, b, c, d, e, f peer.ID) {
	p := rulePool()
	return p[0], p[1], p[2], p[3], p[4], p[5]
}

// ruleFillers returns n IDs of the pool from the k-th filler on, all larger
// than f; distinct k ranges give disjoint sets.
func ruleFillers(k, n int) []peer.ID {
	return slices.Clone(rulePool()[6+k : 6+k+n])
}

// ruleConfig is a configuration of n voters: the named ones, then fillers.
func ruleConfig(n int, named ...peer.ID) []peer.ID {
	return append(slices.Clone(named), ruleFillers(0, n-len(named))...)
}

// ruleNameOf names an ID of the pool as the tables do (a to f, then pN).
var ruleNameOf = sync.OnceValue(func() map[peer.ID]string {
	names := map[peer.ID]string{}
	for i, id := range rulePool() {
		if i < 6 {
			names[id] = string(rune('a' + i))
		} else {
			names[id] = fmt.Sprintf("p%d", i)
		}
	}
	return names
})

// ruleName gives the readable name of an ID, for failure messages.
func ruleName(id peer.ID) string {
	if id == "" {
		return `""`
	}
	if n, ok := ruleNameOf()[id]; ok {
		return n
	}
	return fmt.Sprintf("?%x", []byte(id))
}

// ruleNames gives the readable names of IDs.
func ruleNames(ids []peer.ID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = ruleName(id)
	}
	return out
}

// ruleByteNames gives the readable names of IDs carried as bytes.
func ruleByteNames(ids [][]byte) []string {
	out := make([]string, len(ids))
	for i, b := range ids {
		out[i] = ruleName(peer.ID(b))
	}
	return out
}

// ruleBytes gives IDs as a status carries them.
func ruleBytes(ids ...peer.ID) [][]byte {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = []byte(id)
	}
	return out
}

// ruleSet is a voter set (the rules' mine).
func ruleSet(ids ...peer.ID) map[peer.ID]bool {
	m := map[peer.ID]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// ruleT0 is when the founders were first seen; ruleCutoff is the founder
// cutoff of the rows that do not set one.
var (
	ruleT0     = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	ruleCutoff = ruleT0.Add(time.Second)
)

// ruleMalformed is leader bytes that are no peer ID.
var ruleMalformed = []byte{0xde, 0xad, 0xbe, 0xef}

// ruleStatus is what self says of itself as a member of a configuration of
// voters that knows leader ("" for none), built as cluster.status builds it:
// the voter list cut at maxStatusVoters, Member when self is a voter.
func ruleStatus(self, leader peer.ID, voters ...peer.ID) status {
	st := status{Formed: true, Voters: len(voters), Member: slices.Contains(voters, self)}
	if leader != "" {
		st.Leader = []byte(leader)
	}
	st.VoterIDs = ruleBytes(voters[:min(len(voters), maxStatusVoters)]...)
	return st
}

// pvIdle is a live peer without a cluster, first seen at ruleT0.
func pvIdle(id peer.ID) peerView {
	return peerView{id: id, firstSeen: ruleT0, alive: true, recent: true}
}

// pvIn is a live peer with Raft state: a configuration of voters (which may
// or may not hold it) whose leader it knows ("" for none).
func pvIn(id, leader peer.ID, voters ...peer.ID) peerView {
	v := pvIdle(id)
	v.status = ruleStatus(id, leader, voters...)
	return v
}

// pvLeaderOnly is a live peer that names a leader but has no Raft state.
func pvLeaderOnly(id, leader peer.ID) peerView {
	v := pvIdle(id)
	v.status.Leader = []byte(leader)
	return v
}

// pvDead is v gone silent: not alive, its last status kept (stale) and
// still recent (within clusterMemory).
func pvDead(v peerView) peerView {
	v.alive = false
	return v
}

// pvGone is v silent for longer than clusterMemory: its status is no
// longer reported.
func pvGone(v peerView) peerView {
	v.alive, v.recent, v.status = false, false, status{}
	return v
}

// pvSeen is v first seen at another time.
func pvSeen(v peerView, at time.Time) peerView {
	v.firstSeen = at
	return v
}

// pvBadLeader is v naming a leader by bytes that are no peer ID.
func pvBadLeader(v peerView) peerView {
	v.status.Leader = ruleMalformed
	return v
}

// ruleView is the views sorted by peer ID, as peerTracker.view returns them.
func ruleView(vs ...peerView) []peerView {
	out := slices.Clone(vs)
	slices.SortFunc(out, func(x, y peerView) int { return cmp.Compare(x.id, y.id) })
	return out
}

func TestFounderRule(t *testing.T) {
	a, b, c, d, e, _ := ruleNamed()
	late := ruleCutoff.Add(time.Millisecond)
	for _, tc := range []struct {
		name   string
		self   peer.ID
		view   []peerView
		cutoff time.Time // zero: ruleCutoff
		want   []peer.ID // nil: does not bootstrap
	}{
		{name: "saw nobody: bootstraps alone", self: a, want: []peer.ID{a}},
		{name: "the largest ID that saw nobody also bootstraps alone", self: e, want: []peer.ID{e}},
		{name: "simultaneous founders, smallest: bootstraps with all of them", self: a,
			view: ruleView(pvIdle(b), pvIdle(c)), want: []peer.ID{a, b, c}},
		{name: "simultaneous founders, middle: leaves it to the smaller", self: b,
			view: ruleView(pvIdle(a), pvIdle(c))},
		{name: "simultaneous founders, largest: leaves it to the smaller", self: c,
			view: ruleView(pvIdle(a), pvIdle(b))},
		{name: "five simultaneous founders: self first, then view order", self: a,
			view: ruleView(pvIdle(e), pvIdle(c), pvIdle(b), pvIdle(d)), want: []peer.ID{a, b, c, d, e}},
		{name: "a single view of a larger idle peer: bootstraps with it", self: a,
			view: ruleView(pvIdle(b)), want: []peer.ID{a, b}},
		{name: "a single view of a smaller idle peer: does not bootstrap", self: b,
			view: ruleView(pvIdle(a))},
		{name: "founders and a late peer: the late one is not a voter, it joins later", self: a,
			view: ruleView(pvIdle(b), pvSeen(pvIdle(c), late)), want: []peer.ID{a, b}},
		{name: "first seen exactly at the cutoff: a founder", self: a,
			view: ruleView(pvSeen(pvIdle(b), ruleCutoff)), want: []peer.ID{a, b}},
		{name: "every peer seen late: bootstraps alone, they join it", self: a,
			view: ruleView(pvSeen(pvIdle(b), late), pvSeen(pvIdle(c), late)), want: []peer.ID{a}},
		{name: "a late peer with a smaller ID still blocks: it bootstraps", self: b,
			view: ruleView(pvSeen(pvIdle(a), late), pvIdle(c))},
		{name: "past the window (cutoff now): every waiting live peer is a founder", self: a,
			view:   ruleView(pvSeen(pvIdle(b), late), pvSeen(pvIdle(c), late.Add(time.Minute))),
			cutoff: late.Add(time.Hour), want: []peer.ID{a, b, c}},
		{name: "a live larger peer already formed: joins, never bootstraps", self: a,
			view: ruleView(pvIn(b, b, b))},
		{name: "a late node meets a formed cluster: joins", self: d,
			view: ruleView(pvIn(a, b, a, b, c), pvIn(b, b, a, b, c), pvIn(c, b, a, b, c))},
		{name: "one formed peer among idle ones: joins", self: a,
			view: ruleView(pvIdle(b), pvIn(c, c, c), pvIdle(d))},
		{name: "a formed peer that knows no leader (election) still blocks", self: a,
			view: ruleView(pvIn(b, "", b, c))},
		{name: "a live peer that knows a leader but has no state yet: joins", self: a,
			view: ruleView(pvLeaderOnly(b, c))},
		{name: "a live peer naming an unreadable leader claims a cluster: joins", self: a,
			view: ruleView(pvBadLeader(pvIdle(b)))},
		{name: "a dead peer with a smaller ID is ignored", self: b,
			view: ruleView(pvDead(pvIdle(a)), pvIdle(c)), want: []peer.ID{b, c}},
		{name: "a dead peer is not a founder", self: a,
			view: ruleView(pvIdle(b), pvDead(pvIdle(c))), want: []peer.ID{a, b}},
		{name: "stale view: a dead peer whose old status claims a cluster is ignored", self: a,
			view: ruleView(pvDead(pvIn(b, b, b, c)), pvIdle(c)), want: []peer.ID{a, c}},
		{name: "stale view: a dead smaller peer that knew a leader is ignored", self: b,
			view: ruleView(pvDead(pvIn(a, a, a)), pvIdle(c)), want: []peer.ID{b, c}},
		{name: "self in its own view is neither a blocker nor listed twice", self: b,
			view: ruleView(pvIdle(b), pvIdle(c)), want: []peer.ID{b, c}},
		{name: "a founder listed us, then went silent: does not bootstrap, its cluster is ours", self: c,
			view: ruleView(pvDead(pvIn(a, "", a, b, c)), pvIdle(d))},
		{name: "a live founder listed us: does not bootstrap", self: a,
			view: ruleView(pvIn(b, "", b, a), pvIdle(c))},
		{name: "a founder that listed us long ago counts for nothing", self: c,
			view: ruleView(pvGone(pvIn(a, "", a, b, c)), pvIdle(d)), want: []peer.ID{c, d}},
		{name: "only dead peers around: bootstraps alone", self: c,
			view: ruleView(pvDead(pvIdle(a)), pvDead(pvIn(b, b, b))), want: []peer.ID{c}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cutoff := tc.cutoff
			if cutoff.IsZero() {
				cutoff = ruleCutoff
			}
			voters, ok := founderRule(tc.self, tc.view, cutoff, DefaultMaxVoters, "")
			if ok != (tc.want != nil) || !slices.Equal(voters, tc.want) {
				t.Fatalf("founderRule(%s) = %v, %v; want %v, %v",
					ruleName(tc.self), ruleNames(voters), ok, ruleNames(tc.want), tc.want != nil)
			}
		})
	}
}

// Every node applies the rule to its own view: who bootstraps, and with
// whom, for the discovery patterns the mesh tests set up.
// pvWaiting is a live peer with no cluster whose window is over (deciding
// false) and whose founder claim names claimed.
func pvWaiting(id peer.ID, claimed []byte) peerView {
	v := pvIdle(id)
	v.status.Lowest = &lowestClaim{ID: claimed}
	return v
}

// pvDeciding is v still in its own bootstrap window.
func pvDeciding(v peerView) peerView {
	v.status.Deciding = true
	return v
}

func TestAwaitedFounder(t *testing.T) {
	a, b, c, _, _, _ := ruleNamed()
	for _, tc := range []struct {
		name  string
		self  peer.ID // zero: a
		view  []peerView
		lower peer.ID
		want  bool
	}{
		{name: "nobody seen", want: false},
		{name: "peers without claims", view: ruleView(pvIdle(b), pvIdle(c)), want: false},
		{name: "a peer past its window claims self: decide now",
			view: ruleView(pvWaiting(b, []byte(a)), pvIdle(c)), want: true},
		{name: "it claims another node", view: ruleView(pvWaiting(b, []byte(c))), want: false},
		{name: "it claims itself", view: ruleView(pvWaiting(b, []byte(b))), want: false},
		{name: "a peer still in its window claims self: its window ends first",
			view: ruleView(pvDeciding(pvWaiting(b, []byte(a)))), want: false},
		{name: "the claiming peer went silent", view: ruleView(pvDead(pvWaiting(b, []byte(a)))), want: false},
		{name: "the claiming peer has Raft state: there is a cluster to join",
			view: ruleView(func() peerView { v := pvIn(b, b, b); v.status.Lowest = &lowestClaim{ID: []byte(a)}; return v }()),
			want: false},
		{name: "the claiming peer names a leader",
			view: ruleView(func() peerView { v := pvLeaderOnly(b, c); v.status.Lowest = &lowestClaim{ID: []byte(a)}; return v }()),
			want: false},
		{name: "a claim that is no peer ID", view: ruleView(pvWaiting(b, ruleMalformed)), want: false},
		{name: "one of several waiting peers claims self",
			view: ruleView(pvWaiting(b, []byte(c)), pvWaiting(c, []byte(a))), want: true},
		{name: "claimed, but a smaller node is claimed or heard of: it founds",
			view: ruleView(pvWaiting(c, []byte(b))), self: b, lower: a, want: false},
		{name: "claimed, but a smaller live peer is in sight: the founder rule defers",
			view: ruleView(pvIdle(a), pvWaiting(c, []byte(b))), self: b, want: false},
		{name: "claimed, but another live peer has a cluster: joins it instead",
			view: ruleView(pvWaiting(b, []byte(a)), pvIn(c, c, c)), want: false},
		{name: "claimed, a larger lower claim does not hold it back",
			view: ruleView(pvWaiting(c, []byte(b))), self: b, lower: c, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self := tc.self
			if self == "" {
				self = a
			}
			if got := awaitedFounder(self, tc.view, tc.lower); got != tc.want {
				t.Fatalf("awaitedFounder = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFounderRuleAcrossNodes(t *testing.T) {
	a, b, c, d, e, _ := ruleNamed()
	for _, tc := range []struct {
		name string
		sees map[peer.ID][]peer.ID // each node: the live, clusterless peers it sees
		want map[peer.ID][]peer.ID // the nodes that bootstrap, with their voters
	}{
		{
			name: "three simultaneous founders: only the smallest, with all",
			sees: map[peer.ID][]peer.ID{a: {b, c}, b: {a, c}, c: {a, b}},
			want: map[peer.ID][]peer.ID{a: {a, b, c}},
		},
		{
			name: "five simultaneous founders: only the smallest, with all",
			sees: map[peer.ID][]peer.ID{a: {b, c, d, e}, b: {a, c, d, e}, c: {a, b, d, e}, d: {a, b, c, e}, e: {a, b, c, d}},
			want: map[peer.ID][]peer.ID{a: {a, b, c, d, e}},
		},
		{
			name: "partial discovery: d seen only by a, and sees only a",
			sees: map[peer.ID][]peer.ID{a: {b, c, d}, b: {a, c}, c: {a, b}, d: {a}},
			want: map[peer.ID][]peer.ID{a: {a, b, c, d}},
		},
		{
			name: "partial discovery: the smallest sees only b, b sees everyone",
			sees: map[peer.ID][]peer.ID{a: {b}, b: {a, c, d}, c: {b, d}, d: {b, c}},
			want: map[peer.ID][]peer.ID{a: {a, b}},
		},
		{
			// The race of TestBootstrapOverlappingFoundersConverge: the
			// rule cannot see it; orphanedBy resolves it (TestOrphanedBy).
			name: "overlapping founders: a-b cut during the window, both see c",
			sees: map[peer.ID][]peer.ID{a: {c}, b: {c}, c: {a, b}},
			want: map[peer.ID][]peer.ID{a: {a, c}, b: {b, c}},
		},
		{
			// Two disjoint clusters: mergeCandidates resolves it
			// (TestMergeCandidatesOneSideGivesWay).
			name: "split during formation: each side bootstraps its own",
			sees: map[peer.ID][]peer.ID{a: {b}, b: {a}, c: {d}, d: {c}},
			want: map[peer.ID][]peer.ID{a: {a, b}, c: {c, d}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, self := range slices.Sorted(maps.Keys(tc.sees)) {
				var view []peerView
				for _, id := range tc.sees[self] {
					view = append(view, pvIdle(id))
				}
				voters, ok := founderRule(self, ruleView(view...), ruleCutoff, MaxMaxVoters, "")
				want, wantOK := tc.want[self]
				if ok != wantOK || !slices.Equal(voters, want) {
					t.Errorf("%s seeing %v: founderRule = %v, %v; want %v, %v",
						ruleName(self), ruleNames(tc.sees[self]), ruleNames(voters), ok, ruleNames(want), wantOK)
				}
			}
		})
	}
}
