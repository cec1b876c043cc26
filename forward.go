package raft

import (
	"context"
	"errors"
	"fmt"
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
// the leader, over the command service.
type forwarder struct {
	ctx    context.Context
	self   peer.ID
	caller caller
	role   leadershipSource
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
			resp, err := f.caller.call(f.ctx, leader, forwardedCopy(req, left), deadline.Add(callMargin))
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
