package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// marker is an epoch marker command as the leader proposes it.
func marker() []byte { return encodeOps([]cmdOp{{kind: opEpoch}}) }

// IfEpoch holds exactly while the last marker applied is the epoch's; the
// state machine's epoch moves only with markers, and survives a reopen and
// a snapshot.
func TestIfEpochInStateMachine(t *testing.T) {
	f, ds := newTestStore(t)
	claim := func(epoch uint64, key string) []byte {
		return mustTxn(t, Txn{If: []Cond{IfEpoch(epoch), IfAbsent(key)}, Then: []Op{SetOp(key, []byte("x"))}})
	}
	steps := []struct {
		name  string
		index uint64
		cmd   []byte
		ok    bool   // for transactions
		epoch uint64 // after the step
	}{
		{"no epoch yet: IfEpoch(0) holds", 2, claim(0, "a"), true, 0},
		{"no epoch yet: IfEpoch(2) fails", 3, claim(2, "b"), false, 0},
		{"first marker", 4, marker(), true, 4},
		{"its epoch holds", 5, claim(4, "b"), true, 4},
		{"an older epoch fails", 6, claim(0, "c"), false, 4},
		{"a future epoch fails", 7, claim(9, "c"), false, 4},
		{"a plain write leaves the epoch", 8, mustTxn(t, Txn{Then: []Op{SetOp("p", nil)}}), true, 4},
		{"next leader's marker", 9, marker(), true, 9},
		{"the deposed leader's late write fails", 10, claim(4, "c"), false, 9},
		{"the new leader's write holds", 11, claim(9, "c"), true, 9},
	}
	for _, s := range steps {
		res, err := applyAt(t, f, s.index, s.cmd)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if res.OK != s.ok || res.Index != s.index {
			t.Errorf("%s: %+v, want OK %v at %d", s.name, res, s.ok, s.index)
		}
		if got := f.currentEpoch(); got != s.epoch {
			t.Errorf("%s: epoch %d, want %d", s.name, got, s.epoch)
		}
	}
	// Reopened on the same datastore: the epoch was persisted with the
	// applied index.
	g, err := newKVStore(ds, "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	if g.currentEpoch() != 9 || g.appliedIndex() != 11 {
		t.Fatalf("reopened: epoch %d applied %d", g.currentEpoch(), g.appliedIndex())
	}
	// A snapshot carries it to another store.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	h, _ := newTestStore(t)
	if err := h.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if h.currentEpoch() != 9 {
		t.Fatalf("restored epoch %d", h.currentEpoch())
	}
	if res, err := applyAt(t, h, 12, claim(9, "d")); err != nil || !res.OK {
		t.Fatalf("restored store refuses the current epoch: %+v %v", res, err)
	}
	// Wiped (joining another cluster): no epoch.
	if err := h.wipe(); err != nil || h.currentEpoch() != 0 {
		t.Fatalf("wipe: epoch %d, %v", h.currentEpoch(), err)
	}
}

// A version-2 snapshot (before epochs) restores with epoch 0, and a version-3
// header carries the epoch.
func TestSnapshotHeaderVersions(t *testing.T) {
	cases := []struct {
		name    string
		header  []uint64
		want    snapshotHeader
		wantErr bool
	}{
		{"v2", []uint64{2, 7, 0, 5, 0}, snapshotHeader{Version: 2, Applied: 7, Clock: 5}, false},
		{"v3", []uint64{3, 7, 0, 5, 0, 6}, snapshotHeader{Version: 3, Applied: 7, Clock: 5, Epoch: 6}, false},
		{"v3 without epoch", []uint64{3, 7, 0, 5, 0}, snapshotHeader{}, true},
		{"v2 with an epoch", []uint64{2, 7, 0, 5, 0, 6}, snapshotHeader{}, true},
		{"v4", []uint64{4, 7, 0, 5, 0, 6}, snapshotHeader{}, true},
	}
	for _, c := range cases {
		b, err := cborEnc.Marshal(c.header)
		if err != nil {
			t.Fatal(err)
		}
		var got snapshotHeader
		err = readSnapshot(bytes.NewReader(b), snapshotReader{header: func(h snapshotHeader) error { got = h; return nil }})
		if (err != nil) != c.wantErr || (!c.wantErr && got != c.want) {
			t.Errorf("%s: %+v %v", c.name, got, err)
		}
	}
}

// Callers cannot forge an epoch marker: not in a Txn, not through Apply,
// not as a command received from a peer.
func TestEpochMarkerIsTheLeadersToAdd(t *testing.T) {
	if _, err := encodeTxn(Txn{If: []Cond{{kind: opEpoch}}}); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("Txn with a marker as condition: %v", err)
	}
	for name, ops := range map[string][]cmdOp{
		"alone":       {{kind: opEpoch}},
		"after a set": {{kind: opSet, key: []byte("k"), value: []byte{}}, {kind: opEpoch}},
	} {
		if _, err := parseTxnCommand(encodeOps(ops)); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s from a peer: %v", name, err)
		}
		c := &cluster{}
		if _, err := c.Apply(encodeOps(ops), time.Second); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s through Apply: %v", name, err)
		}
	}
	// IfEpoch is an ordinary condition, accepted from a peer.
	if _, err := parseTxnCommand(mustTxn(t, Txn{If: []Cond{IfEpoch(3)}, Then: []Op{SetOp("k", nil)}})); err != nil {
		t.Errorf("IfEpoch from a peer: %v", err)
	}
}

// WatchLeader's channel holds the newest state: a reader that did not read
// for a thousand changes gets the last one, the monitor never blocks, and
// the channel closes when its ctx ends or the monitor stops.
func TestWatchLeaderLatestWins(t *testing.T) {
	c := &cluster{}
	c.leaderMon = newLeaderMonitor(c)
	m := c.leaderMon
	ctx, cancel := context.WithCancel(context.Background())
	slow := c.WatchLeader(ctx)
	other := c.WatchLeader(context.Background())
	if ev := <-slow; ev != (LeaderEvent{}) {
		t.Fatalf("first event %+v, want the initial state", ev)
	}
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 1; i <= 1000; i++ {
			m.publish(LeaderEvent{Leader: peer.ID(fmt.Sprint("p", i%3)), Epoch: uint64(i)})
		}
	}()
	select {
	case <-published:
	case <-time.After(10 * time.Second):
		t.Fatal("publishing blocked on a reader that does not read")
	}
	if ev := <-slow; ev.Epoch != 1000 {
		t.Fatalf("slow reader got %+v, want the latest (epoch 1000)", ev)
	}
	select {
	case ev := <-slow:
		t.Fatalf("a second event %+v without a change", ev)
	default:
	}
	// The same state again is no change.
	m.publish(LeaderEvent{Leader: "p1", Epoch: 1000})
	select {
	case ev := <-slow:
		t.Fatalf("an event %+v for an unchanged state", ev)
	default:
	}
	cancel()
	waitClosed(t, slow, "the watcher whose ctx ended")
	m.finish(ErrShutdown)
	waitClosed(t, other, "the watcher of a stopped monitor")
	if _, ok := <-c.WatchLeader(context.Background()); ok {
		t.Fatal("a watcher of a stopped monitor got an event")
	}
	if _, err := m.awaitLeadership(context.Background(), 0); !errors.Is(err, ErrShutdown) {
		t.Fatalf("awaitLeadership after stop: %v", err)
	}
}

// waitClosed drains ch until it is closed.
func waitClosed(t *testing.T, ch <-chan LeaderEvent, what string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("%s was not closed", what)
		}
	}
}

// Which errors of fn mean "leadership is gone" (RunAsLeader waits for the
// next one) and which are failures (RunAsLeader returns them).
func TestLeadershipGone(t *testing.T) {
	cases := []struct {
		err  error
		gone bool
	}{
		{ErrNotLeader, true},
		{fmt.Errorf("write: %w", ErrLeadershipLost), true},
		{ErrNoLeader, true},
		{context.Canceled, true},
		{errors.New("disk full"), false},
		{ErrTimeout, false},
		{context.DeadlineExceeded, false},
	}
	for _, c := range cases {
		if got := leadershipGone(c.err); got != c.gone {
			t.Errorf("%v: gone %v, want %v", c.err, got, c.gone)
		}
	}
}

// Every member's WatchLeader agrees on the leader and its epoch once it is
// established; a leadership transfer brings a greater epoch everywhere; and
// a restarted member remembers the epoch it applied.
func TestWatchLeaderEpochs(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/watch-leader")
	tc.form(20*time.Second, 0, 1, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch := make([]<-chan LeaderEvent, 3)
	for i := range watch {
		watch[i] = tc.get(i).WatchLeader(ctx)
	}
	// agreed waits until every member's latest event names leader l (any
	// leader when l < 0) with one epoch greater than after, the leader's
	// own with Self.
	latest := make([]LeaderEvent, 3)
	agreed := func(l int, after uint64) (int, uint64) {
		var li int
		var epoch uint64
		tc.waitFor(15*time.Second, "every member to agree on an established leadership", func() bool {
			for i, ch := range watch {
				select {
				case ev := <-ch:
					if ev.Epoch < latest[i].Epoch {
						t.Fatalf("node %d: epoch went back from %d to %d", i, latest[i].Epoch, ev.Epoch)
					}
					latest[i] = ev
				default:
				}
			}
			li = mesh.Index(latest[0].Leader)
			epoch = latest[0].Epoch
			if li < 0 || (l >= 0 && li != l) || epoch <= after {
				return false
			}
			for i, ev := range latest {
				if ev.Leader != mesh.ID(li) || ev.Epoch != epoch || ev.Self != (i == li) {
					return false
				}
			}
			return true
		})
		return li, epoch
	}
	l, e1 := agreed(-1, 0)
	// Every member runs a job that holds on until its ctx ends.
	type run struct {
		member    int
		epoch     uint64
		cancelled time.Time
	}
	runs := make(chan run, 16)
	jobsCtx, stopJobs := context.WithCancel(ctx)
	jobsDone := make(chan error, 3)
	for i := range 3 {
		c := tc.get(i)
		go func() {
			jobsDone <- c.RunAsLeader(jobsCtx, func(ctx context.Context, epoch uint64) error {
				runs <- run{member: i, epoch: epoch}
				<-ctx.Done()
				runs <- run{member: i, epoch: epoch, cancelled: time.Now()}
				return ctx.Err()
			})
		}()
	}
	if r := <-runs; r.member != l || r.epoch != e1 {
		t.Fatalf("job started on node %d in epoch %d, want node %d epoch %d", r.member, r.epoch, l, e1)
	}
	if err := tc.get(l).TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	transferred := time.Now()
	l2, e2 := agreed(-1, e1)
	if l2 == l {
		t.Fatalf("leadership stayed on node %d", l)
	}
	t.Logf("epochs %d (node %d) then %d (node %d)", e1, l, e2, l2)
	// The old job's ctx ended at once, the new leader's job runs with the
	// new epoch (in either order: two members' goroutines).
	var gotCancel, gotStart bool
	for range 2 {
		select {
		case r := <-runs:
			switch {
			case r.member == l && r.epoch == e1 && !r.cancelled.IsZero():
				gotCancel = true
				t.Logf("the old job's ctx ended %v after the transfer returned (negative: before)", r.cancelled.Sub(transferred).Round(time.Millisecond))
			case r.member == l2 && r.epoch == e2 && r.cancelled.IsZero():
				gotStart = true
			default:
				t.Fatalf("unexpected job event %+v", r)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("job events: old cancelled %v, new started %v", gotCancel, gotStart)
		}
	}
	stopJobs()
	for range 3 {
		if err := <-jobsDone; !errors.Is(err, context.Canceled) {
			t.Fatalf("RunAsLeader: %v", err)
		}
	}
	// A follower restarted remembers the epoch before it hears from the
	// leader again.
	f := tc.follower(l2, 0)
	tc.stop(f)
	mesh.Isolate(f)
	c := tc.mustStart(f)
	if got := c.(*cluster).fsm.currentEpoch(); got != e2 {
		t.Fatalf("restarted node %d: epoch %d, want %d", f, got, e2)
	}
	mesh.Rejoin(f)
	// Closing the member ends its RunAsLeader with ErrShutdown and closes
	// its watchers.
	w := c.WatchLeader(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunAsLeader(context.Background(), func(context.Context, uint64) error { return nil })
	}()
	tc.stop(f)
	select {
	case err := <-done:
		if !errors.Is(err, ErrShutdown) {
			t.Fatalf("RunAsLeader after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunAsLeader did not return after Close")
	}
	waitClosed(t, w, "the watcher of a closed member")
}

// A member that was down while a new leadership began, and whose log the
// leader truncated past that leadership's marker, learns the epoch from
// the snapshot it installs.
func TestEpochThroughSnapshotInstall(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/epoch-snapshot", snapshotEvery(20))
	tc.form(20*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	first := (<-tc.get(l).WatchLeader(context.Background())).Epoch
	tc.stop(f)
	// A new leadership while f is down: cut the leader off until it steps
	// down, then let the two live members elect (either may win; any new
	// leadership commits a new marker). TransferLeadership would not do:
	// hashicorp may pick the stopped follower as the target.
	mesh.Isolate(l)
	tc.waitFor(10*time.Second, "the isolated leader to step down", func() bool { return !tc.get(l).IsLeader() })
	mesh.Rejoin(l)
	var epoch uint64
	var l2 int
	tc.waitFor(20*time.Second, "a new leadership's epoch", func() bool {
		l2 = tc.leaderAmong(10*time.Second, others(f, 3)...)
		ev := <-tc.get(l2).WatchLeader(context.Background())
		epoch = ev.Epoch
		return ev.Self && epoch > first
	})
	for i := range 60 {
		tc.set(fmt.Sprintf("k%02d", i), []byte("v"), others(f, 3)...)
	}
	tc.waitFor(15*time.Second, "the leader's log to be truncated past the marker", func() bool {
		first, err := tc.get(l2).(*cluster).logs.FirstIndex()
		return err == nil && first > epoch
	})
	c := tc.mustStart(f)
	tc.waitFor(15*time.Second, "the restarted member to hold the new epoch", func() bool {
		return c.(*cluster).fsm.currentEpoch() == epoch
	})
	if snapshotCount(t, c) == 0 {
		t.Fatal("the member caught up without installing a snapshot")
	}
}
