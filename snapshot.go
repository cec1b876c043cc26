package raft

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	hraft "github.com/hashicorp/raft"
)

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
