package raft

// The replicated command of the built-in key-value store: its encoding
// (canonical CBOR, written and read without reflection on the hot path), its
// validation, and the registry of operation kinds.

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/fxamacker/cbor/v2"
)

// Op is one change in a command: a Set of Key to Value, or a Delete of Key.
// Lease binds a set key to a lease (0: none): the key is deleted when the
// lease expires or is revoked. A write that binds a key to a lease that does
// not exist fails whole with ErrLeaseNotFound (see the README, "Leases").
type Op struct {
	Delete bool
	Key    string
	Value  []byte
	Lease  LeaseID
}

// SetOp is an Op that sets key to value.
func SetOp(key string, value []byte) Op { return Op{Key: key, Value: value} }

// DeleteOp is an Op that deletes key.
func DeleteOp(key string) Op { return Op{Delete: true, Key: key} }

// EncodeCommand encodes operations as one command for Cluster.Apply. All of
// them are applied atomically, in order, or none is.
func EncodeCommand(ops ...Op) ([]byte, error) {
	if len(ops) == 0 {
		return nil, fmt.Errorf("%w: no operations", ErrInvalidCommand)
	}
	for _, op := range ops {
		if err := checkUserOp(op); err != nil {
			return nil, err
		}
	}
	b := appendCommand(ops)
	if err := checkSize("command", len(b), MaxCommandSize); err != nil {
		return nil, err
	}
	return b, nil
}

// appendCommand writes the canonical CBOR encoding of a command (what
// cborEnc.Marshal(&command{...}) writes, byte for byte) without reflection.
func appendCommand(ops []Op) []byte {
	size := 3 + 9
	for _, op := range ops {
		size += 1 + 1 + 9 + len(op.Key) + 9 + len(op.Value)
	}
	b := make([]byte, 0, size)
	b = appendCommandHead(b, len(ops))
	for _, op := range ops {
		b = appendOp(b, opKindOf(op), op.Key, opValue(op), op.Value == nil && op.Lease == 0)
	}
	return b
}

// appendCommandHead starts a command of n operations.
func appendCommandHead(b []byte, n int) []byte {
	b = appendHead(b, 4, 2)
	b = appendHead(b, 0, commandVersion)
	return appendHead(b, 4, uint64(n))
}

// appendOp appends one operation: [kind, key, value], value null when null
// is set (how cbor encodes a nil []byte).
func appendOp[K string | []byte](b []byte, kind uint8, key K, value []byte, null bool) []byte {
	b = appendHead(b, 4, 3)
	b = appendHead(b, 0, uint64(kind))
	b = appendHead(b, 3, uint64(len(key)))
	b = append(b, key...)
	if null {
		return append(b, 0xf6)
	}
	b = appendHead(b, 2, uint64(len(value)))
	return append(b, value...)
}

// appendHead appends a CBOR head (major type and argument) in its shortest
// form, as canonical encoding requires.
func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= math.MaxUint8:
		return append(b, m|24, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), n)
	}
}

// cmdReader reads CBOR heads and strings of a command in canonical form
// only; anything else makes it fail, and the caller falls back to the full
// decoder, so the set of accepted commands is exactly what decodeCommand
// accepts.
type cmdReader struct {
	b   []byte
	off int
}

func (r *cmdReader) head() (major byte, n uint64, ok bool) {
	if r.off >= len(r.b) {
		return 0, 0, false
	}
	c := r.b[r.off]
	r.off++
	major, info := c>>5, c&0x1f
	var size int
	switch {
	case info < 24:
		return major, uint64(info), true
	case info == 24:
		size = 1
	case info == 25:
		size = 2
	case info == 26:
		size = 4
	case info == 27:
		size = 8
	default:
		return 0, 0, false
	}
	if len(r.b)-r.off < size {
		return 0, 0, false
	}
	for _, x := range r.b[r.off : r.off+size] {
		n = n<<8 | uint64(x)
	}
	r.off += size
	// Shortest form only.
	if (size == 1 && n < 24) || (size > 1 && n < 1<<(4*size)) {
		return 0, 0, false
	}
	return major, n, true
}

func (r *cmdReader) str(major byte) ([]byte, bool) {
	m, n, ok := r.head()
	if !ok || m != major || n > uint64(len(r.b)-r.off) {
		return nil, false
	}
	s := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return s, true
}

// walkCommand checks that b is a valid command in the canonical encoding
// EncodeCommand writes and, if fn is not nil, calls it for each operation
// (key and value alias b). It reports false, having called fn for no
// operation when fn is nil, for anything else, valid or not: the caller then
// uses decodeCommand. With fn set it must be called only on a b for which
// walkCommand(b, nil) returned true.
func walkCommand(b []byte, fn func(kind uint8, key, value []byte)) bool {
	if len(b) > MaxCommandSize {
		return false
	}
	r := cmdReader{b: b}
	if m, n, ok := r.head(); !ok || m != 4 || n != 2 {
		return false
	}
	if m, v, ok := r.head(); !ok || m != 0 || v != commandVersion {
		return false
	}
	m, count, ok := r.head()
	if !ok || m != 4 || count == 0 || count > 1<<20 {
		return false
	}
	var sh shape
	for range count {
		if m, n, ok := r.head(); !ok || m != 4 || n != 3 {
			return false
		}
		m, kind, ok := r.head()
		if !ok || m != 0 || kind > math.MaxUint8 {
			return false
		}
		op, known := lookupOp(uint8(kind))
		if !known {
			return false
		}
		key, ok := r.str(3)
		if !ok || len(key) > MaxKeySize || (len(key) == 0) != op.keyless {
			return false
		}
		var value []byte
		if r.off < len(r.b) && r.b[r.off] == 0xf6 {
			r.off++
		} else if value, ok = r.str(2); !ok {
			return false
		}
		if op.check(value) != nil || sh.next(op) != nil {
			return false
		}
		if op.checkKey != nil && op.checkKey(string(key)) != nil {
			return false // the full decoder says why
		}
		if fn != nil {
			fn(uint8(kind), key, value)
		}
	}
	return r.off == len(r.b) && sh.done() == nil
}

// commandVersion is the version a command starts with.
const commandVersion = 1

// command is the replicated entry of the built-in store. Arrays rather than
// maps keep it compact and free of map[any]any decoding.
type command struct {
	_       struct{} `cbor:",toarray"`
	Version uint8
	Ops     []commandOp
}

type commandOp struct {
	_     struct{} `cbor:",toarray"`
	Kind  uint8
	Key   string
	Value []byte
}

var (
	cborEnc cbor.EncMode
	cborDec cbor.DecMode
)

func init() {
	var err error
	cborEnc, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	// Replicas must refuse unknown fields: a field one build ignores and
	// another applies would make them diverge.
	cborDec = strictDecMode(1<<20, 1<<16, cbor.ExtraDecErrorUnknownField)
}

// strictDecMode is the CBOR decoding of everything that comes from a peer or
// the log: bounded sizes and nesting, no duplicate map keys, no indefinite
// lengths, no tags. Text strings need not be UTF-8: keys are opaque bytes in
// Go strings, and every replica decodes them alike.
func strictDecMode(maxElements, maxPairs int, extra cbor.ExtraDecErrorCond) cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   8,
		MaxArrayElements:  maxElements,
		MaxMapPairs:       maxPairs,
		IndefLength:       cbor.IndefLengthForbidden,
		UTF8:              cbor.UTF8DecodeInvalid,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: extra,
	}.DecMode()
	if err != nil {
		panic(err) // the options are constants
	}
	return dm
}

// decodeCommand decodes and validates a command. Every replica runs the same
// checks on the same bytes, so they all accept or all reject it.
func decodeCommand(b []byte) (*command, error) {
	if err := checkSize("command", len(b), MaxCommandSize); err != nil {
		return nil, err
	}
	var cmd command
	if err := cborDec.Unmarshal(b, &cmd); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	if cmd.Version != commandVersion {
		return nil, fmt.Errorf("%w: version %d", ErrInvalidCommand, cmd.Version)
	}
	var sh shape
	for _, op := range cmd.Ops {
		if err := checkOp(op.Kind, op.Key, op.Value); err != nil {
			return nil, err
		}
		k, _ := lookupOp(op.Kind)
		if err := sh.next(k); err != nil {
			return nil, err
		}
	}
	if err := sh.done(); err != nil {
		return nil, err
	}
	return &cmd, nil
}

// validateCommand checks a command given to Cluster.Apply: the fast parser
// takes the canonical encoding, the full decoder any other valid one.
func validateCommand(b []byte) error {
	if walkCommand(b, nil) {
		return nil
	}
	_, err := decodeCommand(b)
	return err
}

// cmdOp is one operation of a parsed command; key and value may alias the
// command's bytes.
type cmdOp struct {
	kind       uint8
	key, value []byte
}

// parseCommand parses and validates a command: the fast parser takes the
// canonical encoding, the full decoder any other valid one.
func parseCommand(b []byte) ([]cmdOp, error) {
	// Counted first, so that the list is one allocation of its size.
	n := 0
	if walkCommand(b, func(uint8, []byte, []byte) { n++ }) {
		return parseCommandInto(b, make([]cmdOp, 0, n))
	}
	return parseCommandInto(b, nil)
}

// parseCommandInto is parseCommand appending to buf[:0], so that the apply
// loop reuses one slice for a batch's entries. The canonical encoding is
// read in one pass, straight into buf: every replica parses every entry,
// and a second pass only to size buf cost as much as the first.
func parseCommandInto(b []byte, buf []cmdOp) ([]cmdOp, error) {
	ops := buf[:0]
	if walkCommand(b, func(kind uint8, key, value []byte) {
		ops = append(ops, cmdOp{kind: kind, key: key, value: value})
	}) {
		return ops, nil
	}
	cmd, err := decodeCommand(b)
	if err != nil {
		return nil, err
	}
	ops = make([]cmdOp, len(cmd.Ops))
	for i, op := range cmd.Ops {
		ops[i] = cmdOp{kind: op.Kind, key: []byte(op.Key), value: op.Value}
	}
	return ops, nil
}

// headLen is the length of a CBOR head of argument n (see appendHead).
func headLen(n uint64) int {
	switch {
	case n < 24:
		return 1
	case n <= math.MaxUint8:
		return 2
	case n <= math.MaxUint16:
		return 3
	case n <= math.MaxUint32:
		return 5
	}
	return 9
}

// encodedLen is len(encodeOps(ops)), without encoding them.
func encodedLen(ops []cmdOp) int {
	n := 2 + headLen(uint64(len(ops)))
	for _, op := range ops {
		n += 1 + headLen(uint64(op.kind)) + headLen(uint64(len(op.key))) + len(op.key) + 1
		if op.value != nil {
			n += headLen(uint64(len(op.value))) - 1 + len(op.value)
		}
	}
	return n
}

// encodeOps writes parsed operations back as a canonical command.
func encodeOps(ops []cmdOp) []byte {
	return encodeOpsAfter(nil, ops)
}

// encodeOpsAfter encodes first (when not nil) and then ops as one command,
// without building a joined list: the leader puts its meta operation in
// front of every write.
func encodeOpsAfter(first *cmdOp, ops []cmdOp) []byte {
	size, n := 3+9, len(ops)
	if first != nil {
		size += 1 + 1 + 9 + len(first.key) + 9 + len(first.value)
		n++
	}
	for _, op := range ops {
		size += 1 + 1 + 9 + len(op.key) + 9 + len(op.value)
	}
	b := appendCommandHead(make([]byte, 0, size), n)
	if first != nil {
		b = appendOp(b, first.kind, first.key, first.value, first.value == nil)
	}
	for _, op := range ops {
		b = appendOp(b, op.kind, op.key, op.value, op.value == nil)
	}
	return b
}
