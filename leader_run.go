package raft

// RunAsLeader: leader-only work that stops the moment leadership is lost,
// fenced by its leadership's epoch.

import (
	"context"
	"errors"
	"fmt"
)

// RunAsLeader runs fn at each leadership of this member (see
// Cluster.RunAsLeader for the contract). Each run waits for the leadership
// monitor (leadership.go) to establish the leadership's epoch, and ends
// when the monitor closes the leadership's lost channel. Returning fn's
// error rather than rerunning fn mirrors a campaign: whether a failed job
// deserves a retry, a pause or a new leader is the caller's call, and a
// retry loop here would hide failures in a log.
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
