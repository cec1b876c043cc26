package raft

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	hraft "github.com/hashicorp/raft"
	datastore "github.com/ipfs/go-datastore"
)

// errStableNotFound is returned for a missing key. Its text must stay exactly
// "not found": hashicorp/raft (api.go, raft.go) detects a fresh store by
// comparing err.Error() with that string, not by identity.
var errStableNotFound = errors.New("not found")

// StableStore is a hashicorp/raft StableStore (current term, vote) persisted
// in a go-datastore under a key prefix. Writes are rare (elections) but must
// survive a crash, so each one is followed by a datastore Sync.
type StableStore struct {
	ds     datastore.Batching
	prefix string
}

var _ hraft.StableStore = (*StableStore)(nil)

// NewStableStore returns a StableStore keeping its values under prefix (a
// clean key path such as "/raft/cron/stable", without a trailing slash). Each
// raft key becomes prefix + "/" + hex(key), so arbitrary key bytes map to one
// clean path segment. The store holds no state of its own, so it is cheap to
// create.
func NewStableStore(ds datastore.Batching, prefix string) *StableStore {
	// Normalise rather than fail (the signature has no error): a sloppy
	// prefix must not make datastore.RawKey panic later.
	clean := datastore.NewKey(prefix).String()
	if clean == "/" {
		clean = ""
	}
	return &StableStore{ds: ds, prefix: clean}
}

// dsKey maps a raft key to its datastore key. An empty key is refused because
// it would yield prefix + "/", which is not a valid datastore key.
func (s *StableStore) dsKey(key []byte) (datastore.Key, error) {
	if len(key) == 0 {
		return datastore.Key{}, errors.New("raft: stable store: empty key")
	}
	return datastore.RawKey(s.prefix + "/" + hex.EncodeToString(key)), nil
}

// Set stores val under key and syncs it to stable storage.
func (s *StableStore) Set(key []byte, val []byte) error {
	k, err := s.dsKey(key)
	if err != nil {
		return err
	}
	ctx := context.Background()
	// Copy: some datastores (the map datastore) keep the caller's slice.
	if err := s.ds.Put(ctx, k, bytes.Clone(val)); err != nil {
		return fmt.Errorf("raft: stable store set %q: %w", key, err)
	}
	if err := s.ds.Sync(ctx, k); err != nil {
		return fmt.Errorf("raft: stable store sync %q: %w", key, err)
	}
	return nil
}

// Get returns the value stored under key, or errStableNotFound (text "not
// found", which raft treats as "fresh store") when there is none.
func (s *StableStore) Get(key []byte) ([]byte, error) {
	k, err := s.dsKey(key)
	if err != nil {
		return nil, err
	}
	val, err := s.ds.Get(context.Background(), k)
	if err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return nil, errStableNotFound
		}
		return nil, fmt.Errorf("raft: stable store get %q: %w", key, err)
	}
	// Copy: the map datastore hands out the slice it stores.
	return bytes.Clone(val), nil
}

// SetUint64 stores val as 8 big-endian bytes under key.
func (s *StableStore) SetUint64(key []byte, val uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], val)
	return s.Set(key, buf[:])
}

// GetUint64 returns the uint64 stored under key. A missing key yields 0 and
// errStableNotFound, which raft accepts as "never set".
func (s *StableStore) GetUint64(key []byte) (uint64, error) {
	val, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("raft: stable store key %q: want 8-byte uint64, got %d bytes", key, len(val))
	}
	return binary.BigEndian.Uint64(val), nil
}
