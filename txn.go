package raft

// Conditional transactions: a Txn's conditions are checked and its Then (or
// Else) operations applied as one log entry, all-or-nothing; its result
// carries the entry's index, the fencing token of what it wrote.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Cond is a condition of a Txn, built by IfAbsent, IfModIndex,
// IfCreateIndex, IfValue or IfEpoch.
type Cond struct {
	kind  uint8
	key   string
	value []byte
}

// IfAbsent holds when key does not exist.
func IfAbsent(key string) Cond { return Cond{kind: opIfAbsent, key: key} }

// IfModIndex holds when key was last written at index; index 0 means the key
// is absent.
func IfModIndex(key string, index uint64) Cond {
	return Cond{kind: opIfModIndex, key: key, value: indexBytes(index)}
}

// IfCreateIndex holds when key exists and was created at index (since its
// last delete): "the lock I created is still mine".
func IfCreateIndex(key string, index uint64) Cond {
	return Cond{kind: opIfCreateIndex, key: key, value: indexBytes(index)}
}

// IfValue holds when key exists with exactly value.
func IfValue(key string, value []byte) Cond {
	v := value
	if v == nil {
		v = []byte{} // a set value, not "no value"
	}
	return Cond{kind: opIfValue, key: key, value: v}
}

// IfEpoch holds while the leadership of epoch still stands: when the Txn is
// applied, the last leadership established in the log is the one of epoch
// (see RunAsLeader and LeaderEvent). A deposed leader's job conditioning
// its writes on its epoch is refused (TxnResult.OK false) as soon as the
// next leader's epoch marker is applied, whatever that job still believes.
func IfEpoch(epoch uint64) Cond { return Cond{kind: opIfEpoch, value: indexBytes(epoch)} }

// Txn is a transaction: when every condition of If holds, the operations of
// Then are applied, otherwise those of Else; either way as one log entry,
// all-or-nothing, with nothing else in between.
type Txn struct {
	If   []Cond
	Then []Op
	Else []Op
}

// TxnResult is what a Txn did. OK: every condition held (Then was
// applied). Index: the log index of the entry that applied it, which every
// key it wrote now has as ModIndex.
type TxnResult struct {
	OK    bool
	Index uint64
}

func indexBytes(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

// indexValue is the check of a condition that takes an index.
func indexValue(value []byte) error {
	if len(value) != 8 {
		return fmt.Errorf("%w: index of %d bytes", ErrInvalidCommand, len(value))
	}
	return nil
}

// condKind registers a condition kind.
func condKind(name string, check func([]byte) error, holds func(a *applyCtx, key, value []byte) (bool, error)) *opKind {
	return &opKind{name: name, role: roleCond, check: check, holds: holds}
}

func holdsAbsent(a *applyCtx, key, _ []byte) (bool, error) {
	_, exists, err := a.lookup(key)
	return !exists, err
}

func holdsModIndex(a *applyCtx, key, value []byte) (bool, error) {
	e, exists, err := a.lookup(key)
	want := binary.BigEndian.Uint64(value)
	if want == 0 {
		return !exists, err
	}
	return exists && e.ModIndex == want, err
}

func holdsCreateIndex(a *applyCtx, key, value []byte) (bool, error) {
	e, exists, err := a.lookup(key)
	return exists && e.CreateIndex == binary.BigEndian.Uint64(value), err
}

func holdsValue(a *applyCtx, key, value []byte) (bool, error) {
	e, exists, err := a.lookup(key)
	return exists && bytes.Equal(e.Value, value), err
}

// encodeTxn validates a transaction and encodes it as a command (without
// meta operation, which the leader adds).
func encodeTxn(t Txn) ([]byte, error) {
	ops, err := txnOps(t)
	if err != nil {
		return nil, err
	}
	return encodeOps(ops), nil
}

// txnOps validates a transaction and returns its operations: conditions,
// Then, and the else marker and Else when there are any.
func txnOps(t Txn) ([]cmdOp, error) {
	if len(t.If)+len(t.Then)+len(t.Else) == 0 {
		return nil, fmt.Errorf("%w: empty transaction", ErrInvalidCommand)
	}
	ops := make([]cmdOp, 0, len(t.If)+len(t.Then)+len(t.Else)+1)
	for _, c := range t.If {
		if err := checkOp(c.kind, c.key, c.value); err != nil {
			return nil, err
		}
		if k, _ := lookupOp(c.kind); k.role != roleCond || k.internal {
			return nil, fmt.Errorf("%w: operation %q is not a condition", ErrInvalidCommand, k.name)
		}
		ops = append(ops, cmdOp{kind: c.kind, key: []byte(c.key), value: c.value})
	}
	add := func(list []Op) error {
		for _, op := range list {
			if err := checkUserOp(op); err != nil {
				return err
			}
			ops = append(ops, userOp(op))
		}
		return nil
	}
	if err := add(t.Then); err != nil {
		return nil, err
	}
	if len(t.Else) > 0 {
		ops = append(ops, cmdOp{kind: opElse})
		if err := add(t.Else); err != nil {
			return nil, err
		}
	}
	if err := checkSize("transaction", encodedLen(ops), MaxCommandSize-maxMetaSize); err != nil {
		return nil, err
	}
	return ops, nil
}

// maxMetaSize is the room a command keeps for the meta operation the leader
// adds (its stamp and request ID, and the array heads).
const maxMetaSize = 64

// Txn applies a transaction through the leader (a follower forwards it).
func (c *cluster) Txn(t Txn, timeout time.Duration) (TxnResult, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, err
	}
	ops, err := txnOps(t)
	if err != nil {
		return TxnResult{}, err
	}
	if c.IsLeader() {
		// No round trip through the wire form on the leader.
		return c.propose(ops, nil, timeout)
	}
	return c.writeAnywhere(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)}, timeout)
}

// GetEntry reads key's entry from the local replica, which may be stale
// (call Barrier first for a current one).
func (c *cluster) GetEntry(key string) (Entry, bool, error) {
	if c.closed.Load() {
		return Entry{}, false, errAfterClose
	}
	if err := validateKey(key); err != nil {
		return Entry{}, false, err
	}
	return c.fsm.getEntry(key)
}

// Txn applies a transaction through a member (which forwards it to the
// leader). The Client retries an attempt whose outcome is unknown, with the
// same request ID, until timeout: a nil error means it was applied exactly
// once, an error that it was applied at most once.
func (c *Client) Txn(t Txn, timeout time.Duration, peers ...peer.ID) (TxnResult, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, err
	}
	cmd, err := encodeTxn(t)
	if err != nil {
		return TxnResult{}, err
	}
	resp, err := c.write(&request{Cmd: cmdTxn, Command: cmd, Timeout: int64(timeout)}, timeout, peers)
	if err != nil {
		return TxnResult{}, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, nil
}

// GetEntry reads key's entry, as Get reads its value (barrier in
// nanoseconds; 0 reads a member's replica, which may be stale).
func (c *Client) GetEntry(key string, barrier int64, peers ...peer.ID) (Entry, bool, error) {
	if err := validateKey(key); err != nil {
		return Entry{}, false, err
	}
	if err := validateBarrier(barrier); err != nil {
		return Entry{}, false, err
	}
	wait := max(defaultCallTimeout, time.Duration(barrier))
	resp, err := c.call(&request{Cmd: cmdGetEntry, Key: key, Barrier: barrier}, wait, true, peers)
	if err != nil {
		return Entry{}, false, err
	}
	return resp.entry(), resp.Found, nil
}

// parseTxnCommand validates a transaction received as a command: any
// registered kinds in a valid order, but no meta operation or epoch marker
// (only the leader adds those).
func parseTxnCommand(b []byte) ([]cmdOp, error) {
	if err := checkSize("transaction", len(b), MaxCommandSize-maxMetaSize); err != nil {
		return nil, err
	}
	ops, err := parseCommand(b)
	if err != nil {
		return nil, err
	}
	if err := refuseInternal(ops); err != nil {
		return nil, err
	}
	return ops, nil
}
