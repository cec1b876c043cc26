package raft

// Watch end to end: real members on a rafttest mesh, watchers on every
// member and through a Client, across a leader change and a member restart;
// ErrCompacted for old indexes on both sides of the wire; the watch stream
// caps and the keyed namespace's refusal of outsiders.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// watchLog collects what one watcher receives.
type watchLog struct {
	mu     sync.Mutex
	events []Event
	closed bool
	done   chan struct{}
}

func collect(ch <-chan Event) *watchLog {
	l := &watchLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for e := range ch {
			l.mu.Lock()
			l.events = append(l.events, e)
			l.mu.Unlock()
		}
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}()
	return l
}

func (l *watchLog) snapshot() ([]Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events), l.closed
}

// add appends what another watcher (a re-watch) received.
func (l *watchLog) add(o *watchLog) {
	<-o.done
	evs, _ := o.snapshot()
	l.mu.Lock()
	l.events = append(l.events, evs...)
	l.mu.Unlock()
}

// sameEvent compares what Watch promises: kind, key, value and indexes.
func sameEvent(a, b Event) bool {
	return a.Kind == b.Kind && a.Key == b.Key && string(a.Entry.Value) == string(b.Entry.Value) &&
		a.Index == b.Index && a.Entry.ModIndex == b.Entry.ModIndex
}

// checkLog fails unless got is exactly want (got may still be short when
// partial is set).
func checkLog(got, want []Event, partial bool) error {
	if len(got) > len(want) || (!partial && len(got) != len(want)) {
		return fmt.Errorf("%d events, want %d", len(got), len(want))
	}
	for i := range got {
		if !sameEvent(got[i], want[i]) {
			return fmt.Errorf("event %d is %s %q=%q @%d, want %s %q=%q @%d", i,
				got[i].Kind, got[i].Key, got[i].Entry.Value, got[i].Index, want[i].Kind, want[i].Key, want[i].Entry.Value, want[i].Index)
		}
	}
	return nil
}

// watchWriter makes the changes of the test through the leader, one at a
// time, and records each with the index it got (its transaction's index:
// other entries, such as a new leader's epoch marker, may be applied at any
// time).
type watchWriter struct {
	tc   *testCluster
	want []Event
	n    int
	live map[string]bool // keys that exist: only they are deleted, so every op is a change
}

func (w *watchWriter) apply(ops ...Op) {
	w.tc.t.Helper()
	var index uint64
	w.tc.mustRetry("watched write", 30*time.Second, IsNotApplied, func() error {
		return w.tc.onLeader(nil, func(c Cluster) error {
			res, err := c.Txn(Txn{Then: ops}, 5*time.Second)
			if err == nil && !res.OK {
				err = fmt.Errorf("a transaction without conditions did not apply: %+v", res)
			}
			index = res.Index
			return err
		})
	})
	if w.live == nil {
		w.live = map[string]bool{}
	}
	for _, op := range ops {
		w.live[op.Key] = !op.Delete
		if op.Delete {
			w.want = append(w.want, Event{Kind: EventDelete, Key: op.Key, Index: index, Entry: Entry{ModIndex: index}})
		} else {
			w.want = append(w.want, Event{Kind: EventSet, Key: op.Key, Index: index, Entry: Entry{Value: op.Value, ModIndex: index}})
		}
	}
}

// burst writes n rounds of changes under w/ (sets, overwrites, deletes of
// existing keys and batches of two or three changes) and, every fifth
// round, one outside it (unwatched).
func (w *watchWriter) burst(n int) {
	w.tc.t.Helper()
	for range n {
		w.n++
		k := fmt.Sprintf("w/%d", w.n%7)
		other := fmt.Sprintf("w/%d", (w.n+3)%7)
		switch {
		case w.n%4 == 0 && w.live[k]:
			w.apply(DeleteOp(k))
		case w.n%4 == 1 && w.live[other]:
			w.apply(SetOp(k, fmt.Appendf(nil, "v%d", w.n)), SetOp("w/batch", fmt.Appendf(nil, "b%d", w.n)), DeleteOp(other))
		case w.n%4 == 1:
			w.apply(SetOp(k, fmt.Appendf(nil, "v%d", w.n)), SetOp("w/batch", fmt.Appendf(nil, "b%d", w.n)))
		default:
			w.apply(SetOp(k, fmt.Appendf(nil, "v%d", w.n)))
		}
		if w.n%5 == 0 {
			// Unwatched: must not show up, but moves the indexes on.
			_ = w.tc.onLeader(nil, func(c Cluster) error { return c.Set("other/x", []byte("x"), 5*time.Second) })
			w.apply(SetOp("w/after-other", fmt.Appendf(nil, "%d", w.n)))
		}
	}
}

// TestWatchSequence: a watcher on every member and one through a Client see
// exactly the changes the writer made, with their indexes, in order: across
// a leader change, and across the restart of a member, whose own watcher
// re-watches from its last index (and gets ErrCompacted for an older one)
// while the Client's watch moves to another member by itself.
func TestWatchSequence(t *testing.T) {
	f := newCSFixture(t, "/raft/watch-seq")
	tc := f.tc
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w := &watchWriter{tc: tc}
	w.burst(4) // history before any watcher: replayed from after=0

	logs := map[string]*watchLog{}
	for i := range 3 {
		ch, err := tc.get(i).Watch(ctx, "w/", 0)
		if err != nil {
			t.Fatalf("Watch on member %d: %v", i, err)
		}
		logs[fmt.Sprint("member ", i)] = collect(ch)
	}
	leader := tc.leader(10 * time.Second)
	victim := tc.follower(leader, 0)
	// The Client starts on the member that will restart.
	order := append([]int{victim}, others(victim, 3)...)
	var ids []peer.ID
	for _, i := range order {
		ids = append(ids, f.mesh.ID(i))
	}
	cch, err := f.client.Watch(ctx, "w/", 0, ids...)
	if err != nil {
		t.Fatalf("Client.Watch: %v", err)
	}
	logs["client"] = collect(cch)

	waitAll := func(what string) {
		t.Helper()
		tc.waitFor(20*time.Second, what, func() bool {
			for name, l := range logs {
				got, closed := l.snapshot()
				if err := checkLog(got, w.want, true); err != nil {
					t.Fatalf("%s watcher: %v", name, err)
				}
				if closed {
					t.Fatalf("%s watcher closed early after %d events", name, len(got))
				}
				if len(got) < len(w.want) {
					return false
				}
			}
			return true
		})
	}

	w.burst(10)
	waitAll("every watcher to see the first writes")

	// A leader change.
	old := tc.leader(10 * time.Second)
	if err := tc.get(old).TransferLeadership(); err != nil {
		t.Fatalf("TransferLeadership: %v", err)
	}
	tc.waitFor(15*time.Second, "a new leader", func() bool {
		for _, i := range tc.running() {
			if i != old && tc.get(i).IsLeader() {
				return true
			}
		}
		return false
	})
	w.burst(10)
	waitAll("every watcher to see the writes after the leader change")

	// Restart the victim: its own watcher ends; the Client's moves on.
	name := fmt.Sprint("member ", victim)
	before := logs[name]
	got, _ := before.snapshot()
	last := got[len(got)-1].Index
	tc.stop(victim)
	<-before.done
	delete(logs, name)
	w.burst(6) // while it is down
	waitAll("the Client watcher to go on while its member is down")
	c := tc.mustStart(victim)
	floor := c.(*cluster).watch.floor()
	t.Logf("restarted member %d: last index watched %d, history starts after %d", victim, last, floor)
	// Nothing was written between the watcher's last event and the stop,
	// so the restarted member's history starts right there.
	if floor != last {
		t.Fatalf("restarted member's history starts after %d, want %d (its last change)", floor, last)
	}
	if _, err := c.Watch(ctx, "w/", last-1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Watch below the restarted member's history: %v, want ErrCompacted", err)
	}
	rch, err := c.Watch(ctx, "w/", last)
	if err != nil {
		t.Fatalf("re-watch from the last index on the restarted member: %v", err)
	}
	again := collect(rch)
	w.burst(6)
	waitAll("the other watchers after the restart")
	tc.waitFor(20*time.Second, "the re-watch to catch up", func() bool {
		evs, _ := again.snapshot()
		return len(got)+len(evs) >= len(w.want)
	})
	cancel()
	for name, l := range logs {
		<-l.done
		evs, _ := l.snapshot()
		if err := checkLog(evs, w.want, false); err != nil {
			t.Fatalf("%s watcher: %v", name, err)
		}
	}
	before.add(again)
	evs, _ := before.snapshot()
	if err := checkLog(evs, w.want, false); err != nil {
		t.Fatalf("restarted member's watcher (before and after): %v", err)
	}
	t.Logf("%d changes (%d rounds of writes) seen alike by %d watchers, a leader change and a member restart", len(w.want), w.n, len(logs)+1)
}

// TestWatchCompacted: an index older than the history gets ErrCompacted,
// locally and through a Client (errors.Is on both sides of the wire); a
// watcher that stops reading is overtaken and its channel closes.
func TestWatchCompacted(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/watch-compacted", WithWatchHistory(10, 1<<20))
	c := tc.mustStart(0, WithForceBootstrap())
	tc.leader(10 * time.Second)
	ctx := t.Context()
	stalled, err := c.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		tc.set(fmt.Sprint("k", i), []byte("v"))
	}
	floor := c.(*cluster).watch.floor()
	if _, err := c.Watch(ctx, "", floor-1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Watch(after %d) with history after %d: %v, want ErrCompacted", floor-1, floor, err)
	}
	cl, err := NewClient(mesh.Node(1), tc.ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Watch(ctx, "", 1, mesh.ID(0)); !errors.Is(err, ErrCompacted) {
		t.Fatalf("Client.Watch below the history: %v, want ErrCompacted", err)
	}
	// From the history's start: the history is replayed. (No target: the
	// Client finds the member itself.)
	ch, err := cl.Watch(ctx, "k", floor)
	if err != nil {
		t.Fatalf("Client.Watch at the history's start: %v", err)
	}
	applied := c.(*cluster).fsm.appliedIndex()
	for i := floor + 1; i <= applied; i++ {
		select {
		case e := <-ch:
			if e.Index != i || e.Key != fmt.Sprint("k", int(i)-int(applied)+199) {
				t.Fatalf("replayed %s@%d, want index %d", e.Key, e.Index, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no replay of index %d through the Client", i)
		}
	}
	tc.set("k-new", []byte("new"))
	select {
	case e := <-ch:
		if e.Key != "k-new" || e.Index <= applied {
			t.Fatalf("first live event %+v, want k-new above %d", e, applied)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event through the Client")
	}
	// The stalled watcher read nothing while 200 changes went by: what its
	// channel buffered comes out, then it closes; watching again from its
	// last index gets ErrCompacted.
	var last uint64
	deadline := time.After(10 * time.Second)
	for open := true; open; {
		select {
		case e, ok := <-stalled:
			if ok {
				last = e.Index
			}
			open = ok
		case <-deadline:
			t.Fatal("the stalled watcher's channel did not close")
		}
	}
	if _, err := c.Watch(ctx, "", last); !errors.Is(err, ErrCompacted) {
		t.Fatalf("re-watch of the stalled watcher from %d: %v, want ErrCompacted", last, err)
	}
}

// TestWatchStreamCaps: a peer holds at most watchStreamsPerPeer watch
// streams on a member (the next is refused before it is handled, and a
// Client then tries another member); in a keyed namespace a peer without
// the key holds none.
func TestWatchStreamCaps(t *testing.T) {
	t.Run("open namespace", func(t *testing.T) {
		f := newCSFixture(t, "/raft/watch-caps")
		svc := f.tc.get(0).(*cluster).svc
		ctx := t.Context()
		var held []*watchStream
		defer func() {
			for _, ws := range held {
				ws.close()
			}
		}()
		for i := range watchStreamsPerPeer {
			ws, err := f.client.openWatch(ctx, f.mesh.ID(0), "", 0)
			if err != nil {
				t.Fatalf("watch stream %d: %v", i, err)
			}
			held = append(held, ws)
		}
		_, err := f.client.openWatch(ctx, f.mesh.ID(0), "", 0)
		if err == nil || !refusedBeforeHandling(err) {
			t.Fatalf("watch stream over the cap: %v, want a resource-limit refusal", err)
		}
		if n := svc.watchStreams(); n != watchStreamsPerPeer {
			t.Fatalf("member serves %d watch streams, want %d", n, watchStreamsPerPeer)
		}
		// Ordinary commands are not held up by the watches.
		if err := f.client.Set("caps/k", []byte("v"), 5*time.Second, f.mesh.ID(0)); err != nil {
			t.Fatalf("Set beside %d watches: %v", watchStreamsPerPeer, err)
		}
		// A Client watch goes to the next member.
		ch, err := f.client.Watch(ctx, "", 0, f.mesh.ID(0), f.mesh.ID(1))
		if err != nil {
			t.Fatalf("Client.Watch with member 0 full: %v", err)
		}
		_ = ch
		for _, ws := range held {
			ws.close()
		}
		held = nil
		rafttest.WaitFor(t, 10*time.Second, "the member to release the watch streams", func() bool { return svc.watchStreams() == 0 })
	})
	t.Run("keyed namespace", func(t *testing.T) {
		mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
		key := newSecret(t)
		tc := newTestCluster(t, mesh, "/raft/watch-keyed", WithEncryptionKey(key))
		c := tc.mustStart(0, WithForceBootstrap())
		tc.leader(10 * time.Second)
		ctx := t.Context()
		for name, k := range map[string][]byte{"no key": nil, "wrong key": newSecret(t)} {
			cl, err := NewClient(mesh.Node(1), tc.ns, k)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Watch(ctx, "", 0, mesh.ID(0))
			_ = cl.Close()
			if !errors.Is(err, ErrEncryptionRequired) && !errors.Is(err, ErrDecrypt) {
				t.Fatalf("%s: Watch = %v, want a refusal", name, err)
			}
			if n := c.(*cluster).svc.watchStreams(); n != 0 {
				t.Fatalf("%s: the member serves %d watch streams", name, n)
			}
		}
		cl, err := NewClient(mesh.Node(1), tc.ns, key)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ch, err := cl.Watch(ctx, "", 0, mesh.ID(0))
		if err != nil {
			t.Fatalf("Watch with the key: %v", err)
		}
		tc.set("sealed", []byte("s"))
		select {
		case e := <-ch:
			if e.Key != "sealed" || string(e.Entry.Value) != "s" {
				t.Fatalf("event %+v", e)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event over the sealed watch stream")
		}
	})
}
