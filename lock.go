package raft

// Locks with fencing tokens: Lock and TryLock on Cluster and Client, and a
// held lock's life (its lease kept alive, Done, the fenced Unlock). How a
// lock is taken and how waiters queue is lock_wait.go.
//
// A lock is the key LockKey(name), bound to its holder's lease. Its token
// is the key's CreateIndex: every acquisition creates the key anew, at a
// higher log index, so tokens strictly increase per name across holders,
// and IfCreateIndex(LockKey(name), token) holds exactly while that holder's
// lock stands. The holder keeps its lease alive and watches its key; Done
// closes the moment either says the lock may be gone. Unlock deletes the
// key only if it still has the holder's token, so a late or retried Unlock
// never releases a later holder's lock.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Lock is a held lock (see Cluster.Lock).
type Lock interface {
	// Token is the lock's fencing token: the log index at which this
	// holder took it, strictly greater than every earlier holder's token
	// of the same name. Guard a resource with it: a Txn conditioned on
	// IfCreateIndex(LockKey(name), token) applies only while this lock
	// stands; anything else the holder drives gets the token to compare.
	Token() uint64
	// Done is closed as soon as the lock may be lost: a renewal of its
	// lease was refused, a TTL passed since the last successful renewal
	// was sent, its key was seen deleted or taken over, the Cluster or
	// Client closed, or Unlock was called. Stop acting on the lock then.
	Done() <-chan struct{}
	// Unlock releases the lock and ends its lease. It is fenced by the
	// token: it deletes the lock's key only while this holder's lock
	// stands, so it never releases a later holder's lock. It returns an
	// error wrapping ErrLeaseNotFound when the lock had already been lost.
	// Calling it again returns the first call's result.
	Unlock() error
}

// Key layout of locks. Keys under lockPrefix are reserved for locks: a
// user's write there can break them. A name's lock key, gate key and
// waiter keys end in different fixed forms, so no two names share a key.
const (
	lockPrefix = "_tauraft/lock/"
	// lockHolderSpace holds LockKey(name): the lock, while held.
	lockHolderSpace = lockPrefix + "h/"
	// lockGateSpace holds a name's gate: present while waiters queue
	// (bound to the newest waiter's lease), so that a new caller does not
	// take the lock past them.
	lockGateSpace = lockPrefix + "g/"
	// lockWaiterSpace holds a name's waiters: name + "/" + the waiter's
	// lease ID in lockIDDigits decimal digits (a sequential key created
	// with the lease), so key order is queue order.
	lockWaiterSpace = lockPrefix + "w/"
	lockIDDigits    = seqDigits
)

// Timing of locks.
const (
	// lockRenewFraction: a lock's lease is renewed every TTL/3, so two
	// renewals can fail before Done closes.
	lockRenewFraction = 3
	// lockWriteTimeout bounds each write a Lock, Unlock or clean-up makes
	// (capped by Lock's context deadline).
	lockWriteTimeout = 10 * time.Second
	// lockRetryPause is the pause before retrying a failed step (a renewal
	// without an answer, a watch that could not start, a stale listing).
	lockRetryPause = 50 * time.Millisecond
)

// LockKey is the key that holds the lock of name while it is held: its
// CreateIndex is the holder's token and its Lease the holder's lease.
func LockKey(name string) string { return lockHolderSpace + name }

func lockGateKey(name string) string { return lockGateSpace + name }

func lockWaitersPrefix(name string) string { return lockWaiterSpace + name + "/" }

func lockWaiterKey(name string, id LeaseID) string {
	return seqKey(lockWaitersPrefix(name), uint64(id))
}

// validateLockName checks a lock name: not empty, and short enough that
// its waiter keys fit MaxKeySize.
func validateLockName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty lock name", ErrInvalidKey)
	}
	return checkSize("lock name", len(name), MaxLockNameSize)
}

// lockBackend is what locks need of a Cluster or a Client.
type lockBackend interface {
	// write proposes operations as one transaction.
	write(ops []cmdOp, timeout time.Duration) (TxnResult, error)
	keepAlive(id LeaseID, timeout time.Duration) error
	// keys lists keys under prefix from a replica that may be stale.
	keys(prefix string) ([]string, error)
	watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error)
	// entry reads key after a barrier.
	entry(key string, timeout time.Duration) (Entry, bool, error)
	// context ends when the Cluster or Client closes.
	context() context.Context
}

// Lock takes the lock of name, waiting in line behind earlier callers
// until it is free, or until ctx ends (then its place in line is removed
// and ctx's error returned). The lock is bound to a lease of ttl
// (MinLeaseTTL to MaxLeaseTTL) that it keeps alive until Unlock; if the
// holder cannot renew it for ttl, Done closes and the lock goes to the
// next in line once the lease expires. While no leader is known Lock
// keeps trying; other failures are returned. Any member.
func (c *cluster) Lock(ctx context.Context, name string, ttl time.Duration) (Lock, error) {
	return lockWait(ctx, clusterLocks{c}, name, ttl)
}

// TryLock takes the lock of name if nobody holds it and nobody waits for
// it, or fails at once with ErrLocked. timeout bounds the write. Any
// member.
func (c *cluster) TryLock(name string, ttl time.Duration, timeout time.Duration) (Lock, error) {
	return tryLock(clusterLocks{c}, name, ttl, timeout)
}

// Lock takes the lock of name through a member, as Cluster.Lock.
func (c *Client) Lock(ctx context.Context, name string, ttl time.Duration, peers ...peer.ID) (Lock, error) {
	return lockWait(ctx, clientLocks{c, peers}, name, ttl)
}

// TryLock takes the lock of name through a member, as Cluster.TryLock.
func (c *Client) TryLock(name string, ttl time.Duration, timeout time.Duration, peers ...peer.ID) (Lock, error) {
	return tryLock(clientLocks{c, peers}, name, ttl, timeout)
}

// clusterLocks is a Cluster as a lockBackend.
type clusterLocks struct{ c *cluster }

func (b clusterLocks) write(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
	return b.c.leaseWrite(ops, timeout)
}

func (b clusterLocks) keepAlive(id LeaseID, timeout time.Duration) error {
	return b.c.KeepAlive(id, timeout)
}

func (b clusterLocks) keys(prefix string) ([]string, error) {
	if _, err := b.c.r(); err != nil {
		return nil, err
	}
	return b.c.fsm.keys(prefix)
}

func (b clusterLocks) watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error) {
	return b.c.Watch(ctx, prefix, after)
}

func (b clusterLocks) entry(key string, timeout time.Duration) (Entry, bool, error) {
	if err := b.c.Barrier(timeout); err != nil {
		return Entry{}, false, err
	}
	return b.c.GetEntry(key)
}

func (b clusterLocks) context() context.Context { return b.c.ctx }

// clientLocks is a Client, with its target peers, as a lockBackend.
type clientLocks struct {
	c     *Client
	peers []peer.ID
}

func (b clientLocks) write(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
	resp, err := b.c.leaseWrite(ops, timeout, b.peers)
	if err != nil {
		return TxnResult{}, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, nil
}

func (b clientLocks) keepAlive(id LeaseID, timeout time.Duration) error {
	return b.c.KeepAlive(id, timeout, b.peers...)
}

func (b clientLocks) keys(prefix string) ([]string, error) { return b.c.Keys(prefix, b.peers...) }

func (b clientLocks) watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error) {
	return b.c.Watch(ctx, prefix, after, b.peers...)
}

func (b clientLocks) entry(key string, timeout time.Duration) (Entry, bool, error) {
	return b.c.GetEntry(key, int64(min(timeout, MaxBarrier)), b.peers...)
}

func (b clientLocks) context() context.Context { return b.c.ctx }

// errUnlocked is why Done closed after Unlock.
var errUnlocked = errors.New("raft: unlocked")

// lockLease is the lease of a waiter or holder, kept alive every
// TTL/lockRenewFraction until stop. lost closes once the lease may be gone:
// a renewal was refused (ErrLeaseNotFound), or TTL passed since the last
// successful renewal (or the grant) was sent: the state machine keeps a
// lease at least TTL from the start of its last renewal, so until then it
// certainly stands.
type lockLease struct {
	b   lockBackend
	id  LeaseID
	ttl time.Duration

	ctx    context.Context // ends the lease's loops: lose or stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
	lost   chan struct{}
	once   sync.Once

	mu       sync.Mutex
	deadline time.Time   // last successful renewal's send time + TTL
	timer    *time.Timer // fires lose at deadline
	why      error       // why lost closed

	// paused stops renewals (tests: a holder that stops renewing).
	paused atomic.Bool
}

// startLockLease keeps lease id alive from now on; sent is when its grant
// was sent.
func startLockLease(b lockBackend, id LeaseID, ttl time.Duration, sent time.Time) *lockLease {
	l := &lockLease{b: b, id: id, ttl: ttl, lost: make(chan struct{}), deadline: sent.Add(ttl)}
	l.ctx, l.cancel = context.WithCancel(b.context())
	l.mu.Lock()
	l.timer = time.AfterFunc(time.Until(l.deadline), l.checkDeadline)
	l.mu.Unlock()
	l.wg.Add(1)
	go l.renewLoop()
	return l
}

// checkDeadline loses the lease when its deadline has passed (a renewal
// may have moved it since the timer was set).
func (l *lockLease) checkDeadline() {
	l.mu.Lock()
	left := time.Until(l.deadline)
	l.mu.Unlock()
	if left > 0 {
		return
	}
	l.lose(fmt.Errorf("%w: lease %d not renewed for its TTL %v", ErrLeaseNotFound, l.id, l.ttl))
}

// renewed records a successful renewal sent at sent.
func (l *lockLease) renewed(sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := sent.Add(l.ttl); d.After(l.deadline) {
		l.deadline = d
		l.timer.Reset(time.Until(d))
	}
}

// lose closes lost (once) and ends the lease's loops.
func (l *lockLease) lose(why error) {
	l.once.Do(func() {
		l.mu.Lock()
		l.why = why
		l.timer.Stop()
		l.mu.Unlock()
		close(l.lost)
		l.cancel()
	})
}

// err says why lost closed (nil while it is open).
func (l *lockLease) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.why
}

// stop ends the lease's loops and waits for them.
func (l *lockLease) stop(why error) {
	l.lose(why)
	l.wg.Wait()
}

// renewLoop renews the lease every TTL/lockRenewFraction from the last
// renewal sent, sooner after a failure, until the lease is lost or stopped.
func (l *lockLease) renewLoop() {
	defer l.wg.Done()
	every := l.ttl / lockRenewFraction
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			if l.b.context().Err() != nil {
				l.lose(fmt.Errorf("%w: closed while holding lease %d", ErrShutdown, l.id))
			}
			return
		case <-t.C:
		}
		if l.paused.Load() {
			return
		}
		l.mu.Lock()
		left := time.Until(l.deadline)
		l.mu.Unlock()
		sent := time.Now()
		err := l.b.keepAlive(l.id, renewTimeout(left))
		switch renewalVerdict(err) {
		case renewOK:
			l.renewed(sent)
			t.Reset(max(every-time.Since(sent), 0))
		case renewLost:
			l.lose(err)
			return
		default:
			t.Reset(lockRetryPause)
		}
	}
}

// renewTimeout is the timeout of a renewal sent when left remains before
// the lease may expire: no later than that (a later answer comes too late
// to keep the lock), but at least a little, and at most MaxTimeout.
func renewTimeout(left time.Duration) time.Duration {
	return min(max(left, lockRetryPause), MaxTimeout)
}

// renewal verdicts.
const (
	renewOK    = iota // renewed: the lease stands TTL from the renewal's send
	renewLost         // the lease is gone: the lock is lost
	renewRetry        // no answer or no leader: try again soon
)

// renewalVerdict decides what a renewal's error means for the lock.
func renewalVerdict(err error) int {
	switch {
	case err == nil:
		return renewOK
	case errors.Is(err, ErrLeaseNotFound), errors.Is(err, errAfterClose):
		return renewLost
	}
	return renewRetry
}

// heldLock is a Lock.
type heldLock struct {
	b     lockBackend
	name  string
	key   string
	token uint64
	lease *lockLease

	unlockOnce sync.Once
	unlockErr  error
}

var _ Lock = (*heldLock)(nil)

// newHeldLock starts watching a lock just taken with token under lease.
func newHeldLock(b lockBackend, name string, token uint64, lease *lockLease) *heldLock {
	h := &heldLock{b: b, name: name, key: LockKey(name), token: token, lease: lease}
	lease.wg.Add(1)
	go h.watchKey()
	return h
}

func (h *heldLock) Token() uint64 { return h.token }

func (h *heldLock) Done() <-chan struct{} { return h.lease.lost }

func (h *heldLock) Unlock() error {
	h.unlockOnce.Do(func() {
		lostBefore := h.lease.err()
		// Done closes and the loops stop first; they are waited for after
		// the write, which need not wait for a renewal in flight.
		h.lease.lose(errUnlocked)
		res, err := h.b.write(unlockOps(h.name, h.token, h.lease.id), lockWriteTimeout)
		h.lease.wg.Wait()
		switch {
		case err != nil:
			h.unlockErr = fmt.Errorf("unlock %q: %w", h.name, err)
		case !res.OK:
			h.unlockErr = fmt.Errorf("%w: the lock %q (token %d) was lost before Unlock", ErrLeaseNotFound, h.name, h.token)
			if lostBefore != nil {
				h.unlockErr = fmt.Errorf("%w (%v)", h.unlockErr, lostBefore)
			}
		}
	})
	return h.unlockErr
}

// stopRenewing stops renewing the lock's lease (tests: a holder that
// stalls). Done still closes a TTL after the last renewal.
func (h *heldLock) stopRenewing() { h.lease.paused.Store(true) }

// watchKey closes Done when the lock's key is seen deleted or taken over.
// It starts one renewal interval after the lock was taken, from the token's
// index (so it misses no change): a lock held briefly costs no watch
// stream, and until then the lease's timing bounds Done anyway. A watch
// that ends early is started again from the last change seen; one whose
// history is gone reads the key instead.
func (h *heldLock) watchKey() {
	defer h.lease.wg.Done()
	ctx := h.lease.ctx
	pause(ctx, h.lease.ttl/lockRenewFraction)
	after := h.token
	for ctx.Err() == nil {
		ch, err := h.b.watch(ctx, h.key, after)
		if errors.Is(err, ErrCompacted) {
			e, ok, rerr := h.b.entry(h.key, lockWriteTimeout)
			switch {
			case rerr != nil:
				err = rerr
			case !ok || e.CreateIndex != h.token:
				h.lease.lose(fmt.Errorf("%w: lock %q (token %d) no longer held", ErrLeaseNotFound, h.name, h.token))
				return
			default:
				// No change to the key after its ModIndex: watch from there.
				after = max(after, e.ModIndex)
				continue
			}
		}
		if err != nil {
			pause(ctx, lockRetryPause)
			continue
		}
		for e := range ch {
			if e.Key != h.key {
				continue // a longer name's key under the same prefix
			}
			after = e.Index
			if lockEventLost(e, h.token) {
				h.lease.lose(fmt.Errorf("%w: lock %q (token %d) deleted or taken at index %d", ErrLeaseNotFound, h.name, h.token, e.Index))
			}
		}
	}
}

// lockEventLost decides whether a change of a lock's key ends the lock of
// token: a delete (Unlock, Revoke, expiry), or a set that made a new key.
func lockEventLost(e Event, token uint64) bool {
	return e.Kind == EventDelete || e.Entry.CreateIndex != token
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
