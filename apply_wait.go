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
