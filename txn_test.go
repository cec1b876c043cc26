package raft

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/tauraft/raft/rafttest"
)

// newTestStore is a state machine on a fresh in-memory datastore.
func newTestStore(t testing.TB) (*kvStore, datastore.Batching) {
	t.Helper()
	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	f, err := newKVStore(ds, "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	return f, ds
}

// applyAt applies one command at index and returns the result.
func applyAt(t testing.TB, f *kvStore, index uint64, cmd []byte) (TxnResult, error) {
	t.Helper()
	resp := f.ApplyBatch([]*hraft.Log{{Index: index, Type: hraft.LogCommand, Data: cmd}})[0].(*FSMResponse)
	if resp.Error != nil {
		return TxnResult{}, resp.Error
	}
	res, ok := parseResult(resp.Data)
	if !ok {
		t.Fatalf("answer of %d bytes", len(resp.Data))
	}
	return res, nil
}

func mustTxn(t testing.TB, x Txn) []byte {
	t.Helper()
	b, err := encodeTxn(x)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Conditions, evaluated against a store where "a" was created at 1 and
// modified at 2, "b" created at 3, and "gone" created then deleted.
func TestTxnConditions(t *testing.T) {
	f, _ := newTestStore(t)
	setup := []Txn{
		{Then: []Op{SetOp("a", []byte("1"))}},
		{Then: []Op{SetOp("a", []byte("2"))}},
		{Then: []Op{SetOp("b", nil)}},
		{Then: []Op{SetOp("gone", []byte("x"))}},
		{Then: []Op{DeleteOp("gone")}},
	}
	for i, x := range setup {
		if _, err := applyAt(t, f, uint64(i+1), mustTxn(t, x)); err != nil {
			t.Fatal(err)
		}
	}
	if e, ok, _ := f.getEntry("a"); !ok || e.CreateIndex != 1 || e.ModIndex != 2 || string(e.Value) != "2" {
		t.Fatalf("a: %+v %v", e, ok)
	}
	cases := []struct {
		name  string
		conds []Cond
		want  bool
	}{
		{"absent holds", []Cond{IfAbsent("nope")}, true},
		{"absent after delete", []Cond{IfAbsent("gone")}, true},
		{"absent fails", []Cond{IfAbsent("a")}, false},
		{"mod index", []Cond{IfModIndex("a", 2)}, true},
		{"mod index stale", []Cond{IfModIndex("a", 1)}, false},
		{"mod index 0 on absent", []Cond{IfModIndex("nope", 0)}, true},
		{"mod index 0 on present", []Cond{IfModIndex("a", 0)}, false},
		{"create index", []Cond{IfCreateIndex("a", 1)}, true},
		{"create index wrong", []Cond{IfCreateIndex("a", 2)}, false},
		{"create index of absent", []Cond{IfCreateIndex("gone", 4)}, false},
		{"value", []Cond{IfValue("a", []byte("2"))}, true},
		{"value wrong", []Cond{IfValue("a", []byte("1"))}, false},
		{"empty value", []Cond{IfValue("b", nil)}, true},
		{"empty value of absent", []Cond{IfValue("nope", nil)}, false},
		{"all hold", []Cond{IfModIndex("a", 2), IfCreateIndex("b", 3), IfAbsent("c")}, true},
		{"one fails", []Cond{IfModIndex("a", 2), IfCreateIndex("b", 4), IfAbsent("c")}, false},
	}
	idx := uint64(len(setup))
	for _, c := range cases {
		idx++
		res, err := applyAt(t, f, idx, mustTxn(t, Txn{If: c.conds, Then: []Op{SetOp("then", []byte(c.name))}, Else: []Op{SetOp("else", []byte(c.name))}}))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.OK != c.want || res.Index != idx {
			t.Errorf("%s: got %+v, want OK=%v at %d", c.name, res, c.want, idx)
		}
		branch, other := "then", "else"
		if !c.want {
			branch, other = other, branch
		}
		if e, ok, _ := f.getEntry(branch); !ok || string(e.Value) != c.name || e.ModIndex != idx {
			t.Errorf("%s: %s branch not applied: %+v", c.name, branch, e)
		}
		if e, ok, _ := f.getEntry(other); ok && e.ModIndex == idx {
			t.Errorf("%s: %s branch applied too", c.name, other)
		}
	}
	// Operations see the changes of the ones before them in the entry.
	idx++
	res, err := applyAt(t, f, idx, mustTxn(t, Txn{If: []Cond{IfAbsent("seq")}, Then: []Op{SetOp("seq", []byte("1")), DeleteOp("seq"), SetOp("seq", []byte("2"))}}))
	if err != nil || !res.OK {
		t.Fatal(res, err)
	}
	if e, _, _ := f.getEntry("seq"); string(e.Value) != "2" || e.CreateIndex != idx {
		t.Fatalf("seq: %+v", e)
	}
}

// Encoding refuses what it must, with the sentinel the caller checks.
func TestEncodeTxnRefusals(t *testing.T) {
	big := make([]byte, MaxValueSize+1)
	cases := []struct {
		name string
		txn  Txn
		want error
	}{
		{"empty", Txn{}, ErrInvalidCommand},
		{"epoch marker", Txn{If: []Cond{{kind: opEpoch}}, Then: []Op{SetOp("k", nil)}}, ErrInvalidCommand},
		{"empty key in cond", Txn{If: []Cond{IfAbsent("")}}, ErrInvalidKey},
		{"empty key in op", Txn{Then: []Op{SetOp("", nil)}}, ErrInvalidKey},
		{"long key", Txn{Else: []Op{DeleteOp(string(make([]byte, MaxKeySize+1)))}}, ErrTooLarge},
		{"large value", Txn{Then: []Op{SetOp("k", big)}}, ErrTooLarge},
		{"large cond value", Txn{If: []Cond{IfValue("k", big)}}, ErrTooLarge},
		{"delete with a lease", Txn{Then: []Op{{Delete: true, Key: "k", Lease: 7}}}, ErrInvalidCommand},
		{"zero cond", Txn{If: []Cond{{}}}, ErrInvalidCommand},
	}
	for _, c := range cases {
		if _, err := encodeTxn(c.txn); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A lease is checked when applied (it may exist by then), not here.
	if _, err := EncodeCommand(Op{Key: "k", Lease: 1}); err != nil {
		t.Errorf("EncodeCommand with a lease: %v", err)
	}
}

// A command with every kind survives encoding and both parsers, and the
// fast and full decoders agree on it.
func TestCommandRoundTrip(t *testing.T) {
	id := &requestID{seq: 9}
	copy(id.client[:], "0123456789abcdef")
	ops := []cmdOp{
		{kind: opMeta, value: metaValue(12345, id)},
		{kind: opIfAbsent, key: []byte("a")},
		{kind: opIfModIndex, key: []byte("b"), value: indexBytes(4)},
		{kind: opIfCreateIndex, key: []byte("c"), value: indexBytes(5)},
		{kind: opIfValue, key: []byte("d"), value: []byte("v")},
		{kind: opSet, key: []byte("e"), value: []byte("x")},
		{kind: opDelete, key: []byte("f")},
		{kind: opElse},
		{kind: opSet, key: []byte("g"), value: []byte{}},
	}
	b := encodeOps(ops)
	if !walkCommand(b, nil) {
		t.Fatal("fast parser refused the canonical encoding")
	}
	if n := encodedLen(ops); n != len(b) {
		t.Fatalf("encodedLen %d, encoding %d bytes", n, len(b))
	}
	long := []cmdOp{{kind: opSet, key: bytes.Repeat([]byte("k"), 300), value: make([]byte, 70000)}, {kind: opIfValue, key: []byte("k"), value: make([]byte, 24)}}
	if n, b := encodedLen(long), encodeOps(long); n != len(b) {
		t.Fatalf("encodedLen %d, encoding %d bytes", n, len(b))
	}
	got, err := parseCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	norm := func(list []cmdOp) []cmdOp {
		out := make([]cmdOp, len(list))
		for i, op := range list {
			out[i] = cmdOp{kind: op.kind, key: append([]byte{}, op.key...), value: append([]byte{}, op.value...)}
		}
		return out
	}
	if !reflect.DeepEqual(norm(got), norm(ops)) {
		t.Fatalf("round trip: %v, want %v", got, ops)
	}
	cmd, err := decodeCommand(b)
	if err != nil || len(cmd.Ops) != len(ops) {
		t.Fatalf("full decoder: %v, %d ops", err, len(cmd.Ops))
	}
	stamp, rid := parseMeta(got[0].value)
	if stamp != 12345 || rid == nil || *rid != *id {
		t.Fatalf("meta: %d %+v", stamp, rid)
	}
	// Orders the shape forbids, and kinds out of place, fail both parsers.
	bad := map[string][]cmdOp{
		"meta not first":  {ops[1], ops[0]},
		"cond after set":  {ops[5], ops[1]},
		"cond after else": {ops[7], ops[1]},
		"two elses":       {ops[7], ops[7], ops[5]},
		"meta alone":      {ops[0]},
		"keyed else":      {{kind: opElse, key: []byte("k")}},
		"short index":     {{kind: opIfModIndex, key: []byte("k"), value: []byte{1}}},
		"bad meta":        {{kind: opMeta, value: []byte{1}}, ops[5]},
		"unknown kind":    {{kind: 99, value: indexBytes(1)}},
		"keyed epoch":     {{kind: opIfEpoch, key: []byte("k"), value: indexBytes(1)}, ops[5]},
		"short epoch":     {{kind: opIfEpoch, value: []byte{1}}, ops[5]},
		"valued marker":   {{kind: opEpoch, value: []byte{1}}},
	}
	for name, list := range bad {
		b := encodeOps(list)
		if walkCommand(b, nil) {
			t.Errorf("%s: fast parser accepted it", name)
		}
		if _, err := decodeCommand(b); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: full decoder: %v", name, err)
		}
	}
	// A transaction may not bring its own meta operation.
	if _, err := parseTxnCommand(b); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("transaction with a meta operation: %v", err)
	}
}

// The clock is the largest stamp applied, survives a reopen, and a command
// without a stamp leaves it.
func TestStateMachineClock(t *testing.T) {
	f, ds := newTestStore(t)
	set := []cmdOp{{kind: opSet, key: []byte("k"), value: []byte("v")}}
	stamped := func(stamp int64) []byte {
		return encodeOps(append([]cmdOp{{kind: opMeta, value: metaValue(stamp, nil)}}, set...))
	}
	for i, cmd := range [][]byte{stamped(100), stamped(300), stamped(200), encodeOps(set)} {
		if _, err := applyAt(t, f, uint64(i+1), cmd); err != nil {
			t.Fatal(err)
		}
	}
	if c := f.clock(); c != 300 {
		t.Fatalf("clock %d, want 300", c)
	}
	g, err := newKVStore(ds, "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	if c := g.clock(); c != 300 || g.appliedIndex() != 4 {
		t.Fatalf("clock after reopen %d (want 300), applied %d (want 4)", c, g.appliedIndex())
	}
}

// Change events: one per change in index order, with the entry after it; a
// delete of an absent key emits nothing; nothing before the commit.
func TestOnChangeEvents(t *testing.T) {
	f, _ := newTestStore(t)
	var got []Event
	f.onChange = func(evs []Event) {
		// The store's lock is free: a reader does not block.
		if _, _, err := f.getEntry("a"); err != nil {
			t.Error(err)
		}
		f.appliedIndex()
		got = append(got, evs...)
	}
	logs := []*hraft.Log{
		{Index: 1, Type: hraft.LogCommand, Data: mustTxn(t, Txn{Then: []Op{SetOp("a", []byte("1")), SetOp("b", []byte("x"))}})},
		{Index: 2, Type: hraft.LogCommand, Data: mustTxn(t, Txn{Then: []Op{SetOp("a", []byte("2")), DeleteOp("nope")}})},
		{Index: 3, Type: hraft.LogCommand, Data: mustTxn(t, Txn{If: []Cond{IfAbsent("a")}, Else: []Op{DeleteOp("a")}})},
	}
	f.ApplyBatch(logs)
	want := []Event{
		{Kind: EventSet, Key: "a", Entry: Entry{Value: []byte("1"), CreateIndex: 1, ModIndex: 1}, Index: 1},
		{Kind: EventSet, Key: "b", Entry: Entry{Value: []byte("x"), CreateIndex: 1, ModIndex: 1}, Index: 1},
		{Kind: EventSet, Key: "a", Entry: Entry{Value: []byte("2"), CreateIndex: 1, ModIndex: 2}, Index: 2},
		{Kind: EventDelete, Key: "a", Entry: Entry{CreateIndex: 1, ModIndex: 3}, Index: 3},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n got %+v\nwant %+v", got, want)
	}
	var reset []uint64
	f.onReset = func(applied uint64) { reset = append(reset, applied) }
	if err := f.wipe(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(reset, []uint64{0}) {
		t.Fatalf("onReset after wipe: %v", reset)
	}
}

// The stored entry record round-trips and refuses anything else.
func TestEntryRecord(t *testing.T) {
	for _, e := range []Entry{
		{Value: []byte{}, CreateIndex: 1, ModIndex: 1},
		{Value: []byte("v"), CreateIndex: 1 << 40, ModIndex: 1<<64 - 1, Lease: 3},
	} {
		got, err := decodeEntry(encodeEntry(e))
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Fatalf("%+v: %+v %v", e, got, err)
		}
	}
	for _, b := range [][]byte{nil, {0}, {2, 1, 1, 0}, {1, 0x80}, {1, 1, 1}} {
		if _, err := decodeEntry(b); err == nil {
			t.Errorf("% x decoded", b)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(Entry{Value: []byte("v"), CreateIndex: 3, ModIndex: 9, Lease: 1}))
	f.Add([]byte{1, 0x80, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		if again := encodeEntry(e); !bytes.Equal(again, b) {
			// Non-shortest varints decode too; the re-encoding must still
			// decode to the same entry.
			e2, err := decodeEntry(again)
			if err != nil || !reflect.DeepEqual(e, e2) {
				t.Fatalf("% x: %+v, then %+v %v", b, e, e2, err)
			}
		}
	})
}

func FuzzParseTxnCommand(f *testing.F) {
	f.Add(mustTxn(f, Txn{If: []Cond{IfModIndex("a", 3), IfValue("b", []byte("x"))}, Then: []Op{SetOp("a", []byte("y"))}, Else: []Op{DeleteOp("b")}}))
	f.Add(mustTxn(f, Txn{If: []Cond{IfAbsent("a")}}))
	f.Add(encodeOps([]cmdOp{{kind: opMeta, value: metaValue(1, nil)}, {kind: opSet, key: []byte("k")}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ops, err := parseTxnCommand(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidCommand) && !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		// Whatever parses applies, and the canonical re-encoding parses to
		// the same operations.
		again, err := parseTxnCommand(encodeOps(ops))
		if err != nil || len(again) != len(ops) {
			t.Fatalf("re-encoding: %v", err)
		}
		st, _ := newTestStore(t)
		// A lease the command binds to does not exist in a fresh store, and
		// two grants in one command are refused: deterministic refusals.
		if _, err := applyAt(t, st, 1, b); err != nil && !errors.Is(err, ErrLeaseNotFound) && !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("valid command did not apply: %v", err)
		}
	})
}

// Txn and GetEntry on every member (a follower forwards) and through a
// Client; refusals keep their sentinel on both sides of the wire; Get, Set,
// Delete and Keys work as before.
func TestTxnThroughMembersAndClient(t *testing.T) {
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/txn")
	tc.form(15*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	cl, err := NewClient(mesh.Node(3), "/raft/txn", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	// Through a follower's Cluster.Txn: create, then compare-and-set.
	res, err := tc.get(f).Txn(Txn{If: []Cond{IfAbsent("lock")}, Then: []Op{SetOp("lock", []byte("me"))}}, 5*time.Second)
	if err != nil || !res.OK || res.Index == 0 {
		t.Fatalf("follower Txn: %+v %v", res, err)
	}
	created := res.Index
	res, err = tc.get(f).Txn(Txn{If: []Cond{IfAbsent("lock")}, Then: []Op{SetOp("lock", []byte("you"))}, Else: []Op{SetOp("lost", []byte("1"))}}, 5*time.Second)
	if err != nil || res.OK || res.Index <= created {
		t.Fatalf("second IfAbsent: %+v %v", res, err)
	}
	// Through the Client, to the follower.
	e, found, err := cl.GetEntry("lock", int64(5*time.Second), mesh.ID(f))
	if err != nil || !found || string(e.Value) != "me" || e.CreateIndex != created || e.ModIndex != created {
		t.Fatalf("Client.GetEntry: %+v %v %v", e, found, err)
	}
	res, err = cl.Txn(Txn{If: []Cond{IfCreateIndex("lock", created), IfModIndex("lock", created)}, Then: []Op{SetOp("lock", []byte("still me"))}}, 5*time.Second, mesh.ID(f))
	if err != nil || !res.OK {
		t.Fatalf("Client.Txn: %+v %v", res, err)
	}
	tc.waitFor(10*time.Second, "the write on every member", func() bool {
		for _, i := range []int{0, 1, 2} {
			e, ok, err := tc.get(i).GetEntry("lock")
			if err != nil || !ok || e.ModIndex != res.Index || e.CreateIndex != created {
				return false
			}
		}
		return true
	})
	if _, ok, err := cl.GetEntry("nope", 0, mesh.ID(f)); ok || err != nil {
		t.Fatalf("absent key: %v %v", ok, err)
	}
	// Set/Get/Delete/Keys as before, and Set gives versions too.
	if err := cl.Set("plain", []byte("v"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := cl.Get("plain", int64(5*time.Second)); err != nil || !ok || string(v) != "v" {
		t.Fatalf("Get: %q %v %v", v, ok, err)
	}
	if err := tc.get(l).Delete("plain", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if keys, err := cl.Keys("", mesh.ID(l)); err != nil || !reflect.DeepEqual(keys, []string{"lock", "lost"}) {
		t.Fatalf("Keys: %q %v", keys, err)
	}
	// Refusals, both sides of the wire.
	big := make([]byte, MaxValueSize+1)
	refusals := []struct {
		name string
		txn  Txn
		want error
	}{
		{"too large", Txn{Then: []Op{SetOp("k", big)}}, ErrTooLarge},
		{"lease", Txn{Then: []Op{{Key: "k", Value: []byte("v"), Lease: 9}}}, ErrLeaseNotFound},
		{"epoch marker", Txn{If: []Cond{{kind: opEpoch}}}, ErrInvalidCommand},
		{"empty key", Txn{If: []Cond{IfValue("", nil)}}, ErrInvalidKey},
	}
	for _, r := range refusals {
		if _, err := cl.Txn(r.txn, time.Second, mesh.ID(f)); !errors.Is(err, r.want) {
			t.Errorf("Client %s: %v, want %v", r.name, err, r.want)
		}
		if _, err := tc.get(f).Txn(r.txn, time.Second); !errors.Is(err, r.want) {
			t.Errorf("Cluster %s: %v, want %v", r.name, err, r.want)
		}
	}
	// A transaction made by hand with a meta operation is refused by the
	// member (as a raw request): only the leader adds one.
	raw := encodeOps([]cmdOp{{kind: opMeta, value: metaValue(1, nil)}, {kind: opSet, key: []byte("k")}})
	resp, err := cl.caller.call(context.Background(), mesh.ID(f), &request{Cmd: cmdTxn, Command: raw, Timeout: int64(time.Second)}, time.Now().Add(5*time.Second))
	if err != nil || !errors.Is(resp.err(), ErrInvalidCommand) {
		t.Fatalf("raw txn with meta: %v %v", resp, err)
	}
	if _, err := tc.get(l).Apply(raw, time.Second); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("Apply with meta: %v", err)
	}
	// The leader stamped what it proposed: the clock moved, on every member.
	tc.waitFor(10*time.Second, "the clock on every member", func() bool {
		for _, i := range []int{0, 1, 2} {
			if tc.get(i).(*cluster).fsm.clock() == 0 {
				return false
			}
		}
		return true
	})
}
