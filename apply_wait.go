package raft

// Waiting for the futures of writes. hashicorp/raft's futures only block
// (Error), and its timeout bounds only the enqueueing, so a write that must
// not wait longer than its own timeout cannot just call Error, and calling
// it in another goroutine (one per write, or one collector for all) costs
// a goroutine hand-off per write: a few per cent of a write's CPU, and a
// wake-up more on its latency. But Error also ends when the future's
// ShutdownCh closes (see bindShutdown below), so each write gives its
// future a channel of its own there, closed when its timeout passes, when
// the Raft it went to stops, or when the cluster closes; the writer then
// calls Error itself and learns which of them ended it.

import (
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
)

// waitCause is why a wait for a future (a write's or a barrier's) was
// ended early.
type waitCause uint32

const (
	causeAnswered waitCause = iota // not ended early: Raft answered
	causeTimeout                   // the write's timeout passed
	causeStopped                   // the Raft it went to stopped
	causeClosing                   // the cluster is closing
)

// writeWait is one wait for a future. Between waits it is kept in a pool,
// its channel open and its timer stopped.
type writeWait struct {
	// cancel is the future's ShutdownCh: closed (once, by end) to end the
	// wait early.
	cancel chan struct{}
	// cause is the waitCause cancel was closed for.
	cause atomic.Uint32
	// timer ends the wait at the write's timeout.
	timer *time.Timer
	// run is the run whose list holds the wait (nil once out of it); it,
	// prev and next are the list's, under the run's waitMu.
	run        *raftRun
	prev, next *writeWait
}

var writeWaits sync.Pool

func getWriteWait() *writeWait {
	if w, ok := writeWaits.Get().(*writeWait); ok {
		return w
	}
	w := &writeWait{cancel: make(chan struct{})}
	w.timer = time.AfterFunc(time.Hour, func() { w.end(causeTimeout) })
	w.timer.Stop()
	return w
}

// end ends the wait early for cause, unless it was ended already.
func (w *writeWait) end(cause waitCause) {
	if w.cause.CompareAndSwap(uint32(causeAnswered), uint32(cause)) {
		close(w.cancel)
	}
}

// finish takes w out of run's list once its future's Error returned, and
// tells why the wait ended. w goes back to the pool when nothing closed its
// channel and its timer can no longer fire.
func (w *writeWait) finish(run *raftRun) waitCause {
	stopped := w.timer.Stop()
	run.leave(w)
	cause := waitCause(w.cause.Load())
	if stopped && cause == causeAnswered {
		writeWaits.Put(w)
	}
	return cause
}

// applyWait hands cmd to run's Raft and waits for its outcome (await).
func (c *cluster) applyWait(run *raftRun, cmd []byte, timeout time.Duration) (hraft.ApplyFuture, error) {
	f := run.raft.Apply(cmd, timeout)
	return f, c.await(run, f, timeout)
}

// await waits for f, a future of run's Raft that nothing is bound to yet,
// for at most timeout beyond its enqueueing, in the caller's goroutine.
func (c *cluster) await(run *raftRun, f hraft.Future, timeout time.Duration) error {
	w := getWriteWait()
	if !bindShutdown(f, w.cancel) {
		// An errorFuture (it has ended), or a future of a kind this does
		// not know: waited for the slow way.
		writeWaits.Put(w)
		return c.wait(f, timeout)
	}
	run.join(w)
	w.timer.Reset(timeout)
	err := f.Error()
	cause := w.finish(run)
	if errors.Is(err, hraft.ErrRaftShutdown) {
		switch cause {
		case causeTimeout:
			return waitTimedOut(timeout)
		case causeClosing:
			return errWaitShutdown()
		}
	}
	return translateRaftError(err)
}

// join adds w to the run's waits: ended at once when the run's waits were
// ended already.
func (run *raftRun) join(w *writeWait) {
	run.waitMu.Lock()
	if cause := run.waitsEnded; cause != causeAnswered {
		run.waitMu.Unlock()
		w.end(cause)
		return
	}
	w.run, w.prev, w.next = run, nil, run.waits
	if run.waits != nil {
		run.waits.prev = w
	}
	run.waits = w
	run.waitMu.Unlock()
}

// leave takes w out of the run's waits, if it is still there.
func (run *raftRun) leave(w *writeWait) {
	run.waitMu.Lock()
	defer run.waitMu.Unlock()
	if w.run != run {
		return
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		run.waits = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	}
	w.run, w.prev, w.next = nil, nil, nil
}

// endWaits ends every write waiting on the run for cause, and any that
// joins later.
func (run *raftRun) endWaits(cause waitCause) {
	run.waitMu.Lock()
	defer run.waitMu.Unlock()
	if run.waitsEnded == causeAnswered {
		run.waitsEnded = cause
	}
	for w := run.waits; w != nil; {
		next := w.next
		w.end(cause)
		w.run, w.prev, w.next = nil, nil, nil
		w = next
	}
	run.waits = nil
}

// bindShutdown makes f end once stopped is closed, if it has not ended
// before; false when f is not a future it knows how to bind.
//
// Why: with BatchApplyCh (cluster.go), Raft's Apply returns as soon as the
// future is in its buffered apply channel, and a future still there when
// Raft shuts down is never answered: its Error blocks for ever, and so
// would whoever waits for it (the collector above, a session's waiter).
// hashicorp/raft's futures end early on their ShutdownCh, an exported field
// that Raft leaves nil on the futures of Apply and Barrier; set to a
// channel the cluster closes once that Raft has shut down, such a future
// ends with ErrRaftShutdown (outcome unknown) instead. The field is reached
// by reflection, as the future's type is unexported; the test
// TestBindShutdown fails if a hashicorp/raft upgrade moves it.
func bindShutdown(f hraft.Future, stopped chan struct{}) bool {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false // an errorFuture: it has ended already
	}
	v = v.Elem()
	path := shutdownField(v.Type())
	if path == nil {
		return false
	}
	ch := v.FieldByIndex(path)
	if !ch.CanSet() || !ch.IsNil() {
		return false
	}
	ch.Set(reflect.ValueOf(stopped))
	return true
}

// shutdownFieldPath caches where a future type keeps its ShutdownCh: one
// search per type, not per write.
type shutdownFieldPath struct {
	t    reflect.Type
	path []int // nil: the type has none
}

var lastShutdownField atomic.Pointer[shutdownFieldPath]

// shutdownField is the index path of t's ShutdownCh field, nil if it has
// no such field of type chan struct{}.
func shutdownField(t reflect.Type) []int {
	if c := lastShutdownField.Load(); c != nil && c.t == t {
		return c.path
	}
	c := &shutdownFieldPath{t: t}
	if sf, ok := t.FieldByName("ShutdownCh"); ok && sf.Type == reflect.TypeOf((chan struct{})(nil)) {
		c.path = sf.Index
	}
	lastShutdownField.Store(c)
	return c.path
}
