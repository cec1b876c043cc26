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
