package raft

import (
	"context"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// FSMResponse is what applying a command returned: Error is non-nil when the
// command was rejected by the state machine (nothing of it was applied), or
// when the member's state machine stopped (an error wrapping ErrShutdown:
// the entry is committed, so the outcome is unknown).
type FSMResponse struct {
	Error error
	Data  []byte
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

	mu      sync.Mutex // guards applied and failed against Restore racing reads
	applied uint64
	// failed is set once a committed entry could not be applied (a storage
	// error, or an operation this build does not know). Skipping the entry
	// would make this replica diverge for good, so from then on the store
	// applies nothing more and answers every entry with the failure; onFail
	// is told once (it must not block), so the member can stop.
	failed error
	onFail func(error)

	// onConfig, when set, is told every configuration entry this store
	// applies for the first time (entries replayed after a restart are
	// skipped, like commands), so only committed configurations.
	onConfig func(hraft.Configuration)

	// ---- watch hooks (i14-watch; see watch.go) ----
	// onChange, when set, is given the events of each apply batch right
	// after its datastore commit, in index order (f.mu held: it must not
	// block, and must copy what it keeps). onReset, when set, is told that
	// the state was replaced (snapshot restore, wipe): the changes up to
	// applied are no longer known one by one.
	onChange func(events []Event)
	onReset  func(applied uint64)
	events   []Event // the batch's events, reused (onChange copies)
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
// burst of writes costs one datastore commit, which also records the last
// applied index: a restart neither loses nor replays a write. An entry that
// cannot be applied stops the store (see failed): nothing of the batch is
// committed and no entry is counted as applied.
func (f *kvStore) ApplyBatch(logs []*hraft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.applyLocked(logs, out); err != nil {
		f.stopLocked(err)
	}
	if f.failed != nil {
		for i := range out {
			out[i] = FSMResponse{Error: f.failed}
		}
	}
	return out
}

// applyLocked applies logs, setting each one's response, and commits them
// with the index reached.
func (f *kvStore) applyLocked(logs []*hraft.Log, out []interface{}) error {
	if f.failed != nil {
		return f.failed
	}
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("raft: datastore batch: %w", err)
	}
	last := f.applied
	events := f.events[:0] // i14-watch: this batch's changes, for onChange
	for i, l := range logs {
		out[i] = FSMResponse{}
		if l.Index <= f.applied {
			continue // already in the datastore from before a restart
		}
		switch l.Type {
		case hraft.LogConfiguration:
			if f.onConfig != nil {
				f.onConfig(hraft.DecodeConfiguration(l.Data))
			}
		case hraft.LogCommand:
			err := forEachOp(l.Data, func(kind uint8, key, value []byte) error {
				op, _ := lookupOp(kind) // forEachOp passes valid kinds only
				if f.onChange != nil {
					events = append(events, opEvent(kind, key, value, l.Index)) // i14-watch
				}
				return op.apply(ctx, batch, f.dataKeyBytes(key), value)
			})
			if err != nil {
				return fmt.Errorf("raft: cannot apply log entry %d: %w", l.Index, err)
			}
		}
		last = l.Index
	}
	if last == f.applied {
		return nil
	}
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], last)
	err = batch.Put(ctx, f.appliedKey, idx[:])
	if err == nil {
		err = batch.Commit(ctx)
	}
	if err != nil {
		return fmt.Errorf("raft: datastore commit: %w", err)
	}
	f.applied = last
	if f.onChange != nil && len(events) > 0 { // i14-watch
		f.onChange(events)
		clear(events) // keep no log entry alive through the buffer
		f.events = events[:0]
	}
	return nil
}

// opEvent is the watch event of one applied operation (i14-watch). Today's
// store keeps no versions: ModIndex is the entry's index, CreateIndex stays
// 0, and a delete of a missing key is reported too. The versioned store
// (i14-data) replaces this with its real entries. value aliases the log
// entry: the hub copies it.
func opEvent(kind uint8, key, value []byte, index uint64) Event {
	if kind == opDelete {
		return Event{Kind: EventDelete, Key: string(key), Entry: Entry{ModIndex: index}, Index: index}
	}
	return Event{Kind: EventSet, Key: string(key), Entry: Entry{Value: value, ModIndex: index}, Index: index}
}

// stopLocked records the first failure and tells onFail, once.
func (f *kvStore) stopLocked(err error) {
	if f.failed != nil {
		return
	}
	// The entries answered with it are committed: the outcome of a write
	// waiting on one is unknown, as for any member shutting down mid-write.
	err = fmt.Errorf("%w: state machine stopped (the outcome of writes in flight is unknown): %w", ErrShutdown, err)
	f.failed = err
	if f.onFail != nil {
		f.onFail(err) // must not block: Raft waits for this apply
	}
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
