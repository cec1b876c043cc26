package raft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// fixtureV1 is what testdata/snapshot-v1.bin holds: a snapshot written by
// the format of before versioned keys (version 1), at applied index 42.
var fixtureV1 = map[string][]byte{
	"a":     []byte("alpha"),
	"a//b":  {},
	"dir/x": []byte("x-value"),
	"ünï":   {0, 1, 2, 255},
}

// A snapshot written by the version-1 format restores: every key with its
// value, versioned at the snapshot's index, and the store goes on applying.
func TestRestoreSnapshotV1Fixture(t *testing.T) {
	b, err := os.ReadFile("testdata/snapshot-v1.bin")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := newTestStore(t)
	if _, err := applyAt(t, f, 1, mustTxn(t, Txn{Then: []Op{SetOp("stale", []byte("x"))}})); err != nil {
		t.Fatal(err)
	}
	var resets []uint64
	f.onReset = func(applied uint64) { resets = append(resets, applied) }
	if err := f.Restore(nopCloser{bytes.NewBuffer(b)}); err != nil {
		t.Fatal(err)
	}
	if f.appliedIndex() != 42 || !reflect.DeepEqual(resets, []uint64{42}) {
		t.Fatalf("applied %d, resets %v", f.appliedIndex(), resets)
	}
	keys, _ := f.keys("")
	if len(keys) != len(fixtureV1) {
		t.Fatalf("keys %q", keys)
	}
	for k, v := range fixtureV1 {
		e, ok, err := f.getEntry(k)
		if err != nil || !ok || !bytes.Equal(e.Value, v) || e.CreateIndex != 42 || e.ModIndex != 42 {
			t.Errorf("%q: %+v %v %v", k, e, ok, err)
		}
	}
	res, err := applyAt(t, f, 43, mustTxn(t, Txn{If: []Cond{IfModIndex("a", 42)}, Then: []Op{SetOp("a", []byte("new"))}}))
	if err != nil || !res.OK {
		t.Fatalf("txn on a restored key: %+v %v", res, err)
	}
	// ReadBackup reads both versions.
	n := 0
	if err := ReadBackup(bytes.NewReader(b), func(key string, value []byte) error {
		if !bytes.Equal(fixtureV1[key], value) {
			t.Errorf("backup %q: %q", key, value)
		}
		n++
		return nil
	}); err != nil || n != len(fixtureV1) {
		t.Fatalf("ReadBackup of v1: %d keys, %v", n, err)
	}
}

// A version-2 snapshot keeps versions, the clock and the request table.
func TestSnapshotV2RoundTrip(t *testing.T) {
	f, _ := newTestStore(t)
	id := &requestID{client: clientN(3), seq: 1}
	cmd := encodeOps([]cmdOp{{kind: opMeta, value: metaValue(777, id)}, {kind: opSet, key: []byte("k"), value: []byte("v")}})
	if _, err := applyAt(t, f, 3, cmd); err != nil {
		t.Fatal(err)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	g, _ := newTestStore(t)
	if err := g.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := g.getEntry("k"); e.CreateIndex != 3 || e.ModIndex != 3 || string(e.Value) != "v" {
		t.Fatalf("entry %+v", e)
	}
	if g.clock() != 777 || g.appliedIndex() != 3 {
		t.Fatalf("clock %d applied %d", g.clock(), g.appliedIndex())
	}
	if _, found, _ := g.requests.lookup(*id); !found {
		t.Fatal("request table lost")
	}
}

// A datastore written before versioned keys (raw values, no format record)
// is upgraded when opened, in one batch: values kept, versioned at the
// applied index, and Get, Keys and conditions work on them.
func TestUpgradeLegacyDatastore(t *testing.T) {
	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	ctx := context.Background()
	const prefix = "/raft/t/data"
	probe := &kvStore{prefix: prefix}
	for k, v := range fixtureV1 {
		if err := ds.Put(ctx, probe.dataKey(k), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.Put(ctx, datastore.NewKey(prefix+"/"+appliedSegment), binary.BigEndian.AppendUint64(nil, 17)); err != nil {
		t.Fatal(err)
	}
	// A nested namespace's data is not ours to rewrite.
	nested := datastore.NewKey(prefix + "/deeper/data/" + "C5")
	if err := ds.Put(ctx, nested, []byte("raw")); err != nil {
		t.Fatal(err)
	}
	f, err := newKVStore(ds, prefix)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range fixtureV1 {
		e, ok, err := f.getEntry(k)
		if err != nil || !ok || !bytes.Equal(e.Value, v) || e.ModIndex != 17 || e.CreateIndex != 17 {
			t.Errorf("%q: %+v %v %v", k, e, ok, err)
		}
		if got, ok := mustGet(t, f, k); !ok || !bytes.Equal(got, v) {
			t.Errorf("get %q: %q", k, got)
		}
	}
	if raw, _ := ds.Get(ctx, nested); string(raw) != "raw" {
		t.Errorf("nested namespace's record rewritten: %q", raw)
	}
	// Opening again changes nothing (the format record is there).
	before, _ := ds.Get(ctx, probe.dataKey("a"))
	if _, err := newKVStore(ds, prefix); err != nil {
		t.Fatal(err)
	}
	if after, _ := ds.Get(ctx, probe.dataKey("a")); !bytes.Equal(before, after) {
		t.Fatal("second open rewrote the data")
	}
	res, err := applyAt(t, f, 18, mustTxn(t, Txn{If: []Cond{IfModIndex("dir/x", 17)}, Then: []Op{DeleteOp("dir/x")}}))
	if err != nil || !res.OK {
		t.Fatalf("txn on an upgraded key: %+v %v", res, err)
	}
}

func mustGet(t *testing.T, f *kvStore, k string) ([]byte, bool) {
	t.Helper()
	v, ok, err := f.get(k)
	if err != nil {
		t.Fatal(err)
	}
	return v, ok
}

func FuzzReadSnapshot(f *testing.F) {
	if b, err := os.ReadFile("testdata/snapshot-v1.bin"); err == nil {
		f.Add(b)
	}
	var buf bytes.Buffer
	snap := &kvSnapshot{
		Header:   snapshotHeader{Version: snapshotVersion, Applied: 9, Clock: 5},
		Pairs:    []snapshotPair{{Key: "k", Value: []byte("v"), CreateIndex: 2, ModIndex: 9}},
		Requests: []snapshotRequest{{Client: make([]byte, clientIDSize), Record: encodeClientRecord(&clientRecord{last: 9, results: []reqResult{{seq: 1, ok: true, index: 9}}})}},
	}
	if err := snap.writeTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	buf.Reset()
	snap.Leases = []snapshotLease{{ID: 2, Record: encodeLeaseRecord(&leaseState{ttl: time.Minute, touch: 2})}}
	snap.Pairs[0].Lease = 2
	if err := snap.writeTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		// Whatever it reads is a valid key, and a store restores it or
		// refuses it whole.
		leases := map[uint64]bool{}
		err := readSnapshot(bytes.NewReader(b), snapshotReader{
			header: func(snapshotHeader) error { return nil },
			pair: func(p snapshotPair) error {
				if validateKey(p.Key) != nil {
					t.Fatalf("invalid key %q passed", p.Key)
				}
				return nil
			},
			request: func(r snapshotRequest) error { _, _, err := r.decode(); return err },
			lease: func(r snapshotLease) error {
				if _, err := r.decode(); err != nil {
					return err
				}
				if _, dup := leases[r.ID]; dup {
					return errors.New("repeated lease")
				}
				leases[r.ID] = true
				return nil
			},
		})
		st, _ := newTestStore(t)
		if rerr := st.Restore(nopCloser{bytes.NewBuffer(b)}); (rerr == nil) != (err == nil) && !strings.Contains(fmt.Sprint(rerr), "request records") {
			t.Fatalf("read %v, restore %v", err, rerr)
		}
		if err != nil {
			if keys, _ := st.keys(""); len(keys) != 0 {
				t.Fatalf("a refused snapshot left keys %q", keys)
			}
		}
	})
}
