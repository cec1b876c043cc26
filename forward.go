package raft

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// leadershipSource says where leader-only requests go (the cluster).
type leadershipSource interface {
	// leadership reports whether this member leads, else the leader it
	// knows ("" for none); err is set once the member is closed.
	leadership() (self bool, leader peer.ID, err error)
}

// forwarder runs leader-only requests: here when this member leads, else on
// the leader, over a session of the command service (session_pool.go):
// requests forwarded at the same time share its writes, so concurrent
// writes through a follower cost one round trip to the leader together,
// each with its own answer.
type forwarder struct {
	ctx    context.Context
	self   peer.ID
	caller caller
	role   leadershipSource
	// metrics counts forwarded requests (nil: not counted).
	metrics *clusterMetrics

	poolOnce sync.Once
	pool     *sessionPool
	poolMu   sync.Mutex
	closed   bool
}

// sessions is the forwarder's session pool, made on first use (nil once
// closed).
func (f *forwarder) sessions() *sessionPool {
	f.poolOnce.Do(func() {
		f.poolMu.Lock()
		defer f.poolMu.Unlock()
		if f.closed {
			return
		}
		ns := strings.TrimPrefix(string(f.caller.proto), "/raft/v1")
		f.pool = newSessionPool(f.ctx, &f.caller, ns)
	})
	return f.pool
}

// call sends one request to a member, on a session when it can.
func (f *forwarder) call(id peer.ID, req *request, deadline time.Time) (*response, error) {
	if p := f.sessions(); p != nil {
		return p.call(f.ctx, id, req, deadline)
	}
	return nil, fmt.Errorf("%w: %w", errNotSent, ErrShutdown)
}

// closeSessions ends the forwarder's sessions (the member is closing).
func (f *forwarder) closeSessions() {
	f.poolMu.Lock()
	f.closed = true
	p := f.pool
	f.poolMu.Unlock()
	if p == nil {
		f.poolOnce.Do(func() {}) // none will be made
		return
	}
	p.close()
}

// forwardRetryInterval is the pause between looks for a leader while none is
// known, or after a former leader refused a forwarded request.
const forwardRetryInterval = 20 * time.Millisecond

// onLeader runs local if this member leads; otherwise it forwards req to the
// leader, once: a forwarded request that reaches a non-leader fails with
// ErrNotLeader instead of travelling on, so leadership moves cannot make it
// loop. While no leader is known it waits for one until the timeout. A
// refusal by a former leader (certainly not applied) is tried again on the
// new one while time remains.
func (f *forwarder) onLeader(req *request, timeout time.Duration, local func() *response) *response {
	deadline := time.Now().Add(timeout)
	for {
		self, leader, err := f.role.leadership()
		if err != nil {
			return errorResponse(err)
		}
		if self {
			return local()
		}
		if req.Forwarded {
			return errorResponse(ErrNotLeader)
		}
		if leader != "" && leader != f.self {
			left := time.Until(deadline)
			if left <= 0 {
				return errorResponse(fmt.Errorf("%w within %v", ErrNoLeader, timeout))
			}
			resp, err := f.call(leader, forwardedCopy(req, left), deadline.Add(callMargin))
			f.metrics.forwarded(err == nil)
			if err == nil {
				if !mayTryElsewhere(resp.err()) || time.Now().After(deadline) {
					return resp
				}
			} else if !errors.Is(err, errNotSent) || time.Now().After(deadline) {
				return errorResponse(forwardFailed(leader, err))
			}
		}
		if time.Now().After(deadline) {
			return errorResponse(fmt.Errorf("%w within %v", ErrNoLeader, timeout))
		}
		select {
		case <-f.ctx.Done():
			return errorResponse(ErrShutdown)
		case <-time.After(forwardRetryInterval):
		}
	}
}

// forwardFailed is the error of a forwarded request that got no answer. Once
// sent, the leader may have applied it: the caller must learn that the
// outcome is unknown (a Client then resends it), so a broken stream travels
// as ErrLeadershipLost, the leader having gone away mid-request.
func forwardFailed(leader peer.ID, err error) error {
	if errors.Is(err, errNotSent) || errors.Is(err, ErrTimeout) || errors.Is(err, ErrShutdown) {
		return err
	}
	return fmt.Errorf("%w: no answer from the leader %s, the request was sent (the outcome is unknown): %v", ErrLeadershipLost, leader, err)
}

// forwardedCopy is req as the leader gets it: marked forwarded, and with what
// is left of the caller's time, so a forwarded call never runs much past its
// timeout.
func forwardedCopy(req *request, left time.Duration) *request {
	fwd := *req
	fwd.Forwarded = true
	if fwd.Timeout > 0 {
		fwd.Timeout = int64(left)
	}
	if fwd.Barrier > 0 && int64(left) < fwd.Barrier {
		fwd.Barrier = int64(left)
	}
	return &fwd
}
