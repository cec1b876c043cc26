package raft

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"

	"github.com/tauraft/raft/rafttest"
)

// blockingLogStore is an in-memory log store whose StoreLogs waits while
// blocked is open, telling entered when it starts waiting.
type blockingLogStore struct {
	*hraft.InmemStore
	blocked chan struct{} // nil: no blocking
	entered chan struct{}
}

func (s *blockingLogStore) StoreLogs(logs []*hraft.Log) error {
	if s.blocked != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.blocked
	}
	return s.InmemStore.StoreLogs(logs)
}

// quickRaftConfig is a bare Raft's configuration for one in-memory node
// that elects itself at once, without logs.
func quickRaftConfig(id hraft.ServerID) *hraft.Config {
	conf := hraft.DefaultConfig()
	conf.LocalID = id
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.Logger = hclog.NewNullLogger()
	return conf
}

// nopFSM applies nothing.
type nopFSM struct{}

func (nopFSM) Apply(*hraft.Log) interface{}         { return nil }
func (nopFSM) Snapshot() (hraft.FSMSnapshot, error) { return nil, errors.New("none") }
func (nopFSM) Restore(io.ReadCloser) error          { return nil }

// soloLeader starts a bare one-node Raft (BatchApplyCh, as the cluster
// runs it) on a blockingLogStore and returns it once it leads and has
// applied its first barrier; the test's cleanup shuts it down.
func soloLeader(t *testing.T) (*hraft.Raft, *blockingLogStore) {
	t.Helper()
	conf := quickRaftConfig("n1")
	conf.BatchApplyCh = true
	store := &blockingLogStore{InmemStore: hraft.NewInmemStore(), entered: make(chan struct{}, 1)}
	snaps := hraft.NewInmemSnapshotStore()
	addr, trans := hraft.NewInmemTransport("n1")
	t.Cleanup(func() { _ = trans.Close() })
	cfg := hraft.Configuration{Servers: []hraft.Server{{ID: conf.LocalID, Address: addr}}}
	if err := hraft.BootstrapCluster(conf, store, store, snaps, trans, cfg); err != nil {
		t.Fatal(err)
	}
	r, err := hraft.NewRaft(conf, nopFSM{}, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Shutdown().Error() })
	rafttest.WaitFor(t, 5*time.Second, "a leader", func() bool { return r.State() == hraft.Leader })
	if err := r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	return r, store
}

// A future still in Raft's buffered apply channel is never answered by
// Raft once its leader loop stops taking them; bound (bindShutdown), it
// ends with ErrRaftShutdown when its run is marked stopped. The test holds
// the leader loop in StoreLogs, so nothing but the binding can end the
// futures queued behind it; it also fails if a hashicorp/raft upgrade moves
// the field bindShutdown sets.
func TestBindShutdown(t *testing.T) {
	r, store := soloLeader(t)
	run := newRaftRun(r, nil)
	release := make(chan struct{})
	store.blocked = release
	first := run.apply([]byte("first"), time.Second)
	select {
	case <-store.entered: // the leader loop waits in StoreLogs
	case <-time.After(5 * time.Second):
		t.Fatal("the leader loop never stored the first entry")
	}
	queued := make([]hraft.Future, 10)
	for i := range queued {
		queued[i] = run.apply([]byte("queued"), time.Second)
	}
	barrier := run.raft.Barrier(time.Second)
	if !bindShutdown(barrier, run.stopped) {
		t.Fatal("bindShutdown found no ShutdownCh on a Barrier future")
	}
	queued = append(queued, barrier)
	if !bindShutdown(run.raft.Apply([]byte("late"), time.Second), make(chan struct{})) {
		t.Fatal("bindShutdown found no ShutdownCh on an Apply future")
	}
	run.markStopped()
	for i, f := range queued {
		if err := f.Error(); !errors.Is(err, hraft.ErrRaftShutdown) {
			t.Fatalf("queued future %d: %v, want ErrRaftShutdown", i, err)
		}
	}
	close(release) // from here on StoreLogs does not wait
	_ = first.Error()
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
}

// waitsOn counts the writes waiting on run.
func waitsOn(run *raftRun) int {
	run.waitMu.Lock()
	defer run.waitMu.Unlock()
	n := 0
	for w := run.waits; w != nil; w = w.next {
		n++
	}
	return n
}

// A write waits for its future in its own goroutine (applyWait) and ends at
// its timeout, when its run stops or when the cluster closes, whichever
// comes first, each with its own error; a write that joins a run whose
// waits were ended ends at once; an answered write leaves no trace in its
// run. The leader loop is held in StoreLogs, so only the wait's own channel
// can end the futures queued behind it.
func TestApplyWaitEnds(t *testing.T) {
	r, store := soloLeader(t)
	c := &cluster{ctx: context.Background()}
	release := make(chan struct{})
	store.blocked = release
	first := newRaftRun(r, nil).apply([]byte("first"), time.Minute)
	select {
	case <-store.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the leader loop never stored the first entry")
	}

	timed := newRaftRun(r, nil)
	begin := time.Now()
	if _, err := c.applyWait(timed, []byte("timed"), 50*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("a write past its timeout: %v, want ErrTimeout", err)
	}
	if d := time.Since(begin); d < 50*time.Millisecond {
		t.Fatalf("a write with a 50ms timeout ended after %v", d)
	}
	if n := waitsOn(timed); n != 0 {
		t.Fatalf("%d writes left on the run after their timeout", n)
	}

	closing, stopping := newRaftRun(r, nil), newRaftRun(r, nil)
	const each = 4
	errs := make(chan error, 2*each)
	for range each {
		go func() { _, err := c.applyWait(closing, []byte("closing"), time.Minute); errs <- err }()
		go func() { _, err := c.applyWait(stopping, []byte("stopping"), time.Minute); errs <- err }()
	}
	rafttest.WaitFor(t, 5*time.Second, "the writes waiting", func() bool {
		return waitsOn(closing) == each && waitsOn(stopping) == each
	})
	closing.endWaits(causeClosing)
	stopping.markStopped()
	for range 2 * each {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrShutdown) {
				t.Fatalf("a write whose run stopped or cluster closed: %v, want ErrShutdown", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a write still waits after its run stopped or its cluster closed")
		}
	}
	if _, err := c.applyWait(stopping, []byte("late"), time.Minute); !errors.Is(err, ErrShutdown) {
		t.Fatalf("a write to a stopped run: %v, want ErrShutdown", err)
	}

	close(release)
	if err := first.Error(); err != nil {
		t.Fatal(err)
	}
	answered := newRaftRun(r, nil)
	if _, err := c.applyWait(answered, []byte("answered"), 5*time.Second); err != nil {
		t.Fatalf("a write to a working leader: %v", err)
	}
	if n := waitsOn(answered); n != 0 {
		t.Fatalf("%d answered writes left on the run", n)
	}
}
