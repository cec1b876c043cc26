package raft

// A snapshot's point-in-time view without stopping the applies.
//
// Raft calls Snapshot between applies, on the goroutine that applies, and
// expects it to return at once; Persist then runs beside the applies. The
// generic datastore interface has no snapshots of its own, and copying every
// key under the apply lock (as this store used to) stalls the applies of
// every member for a time that grows with the data: with 100,000 keys the
// copy held the lock for about 225 ms per snapshot, against about 15 µs for
// recording the point (BenchmarkSnapshotStall).
//
// So Snapshot only records the point (applied index, clock, epoch, and the
// request and lease tables, which are bounded and in memory) and starts an
// overlay. While the overlay is on, the first write of an apply batch to any
// datastore key first keeps what that key held (its record, or its
// absence): that is its content at the snapshot's point, since every
// earlier write came before the point. Persist scans the datastore without
// the lock, then takes the overlay and stops it: a key the overlay kept is
// written as kept (or left out, if it did not exist), whatever the scan
// read; every other key was not written between the point and the end of
// the scan, so the scan read it as it was at the point.
//
// The overlay holds one record per key written while a snapshot persists:
// at most the data's size, as the copy it replaces always did. A restore or
// a wipe while it is on (rewriting every key) breaks it, and the snapshot
// fails to persist; Raft tries again later.

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/ipfs/go-datastore"
)

// errSnapshotOverwritten: the store was restored or wiped while a snapshot
// was persisting, so the snapshot's point can no longer be read.
var errSnapshotOverwritten = errors.New("raft: the store was restored or wiped while the snapshot was being written")

// snapshotOverlay keeps, for one persisting snapshot, what each key written
// since its point held at the point.
type snapshotOverlay struct {
	mu sync.Mutex
	// before maps a datastore key to its record at the point (absent:
	// exists false).
	before map[string]keptRecord
	// broken, once set, fails the snapshot.
	broken error
}

// keptRecord is a key's record at a snapshot's point.
type keptRecord struct {
	value  []byte
	exists bool
}

func newSnapshotOverlay() *snapshotOverlay {
	return &snapshotOverlay{before: map[string]keptRecord{}}
}

// keep records what k holds in ds, unless it was recorded already. The
// applies (one batch at a time, under the store's lock) are its only
// callers, so no other write to k can come between the read and the
// record.
func (o *snapshotOverlay) keep(ctx context.Context, ds datastore.Read, k datastore.Key) error {
	name := k.String()
	o.mu.Lock()
	_, done := o.before[name]
	// Taken or broken (nil): what the key held no longer matters.
	done = done || o.before == nil
	o.mu.Unlock()
	if done {
		return nil
	}
	v, err := ds.Get(ctx, k)
	rec := keptRecord{value: v, exists: err == nil}
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return err
	}
	o.mu.Lock()
	if o.before != nil {
		o.before[name] = rec
	}
	o.mu.Unlock()
	return nil
}

// take returns what the overlay kept and stops it from keeping more (the
// map is the caller's from then on), or the error that broke it.
func (o *snapshotOverlay) take() (map[string]keptRecord, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.broken != nil {
		return nil, o.broken
	}
	kept := o.before
	o.before = nil
	return kept, nil
}

// breakWith fails the snapshot with err.
func (o *snapshotOverlay) breakWith(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.broken == nil {
		o.broken = err
	}
	o.before = nil
}

// overlayBatch is an apply batch that keeps what each key held before its
// first write while a snapshot persists.
type overlayBatch struct {
	datastore.Batch
	ds datastore.Read
	ov *snapshotOverlay
}

// Put keeps k's record at the point, then puts.
func (b *overlayBatch) Put(ctx context.Context, k datastore.Key, v []byte) error {
	if err := b.ov.keep(ctx, b.ds, k); err != nil {
		return err
	}
	return b.Batch.Put(ctx, k, v)
}

// Delete keeps k's record at the point, then deletes.
func (b *overlayBatch) Delete(ctx context.Context, k datastore.Key) error {
	if err := b.ov.keep(ctx, b.ds, k); err != nil {
		return err
	}
	return b.Batch.Delete(ctx, k)
}

// startOverlay starts an overlay for a snapshot taken now; nil when one is
// on already (that snapshot is still persisting: the new one is copied
// whole instead). Called with f.mu held.
func (f *kvStore) startOverlay() *snapshotOverlay {
	if f.overlay != nil {
		return nil
	}
	f.overlay = newSnapshotOverlay()
	return f.overlay
}

// endOverlay stops o, if it is still the store's. Called without f.mu.
func (f *kvStore) endOverlay(o *snapshotOverlay) {
	f.mu.Lock()
	if f.overlay == o {
		f.overlay = nil
	}
	f.mu.Unlock()
}

// breakOverlay fails the persisting snapshot, if any, before every key is
// rewritten (a restore, a wipe). Called with f.mu held.
func (f *kvStore) breakOverlay() {
	if f.overlay != nil {
		f.overlay.breakWith(errSnapshotOverwritten)
		f.overlay = nil
	}
}

// pairsAt reads the pairs of the store at o's point: a scan without the
// lock, corrected by what o kept. It ends o.
func (f *kvStore) pairsAt(o *snapshotOverlay) ([]snapshotPair, error) {
	defer f.endOverlay(o)
	var pairs []snapshotPair
	if err := f.scan(false, appendPair(&pairs)); err != nil {
		return nil, err
	}
	kept, err := o.take()
	if err != nil {
		return nil, err
	}
	if len(kept) == 0 {
		return pairs, nil
	}
	// The keys the overlay kept, as the scan names them: their scanned
	// records go, their kept ones (if any) come in.
	var keptPairs []snapshotPair
	replaced := map[string]struct{}{}
	base := f.prefix + "/"
	var buf []byte
	for name, rec := range kept {
		rest, ok := strings.CutPrefix(name, base)
		if !ok {
			continue
		}
		buf, err = f.scanRecord(rest, nil, buf, func(key string, _ []byte) error {
			replaced[key] = struct{}{}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if rec.exists {
			if buf, err = f.scanRecord(rest, rec.value, buf, appendPair(&keptPairs)); err != nil {
				return nil, err
			}
		}
	}
	out := pairs[:0]
	for _, p := range pairs {
		if _, gone := replaced[p.Key]; !gone {
			out = append(out, p)
		}
	}
	return append(out, keptPairs...), nil
}
