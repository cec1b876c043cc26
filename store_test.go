package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	datastore "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	pebbleds "github.com/ipfs/go-ds-pebble"
	"go.uber.org/goleak"
)

// storeTestBackend abstracts the datastores the stores are tested on. reopen
// simulates a process restart: the pebble backend closes and reopens the
// database from disk, the memory backend keeps the same map.
type storeTestBackend struct {
	name string
	// open returns a fresh, empty datastore and a reopen function for it.
	open func(tb testing.TB) (ds datastore.Batching, reopen func() datastore.Batching)
}

func storeTestBackends() []storeTestBackend {
	return []storeTestBackend{
		{
			name: "mem",
			open: func(tb testing.TB) (datastore.Batching, func() datastore.Batching) {
				ds := dssync.MutexWrap(datastore.NewMapDatastore())
				return ds, func() datastore.Batching { return ds }
			},
		},
		{
			name: "pebble",
			open: func(tb testing.TB) (datastore.Batching, func() datastore.Batching) {
				dir := tb.TempDir()
				cur := storeTestOpenPebble(tb, dir)
				tb.Cleanup(func() {
					if err := cur.Close(); err != nil {
						tb.Errorf("closing pebble: %v", err)
					}
				})
				return cur, func() datastore.Batching {
					if err := cur.Close(); err != nil {
						tb.Fatalf("closing pebble: %v", err)
					}
					cur = storeTestOpenPebble(tb, dir)
					return cur
				}
			},
		},
	}
}

func storeTestOpenPebble(tb testing.TB, dir string) *pebbleds.Datastore {
	tb.Helper()
	ds, err := pebbleds.NewDatastore(dir)
	if err != nil {
		tb.Fatalf("opening pebble at %s: %v", dir, err)
	}
	return ds
}

func storeTestNewLogStore(tb testing.TB, ds datastore.Batching, prefix string) *LogStore {
	tb.Helper()
	s, err := NewLogStore(ds, prefix)
	if err != nil {
		tb.Fatalf("NewLogStore(%q): %v", prefix, err)
	}
	return s
}

// storeTestLogsEqual compares two logs field by field; AppendedAt by instant
// because decoding drops the monotonic clock reading.
func storeTestLogsEqual(a, b *hraft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

func storeTestRandomLog(rng *rand.Rand, idx, term uint64) *hraft.Log {
	l := &hraft.Log{Index: idx, Term: term, Type: hraft.LogType(rng.Intn(6))}
	switch rng.Intn(4) {
	case 0: // nil data
	case 1:
		l.Data = []byte{}
	default:
		l.Data = make([]byte, rng.Intn(64))
		rng.Read(l.Data)
	}
	if rng.Intn(4) == 0 {
		l.Extensions = make([]byte, 1+rng.Intn(8))
		rng.Read(l.Extensions)
	}
	if rng.Intn(5) != 0 {
		l.AppendedAt = time.Unix(0, rng.Int63()-rng.Int63())
	}
	return l
}

// storeTestModel is the reference the LogStore is checked against: raft's
// InmemStore for entry contents, plus an exact set of present indexes because
// InmemStore's First/Last bookkeeping is only right for the contiguous,
// overlapping operations raft normally issues (it mis-tracks gaps and ranges
// that miss the log entirely).
type storeTestModel struct {
	ref     *hraft.InmemStore
	present map[uint64]bool
}

func (m *storeTestModel) bounds() (first, last uint64) {
	for idx := range m.present {
		if first == 0 || idx < first {
			first = idx
		}
		if idx > last {
			last = idx
		}
	}
	return first, last
}

func (m *storeTestModel) store(logs []*hraft.Log) {
	if err := m.ref.StoreLogs(logs); err != nil {
		panic(err)
	}
	for _, l := range logs {
		m.present[l.Index] = true
	}
}

func (m *storeTestModel) deleteRange(minIdx, maxIdx uint64) {
	if minIdx > maxIdx {
		return
	}
	first, last := m.bounds()
	if len(m.present) == 0 || maxIdx < first || minIdx > last {
		return // InmemStore would corrupt its bounds; nothing to delete anyway
	}
	// Clamp so InmemStore's per-index loop stays short and cannot wrap.
	lo, hi := max(minIdx, first), min(maxIdx, last)
	if err := m.ref.DeleteRange(lo, hi); err != nil {
		panic(err)
	}
	for idx := lo; idx <= hi; idx++ {
		delete(m.present, idx)
	}
}

// storeTestCheckIndex compares GetLog(idx) of s with the model.
func storeTestCheckIndex(t *testing.T, s *LogStore, m *storeTestModel, idx uint64) {
	t.Helper()
	var want, got hraft.Log
	wantErr := m.ref.GetLog(idx, &want)
	gotErr := s.GetLog(idx, &got)
	switch {
	case wantErr == hraft.ErrLogNotFound:
		if gotErr != hraft.ErrLogNotFound { // == on purpose: raft compares with ==
			t.Fatalf("GetLog(%d): got err %v, want ErrLogNotFound", idx, gotErr)
		}
	case wantErr != nil:
		t.Fatalf("reference GetLog(%d): %v", idx, wantErr)
	case gotErr != nil:
		t.Fatalf("GetLog(%d): %v", idx, gotErr)
	case !storeTestLogsEqual(&want, &got):
		t.Fatalf("GetLog(%d) = %+v, want %+v", idx, got, want)
	}
}

func storeTestCheckBounds(t *testing.T, s *LogStore, m *storeTestModel, trustInmem bool) {
	t.Helper()
	wantFirst, wantLast := m.bounds()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != wantFirst || last != wantLast {
		t.Fatalf("First/Last = %d/%d, want %d/%d", first, last, wantFirst, wantLast)
	}
	if trustInmem {
		rf, _ := m.ref.FirstIndex()
		rl, _ := m.ref.LastIndex()
		if first != rf || last != rl {
			t.Fatalf("First/Last = %d/%d, InmemStore says %d/%d", first, last, rf, rl)
		}
	}
}

// TestLogStoreMatchesInmem drives random raft-like operation sequences
// against the LogStore and the reference, then reopens the store and checks
// that everything survived. "raftlike" seeds keep the log contiguous and
// every delete overlapping it, so InmemStore's own First/Last must agree too;
// "gappy" seeds add the gaps raft leaves after snapshot installs and
// arbitrary (also disjoint or huge) delete ranges.
func TestLogStoreMatchesInmem(t *testing.T) {
	const opsPerSeed = 400
	for _, be := range storeTestBackends() {
		for _, mode := range []string{"raftlike", "gappy"} {
			for seed := int64(1); seed <= 3; seed++ {
				t.Run(fmt.Sprintf("%s/%s/seed=%d", be.name, mode, seed), func(t *testing.T) {
					t.Logf("seed %d (rerun with -run 'TestLogStoreMatchesInmem/%s/%s/seed=%d$')", seed, be.name, mode, seed)
					storeTestRunOps(t, be, mode == "gappy", seed, opsPerSeed)
				})
			}
		}
	}
}

func storeTestRunOps(t *testing.T, be storeTestBackend, gappy bool, seed int64, ops int) {
	rng := rand.New(rand.NewSource(seed))
	ds, reopen := be.open(t)
	const prefix = "/raft/prop/log"
	s := storeTestNewLogStore(t, ds, prefix)
	m := &storeTestModel{ref: hraft.NewInmemStore(), present: map[uint64]bool{}}
	trustInmem := !gappy
	term := uint64(1)

	for op := 0; op < ops; op++ {
		first, last := m.bounds()
		empty := len(m.present) == 0
		switch r := rng.Intn(100); {
		case r < 40: // append a contiguous batch, like raft's StoreLogs
			start := last + 1
			if empty {
				start = 1 + uint64(rng.Intn(50)) // after a full wipe raft may resume anywhere
			} else if gappy && rng.Intn(8) == 0 {
				start = last + 2 + uint64(rng.Intn(20)) // gap, as after a snapshot install
			}
			if rng.Intn(10) == 0 {
				term++
			}
			n := 1 + rng.Intn(8)
			batch := make([]*hraft.Log, n)
			for i := range batch {
				batch[i] = storeTestRandomLog(rng, start+uint64(i), term)
			}
			var err error
			if n == 1 && rng.Intn(2) == 0 {
				err = s.StoreLog(batch[0])
			} else {
				err = s.StoreLogs(batch)
			}
			if err != nil {
				t.Fatalf("seed %d op %d: StoreLogs: %v", seed, op, err)
			}
			m.store(batch)
		case r < 50 && !empty: // compaction: delete a prefix (sometimes all)
			hi := first + uint64(rng.Int63n(int64(last-first+1)))
			if gappy && rng.Intn(4) == 0 {
				hi = last + uint64(rng.Intn(1000)) // raft may pass an index past the log
			}
			storeTestDelete(t, s, m, seed, op, first, hi)
		case r < 60 && !empty: // conflict truncation: delete a suffix
			lo := first + uint64(rng.Int63n(int64(last-first+1)))
			storeTestDelete(t, s, m, seed, op, lo, last)
		case r < 65: // arbitrary range
			var lo, hi uint64
			if !gappy {
				if empty {
					continue // InmemStore mis-tracks deletes on an empty log
				}
				// Overlapping the log and covering one of its ends (possibly
				// overshooting it): InmemStore only tracks these right, and
				// raft never punches a hole in the middle.
				if rng.Intn(2) == 0 {
					lo = first - min(first-1, uint64(rng.Intn(5)))
					hi = first + uint64(rng.Int63n(int64(last-first+5)))
				} else {
					lo = first + uint64(rng.Int63n(int64(last-first+1)))
					hi = last + uint64(rng.Intn(5))
				}
			} else {
				switch rng.Intn(5) {
				case 0:
					lo, hi = 0, math.MaxUint64
				case 1:
					lo, hi = uint64(rng.Intn(100)), uint64(rng.Intn(100)) // maybe lo > hi
				default:
					lo = uint64(rng.Int63n(int64(last + 10)))
					hi = lo + uint64(rng.Intn(30))
				}
			}
			storeTestDelete(t, s, m, seed, op, lo, hi)
		default: // reads
			var idx uint64
			if empty {
				idx = uint64(rng.Intn(100))
			} else {
				idx = first - min(first, 3) + uint64(rng.Int63n(int64(last-first+7)))
			}
			storeTestCheckIndex(t, s, m, idx)
		}
		storeTestCheckBounds(t, s, m, trustInmem)
	}

	// Restart: a fresh store over the same (reopened) datastore must see the
	// same log.
	s = storeTestNewLogStore(t, reopen(), prefix)
	storeTestCheckBounds(t, s, m, trustInmem)
	first, last := m.bounds()
	lo := first - min(first, 2)
	for idx := lo; idx <= last+2; idx++ {
		storeTestCheckIndex(t, s, m, idx)
	}
}

func storeTestDelete(t *testing.T, s *LogStore, m *storeTestModel, seed int64, op int, lo, hi uint64) {
	t.Helper()
	if err := s.DeleteRange(lo, hi); err != nil {
		t.Fatalf("seed %d op %d: DeleteRange(%d, %d): %v", seed, op, lo, hi, err)
	}
	m.deleteRange(lo, hi)
}

// TestLogStoreBoundsTransitions pins the First/Last updates for each kind of
// delete, including gaps, which the random test reaches only by chance.
func TestLogStoreBoundsTransitions(t *testing.T) {
	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	s := storeTestNewLogStore(t, ds, "/raft/b/log")
	store := func(from, to uint64) {
		t.Helper()
		var logs []*hraft.Log
		for i := from; ; i++ { // tested before ++ so to == MaxUint64 terminates
			logs = append(logs, &hraft.Log{Index: i, Term: 1, Data: []byte{byte(i)}})
			if i == to {
				break
			}
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, first, last uint64) {
		t.Helper()
		f, _ := s.FirstIndex()
		l, _ := s.LastIndex()
		if f != first || l != last {
			t.Fatalf("%s: First/Last = %d/%d, want %d/%d", what, f, l, first, last)
		}
		// Reopen must agree with the in-memory bookkeeping.
		r := storeTestNewLogStore(t, ds, "/raft/b/log")
		f, _ = r.FirstIndex()
		l, _ = r.LastIndex()
		if f != first || l != last {
			t.Fatalf("%s after reopen: First/Last = %d/%d, want %d/%d", what, f, l, first, last)
		}
	}
	del := func(lo, hi uint64) {
		t.Helper()
		if err := s.DeleteRange(lo, hi); err != nil {
			t.Fatal(err)
		}
	}

	expect("empty", 0, 0)
	if err := s.StoreLogs(nil); err != nil {
		t.Fatal(err)
	}
	expect("empty batch", 0, 0)
	store(1, 10)
	expect("append", 1, 10)
	del(0, 3)
	expect("prefix delete", 4, 10)
	del(8, 100)
	expect("suffix delete", 4, 7)
	del(5, 6)
	expect("middle delete", 4, 7)
	del(4, 4)
	expect("delete first before hole", 7, 7)
	store(8, 9)
	store(20, 22) // gap 10..19
	expect("gap append", 7, 22)
	del(1, 12)
	expect("prefix delete ending in gap", 20, 22)
	del(21, math.MaxUint64)
	expect("huge suffix delete", 20, 20)
	del(30, 40)
	del(1, 19)
	del(5, 3) // min > max
	expect("disjoint deletes", 20, 20)
	del(0, math.MaxUint64)
	expect("whole delete", 0, 0)
	store(math.MaxUint64-1, math.MaxUint64)
	expect("top of range", math.MaxUint64-1, math.MaxUint64)
	del(math.MaxUint64, math.MaxUint64)
	expect("delete max", math.MaxUint64-1, math.MaxUint64-1)
}

// TestLogSpans checks the run bookkeeping against a plain set, with inserts
// in random order (as a reopen of an unordered datastore would produce).
func TestLogSpans(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewSource(seed))
		base := uint64(0)
		if seed%2 == 0 {
			base = math.MaxUint64 - 80
		}
		set := map[uint64]bool{}
		var spans []logSpan
		for op := 0; op < 300; op++ {
			if rng.Intn(4) == 0 {
				a := base + uint64(rng.Intn(80))
				b := a + uint64(rng.Intn(20))
				if b < a {
					b = math.MaxUint64
				}
				spans = spansRemove(spans, a, b)
				for i := a; ; i++ {
					delete(set, i)
					if i == b {
						break
					}
				}
			} else {
				idx := base + uint64(rng.Intn(81))
				spans = spansAdd(spans, idx)
				set[idx] = true
			}
			// Valid shape and exactly the set.
			count := 0
			for i, sp := range spans {
				if sp.lo > sp.hi || (i > 0 && spans[i-1].hi+1 >= sp.lo) {
					t.Fatalf("seed %d op %d: malformed spans %v", seed, op, spans)
				}
				for j := sp.lo; ; j++ {
					if !set[j] {
						t.Fatalf("seed %d op %d: spans %v contain %d which is absent", seed, op, spans, j)
					}
					count++
					if j == sp.hi {
						break
					}
				}
			}
			if count != len(set) {
				t.Fatalf("seed %d op %d: spans %v cover %d indexes, set has %d", seed, op, spans, count, len(set))
			}
		}
	}
	if got := spansFromSorted([]uint64{1, 1, 2, 4, 5, 5, 9, math.MaxUint64 - 1, math.MaxUint64, math.MaxUint64}); fmt.Sprint(got) !=
		fmt.Sprint([]logSpan{{1, 2}, {4, 5}, {9, 9}, {math.MaxUint64 - 1, math.MaxUint64}}) {
		t.Fatalf("spansFromSorted = %v", got)
	}
}

// TestLogStoreNestedNamespaceIsolation makes sure keys of other namespaces
// nested under (or sharing a string prefix with) the log's prefix are never
// taken for log entries, nor deleted by it.
func TestLogStoreNestedNamespaceIsolation(t *testing.T) {
	ctx := context.Background()
	for _, be := range storeTestBackends() {
		t.Run(be.name, func(t *testing.T) {
			ds, reopen := be.open(t)
			outer := storeTestNewLogStore(t, ds, "/raft/a/log")
			nested := storeTestNewLogStore(t, ds, "/raft/a/log/log")
			if err := nested.StoreLog(&hraft.Log{Index: 1, Term: 1}); err != nil {
				t.Fatal(err)
			}
			foreign := map[string][]byte{
				"/raft/a/log/data/X":               []byte("x"),
				"/raft/a/log/000000000000000A":     []byte("upper-case hex"),
				"/raft/a/log/00000000000000001":    []byte("17 digits"),
				"/raft/a/log/01":                   []byte("short"),
				"/raft/a/log/000000000000000g":     []byte("not hex"),
				"/raft/a/logx/0000000000000005":    []byte("sibling"),
				"/raft/a/log/0000000000000003/sub": []byte("deeper"),
			}
			for k, v := range foreign {
				if err := ds.Put(ctx, datastore.RawKey(k), v); err != nil {
					t.Fatal(err)
				}
			}
			if err := outer.StoreLogs([]*hraft.Log{{Index: 10, Term: 2}, {Index: 11, Term: 2}}); err != nil {
				t.Fatal(err)
			}

			ds = reopen()
			outer = storeTestNewLogStore(t, ds, "/raft/a/log")
			nested = storeTestNewLogStore(t, ds, "/raft/a/log/log")
			for _, c := range []struct {
				s           *LogStore
				first, last uint64
			}{{outer, 10, 11}, {nested, 1, 1}} {
				f, _ := c.s.FirstIndex()
				l, _ := c.s.LastIndex()
				if f != c.first || l != c.last {
					t.Fatalf("%s: First/Last = %d/%d, want %d/%d", c.s.prefix, f, l, c.first, c.last)
				}
			}
			var l hraft.Log
			if err := nested.GetLog(1, &l); err != nil || l.Index != 1 {
				t.Fatalf("nested GetLog(1) = %+v, %v", l, err)
			}
			if err := outer.GetLog(1, &l); err != hraft.ErrLogNotFound {
				t.Fatalf("outer GetLog(1) = %v, want ErrLogNotFound", err)
			}

			if err := outer.DeleteRange(0, math.MaxUint64); err != nil {
				t.Fatal(err)
			}
			for k := range foreign {
				if ok, err := ds.Has(ctx, datastore.RawKey(k)); err != nil || !ok {
					t.Fatalf("foreign key %s gone after outer DeleteRange (has=%v err=%v)", k, ok, err)
				}
			}
			nested = storeTestNewLogStore(t, ds, "/raft/a/log/log")
			if f, _ := nested.FirstIndex(); f != 1 {
				t.Fatalf("nested FirstIndex after outer wipe = %d, want 1", f)
			}
		})
	}
}

// TestLogStoreConcurrentAccess mimics raft's pattern of one goroutine
// appending and compacting while replication goroutines read; run it with
// -race. Reads may miss entries compacted under them but never see wrong data.
func TestLogStoreConcurrentAccess(t *testing.T) {
	s := storeTestNewLogStore(t, dssync.MutexWrap(datastore.NewMapDatastore()), "/raft/c/log")
	payload := func(idx uint64) []byte { return []byte(strconv.FormatUint(idx*7919, 10)) }
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for r := 0; r < 3; r++ {
		go func(seed int64) {
			rng := rand.New(rand.NewSource(seed))
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				first, _ := s.FirstIndex()
				last, _ := s.LastIndex()
				if first > last {
					errs <- fmt.Errorf("First %d > Last %d", first, last)
					return
				}
				if last == 0 {
					continue
				}
				idx := first + uint64(rng.Int63n(int64(last-first+1)))
				var l hraft.Log
				switch err := s.GetLog(idx, &l); {
				case err == hraft.ErrLogNotFound: // compacted meanwhile
				case err != nil:
					errs <- err
					return
				case l.Index != idx || !bytes.Equal(l.Data, payload(idx)):
					errs <- fmt.Errorf("GetLog(%d) returned index %d data %q", idx, l.Index, l.Data)
					return
				}
			}
		}(int64(r))
	}
	next := uint64(1)
	for i := 0; i < 300; i++ {
		batch := make([]*hraft.Log, 4)
		for j := range batch {
			batch[j] = &hraft.Log{Index: next, Term: 1, Data: payload(next)}
			next++
		}
		if err := s.StoreLogs(batch); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			if err := s.DeleteRange(0, next-20); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	for r := 0; r < 3; r++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewLogStoreRejectsBadPrefix(t *testing.T) {
	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	for _, p := range []string{"", "raft/log", "/raft/log/", "/raft//log", "/raft/./log"} {
		if _, err := NewLogStore(ds, p); err == nil {
			t.Errorf("NewLogStore(%q) succeeded, want error", p)
		}
	}
}

func storeTestEncodingCases() []*hraft.Log {
	return []*hraft.Log{
		{},
		{Index: 1, Term: 1, Type: hraft.LogCommand, Data: []byte("hello")},
		{Index: 1, Term: 1, Data: []byte{}, Extensions: []byte{}},
		{
			Index:      math.MaxUint64,
			Term:       math.MaxUint64,
			Type:       hraft.LogConfiguration,
			Data:       bytes.Repeat([]byte{0xab}, 300),
			Extensions: []byte{0, 1, 2, 0xff},
			AppendedAt: time.Date(2024, 2, 29, 23, 59, 59, 123456789, time.UTC),
		},
		{Index: 127, Term: 128, Type: 255, Extensions: []byte("ext only"), AppendedAt: time.Unix(0, -1)},
		{Index: 5, Term: 3, Type: hraft.LogNoop, AppendedAt: time.Unix(0, math.MaxInt64)},
		{Index: 6, Term: 3, AppendedAt: time.Unix(0, math.MinInt64)},
		{Index: 7, Term: 3, AppendedAt: time.Now()}, // carries a monotonic reading
	}
}

func TestLogEncodingRoundTrip(t *testing.T) {
	for i, in := range storeTestEncodingCases() {
		enc := encodeLog(in)
		if cap(enc) != len(enc) {
			t.Errorf("case %d: encodeLog sized %d for %d bytes", i, cap(enc), len(enc))
		}
		// Pre-fill out to prove decodeLog overwrites every field.
		out := hraft.Log{Index: 99, Term: 99, Type: 9, Data: []byte("stale"), Extensions: []byte("stale"), AppendedAt: time.Now()}
		if err := decodeLog(enc, &out); err != nil {
			t.Fatalf("case %d: decodeLog: %v", i, err)
		}
		if !storeTestLogsEqual(in, &out) {
			t.Fatalf("case %d: round trip = %+v, want %+v", i, out, *in)
		}
		if in.AppendedAt.IsZero() && out.AppendedAt != (time.Time{}) {
			t.Fatalf("case %d: zero AppendedAt decoded as %v, want time.Time{}", i, out.AppendedAt)
		}
		if got := encodeLog(&out); !bytes.Equal(got, enc) {
			t.Fatalf("case %d: re-encoding differs:\n got %x\nwant %x", i, got, enc)
		}
		// The decoded slices must not alias the input buffer.
		if len(out.Data) > 0 {
			for j := range enc {
				enc[j] ^= 0xff
			}
			if !bytes.Equal(out.Data, in.Data) {
				t.Fatalf("case %d: decoded Data aliases the input buffer", i)
			}
		}
	}
	// nil and empty byte strings encode identically (not preserved by design).
	if !bytes.Equal(encodeLog(&hraft.Log{Index: 1}), encodeLog(&hraft.Log{Index: 1, Data: []byte{}, Extensions: []byte{}})) {
		t.Fatal("nil and empty Data encode differently")
	}
	// Small entries stay small: version+index+term+type+2 lengths+time.
	if n := len(encodeLog(&hraft.Log{Index: 1, Term: 1})); n != 7 {
		t.Fatalf("minimal entry encodes to %d bytes, want 7", n)
	}
}

func TestDecodeLogRejectsCorruption(t *testing.T) {
	valid := encodeLog(&hraft.Log{Index: 300, Term: 2, Type: hraft.LogCommand, Data: []byte("data"),
		Extensions: []byte("ext"), AppendedAt: time.Unix(1700000000, 5)})
	check := func(name string, buf []byte) {
		t.Helper()
		out := hraft.Log{Index: 42}
		err := decodeLog(buf, &out)
		if !errors.Is(err, errCorruptLog) {
			t.Fatalf("%s (%x): err = %v, want errCorruptLog", name, buf, err)
		}
		if out.Index != 42 {
			t.Fatalf("%s: out modified on error", name)
		}
	}
	for n := 0; n < len(valid); n++ {
		check(fmt.Sprintf("truncated to %d", n), valid[:n])
	}
	check("trailing byte", append(append([]byte{}, valid...), 0))
	check("unknown version", append([]byte{2}, valid[1:]...))
	check("version 0", append([]byte{0}, valid[1:]...))
	check("huge data length", []byte{1, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	check("data length past end", []byte{1, 1, 1, 0, 5, 'a', 'b', 0, 0})
	check("overflowing varint", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 0})
	check("non-canonical index", []byte{1, 0x81, 0x00, 1, 0, 0, 0, 0})
	check("non-canonical time", []byte{1, 1, 1, 0, 0, 0, 0x80, 0x00})
}

// FuzzDecodeLog: decodeLog must never panic, must only fail with
// errCorruptLog, and, since the encoding is canonical, anything it accepts
// must re-encode to exactly the same bytes.
func FuzzDecodeLog(f *testing.F) {
	for _, l := range storeTestEncodingCases() {
		f.Add(encodeLog(l))
	}
	for _, garbage := range [][]byte{
		nil, {}, {1}, {0xff}, {1, 0x80}, {1, 1, 1, 0, 0x80},
		{1, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0},
		[]byte("definitely not a log entry"),
		bytes.Repeat([]byte{0x80}, 40),
	} {
		f.Add(garbage)
	}
	f.Fuzz(func(t *testing.T, buf []byte) {
		var l hraft.Log
		err := decodeLog(buf, &l)
		if err != nil {
			if !errors.Is(err, errCorruptLog) {
				t.Fatalf("decodeLog(%x) = %v, not wrapping errCorruptLog", buf, err)
			}
			return
		}
		if re := encodeLog(&l); !bytes.Equal(re, buf) {
			t.Fatalf("decode+encode not identity:\n in %x\nout %x", buf, re)
		}
	})
}

func TestStableStore(t *testing.T) {
	for _, be := range storeTestBackends() {
		t.Run(be.name, func(t *testing.T) {
			ds, reopen := be.open(t)
			const prefix = "/raft/s/stable"
			s := NewStableStore(ds, prefix)

			if _, err := s.Get([]byte("missing")); err == nil || err.Error() != "not found" {
				t.Fatalf("Get(missing) err = %v, want exactly \"not found\"", err)
			}
			if v, err := s.GetUint64([]byte("missing")); v != 0 || err == nil || err.Error() != "not found" {
				t.Fatalf("GetUint64(missing) = %d, %v; want 0, \"not found\"", v, err)
			}
			if err := s.Set(nil, []byte("x")); err == nil {
				t.Fatal("Set with empty key succeeded")
			}

			val := []byte("candidate-1")
			weird := []byte("a/b\x00\xff ..")
			if err := s.Set([]byte("LastVoteCand"), val); err != nil {
				t.Fatal(err)
			}
			val[0] = 'X' // the store must have copied
			if err := s.Set(weird, []byte("weird key")); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 1<<40+7); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 1<<40+8); err != nil { // overwrite
				t.Fatal(err)
			}
			if _, err := s.GetUint64([]byte("LastVoteCand")); err == nil {
				t.Fatal("GetUint64 of an 11-byte value succeeded")
			}

			for round := 0; round < 2; round++ {
				st := s
				if round == 1 { // restart; the pebble backend closes s's datastore here
					// A sloppy spelling of the same prefix is normalised.
					st = NewStableStore(reopen(), "raft/s/stable/")
				}
				if got, err := st.Get([]byte("LastVoteCand")); err != nil || string(got) != "candidate-1" {
					t.Fatalf("round %d: Get = %q, %v", round, got, err)
				}
				if got, err := st.Get(weird); err != nil || string(got) != "weird key" {
					t.Fatalf("round %d: Get(weird) = %q, %v", round, got, err)
				}
				if got, err := st.GetUint64([]byte("CurrentTerm")); err != nil || got != 1<<40+8 {
					t.Fatalf("round %d: GetUint64 = %d, %v", round, got, err)
				}
				got, _ := st.Get([]byte("LastVoteCand"))
				got[0] = 'Y' // mutating a returned value must not reach the store
				if again, _ := st.Get([]byte("LastVoteCand")); string(again) != "candidate-1" {
					t.Fatalf("round %d: Get returned an aliased slice", round)
				}
			}
		})
	}
}

// storeTestFSM counts applied commands; enough to prove entries flow through.
type storeTestFSM struct{ applied atomic.Int64 }

func (f *storeTestFSM) Apply(*hraft.Log) any { return f.applied.Add(1) }
func (f *storeTestFSM) Snapshot() (hraft.FSMSnapshot, error) {
	return nil, errors.New("snapshots not supported in this test")
}
func (f *storeTestFSM) Restore(io.ReadCloser) error { return errors.New("restore not supported") }

// TestStoresWithRaft bootstraps a single-node hashicorp/raft on the stores,
// applies entries, shuts down, and restarts from the persisted state.
func TestStoresWithRaft(t *testing.T) {
	for _, be := range storeTestBackends() {
		t.Run(be.name, func(t *testing.T) {
			// A cleanup registered first runs last, i.e. after the pebble
			// backend's cleanup has closed the database and its goroutines.
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
			ds, reopen := be.open(t)

			conf := quickRaftConfig("node1")
			snaps := hraft.NewInmemSnapshotStore()

			start := func(ds datastore.Batching) (*hraft.Raft, *storeTestFSM, *LogStore, *hraft.InmemTransport) {
				t.Helper()
				logs := storeTestNewLogStore(t, ds, "/raft/n1/log")
				stable := NewStableStore(ds, "/raft/n1/stable")
				addr, trans := hraft.NewInmemTransport("n1")
				existing, err := hraft.HasExistingState(logs, stable, snaps)
				if err != nil {
					t.Fatalf("HasExistingState: %v", err)
				}
				if !existing {
					cfg := hraft.Configuration{Servers: []hraft.Server{{ID: conf.LocalID, Address: addr}}}
					if err := hraft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
						t.Fatalf("BootstrapCluster: %v", err)
					}
				}
				fsm := &storeTestFSM{}
				r, err := hraft.NewRaft(conf, fsm, logs, stable, snaps, trans)
				if err != nil {
					t.Fatalf("NewRaft: %v", err)
				}
				deadline := time.Now().Add(5 * time.Second)
				for r.State() != hraft.Leader {
					if time.Now().After(deadline) {
						t.Fatalf("no leader after 5s (state %v)", r.State())
					}
					time.Sleep(5 * time.Millisecond)
				}
				return r, fsm, logs, trans
			}
			stop := func(r *hraft.Raft, trans *hraft.InmemTransport) {
				t.Helper()
				if err := r.Shutdown().Error(); err != nil {
					t.Fatalf("Shutdown: %v", err)
				}
				_ = trans.Close()
			}

			r, fsm, logs, trans := start(ds)
			const n = 20
			for i := 0; i < n; i++ {
				if err := r.Apply([]byte(fmt.Sprintf("cmd-%d", i)), 2*time.Second).Error(); err != nil {
					t.Fatalf("Apply %d: %v", i, err)
				}
			}
			if got := fsm.applied.Load(); got != n {
				t.Fatalf("FSM applied %d, want %d", got, n)
			}
			last, _ := logs.LastIndex()
			if last < n+1 { // + bootstrap configuration entry
				t.Fatalf("LastIndex = %d, want >= %d", last, n+1)
			}
			stop(r, trans)

			// Restart from disk: raft must find the state and replay the
			// committed commands into a fresh FSM.
			r, fsm, _, trans = start(reopen())
			if err := r.Barrier(2 * time.Second).Error(); err != nil {
				t.Fatalf("Barrier: %v", err)
			}
			if got := fsm.applied.Load(); got != n {
				t.Fatalf("after restart FSM applied %d, want %d", got, n)
			}
			if term, _ := strconv.ParseUint(r.Stats()["term"], 10, 64); term < 2 {
				t.Fatalf("term after restart = %d, want >= 2 (term was persisted)", term)
			}
			stop(r, trans)
		})
	}
}

func BenchmarkLogStoreStoreLogs(b *testing.B) {
	for _, be := range storeTestBackends() {
		b.Run(be.name, func(b *testing.B) {
			ds, _ := be.open(b)
			s := storeTestNewLogStore(b, ds, "/raft/bench/log")
			const batch, size = 64, 100
			logs := make([]*hraft.Log, batch)
			for i := range logs {
				logs[i] = &hraft.Log{Term: 1, Type: hraft.LogCommand, Data: bytes.Repeat([]byte{'x'}, size), AppendedAt: time.Now()}
			}
			b.SetBytes(batch * size)
			b.ReportAllocs()
			b.ResetTimer()
			next := uint64(1)
			for i := 0; i < b.N; i++ {
				for _, l := range logs {
					l.Index = next
					next++
				}
				if err := s.StoreLogs(logs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
