package raft

// The state machine's side of leases: the operation kinds, the lease table
// (ID, TTL, the index of the last grant or keep-alive, and the keys bound to
// it), how it is stored under the namespace's data prefix, and how applying
// a command changes it. Every replica applies the same entries to the same
// table: nothing here reads a clock.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-datastore"
)

// Operation kinds of leases (11-19 are the leases'). Append only.
const (
	// opLeaseGrant creates a lease whose ID is the entry's log index; value:
	// the TTL in nanoseconds (8 bytes).
	opLeaseGrant uint8 = 11
	// opLeaseKeepAlive records a renewal; value: the lease ID (8 bytes).
	opLeaseKeepAlive uint8 = 12
	// opLeaseRevoke deletes a lease and its keys; value: the lease ID.
	opLeaseRevoke uint8 = 13
	// opLeaseExpire is the leader's verdict that a lease ran out; value:
	// the lease ID and the index of the grant or keep-alive the leader timed
	// (16 bytes). It does nothing when the lease was renewed since: a
	// keep-alive that won the race keeps the lease.
	opLeaseExpire uint8 = 14
	// opIfLease holds while the lease exists; value: the lease ID.
	opIfLease uint8 = 15
	// opSetLease sets a key bound to a lease; value: the lease ID (8 bytes)
	// then the key's value.
	opSetLease uint8 = 16
	// opSetGrantedLease sets a key bound to the lease granted by the same
	// command (whose ID is the entry's index, unknown when it is proposed);
	// value: the key's value. A grant must come before it in its branch.
	// It lets a lock be taken in one entry (see lock.go).
	opSetGrantedLease uint8 = 17
	// opSetGrantedSeq is opSetGrantedLease for the key made of the
	// operation's key followed by the lease ID (the entry's index) in
	// seqDigits decimal digits: a key named and ordered by its creation,
	// bound to its creator's lease (ZooKeeper's ephemeral sequential
	// node). Lock waiters queue with it (see lock_wait.go).
	opSetGrantedSeq uint8 = 18
)

// seqDigits is the width of the number opSetGrantedSeq appends, so that
// key order is number order.
const seqDigits = 20

// seqKey is key followed by n in seqDigits decimal digits.
func seqKey(key string, n uint64) string {
	s := strconv.FormatUint(n, 10)
	return key + strings.Repeat("0", seqDigits-len(s)) + s
}

// leaseRecordVersion is the first byte of a stored lease record: then the
// TTL and the touch index as unsigned varints.
const leaseRecordVersion = 1

// leaseSegment names the subspace of lease records under the data prefix:
// lower case with an underscore, so never the encoding of a key (keys are
// upper-case base32), and each record's name is exactly 16 hex digits, so a
// nested namespace's records below it are never taken for ours.
const leaseSegment = "_lease"

var (
	leaseGrantKind = &opKind{name: "leaseGrant", keyless: true, check: checkLeaseTTL,
		apply: func(a *applyCtx, _, value []byte) error { return a.grantLease(value) }}
	leaseKeepAliveKind = &opKind{name: "leaseKeepAlive", keyless: true, check: leaseIDValue,
		apply: func(a *applyCtx, _, value []byte) error { return a.keepLease(value) }}
	leaseRevokeKind = &opKind{name: "leaseRevoke", keyless: true, check: leaseIDValue,
		apply: func(a *applyCtx, _, value []byte) error { return a.revokeLease(leaseOf(value), 0, false) }}
	// An expiry is the leader's own verdict (internal: a caller cannot
	// propose one; Revoke is the caller's way to end a lease).
	leaseExpireKind = &opKind{name: "leaseExpire", keyless: true, internal: true, check: checkLeaseExpire,
		apply: func(a *applyCtx, _, value []byte) error {
			return a.revokeLease(leaseOf(value), binary.BigEndian.Uint64(value[8:]), true)
		}}
	ifLeaseKind = &opKind{name: "ifLease", role: roleCond, keyless: true, check: leaseIDValue,
		holds: func(a *applyCtx, _, value []byte) (bool, error) {
			_, ok := a.f.leases.leases[leaseOf(value)]
			return ok, nil
		}}
	setLeaseKind = &opKind{name: "setLease", check: checkSetLease,
		apply: func(a *applyCtx, key, value []byte) error { return a.setWithLease(key, value[8:], leaseOf(value)) }}
	setGrantedLeaseKind = &opKind{name: "setGrantedLease", check: validateValue,
		apply: func(a *applyCtx, key, value []byte) error { return a.setWithLease(key, value, LeaseID(a.index)) }}
	setGrantedSeqKind = &opKind{name: "setGrantedSeq", check: validateValue,
		apply: func(a *applyCtx, key, value []byte) error {
			return a.setWithLease([]byte(seqKey(string(key), a.index)), value, LeaseID(a.index))
		}}
)

func leaseOf(value []byte) LeaseID { return LeaseID(binary.BigEndian.Uint64(value)) }

func leaseIDValue(value []byte) error {
	if len(value) != 8 || leaseOf(value) == 0 {
		return fmt.Errorf("%w: lease ID of %d bytes (or 0)", ErrInvalidCommand, len(value))
	}
	return nil
}

func checkLeaseTTL(value []byte) error {
	if len(value) != 8 {
		return fmt.Errorf("%w: lease TTL of %d bytes", ErrInvalidCommand, len(value))
	}
	return validateLeaseTTL(time.Duration(binary.BigEndian.Uint64(value)))
}

func checkLeaseExpire(value []byte) error {
	if len(value) != 16 {
		return fmt.Errorf("%w: lease expiry of %d bytes", ErrInvalidCommand, len(value))
	}
	return leaseIDValue(value[:8])
}

func checkSetLease(value []byte) error {
	if len(value) < 8 {
		return fmt.Errorf("%w: leased set of %d bytes", ErrInvalidCommand, len(value))
	}
	if err := leaseIDValue(value[:8]); err != nil {
		return err
	}
	return validateValue(value[8:])
}

// leaseState is one lease as the state machine holds it.
type leaseState struct {
	ttl time.Duration
	// touch is the log index of the lease's grant or last keep-alive. The
	// leader times the lease from when it saw touch change, and an expiry
	// names the touch it timed, so a renewal it had not seen yet wins.
	touch uint64
	// keys are the keys bound to the lease. They are stored in the keys'
	// entries (Entry.Lease) only, and gathered from them on load.
	keys map[string]struct{}
}

// leaseTable is every lease of the store. It changes only while applying
// (under kvStore.mu).
type leaseTable struct {
	leases map[LeaseID]*leaseState
	// changed lists the leases whose record changed (or went) since the
	// last flush.
	changed map[LeaseID]struct{}
}

func newLeaseTable() *leaseTable {
	return &leaseTable{leases: map[LeaseID]*leaseState{}, changed: map[LeaseID]struct{}{}}
}

// bind records that key is bound to id, when that lease exists.
func (t *leaseTable) bind(id LeaseID, key string) {
	if l, ok := t.leases[id]; ok {
		l.keys[key] = struct{}{}
	}
}

// unbind forgets that key is bound to id.
func (t *leaseTable) unbind(id LeaseID, key string) {
	if l, ok := t.leases[id]; ok {
		delete(l.keys, key)
	}
}

// encodeLeaseRecord is the stored (and snapshotted) form of a lease.
func encodeLeaseRecord(l *leaseState) []byte {
	b := []byte{leaseRecordVersion}
	b = binary.AppendUvarint(b, uint64(l.ttl))
	return binary.AppendUvarint(b, l.touch)
}

var errCorruptLease = errors.New("raft: corrupt lease record")

// decodeLeaseRecord reads a stored lease in the one form encodeLeaseRecord
// writes; it checks the TTL as a grant does, so a record no grant could
// write is refused.
func decodeLeaseRecord(rec []byte) (*leaseState, error) {
	if len(rec) == 0 || rec[0] != leaseRecordVersion {
		return nil, errCorruptLease
	}
	b := rec[1:]
	var v [2]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errCorruptLease
		}
		v[i], b = x, b[n:]
	}
	if len(b) != 0 || v[0] > uint64(MaxLeaseTTL) || validateLeaseTTL(time.Duration(v[0])) != nil {
		return nil, errCorruptLease
	}
	l := &leaseState{ttl: time.Duration(v[0]), touch: v[1], keys: map[string]struct{}{}}
	if !bytes.Equal(encodeLeaseRecord(l), rec) {
		return nil, errCorruptLease // a varint not in its shortest form
	}
	return l, nil
}

// leaseKey is where a lease's record lives.
func (f *kvStore) leaseKey(id LeaseID) datastore.Key {
	return datastore.RawKey(f.prefix + "/" + leaseSegment + "/" + fmt.Sprintf("%016x", uint64(id)))
}

// scanLeases calls fn for every stored lease record.
func (f *kvStore) scanLeases(fn func(id LeaseID, rec []byte) error) error {
	return f.scanBelow(leaseSegment, false, func(rest string, rec []byte) error {
		if len(rest) != 16 {
			return nil
		}
		b, err := hex.DecodeString(rest)
		if err != nil || strings.ToLower(rest) != rest {
			return nil
		}
		return fn(LeaseID(binary.BigEndian.Uint64(b)), rec)
	})
}

// loadLeases reads the lease table: the lease records, then the keys bound
// to them from the entries (one scan of the data when the store opens).
func (f *kvStore) loadLeases() error {
	t := newLeaseTable()
	err := f.scanLeases(func(id LeaseID, rec []byte) error {
		l, err := decodeLeaseRecord(rec)
		if err != nil {
			return fmt.Errorf("%w (lease %d)", err, id)
		}
		t.leases[id] = l
		return nil
	})
	if err == nil && len(t.leases) > 0 {
		err = f.scan(false, func(key string, value []byte) error {
			e, err := decodeEntry(value)
			if err == nil && e.Lease != 0 {
				t.bind(e.Lease, key)
			}
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("raft: reading leases: %w", err)
	}
	f.leases = t
	return nil
}

// flushLeases adds the lease records changed since the last flush to a
// batch.
func (f *kvStore) flushLeases(ctx context.Context, batch datastore.Batch) error {
	t := f.leases
	return flushChanged(ctx, batch, t.changed, f.leaseKey, func(id LeaseID) ([]byte, bool) {
		l, ok := t.leases[id]
		if !ok {
			return nil, false
		}
		return encodeLeaseRecord(l), true
	})
}

// leaseInfo is what the leader's expiry loop needs of a lease.
type leaseInfo struct {
	id    LeaseID
	ttl   time.Duration
	touch uint64
}

// leaseList lists the leases, for the leader's expiry loop.
func (f *kvStore) leaseList() []leaseInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]leaseInfo, 0, len(f.leases.leases))
	for id, l := range f.leases.leases {
		out = append(out, leaseInfo{id: id, ttl: l.ttl, touch: l.touch})
	}
	return out
}

// leaseKeys lists the keys bound to a lease, sorted; false when it does not
// exist.
func (f *kvStore) leaseKeys(id LeaseID) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leases.leases[id]
	if !ok {
		return nil, false
	}
	return sortedKeys(l.keys), true
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ---- applying ----

// checkLeases refuses, before anything of it is applied, a branch that a
// lease would make fail halfway: a key bound to a lease that does not exist
// (ErrLeaseNotFound), to the granted lease without a grant before it
// (ErrInvalidCommand), past MaxLeaseKeys, or a grant past MaxLeases
// (ErrTooLarge). Every replica decides alike, from the same table.
func (a *applyCtx) checkLeases(branch []cmdOp) error {
	t := a.f.leases
	grants, claims := 0, 0
	var granted map[string]struct{} // keys bound to the lease this branch grants
	var added map[LeaseID]map[string]struct{}
	for _, op := range branch {
		switch op.kind {
		case opClaim:
			// Which key it binds is known only once applied: one claim per
			// command, and room for one more key.
			if claims++; claims > 1 {
				return fmt.Errorf("%w: two queue claims in one command", ErrInvalidCommand)
			}
			id := leaseOf(op.value)
			l, ok := t.leases[id]
			if !ok {
				return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, id)
			}
			if len(l.keys)+len(added[id])+1 > MaxLeaseKeys {
				return fmt.Errorf("%w: lease %d would have over %d keys (MaxLeaseKeys)", ErrTooLarge, id, MaxLeaseKeys)
			}
		case opSetGrantedLease, opSetGrantedSeq:
			if grants == 0 {
				return fmt.Errorf("%w: a set bound to the granted lease before any grant", ErrInvalidCommand)
			}
			key := string(op.key)
			if op.kind == opSetGrantedSeq {
				key = seqKey(key, a.index)
				if err := checkSize("sequential key", len(key), MaxKeySize); err != nil {
					return err
				}
			}
			if granted == nil {
				granted = map[string]struct{}{}
			}
			granted[key] = struct{}{}
			if len(granted) > MaxLeaseKeys {
				return fmt.Errorf("%w: the granted lease would have over %d keys (MaxLeaseKeys)", ErrTooLarge, MaxLeaseKeys)
			}
		case opLeaseGrant:
			grants++
			if grants > 1 {
				return fmt.Errorf("%w: two lease grants in one command", ErrInvalidCommand)
			}
			if len(t.leases) >= MaxLeases {
				return fmt.Errorf("%w: %d leases exist (MaxLeases)", ErrTooLarge, len(t.leases))
			}
		case opSetLease:
			id := leaseOf(op.value)
			l, ok := t.leases[id]
			if !ok {
				return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, id)
			}
			if _, bound := l.keys[string(op.key)]; bound {
				continue
			}
			if added == nil {
				added = map[LeaseID]map[string]struct{}{}
			}
			if added[id] == nil {
				added[id] = map[string]struct{}{}
			}
			added[id][string(op.key)] = struct{}{}
			if len(l.keys)+len(added[id]) > MaxLeaseKeys {
				return fmt.Errorf("%w: lease %d would have over %d keys (MaxLeaseKeys)", ErrTooLarge, id, MaxLeaseKeys)
			}
		}
	}
	return nil
}

// grantLease creates the lease named by this entry's index.
func (a *applyCtx) grantLease(value []byte) error {
	t := a.f.leases
	id := LeaseID(a.index)
	t.leases[id] = &leaseState{ttl: time.Duration(binary.BigEndian.Uint64(value)), touch: a.index, keys: map[string]struct{}{}}
	t.changed[id] = struct{}{}
	return nil
}

// keepLease records a renewal; a lease that is gone stays gone (the caller
// learns it from the ifLease condition before it).
func (a *applyCtx) keepLease(value []byte) error {
	t := a.f.leases
	id := leaseOf(value)
	if l, ok := t.leases[id]; ok {
		l.touch = a.index
		t.changed[id] = struct{}{}
	}
	return nil
}

// revokeLease deletes a lease and every key bound to it, in key order (one
// delete event each). An expiry (timed) does so only when the lease was not
// renewed since the touch the leader timed.
func (a *applyCtx) revokeLease(id LeaseID, touch uint64, timed bool) error {
	t := a.f.leases
	l, ok := t.leases[id]
	if !ok || (timed && l.touch != touch) {
		return nil
	}
	for _, k := range sortedKeys(l.keys) {
		if err := a.delete([]byte(k)); err != nil {
			return err
		}
	}
	delete(t.leases, id)
	t.changed[id] = struct{}{}
	return nil
}
