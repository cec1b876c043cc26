package raft

import (
	"fmt"
	"slices"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

func TestAutopilotPlan(t *testing.T) {
	a, b, c, d, e, f := ruleNamed()
	g := ruleFillers(0, 1)[0]
	now := time.Unix(1000, 0)
	cfg := AutopilotConfig{DeadAfter: 2 * time.Second, RemoveAfter: 10 * time.Second, MinQuorum: 3}
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	leader := func(id peer.ID) apServer { return apServer{id: id, voter: true, leader: true} }
	voter := func(id peer.ID) apServer { return apServer{id: id, voter: true} }
	spare := func(id peer.ID) apServer { return apServer{id: id, caughtUp: true} }
	lostFor := func(s apServer, d time.Duration) apServer { s.lost = ago(d); return s }
	for _, tc := range []struct {
		name string
		s    []apServer
		max  int
		want []apAction
	}{
		{name: "all healthy, cap full: nothing", max: 3,
			s: []apServer{leader(a), voter(b), voter(c), spare(d)}},
		{name: "a voter out of contact under DeadAfter: nothing", max: 3,
			s: []apServer{leader(a), voter(b), lostFor(voter(c), time.Second), spare(d)}},
		{name: "a dead voter: the smallest spare promoted, then the voter demoted", max: 3,
			s:    []apServer{leader(a), voter(b), lostFor(voter(c), 3*time.Second), spare(e), spare(d)},
			want: []apAction{{apPromote, d}, {apDemote, c}}},
		{name: "two dead voters: the longest gone first", max: 5,
			s:    []apServer{leader(a), voter(b), lostFor(voter(c), 3*time.Second), lostFor(voter(d), 5*time.Second), voter(e), spare(f), spare(g)},
			want: []apAction{{apPromote, f}, {apDemote, d}, {apPromote, g}, {apDemote, c}}},
		{name: "replacement in (voters over the cap): demote the dead voter", max: 3,
			s:    []apServer{leader(a), voter(b), lostFor(voter(c), 3*time.Second), voter(d)},
			want: []apAction{{apDemote, c}}},
		{name: "a dead voter and no spare: kept until RemoveAfter", max: 5,
			s: []apServer{leader(a), voter(b), voter(d), lostFor(voter(c), 5*time.Second)}},
		{name: "a spare not caught up is not promoted", max: 3,
			s: []apServer{leader(a), voter(b), lostFor(voter(c), 3*time.Second), {id: d}}},
		{name: "a spare out of contact is not promoted", max: 3,
			s: []apServer{leader(a), voter(b), lostFor(voter(c), 3*time.Second), lostFor(spare(d), time.Second)}},
		{name: "a voter gone past RemoveAfter, above MinQuorum: removed", max: 5,
			s:    []apServer{leader(a), voter(b), voter(c), lostFor(voter(d), 11*time.Second)},
			want: []apAction{{apRemove, d}}},
		{name: "never below MinQuorum", max: 5,
			s: []apServer{leader(a), voter(b), lostFor(voter(c), 11*time.Second)}},
		{name: "two gone voters, room for one removal only", max: 5,
			s:    []apServer{leader(a), voter(b), lostFor(voter(c), 12*time.Second), lostFor(voter(d), 11*time.Second)},
			want: []apAction{{apRemove, c}}},
		{name: "a gone non-voter is removed whatever the voters", max: 3,
			s:    []apServer{leader(a), voter(b), lostFor(spare(c), 11*time.Second)},
			want: []apAction{{apRemove, c}}},
		{name: "an empty seat is filled by the smallest spare", max: 5,
			s:    []apServer{leader(a), voter(b), voter(c), spare(e), spare(d)},
			want: []apAction{{apPromote, d}, {apPromote, e}}},
		{name: "the leader is never gone", max: 3,
			s: []apServer{lostFor(leader(a), time.Hour), voter(b), voter(c), spare(d)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := autopilotPlan(tc.s, now, cfg, tc.max)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("plan = %v, want %v", apNames(got), apNames(tc.want))
			}
		})
	}
}

func apNames(as []apAction) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.kind.String()+" "+ruleName(a.id))
	}
	return out
}

func TestAutopilotConfigResolve(t *testing.T) {
	el := 500 * time.Millisecond
	got, err := AutopilotConfig{}.resolve(el, 5)
	if err != nil || got.DeadAfter != 3*el || got.RemoveAfter != DefaultRemoveAfter || got.MinQuorum != 3 {
		t.Fatalf("defaults: %+v, %v", got, err)
	}
	if got, _ := (AutopilotConfig{}).resolve(el, 1); got.MinQuorum != 1 {
		t.Fatalf("MinQuorum under a cap of 1: %d", got.MinQuorum)
	}
	for _, bad := range []AutopilotConfig{
		{DeadAfter: el / 2},
		{DeadAfter: 2 * time.Second, RemoveAfter: time.Second},
		{MinQuorum: 7},
	} {
		if _, err := bad.resolve(el, 5); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// roles returns the voters and non-voters of c's configuration, as mesh
// indexes.
func roles(mesh *rafttest.Mesh, c Cluster) (voters, nonVoters []int) {
	ms, err := c.Members()
	if err != nil {
		return nil, nil
	}
	for _, m := range ms {
		if m.Suffrage == hraft.Voter {
			voters = append(voters, mesh.Index(m.ID))
		} else {
			nonVoters = append(nonVoters, mesh.Index(m.ID))
		}
	}
	slices.Sort(voters)
	slices.Sort(nonVoters)
	return voters, nonVoters
}

// TestAutopilotReplacesDeadVoters: nine members, five voters. Two voters
// stop: both are replaced by non-voters within DeadAfter + 2 s and writes go
// on; back, they are non-voters. Then the other members stop one by one
// down to the minimum quorum: autopilot removes the dead past RemoveAfter
// but never below MinQuorum.
func TestAutopilotReplacesDeadVoters(t *testing.T) {
	const n = 9
	mesh := rafttest.NewMesh(t, n, rafttest.Connected())
	ap := AutopilotConfig{DeadAfter: 1500 * time.Millisecond, RemoveAfter: 4 * time.Second, MinQuorum: 3}
	tc := newTestCluster(t, mesh, "/raft/autopilot", WithAutopilot(ap))
	if err := tc.startEach(seq(n), forceFirst); err != nil {
		t.Fatal(err)
	}
	tc.waitFor(30*time.Second, "5 voters and 4 non-voters", func() bool {
		for _, i := range tc.running() {
			if v, nv := suffrages(tc.get(i)); v != 5 || nv != 4 {
				return false
			}
		}
		return true
	})
	l := tc.leader(10 * time.Second)
	voters, _ := roles(mesh, tc.get(l))
	var killed []int
	for _, v := range voters {
		if v != l && len(killed) < 2 {
			killed = append(killed, v)
		}
	}
	t.Logf("leader %d, stopping voters %v", l, killed)
	stopped := time.Now()
	for _, i := range killed {
		tc.stop(i)
	}
	tc.waitFor(ap.DeadAfter+2*time.Second, "both dead voters replaced", func() bool {
		c := tc.get(leaderOr(tc, l))
		v, _ := roles(mesh, c)
		return len(v) == 5 && !slices.Contains(v, killed[0]) && !slices.Contains(v, killed[1])
	})
	t.Logf("replaced after %v (DeadAfter %v)", time.Since(stopped).Round(time.Millisecond), ap.DeadAfter)
	tc.set("after-replacement", []byte("x"))

	// Back: they rejoin as non-voters and catch up.
	for _, i := range killed {
		tc.mustStart(i)
	}
	tc.waitFor(20*time.Second, "the returned members as caught-up non-voters", func() bool {
		for _, i := range killed {
			_, nv := roles(mesh, tc.get(leaderOr(tc, l)))
			if !slices.Contains(nv, i) {
				return false
			}
			if v, ok := tc.get(i).Get("after-replacement"); !ok || string(v) != "x" {
				return false
			}
		}
		return true
	})

	// Stop the non-voters, then voters one by one: the dead are removed
	// past RemoveAfter, never below MinQuorum.
	l = tc.leader(10 * time.Second)
	_, nonVoters := roles(mesh, tc.get(l))
	for _, i := range nonVoters {
		tc.stop(i)
	}
	for k := 0; ; k++ {
		l = tc.leader(20 * time.Second)
		voters, _ = roles(mesh, tc.get(l))
		if len(voters) == ap.MinQuorum {
			break
		}
		victim := voters[0]
		if victim == l {
			victim = voters[1]
		}
		tc.stop(victim)
		want := len(voters) - 1
		tc.waitFor(ap.RemoveAfter+10*time.Second, fmt.Sprintf("voter %d removed (%d voters left)", victim, want), func() bool {
			c := tc.get(leaderOr(tc, l))
			v, _ := roles(mesh, c)
			return len(v) == want && !slices.Contains(v, victim)
		})
	}
	// At MinQuorum, one more voter stops: the other two keep the quorum
	// and it is never removed.
	voters, _ = roles(mesh, tc.get(l))
	victim := voters[0]
	if victim == l {
		victim = voters[1]
	}
	tc.stop(victim)
	tc.set("at-min-quorum", []byte("y"))
	deadline := time.Now().Add(ap.RemoveAfter + 3*time.Second)
	for time.Now().Before(deadline) {
		v, _ := roles(mesh, tc.get(leaderOr(tc, l)))
		if len(v) < ap.MinQuorum {
			t.Fatalf("voters %v: below MinQuorum %d", v, ap.MinQuorum)
		}
		time.Sleep(rafttest.PollInterval)
	}
	tc.set("still-writing", []byte("z"))
}

// leaderOr is the running member that leads, else fallback if it runs,
// else any running member.
func leaderOr(tc *testCluster, fallback int) int {
	running := tc.running()
	for _, i := range running {
		if c := tc.get(i); c != nil && c.IsLeader() {
			return i
		}
	}
	if slices.Contains(running, fallback) {
		return fallback
	}
	return running[0]
}
