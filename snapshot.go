package raft

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
)

// Snapshot records the store's point: Raft calls it between applies, and
// the pairs are read as they were at that point when the snapshot is
// written, beside the applies that follow (snapshot_overlay.go).
func (f *kvStore) Snapshot() (hraft.FSMSnapshot, error) {
	start := f.metrics.start()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		// Raft counts the entries it handed over as applied; a snapshot
		// now would claim the ones this store refused.
		return nil, f.failed
	}
	snap := &kvSnapshot{Header: snapshotHeader{Version: snapshotVersion, Applied: f.applied, Clock: f.clockNanos, Epoch: f.epoch},
		started: start, metrics: f.metrics}
	if snap.overlay = f.startOverlay(); snap.overlay != nil {
		// The pairs are read when the snapshot is written, beside the
		// applies (snapshot_overlay.go).
		snap.store = f
	} else if err := f.scan(false, appendPair(&snap.Pairs)); err != nil {
		// Another snapshot is still persisting: this one is copied now.
		return nil, fmt.Errorf("raft: snapshot scan: %w", err)
	} else {
		sortPairs(snap.Pairs)
	}
	for id, c := range f.requests.clients {
		snap.Requests = append(snap.Requests, snapshotRequest{Client: id[:], Record: encodeClientRecord(c)})
	}
	slices.SortFunc(snap.Requests, func(a, b snapshotRequest) int { return bytes.Compare(a.Client, b.Client) })
	for id, l := range f.leases.leases {
		snap.Leases = append(snap.Leases, snapshotLease{ID: uint64(id), Record: encodeLeaseRecord(l)})
	}
	slices.SortFunc(snap.Leases, func(a, b snapshotLease) int { return cmp.Compare(a.ID, b.ID) })
	return snap, nil
}

// appendPair is a scan callback that adds each key's entry to pairs.
func appendPair(pairs *[]snapshotPair) func(key string, value []byte) error {
	return func(key string, value []byte) error {
		e, err := decodeEntry(value)
		if err != nil {
			return fmt.Errorf("%w (key %q)", err, key)
		}
		*pairs = append(*pairs, snapshotPair{Key: key, Value: e.Value, CreateIndex: e.CreateIndex, ModIndex: e.ModIndex, Lease: uint64(e.Lease)})
		return nil
	}
}

// sortPairs puts pairs in key order, whatever order the datastore returned
// them in: the same data always gives the same snapshot, and a backup reads
// in key order.
func sortPairs(pairs []snapshotPair) {
	slices.SortFunc(pairs, func(a, b snapshotPair) int { return strings.Compare(a.Key, b.Key) })
}

// Restore replaces the store with a snapshot: keys absent from the snapshot
// are gone afterwards. A snapshot no newer than what the datastore already
// holds is skipped: the local state is a later point of the same history.
// The whole restore is one datastore batch: a snapshot that does not decode
// changes nothing, and a storage error stops the store (see kvStore.failed).
func (f *kvStore) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	start := f.metrics.start()
	applied, restored, err := f.restore(rc)
	if err == nil && restored {
		f.metrics.observeRestore(start)
	}
	if err == nil && restored && f.onReset != nil {
		f.onReset(applied)
	}
	if err == nil && restored && f.onEpoch != nil {
		f.onEpoch()
	}
	return err
}

func (f *kvStore) restore(rc io.Reader) (applied uint64, restored bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		return 0, false, f.failed
	}
	f.breakOverlay()
	ctx := context.Background()
	var batch datastore.Batch
	var clock, epoch uint64
	requests := newRequestTable()
	leases := newLeaseTable()
	// bound gathers the pairs' lease bindings: the leases come after the
	// pairs in the stream.
	bound := map[LeaseID][]string{}
	// A storage error stops the store; a snapshot that does not decode
	// leaves it as it was (nothing is written before the final commit).
	var storageErr error
	storage := func(err error) error {
		if err != nil {
			storageErr = err
		}
		return err
	}
	err = readSnapshot(rc, snapshotReader{
		header: func(h snapshotHeader) error {
			if h.Applied != 0 && h.Applied <= f.applied {
				return errSkipSnapshot
			}
			applied, clock, epoch = h.Applied, h.Clock, h.Epoch
			var err error
			if batch, err = f.ds.Batch(ctx); err != nil {
				return storage(err)
			}
			// Delete first, then put: in one batch the last operation on
			// a key wins.
			if err := storage(f.scan(true, func(key string, _ []byte) error {
				return batch.Delete(ctx, f.dataKey(key))
			})); err != nil {
				return err
			}
			if err := storage(f.scanRequests(func(id [clientIDSize]byte, _ []byte) error {
				return batch.Delete(ctx, f.requestKey(id))
			})); err != nil {
				return err
			}
			return storage(f.scanLeases(func(id LeaseID, _ []byte) error {
				return batch.Delete(ctx, f.leaseKey(id))
			}))
		},
		pair: func(p snapshotPair) error {
			if p.Lease != 0 {
				bound[LeaseID(p.Lease)] = append(bound[LeaseID(p.Lease)], p.Key)
			}
			return storage(batch.Put(ctx, f.dataKey(p.Key), encodeEntry(p.entry())))
		},
		request: func(r snapshotRequest) error {
			id, c, err := r.decode()
			if err != nil {
				return err
			}
			if len(requests.clients) >= maxRequestClients {
				return fmt.Errorf("raft: snapshot has over %d request records", maxRequestClients)
			}
			requests.clients[id] = c
			return storage(batch.Put(ctx, f.requestKey(id), encodeClientRecord(c)))
		},
		lease: func(r snapshotLease) error {
			l, err := r.decode()
			if err != nil {
				return err
			}
			if _, dup := leases.leases[LeaseID(r.ID)]; dup || len(leases.leases) >= MaxLeases {
				return fmt.Errorf("raft: snapshot lease %d repeated or over %d leases", r.ID, MaxLeases)
			}
			leases.leases[LeaseID(r.ID)] = l
			return storage(batch.Put(ctx, f.leaseKey(LeaseID(r.ID)), encodeLeaseRecord(l)))
		},
	})
	if errors.Is(err, errSkipSnapshot) {
		return 0, false, nil
	}
	if err == nil {
		// Fresh slices for each record: a datastore may keep what it is
		// given.
		err = storage(batch.Put(ctx, f.appliedKey, binary.BigEndian.AppendUint64(nil, applied)))
		if err == nil {
			err = storage(batch.Put(ctx, f.clockKey, binary.BigEndian.AppendUint64(nil, clock)))
		}
		if err == nil {
			err = storage(batch.Put(ctx, f.epochKey, binary.BigEndian.AppendUint64(nil, epoch)))
		}
		if err == nil {
			err = storage(batch.Commit(ctx))
		}
	}
	if storageErr != nil {
		err = fmt.Errorf("raft: restore snapshot: %w", storageErr)
		f.stopLocked(err)
		return 0, false, err
	}
	if err != nil {
		return 0, false, fmt.Errorf("raft: restore snapshot: %w", err)
	}
	for id, keys := range bound {
		for _, k := range keys {
			leases.bind(id, k)
		}
	}
	f.applied, f.clockNanos, f.epoch, f.requests, f.leases = applied, clock, epoch, requests, leases
	return applied, true, nil
}

// wipe deletes every key, the request table, the clock and the applied
// index, for a member that must drop its state before joining another
// cluster.
func (f *kvStore) wipe() error {
	if err := f.wipeLocked(); err != nil {
		return err
	}
	if f.onReset != nil {
		f.onReset(0)
	}
	return nil
}

func (f *kvStore) wipeLocked() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.breakOverlay()
	ctx := context.Background()
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		return err
	}
	if err := f.scan(true, func(key string, _ []byte) error { return batch.Delete(ctx, f.dataKey(key)) }); err != nil {
		return err
	}
	if err := f.scanRequests(func(id [clientIDSize]byte, _ []byte) error { return batch.Delete(ctx, f.requestKey(id)) }); err != nil {
		return err
	}
	if err := f.scanLeases(func(id LeaseID, _ []byte) error { return batch.Delete(ctx, f.leaseKey(id)) }); err != nil {
		return err
	}
	for _, k := range []datastore.Key{f.appliedKey, f.clockKey, f.epochKey} {
		if err := batch.Delete(ctx, k); err != nil {
			return err
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return err
	}
	f.applied, f.clockNanos, f.epoch, f.requests, f.leases = 0, 0, 0, newRequestTable(), newLeaseTable()
	return nil
}

// snapshotVersion is the format snapshots are written in. Version 1
// (before versioned keys) had a header [1, applied, count] and pairs
// [key, value]; it still restores, its keys getting the snapshot's index as
// versions (see checkFormat for why that is safe). Version 2 had neither
// epoch nor lease records: it restores with epoch 0 (no leadership
// established, as such a build never wrote epoch markers) and no leases.
// Version 3 has the epoch but no lease records; it restores with no leases.
const snapshotVersion = 4

// A snapshot is a CBOR header followed by Count pairs, then Requests
// request records, streamed so that a restore never holds two copies of
// the data.
type snapshotHeader struct {
	_        struct{} `cbor:",toarray"`
	Version  uint8
	Applied  uint64
	Count    uint64
	Clock    uint64 // the state machine's clock (unix nanoseconds)
	Requests uint64 // request records after the pairs
	Epoch    uint64 // the index of the last epoch marker applied (version 3 on)
	Leases   uint64 // lease records after the request records (version 4)
}

// snapshotPair is one key's entry.
type snapshotPair struct {
	_           struct{} `cbor:",toarray"`
	Key         string
	Value       []byte
	CreateIndex uint64
	ModIndex    uint64
	Lease       uint64
}

func (p snapshotPair) entry() Entry {
	v := p.Value
	if v == nil {
		v = []byte{}
	}
	return Entry{Value: v, CreateIndex: p.CreateIndex, ModIndex: p.ModIndex, Lease: LeaseID(p.Lease)}
}

// snapshotPairV1 is a pair of version 1.
type snapshotPairV1 struct {
	_     struct{} `cbor:",toarray"`
	Key   string
	Value []byte
}

// snapshotRequest is one client's record of the request table.
type snapshotRequest struct {
	_      struct{} `cbor:",toarray"`
	Client []byte
	Record []byte
}

func (r snapshotRequest) decode() ([clientIDSize]byte, *clientRecord, error) {
	var id [clientIDSize]byte
	if len(r.Client) != clientIDSize {
		return id, nil, fmt.Errorf("raft: snapshot request record with a client ID of %d bytes", len(r.Client))
	}
	copy(id[:], r.Client)
	c, err := decodeClientRecord(r.Record)
	return id, c, err
}

// snapshotLease is one lease: its ID and its stored record (the keys bound
// to it are the pairs whose Lease names it).
type snapshotLease struct {
	_      struct{} `cbor:",toarray"`
	ID     uint64
	Record []byte
}

func (r snapshotLease) decode() (*leaseState, error) {
	if r.ID == 0 {
		return nil, errors.New("raft: snapshot lease with ID 0")
	}
	return decodeLeaseRecord(r.Record)
}

type kvSnapshot struct {
	Header   snapshotHeader
	Pairs    []snapshotPair
	Requests []snapshotRequest
	Leases   []snapshotLease

	// started is when Snapshot began, and metrics what times it to the
	// end of Persist.
	started time.Time
	metrics *clusterMetrics
	// store and overlay, when set, give the pairs, read when the snapshot
	// is written (Pairs is empty until then; see snapshot_overlay.go).
	store   *kvStore
	overlay *snapshotOverlay
}

// Persist writes the snapshot to the sink.
func (s *kvSnapshot) Persist(sink hraft.SnapshotSink) error {
	if err := s.writeTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raft: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return err
	}
	s.metrics.observeSnapshot(s.started)
	return nil
}

// writeTo writes the snapshot format: the header, every pair, every request
// record.
func (s *kvSnapshot) writeTo(w io.Writer) error {
	if s.overlay != nil {
		pairs, err := s.store.pairsAt(s.overlay)
		s.store, s.overlay = nil, nil
		if err != nil {
			return err
		}
		sortPairs(pairs)
		s.Pairs = pairs
	}
	enc := cborEnc.NewEncoder(w)
	h := s.Header
	h.Count = uint64(len(s.Pairs))
	h.Requests = uint64(len(s.Requests))
	h.Leases = uint64(len(s.Leases))
	if err := enc.Encode(&h); err != nil {
		return err
	}
	for i := range s.Pairs {
		if err := enc.Encode(&s.Pairs[i]); err != nil {
			return err
		}
	}
	for i := range s.Requests {
		if err := enc.Encode(&s.Requests[i]); err != nil {
			return err
		}
	}
	for i := range s.Leases {
		if err := enc.Encode(&s.Leases[i]); err != nil {
			return err
		}
	}
	return nil
}

// snapshotReader takes what readSnapshot reads. header may stop the read by
// returning errSkipSnapshot; request and lease may be nil (the records are
// then read and dropped).
type snapshotReader struct {
	header  func(snapshotHeader) error
	pair    func(snapshotPair) error
	request func(snapshotRequest) error
	lease   func(snapshotLease) error
}

// readSnapshot reads the snapshot format, of version 1 to 4.
func readSnapshot(r io.Reader, rd snapshotReader) error {
	dec := cborDec.NewDecoder(r)
	// Both versions' headers are arrays of unsigned integers, of different
	// lengths: read it as such, then by its version.
	var raw []uint64
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("raft: snapshot header: %w", err)
	}
	var h snapshotHeader
	switch {
	case len(raw) == 3 && raw[0] == 1:
		h = snapshotHeader{Version: 1, Applied: raw[1], Count: raw[2]}
	case len(raw) == 5 && raw[0] == 2:
		h = snapshotHeader{Version: 2, Applied: raw[1], Count: raw[2], Clock: raw[3], Requests: raw[4]}
	case len(raw) == 6 && raw[0] == 3:
		h = snapshotHeader{Version: 3, Applied: raw[1], Count: raw[2], Clock: raw[3], Requests: raw[4], Epoch: raw[5]}
	case len(raw) == 7 && raw[0] == 4:
		h = snapshotHeader{Version: 4, Applied: raw[1], Count: raw[2], Clock: raw[3], Requests: raw[4], Epoch: raw[5], Leases: raw[6]}
	case len(raw) > 0:
		return fmt.Errorf("raft: snapshot version %d not supported", raw[0])
	default:
		return errors.New("raft: snapshot header: empty")
	}
	if err := rd.header(h); err != nil {
		return err
	}
	legacyIndex := max(h.Applied, 1)
	for i := uint64(0); i < h.Count; i++ {
		var p snapshotPair
		if h.Version == 1 {
			var old snapshotPairV1
			if err := dec.Decode(&old); err != nil {
				return fmt.Errorf("raft: snapshot entry %d: %w", i, err)
			}
			p = snapshotPair{Key: old.Key, Value: old.Value, CreateIndex: legacyIndex, ModIndex: legacyIndex}
		} else if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("raft: snapshot entry %d: %w", i, err)
		}
		if err := validateKey(p.Key); err != nil {
			return fmt.Errorf("raft: snapshot entry %d: %w", i, err)
		}
		if err := rd.pair(p); err != nil {
			return err
		}
	}
	for i := uint64(0); i < h.Requests; i++ {
		var q snapshotRequest
		if err := dec.Decode(&q); err != nil {
			return fmt.Errorf("raft: snapshot request record %d: %w", i, err)
		}
		if rd.request != nil {
			if err := rd.request(q); err != nil {
				return err
			}
		}
	}
	for i := uint64(0); i < h.Leases; i++ {
		var q snapshotLease
		if err := dec.Decode(&q); err != nil {
			return fmt.Errorf("raft: snapshot lease record %d: %w", i, err)
		}
		if rd.lease != nil {
			if err := rd.lease(q); err != nil {
				return err
			}
		}
	}
	return nil
}

// errSkipSnapshot stops readSnapshot after the header, without error.
var errSkipSnapshot = errors.New("skip snapshot")

// Release frees the snapshot, and stops its overlay if it was never
// written.
func (s *kvSnapshot) Release() {
	if s.overlay != nil {
		s.store.endOverlay(s.overlay)
		s.store, s.overlay = nil, nil
	}
}
