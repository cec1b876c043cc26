package raft

// The queue calls of Cluster and Client (Enqueue, Claim, Ack), the
// backends through which the claim loop and the ack of queue.go reach the
// cluster (locally on a member, through members for a Client), and the
// command service's claim lookup.

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ---- Cluster ----

// Enqueue adds value to the end of queue and returns the item's ID. Any
// member: a follower forwards it to the leader.
func (c *cluster) Enqueue(queue string, value []byte, timeout time.Duration) (uint64, error) {
	ops, err := enqueueOps(queue, value)
	if err != nil {
		return 0, err
	}
	res, err := c.leaseWrite(ops, timeout)
	return res.Index, err
}

// Claim claims the queue's lowest unclaimed item for ttl (the visibility
// timeout: unless acked by then, the item is claimable again), waiting for
// one until ctx ends.
func (c *cluster) Claim(ctx context.Context, queue string, ttl time.Duration) (Item, error) {
	return claim(ctx, clusterQueue{c}, queue, ttl)
}

// Ack removes a claimed item from its queue; ErrLeaseNotFound when its
// claim lapsed (and the item may have been claimed again).
func (c *cluster) Ack(queue string, item Item, timeout time.Duration) error {
	return ack(clusterQueue{c}, queue, item, timeout)
}

// clusterQueue serves queues on a member.
type clusterQueue struct{ c *cluster }

func (q clusterQueue) claim(ops []cmdOp, timeout time.Duration) (TxnResult, *claimedItem, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, nil, err
	}
	if q.c.IsLeader() {
		return q.c.proposeAnswer(ops, nil, timeout)
	}
	if _, err := q.c.r(); err != nil {
		return TxnResult{}, nil, err
	}
	resp := q.c.svc.txn(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)})
	if err := resp.err(); err != nil {
		return TxnResult{}, nil, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, resp.claimed(), nil
}

func (q clusterQueue) write(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
	return q.c.leaseWrite(ops, timeout)
}

func (q clusterQueue) grant(ttl, timeout time.Duration) (LeaseID, error) {
	return q.c.Grant(ttl, timeout)
}

func (q clusterQueue) revoke(id LeaseID, timeout time.Duration) error {
	return q.c.Revoke(id, timeout)
}

func (q clusterQueue) watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error) {
	return q.c.Watch(ctx, prefix, after)
}

func (q clusterQueue) claimOf(queue string, lease LeaseID, min uint64) (claimedItem, uint64, error) {
	if min == 0 {
		if err := q.c.Barrier(queueCheckBarrier); err != nil {
			return claimedItem{}, 0, err
		}
	} else if err := q.c.waitApplied(min, time.Now().Add(queueReadWait)); err != nil {
		return claimedItem{}, 0, err
	}
	return q.c.fsm.claimOfLease(queue, lease)
}

func (q clusterQueue) entry(key string) (Entry, bool, error) { return q.c.GetEntry(key) }

func (q clusterQueue) done() error {
	if q.c.closed.Load() {
		return errAfterClose
	}
	if err := q.c.failure.Load(); err != nil {
		return *err
	}
	return nil
}

func (q clusterQueue) memo() *queueMemo { return &q.c.queues }

// ---- Client ----

// Enqueue adds value to the end of queue through a member, as
// Cluster.Enqueue. A retry after a lost answer is applied once.
func (c *Client) Enqueue(queue string, value []byte, timeout time.Duration, peers ...peer.ID) (uint64, error) {
	ops, err := enqueueOps(queue, value)
	if err != nil {
		return 0, err
	}
	res, err := clientQueue{c, peers}.write(ops, timeout)
	return res.Index, err
}

// Claim claims the queue's lowest unclaimed item through members, as
// Cluster.Claim.
func (c *Client) Claim(ctx context.Context, queue string, ttl time.Duration, peers ...peer.ID) (Item, error) {
	return claim(ctx, clientQueue{c, peers}, queue, ttl)
}

// Ack removes a claimed item through a member, as Cluster.Ack.
func (c *Client) Ack(queue string, item Item, timeout time.Duration, peers ...peer.ID) error {
	return ack(clientQueue{c, peers}, queue, item, timeout)
}

// clientQueue serves queues through members.
type clientQueue struct {
	c     *Client
	peers []peer.ID
}

func (q clientQueue) claim(ops []cmdOp, timeout time.Duration) (TxnResult, *claimedItem, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, nil, err
	}
	resp, err := q.c.write(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)}, timeout, q.peers)
	if err != nil {
		return TxnResult{}, nil, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, resp.claimed(), nil
}

func (q clientQueue) write(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, err
	}
	resp, err := q.c.write(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)}, timeout, q.peers)
	if err != nil {
		return TxnResult{}, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, nil
}

func (q clientQueue) grant(ttl, timeout time.Duration) (LeaseID, error) {
	return q.c.Grant(ttl, timeout, q.peers...)
}

func (q clientQueue) revoke(id LeaseID, timeout time.Duration) error {
	return q.c.Revoke(id, timeout, q.peers...)
}

func (q clientQueue) watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error) {
	return q.c.Watch(ctx, prefix, after, q.peers...)
}

func (q clientQueue) claimOf(queue string, lease LeaseID, min uint64) (claimedItem, uint64, error) {
	req := &request{Cmd: cmdClaimOf, Key: queue, Lease: uint64(lease), After: min}
	wait := defaultCallTimeout
	if min == 0 {
		req.Barrier = int64(queueCheckBarrier)
		wait = max(wait, queueCheckBarrier)
	}
	resp, err := q.c.call(req, wait, true, q.peers)
	if err != nil {
		return claimedItem{}, 0, err
	}
	return claimedItem{found: resp.Found, id: resp.Item, value: resp.Value}, resp.Index, nil
}

func (q clientQueue) entry(key string) (Entry, bool, error) { return q.c.GetEntry(key, 0, q.peers...) }

func (q clientQueue) done() error {
	if q.c.closed.Load() {
		return errAfterClose
	}
	return nil
}

func (q clientQueue) memo() *queueMemo { return &q.c.queues }

// ---- the command service ----

// claimOf answers a Client's lookup of the claim bound to a lease: on the
// leader after a read index (Barrier set), or from the local replica once
// it has applied After.
func (s *commandService) claimOf(req *request) *response {
	if err := validateQueueName(req.Key); err != nil {
		return errorResponse(err)
	}
	if err := validateBarrier(req.Barrier); err != nil {
		return errorResponse(err)
	}
	if req.Lease == 0 {
		return errorResponse(fmt.Errorf("%w: claim lookup without a lease", ErrInvalidCommand))
	}
	local := func() *response {
		got, token, err := s.kv.claimOfLease(req.Key, LeaseID(req.Lease))
		if err != nil {
			return errorResponse(err)
		}
		return &response{Found: got.found, Item: got.id, Value: got.value, Index: token}
	}
	if req.Barrier > 0 {
		barrier := time.Duration(req.Barrier)
		return s.fwd.onLeader(req, barrier, func() *response {
			if _, err := s.leader.readIndex(barrier); err != nil {
				return errorResponse(err)
			}
			return local()
		})
	}
	if err := s.kv.waitIndex(req.After, queueReadWait); err != nil {
		return errorResponse(err)
	}
	return local()
}
