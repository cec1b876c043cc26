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
	"slices"
	"sync"
	"sync/atomic"
	"time"
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
	// claim proposes a claim's operations and returns the result and what
	// the claim found (nil when the answer does not say: a retried Client
	// write gets its first result only).
	claim(ops []cmdOp, timeout time.Duration) (TxnResult, *claimedItem, error)
	// write proposes operations as Txn does.
	write(ops []cmdOp, timeout time.Duration) (TxnResult, error)
	grant(ttl, timeout time.Duration) (LeaseID, error)
	revoke(id LeaseID, timeout time.Duration) error
	watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error)
	// claimOf finds the queue's claim bound to lease, and its token, on a
	// replica that has applied index min; with min 0, a linearizable read.
	claimOf(queue string, lease LeaseID, min uint64) (claimedItem, uint64, error)
	// entry reads a key from a replica, which may be stale.
	entry(key string) (Entry, bool, error)
	// done is non-nil once the Cluster or Client is closed.
	done() error
	// memo is the queue state of this Cluster or Client.
	memo() *queueMemo
}

// queueMemo is what one Cluster or Client remembers of its queue calls:
// the lease of each claim it made, so that an Ack there finds it without
// a read (an Ack elsewhere reads the claim), and the leases its acked
// claims left, which its next claims reuse instead of granting new ones
// (a claim renews its lease in the same entry, so its visibility timeout
// runs from the claim). Both are bounded.
type queueMemo struct {
	mu     sync.Mutex
	claims map[claimRef]heldLease
	order  []claimRef
	free   []heldLease
}

type claimRef struct {
	queue string
	id    uint64
	token uint64
}

// heldLease is a lease this Cluster or Client holds: its TTL, and when
// (local clock) it was last renewed, at the latest.
type heldLease struct {
	id      LeaseID
	ttl     time.Duration
	renewed time.Time
}

// fresh tells whether a lease has most of its TTL left: only such a lease
// is reused (a claim renews it, so this only bounds the chance that it ran
// out meanwhile, which costs a retry).
func (l heldLease) fresh(now time.Time) bool { return now.Sub(l.renewed) < l.ttl/2 }

const (
	// maxRemembered bounds the claims a memo remembers; past it the
	// oldest are forgotten (their Ack reads the claim).
	maxRemembered = 4096
	// maxFreeLeases bounds the leases a memo keeps for reuse; past it an
	// Ack revokes its claim's lease.
	maxFreeLeases = 64
)

func (m *queueMemo) putClaim(r claimRef, l heldLease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.claims == nil {
		m.claims = map[claimRef]heldLease{}
	}
	if len(m.order) >= maxRemembered {
		delete(m.claims, m.order[0])
		m.order = m.order[1:]
	}
	m.claims[r] = l
	m.order = append(m.order, r)
}

// takeClaim returns and forgets a claim's lease.
func (m *queueMemo) takeClaim(r claimRef) (heldLease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.claims[r]
	if ok {
		delete(m.claims, r) // its order slot goes when it reaches the front
	}
	return l, ok
}

// getFree takes a fresh free lease of ttl, if any.
func (m *queueMemo) getFree(ttl time.Duration, now time.Time) (heldLease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.free) - 1; i >= 0; i-- {
		l := m.free[i]
		if !l.fresh(now) {
			// Older ones are older still: they run out by themselves.
			m.free = slices.Delete(m.free, 0, i+1)
			return heldLease{}, false
		}
		if l.ttl == ttl {
			m.free = slices.Delete(m.free, i, i+1)
			return l, true
		}
	}
	return heldLease{}, false
}

// putFree keeps a lease for reuse; false when the memo is full.
func (m *queueMemo) putFree(l heldLease) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.free) >= maxFreeLeases {
		return false
	}
	m.free = append(m.free, l)
	return true
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

// claimOps is the command that claims the queue's lowest unclaimed item
// under lease, renewing the lease in the same entry.
func claimOps(queue string, lease LeaseID) []cmdOp {
	v := indexBytes(uint64(lease))
	return []cmdOp{
		{kind: opClaim, key: []byte(queueItemsPrefix(queue)), value: v},
		{kind: opLeaseKeepAlive, value: v},
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

	lease  heldLease // held for this call, not bound to a claim (id 0: none)
	pause  time.Duration
	events <-chan Event
	stopW  context.CancelFunc
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
	for {
		if err := c.stopped(); err != nil {
			return Item{}, err
		}
		item, empty, err := c.try()
		switch {
		case err != nil:
			if err := c.failed(err); err != nil {
				return Item{}, err
			}
		case empty != 0:
			if err := c.wait(empty); err != nil {
				return Item{}, err
			}
		default:
			return item, nil
		}
	}
}

// stopped is the reason to stop, if any.
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

// try proposes one claim. It returns the item claimed, or the index of a
// claim that found the queue empty, or an error.
func (c *claimer) try() (Item, uint64, error) {
	now := time.Now()
	if c.lease.id != 0 && !c.lease.fresh(now) {
		c.lease = heldLease{} // unbound: it runs out by itself
	}
	if c.lease.id == 0 {
		if l, ok := c.b.memo().getFree(c.ttl, now); ok {
			c.lease = l
		} else {
			id, err := c.b.grant(c.ttl, stepTimeout(c.ctx))
			if err != nil {
				return Item{}, 0, err
			}
			c.lease = heldLease{id: id, ttl: c.ttl, renewed: now}
		}
	}
	at := time.Now()
	res, got, err := c.b.claim(claimOps(c.queue, c.lease.id), stepTimeout(c.ctx))
	switch {
	case errors.Is(err, ErrLeaseNotFound):
		c.lease = heldLease{} // it ran out: take another
		return Item{}, 0, err
	case err != nil && !IsNotApplied(err):
		return c.settle(err)
	case err != nil:
		return Item{}, 0, err
	}
	c.lease.renewed = at // the claim renewed it
	if got == nil {
		// A retried write's first answer, which does not say what it
		// claimed: the claim bound to the lease, if any, is it.
		found, token, err := c.b.claimOf(c.queue, c.lease.id, res.Index)
		if err != nil {
			return c.settle(err)
		}
		if !found.found || token != res.Index {
			return Item{}, res.Index, nil
		}
		return c.won(found, token), 0, nil
	}
	if !got.found {
		return Item{}, res.Index, nil
	}
	return c.won(*got, res.Index), 0, nil
}

// won hands the call's lease to its claim and returns the item.
func (c *claimer) won(got claimedItem, token uint64) Item {
	c.b.memo().putClaim(claimRef{queue: c.queue, id: got.id, token: token}, c.lease)
	c.lease = heldLease{}
	v := got.value
	if v == nil {
		v = []byte{}
	}
	return Item{ID: got.id, Value: v, Token: token}
}

// settle finds out whether a claim whose outcome is unknown was applied:
// then a claim is bound to the call's lease (a linearizable read). Until
// it knows it claims nothing else: a later item delivered first would break
// the order items are first delivered in. A claim that did not apply is
// given up with its lease (revoked, in case the claim is only late), and
// Claim tries again.
func (c *claimer) settle(cause error) (Item, uint64, error) {
	for {
		got, token, err := c.b.claimOf(c.queue, c.lease.id, 0)
		switch {
		case err == nil && got.found:
			return c.won(got, token), 0, nil
		case err == nil:
			claimsGivenUp.Add(1)
			c.dropLease()
			return Item{}, 0, cause
		}
		if ferr := c.failed(err); ferr != nil {
			claimsGivenUp.Add(1)
			c.dropLease()
			return Item{}, 0, ferr
		}
	}
}

// claimsGivenUp counts, process-wide, the claims whose outcome was unknown
// and that settle gave up (found not applied, or could not tell). Such a
// claim may still reach the leader late and hold its item until the revoke
// (or the lease's expiry) releases it: the one case in which an item can be
// first delivered after a later item (README, queues). Tests use it to tell
// that case from a broken order.
var claimsGivenUp atomic.Int64

// wait waits for a change of the queue after index from that can make an
// item claimable: a new item, or a claim gone.
func (c *claimer) wait(from uint64) error {
	if c.events == nil {
		wctx, cancel := context.WithCancel(c.ctx)
		ch, err := c.b.watch(wctx, queueWatchPrefix(c.queue), from)
		if err != nil {
			cancel()
			if errors.Is(err, ErrCompacted) {
				return nil // claim again: its index starts a new watch
			}
			return c.failed(err)
		}
		c.events, c.stopW = ch, cancel
	}
	for {
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case e, ok := <-c.events:
			if !ok {
				c.closeWatch() // its member went away: claim and watch anew
				return c.stopped()
			}
			if !relevantEvent(c.queue, e) {
				continue
			}
			// Several changes at once need one claim, not one each.
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

// dropLease revokes the call's lease without waiting long: if the revoke
// fails the lease runs out by itself.
func (c *claimer) dropLease() {
	if c.lease.id != 0 {
		_ = c.b.revoke(c.lease.id, time.Second)
	}
	c.lease = heldLease{}
}

// finish ends the call: its watch, and its lease, kept for reuse.
func (c *claimer) finish() {
	c.closeWatch()
	if c.lease.id != 0 && c.lease.fresh(time.Now()) && c.b.done() == nil {
		if c.b.memo().putFree(c.lease) {
			c.lease = heldLease{}
		}
	}
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
	// The claim's lease: kept for the next claims here when it was made
	// here and is fresh, revoked otherwise.
	var revoke LeaseID
	held, keep := b.memo().takeClaim(claimRef{queue: queue, id: item.ID, token: item.Token})
	switch {
	case keep && !held.fresh(time.Now()):
		keep, revoke = false, held.id
	case !keep:
		// Claimed elsewhere: the claim's entry names its lease (a stale
		// read at worst misses it, and the lease then runs out).
		if e, ok, err := b.entry(queueClaimKey(queue, item.ID)); err == nil && ok && e.CreateIndex == item.Token {
			revoke = e.Lease
		}
	}
	res, err := b.write(ackOps(queue, item, revoke), timeout)
	if err != nil {
		return err
	}
	if !res.OK {
		return fmt.Errorf("%w: the claim of item %d (token %d) in queue %q lapsed, or was taken over",
			ErrLeaseNotFound, item.ID, item.Token, queue)
	}
	if keep && !b.memo().putFree(held) {
		_ = b.revoke(held.id, time.Second)
	}
	return nil
}
