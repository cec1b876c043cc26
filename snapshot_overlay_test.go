package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
)

// overlayOps is a deterministic mix of writes for entries from..to:
// overwrites, deletes, new keys, queue items, stamped and not.
func overlayOps(t *testing.T, from, to uint64) []*hraft.Log {
	t.Helper()
	var logs []*hraft.Log
	for i := from; i <= to; i++ {
		k := []byte(fmt.Sprintf("k%02d", i%37))
		var ops []cmdOp
		switch i % 6 {
		case 0, 1:
			ops = []cmdOp{{kind: opSet, key: k, value: []byte(fmt.Sprint("v", i))}}
		case 2:
			ops = []cmdOp{{kind: opMeta, value: metaValue(int64(1000+i), nil)}, {kind: opSet, key: []byte(fmt.Sprint("new", i)), value: []byte("n")}}
		case 3:
			ops = []cmdOp{{kind: opDelete, key: k}}
		case 4:
			q, err := enqueueOps("jobs", []byte(fmt.Sprint("item", i)))
			if err != nil {
				t.Fatal(err)
			}
			ops = q
		case 5:
			ops = []cmdOp{{kind: opSet, key: k, value: []byte(fmt.Sprint("w", i))}, {kind: opDelete, key: []byte(fmt.Sprint("new", i-3))}}
		}
		logs = append(logs, &hraft.Log{Index: i, Type: hraft.LogCommand, Data: encodeOps(ops)})
	}
	return logs
}

// applyLogs applies logs in batches of 7, failing on any error answer.
func applyLogs(t *testing.T, f *kvStore, logs []*hraft.Log) {
	t.Helper()
	for len(logs) > 0 {
		n := min(7, len(logs))
		for _, r := range f.ApplyBatch(logs[:n]) {
			if resp := r.(*FSMResponse); resp.Error != nil {
				t.Fatal(resp.Error)
			}
		}
		logs = logs[n:]
	}
}

// snapshotBytes writes a snapshot of f now.
func snapshotBytes(t *testing.T, f *kvStore) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pointInTime applies the first 200 operations to f and to a fresh twin,
// and returns the twin's snapshot (what a snapshot of f taken now must be)
// and the twin.
func pointInTime(t *testing.T, f *kvStore) ([]byte, *kvStore) {
	t.Helper()
	twin, _ := newTestStore(t)
	applyLogs(t, f, overlayOps(t, 1, 200))
	applyLogs(t, twin, overlayOps(t, 1, 200))
	return snapshotBytes(t, twin), twin
}

// A snapshot is the store at the point Snapshot was called, however the
// applies that follow before it is written change the keys (overwritten,
// deleted, created, queue items added): byte for byte the snapshot of a
// twin store that stopped at that point.
func TestSnapshotPointInTime(t *testing.T) {
	f, _ := newTestStore(t)
	want, twin := pointInTime(t, f)

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applyLogs(t, f, overlayOps(t, 201, 400))
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("snapshot of %d bytes differs from the twin's %d", buf.Len(), len(want))
	}
	if f.overlay != nil {
		t.Fatal("overlay still on after the snapshot was written")
	}
	// The next snapshot has everything.
	applyLogs(t, twin, overlayOps(t, 201, 400))
	if !bytes.Equal(snapshotBytes(t, f), snapshotBytes(t, twin)) {
		t.Fatal("the next snapshot differs from the twin's")
	}
}

// lazyValues is a datastore whose queries list the keys at once but read
// each value only when the scan reaches it, as a datastore without
// point-in-time iterators does; after atEach results it calls during once.
type lazyValues struct {
	datastore.Batching
	atEach int
	during func()
}

func (d *lazyValues) Query(ctx context.Context, q query.Query) (query.Results, error) {
	res, err := d.Batching.Query(ctx, query.Query{Prefix: q.Prefix, KeysOnly: true})
	if err != nil {
		return nil, err
	}
	entries, err := res.Rest()
	if err != nil {
		return nil, err
	}
	i := 0
	return query.ResultsFromIterator(q, query.Iterator{
		Next: func() (query.Result, bool) {
			for i < len(entries) {
				e := entries[i]
				i++
				if i == d.atEach && d.during != nil {
					d.during()
					d.during = nil
				}
				if q.KeysOnly {
					return query.Result{Entry: e}, true
				}
				v, err := d.Batching.Get(ctx, datastore.NewKey(e.Key))
				if errors.Is(err, datastore.ErrNotFound) {
					continue // deleted meanwhile
				}
				if err != nil {
					return query.Result{Error: err}, true
				}
				e.Value = v
				return query.Result{Entry: e}, true
			}
			return query.Result{}, false
		},
	}), nil
}

// Applies that run while the scan is under way (values read after they
// changed, keys deleted before the scan reached them) still leave the
// snapshot at its point.
func TestSnapshotPointInTimeDuringScan(t *testing.T) {
	ds := &lazyValues{Batching: dssync.MutexWrap(datastore.NewMapDatastore()), atEach: 5}
	f, err := newKVStore(ds, "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := pointInTime(t, f)

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	ds.during = func() {
		ran = true
		applyLogs(t, f, overlayOps(t, 201, 400))
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !ran {
		t.Fatal("the applies did not run during the scan")
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("snapshot of %d bytes differs from the twin's %d", buf.Len(), len(want))
	}
	g, _ := newTestStore(t)
	if err := g.Restore(nopCloser{bytes.NewBuffer(buf.Bytes())}); err != nil {
		t.Fatal(err)
	}
	if g.appliedIndex() != 200 {
		t.Fatalf("restored at %d", g.appliedIndex())
	}
}

// A restore while a snapshot persists fails that snapshot (its point is
// gone) and leaves no overlay behind; a second snapshot while the first is
// open is copied whole, and both are their own points.
func TestSnapshotOverlayRestoreAndNesting(t *testing.T) {
	f, _ := newTestStore(t)
	applyLogs(t, f, overlayOps(t, 1, 50))
	at50 := snapshotBytes(t, f)

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(nopCloser{bytes.NewBuffer(at50[:len(at50):len(at50)])}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); !errors.Is(err, errSnapshotOverwritten) {
		t.Fatalf("snapshot across a restore: %v", err)
	}
	snap.Release()
	if f.overlay != nil {
		t.Fatal("overlay left on")
	}

	first, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applyLogs(t, f, overlayOps(t, 51, 80))
	second, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if second.(*kvSnapshot).overlay != nil {
		t.Fatal("a second overlay was started while the first is open")
	}
	applyLogs(t, f, overlayOps(t, 81, 120))
	var b1, b2 bytes.Buffer
	if err := first.(*kvSnapshot).writeTo(&b1); err != nil {
		t.Fatal(err)
	}
	if err := second.(*kvSnapshot).writeTo(&b2); err != nil {
		t.Fatal(err)
	}
	first.Release()
	second.Release()
	twin, _ := newTestStore(t)
	applyLogs(t, twin, overlayOps(t, 1, 50))
	if !bytes.Equal(b1.Bytes(), snapshotBytes(t, twin)) {
		t.Fatal("first snapshot is not the store at 50")
	}
	applyLogs(t, twin, overlayOps(t, 51, 80))
	if !bytes.Equal(b2.Bytes(), snapshotBytes(t, twin)) {
		t.Fatal("second snapshot is not the store at 80")
	}

	// Released unwritten, a snapshot stops its overlay.
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s.Release()
	if f.overlay != nil {
		t.Fatal("overlay left on by an unwritten snapshot")
	}
}

// BenchmarkSnapshotStall: how long Snapshot holds the applies of a store of
// 100,000 keys (what Raft waits for on its apply goroutine), with the
// overlay (point) against a whole copy under the lock (copy: what every
// snapshot did before the overlay, and what a second snapshot taken while
// one persists still does), and what writing it then takes (write-ms).
func BenchmarkSnapshotStall(b *testing.B) {
	f, _ := newTestStore(b)
	const keys = 100_000
	var logs []*hraft.Log
	val := make([]byte, 100)
	for i := uint64(1); i <= keys; i++ {
		logs = append(logs, &hraft.Log{Index: i, Type: hraft.LogCommand,
			Data: encodeOps([]cmdOp{{kind: opSet, key: []byte(fmt.Sprint("bench/", i)), value: val}})})
		if len(logs) == 64 || i == keys {
			f.ApplyBatch(logs)
			logs = logs[:0]
		}
	}
	var point, whole, write time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		s1, err := f.Snapshot()
		point += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		s2, err := f.Snapshot() // s1's overlay is on: copied whole
		whole += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if err := s1.(*kvSnapshot).writeTo(io.Discard); err != nil {
			b.Fatal(err)
		}
		write += time.Since(start)
		s1.Release()
		s2.Release()
		n++
	}
	b.ReportMetric(float64(point.Microseconds())/float64(n), "point-lock-us")
	b.ReportMetric(float64(whole.Microseconds())/float64(n), "copy-lock-us")
	b.ReportMetric(float64(write.Milliseconds())/float64(n), "write-ms")
	b.ReportMetric(float64(whole)/float64(point), "lock-x:copy/point")
}
