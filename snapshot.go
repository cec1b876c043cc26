package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
)

// Snapshot captures the store in memory. Raft calls it between applies, so
// the copy is consistent; persisting then runs without blocking applies.
func (f *kvStore) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		// Raft counts the entries it handed over as applied; a snapshot
		// now would claim the ones this store refused.
		return nil, f.failed
	}
	snap := &kvSnapshot{Header: snapshotHeader{Version: snapshotVersion, Applied: f.applied}}
	err := f.scan(false, func(key string, value []byte) error {
		snap.Pairs = append(snap.Pairs, snapshotPair{Key: key, Value: value})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft: snapshot scan: %w", err)
	}
	// Key order, whatever order the datastore returns: the same data always
	// gives the same snapshot, and a backup reads in key order.
	slices.SortFunc(snap.Pairs, func(a, b snapshotPair) int { return strings.Compare(a.Key, b.Key) })
	return snap, nil
}

// Restore replaces the store with a snapshot: keys absent from the snapshot
// are gone afterwards. A snapshot no newer than what the datastore already
// holds is skipped: the local state is a later point of the same history.
// The whole restore is one datastore batch: a snapshot that does not decode
// changes nothing, and a storage error stops the store (see kvStore.failed).
func (f *kvStore) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		return f.failed
	}
	ctx := context.Background()
	var batch datastore.Batch
	var applied uint64
	// A storage error stops the store; a snapshot that does not decode
	// leaves it as it was (nothing is written before the final commit).
	var storageErr error
	storage := func(err error) error {
		if err != nil {
			storageErr = err
		}
		return err
	}
	err := readSnapshot(rc, func(h snapshotHeader) error {
		if h.Applied != 0 && h.Applied <= f.applied {
			return errSkipSnapshot
		}
		applied = h.Applied
		var err error
		if batch, err = f.ds.Batch(ctx); err != nil {
			return storage(err)
		}
		// Delete first, then put: in one batch the last operation on a key
		// wins.
		return storage(f.scan(true, func(key string, _ []byte) error {
			return batch.Delete(ctx, f.dataKey(key))
		}))
	}, func(p snapshotPair) error {
		return storage(batch.Put(ctx, f.dataKey(p.Key), p.Value))
	})
	if errors.Is(err, errSkipSnapshot) {
		return nil
	}
	if err == nil {
		var idx [8]byte
		binary.BigEndian.PutUint64(idx[:], applied)
		if err = storage(batch.Put(ctx, f.appliedKey, idx[:])); err == nil {
			err = storage(batch.Commit(ctx))
		}
	}
	if storageErr != nil {
		err = fmt.Errorf("raft: restore snapshot: %w", storageErr)
		f.stopLocked(err)
		return err
	}
	if err != nil {
		return fmt.Errorf("raft: restore snapshot: %w", err)
	}
	f.applied = applied
	if f.onReset != nil { // i14-watch
		f.onReset(applied)
	}
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
	if f.onReset != nil { // i14-watch
		f.onReset(0)
	}
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
	if err := s.writeTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raft: persist snapshot: %w", err)
	}
	return sink.Close()
}

// writeTo writes the snapshot format: the header, then every pair.
func (s *kvSnapshot) writeTo(w io.Writer) error {
	enc := cborEnc.NewEncoder(w)
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
}

// readSnapshot reads the snapshot format: header first (which may stop the
// read by returning errSkipSnapshot), then every pair.
func readSnapshot(r io.Reader, header func(snapshotHeader) error, pair func(snapshotPair) error) error {
	dec := cborDec.NewDecoder(r)
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("raft: snapshot header: %w", err)
	}
	if h.Version != snapshotVersion {
		return fmt.Errorf("raft: snapshot version %d not supported", h.Version)
	}
	if err := header(h); err != nil {
		return err
	}
	for i := uint64(0); i < h.Count; i++ {
		var p snapshotPair
		if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("raft: snapshot entry %d: %w", i, err)
		}
		if err := pair(p); err != nil {
			return err
		}
	}
	return nil
}

// errSkipSnapshot stops readSnapshot after the header, without error.
var errSkipSnapshot = errors.New("skip snapshot")

// Release frees the snapshot.
func (s *kvSnapshot) Release() {}
