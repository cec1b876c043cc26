package raft

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestDialWait(t *testing.T) {
	for _, tc := range []struct {
		down, want time.Duration
	}{
		{0, 0},
		{5 * time.Second, 0},
		{dialGraceAfterFailure - time.Millisecond, 0},
		{dialGraceAfterFailure, 5 * time.Second},
		{20 * time.Second, 10 * time.Second},
		{39 * time.Second, 19500 * time.Millisecond},
		{40 * time.Second, maxDialWait},
		{10 * time.Minute, maxDialWait},
		{100 * time.Hour, maxDialWait},
	} {
		if got := dialWait(tc.down); got != tc.want {
			t.Errorf("dialWait(%v) = %v, want %v", tc.down, got, tc.want)
		}
	}
}

// TestDialGateSchedule replays a peer that stays unreachable, dialled
// whenever the gate allows it, and counts its dials: Raft's own pace for
// the grace period, then at most 3 a minute once it has been down a while.
func TestDialGateSchedule(t *testing.T) {
	id := randomPeers(t, 1)[0]
	var g dialGate
	start := time.Unix(1_000_000, 0)
	perMinute := map[int]int{}
	for now := start; now.Before(start.Add(10 * time.Minute)); now = now.Add(100 * time.Millisecond) {
		if g.allow(id, now) {
			perMinute[int(now.Sub(start)/time.Minute)]++
			g.failed(id, now)
		}
	}
	if perMinute[0] < 100 {
		t.Errorf("first minute: %d dials; want Raft's pace (every 100 ms here) during the grace period", perMinute[0])
	}
	for m := 1; m < 10; m++ {
		if perMinute[m] > 3 {
			t.Errorf("minute %d: %d dials, want at most 3", m+1, perMinute[m])
		}
	}
	// Reached again: the next failure starts a new grace period.
	now := start.Add(10 * time.Minute)
	g.reached(id)
	if !g.allow(id, now) {
		t.Fatal("a peer just reached is gated")
	}
	g.failed(id, now)
	if !g.allow(id, now.Add(time.Millisecond)) {
		t.Fatal("a peer that failed once after being reached is gated: want a new grace period")
	}
	// The gate's memory is bounded.
	for i := range maxGatedPeers + 5 {
		g.failed(peer.ID(fmt.Sprint("p", i)), now)
	}
	if n := len(g.peers); n > maxGatedPeers {
		t.Fatalf("gate holds %d peers", n)
	}
}
