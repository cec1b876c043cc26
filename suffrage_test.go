package raft

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// servers builds a configuration: voters, then non-voters.
func servers(voters []peer.ID, nonVoters ...peer.ID) []hraft.Server {
	var out []hraft.Server
	for _, id := range voters {
		out = append(out, hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(id.String()), Address: hraft.ServerAddress(id.String())})
	}
	for _, id := range nonVoters {
		out = append(out, hraft.Server{Suffrage: hraft.Nonvoter, ID: hraft.ServerID(id.String()), Address: hraft.ServerAddress(id.String())})
	}
	return out
}

func TestJoinSuffrage(t *testing.T) {
	a, b, c, d, e, f := ruleNamed()
	sid := func(id peer.ID) hraft.ServerID { return hraft.ServerID(id.String()) }
	for _, tc := range []struct {
		name string
		conf []hraft.Server
		id   peer.ID
		max  int
		want joinAction
	}{
		{name: "empty configuration: a voter", id: a, max: 5, want: joinAsVoter},
		{name: "room under the cap: a voter", conf: servers([]peer.ID{a, b}), id: c, max: 3, want: joinAsVoter},
		{name: "cap reached: a non-voter", conf: servers([]peer.ID{a, b, c}), id: d, max: 3, want: joinAsNonvoter},
		{name: "non-voters do not count toward the cap", conf: servers([]peer.ID{a, b}, c, d), id: e, max: 3, want: joinAsVoter},
		{name: "already a voter: nothing", conf: servers([]peer.ID{a, b, c}), id: b, max: 3, want: joinNothing},
		{name: "already a non-voter: nothing (autopilot promotes)", conf: servers([]peer.ID{a}, b), id: b, max: 3, want: joinNothing},
		{name: "over the cap (an explicit AddVoter): a non-voter", conf: servers([]peer.ID{a, b, c, d}), id: f, max: 3, want: joinAsNonvoter},
		{name: "cap of one", conf: servers([]peer.ID{a}), id: b, max: 1, want: joinAsNonvoter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := joinSuffrage(tc.conf, sid(tc.id), tc.max); got != tc.want {
				t.Fatalf("joinSuffrage = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCapFounders(t *testing.T) {
	a, b, c, d, e, f := ruleNamed()
	all := []peer.ID{a, b, c, d, e, f}
	for _, tc := range []struct {
		max  int
		want []peer.ID
	}{
		{1, []peer.ID{a}}, {3, []peer.ID{a, b, c}}, {5, []peer.ID{a, b, c, d, e}}, {7, all},
	} {
		if got := capFounders(slices.Clone(all), tc.max); !slices.Equal(got, tc.want) {
			t.Errorf("capFounders(6 founders, %d) = %v, want %v", tc.max, ruleNames(got), ruleNames(tc.want))
		}
	}
	// Through the founder rule: the smallest bootstraps with the cap's
	// worth of the smallest IDs; the rest join.
	view := ruleView(pvIdle(b), pvIdle(c), pvIdle(d), pvIdle(e), pvIdle(f))
	if got, ok := founderRule(a, view, ruleCutoff, 3, ""); !ok || !slices.Equal(got, []peer.ID{a, b, c}) {
		t.Fatalf("founderRule with a cap of 3 = %v, %v; want [a b c], true", ruleNames(got), ok)
	}
}

func TestListsEveryServerAndHolds(t *testing.T) {
	a, b, c, d, _, _ := ruleNamed()
	withNV := func(st status, count int, ids ...peer.ID) status {
		st.NonVoters = &nonVoterList{Count: count, IDs: ruleBytes(ids...)}
		return st
	}
	for _, tc := range []struct {
		name      string
		st        status
		every     bool
		holdsC    bool
		holdsDNot bool
	}{
		{name: "an older build: no non-voter list, voters in full", st: ruleStatus(a, a, a, b), every: true, holdsDNot: true},
		{name: "non-voters listed in full", st: withNV(ruleStatus(a, a, a, b), 1, c), every: true, holdsC: true, holdsDNot: true},
		{name: "non-voter list cut short", st: withNV(ruleStatus(a, a, a, b), 2, c), holdsC: true, holdsDNot: true},
		{name: "voters cut short", st: ruleStatus(a, a, ruleConfig(maxStatusVoters+1, a)...), holdsDNot: true},
		{name: "no leader named", st: ruleStatus(a, "", a, b), holdsDNot: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.listsEveryServer(); got != tc.every {
				t.Errorf("listsEveryServer = %v, want %v", got, tc.every)
			}
			if got := tc.st.holds(c); got != tc.holdsC {
				t.Errorf("holds(c) = %v, want %v", got, tc.holdsC)
			}
			if tc.holdsDNot && tc.st.holds(d) {
				t.Errorf("holds(d) = true for a status that does not list d")
			}
		})
	}
}

// TestRemovedByNonVoter: a non-voter reads its absence from the non-voter
// list, never from the voter list alone.
func TestRemovedByNonVoter(t *testing.T) {
	a, b, c, d, _, _ := ruleNamed()
	mine := ruleSet(a, b)
	listed := pvIn(a, a, a, b)
	listed.status.NonVoters = &nonVoterList{Count: 1, IDs: ruleBytes(d)}
	if got := removedBy(d, mine, ruleView(listed)); len(got) != 0 {
		t.Fatalf("a non-voter still listed counts as removed by %v", ruleNames(got))
	}
	gone := pvIn(a, a, a, b)
	gone.status.NonVoters = &nonVoterList{Count: 1, IDs: ruleBytes(c)}
	if got := removedBy(d, mine, ruleView(gone)); !slices.Equal(got, []peer.ID{a}) {
		t.Fatalf("a non-voter no longer listed: removedBy = %v, want [a]", ruleNames(got))
	}
	cut := pvIn(a, a, a, b)
	cut.status.NonVoters = &nonVoterList{Count: 2, IDs: ruleBytes(c)}
	if got := removedBy(d, mine, ruleView(cut)); len(got) != 0 {
		t.Fatalf("a cut non-voter list proves nothing, yet removedBy = %v", ruleNames(got))
	}
}

// TestNonVotersOnTheWire: the non-voter list travels beside the status,
// whose array form an older member still decodes.
func TestNonVotersOnTheWire(t *testing.T) {
	a, b, c, _, _, _ := ruleNamed()
	st := ruleStatus(a, a, a, b)
	st.NonVoters = &nonVoterList{Count: 1, IDs: ruleBytes(c)}
	req := &request{Cmd: cmdExchangePeers}
	req.setStatus(&st)
	b1, err := cbor.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var got request
	if err := wireDec.Unmarshal(b1, &got); err != nil {
		t.Fatal(err)
	}
	full := got.status()
	if full.NonVoters == nil || full.NonVoters.Count != 1 || !full.holds(c) || !full.holds(a) {
		t.Fatalf("decoded status lost the non-voters: %+v", full)
	}
	// An older member's status had these six elements.
	type oldStatus struct {
		_        struct{} `cbor:",toarray"`
		Leader   []byte
		Formed   bool
		Deciding bool
		Voters   int
		Member   bool
		VoterIDs [][]byte
	}
	sb, err := cbor.Marshal(&st)
	if err != nil {
		t.Fatal(err)
	}
	var old oldStatus
	if err := wireDec.Unmarshal(sb, &old); err != nil {
		t.Fatalf("an older member cannot decode the status: %v", err)
	}
}

func TestWithMaxVotersValidates(t *testing.T) {
	for _, n := range []int{0, -1, 2, 4, MaxMaxVoters + 1, MaxMaxVoters + 2} {
		c := defaultConfig()
		if err := WithMaxVoters(n)(c); err == nil || !strings.Contains(err.Error(), "WithMaxVoters") {
			t.Errorf("WithMaxVoters(%d) = %v, want an error naming the option", n, err)
		}
	}
	for _, n := range []int{1, 3, 5, 7, MaxMaxVoters} {
		c := defaultConfig()
		if err := WithMaxVoters(n)(c); err != nil || c.maxVoters != n {
			t.Errorf("WithMaxVoters(%d) = %v (cap %d)", n, err, c.maxVoters)
		}
	}
	if c := defaultConfig(); c.maxVoters != DefaultMaxVoters {
		t.Errorf("default cap %d, want %d", c.maxVoters, DefaultMaxVoters)
	}
}

// suffrages counts the voters and non-voters c's configuration holds.
func suffrages(c Cluster) (voters, nonVoters int) {
	ms, err := c.Members()
	if err != nil {
		return 0, 0
	}
	for _, m := range ms {
		if m.Suffrage == hraft.Voter {
			voters++
		} else {
			nonVoters++
		}
	}
	return voters, nonVoters
}

// TestMaxVotersNonVotersServe: seven members under a cap of three: three
// voters and four non-voters, which replicate every write, take writes
// (forwarded to the leader) and serve barrier reads, locally and to a
// Client.
func TestMaxVotersNonVotersServe(t *testing.T) {
	const n = 7
	mesh := rafttest.NewMesh(t, n+1, rafttest.Connected())
	ns := "/raft/maxvoters"
	tc := newTestCluster(t, mesh, ns, WithMaxVoters(3))
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	tc.startAll(idx...)
	tc.waitFor(30*time.Second, "3 voters and 4 non-voters on every member", func() bool {
		for _, i := range idx {
			if v, nv := suffrages(tc.get(i)); v != 3 || nv != 4 {
				return false
			}
		}
		return true
	})
	l := tc.leader(10 * time.Second)
	var nonVoters []int
	ms, _ := tc.get(l).Members()
	for _, m := range ms {
		if m.Suffrage == hraft.Nonvoter {
			nonVoters = append(nonVoters, mesh.Index(m.ID))
		}
	}
	// Writes through each non-voter (Txn forwards) reach every member.
	for k, i := range nonVoters {
		key := fmt.Sprintf("nv%d", k)
		if err := retry(10*time.Second, notAppliedOrLost, func() error {
			_, err := tc.get(i).Txn(Txn{Then: []Op{SetOp(key, []byte(key))}}, 2*time.Second)
			return err
		}); err != nil {
			t.Fatalf("write through non-voter %d: %v", i, err)
		}
		// A barrier read on another non-voter sees it.
		other := nonVoters[(k+1)%len(nonVoters)]
		if err := tc.get(other).Barrier(5 * time.Second); err != nil {
			t.Fatalf("Barrier on non-voter %d: %v", other, err)
		}
		if v, ok := tc.get(other).Get(key); !ok || string(v) != key {
			t.Fatalf("non-voter %d after a barrier: %s = %q, %v", other, key, v, ok)
		}
	}
	for _, i := range idx {
		tc.waitValue(i, "nv0", []byte("nv0"))
	}
	// A Client's barrier read served by a non-voter.
	cl, err := NewClient(mesh.Node(n), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	target := mesh.ID(nonVoters[0])
	if err := cl.Set("client", []byte("x"), 5*time.Second, target); err != nil {
		t.Fatalf("Client Set through a non-voter: %v", err)
	}
	v, ok, err := cl.Get("client", int64(5*time.Second), mesh.ID(nonVoters[1]))
	if err != nil || !ok || string(v) != "x" {
		t.Fatalf("Client barrier Get from a non-voter: %q, %v, %v", v, ok, err)
	}
	for _, i := range nonVoters {
		if tc.get(i).IsLeader() {
			t.Fatalf("non-voter %d leads", i)
		}
	}
}
