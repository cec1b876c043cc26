package raft

// RunAsLeader: leader-only work that stops the moment leadership is lost,
// fenced by its leadership's epoch.

import (
	"context"
	"errors"
	"fmt"
)

// RunAsLeader runs fn each time this member becomes leader, and returns
// when ctx ends (ctx.Err()) or the cluster closes (ErrShutdown).
//
// Before fn runs, the new leader commits an epoch marker: epoch is its log
// index, strictly greater than every earlier leadership's. fn's ctx is
// cancelled the moment this member sees its leadership end (Raft steps
// down, or ctx ends, or the cluster closes). Since an isolated leader can
// believe it leads for up to a leader lease after the others elected a new
// one, fn must also fence its writes: a Txn with IfEpoch(epoch) among its
// conditions is refused (TxnResult.OK false) once a newer leadership's
// marker is applied, so no write of a deposed leader lands after its
// successor began.
//
// fn runs at most once per leadership: when it returns nil, RunAsLeader
// waits for the next leadership of this member. When it returns an error
// while this member still leads, RunAsLeader returns that error (wrapped,
// errors.Is holds) and keeps no state: like a campaign whose work failed,
// the caller decides what follows (call RunAsLeader again to retry, hand
// leadership to another member with TransferLeadership, or stop). Until
// then no fn runs on this member, and, since Raft leadership does not move
// by itself, nowhere else either: a service that must keep its job running
// calls RunAsLeader in a loop. An error returned after leadership was lost
// (fn's ctx cancelled, or ErrNotLeader, ErrNoLeader or ErrLeadershipLost
// from a write) is the expected end of that leadership, not a failure:
// RunAsLeader waits for the next one.
//
// When this member leads but cannot commit an epoch marker because a voter
// does not know markers yet (a rolling upgrade: see the README's Upgrades),
// RunAsLeader returns an error wrapping ErrInvalidCommand instead of
// running fn unfenced.
func (c *cluster) RunAsLeader(ctx context.Context, fn func(ctx context.Context, epoch uint64) error) error {
	if fn == nil {
		return errors.New("raft: RunAsLeader with a nil function")
	}
	var last uint64 // the epoch fn last ran in
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		lead, err := c.leaderMon.awaitLeadership(ctx, last)
		if err != nil {
			return err
		}
		last = lead.epoch
		lost, err := runFenced(ctx, c.ctx, lead, fn)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case c.ctx.Err() != nil:
			return ErrShutdown
		case err != nil && !lost && !leadershipGone(err):
			return fmt.Errorf("raft: RunAsLeader: job of epoch %d failed: %w", lead.epoch, err)
		}
	}
}

// runFenced runs fn with a ctx that ends when lead is lost, ctx ends or
// the cluster closes (closing), and reports whether it had ended when fn
// returned.
func runFenced(ctx, closing context.Context, lead *leadership, fn func(context.Context, uint64) error) (lost bool, err error) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-lead.lost:
		case <-closing.Done():
		case <-fctx.Done():
		}
		cancel()
	}()
	err = fn(fctx, lead.epoch)
	lost = fctx.Err() != nil
	cancel()
	<-watched
	return lost, err
}

// leadershipGone reports errors that say this member stopped leading.
func leadershipGone(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrLeadershipLost) ||
		errors.Is(err, context.Canceled)
}

// awaitLeadership waits until this member holds an established leadership
// whose epoch is greater than after, and returns it. It fails with ctx's
// error, when the monitor stopped (ErrShutdown or the state machine's
// failure), or when this member leads but cannot establish an epoch.
func (m *leaderMonitor) awaitLeadership(ctx context.Context, after uint64) (*leadership, error) {
	for {
		m.mu.Lock()
		lead, fenceErr, done, doneErr, changed := m.lead, m.fenceErr, m.done, m.doneErr, m.changed
		m.mu.Unlock()
		switch {
		case done:
			return nil, doneErr
		case fenceErr != nil:
			return nil, fenceErr
		case lead != nil && lead.epoch > after:
			return lead, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}
