package raft

// How a key's Entry is stored in the datastore, and the upgrade of a store
// written before entries had versions (raw values).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ipfs/go-datastore"
)

// entryRecordVersion is the first byte of a stored entry. A record is that
// byte, then CreateIndex, ModIndex and Lease as unsigned varints, then the
// value's bytes: a few bytes over the value, and the value needs no copy to
// be cut out.
const entryRecordVersion = 1

// dataFormat is the layout of the data records, kept under formatSegment.
// A store without the record is from before entries (raw values), and is
// upgraded when it is opened (see migrateLegacy). Format 3 keeps queue keys
// in their own subspace (see queue_store.go); a format 2 store is upgraded
// by moving any such key there (see migrateQueueKeys), and a build of
// format 2 refuses a format 3 store rather than miss its queue keys.
const (
	dataFormat    = 3
	formatSegment = "_format"
)

// encodeEntry is the stored form of an entry.
func encodeEntry(e Entry) []byte {
	// Exactly the record's size: every stored key keeps its record (on an
	// in-memory datastore, and in the watch history), and room for the
	// largest varints would move a 100-byte value up a size class.
	b := make([]byte, 0, 1+uvarintLen(e.CreateIndex)+uvarintLen(e.ModIndex)+uvarintLen(uint64(e.Lease))+len(e.Value))
	b = append(b, entryRecordVersion)
	b = binary.AppendUvarint(b, e.CreateIndex)
	b = binary.AppendUvarint(b, e.ModIndex)
	b = binary.AppendUvarint(b, uint64(e.Lease))
	return append(b, e.Value...)
}

// errCorruptEntry: a stored record that is not an entry.
var errCorruptEntry = errors.New("raft: corrupt entry record")

// decodeEntry reads a stored entry; its Value aliases b.
func decodeEntry(b []byte) (Entry, error) {
	if len(b) == 0 || b[0] != entryRecordVersion {
		return Entry{}, errCorruptEntry
	}
	b = b[1:]
	var e Entry
	var lease uint64
	for _, p := range []*uint64{&e.CreateIndex, &e.ModIndex, &lease} {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return Entry{}, errCorruptEntry
		}
		*p, b = v, b[n:]
	}
	e.Lease = LeaseID(lease)
	e.Value = b
	return e, nil
}

// checkFormat makes sure the data is in the current format: a store with
// no format record is either new, or written by a build from before entries
// had versions, whose raw values become entries in one batch. Their true
// indexes are lost; both become the applied index, which is not older than
// the write that made them, so a condition on them stays safe (it may fail
// where the true index would have held, never the reverse).
func (f *kvStore) checkFormat() error {
	ctx := context.Background()
	b, err := f.ds.Get(ctx, f.formatKey)
	switch {
	case err == nil && len(b) == 1 && b[0] == dataFormat:
		return nil
	case err == nil && len(b) == 1 && b[0] == 2:
		return f.migrateQueueKeys(ctx)
	case err == nil:
		return fmt.Errorf("raft: data format %x not supported by this build", b)
	case !errors.Is(err, datastore.ErrNotFound):
		return fmt.Errorf("raft: reading data format: %w", err)
	}
	return f.migrateLegacy(ctx)
}

// migrateLegacy rewrites raw values as entries and records the format.
func (f *kvStore) migrateLegacy(ctx context.Context) error {
	idx := max(f.applied, 1)
	return f.rewriteFlat(ctx, func(key string, value []byte) ([]byte, bool) {
		return encodeEntry(Entry{Value: value, CreateIndex: idx, ModIndex: idx}), true
	})
}

// migrateQueueKeys moves the keys that format 3 keeps in the queue
// subspace (written as plain keys by an older build) there.
func (f *kvStore) migrateQueueKeys(ctx context.Context) error {
	return f.rewriteFlat(ctx, func(key string, value []byte) ([]byte, bool) {
		_, _, nested := nestedSplit([]byte(key))
		return value, nested
	})
}

// rewriteFlat puts every flat record that rewrite selects, as rewrite
// returns it, where the current format keeps its key (deleting the flat
// record when that is elsewhere), and records the format: one batch.
func (f *kvStore) rewriteFlat(ctx context.Context, rewrite func(key string, value []byte) ([]byte, bool)) error {
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return err
	}
	err = f.scanFlat(false, func(key string, value []byte) error {
		rec, ok := rewrite(key, value)
		if !ok {
			return nil
		}
		flat, dk := f.flatKey([]byte(key)), f.dataKey(key)
		if dk != flat {
			if err := batch.Delete(ctx, flat); err != nil {
				return err
			}
		}
		return batch.Put(ctx, dk, rec)
	})
	if err != nil {
		return fmt.Errorf("raft: upgrading data: %w", err)
	}
	if err := batch.Put(ctx, f.formatKey, []byte{dataFormat}); err != nil {
		return err
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("raft: upgrading data: %w", err)
	}
	return nil
}
