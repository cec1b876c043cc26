package raft

import (
	"context"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
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
	// parts are the answers of a grouped entry's parts, in order (see
	// session_group.go); nil for every other entry.
	parts []FSMResponse
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
	clockKey   datastore.Key
	formatKey  datastore.Key
	epochKey   datastore.Key

	mu      sync.Mutex // guards applied and failed against Restore racing reads
	applied uint64
	// clockNanos is the state machine's clock: the largest leader stamp
	// applied (unix nanoseconds), persisted with each batch. It never comes
	// from this replica's own clock, so every replica has the same.
	clockNanos uint64
	// epoch is the index of the last epoch marker applied: the leadership
	// that IfEpoch checks against (see epoch.go). Persisted with each
	// batch, like the clock.
	epoch uint64
	// onEpoch, when set, is told (without locks held; it must not block)
	// that epoch changed, so leadership watchers need not poll for it.
	onEpoch func()
	// requests remembers recent Client writes (see requests.go).
	requests *requestTable
	// leases is the lease table (see lease_table.go).
	leases *leaseTable
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

	// onChange, when set, gets the events of each applied batch, in index
	// order, once the batch is committed to the datastore. It is called
	// without any lock a reader takes, from Raft's apply goroutine, so it
	// must not block: Raft waits for it. It may keep the events' values
	// (never written again), not the list (reused for the next batch).
	onChange func(events []Event)
	// pendingScratch is the pending map of the last batch, emptied, kept
	// for the next one (see keepPending).
	pendingScratch map[string]pendingEntry
	// applying is the state of the batch being applied, kept for the
	// next one (see applyLocked).
	applying applyCtx
	// eventScratch is the event list of the last batch, for the next one
	// (ApplyBatch gives it back once onChange has taken the events).
	eventScratch []Event
	// onReset, when set, is told after a snapshot was installed or the
	// state wiped: changes up to applied are gone as events (a watcher
	// must resync).
	onReset func(applied uint64)
	// metrics times applies, snapshots and restores (nil: not measured).
	metrics *clusterMetrics
	// overlay, while a snapshot persists, keeps what the keys the applies
	// write held at its point (snapshot_overlay.go).
	overlay *snapshotOverlay
}

var (
	_ hraft.BatchingFSM = (*kvStore)(nil)
)

func newKVStore(ds datastore.Batching, prefix string) (*kvStore, error) {
	f := &kvStore{
		ds: ds, prefix: prefix,
		appliedKey: datastore.RawKey(prefix + "/" + appliedSegment),
		clockKey:   datastore.RawKey(prefix + "/" + clockSegment),
		formatKey:  datastore.RawKey(prefix + "/" + formatSegment),
		epochKey:   datastore.RawKey(prefix + "/" + epochSegment),
		requests:   newRequestTable(),
		leases:     newLeaseTable(),
	}
	var err error
	if f.applied, err = f.readIndexRecord(f.appliedKey, "applied index"); err != nil {
		return nil, err
	}
	if f.clockNanos, err = f.readIndexRecord(f.clockKey, "clock"); err != nil {
		return nil, err
	}
	if f.epoch, err = f.readIndexRecord(f.epochKey, "epoch"); err != nil {
		return nil, err
	}
	if err := f.checkFormat(); err != nil {
		return nil, err
	}
	if err := f.loadRequests(); err != nil {
		return nil, err
	}
	if err := f.loadLeases(); err != nil {
		return nil, err
	}
	return f, nil
}

// clockSegment names the record of the state machine's clock.
const clockSegment = "_clock"

// readIndexRecord reads an 8-byte big-endian record; absent is 0.
func (f *kvStore) readIndexRecord(k datastore.Key, what string) (uint64, error) {
	b, err := f.ds.Get(context.Background(), k)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("raft: reading %s: %w", what, err)
	case len(b) != 8:
		return 0, fmt.Errorf("raft: corrupt %s (%d bytes)", what, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// requestKey is where a client's record lives.
func (f *kvStore) requestKey(id [clientIDSize]byte) datastore.Key {
	return datastore.RawKey(f.prefix + "/" + requestSegment + "/" + hex.EncodeToString(id[:]))
}

// loadRequests reads the request table.
func (f *kvStore) loadRequests() error {
	t := newRequestTable()
	err := f.scanRequests(func(id [clientIDSize]byte, rec []byte) error {
		c, err := decodeClientRecord(rec)
		if err != nil {
			return err
		}
		t.clients[id] = c
		return nil
	})
	if err != nil {
		return fmt.Errorf("raft: reading request table: %w", err)
	}
	f.requests = t
	return nil
}

// scanBelow calls fn for every record of the store's subspace segment,
// with the rest of its key below it (each caller parses its own layout and
// skips what does not fit); keysOnly leaves the values out.
func (f *kvStore) scanBelow(segment string, keysOnly bool, fn func(rest string, value []byte) error) error {
	base := f.prefix + "/" + segment + "/"
	res, err := f.ds.Query(context.Background(), query.Query{Prefix: base, KeysOnly: keysOnly})
	if err != nil {
		return err
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return r.Error
		}
		if rest, ok := strings.CutPrefix(r.Key, base); ok {
			if err := fn(rest, r.Value); err != nil {
				return err
			}
		}
	}
	return nil
}

// scanRequests calls fn for every stored client record.
func (f *kvStore) scanRequests(fn func(id [clientIDSize]byte, rec []byte) error) error {
	return f.scanBelow(requestSegment, false, func(rest string, rec []byte) error {
		id, ok := clientFromHex(rest)
		if !ok {
			return nil
		}
		return fn(id, rec)
	})
}

// clock is the state machine's clock (see clockNanos), for leases.
func (f *kvStore) clock() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clockNanos
}

func (f *kvStore) dataKey(key string) datastore.Key {
	return f.dataKeyBytes([]byte(key))
}

// dataKeyBytes is where key lives in the datastore: a queue's key in the
// queue subspace (see queue_store.go), any other key flat under the prefix.
func (f *kvStore) dataKeyBytes(key []byte) datastore.Key {
	if dir, leaf, ok := nestedSplit(key); ok {
		return f.nestedKey(dir, leaf)
	}
	return f.flatKey(key)
}

// Apply applies one committed entry.
func (f *kvStore) Apply(l *hraft.Log) interface{} {
	return f.ApplyBatch([]*hraft.Log{l})[0]
}

// ApplyBatch applies committed entries through one datastore Batch, so a
// burst of writes costs one datastore commit, which also records the last
// applied index: a restart neither loses nor replays a write. An entry that
// cannot be applied stops the store (see failed): nothing of the batch is
// committed and no entry is counted as applied. Each answer is a
// *FSMResponse.
func (f *kvStore) ApplyBatch(logs []*hraft.Log) []interface{} {
	start := f.metrics.start()
	resps, out := newAnswers(len(logs))
	f.mu.Lock()
	epoch := f.epoch
	events, err := f.applyLocked(logs, resps)
	if err != nil {
		f.stopLocked(err)
	}
	if f.failed != nil {
		for i := range resps {
			resps[i] = FSMResponse{Error: f.failed}
		}
		events = nil
	}
	onChange := f.onChange
	onEpoch := f.onEpoch
	if f.failed != nil || f.epoch == epoch {
		onEpoch = nil
	}
	f.mu.Unlock()
	f.metrics.observeApply(start) // once per batch
	if onEpoch != nil {
		onEpoch()
	}
	// After the commit and outside the lock: the events are durable, and
	// readers are not held while the consumer takes them.
	if onChange != nil && len(events) > 0 {
		onChange(events)
		// onChange kept the events, not the list: it serves the next batch.
		if cap(events) <= maxPendingScratch {
			clear(events)
			f.mu.Lock()
			f.eventScratch = events[:0]
			f.mu.Unlock()
		}
	}
	return out
}

// newAnswers makes the answers of a batch of n entries: out, what Raft
// takes, points into resps, what the store fills in. The answers are
// pointers into one slice, where boxing each FSMResponse would cost an
// allocation per entry; a batch of one (every write, when writes come one
// at a time) gets both in one allocation.
func newAnswers(n int) (resps []FSMResponse, out []interface{}) {
	if n == 1 {
		one := new(struct {
			resp [1]FSMResponse
			out  [1]interface{}
		})
		one.out[0] = &one.resp[0]
		return one.resp[:], one.out[:]
	}
	resps = make([]FSMResponse, n)
	out = make([]interface{}, n)
	for i := range resps {
		out[i] = &resps[i]
	}
	return resps, out
}

// applyLocked applies logs, setting each one's response, and commits them
// with the index reached. It returns the batch's events when onChange is
// set.
func (f *kvStore) applyLocked(logs []*hraft.Log, out []FSMResponse) ([]Event, error) {
	if f.failed != nil {
		return nil, f.failed
	}
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return nil, fmt.Errorf("raft: datastore batch: %w", err)
	}
	if f.overlay != nil {
		batch = &overlayBatch{Batch: batch, ds: f.ds, ov: f.overlay}
	}
	// One applyCtx serves every batch (they are applied one at a time,
	// under f.mu), with its list of parsed operations: a fresh one per
	// batch cost two allocations, which a batch of one entry (every write
	// when writes come one at a time) pays in full.
	a := &f.applying
	*a = applyCtx{f: f, ctx: ctx, batch: batch, events: f.onChange != nil, sizeHint: len(logs), ops: a.ops[:0]}
	a.pending, f.pendingScratch = f.pendingScratch, nil
	defer func() {
		f.keepPending(a.pending)
		// Between batches it keeps no log entry (the operations alias
		// their bytes) nor the datastore batch alive.
		clear(a.ops)
		*a = applyCtx{ops: a.ops[:0]}
	}()
	if a.events {
		// Most entries change one key: the list of the last batch, or
		// one allocation for this one.
		a.eventList, f.eventScratch = f.eventScratch[:0], nil
		a.eventList = slices.Grow(a.eventList, len(logs))
	}
	last, clock, epoch := f.applied, f.clockNanos, f.epoch
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
			ops, err := parseCommandInto(l.Data, a.ops)
			a.ops = ops
			if err != nil {
				return nil, fmt.Errorf("raft: cannot apply log entry %d: %w", l.Index, err)
			}
			a.index = l.Index
			resp, err := a.execEntry(ops)
			if err != nil {
				return nil, fmt.Errorf("raft: cannot apply log entry %d: %w", l.Index, err)
			}
			out[i] = resp
		}
		last = l.Index
	}
	if last == f.applied {
		return nil, nil
	}
	// Fresh bytes for each record, since a datastore may keep what it is
	// given; the applied index and the clock (which changes with almost
	// every batch) are cut from one allocation.
	recs := make([]byte, 16)
	err = batch.Put(ctx, f.appliedKey, binary.BigEndian.AppendUint64(recs[:0:8], last))
	if err == nil && f.clockNanos != clock {
		err = batch.Put(ctx, f.clockKey, binary.BigEndian.AppendUint64(recs[8:8:16], f.clockNanos))
	}
	if err == nil && f.epoch != epoch {
		err = batch.Put(ctx, f.epochKey, binary.BigEndian.AppendUint64(nil, f.epoch))
	}
	if err == nil {
		err = f.flushRequests(ctx, batch)
	}
	if err == nil {
		err = f.flushLeases(ctx, batch)
	}
	if err == nil {
		err = batch.Commit(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("raft: datastore commit: %w", err)
	}
	f.applied = last
	return a.eventList, nil
}

// flushRequests adds the request records changed since the last flush to a
// batch.
func (f *kvStore) flushRequests(ctx context.Context, batch datastore.Batch) error {
	t := f.requests
	return flushChanged(ctx, batch, t.changed, f.requestKey, func(id [clientIDSize]byte) ([]byte, bool) {
		c, ok := t.clients[id]
		if !ok {
			return nil, false
		}
		return encodeClientRecord(c), true
	})
}

// flushChanged adds to a batch the record of every changed item of a table
// the state machine keeps in memory (the request table, the leases): a put
// of its encoding while it exists, a delete once it is gone. It empties
// changed.
func flushChanged[K comparable](ctx context.Context, batch datastore.Batch, changed map[K]struct{},
	key func(K) datastore.Key, record func(K) ([]byte, bool)) error {
	for id := range changed {
		var err error
		if b, ok := record(id); ok {
			err = batch.Put(ctx, key(id), b)
		} else {
			err = batch.Delete(ctx, key(id))
		}
		if err != nil {
			return err
		}
	}
	clear(changed)
	return nil
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
	e, ok, err := f.getEntry(key)
	return e.Value, ok, err
}

// getEntry reads an entry from the local replica.
func (f *kvStore) getEntry(key string) (Entry, bool, error) {
	return f.readEntry(context.Background(), f.dataKey(key))
}

// readEntry reads the entry stored under k.
func (f *kvStore) readEntry(ctx context.Context, k datastore.Key) (Entry, bool, error) {
	b, err := f.ds.Get(ctx, k)
	if errors.Is(err, datastore.ErrNotFound) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	e, err := decodeEntry(b)
	if err != nil {
		return Entry{}, false, fmt.Errorf("%w under %s", err, k)
	}
	return e, true, nil
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

// scan calls fn for every key (and value, unless keysOnly) of the store:
// the flat keys and the queue subspace's (see queue_store.go), in no set
// order. One query covers both: both live under the prefix, and a query
// may cost a walk of the whole datastore (an in-memory one filters every
// key), which a snapshot would otherwise pay twice under the apply lock.
func (f *kvStore) scan(keysOnly bool, fn func(key string, value []byte) error) error {
	return f.scanPrefix(keysOnly, func(rest string, value []byte, buf []byte) ([]byte, error) {
		return f.scanRecord(rest, value, buf, fn)
	})
}

// scanRecord calls fn with the key of the record stored at rest (its
// datastore key below the prefix) and value, when it is a key's record (a
// flat key or a queue item); buf is scanPrefix's scratch buffer.
func (f *kvStore) scanRecord(rest string, value []byte, buf []byte, fn func(key string, value []byte) error) ([]byte, error) {
	if !strings.Contains(rest, "/") {
		return f.flatRecord(rest, value, buf, fn)
	}
	if below, ok := strings.CutPrefix(rest, queueSegment+"/"); ok {
		return nestedRecord(below, value, buf, fn)
	}
	return buf, nil
}

// scanFlat calls fn for every key stored flat under the prefix. Only
// entries exactly one valid segment below the prefix are ours: a nested
// namespace keeps its own entries deeper down.
func (f *kvStore) scanFlat(keysOnly bool, fn func(key string, value []byte) error) error {
	return f.scanPrefix(keysOnly, func(rest string, value []byte, buf []byte) ([]byte, error) {
		if strings.Contains(rest, "/") {
			return buf, nil
		}
		return f.flatRecord(rest, value, buf, fn)
	})
}

// scanPrefix calls each for every record below the prefix, with the rest
// of its key; buf is a scratch buffer each may grow and returns, so that a
// key is decoded without an allocation of its own.
func (f *kvStore) scanPrefix(keysOnly bool, each func(rest string, value []byte, buf []byte) ([]byte, error)) error {
	res, err := f.ds.Query(context.Background(), query.Query{Prefix: f.prefix, KeysOnly: keysOnly})
	if err != nil {
		return err
	}
	defer res.Close()
	base := f.prefix + "/"
	var buf []byte
	for r := range res.Next() {
		if r.Error != nil {
			return r.Error
		}
		rest, ok := strings.CutPrefix(r.Key, base)
		if !ok || rest == "" {
			continue
		}
		if buf, err = each(rest, r.Value, buf); err != nil {
			return err
		}
	}
	return nil
}

// flatRecord decodes a flat key's segment and calls fn with it; a segment
// that is not a key's encoding (the store's own records) is skipped.
func (f *kvStore) flatRecord(seg string, value []byte, buf []byte, fn func(key string, value []byte) error) ([]byte, error) {
	raw, buf, ok := decodeSegment(seg, buf)
	if !ok || len(raw) == 0 {
		return buf, nil
	}
	return buf, fn(string(raw), value)
}

// decodeSegment decodes a key's path segment into buf (grown as needed):
// the decoded bytes alias the returned buffer.
func decodeSegment(seg string, buf []byte) (raw, grown []byte, ok bool) {
	n := keyEncoding.DecodedLen(len(seg))
	if cap(buf) < n {
		buf = make([]byte, n, max(n, 64))
	}
	m, err := keyEncoding.Decode(buf[:n], []byte(seg))
	if err != nil {
		return nil, buf, false
	}
	return buf[:m], buf, true
}
