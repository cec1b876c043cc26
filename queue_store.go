package raft

// The state machine's side of queues: the reserved keys a queue is made of,
// where the datastore keeps them (one path per queue, so that the lowest
// items are a bounded prefix read rather than a scan of every key), the
// enqueue operation that names an item by its own log index, and the read
// that finds a queue's lowest unclaimed item.
//
// A queue named Q is two sets of keys, each ordered by item ID (the log
// index of the item's enqueue, 8 bytes big-endian at the end of the key):
//
//	queueKeyPrefix + Q + "\x00i" + ID   the item; its value is the payload
//	queueKeyPrefix + Q + "\x00c" + ID   the item's claim, bound to a lease
//
// Both are ordinary keys (Get, Keys, Watch and Txn see them). Only where the
// datastore keeps them differs: every key of the reserved prefix whose
// remainder is longer than 8 bytes lives at
//
//	<data prefix>/_q/<enc(remainder minus its last 8 bytes)>/<enc(last 8 bytes)>
//
// with enc the order-keeping base32 of plain keys, so the items of one queue
// (and its claims) are one datastore path prefix, in ID order.

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

const (
	// queueKeyPrefix starts every key of a queue. It begins with a NUL
	// byte, which a queue name cannot hold, so no queue's keys are a prefix
	// of another's.
	queueKeyPrefix = "\x00queue\x00"
	// queueItemTag and queueClaimTag end a queue's key prefixes, after the
	// NUL that ends the name.
	queueItemTag  = "\x00i"
	queueClaimTag = "\x00c"
	// queueSegment names the datastore subspace of queue keys under the
	// data prefix: lower case with an underscore, so never the encoding of
	// a key (upper-case base32), and below it exactly two upper-case
	// segments, so a nested namespace's records are never taken for ours.
	queueSegment = "_q"
	// queueIDSize is the size of the item ID that ends a queue key.
	queueIDSize = 8
)

// Operation kinds of queues (20-29 are the queues'). Append only.
const (
	// opEnqueue sets the key made of its key (a queue's item prefix) and
	// this entry's log index, 8 bytes big-endian: a new item whose ID is
	// the entry's index, so items are ordered by the order the log commits
	// them. Value: the item's payload.
	opEnqueue uint8 = 20
	// opClaim claims the lowest item of the queue whose items prefix is
	// its key that has no claim: it sets the item's claim key bound to
	// the lease its value names (8 bytes), and the command's answer says
	// which item (see claimedItem); with no such item it changes nothing.
	opClaim uint8 = 21
)

var (
	enqueueKind = &opKind{
		name:     "enqueue",
		check:    validateValue,
		checkKey: checkItemsPrefix,
		apply: func(a *applyCtx, key, value []byte) error {
			k := binary.BigEndian.AppendUint64(key, a.index)
			a.enqueued = append(a.enqueued, string(k))
			return a.set(k, value)
		},
	}
	claimKind = &opKind{
		name:     "queueClaim",
		check:    leaseIDValue,
		checkKey: checkItemsPrefix,
		apply: func(a *applyCtx, key, value []byte) error {
			return a.claimNext(key, leaseOf(value))
		},
	}
)

// MaxQueueNameSize is the longest queue name, in bytes. A name is any
// non-empty string without a NUL byte.
const MaxQueueNameSize = 256

// validateQueueName checks a queue name.
func validateQueueName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty queue name", ErrInvalidKey)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: queue name %q holds a NUL byte", ErrInvalidKey, name)
	}
	return checkSize("queue name", len(name), MaxQueueNameSize)
}

// queueItemsPrefix is the key prefix of a queue's items.
func queueItemsPrefix(name string) string { return queueKeyPrefix + name + queueItemTag }

// queueClaimsPrefix is the key prefix of a queue's claims.
func queueClaimsPrefix(name string) string { return queueKeyPrefix + name + queueClaimTag }

// queueWatchPrefix covers every key of one queue.
func queueWatchPrefix(name string) string { return queueKeyPrefix + name + "\x00" }

// queueItemKey is the key of item id.
func queueItemKey(name string, id uint64) string {
	return string(binary.BigEndian.AppendUint64([]byte(queueItemsPrefix(name)), id))
}

// QueueClaimKey is the key of the claim of item id in queue: it exists
// while the item is claimed, created at the claim's Item.Token. A write
// conditioned on IfCreateIndex(QueueClaimKey(queue, item.ID), item.Token)
// applies only while that claim still holds the item.
func QueueClaimKey(queue string, id uint64) string { return queueClaimKey(queue, id) }

// queueClaimKey is the key of item id's claim.
func queueClaimKey(name string, id uint64) string {
	return string(binary.BigEndian.AppendUint64([]byte(queueClaimsPrefix(name)), id))
}

// checkItemsPrefix is enqueue's key check: exactly a queue's item prefix.
func checkItemsPrefix(key string) error {
	name, ok := strings.CutPrefix(key, queueKeyPrefix)
	if ok {
		name, ok = strings.CutSuffix(name, queueItemTag)
	}
	if !ok {
		return fmt.Errorf("%w: enqueue to a key that is not a queue's", ErrInvalidKey)
	}
	return validateQueueName(name)
}

// queueKeyID splits a queue key into its prefix and item ID; false for a
// key that is not under a queue's item or claim prefix.
func queueKeyID(key, prefix string) (uint64, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || len(rest) != queueIDSize {
		return 0, false
	}
	return binary.BigEndian.Uint64([]byte(rest)), true
}

// nestedSplit tells whether key lives in the queue subspace, and where: the
// remainder after the reserved prefix, minus and then only its last 8 bytes.
func nestedSplit(key []byte) (dir, leaf []byte, ok bool) {
	if len(key) <= len(queueKeyPrefix)+queueIDSize || string(key[:len(queueKeyPrefix)]) != queueKeyPrefix {
		return nil, nil, false
	}
	rest := key[len(queueKeyPrefix):]
	return rest[:len(rest)-queueIDSize], rest[len(rest)-queueIDSize:], true
}

// nestedDir is the datastore path of a queue-subspace directory.
func (f *kvStore) nestedDir(dir []byte) string {
	return f.prefix + "/" + queueSegment + "/" + keyEncoding.EncodeToString(dir)
}

// nestedKey is the datastore key of a key in the queue subspace.
func (f *kvStore) nestedKey(dir, leaf []byte) datastore.Key {
	return datastore.RawKey(f.nestedDir(dir) + "/" + keyEncoding.EncodeToString(leaf))
}

// flatKey is where a key lives outside the queue subspace (and where every
// key lived before it).
func (f *kvStore) flatKey(key []byte) datastore.Key {
	n := keyEncoding.EncodedLen(len(key))
	var stack [256]byte
	enc := stack[:0]
	if n <= len(stack) {
		enc = stack[:n]
	} else {
		enc = make([]byte, n)
	}
	keyEncoding.Encode(enc, key)
	var sb strings.Builder
	sb.Grow(len(f.prefix) + 1 + n)
	sb.WriteString(f.prefix)
	sb.WriteByte('/')
	sb.Write(enc)
	return datastore.RawKey(sb.String())
}

// scanNested calls fn for every key of the queue subspace: exactly two
// valid segments below it.
func (f *kvStore) scanNested(keysOnly bool, fn func(key string, value []byte) error) error {
	var buf []byte
	return f.scanBelow(queueSegment, keysOnly, func(rest string, value []byte) error {
		var err error
		buf, err = nestedRecord(rest, value, buf, fn)
		return err
	})
}

// nestedRecord decodes the path of a queue-subspace record below the
// subspace (directory and leaf segments) and calls fn with its key;
// anything else is skipped.
func nestedRecord(rest string, value []byte, buf []byte, fn func(key string, value []byte) error) ([]byte, error) {
	dirSeg, leafSeg, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(leafSeg, "/") {
		return buf, nil
	}
	dir, err1 := keyEncoding.DecodeString(dirSeg)
	leaf, err2 := keyEncoding.DecodeString(leafSeg)
	if err1 != nil || err2 != nil || len(dir) == 0 || len(leaf) != queueIDSize {
		return buf, nil
	}
	return buf, fn(queueKeyPrefix+string(dir)+string(leaf), value)
}

// maxClaimedAhead bounds the claimed items a claim steps over before the
// first unclaimed one. Each claim holds a lease, so MaxLeases bounds them
// in normal use; past it the claim finds nothing (deterministically, on
// every replica) rather than walk on while holding up the log.
const maxClaimedAhead = MaxLeases + 64

// claimedItem is what a claim operation found: the item it claimed, or
// none (found false: nothing to claim).
type claimedItem struct {
	found bool
	id    uint64
	value []byte
}

// claimNext applies a claim: the lowest item of the queue whose items
// prefix is key, without a claim as of this entry, gets a claim bound to
// lease. It costs one ordered prefix read of the queue's items and one of
// its claims, each walking only the claimed items before the answer (O(log
// n + claimed ahead) whatever the queue's length), with this batch's own
// changes laid over what the datastore holds.
func (a *applyCtx) claimNext(key []byte, lease LeaseID) error {
	name := string(key[len(queueKeyPrefix) : len(key)-len(queueItemTag)])
	id, e, found, err := a.lowestUnclaimed(name)
	if err != nil {
		return err
	}
	a.claimed = &claimedItem{found: found}
	if !found {
		return nil
	}
	a.claimed.id, a.claimed.value = id, e.Value
	return a.setWithLease([]byte(queueClaimKey(name, id)), nil, lease)
}

// lowestUnclaimed finds the queue's lowest item without a claim: first
// among the items the datastore holds, then among those this batch
// enqueued (whose IDs are all larger).
func (a *applyCtx) lowestUnclaimed(name string) (uint64, Entry, bool, error) {
	ctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	items, err := a.f.queueIDs(ctx, queueItemsPrefix(name))
	if err != nil {
		return 0, Entry{}, false, err
	}
	defer items.close()
	claims, err := a.f.queueIDs(ctx, queueClaimsPrefix(name))
	if err != nil {
		return 0, Entry{}, false, err
	}
	defer claims.close()
	claim, haveClaim, err := claims.next()
	for skipped := 0; err == nil && skipped <= maxClaimedAhead; skipped++ {
		id, ok, ierr := items.next()
		if ierr != nil || !ok {
			err = ierr
			break
		}
		ik, ck := queueItemKey(name, id), queueClaimKey(name, id)
		if p, ok := a.pending[ik]; ok && !p.exists {
			continue // acked earlier in this batch
		}
		var claimed bool
		if p, ok := a.pending[ck]; ok {
			claimed = p.exists // claimed, or its claim ended, in this batch
		} else {
			for err == nil && haveClaim && claim < id {
				claim, haveClaim, err = claims.next()
			}
			claimed = haveClaim && claim == id
		}
		if err != nil || claimed {
			continue
		}
		e, exists, lerr := a.lookup([]byte(ik))
		if lerr != nil || exists {
			return id, e, exists && lerr == nil, lerr
		}
	}
	if err != nil {
		return 0, Entry{}, false, err
	}
	prefix := queueItemsPrefix(name)
	for _, ik := range a.enqueued {
		id, ok := queueKeyID(ik, prefix)
		if !ok {
			continue
		}
		p := a.pending[ik]
		if !p.exists {
			continue
		}
		if c, ok := a.pending[queueClaimKey(name, id)]; ok && c.exists {
			continue
		}
		return id, p.e, true, nil
	}
	return 0, Entry{}, false, nil
}

// claimOfLease finds the claim of queue name bound to lease (a claimer's
// own lease holds at most one claim): its item, the claim's token, and the
// item's value. It settles a claim whose answer was lost.
func (f *kvStore) claimOfLease(name string, lease LeaseID) (claimedItem, uint64, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	claims, err := f.queueIDs(ctx, queueClaimsPrefix(name))
	if err != nil {
		return claimedItem{}, 0, err
	}
	defer claims.close()
	for n := 0; n <= maxClaimedAhead; n++ {
		id, ok, err := claims.next()
		if err != nil || !ok {
			return claimedItem{}, 0, err
		}
		e, exists, err := f.getEntry(queueClaimKey(name, id))
		if err != nil {
			return claimedItem{}, 0, err
		}
		if !exists || e.Lease != lease {
			continue
		}
		item, exists, err := f.getEntry(queueItemKey(name, id))
		if err != nil || !exists {
			return claimedItem{}, 0, err
		}
		return claimedItem{found: true, id: id, value: item.Value}, e.CreateIndex, nil
	}
	return claimedItem{}, 0, nil
}

// idCursor walks the IDs of one queue key prefix in order.
type idCursor struct {
	res query.Results
	ch  <-chan query.Result
	dir string
}

// queueIDs opens an ordered, keys-only read of the queue keys under
// prefix (a queue's items or claims).
func (f *kvStore) queueIDs(ctx context.Context, prefix string) (*idCursor, error) {
	dir := f.nestedDir([]byte(prefix[len(queueKeyPrefix):]))
	res, err := f.ds.Query(ctx, query.Query{Prefix: dir, KeysOnly: true, Orders: []query.Order{query.OrderByKey{}}})
	if err != nil {
		return nil, err
	}
	return &idCursor{res: res, ch: res.Next(), dir: dir + "/"}, nil
}

// next is the next ID, false at the end.
func (c *idCursor) next() (uint64, bool, error) {
	for r := range c.ch {
		if r.Error != nil {
			return 0, false, r.Error
		}
		seg, ok := strings.CutPrefix(r.Key, c.dir)
		if !ok {
			continue
		}
		b, err := keyEncoding.DecodeString(seg)
		if err != nil || len(b) != queueIDSize {
			continue
		}
		return binary.BigEndian.Uint64(b), true, nil
	}
	return 0, false, nil
}

func (c *idCursor) close() { _ = c.res.Close() }

// queueReadWait bounds how long a member waits to apply the index a
// claim lookup asks for before answering that it is behind.
const queueReadWait = 2 * time.Second

// waitIndex waits until the store has applied idx, for at most wait.
func (f *kvStore) waitIndex(idx uint64, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		f.mu.Lock()
		applied, failed := f.applied, f.failed
		f.mu.Unlock()
		switch {
		case failed != nil:
			return failed
		case applied >= idx:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("%w: applied index %d, waiting for %d", ErrTimeout, applied, idx)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
