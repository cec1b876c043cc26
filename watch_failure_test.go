package raft

// Watch when things go wrong: a member that catches up by snapshot, a Client
// whose link to its member is cut, a Client that falls behind the history.
// The fixtures (collect, watchWriter, checkLog) are in
// watch_integration_test.go.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tauraft/raft/rafttest"
)

// TestWatchSnapshotRestore: a member that catches up by installing a
// snapshot no longer knows the changes it skipped one by one: its watchers
// end, a watch from before the snapshot gets ErrCompacted, and one from the
// snapshot's index on goes on.
func TestWatchSnapshotRestore(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/watch-restore", snapshotEvery(50))
	tc.form(15*time.Second, 0, 1, 2)
	leader := tc.leader(10 * time.Second)
	lagger := tc.follower(leader, 0)
	tc.set("first", []byte("1"))
	tc.waitValue(lagger, "first", []byte("1"))
	tc.stop(lagger)
	for i := range 300 {
		tc.set(fmt.Sprint("k/", i), []byte("v"))
	}
	tc.waitFor(20*time.Second, "the leader's log to be truncated by a snapshot", func() bool {
		l := tc.get(tc.leader(10 * time.Second)).(*cluster)
		first, _ := l.logs.FirstIndex()
		return first > 100
	})
	c := tc.mustStart(lagger)
	hub := c.(*cluster).watch
	start := hub.floor()
	ctx := t.Context()
	// Opened before or after the snapshot arrives: either refused, or
	// closed by the restore with nothing delivered.
	if ch, err := c.Watch(ctx, "", start); err == nil {
		select {
		case e, ok := <-ch:
			if ok {
				t.Fatalf("a watcher from before the snapshot got %s@%d", e.Key, e.Index)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a watcher from before the snapshot was not closed by the restore")
		}
	} else if !errors.Is(err, ErrCompacted) {
		t.Fatalf("Watch from before the snapshot: %v", err)
	}
	// Raft may install more than one snapshot while the leader keeps taking
	// them: wait until the member has caught up, then its history stands.
	tc.waitFor(20*time.Second, "the snapshot to be restored and the member to catch up", func() bool {
		l := tc.get(tc.leader(10 * time.Second)).(*cluster)
		return hub.floor() > start && c.(*cluster).fsm.appliedIndex() == l.fsm.appliedIndex()
	})
	floor := hub.floor()
	if _, err := c.Watch(ctx, "", start); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Watch from %d after a restore to %d: %v, want ErrCompacted", start, floor, err)
	}
	ch, err := c.Watch(ctx, "after/", floor)
	if err != nil {
		t.Fatalf("Watch from the restored index: %v", err)
	}
	tc.set("after/x", []byte("x"))
	select {
	case e := <-ch:
		if e.Key != "after/x" || e.Index <= floor {
			t.Fatalf("after the restore: %s@%d", e.Key, e.Index)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no change after the restore")
	}
	t.Logf("member %d: history from %d, restored to %d", lagger, start, floor)
}

// TestWatchClientMovesOnCut: when the link to its member goes down, a
// Client watch moves to another member and resumes without gap or repeat,
// while writes go on.
func TestWatchClientMovesOnCut(t *testing.T) {
	f := newCSFixture(t, "/raft/watch-cut")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w := &watchWriter{tc: f.tc}
	ch, err := f.client.Watch(ctx, "w/", 0, f.mesh.ID(0), f.mesh.ID(1), f.mesh.ID(2))
	if err != nil {
		t.Fatal(err)
	}
	log := collect(ch)
	w.burst(8)
	f.tc.waitFor(15*time.Second, "the first changes through member 0", func() bool {
		got, _ := log.snapshot()
		return len(got) == len(w.want)
	})
	f.mesh.Cut(f.cn, 0)
	w.burst(8)
	f.tc.waitFor(15*time.Second, "the watch to go on through another member", func() bool {
		got, closed := log.snapshot()
		if err := checkLog(got, w.want, true); err != nil || closed {
			t.Fatalf("after the cut: %v (closed %v)", err, closed)
		}
		return len(got) == len(w.want)
	})
	f.mesh.Heal(f.cn, 0)
	cancel()
	<-log.done
	got, _ := log.snapshot()
	if err := checkLog(got, w.want, false); err != nil {
		t.Fatal(err)
	}
}

// TestWatchClientFallsBehind: a Client that reads nothing while far more
// changes go by than its channel, its stream's flow-control window and the
// history hold falls behind (the member's stream blocks, or just lags, and
// the history moves past it): the member ends the stream with ErrCompacted,
// the Client's channel closes after what it had, and a new Watch from its
// last index gets ErrCompacted.
func TestWatchClientFallsBehind(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/watch-behind", WithWatchHistory(10, 4<<20))
	c := tc.mustStart(0, WithForceBootstrap())
	tc.leader(10 * time.Second)
	cl, err := NewClient(mesh.Node(1), tc.ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := t.Context()
	ch, err := cl.Watch(ctx, "", 0, mesh.ID(0))
	if err != nil {
		t.Fatal(err)
	}
	// Far more than the stream's flow-control window holds, unread.
	big := make([]byte, 128<<10)
	for i := range 250 {
		tc.set(fmt.Sprint("big/", i), big)
	}
	if c.(*cluster).watch.floor() == 0 {
		t.Fatal("the history did not move")
	}
	var n int
	var last uint64
	deadline := time.After(20 * time.Second)
	for open := true; open; {
		select {
		case e, ok := <-ch:
			if ok {
				n++
				last = e.Index
			}
			open = ok
		case <-deadline:
			t.Fatalf("the Client's channel did not close (%d events read)", n)
		}
	}
	if n >= 250 {
		t.Fatalf("read all %d events: the watcher never fell behind", n)
	}
	if _, err := cl.Watch(ctx, "", last, mesh.ID(0)); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Client.Watch from its last index %d: %v, want ErrCompacted", last, err)
	}
	t.Logf("read %d of 250 changes before the channel closed", n)
}
