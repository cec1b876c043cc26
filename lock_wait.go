package raft

// Taking a lock, and the line of waiters (see lock.go for the held lock).
//
// Every attempt is first one entry: if neither the lock's key nor its gate
// exists, grant a lease and create the lock's key bound to it (the lease ID
// and the token are both that entry's index). TryLock stops there
// (ErrLocked). Lock's entry otherwise still grants the lease, and queues:
// it sets the gate bound to the lease, so later callers queue instead of
// taking the lock past the waiters, and creates the waiter's key, named by
// the lease ID (a sequential key: the entry's index), bound to the lease.
// Then the waiter
//
//   - lists the waiters from a replica that has applied its own key, and
//     watches only its predecessor (the next lower ID), waiting for that
//     key's delete: no thundering herd, each delete wakes one waiter;
//   - without a predecessor it is first in line: it creates the lock's key
//     bound to its lease if the key is absent, or else watches that key
//     until it is deleted and tries again.
//
// A waiter's key stays until its lease ends (Unlock, cancel, expiry), so
// the next in line wakes once the holder releases and finds the lock free.
// Waiters take the lock in the order their entries were applied.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// lockOps is the fast path: take the lock if its key and gate are absent
// (granting the lease in the same entry). When queue is set, the else
// branch grants the lease anyway and queues: the gate and the waiter's key,
// bound to it.
func lockOps(name string, ttl time.Duration, nonce []byte, queue bool) []cmdOp {
	ops := []cmdOp{
		{kind: opIfAbsent, key: []byte(LockKey(name))},
		{kind: opIfAbsent, key: []byte(lockGateKey(name))},
	}
	ops = append(ops, grantOps(ttl)...)
	ops = append(ops, cmdOp{kind: opSetGrantedLease, key: []byte(LockKey(name)), value: nonce})
	if queue {
		ops = append(ops, cmdOp{kind: opElse})
		ops = append(ops, grantOps(ttl)...)
		ops = append(ops,
			cmdOp{kind: opSetGrantedLease, key: []byte(lockGateKey(name)), value: nonce},
			cmdOp{kind: opSetGrantedSeq, key: []byte(lockWaitersPrefix(name))})
	}
	return ops
}

// acquireOps takes the lock for the first waiter: its key, bound to the
// waiter's lease, if absent.
func acquireOps(name string, id LeaseID) []cmdOp {
	return []cmdOp{
		{kind: opIfAbsent, key: []byte(LockKey(name))},
		userOp(Op{Key: LockKey(name), Lease: id}),
	}
}

// unlockOps deletes the lock's key if it still has token, and revokes the
// holder's lease either way (deleting its waiter key and the gate if it
// was the newest waiter).
func unlockOps(name string, token uint64, id LeaseID) []cmdOp {
	revoke := cmdOp{kind: opLeaseRevoke, value: binary.BigEndian.AppendUint64(nil, uint64(id))}
	return []cmdOp{
		{kind: opIfCreateIndex, key: []byte(LockKey(name)), value: indexBytes(token)},
		{kind: opDelete, key: []byte(LockKey(name))},
		revoke,
		{kind: opElse},
		revoke,
	}
}

// revokeOps ends a waiter's lease (its waiter key, and the gate if bound
// to it, go with it).
func revokeOps(id LeaseID) []cmdOp {
	return []cmdOp{{kind: opLeaseRevoke, value: binary.BigEndian.AppendUint64(nil, uint64(id))}}
}

// checkLockArgs validates a lock call's name and TTL.
func checkLockArgs(name string, ttl time.Duration) error {
	if err := validateLockName(name); err != nil {
		return err
	}
	return validateLeaseTTL(ttl)
}

// lockNonce marks the value of the keys one attempt writes, so that an
// attempt whose outcome was unknown can recognize its lock.
func lockNonce() []byte {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return b
}

// tryLock takes the lock at once or fails with ErrLocked.
func tryLock(b lockBackend, name string, ttl, timeout time.Duration) (Lock, error) {
	if err := checkLockArgs(name, ttl); err != nil {
		return nil, err
	}
	if err := validateTimeout(timeout); err != nil {
		return nil, err
	}
	nonce := lockNonce()
	sent := time.Now()
	res, err := b.write(lockOps(name, ttl, nonce, false), timeout)
	if err != nil {
		if h := recoverUnknown(b, name, ttl, nonce, sent, err); h != nil {
			return h, nil
		}
		return nil, err
	}
	if !res.OK {
		return nil, fmt.Errorf("%w: %q", ErrLocked, name)
	}
	return newHeldLock(b, name, res.Index, startLockLease(b, LeaseID(res.Index), ttl, sent)), nil
}

// recoverUnknown looks, after a fast-path write failed with an unknown
// outcome, whether it took the lock anyway (the key carries the attempt's
// nonce): then the lock is held. Otherwise, if it applied at all, it left a
// lease nobody renews, which expires within TTL.
func recoverUnknown(b lockBackend, name string, ttl time.Duration, nonce []byte, sent time.Time, err error) *heldLock {
	if IsNotApplied(err) {
		return nil
	}
	e, ok, rerr := b.entry(LockKey(name), lockWriteTimeout)
	if rerr != nil || !ok || string(e.Value) != string(nonce) || e.Lease == 0 {
		return nil
	}
	return newHeldLock(b, name, e.CreateIndex, startLockLease(b, e.Lease, ttl, sent))
}

// lockWait takes the lock, queueing behind earlier callers.
func lockWait(ctx context.Context, b lockBackend, name string, ttl time.Duration) (Lock, error) {
	if ctx == nil {
		return nil, errors.New("raft: Lock: nil context")
	}
	if err := checkLockArgs(name, ttl); err != nil {
		return nil, err
	}
	for {
		timeout, err := writeTimeout(ctx)
		if err != nil {
			return nil, err
		}
		nonce := lockNonce()
		sent := time.Now()
		res, err := b.write(lockOps(name, ttl, nonce, true), timeout)
		if err != nil {
			if h := recoverUnknown(b, name, ttl, nonce, sent, err); h != nil {
				return h, nil
			}
			if mayTryElsewhere(err) {
				// No leader (an election), nothing applied: Lock waits.
				pause(ctx, lockRetryPause)
				continue
			}
			return nil, err
		}
		lease := startLockLease(b, LeaseID(res.Index), ttl, sent)
		if res.OK {
			return newHeldLock(b, name, res.Index, lease), nil
		}
		l, err := waitTurn(ctx, b, name, lease)
		if errors.Is(err, errRequeue) {
			continue // the waiter's lease was lost: queue again
		}
		return l, err
	}
}

// errRequeue: a waiter's lease was lost while it waited.
var errRequeue = errors.New("raft: waiter's lease lost")

// writeTimeout is the timeout of a write Lock makes: lockWriteTimeout, or
// less when ctx ends sooner.
func writeTimeout(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	d := lockWriteTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	if d <= 0 {
		return 0, context.DeadlineExceeded
	}
	return d, nil
}

// waitTurn waits, for a waiter queued with lease, until it takes the
// lock. It ends the lease on any failure (on errRequeue too: the lease was
// lost).
func waitTurn(ctx context.Context, b lockBackend, name string, lease *lockLease) (l Lock, err error) {
	defer func() {
		if l == nil {
			abandon(b, lease, err)
		}
	}()
	queued := uint64(lease.id) // the index of the entry that queued it
	prefix := lockWaitersPrefix(name)
	uncertain := false // an acquire's outcome was unknown: the lock may be ours
	first := false     // known first in line: no need to list again
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		select {
		case <-lease.lost:
			return nil, errRequeue
		default:
		}
		if !first {
			keys, err := b.keys(prefix)
			if err != nil {
				pause(ctx, lockRetryPause)
				continue
			}
			ids := parseWaiters(prefix, keys)
			pred, listed := lockPredecessor(ids, lease.id)
			switch {
			case !listed:
				// This replica has not applied our key yet (or the lease
				// ended and took it: lost closes soon).
				pause(ctx, lockRetryPause)
				continue
			case pred != 0:
				// Watched from our key's index: it was listed by a replica
				// that has applied our key, so it stood then. When it was
				// first in line, nobody else is before us once it is gone
				// (a waiter's ID is its key's creation index).
				first = waitDeleted(ctx, b, lease, lockWaiterKey(name, pred), queued) && pred == ids[0]
				continue
			}
		}
		first = false
		timeout, err := writeTimeout(ctx)
		if err != nil {
			return nil, err
		}
		res, err := b.write(acquireOps(name, lease.id), timeout)
		if err != nil {
			if errors.Is(err, ErrLeaseNotFound) {
				return nil, errRequeue
			}
			uncertain = uncertain || !IsNotApplied(err)
			pause(ctx, lockRetryPause)
			continue
		}
		if res.OK {
			return newHeldLock(b, name, res.Index, lease), nil
		}
		if uncertain {
			if e, ok, err := b.entry(LockKey(name), timeout); err == nil && ok && e.Lease == lease.id {
				return newHeldLock(b, name, e.CreateIndex, lease), nil
			}
		}
		// Held by someone else at res.Index: wait for its delete.
		waitDeleted(ctx, b, lease, LockKey(name), res.Index)
	}
}

// abandon ends a waiter's lease: its waiter key (and the gate, if bound to
// it) go with it. A failed revoke leaves the lease to expire (it is no
// longer renewed).
func abandon(b lockBackend, lease *lockLease, why error) {
	lease.stop(why)
	if errors.Is(why, ErrLeaseNotFound) {
		return
	}
	_, _ = b.write(revokeOps(lease.id), lockWriteTimeout)
}

// waitDeleted returns true once key is deleted after index after, or false
// when anything else may have changed the picture: the watch ended or
// failed, the waiter's lease was lost, ctx ended. The caller looks again.
func waitDeleted(ctx context.Context, b lockBackend, lease *lockLease, key string, after uint64) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := b.watch(wctx, key, after)
	if errors.Is(err, ErrCompacted) {
		// The history no longer reaches back to after: the key's ModIndex
		// is its last change, so watch from there if it still exists.
		e, ok, rerr := b.entry(key, lockWriteTimeout)
		if rerr != nil {
			return false
		}
		if !ok {
			return true
		}
		ch, err = b.watch(wctx, key, max(after, e.ModIndex))
	}
	if err != nil {
		pause(ctx, lockRetryPause)
		return false
	}
	defer func() {
		cancel()
		for range ch { // until the watch's goroutine is done with it
		}
	}()
	for {
		select {
		case <-lease.lost:
			return false
		case e, ok := <-ch:
			if !ok {
				pause(ctx, lockRetryPause)
				return false
			}
			if e.Key == key && e.Kind == EventDelete {
				return true
			}
		}
	}
}

// parseWaiters returns the lease IDs of the waiter keys under prefix, in
// queue order. Keys of other names under the same prefix (longer names)
// do not end in exactly lockIDDigits digits after it.
func parseWaiters(prefix string, keys []string) []LeaseID {
	var ids []LeaseID
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok || len(rest) != lockIDDigits || strings.Trim(rest, "0123456789") != "" {
			continue
		}
		id, err := strconv.ParseUint(rest, 10, 64)
		if err != nil || id == 0 {
			continue
		}
		ids = append(ids, LeaseID(id))
	}
	slices.Sort(ids)
	return ids
}

// lockPredecessor finds, among waiters ids, the one a waiter with lease me
// waits for: the next lower ID (0: none, it is first in line). listed
// tells whether me is among them: if not, the listing is from a replica
// that has not applied me yet, and says nothing.
func lockPredecessor(ids []LeaseID, me LeaseID) (pred LeaseID, listed bool) {
	for _, id := range ids {
		switch {
		case id < me:
			pred = id
		case id == me:
			listed = true
		}
	}
	if !listed {
		return 0, false
	}
	return pred, true
}
