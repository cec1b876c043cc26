package raft

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// A Client keeps one session per member and learns the leader from the
// answers: without targets its writes go to the leader directly.
func TestClientSessionPerMember(t *testing.T) {
	f := newCSFixture(t, "/raft/session-client")
	l := f.tc.leader(10 * time.Second)
	fo := f.tc.follower(l, 0)
	for i := range 20 {
		if err := f.client.Set(fmt.Sprintf("k/%d", i), []byte("v"), 5*time.Second, f.mesh.ID(fo)); err != nil {
			t.Fatal(err)
		}
	}
	pool := f.client.sessions
	if pool.opened.Load() != 1 || pool.count() != 1 || pool.fallbacks.Load() != 0 {
		t.Fatalf("20 writes through one member: %d sessions opened, %d open, %d calls without one", pool.opened.Load(), pool.count(), pool.fallbacks.Load())
	}
	if got := pool.leaderHint(); got != f.mesh.ID(l) {
		t.Fatalf("leader hint %s, want the leader %s", got, f.mesh.ID(l))
	}
	// The follower forwards on a session of its own.
	fwd := f.tc.get(fo).(*cluster).fwd.sessions()
	if fwd.opened.Load() != 1 {
		t.Errorf("follower opened %d sessions to the leader, want 1", fwd.opened.Load())
	}
	// Without targets: straight to the leader, which now serves the
	// Client's requests on a session of its own.
	before := f.tc.get(l).(*cluster).svc.sessionsFrom(f.mesh.ID(f.cn))
	for i := range 10 {
		if err := f.client.Set(fmt.Sprintf("direct/%d", i), []byte("v"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if v, ok, err := f.client.Get("direct/9", csBarrier); err != nil || !ok || string(v) != "v" {
		t.Fatalf("barrier Get: %q %v %v", v, ok, err)
	}
	if n := f.tc.get(l).(*cluster).svc.sessionsFrom(f.mesh.ID(f.cn)); before != 0 || n != 1 || pool.opened.Load() != 2 {
		t.Errorf("leader held %d then %d sessions of the Client; %d opened", before, n, pool.opened.Load())
	}
}

// A session survives a restart of its member: the Client opens a new one
// and goes on, never taking the member for an older build.
func TestClientSessionSurvivesMemberRestart(t *testing.T) {
	f := newCSFixture(t, "/raft/session-restart")
	l := f.tc.leader(10 * time.Second)
	m := f.tc.follower(l, 0)
	other := 3 - l - m
	targets := []peer.ID{f.mesh.ID(m), f.mesh.ID(other)}
	var n atomic.Int64
	write := func() error {
		return f.client.Set(fmt.Sprintf("r/%d", n.Add(1)), []byte("v"), 10*time.Second, targets...)
	}
	for range 5 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	pool := f.client.sessions
	opened := pool.opened.Load()

	// The member's process goes away and comes back (same identity and
	// data, new addresses); writes meanwhile go to the other member.
	f.tc.stop(m)
	f.mesh.Stop(m)
	for range 5 {
		if err := write(); err != nil {
			t.Fatalf("write while member %d is down: %v", m, err)
		}
	}
	f.mesh.Restart(m)
	f.tc.mustStart(m)
	if err := f.mesh.Connect(f.cn, m); err != nil {
		t.Fatal(err)
	}
	f.tc.waitFor(20*time.Second, "writes through the restarted member", func() bool {
		return f.client.Set("r/back", []byte("v"), 2*time.Second, f.mesh.ID(m)) == nil
	})
	for range 5 {
		if err := f.client.Set(fmt.Sprintf("r/after/%d", n.Add(1)), []byte("v"), 10*time.Second, f.mesh.ID(m)); err != nil {
			t.Fatal(err)
		}
	}
	pool.mu.Lock()
	_, oldBuild := pool.fallback[f.mesh.ID(m)]
	s := pool.sessions[f.mesh.ID(m)]
	pool.mu.Unlock()
	if oldBuild || s == nil || pool.opened.Load() <= opened {
		t.Fatalf("after the restart: session %v, taken for an older build %v, %d sessions opened before, %d now", s != nil, oldBuild, opened, pool.opened.Load())
	}
	if got := f.tc.get(m).(*cluster).svc.sessionsFrom(f.mesh.ID(f.cn)); got != 1 {
		t.Errorf("restarted member holds %d sessions of the Client, want 1", got)
	}
}

// A member without sessions (an older build) is called a stream per
// request, and the Client remembers it for a while.
func TestClientSessionFallsBackToStreams(t *testing.T) {
	f := newCSFixture(t, "/raft/session-old")
	l := f.tc.leader(10 * time.Second)
	old := f.tc.follower(l, 0)
	f.mesh.Node(old).Peer().RemoveStreamHandler(sessionProtocol(f.ns))
	for i := range 3 {
		if err := f.client.Set(fmt.Sprintf("old/%d", i), []byte("v"), 5*time.Second, f.mesh.ID(old)); err != nil {
			t.Fatalf("write through a member without sessions: %v", err)
		}
	}
	pool := f.client.sessions
	pool.mu.Lock()
	until, marked := pool.fallback[f.mesh.ID(old)]
	pool.mu.Unlock()
	if !marked || time.Until(until) < sessionFallback/2 || pool.fallbacks.Load() != 3 {
		t.Fatalf("older member: marked %v until %v, %d calls a stream each", marked, until, pool.fallbacks.Load())
	}
	if v, ok, err := f.client.Get("old/2", csBarrier, f.mesh.ID(old)); err != nil || !ok || string(v) != "v" {
		t.Fatalf("barrier Get through it: %q %v %v", v, ok, err)
	}
	_ = rafttest.PollInterval
}
