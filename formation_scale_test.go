package raft

// Unit tests of the rules that keep formation cheap and single at dozens
// of members: the exchange pace, the lone-bootstrap wait, cluster
// sightings passed on by joiners.

import (
	"math"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestFastRoundInterval(t *testing.T) {
	base := 150 * time.Millisecond
	for _, tc := range []struct {
		proven int
		want   time.Duration
	}{
		{0, base},
		{3, base},
		{2 * exchangeFanout, base},                // up to 12 peers: the base pace
		{24, 2 * base},                            // twice the peers, half the rounds
		{48, 4 * base},                            // 48 peers: 600 ms
		{1000, steadyExchangeInterval},            // never slower than the steady pace
		{2*exchangeFanout + 1, base * 13 / 12},    // in proportion just past the bend
		{maxTrackedPeers, steadyExchangeInterval}, // the tracker's cap
		{4 * exchangeFanout, base * 4 * exchangeFanout / 12}, // 24 again, spelled out
	} {
		if got := fastRoundInterval(base, tc.proven); got != tc.want {
			t.Errorf("fastRoundInterval(%v, %d) = %v; want %v", base, tc.proven, got, tc.want)
		}
	}
	// Exchanges started per second stay within the base pace's at 12 peers.
	for proven := 2 * exchangeFanout; proven <= 200; proven++ {
		rate := float64(exchangeFanout) / fastRoundInterval(base, proven).Seconds()
		if max := float64(exchangeFanout) / base.Seconds(); rate > max+1e-9 {
			t.Fatalf("%d peers: %.1f exchanges a second; want at most %.1f", proven, rate, max)
		}
	}
}

func TestAloneWhileUnreached(t *testing.T) {
	a, b, c, _, _, _ := ruleNamed()
	unreached := func(id peerView) peerView {
		id.alive, id.recent, id.heardOf, id.status = false, false, true, status{}
		return id
	}
	connectedOnly := func(id peerView) peerView {
		id = unreached(id)
		id.heardOf = false
		return id
	}
	for _, tc := range []struct {
		name   string
		voters []peer.ID
		view   []peerView
		want   bool
	}{
		{name: "nobody heard of: bootstraps alone", voters: []peer.ID{a}},
		{name: "a peer heard of that never answered: waits", voters: []peer.ID{a},
			view: ruleView(unreached(pvIdle(b))), want: true},
		{name: "a peer only connected (no name from discovery or a member): does not wait", voters: []peer.ID{a},
			view: ruleView(connectedOnly(pvIdle(b)))},
		{name: "a peer that answered lately (recent, not alive) is no reason to wait", voters: []peer.ID{a},
			view: ruleView(pvDead(pvIdle(b)))},
		{name: "not alone: a founder group does not wait", voters: []peer.ID{a, c},
			view: ruleView(unreached(pvIdle(b)), pvIdle(c))},
		{name: "self in the view does not count", voters: []peer.ID{a},
			view: ruleView(unreached(pvIdle(a)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := aloneWhileUnreached(tc.voters, tc.view); got != tc.want {
				t.Fatalf("aloneWhileUnreached = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestClusterSightingsAgeAsTheyTravel(t *testing.T) {
	tr, _ := newIdleTracker(t)
	if tr.clusterAge() != nil || tr.sawClusterRecently() {
		t.Fatal("a new tracker claims a cluster sighting")
	}
	from := randomPeers(t, 1)[0]
	ms := func(d time.Duration) *int64 { v := d.Milliseconds(); return &v }

	// Ages at or past clusterMemory, negative, or absurd are ignored.
	for _, age := range []*int64{nil, ms(tr.clusterMemory()), ms(-time.Second), ms(time.Hour)} {
		tr.answered(from, &status{SawCluster: age})
		if tr.sawClusterRecently() {
			t.Fatalf("took a sighting aged %v", age)
		}
	}
	huge := int64(math.MaxInt64)
	tr.answered(from, &status{SawCluster: &huge})
	if tr.sawClusterRecently() {
		t.Fatal("took a sighting with an overflowing age")
	}

	// A joiner's sighting counts, keeping its age.
	tr.answered(from, &status{SawCluster: ms(time.Second)})
	if !tr.sawClusterRecently() {
		t.Fatal("a sighting passed on by a joiner does not count")
	}
	got := tr.clusterAge()
	if got == nil || *got < 1000 || *got > 1000+time.Minute.Milliseconds() {
		t.Fatalf("passed on with age %v; want at least the 1000 ms it came with", got)
	}
	// An older sighting does not move it back; a newer one moves it forward.
	tr.answered(from, &status{SawCluster: ms(3 * time.Second)})
	if g := tr.clusterAge(); *g >= 3000 {
		t.Fatalf("an older sighting replaced a newer one (age %d ms)", *g)
	}
	tr.answered(from, &status{SawCluster: ms(0)})
	if g := tr.clusterAge(); *g >= 1000 {
		t.Fatalf("a newer sighting did not replace an older one (age %d ms)", *g)
	}
}

func TestJoinerThatSawAClusterSlowsItsExchanges(t *testing.T) {
	tr, _ := newIdleTracker(t) // window 1 s: fastInterval 100 ms
	base := tr.fastInterval()
	if got := tr.roundInterval(0); got != base {
		t.Fatalf("joining, no cluster seen: %v; want the fast pace %v", got, base)
	}
	tr.sawCluster.Store(time.Now().UnixNano())
	tr.deciding.Store(true)
	if got := tr.roundInterval(0); got != base {
		t.Fatalf("still in its window: %v; want the fast pace %v", got, base)
	}
	tr.deciding.Store(false)
	if got := tr.roundInterval(0); got != joiningExchangeInterval {
		t.Fatalf("waiting to be added to a cluster it saw: %v; want %v", got, joiningExchangeInterval)
	}
	tr.fast.Store(false)
	if got := tr.roundInterval(0); got != steadyExchangeInterval {
		t.Fatalf("a member: %v; want the steady pace %v", got, steadyExchangeInterval)
	}
}

// TestJoinableSignalsANewPlaceToJoin: a peer's first answer that it has a
// cluster wakes a node waiting to be added (peerTracker.joinable); its
// later answers, a clusterless peer's, and a joiner passing on a sighting
// second-hand do not (they give the node nobody new to ask).
func TestJoinableSignalsANewPlaceToJoin(t *testing.T) {
	tr, _ := newIdleTracker(t)
	ids := randomPeers(t, 3)
	signalled := func() bool {
		select {
		case <-tr.joinable:
			return true
		default:
			return false
		}
	}
	age := int64(100)
	steps := []struct {
		name string
		from peer.ID
		st   *status
		want bool
	}{
		{"clusterless peer", ids[0], &status{}, false},
		{"joiner passing on a sighting", ids[0], &status{SawCluster: &age}, false},
		{"the same peer, now formed", ids[0], &status{Formed: true}, true},
		{"it again, still formed", ids[0], &status{Formed: true}, false},
		{"a second formed peer", ids[1], &status{Formed: true, LastIndex: 3}, true},
		{"no status", ids[2], nil, false},
		{"the first peer after a reset, clusterless", ids[0], &status{}, false},
		{"the first peer formed again", ids[0], &status{Formed: true}, true},
	}
	for _, s := range steps {
		tr.answered(s.from, s.st)
		if got := signalled(); got != s.want {
			t.Errorf("%s: signalled %v, want %v", s.name, got, s.want)
		}
	}
}

// TestJoinAcceptedAdmitsTheLeader: once a tracked peer has accepted this
// node's join request for a leader, that leader's appends are admitted to
// this node without a configuration, before any exchange reports it; a
// peer that is not tracked adds nothing, and views taken before keep what
// they held.
func TestJoinAcceptedAdmitsTheLeader(t *testing.T) {
	tr, _ := newIdleTracker(t)
	ids := randomPeers(t, 3)
	via, leader, stranger := ids[0], ids[1], ids[2]
	tr.learn(via, nil, 0, true)
	tr.answered(via, &status{LastIndex: 0}) // clusterless when it last exchanged
	before := tr.view()
	if admitRPC(rpcTypeAppendEntries, tr.self, leader, nil, before, "") == nil {
		t.Fatal("appends admitted from a leader nobody reported")
	}

	tr.joinAccepted(stranger, leader) // not tracked: nothing to update
	if admitRPC(rpcTypeAppendEntries, tr.self, leader, nil, tr.view(), "") == nil {
		t.Fatal("an untracked peer's acceptance admitted its leader")
	}

	tr.joinAccepted(via, leader)
	after := tr.view()
	for _, typ := range []byte{rpcTypeAppendEntries, rpcTypeInstallSnapshot} {
		if err := admitRPC(typ, tr.self, leader, nil, after, ""); err != nil {
			t.Fatalf("rpc type %d from the leader that accepted the join: %v", typ, err)
		}
	}
	for _, typ := range []byte{rpcTypeRequestVote, rpcTypeRequestPreVote, rpcTypeTimeoutNow} {
		if admitRPC(typ, tr.self, leader, nil, after, "") == nil {
			t.Fatalf("rpc type %d admitted from a joined leader before any configuration", typ)
		}
	}
	if admitRPC(rpcTypeAppendEntries, tr.self, stranger, nil, after, "") == nil {
		t.Fatal("appends admitted from a peer that is not the accepting leader")
	}
	for _, v := range before {
		if v.id == via && (v.status.Formed || len(v.status.Leader) > 0) {
			t.Fatal("a view taken before the acceptance changed")
		}
	}
}

// TestAskingToJoin: while a join request is out, the peer it is with is
// askingPeer (whose appends admitRPC then takes on a node with no
// configuration); nobody once the request is done or past its deadline.
// Ending a request that a newer one replaced leaves the newer one.
func TestAskingToJoin(t *testing.T) {
	tr, _ := newIdleTracker(t)
	ids := randomPeers(t, 2)
	a, b := ids[0], ids[1]
	if got := tr.askingPeer(); got != "" {
		t.Fatalf("asking %s before any request", got)
	}
	done := tr.askingToJoin(a, time.Now().Add(time.Minute))
	if got := tr.askingPeer(); got != a {
		t.Fatalf("while asking a: asking %q", got)
	}
	done()
	if got := tr.askingPeer(); got != "" {
		t.Fatalf("still asking %s once its request is done", got)
	}
	tr.askingToJoin(a, time.Now().Add(-time.Millisecond))
	if got := tr.askingPeer(); got != "" {
		t.Fatalf("asking %s past the request's deadline", got)
	}
	doneA := tr.askingToJoin(a, time.Now().Add(time.Minute))
	doneB := tr.askingToJoin(b, time.Now().Add(time.Minute))
	doneA()
	if got := tr.askingPeer(); got != b {
		t.Fatalf("ending an older request left %q, want the newer one's peer", got)
	}
	doneB()
	if got := tr.askingPeer(); got != "" {
		t.Fatalf("still asking %s once its request is done", got)
	}
}
