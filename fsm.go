package raft

import (
	"bytes"
	"context"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// Limits of the built-in key-value store and of the wire. Past them a call
// fails with ErrTooLarge and nothing is applied.
const (
	// MaxKeySize is the longest key, in bytes.
	MaxKeySize = 1024
	// MaxValueSize is the largest value, in bytes.
	MaxValueSize = 1 << 20
	// MaxCommandSize is the largest encoded command Apply takes (a batch of
	// operations included).
	MaxCommandSize = 4 << 20
	// MaxMessageSize is the largest frame the command service reads or writes.
	MaxMessageSize = MaxCommandSize + 64<<10
	// MaxTimeout is the longest timeout a write or membership call takes.
	MaxTimeout = 60 * time.Second
	// MaxBarrier is the longest read barrier a Client.Get takes.
	MaxBarrier = 30 * time.Second
)

// FSMResponse is what applying a command returned: Error is non-nil when the
// command was rejected by the state machine (nothing of it was applied).
type FSMResponse struct {
	Error error
	Data  []byte
}

// Op is one change in a command: a Set of Key to Value, or a Delete of Key.
type Op struct {
	Delete bool
	Key    string
	Value  []byte
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
		if err := validateKey(op.Key); err != nil {
			return nil, err
		}
		if op.Delete {
			if len(op.Value) != 0 {
				return nil, fmt.Errorf("%w: delete with a value", ErrInvalidCommand)
			}
		} else if len(op.Value) > MaxValueSize {
			return nil, fmt.Errorf("%w: value of %d bytes (max %d)", ErrTooLarge, len(op.Value), MaxValueSize)
		}
	}
	b := appendCommand(ops)
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("%w: command of %d bytes (max %d)", ErrTooLarge, len(b), MaxCommandSize)
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
	b = appendHead(b, 4, 2)
	b = appendHead(b, 0, commandVersion)
	b = appendHead(b, 4, uint64(len(ops)))
	for _, op := range ops {
		kind := opSet
		if op.Delete {
			kind = opDelete
		}
		b = appendHead(b, 4, 3)
		b = appendHead(b, 0, uint64(kind))
		b = appendHead(b, 3, uint64(len(op.Key)))
		b = append(b, op.Key...)
		if op.Value == nil {
			b = append(b, 0xf6) // CBOR null: how cbor encodes a nil []byte
		} else {
			b = appendHead(b, 2, uint64(len(op.Value)))
			b = append(b, op.Value...)
		}
	}
	return b
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
	for range count {
		if m, n, ok := r.head(); !ok || m != 4 || n != 3 {
			return false
		}
		m, kind, ok := r.head()
		if !ok || m != 0 || (kind != uint64(opSet) && kind != uint64(opDelete)) {
			return false
		}
		key, ok := r.str(3)
		if !ok || len(key) == 0 || len(key) > MaxKeySize {
			return false
		}
		var value []byte
		if r.off < len(r.b) && r.b[r.off] == 0xf6 {
			r.off++
		} else if value, ok = r.str(2); !ok {
			return false
		}
		if (kind == uint64(opSet) && len(value) > MaxValueSize) || (kind == uint64(opDelete) && len(value) != 0) {
			return false
		}
		if fn != nil {
			fn(uint8(kind), key, value)
		}
	}
	return r.off == len(r.b)
}

// validateKey enforces the key rules: any non-empty string up to MaxKeySize
// bytes. Keys are opaque: no byte has a meaning.
func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes (max %d)", ErrTooLarge, len(key), MaxKeySize)
	}
	return nil
}

const (
	commandVersion       = 1
	opSet          uint8 = 1
	opDelete       uint8 = 2
)

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
	cborDec, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  8,
		MaxArrayElements: 1 << 20,
		MaxMapPairs:      1 << 16,
		IndefLength:      cbor.IndefLengthForbidden,
		// Keys are opaque: a Go string may hold any bytes, so text strings
		// are not required to be UTF-8 (every replica decodes alike).
		UTF8:              cbor.UTF8DecodeInvalid,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// decodeCommand decodes and validates a command. Every replica runs the same
// checks on the same bytes, so they all accept or all reject it.
func decodeCommand(b []byte) (*command, error) {
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("%w: command of %d bytes (max %d)", ErrTooLarge, len(b), MaxCommandSize)
	}
	var cmd command
	if err := cborDec.Unmarshal(b, &cmd); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	if cmd.Version != commandVersion {
		return nil, fmt.Errorf("%w: version %d", ErrInvalidCommand, cmd.Version)
	}
	if len(cmd.Ops) == 0 {
		return nil, fmt.Errorf("%w: no operations", ErrInvalidCommand)
	}
	for _, op := range cmd.Ops {
		if err := validateKey(op.Key); err != nil {
			return nil, err
		}
		switch op.Kind {
		case opSet:
			if len(op.Value) > MaxValueSize {
				return nil, fmt.Errorf("%w: value of %d bytes (max %d)", ErrTooLarge, len(op.Value), MaxValueSize)
			}
		case opDelete:
			if len(op.Value) != 0 {
				return nil, fmt.Errorf("%w: delete with a value", ErrInvalidCommand)
			}
		default:
			return nil, fmt.Errorf("%w: operation kind %d", ErrInvalidCommand, op.Kind)
		}
	}
	return &cmd, nil
}

// keyEncoding turns an opaque key into one datastore path segment. Base32
// with the "extended hex" alphabet keeps byte order, has no '/', and cannot
// be cleaned into another key, so "a//b", "a/b" and "../x" stay distinct and
// inside the namespace.
var keyEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// appliedSegment names the record of the last applied log index. Lower case
// with an underscore, so it can never be the encoding of a key.
const appliedSegment = "_applied"

// kvStore is the built-in key-value state machine. Its data lives in the
// node's datastore under namespace + "/data/"; each batch of applied entries
// is one datastore Batch together with the index it reached, so a restart
// neither loses nor replays a write.
type kvStore struct {
	ds         datastore.Batching
	prefix     string // namespace + "/data"
	appliedKey datastore.Key

	mu      sync.Mutex // guards applied against Restore racing reads of it
	applied uint64

	// onConfig, when set, is told every configuration entry this store
	// applies for the first time (entries replayed after a restart are
	// skipped, like commands), so only committed configurations.
	onConfig func(hraft.Configuration)
}

var (
	_ hraft.BatchingFSM = (*kvStore)(nil)
)

func newKVStore(ds datastore.Batching, prefix string) (*kvStore, error) {
	f := &kvStore{ds: ds, prefix: prefix, appliedKey: datastore.RawKey(prefix + "/" + appliedSegment)}
	b, err := ds.Get(context.Background(), f.appliedKey)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("raft: reading applied index: %w", err)
	case len(b) != 8:
		return nil, fmt.Errorf("raft: corrupt applied index (%d bytes)", len(b))
	default:
		f.applied = binary.BigEndian.Uint64(b)
	}
	return f, nil
}

func (f *kvStore) dataKey(key string) datastore.Key {
	return f.dataKeyBytes([]byte(key))
}

// dataKeyBytes is dataKey in one allocation.
func (f *kvStore) dataKeyBytes(key []byte) datastore.Key {
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

// Apply applies one committed entry.
func (f *kvStore) Apply(l *hraft.Log) interface{} {
	return f.ApplyBatch([]*hraft.Log{l})[0]
}

// ApplyBatch applies committed entries through one datastore Batch, so a
// burst of writes costs one (synced) datastore commit.
func (f *kvStore) ApplyBatch(logs []*hraft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		for i := range out {
			out[i] = FSMResponse{Error: fmt.Errorf("raft: datastore batch: %w", err)}
		}
		return out
	}
	last := f.applied
	for i, l := range logs {
		out[i] = FSMResponse{}
		if l.Index <= f.applied {
			// Already in the datastore from before a restart.
			continue
		}
		last = l.Index
		if l.Type == hraft.LogConfiguration && f.onConfig != nil {
			f.onConfig(hraft.DecodeConfiguration(l.Data))
		}
		if l.Type != hraft.LogCommand {
			continue
		}
		if walkCommand(l.Data, nil) {
			var perr error
			walkCommand(l.Data, func(kind uint8, key, value []byte) {
				if perr != nil {
					return
				}
				k := f.dataKeyBytes(key)
				if kind == opSet {
					// A copy: the datastore may keep the slice, and l.Data
					// may be the caller's buffer (Cluster.Apply).
					perr = batch.Put(ctx, k, bytes.Clone(value))
				} else {
					perr = batch.Delete(ctx, k)
				}
			})
			if perr != nil {
				out[i] = FSMResponse{Error: fmt.Errorf("raft: datastore: %w", perr)}
			}
			continue
		}
		cmd, err := decodeCommand(l.Data)
		if err != nil {
			out[i] = FSMResponse{Error: err}
			continue
		}
		for _, op := range cmd.Ops {
			k := f.dataKey(op.Key)
			if op.Kind == opSet {
				err = batch.Put(ctx, k, op.Value)
			} else {
				err = batch.Delete(ctx, k)
			}
			if err != nil {
				out[i] = FSMResponse{Error: fmt.Errorf("raft: datastore: %w", err)}
				break
			}
		}
	}
	if last == f.applied {
		return out
	}
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], last)
	err = batch.Put(ctx, f.appliedKey, idx[:])
	if err == nil {
		err = batch.Commit(ctx)
	}
	if err != nil {
		for i := range out {
			out[i] = FSMResponse{Error: fmt.Errorf("raft: datastore commit: %w", err)}
		}
		return out
	}
	f.applied = last
	return out
}

// appliedIndex is the index of the last entry written to the datastore.
// Raft hands only commands and configurations to the state machine, so it
// skips the indexes of no-op and barrier entries.
func (f *kvStore) appliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// get reads a value from the local replica.
func (f *kvStore) get(key string) ([]byte, bool, error) {
	v, err := f.ds.Get(context.Background(), f.dataKey(key))
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// keys lists the local replica's keys that start with prefix, sorted.
func (f *kvStore) keys(prefix string) ([]string, error) {
	var out []string
	err := f.scan(true, func(key string, _ []byte) error {
		if strings.HasPrefix(key, prefix) {
			out = append(out, key)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

// scan calls fn for every key (and value, unless keysOnly) of the store. Only
// entries exactly one valid segment below the prefix are ours: a nested
// namespace keeps its own entries deeper down.
func (f *kvStore) scan(keysOnly bool, fn func(key string, value []byte) error) error {
	res, err := f.ds.Query(context.Background(), query.Query{Prefix: f.prefix, KeysOnly: keysOnly})
	if err != nil {
		return err
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return r.Error
		}
		rest, ok := strings.CutPrefix(r.Key, f.prefix+"/")
		if !ok || rest == "" || strings.Contains(rest, "/") {
			continue
		}
		raw, err := keyEncoding.DecodeString(rest)
		if err != nil || len(raw) == 0 {
			continue
		}
		if err := fn(string(raw), r.Value); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot captures the store in memory. Raft calls it between applies, so
// the copy is consistent; persisting then runs without blocking applies.
func (f *kvStore) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	snap := &kvSnapshot{Header: snapshotHeader{Version: snapshotVersion, Applied: f.applied}}
	err := f.scan(false, func(key string, value []byte) error {
		snap.Pairs = append(snap.Pairs, snapshotPair{Key: key, Value: value})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft: snapshot scan: %w", err)
	}
	return snap, nil
}

// Restore replaces the store with a snapshot: keys absent from the snapshot
// are gone afterwards. A snapshot no newer than what the datastore already
// holds is skipped: the local state is a later point of the same history.
func (f *kvStore) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dec := cborDec.NewDecoder(rc)
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("raft: snapshot header: %w", err)
	}
	if h.Version != snapshotVersion {
		return fmt.Errorf("raft: snapshot version %d not supported", h.Version)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.Applied != 0 && h.Applied <= f.applied {
		return nil
	}
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return err
	}
	// Delete first, then put: in one batch the last operation on a key wins.
	err = f.scan(true, func(key string, _ []byte) error {
		return batch.Delete(ctx, f.dataKey(key))
	})
	if err != nil {
		return err
	}
	for i := uint64(0); i < h.Count; i++ {
		var p snapshotPair
		if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("raft: snapshot entry %d: %w", i, err)
		}
		if err := batch.Put(ctx, f.dataKey(p.Key), p.Value); err != nil {
			return err
		}
	}
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], h.Applied)
	if err := batch.Put(ctx, f.appliedKey, idx[:]); err != nil {
		return err
	}
	if err := batch.Commit(ctx); err != nil {
		return err
	}
	f.applied = h.Applied
	return nil
}

// wipe deletes every key and the applied index, for a member that must drop
// its state before joining another cluster.
func (f *kvStore) wipe() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return err
	}
	if err := f.scan(true, func(key string, _ []byte) error { return batch.Delete(ctx, f.dataKey(key)) }); err != nil {
		return err
	}
	if err := batch.Delete(ctx, f.appliedKey); err != nil {
		return err
	}
	if err := batch.Commit(ctx); err != nil {
		return err
	}
	f.applied = 0
	return nil
}

const snapshotVersion = 1

// A snapshot is a CBOR header followed by Count pairs, streamed so that a
// restore never holds two copies of the data.
type snapshotHeader struct {
	_       struct{} `cbor:",toarray"`
	Version uint8
	Applied uint64
	Count   uint64
}

type snapshotPair struct {
	_     struct{} `cbor:",toarray"`
	Key   string
	Value []byte
}

type kvSnapshot struct {
	Header snapshotHeader
	Pairs  []snapshotPair
}

// Persist writes the snapshot to the sink.
func (s *kvSnapshot) Persist(sink hraft.SnapshotSink) error {
	err := func() error {
		enc := cborEnc.NewEncoder(sink)
		h := s.Header
		h.Count = uint64(len(s.Pairs))
		if err := enc.Encode(&h); err != nil {
			return err
		}
		for i := range s.Pairs {
			if err := enc.Encode(&s.Pairs[i]); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raft: persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release frees the snapshot.
func (s *kvSnapshot) Release() {}
