package raft

// Waiting for the futures of writes. hashicorp/raft's futures only block
// (Error), and its timeout bounds only the enqueueing, so a write that must
// not wait longer than its own timeout cannot just call Error: each write
// used to start a goroutine to call it and wait for that goroutine beside
// its timer. Raft applies commands and answers their futures in log order,
// the order writes hand them over in; so one goroutine per cluster calls
// Error on the futures of writes in turn and passes each outcome to its
// writer, which still waits beside its own timer and the cluster's closing
// exactly as before. A goroutine per write (its creation, its stack, one
// more wake-up) was a few per cent of a write's CPU at 64 writers.

import (
	"context"
	"reflect"
	"sync/atomic"

	hraft "github.com/hashicorp/raft"
)

// applyWaitQueue bounds the futures waiting for the collector. Past it a
// write waits by itself, with a goroutine of its own, as before.
const applyWaitQueue = 1024

// applyWait is one write's future and where its outcome goes.
type applyWait struct {
	f hraft.Future
	w *waiter
}

// applyWaiter is the goroutine that waits for the futures of writes.
type applyWaiter struct {
	queue chan applyWait
}

// newApplyWaiter starts the goroutine; it ends with ctx (the cluster's).
// Close does not wait for it: once Raft is shut down, the future it may be
// waiting on ends, and so does it.
func newApplyWaiter(ctx context.Context) *applyWaiter {
	a := &applyWaiter{queue: make(chan applyWait, applyWaitQueue)}
	go a.run(ctx)
	return a
}

// hand queues f, whose outcome goes to w.done; false when the queue is
// full.
func (a *applyWaiter) hand(f hraft.Future, w *waiter) bool {
	select {
	case a.queue <- applyWait{f: f, w: w}:
		return true
	default:
		return false
	}
}

func (a *applyWaiter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return // writers still waiting see the same closing
		case aw := <-a.queue:
			aw.w.done <- aw.f.Error() // buffered: never blocks
		}
	}
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
