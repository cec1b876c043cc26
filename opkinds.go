package raft

// The registry of operation kinds: what each kind of operation in a command
// checks and does, and the order a command's operations must come in.

import (
	"encoding/binary"
	"fmt"
)

// opRole is what an operation kind does in a command. A command is, in this
// order: at most one meta operation (the leader's stamp and the request ID),
// conditions, the operations applied when they all hold, and optionally an
// else marker followed by the operations applied otherwise.
type opRole uint8

const (
	roleWrite opRole = iota // changes a key
	roleMeta                // the leader's stamp and the client's request ID
	roleCond                // a condition of a transaction
	roleElse                // starts the operations applied when a condition failed
	roleNext                // ends one part of a grouped entry and starts the next
)

// opKind is one kind of operation the state machine knows: how its operands
// are checked and what it does. Adding an operation kind is one entry in
// opKinds (a lease's set, an epoch condition, ...); a kind missing there is
// refused when proposed and stops a replica that meets it in its log (see
// kvStore.ApplyBatch), and a leader proposes a kind only once every voter
// advertises it (see upgrade.go).
type opKind struct {
	name string
	role opRole
	// keyless kinds have an empty key; every other kind a valid key.
	keyless bool
	// check validates an operation's value (its key is checked for every
	// kind alike). Every replica runs it on the same bytes.
	check func(value []byte) error
	// checkKey, when set, validates a keyed kind's key further than every
	// key is (enqueue takes only a queue's item prefix).
	checkKey func(key string) error
	// apply makes a write's change in the entry being applied.
	apply func(a *applyCtx, key, value []byte) error
	// holds evaluates a condition.
	holds func(a *applyCtx, key, value []byte) (bool, error)
	// internal kinds are proposed by the leader itself (the epoch marker):
	// a caller's command or transaction holding one is refused, or anyone
	// could end a leadership's fencing by forging a marker.
	internal bool
}

// Operation kinds on the wire. Append only: the numbers are the log format.
const (
	opSet           uint8 = 1
	opDelete        uint8 = 2
	opMeta          uint8 = 3
	opIfAbsent      uint8 = 4
	opIfModIndex    uint8 = 5
	opIfCreateIndex uint8 = 6
	opIfValue       uint8 = 7
	opElse          uint8 = 8
	// opIfEpoch is the condition of IfEpoch (see epoch.go).
	opIfEpoch uint8 = 9
	// opEpoch is the marker a new leader commits to establish its
	// leadership's epoch (see epoch.go). Keyless and internal.
	opEpoch uint8 = 10
	// opNext separates the parts of a grouped entry: independent writes
	// of a session burst that the leader puts in one log entry, each
	// part with its own meta operation, conditions and result (see
	// session_group.go). Keyless and internal.
	opNext uint8 = 22
)

// legacyKinds are the kinds every member knew before kinds were advertised:
// a voter that advertises nothing knows these only.
var legacyKinds = []uint8{opSet, opDelete}

// opKinds is the registry of operation kinds, indexed by their number.
var opKinds = [...]*opKind{
	opSet: {
		name:  "set",
		check: validateValue,
		apply: func(a *applyCtx, key, value []byte) error { return a.set(key, value) },
	},
	opDelete: {
		name:  "delete",
		check: noValue("delete"),
		apply: func(a *applyCtx, key, _ []byte) error { return a.delete(key) },
	},
	opMeta: {
		name:    "meta",
		role:    roleMeta,
		keyless: true,
		check:   checkMeta,
	},
	opIfAbsent:      condKind("ifAbsent", noValue("ifAbsent"), holdsAbsent),
	opIfModIndex:    condKind("ifModIndex", indexValue, holdsModIndex),
	opIfCreateIndex: condKind("ifCreateIndex", indexValue, holdsCreateIndex),
	opIfValue:       condKind("ifValue", validateValue, holdsValue),
	opElse: {
		name:    "else",
		role:    roleElse,
		keyless: true,
		check:   noValue("else"),
	},
	opLeaseGrant:      leaseGrantKind,
	opLeaseKeepAlive:  leaseKeepAliveKind,
	opLeaseRevoke:     leaseRevokeKind,
	opLeaseExpire:     leaseExpireKind,
	opIfLease:         ifLeaseKind,
	opSetLease:        setLeaseKind,
	opSetGrantedLease: setGrantedLeaseKind,
	opSetGrantedSeq:   setGrantedSeqKind,
	opIfEpoch: {
		name:    "ifEpoch",
		role:    roleCond,
		keyless: true,
		check:   indexValue,
		holds:   holdsEpoch,
	},
	opEnqueue: enqueueKind,
	opClaim:   claimKind,
	opNext: {
		name:     "next",
		role:     roleNext,
		keyless:  true,
		internal: true,
		check:    noValue("next"),
	},
	opEpoch: {
		name:     "epoch",
		keyless:  true,
		internal: true,
		check:    noValue("epoch"),
		apply:    applyEpochMarker,
	},
}

// noValue is the check of a kind that takes no value.
func noValue(name string) func([]byte) error {
	return func(value []byte) error {
		if len(value) != 0 {
			return fmt.Errorf("%w: %s with a value", ErrInvalidCommand, name)
		}
		return nil
	}
}

// lookupOp returns the registered kind numbered kind.
func lookupOp(kind uint8) (*opKind, bool) {
	if int(kind) >= len(opKinds) || opKinds[kind] == nil {
		return nil, false
	}
	return opKinds[kind], true
}

// checkOp validates one operation: its key, and its value as its kind wants.
func checkOp(kind uint8, key string, value []byte) error {
	k, ok := lookupOp(kind)
	if !ok {
		return fmt.Errorf("%w: operation kind %d is unknown to this build", ErrInvalidCommand, kind)
	}
	if k.keyless {
		if key != "" {
			return fmt.Errorf("%w: %s with a key", ErrInvalidCommand, k.name)
		}
	} else if err := validateKey(key); err != nil {
		return err
	} else if k.checkKey != nil {
		if err := k.checkKey(key); err != nil {
			return err
		}
	}
	return k.check(value)
}

// refuseInternal refuses a caller's command that holds an operation only
// the leader adds: the meta operation or an internal kind.
func refuseInternal(ops []cmdOp) error {
	for _, op := range ops {
		if op.kind == opMeta {
			return fmt.Errorf("%w: a meta operation is the leader's to add", ErrInvalidCommand)
		}
		if k, ok := lookupOp(op.kind); ok && k.internal {
			return fmt.Errorf("%w: operation %q is the leader's to add", ErrInvalidCommand, k.name)
		}
	}
	return nil
}

// checkUserOp validates an Op given by a caller.
func checkUserOp(op Op) error {
	if op.Lease != 0 && op.Delete {
		return fmt.Errorf("%w: a delete with a lease", ErrInvalidCommand)
	}
	return checkOp(opKindOf(op), op.Key, opValue(op))
}

// shape checks the order of a command's operations (see opRole). A
// grouped entry is parts of that shape, separated by next markers.
type shape struct {
	stage uint8 // 0 start, 1 after meta, 2 conditions, 3 writes, 4 after else
	ops   int   // operations other than meta of the part being read
}

func (s *shape) next(k *opKind) error {
	switch k.role {
	case roleNext:
		if s.ops == 0 {
			return fmt.Errorf("%w: an empty part in a grouped entry", ErrInvalidCommand)
		}
		*s = shape{}
		return nil
	case roleMeta:
		if s.stage != 0 {
			return fmt.Errorf("%w: meta operation not first", ErrInvalidCommand)
		}
		s.stage = 1
		return nil
	case roleCond:
		if s.stage > 2 {
			return fmt.Errorf("%w: condition after a write", ErrInvalidCommand)
		}
		s.stage = 2
	case roleWrite:
		s.stage = max(s.stage, 3)
	case roleElse:
		if s.stage == 4 {
			return fmt.Errorf("%w: two else markers", ErrInvalidCommand)
		}
		s.stage = 4
	}
	s.ops++
	return nil
}

func (s *shape) done() error {
	if s.ops == 0 {
		return fmt.Errorf("%w: no operations", ErrInvalidCommand)
	}
	return nil
}

// opKindOf is the wire kind of an Op.
func opKindOf(op Op) uint8 {
	switch {
	case op.Delete:
		return opDelete
	case op.Lease != 0:
		return opSetLease
	}
	return opSet
}

// opValue is the wire value of an Op: a set bound to a lease carries the
// lease ID before the value.
func opValue(op Op) []byte {
	if op.Lease == 0 || op.Delete {
		return op.Value
	}
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(op.Value)), uint64(op.Lease)), op.Value...)
}

// userOp is an Op (checked by checkUserOp) as a command's operation.
func userOp(op Op) cmdOp {
	return cmdOp{kind: opKindOf(op), key: []byte(op.Key), value: opValue(op)}
}
