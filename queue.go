package raft

// Queues: Enqueue, Claim and Ack on Cluster and Client. At-least-once
// delivery with a visibility timeout, built from keys, a lease per claim and
// fenced transactions (the keys and the head read are queue_store.go):
//
//   - Enqueue is one entry that writes the item under a key ending in its
//     own log index, its ID: items are ordered as the log committed them.
//   - Claim reads the queue's lowest item without a claim and claims it with
//     Txn{IfCreateIndex(item, ID), IfAbsent(claim); Then: the claim, bound
//     to a fresh lease of the visibility timeout}. The claim's CreateIndex
//     (the Txn's index) is the Item's Token. A claim that loses a race reads
//     again; an empty queue is waited for with a Watch on the queue.
//   - Ack is Txn{IfCreateIndex(claim, Token); Then: delete the item and the
//     claim, revoke the claim's lease}: a consumer whose claim lapsed, and
//     was perhaps taken over, cannot ack (ErrLeaseNotFound).
//   - A claim whose lease runs out is deleted by the lease's expiry: the
//     item is the queue's again, and, being older, is claimed before any
//     later item.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Item is a claimed queue item. ID is the log index of its Enqueue (IDs
// increase in the order the items were enqueued); Token is the log index of
// this claim, the fencing token that Ack checks: a later claim of the same
// item has a larger one.
type Item struct {
	ID    uint64
	Value []byte
	Token uint64
}

const (
	// queueStepTimeout bounds each write a Claim makes (its lease, its
	// claim) when ctx has no earlier deadline.
	queueStepTimeout = 10 * time.Second
	// queueCheckBarrier bounds the linearizable read that settles whether a
	// claim whose answer was lost was applied.
	queueCheckBarrier = 5 * time.Second
	// queueRetryMin and queueRetryMax bound the pause before a Claim tries
	// again after the cluster could not serve it (no leader, a member going
	// away): Claim waits out failures until its ctx ends.
	queueRetryMin = 20 * time.Millisecond
	queueRetryMax = time.Second
)

// queueBackend is what a Claim or an Ack needs from the cluster: a Cluster
// member serves it locally, a Client through members.
type queueBackend interface {
	// head reads the queue's lowest unclaimed item from a replica that has
	// applied index after (0: any).
	head(queue string, after uint64) (queueHead, error)
	// write proposes operations as Txn does.
	write(ops []cmdOp, timeout time.Duration) (TxnResult, error)
	grant(ttl, timeout time.Duration) (LeaseID, error)
	revoke(id LeaseID, timeout time.Duration) error
	watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error)
	// entry reads a key, current (linearizable) or not.
	entry(key string, current bool) (Entry, bool, error)
	// done is non-nil once the Cluster or Client is closed.
	done() error
	// leases remembers the lease of each claim made here, for Ack.
	leases() *claimLeases
}

// claimLeases remembers the lease of the latest claims made through one
// Cluster or Client, so that an Ack there revokes it without reading the
// claim first (an Ack elsewhere reads it). Bounded: past maxRemembered
// claims the oldest are forgotten.
type claimLeases struct {
	mu    sync.Mutex
	m     map[claimRef]LeaseID
	order []claimRef
}

type claimRef struct {
	queue string
	id    uint64
	token uint64
}

// maxRemembered bounds claimLeases.
const maxRemembered = 4096

func (l *claimLeases) put(r claimRef, lease LeaseID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[claimRef]LeaseID{}
	}
	if len(l.order) >= maxRemembered {
		delete(l.m, l.order[0])
		l.order = l.order[1:]
	}
	l.m[r] = lease
	l.order = append(l.order, r)
}

// take returns and forgets a claim's lease (0 when unknown).
func (l *claimLeases) take(r claimRef) LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	lease, ok := l.m[r]
	if ok {
		delete(l.m, r) // its order slot goes when it reaches the front
	}
	return lease
}

// enqueueOps is an Enqueue's command.
func enqueueOps(queue string, value []byte) ([]cmdOp, error) {
	if err := validateQueueName(queue); err != nil {
		return nil, err
	}
	if err := validateValue(value); err != nil {
		return nil, err
	}
	v := value
	if v == nil {
		v = []byte{}
	}
	return []cmdOp{{kind: opEnqueue, key: []byte(queueItemsPrefix(queue)), value: v}}, nil
}

// claimOps is the transaction that claims item id under lease.
func claimOps(queue string, id uint64, lease LeaseID) []cmdOp {
	claim := queueClaimKey(queue, id)
	return []cmdOp{
		{kind: opIfCreateIndex, key: []byte(queueItemKey(queue, id)), value: indexBytes(id)},
		{kind: opIfAbsent, key: []byte(claim)},
		userOp(Op{Key: claim, Value: []byte{}, Lease: lease}),
	}
}

// ackOps is the transaction that acks a claimed item, fenced by its token,
// revoking the claim's lease when known (0: the lease runs out by itself).
func ackOps(queue string, item Item, lease LeaseID) []cmdOp {
	claim := queueClaimKey(queue, item.ID)
	ops := []cmdOp{
		{kind: opIfCreateIndex, key: []byte(claim), value: indexBytes(item.Token)},
		{kind: opDelete, key: []byte(queueItemKey(queue, item.ID))},
		{kind: opDelete, key: []byte(claim)},
	}
	if lease != 0 {
		ops = append(ops, cmdOp{kind: opLeaseRevoke, value: indexBytes(uint64(lease))})
	}
	return ops
}

// claimPermanent tells whether a Claim must give up on err rather than
// wait and try again: bad input, or a cluster that cannot take the queue's
// operations (ErrInvalidCommand: a voter's build lacks them). Anything else
// (no leader, a member going away, a timeout) is waited out until ctx ends.
func claimPermanent(err error) bool {
	for _, s := range []error{
		ErrInvalidNamespace, ErrInvalidTimeout, ErrInvalidBarrier, ErrInvalidCommand, ErrInvalidKey,
		ErrTooLarge, ErrEncryptionRequired, ErrUnexpectedEncryption, ErrDecrypt, ErrKeyTooShort, ErrAlreadyClosed,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// nextPause doubles a retry pause within [queueRetryMin, queueRetryMax].
func nextPause(p time.Duration) time.Duration {
	return min(max(2*p, queueRetryMin), queueRetryMax)
}

// relevantEvent tells whether a change of the queue can make an item
// claimable: a new item, or a claim gone (lapsed, or acked).
func relevantEvent(queue string, e Event) bool {
	switch e.Kind {
	case EventSet:
		_, ok := queueKeyID(e.Key, queueItemsPrefix(queue))
		return ok
	case EventDelete:
		_, ok := queueKeyID(e.Key, queueClaimsPrefix(queue))
		return ok
	}
	return false
}

// stepTimeout is the timeout of one write of a Claim: queueStepTimeout, or
// less when ctx ends sooner.
func stepTimeout(ctx context.Context) time.Duration {
	t := queueStepTimeout
	if d, ok := ctx.Deadline(); ok {
		t = min(t, time.Until(d))
	}
	return max(t, time.Millisecond)
}

// claimer is one Claim call.
type claimer struct {
	ctx   context.Context
	b     queueBackend
	queue string
	ttl   time.Duration

	lease   LeaseID // granted for this call and not (yet) bound
	leaseAt time.Time
	pause   time.Duration
	events  <-chan Event
	stopW   context.CancelFunc
}

// claim runs a Claim: it returns the queue's lowest unclaimed item, claimed
// for ttl, waiting for one until ctx ends.
func claim(ctx context.Context, b queueBackend, queue string, ttl time.Duration) (Item, error) {
	if ctx == nil {
		return Item{}, errors.New("raft: Claim: nil context")
	}
	if err := validateQueueName(queue); err != nil {
		return Item{}, err
	}
	if err := validateLeaseTTL(ttl); err != nil {
		return Item{}, err
	}
	c := &claimer{ctx: ctx, b: b, queue: queue, ttl: ttl}
	defer c.finish()
	var after uint64
	for {
		if err := c.stopped(); err != nil {
			return Item{}, err
		}
		h, err := b.head(queue, after)
		after = 0
		if err != nil {
			if err := c.failed(err); err != nil {
				return Item{}, err
			}
			continue
		}
		if !h.found {
			if err := c.wait(h.applied); err != nil {
				return Item{}, err
			}
			continue
		}
		item, lost, err := c.try(h)
		switch {
		case err != nil:
			if err := c.failed(err); err != nil {
				return Item{}, err
			}
		case lost != 0:
			after = lost // read what won the race, not the same head again
		default:
			return item, nil
		}
	}
}

// stopped is the reason to stop waiting, if any.
func (c *claimer) stopped() error {
	if err := c.b.done(); err != nil {
		return err
	}
	return c.ctx.Err()
}

// failed pauses after an error Claim waits out, or returns it when it is
// permanent or ctx ended.
func (c *claimer) failed(err error) error {
	if claimPermanent(err) {
		return err
	}
	c.pause = nextPause(c.pause)
	t := time.NewTimer(c.pause)
	defer t.Stop()
	select {
	case <-c.ctx.Done():
		return c.ctx.Err()
	case <-t.C:
	}
	return c.stopped()
}

// try claims the item h found. It returns the item, or the index of the
// claim that lost a race (the item was taken or acked), or an error.
func (c *claimer) try(h queueHead) (Item, uint64, error) {
	// A lease granted for an earlier attempt serves while most of its TTL
	// is left (the claim's visibility timeout runs from its grant).
	if c.lease != 0 && time.Since(c.leaseAt) > c.ttl/2 {
		c.dropLease()
	}
	if c.lease == 0 {
		at := time.Now()
		id, err := c.b.grant(c.ttl, stepTimeout(c.ctx))
		if err != nil {
			return Item{}, 0, err
		}
		c.lease, c.leaseAt = id, at
	}
	res, err := c.b.write(claimOps(c.queue, h.id, c.lease), stepTimeout(c.ctx))
	switch {
	case errors.Is(err, ErrLeaseNotFound):
		c.lease = 0 // it ran out while this Claim waited: grant another
		return Item{}, 0, err
	case err != nil && !IsNotApplied(err):
		return c.settle(h, err)
	case err != nil:
		return Item{}, 0, err
	case !res.OK:
		return Item{}, res.Index, nil
	}
	return c.won(h, res.Index), 0, nil
}

// won records a claim made under the call's lease and returns its item.
func (c *claimer) won(h queueHead, token uint64) Item {
	c.b.leases().put(claimRef{queue: c.queue, id: h.id, token: token}, c.lease)
	c.lease = 0 // the claim's now: not revoked when the call ends
	return Item{ID: h.id, Value: h.value, Token: token}
}

// settle finds out whether a claim whose answer was lost was applied: the
// claim key exists bound to this call's lease. Until it knows, it does not
// claim another item (a later item delivered first would break the order
// items are first delivered in). When it cannot tell before ctx ends, the
// lease is revoked, which ends such a claim.
func (c *claimer) settle(h queueHead, cause error) (Item, uint64, error) {
	for {
		e, ok, err := c.b.entry(queueClaimKey(c.queue, h.id), true)
		switch {
		case err == nil && ok && e.Lease == c.lease:
			return c.won(h, e.CreateIndex), 0, nil
		case err == nil:
			return Item{}, 0, cause // not applied: try again
		}
		if ferr := c.failed(err); ferr != nil {
			return Item{}, 0, ferr
		}
	}
}

// wait waits for a change of the queue that can make an item claimable,
// from the index the empty read started at.
func (c *claimer) wait(applied uint64) error {
	if c.events == nil {
		wctx, cancel := context.WithCancel(c.ctx)
		ch, err := c.b.watch(wctx, queueWatchPrefix(c.queue), applied)
		if err != nil {
			cancel()
			if errors.Is(err, ErrCompacted) {
				return nil // the read is older than the history: read again
			}
			return c.failed(err)
		}
		c.events, c.stopW = ch, cancel
	}
	// A lease must not run out while nothing comes: give it back now.
	c.dropLease()
	for {
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case e, ok := <-c.events:
			if !ok {
				c.closeWatch() // its member went away: watch anew
				return c.stopped()
			}
			if !relevantEvent(c.queue, e) {
				continue
			}
			// Several changes at once need one read, not one each.
			for {
				select {
				case _, ok := <-c.events:
					if ok {
						continue
					}
					c.closeWatch()
				default:
				}
				return nil
			}
		}
	}
}

func (c *claimer) closeWatch() {
	if c.stopW != nil {
		c.stopW()
	}
	c.events, c.stopW = nil, nil
}

// dropLease revokes the call's unbound lease, if any, without waiting long:
// if the revoke fails the lease just runs out.
func (c *claimer) dropLease() {
	if c.lease == 0 {
		return
	}
	_ = c.b.revoke(c.lease, time.Second)
	c.lease = 0
}

// finish ends the call: its watch, and its lease if no claim took it.
func (c *claimer) finish() {
	c.closeWatch()
	c.dropLease()
}

// ack runs an Ack.
func ack(b queueBackend, queue string, item Item, timeout time.Duration) error {
	if err := validateQueueName(queue); err != nil {
		return err
	}
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	if item.ID == 0 || item.Token == 0 {
		return fmt.Errorf("%w: an item without ID or token", ErrInvalidKey)
	}
	ref := claimRef{queue: queue, id: item.ID, token: item.Token}
	lease := b.leases().take(ref)
	if lease == 0 {
		// Claimed elsewhere: the claim's entry names its lease (a stale
		// read at worst misses it, and the lease then runs out by itself).
		if e, ok, err := b.entry(queueClaimKey(queue, item.ID), false); err == nil && ok && e.CreateIndex == item.Token {
			lease = e.Lease
		}
	}
	res, err := b.write(ackOps(queue, item, lease), timeout)
	if err != nil {
		return err
	}
	if !res.OK {
		return fmt.Errorf("%w: the claim of item %d (token %d) in queue %q lapsed, or was taken over",
			ErrLeaseNotFound, item.ID, item.Token, queue)
	}
	return nil
}

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

func (q clusterQueue) head(queue string, after uint64) (queueHead, error) {
	if _, err := q.c.r(); err != nil {
		return queueHead{}, err
	}
	if after > 0 {
		// A replica that lags reads what it has; the claim's condition
		// keeps that safe.
		_ = q.c.fsm.waitIndex(after, queueHeadWait)
	}
	return q.c.fsm.queueHead(queue)
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

func (q clusterQueue) entry(key string, current bool) (Entry, bool, error) {
	if current {
		if err := q.c.Barrier(queueCheckBarrier); err != nil {
			return Entry{}, false, err
		}
	}
	return q.c.GetEntry(key)
}

func (q clusterQueue) done() error {
	if q.c.closed.Load() {
		return errAfterClose
	}
	if err := q.c.failure.Load(); err != nil {
		return *err
	}
	return nil
}

func (q clusterQueue) leases() *claimLeases { return &q.c.claims }

// ---- Client ----

// Enqueue adds value to the end of queue through a member, as
// Cluster.Enqueue. A retry after a lost answer is applied once.
func (c *Client) Enqueue(queue string, value []byte, timeout time.Duration, peers ...peer.ID) (uint64, error) {
	ops, err := enqueueOps(queue, value)
	if err != nil {
		return 0, err
	}
	if err := validateTimeout(timeout); err != nil {
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

func (q clientQueue) head(queue string, after uint64) (queueHead, error) {
	resp, err := q.c.call(&request{Cmd: cmdQueueHead, Key: queue, After: after}, defaultCallTimeout, true, q.peers)
	if err != nil {
		return queueHead{}, err
	}
	h := queueHead{found: resp.Found, id: resp.Item, applied: resp.Applied, value: resp.Value}
	if h.found && h.value == nil {
		h.value = []byte{}
	}
	return h, nil
}

func (q clientQueue) write(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
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

func (q clientQueue) entry(key string, current bool) (Entry, bool, error) {
	var barrier int64
	if current {
		barrier = int64(queueCheckBarrier)
	}
	return q.c.GetEntry(key, barrier, q.peers...)
}

func (q clientQueue) done() error {
	if q.c.closed.Load() {
		return errAfterClose
	}
	return nil
}

func (q clientQueue) leases() *claimLeases { return &q.c.claims }

// ---- the command service ----

// queueHead answers a Client's head read from the local replica, once it
// has applied the index asked for (or says it is behind).
func (s *commandService) queueHead(req *request) *response {
	if err := validateQueueName(req.Key); err != nil {
		return errorResponse(err)
	}
	if req.After > 0 {
		if err := s.kv.waitIndex(req.After, queueHeadWait); err != nil {
			return errorResponse(err)
		}
	}
	h, err := s.kv.queueHead(req.Key)
	if err != nil {
		return errorResponse(err)
	}
	return &response{Found: h.found, Item: h.id, Value: h.value, Applied: h.applied}
}
