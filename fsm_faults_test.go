package raft

// Failing disks: a fault-injecting datastore (faultyDS, switched by a
// faultSwitch) under the key-value state machine alone, and under one member
// of a three-member cluster. A replica never skips an entry: when a write or
// commit of the state machine fails, or an entry holds an operation it does
// not know, the member stops, says why, and never serves a read past the
// failure; the others carry on, and the member, started again on a working
// disk, catches up with nothing lost.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// ---- the fault-injecting datastore ----

// errInjectedFault is the cause of every failure a faultSwitch injects,
// except the disk-full one (syscall.ENOSPC).
var errInjectedFault = errors.New("faultds: injected write failure")

type faultMode int

const (
	faultOff faultMode = iota
	// faultNthPut fails the n-th Put (direct or batched) under the prefix,
	// once; the writes around it succeed.
	faultNthPut
	// faultNextCommit fails the next Commit of a batch that touches the
	// prefix, once; nothing of that batch is written.
	faultNextCommit
	// faultAfterN lets the first n writes (Put or Delete, direct or batched)
	// under the prefix through and fails every later one, and every Commit
	// of a batch touching the prefix once it has tripped.
	faultAfterN
	// faultDiskFull fails every direct Put and Delete and every Commit
	// touching the prefix with ENOSPC. Batched operations are only buffered
	// (as in pebble), so they succeed until the Commit.
	faultDiskFull
)

// faultSwitch decides which writes fail. One switch is one "disk": a faulty
// store and its unsynced view share it.
type faultSwitch struct {
	mu       sync.Mutex
	mode     faultMode
	n        int
	prefix   string // only keys starting with it are faulted ("" for every key)
	count    int    // Puts (faultNthPut) or writes (faultAfterN) seen since armed
	injected int    // failures injected, ever
}

// arm switches to mode for the keys under prefix, counting from zero.
func (s *faultSwitch) arm(mode faultMode, n int, prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode, s.n, s.prefix, s.count = mode, n, prefix, 0
}

// heal stops injecting failures.
func (s *faultSwitch) heal() { s.arm(faultOff, 0, "") }

// injectedCount is how many failures the switch has injected.
func (s *faultSwitch) injectedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.injected
}

func (s *faultSwitch) covers(k datastore.Key) bool {
	return strings.HasPrefix(k.String(), s.prefix)
}

// diskFullError is what a write to a full disk returns.
func diskFullError(op string, k datastore.Key) error {
	return fmt.Errorf("faultds: %s %s: %w", op, k, &fs.PathError{Op: "write", Path: "/faultds/000042.log", Err: syscall.ENOSPC})
}

// write decides the fate of a Put or Delete of k (batched: inside a Batch).
func (s *faultSwitch) write(op string, k datastore.Key, batched bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == faultOff || !s.covers(k) {
		return nil
	}
	var err error
	switch s.mode {
	case faultNthPut:
		if op == "put" {
			s.count++
			if s.count == s.n {
				err = fmt.Errorf("faultds: put %s (put %d): %w", k, s.count, errInjectedFault)
			}
		}
	case faultAfterN:
		s.count++
		if s.count > s.n {
			err = fmt.Errorf("faultds: %s %s (write %d, limit %d): %w", op, k, s.count, s.n, errInjectedFault)
		}
	case faultDiskFull:
		if !batched {
			err = diskFullError(op, k)
		}
	}
	if err != nil {
		s.injected++
	}
	return err
}

// commit decides the fate of the Commit of a batch holding keys.
func (s *faultSwitch) commit(keys []datastore.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == faultOff {
		return nil
	}
	var touched datastore.Key
	found := false
	for _, k := range keys {
		if s.covers(k) {
			touched, found = k, true
			break
		}
	}
	if !found {
		return nil
	}
	var err error
	switch s.mode {
	case faultNextCommit:
		err = fmt.Errorf("faultds: commit of %d operations: %w", len(keys), errInjectedFault)
		s.mode = faultOff
	case faultAfterN:
		if s.count > s.n {
			err = fmt.Errorf("faultds: commit after write limit %d: %w", s.n, errInjectedFault)
		}
	case faultDiskFull:
		err = diskFullError("commit", touched)
	}
	if err != nil {
		s.injected++
	}
	return err
}

// faultyDS is a datastore whose writes fail as its switch says. Reads pass
// through. It does not own inner: Close passes through, like any wrapper.
type faultyDS struct {
	inner datastore.Batching
	sw    *faultSwitch
}

// faultyUnsyncedDS is a faultyDS over a store that has an unsynced handle
// (UnsyncedStore, as p2pnode's pebble store): the handle it gives is faulty
// too, on the same switch, so faults reach the state machine.
type faultyUnsyncedDS struct {
	*faultyDS
	unsynced *faultyDS
}

func (d *faultyUnsyncedDS) Unsynced() datastore.Batching { return d.unsynced }

var (
	_ datastore.Batching = (*faultyDS)(nil)
	_ datastore.Batching = (*faultyUnsyncedDS)(nil)
	_ UnsyncedStore      = (*faultyUnsyncedDS)(nil)
)

// newFaultyDS wraps inner (and its unsynced handle, if it has one).
func newFaultyDS(inner datastore.Batching, sw *faultSwitch) datastore.Batching {
	d := &faultyDS{inner: inner, sw: sw}
	if u, ok := inner.(UnsyncedStore); ok {
		if uds := u.Unsynced(); uds != nil {
			return &faultyUnsyncedDS{faultyDS: d, unsynced: &faultyDS{inner: uds, sw: sw}}
		}
	}
	return d
}

func (d *faultyDS) Get(ctx context.Context, k datastore.Key) ([]byte, error) {
	return d.inner.Get(ctx, k)
}

func (d *faultyDS) Has(ctx context.Context, k datastore.Key) (bool, error) {
	return d.inner.Has(ctx, k)
}

func (d *faultyDS) GetSize(ctx context.Context, k datastore.Key) (int, error) {
	return d.inner.GetSize(ctx, k)
}

func (d *faultyDS) Query(ctx context.Context, q query.Query) (query.Results, error) {
	return d.inner.Query(ctx, q)
}

func (d *faultyDS) Put(ctx context.Context, k datastore.Key, v []byte) error {
	if err := d.sw.write("put", k, false); err != nil {
		return err
	}
	return d.inner.Put(ctx, k, v)
}

func (d *faultyDS) Delete(ctx context.Context, k datastore.Key) error {
	if err := d.sw.write("delete", k, false); err != nil {
		return err
	}
	return d.inner.Delete(ctx, k)
}

func (d *faultyDS) Sync(ctx context.Context, prefix datastore.Key) error {
	return d.inner.Sync(ctx, prefix)
}

func (d *faultyDS) Close() error { return d.inner.Close() }

func (d *faultyDS) Batch(ctx context.Context) (datastore.Batch, error) {
	b, err := d.inner.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &faultyBatch{inner: b, sw: d.sw}, nil
}

// faultyBatch forwards the operations its switch lets through; a failed
// Commit writes nothing.
type faultyBatch struct {
	inner datastore.Batch
	sw    *faultSwitch
	keys  []datastore.Key
}

func (b *faultyBatch) Put(ctx context.Context, k datastore.Key, v []byte) error {
	if err := b.sw.write("put", k, true); err != nil {
		return err
	}
	b.keys = append(b.keys, k)
	return b.inner.Put(ctx, k, v)
}

func (b *faultyBatch) Delete(ctx context.Context, k datastore.Key) error {
	if err := b.sw.write("delete", k, true); err != nil {
		return err
	}
	b.keys = append(b.keys, k)
	return b.inner.Delete(ctx, k)
}

func (b *faultyBatch) Commit(ctx context.Context) error {
	if err := b.sw.commit(b.keys); err != nil {
		return err
	}
	return b.inner.Commit(ctx)
}

// The switch's modes do what they say, on direct writes and in batches, only
// under the armed prefix, and stop when healed.
func TestFaultyDatastoreModes(t *testing.T) {
	ctx := context.Background()
	k := func(s string) datastore.Key { return datastore.NewKey(s) }
	newDS := func() (datastore.Batching, *faultSwitch, datastore.Batching) {
		inner := dssync.MutexWrap(datastore.NewMapDatastore())
		sw := &faultSwitch{}
		return newFaultyDS(inner, sw), sw, inner
	}
	has := func(t *testing.T, ds datastore.Batching, key string) bool {
		t.Helper()
		ok, err := ds.Has(ctx, k(key))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	t.Run("nth put", func(t *testing.T) {
		ds, sw, inner := newDS()
		sw.arm(faultNthPut, 2, "/d/")
		if err := ds.Put(ctx, k("/l/1"), nil); err != nil { // outside the prefix: not counted
			t.Fatal(err)
		}
		if err := ds.Put(ctx, k("/d/1"), nil); err != nil {
			t.Fatal(err)
		}
		b, _ := ds.Batch(ctx)
		if err := b.Put(ctx, k("/d/2"), nil); !errors.Is(err, errInjectedFault) {
			t.Fatalf("second put under the prefix: %v, want the injected failure", err)
		}
		if err := b.Put(ctx, k("/d/3"), nil); err != nil {
			t.Fatalf("third put: %v", err)
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if !has(t, inner, "/d/1") || has(t, inner, "/d/2") || !has(t, inner, "/d/3") || !has(t, inner, "/l/1") {
			t.Fatal("wrong keys written")
		}
		if sw.injectedCount() != 1 {
			t.Fatalf("injected %d failures, want 1", sw.injectedCount())
		}
	})

	t.Run("next commit", func(t *testing.T) {
		ds, sw, inner := newDS()
		sw.arm(faultNextCommit, 0, "/d/")
		b, _ := ds.Batch(ctx)
		_ = b.Put(ctx, k("/l/1"), nil)
		if err := b.Commit(ctx); err != nil { // touches no faulted key
			t.Fatal(err)
		}
		b, _ = ds.Batch(ctx)
		_ = b.Put(ctx, k("/d/1"), nil)
		_ = b.Put(ctx, k("/l/2"), nil)
		if err := b.Commit(ctx); !errors.Is(err, errInjectedFault) {
			t.Fatalf("commit: %v, want the injected failure", err)
		}
		if has(t, inner, "/d/1") || has(t, inner, "/l/2") {
			t.Fatal("a failed commit wrote something")
		}
		b, _ = ds.Batch(ctx)
		_ = b.Put(ctx, k("/d/1"), nil)
		if err := b.Commit(ctx); err != nil { // once only
			t.Fatal(err)
		}
		if !has(t, inner, "/d/1") {
			t.Fatal("commit after the failed one wrote nothing")
		}
	})

	t.Run("every write after n", func(t *testing.T) {
		ds, sw, _ := newDS()
		sw.arm(faultAfterN, 2, "")
		if err := ds.Put(ctx, k("/a"), nil); err != nil {
			t.Fatal(err)
		}
		if err := ds.Delete(ctx, k("/a")); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := ds.Put(ctx, k(fmt.Sprint("/b", i)), nil); !errors.Is(err, errInjectedFault) {
				t.Fatalf("write %d: %v, want the injected failure", 3+i, err)
			}
		}
		b, _ := ds.Batch(ctx)
		if err := b.Delete(ctx, k("/a")); !errors.Is(err, errInjectedFault) {
			t.Fatalf("batched delete: %v", err)
		}
		sw.heal()
		if err := ds.Put(ctx, k("/c"), nil); err != nil {
			t.Fatalf("after heal: %v", err)
		}
	})

	t.Run("disk full", func(t *testing.T) {
		ds, sw, inner := newDS()
		sw.arm(faultDiskFull, 0, "/d/")
		err := ds.Put(ctx, k("/d/1"), nil)
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("put on a full disk: %v", err)
		}
		if err := ds.Put(ctx, k("/l/1"), nil); err != nil {
			t.Fatalf("put outside the prefix: %v", err)
		}
		b, _ := ds.Batch(ctx)
		if err := b.Put(ctx, k("/d/2"), nil); err != nil {
			t.Fatalf("batched put (buffered): %v", err)
		}
		if err := b.Commit(ctx); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("commit on a full disk: %v", err)
		}
		if has(t, inner, "/d/1") || has(t, inner, "/d/2") {
			t.Fatal("a full disk took a write")
		}
	})

	t.Run("unsynced view shares the switch", func(t *testing.T) {
		inner := &ftUnsyncedMem{Batching: dssync.MutexWrap(datastore.NewMapDatastore())}
		sw := &faultSwitch{}
		ds := newFaultyDS(inner, sw)
		u, ok := ds.(UnsyncedStore)
		if !ok {
			t.Fatalf("%T hides its inner store's Unsynced", ds)
		}
		fu, ok := u.Unsynced().(*faultyDS)
		if !ok || fu.inner != inner.Batching {
			t.Fatalf("Unsynced gives %T, want a faulty view of the inner unsynced handle", u.Unsynced())
		}
		sw.arm(faultAfterN, 0, "/d/")
		if err := u.Unsynced().Put(ctx, k("/d/1"), nil); !errors.Is(err, errInjectedFault) {
			t.Fatalf("put through the unsynced view: %v", err)
		}
		if _, ok := newFaultyDS(dssync.MutexWrap(datastore.NewMapDatastore()), sw).(UnsyncedStore); ok {
			t.Fatal("a store without Unsynced got one")
		}
	})
}

// ftUnsyncedMem is an in-memory UnsyncedStore whose unsynced handle is the
// store itself.
type ftUnsyncedMem struct{ datastore.Batching }

func (m *ftUnsyncedMem) Unsynced() datastore.Batching { return m.Batching }

// ---- the state machine over a failing store ----

const ftPrefix = "/raft/ft/data"

// ftKV is a kvStore over a faulty in-memory store, with its onFail calls
// recorded.
type ftKV struct {
	kv    *kvStore
	sw    *faultSwitch
	inner datastore.Batching

	mu    sync.Mutex
	fails []error
}

func newFTKV(t *testing.T) *ftKV {
	t.Helper()
	inner := dssync.MutexWrap(datastore.NewMapDatastore())
	sw := &faultSwitch{}
	kv, err := newKVStore(newFaultyDS(inner, sw), ftPrefix)
	if err != nil {
		t.Fatal(err)
	}
	f := &ftKV{kv: kv, sw: sw, inner: inner}
	kv.onFail = func(err error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.fails = append(f.fails, err)
	}
	return f
}

func (f *ftKV) failCalls() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.fails...)
}

// persistedApplied is the applied index on the inner store, as a restarted
// member would read it.
func (f *ftKV) persistedApplied(t *testing.T) uint64 {
	t.Helper()
	kv, err := newKVStore(f.inner, ftPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return kv.applied
}

// value reads key; found tells whether it is there.
func (f *ftKV) value(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, ok, err := f.kv.get(key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return string(v), ok
}

// ftLog is a command log entry of ops.
func ftLog(t *testing.T, index uint64, ops ...Op) *hraft.Log {
	t.Helper()
	cmd, err := EncodeCommand(ops...)
	if err != nil {
		t.Fatal(err)
	}
	return &hraft.Log{Index: index, Term: 1, Type: hraft.LogCommand, Data: cmd}
}

// ftSets is one entry per key, from index first on, each setting key to
// "v"+key.
func ftSets(t *testing.T, first uint64, keys ...string) []*hraft.Log {
	t.Helper()
	var logs []*hraft.Log
	for i, k := range keys {
		logs = append(logs, ftLog(t, first+uint64(i), SetOp(k, []byte("v"+k))))
	}
	return logs
}

// ftApplyOK applies logs and fails the test on any error response.
func ftApplyOK(t *testing.T, kv *kvStore, logs []*hraft.Log) {
	t.Helper()
	for i, r := range kv.ApplyBatch(logs) {
		if resp, ok := r.(*FSMResponse); !ok || resp.Error != nil {
			t.Fatalf("entry %d: %#v", logs[i].Index, r)
		}
	}
}

// ftApplyFails applies logs and checks that every entry is answered with an
// error; it returns the first one.
func ftApplyFails(t *testing.T, kv *kvStore, logs []*hraft.Log) error {
	t.Helper()
	out := kv.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("%d responses for %d entries", len(out), len(logs))
	}
	var first error
	for i, r := range out {
		resp, ok := r.(*FSMResponse)
		if !ok || resp.Error == nil {
			t.Fatalf("entry %d of the failed batch answered %#v, want an error", logs[i].Index, r)
		}
		if first == nil {
			first = resp.Error
		}
	}
	return first
}

// An entry whose datastore write or commit fails stops the store: the whole
// batch is answered with the failure and none of it is written or counted
// as applied; every later batch is refused, even once the disk works again
// (the entry must be re-applied from the log by a restarted member, never
// skipped); onFail hears of it exactly once.
func TestFaultApplyBatchStorageErrorStopsStore(t *testing.T) {
	for _, tt := range []struct {
		name  string
		mode  faultMode
		n     int
		cause error
		text  string
	}{
		// The second Put of the batch: the entry "d" of c, d, e.
		{name: "failing put", mode: faultNthPut, n: 2, cause: errInjectedFault, text: "cannot apply log entry 4"},
		{name: "failing commit", mode: faultNextCommit, cause: errInjectedFault, text: "datastore commit"},
		{name: "every write after n", mode: faultAfterN, n: 1, cause: errInjectedFault, text: "cannot apply log entry 4"},
		{name: "disk full", mode: faultDiskFull, cause: syscall.ENOSPC, text: "no space left on device"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFTKV(t)
			ftApplyOK(t, f.kv, ftSets(t, 1, "a", "b"))
			if got := f.kv.appliedIndex(); got != 2 {
				t.Fatalf("applied index %d, want 2", got)
			}

			f.sw.arm(tt.mode, tt.n, ftPrefix+"/")
			batch := append(ftSets(t, 3, "c", "d", "e"), ftLog(t, 6, DeleteOp("a")))
			err := ftApplyFails(t, f.kv, batch)
			if !errors.Is(err, tt.cause) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("failure %q: want %v and %q", err, tt.cause, tt.text)
			}
			if f.sw.injectedCount() == 0 {
				t.Fatal("no fault was injected")
			}
			check := func(when string) {
				t.Helper()
				if got := f.kv.appliedIndex(); got != 2 {
					t.Fatalf("%s: applied index %d, want 2", when, got)
				}
				if got := f.persistedApplied(t); got != 2 {
					t.Fatalf("%s: persisted applied index %d, want 2", when, got)
				}
				for _, k := range []string{"c", "d", "e", "f"} {
					if v, ok := f.value(t, k); ok {
						t.Fatalf("%s: %q = %q is visible", when, k, v)
					}
				}
				for _, k := range []string{"a", "b"} {
					if v, ok := f.value(t, k); !ok || v != "v"+k {
						t.Fatalf("%s: %q = %q, %v; want %q", when, k, v, ok, "v"+k)
					}
				}
				if keys, err := f.kv.keys(""); err != nil || len(keys) != 2 {
					t.Fatalf("%s: keys %q, %v", when, keys, err)
				}
			}
			check("after the failed batch")

			fails := f.failCalls()
			if len(fails) != 1 || fails[0] != err {
				t.Fatalf("onFail heard %v, want exactly the failure %v once", fails, err)
			}

			// A working disk changes nothing: the store stays stopped.
			f.sw.heal()
			injected := f.sw.injectedCount()
			for _, logs := range [][]*hraft.Log{
				batch,                       // the failed entries again
				ftSets(t, 7, "f"),           // a later entry
				ftSets(t, 3, "c", "d", "e"), // the failed entries without the delete
			} {
				if later := ftApplyFails(t, f.kv, logs); later != err {
					t.Fatalf("later batch answered %v, want the first failure %v", later, err)
				}
			}
			if f.sw.injectedCount() != injected {
				t.Fatal("a refused batch reached the datastore")
			}
			check("after later batches")
			if rerr := f.kv.Restore(io.NopCloser(ftSnapshotOf(t, 9, "x"))); rerr != err {
				t.Fatalf("restore on a stopped store: %v, want the first failure %v", rerr, err)
			}
			check("after a refused restore")
			if n := len(f.failCalls()); n != 1 {
				t.Fatalf("onFail called %d times, want 1", n)
			}
		})
	}
}

// ftUnknownOpCommand is the canonical CBOR of a command with one operation
// of kind 99, which this build does not know.
func ftUnknownOpCommand(t *testing.T, key string, value []byte) []byte {
	t.Helper()
	b := appendHead(nil, 4, 2)               // [version, ops]
	b = appendHead(b, 0, commandVersion)     // version
	b = appendHead(b, 4, 1)                  // one op
	b = appendHead(b, 4, 3)                  // [kind, key, value]
	b = appendHead(b, 0, 99)                 // kind 99
	b = appendHead(b, 3, uint64(len(key)))   // key
	b = append(b, key...)                    //
	b = appendHead(b, 2, uint64(len(value))) // value
	b = append(b, value...)
	// It is what the reflective encoder writes: canonical, valid CBOR.
	want, err := cborEnc.Marshal(&command{Version: commandVersion, Ops: []commandOp{{Kind: 99, Key: key, Value: value}}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("hand-made command %x, encoder writes %x", b, want)
	}
	if err := validateCommand(b); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("validateCommand of kind 99: %v, want ErrInvalidCommand", err)
	}
	return b
}

// A committed entry with an operation this build does not know (written by
// a newer build) cannot be skipped either: it stops the store, alone or in a
// batch, and is never counted as applied.
func TestFaultUnknownOperationKindStopsStore(t *testing.T) {
	unknown := ftUnknownOpCommand(t, "u", []byte("future"))

	t.Run("in a batch", func(t *testing.T) {
		f := newFTKV(t)
		ftApplyOK(t, f.kv, ftSets(t, 1, "a"))
		batch := []*hraft.Log{
			ftLog(t, 2, SetOp("x", []byte("vx"))),
			{Index: 3, Term: 1, Type: hraft.LogCommand, Data: unknown},
			ftLog(t, 4, SetOp("y", []byte("vy"))),
		}
		err := ftApplyFails(t, f.kv, batch)
		if !errors.Is(err, ErrInvalidCommand) || !strings.Contains(err.Error(), "operation kind 99") || !strings.Contains(err.Error(), "log entry 3") {
			t.Fatalf("failure %q: want ErrInvalidCommand naming kind 99 and entry 3", err)
		}
		if got := f.kv.appliedIndex(); got != 1 {
			t.Fatalf("applied index %d, want 1", got)
		}
		if got := f.persistedApplied(t); got != 1 {
			t.Fatalf("persisted applied index %d, want 1", got)
		}
		for _, k := range []string{"x", "y", "u"} {
			if v, ok := f.value(t, k); ok {
				t.Fatalf("%q = %q is visible", k, v)
			}
		}
		if later := ftApplyFails(t, f.kv, ftSets(t, 5, "z")); later != err {
			t.Fatalf("later entry answered %v, want %v", later, err)
		}
		if _, ok := f.value(t, "z"); ok {
			t.Fatal("a later entry was applied past the unknown one")
		}
		if fails := f.failCalls(); len(fails) != 1 || fails[0] != err {
			t.Fatalf("onFail heard %v, want %v once", fails, err)
		}
	})

	t.Run("alone", func(t *testing.T) {
		f := newFTKV(t)
		ftApplyOK(t, f.kv, ftSets(t, 1, "a", "b"))
		if err := ftApplyFails(t, f.kv, []*hraft.Log{{Index: 3, Term: 1, Type: hraft.LogCommand, Data: unknown}}); !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("failure %v, want ErrInvalidCommand", err)
		}
		if got := f.kv.appliedIndex(); got != 2 {
			t.Fatalf("applied index %d, want 2", got)
		}
		// Through Apply, the single-entry path, too.
		if r, ok := f.kv.Apply(ftLog(t, 4, SetOp("c", nil))).(*FSMResponse); !ok || r.Error == nil {
			t.Fatalf("Apply after the stop answered %#v", r)
		}
		if _, ok := f.value(t, "c"); ok {
			t.Fatal("Apply wrote past the stop")
		}
		if n := len(f.failCalls()); n != 1 {
			t.Fatalf("onFail called %d times, want 1", n)
		}
	})
}

// ftSnapshotOf is a snapshot at index applied holding each key with value
// "s"+key.
func ftSnapshotOf(t *testing.T, applied uint64, keys ...string) *bytes.Reader {
	t.Helper()
	snap := &kvSnapshot{Header: snapshotHeader{Version: snapshotVersion, Applied: applied}}
	for _, k := range keys {
		snap.Pairs = append(snap.Pairs, snapshotPair{Key: k, Value: []byte("s" + k)})
	}
	var buf bytes.Buffer
	if err := snap.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

// ftCheckData checks that the store holds exactly want (key to value) at
// applied index applied, in memory and on the inner store.
func ftCheckData(t *testing.T, f *ftKV, applied uint64, want map[string]string) {
	t.Helper()
	if got := f.kv.appliedIndex(); got != applied {
		t.Fatalf("applied index %d, want %d", got, applied)
	}
	if got := f.persistedApplied(t); got != applied {
		t.Fatalf("persisted applied index %d, want %d", got, applied)
	}
	keys, err := f.kv.keys("")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(want) {
		t.Fatalf("keys %q, want %d keys", keys, len(want))
	}
	for k, w := range want {
		if v, ok := f.value(t, k); !ok || v != w {
			t.Fatalf("%q = %q, %v; want %q", k, v, ok, w)
		}
	}
}

// A restore whose datastore write or commit fails stops the store and
// changes nothing; a snapshot that does not decode changes nothing and does
// not stop it.
func TestFaultRestore(t *testing.T) {
	before := map[string]string{"a": "va", "b": "vb", "c": "vc"}

	for _, tt := range []struct {
		name  string
		mode  faultMode
		n     int
		cause error
	}{
		{name: "commit fails", mode: faultNextCommit, cause: errInjectedFault},
		{name: "put fails", mode: faultNthPut, n: 2, cause: errInjectedFault},
		{name: "delete fails", mode: faultAfterN, n: 0, cause: errInjectedFault},
		{name: "disk full", mode: faultDiskFull, cause: syscall.ENOSPC},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFTKV(t)
			ftApplyOK(t, f.kv, ftSets(t, 1, "a", "b", "c"))
			f.sw.arm(tt.mode, tt.n, ftPrefix+"/")
			err := f.kv.Restore(io.NopCloser(ftSnapshotOf(t, 10, "p", "q", "r")))
			if !errors.Is(err, tt.cause) {
				t.Fatalf("restore: %v, want %v", err, tt.cause)
			}
			f.sw.heal()
			ftCheckData(t, f, 3, before)
			fails := f.failCalls()
			if len(fails) != 1 || !errors.Is(fails[0], tt.cause) {
				t.Fatalf("onFail heard %v, want the failure once", fails)
			}
			// Stopped: neither entries nor snapshots are taken any more.
			if later := ftApplyFails(t, f.kv, ftSets(t, 4, "d")); !errors.Is(later, tt.cause) {
				t.Fatalf("later entry answered %v", later)
			}
			if err := f.kv.Restore(io.NopCloser(ftSnapshotOf(t, 11, "p"))); err == nil {
				t.Fatal("a stopped store took a snapshot")
			}
			ftCheckData(t, f, 3, before)
			if n := len(f.failCalls()); n != 1 {
				t.Fatalf("onFail called %d times, want 1", n)
			}
		})
	}

	t.Run("garbage", func(t *testing.T) {
		f := newFTKV(t)
		ftApplyOK(t, f.kv, ftSets(t, 1, "a", "b", "c"))
		full, _ := io.ReadAll(ftSnapshotOf(t, 10, "p", "q", "r"))
		badVersion := bytes.Clone(full)
		badVersion[1] = 0x07 // [version, applied, count]: version 7
		for name, data := range map[string][]byte{
			"empty":          nil,
			"not cbor":       []byte("this is not a snapshot"),
			"random":         {0xff, 0x00, 0x13, 0x37, 0x42},
			"header only":    full[:4],
			"truncated pair": full[:len(full)-2],
			"wrong version":  badVersion,
		} {
			if err := f.kv.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatalf("%s: restore of garbage succeeded", name)
			}
			ftCheckData(t, f, 3, before)
		}
		if fails := f.failCalls(); len(fails) != 0 {
			t.Fatalf("garbage stopped the store: %v", fails)
		}
		// Still running: it applies, and takes a good snapshot.
		ftApplyOK(t, f.kv, ftSets(t, 4, "d"))
		if err := f.kv.Restore(io.NopCloser(ftSnapshotOf(t, 10, "p", "q"))); err != nil {
			t.Fatal(err)
		}
		ftCheckData(t, f, 10, map[string]string{"p": "sp", "q": "sq"})
	})
}

// ---- a failing disk under one member of a cluster ----

// faultNode is a mesh node whose datastore is faulty.
type faultNode struct {
	*p2pnode.Node
	store datastore.Batching
}

func (n *faultNode) Store() datastore.Batching { return n.store }

// ftLogBuf collects a member's log lines.
type ftLogBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *ftLogBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *ftLogBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ftStart starts the cluster on node i over a faulty view of its store,
// logging errors to the test log and to logs, and adds it to tc.
func ftStart(tc *testCluster, i int, sw *faultSwitch, logs *ftLogBuf) error {
	n := tc.mesh.Node(i)
	if n == nil {
		return fmt.Errorf("node %d is stopped", i)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Error, Output: io.MultiWriter(testWriter{tc.t}, logs)})
	opts := append(append([]Option{}, tc.opts...), WithLogger(logger))
	c, err := New(&faultNode{Node: n, store: newFaultyDS(n.Store(), sw)}, tc.ns, opts...)
	if err != nil {
		return fmt.Errorf("start node %d: %w", i, err)
	}
	tc.mu.Lock()
	tc.clusters[i] = c
	tc.mu.Unlock()
	return nil
}

// isStateMachineStop reports the error of a member whose state machine
// stopped: ErrShutdown, saying so, with the injected cause.
func isStateMachineStop(err error, cause error) bool {
	return err != nil && errors.Is(err, ErrShutdown) && errors.Is(err, cause) &&
		strings.Contains(err.Error(), "state machine stopped")
}

// raftState is the state of the member's own Raft, not what State reports
// for the member.
func raftState(c Cluster) hraft.RaftState {
	cl := c.(*cluster)
	return cl.run.Load().raft.State()
}

// One member's state machine store starts failing while writes go on: that
// member stops (its Raft shuts down, every call fails with ErrShutdown and
// the cause, an ERROR line says why) and never answers a barrier read with
// anything but the acknowledged value; the other two keep acknowledging
// writes. Closed and started again on the same node and disk with the fault
// healed, it catches up and holds every acknowledged write. The faulty
// member is a follower (every write after N fails) or the leader (the disk
// is full).
func TestFaultStateMachineStopsMember(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	for _, tt := range []ftMemberCase{
		{name: "follower, every write after n", mode: faultAfterN, n: 30, cause: errInjectedFault},
		{name: "leader, disk full", leader: true, mode: faultDiskFull, cause: syscall.ENOSPC},
		// Snapshots every 20 entries, and 80 writes while it is down: the
		// leader's log moves past what the member holds, so it catches up
		// from a snapshot (Restore) and the log.
		{name: "follower, failing commit, catch up from a snapshot", mode: faultNextCommit, cause: errInjectedFault, after: 80, opts: []Option{snapshotEvery(20)}, fromSnapshot: true},
	} {
		t.Run(tt.name, func(t *testing.T) { ftStateMachineStops(t, tt) })
	}
}

// ftMemberCase is one run of TestFaultStateMachineStopsMember.
type ftMemberCase struct {
	name   string
	leader bool // the faulty member is the leader, else a follower
	mode   faultMode
	n      int
	cause  error    // what the fault's error wraps
	after  int      // writes acknowledged after the member stopped (10 by default)
	opts   []Option // for every member
	// fromSnapshot: the others compact their logs past what the member
	// holds before it is back (needs snapshots in opts).
	fromSnapshot bool
}

func ftStateMachineStops(t *testing.T, tt ftMemberCase) {
	mode, n, cause := tt.mode, tt.n, tt.cause
	after := tt.after
	if after == 0 {
		after = 10
	}
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected(), rafttest.WithPebble())
	ns := "/raft/fault-member"
	tc := newTestCluster(t, mesh, ns, tt.opts...)
	var sws [3]*faultSwitch
	var logs [3]*ftLogBuf
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		sws[i], logs[i] = &faultSwitch{}, &ftLogBuf{}
		wg.Go(func() { errs[i] = ftStart(tc, i, sws[i], logs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	bad := tc.follower(l, 0)
	if tt.leader {
		bad = l
	}
	good := others(bad, 3)
	t.Logf("leader %d, faulty member %d", l, bad)

	// The faults reach the state machine: it writes through the faulty view
	// of pebble's unsynced handle.
	cb := tc.get(bad)
	fsmDS, ok := cb.(*cluster).fsm.ds.(*faultyDS)
	if !ok || fsmDS.inner != mesh.Node(bad).Store().(UnsyncedStore).Unsynced() {
		t.Fatalf("the state machine writes through %T, not the faulty unsynced view", cb.(*cluster).fsm.ds)
	}

	total := 40 + after
	keys := make([]string, total)
	for k := range keys {
		keys[k] = fmt.Sprintf("w/%03d", k)
	}
	var ackedN atomic.Int64 // keys[:ackedN] are acknowledged
	var badWriteErrs []error
	// write writes keys[k] through whichever member leads, until it is
	// acknowledged (the value is fixed, so retrying is safe).
	write := func(k int) {
		t.Helper()
		key := keys[k]
		err := retry(30*time.Second, nil, func() error {
			for _, i := range tc.running() {
				c := tc.get(i)
				if c == nil || !c.IsLeader() {
					continue
				}
				err := c.Set(key, []byte("v"+key), 5*time.Second)
				if err != nil && i == bad {
					badWriteErrs = append(badWriteErrs, err)
				}
				return err
			}
			return ErrNoLeader
		})
		if err != nil {
			tc.dumpState()
			t.Fatalf("write %s: %v", key, err)
		}
		ackedN.Store(int64(k + 1))
	}

	// Barrier reads on the faulty member, all along (before, during and
	// after the failure): a barrier that succeeds must be followed by every
	// write acknowledged before it started.
	var (
		readMu     sync.Mutex
		wrongReads []string
		goodReads  int
		stopErr    error
		readErrs   = map[string]int{}
	)
	stopReads := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		untilClosed(stopReads, func(int) {
			n := int(ackedN.Load())
			if err := cb.Barrier(2 * time.Second); err != nil {
				readMu.Lock()
				if stopErr == nil && isStateMachineStop(err, cause) {
					stopErr = err
				}
				readErrs[sentinelName(err)]++
				readMu.Unlock()
				time.Sleep(5 * time.Millisecond) // pace the retries, not a wait for a condition
				return
			}
			for _, key := range keys[:n] {
				if v, ok := cb.Get(key); !ok || string(v) != "v"+key {
					readMu.Lock()
					wrongReads = append(wrongReads, fmt.Sprintf("%s = %q, %v after a barrier", key, v, ok))
					readMu.Unlock()
				}
			}
			readMu.Lock()
			goodReads++
			readMu.Unlock()
		})
	}()
	defer func() {
		select {
		case <-stopReads:
		default:
			close(stopReads)
		}
		<-readerDone
	}()

	const healthy = 10
	for k := range healthy {
		write(k)
	}
	tc.waitValue(bad, keys[healthy-1], []byte("v"+keys[healthy-1]))
	rafttest.WaitFor(t, 10*time.Second, "a successful barrier read on the faulty member", func() bool {
		readMu.Lock()
		defer readMu.Unlock()
		return goodReads > 0
	})

	sws[bad].arm(mode, n, ns+"/data/")
	for k := healthy; k < total-after; k++ {
		write(k)
	}
	rafttest.WaitFor(t, 20*time.Second, fmt.Sprintf("node %d to stop", bad), func() bool {
		return cb.State() == hraft.Shutdown && raftState(cb) == hraft.Shutdown
	})
	if sws[bad].injectedCount() == 0 {
		t.Fatal("no fault was injected")
	}
	// Writes acknowledged after the stop: the member cannot hold them.
	for k := total - after; k < total; k++ {
		write(k)
	}
	if tc.leaderAmong(10*time.Second, good...) == bad {
		t.Fatal("the stopped member leads")
	}
	if tt.fromSnapshot {
		// The others' logs no longer reach back to the member's next entry.
		next := cb.(*cluster).fsm.appliedIndex() + 1
		tc.waitFor(20*time.Second, fmt.Sprintf("the others' logs to start past index %d", next), func() bool {
			for _, i := range good {
				first, err := tc.get(i).(*cluster).logs.FirstIndex()
				if err != nil || first <= next {
					return false
				}
			}
			return true
		})
	}

	// Every call fails with ErrShutdown and the cause.
	cmd, _ := EncodeCommand(SetOp("late", []byte("x")))
	for name, err := range map[string]error{
		"Barrier": cb.Barrier(time.Second),
		"Apply":   secondErr(cb.Apply(cmd, time.Second)),
		"Set":     cb.Set("late", []byte("x"), time.Second),
		"Delete":  cb.Delete(keys[0], time.Second),
		"Members": secondErr(cb.Members()),
		"Leader":  secondErr(cb.Leader()),
	} {
		if !isStateMachineStop(err, cause) {
			t.Errorf("%s on the stopped member: %v; want ErrShutdown, %q and the cause %v", name, err, "state machine stopped", cause)
		}
	}
	if cb.IsLeader() {
		t.Error("the stopped member says it leads")
	}
	ctx, cancel := ctxTimeout(time.Second)
	if err := cb.WaitForLeader(ctx); !isStateMachineStop(err, cause) {
		t.Errorf("WaitForLeader on the stopped member: %v", err)
	}
	cancel()
	// Its local reads show only acknowledged values, and it misses some.
	held := 0
	for _, key := range keys {
		if v, ok := cb.Get(key); ok {
			if string(v) != "v"+key {
				t.Errorf("stopped member holds %s = %q", key, v)
			}
			held++
		}
	}
	if held >= total {
		t.Fatalf("the stopped member holds all %d writes: it did not stop before the last ones", total)
	}
	if _, ok := cb.Get("late"); ok {
		t.Error("the stopped member holds a write made after it stopped")
	}
	// One ERROR line says why.
	var stopLines []string
	for _, line := range strings.Split(logs[bad].String(), "\n") {
		if strings.Contains(line, "stopping this member") {
			stopLines = append(stopLines, line)
		}
	}
	if len(stopLines) != 1 || !strings.Contains(stopLines[0], "[ERROR]") || !strings.Contains(stopLines[0], "state machine stopped") || !strings.Contains(stopLines[0], cause.Error()) {
		t.Errorf("the stopped member logged %d stop lines, want one ERROR line with the cause %q:\n%s", len(stopLines), cause, strings.Join(stopLines, "\n"))
	}
	for _, err := range badWriteErrs {
		t.Logf("a write on the faulty member failed with: %v (IsNotApplied %v)", err, IsNotApplied(err))
	}

	// The others carry on, and hold everything.
	for _, i := range good {
		c := tc.get(i)
		if err := c.Barrier(10 * time.Second); err != nil {
			t.Fatalf("barrier on node %d: %v", i, err)
		}
		if got := heldWrites(c, keys); got != total {
			t.Fatalf("node %d holds %d of %d acknowledged writes", i, got, total)
		}
		if s := logs[i].String(); strings.Contains(s, "state machine stopped") {
			t.Fatalf("healthy node %d logged a state machine stop:\n%s", i, s)
		}
	}

	// The reader's barriers end with the stop too (one in flight when the
	// member stopped may first run out its time).
	rafttest.WaitFor(t, 10*time.Second, "a barrier read on the faulty member to fail with the stop", func() bool {
		readMu.Lock()
		defer readMu.Unlock()
		return stopErr != nil
	})
	close(stopReads)
	<-readerDone
	readMu.Lock()
	if len(wrongReads) > 0 {
		t.Errorf("barrier reads on the faulty member returned wrong values:\n%s", strings.Join(wrongReads, "\n"))
	}
	t.Logf("barrier reads on the faulty member: %d succeeded, failures by cause %v", goodReads, readErrs)
	readMu.Unlock()

	// Close it; start it again on the same node and disk, healed.
	tc.stop(bad)
	sws[bad].heal()
	injected := sws[bad].injectedCount()
	mesh.Restart(bad)
	if err := ftStart(tc, bad, sws[bad], logs[bad]); err != nil {
		t.Fatal(err)
	}
	back := tc.get(bad)
	tc.waitFor(30*time.Second, fmt.Sprintf("node %d to catch up after its restart", bad), func() bool {
		return back.Barrier(2*time.Second) == nil && heldWrites(back, keys) == total
	})
	tc.waitVoters(20*time.Second, 0, 1, 2)
	tc.set("after-restart", []byte("ok"))
	for i := range 3 {
		tc.waitValue(i, "after-restart", []byte("ok"))
	}
	want := back.Keys("")
	for _, i := range good {
		if err := tc.get(i).Barrier(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		if got := tc.get(i).Keys(""); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("node %d lists %q, node %d %q", i, got, bad, want)
		}
	}
	if sws[bad].injectedCount() != injected {
		t.Fatal("a fault was injected after the heal")
	}
}
