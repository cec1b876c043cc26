package raft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// leaseCmd encodes lease operations as a command.
func leaseCmd(ops ...cmdOp) []byte { return encodeOps(ops) }

func expireOp(id LeaseID, touch uint64) cmdOp {
	v := binary.BigEndian.AppendUint64(nil, uint64(id))
	return cmdOp{kind: opLeaseExpire, value: binary.BigEndian.AppendUint64(v, touch)}
}

// The state machine's lease table: grants, bindings, detaching, renewals
// racing an expiry, refusals that apply nothing, revocation with one delete
// event per key; and the table survives reopening the store.
func TestLeaseStateMachine(t *testing.T) {
	f, ds := newTestStore(t)
	var events []Event
	f.onChange = func(ev []Event) { events = append(events, ev...) }
	steps := []struct {
		name  string
		cmd   []byte
		ok    bool
		err   error
		check func()
	}{
		{"grant", leaseCmd(grantOps(2 * time.Second)...), true, nil, nil},
		{"bind a", mustTxn(t, Txn{Then: []Op{{Key: "a", Value: []byte("1"), Lease: 1}}}), true, nil, nil},
		{"bind b c", mustTxn(t, Txn{Then: []Op{{Key: "b", Lease: 1}, {Key: "c", Lease: 1}}}), true, nil, nil},
		{"overwrite b without lease", mustTxn(t, Txn{Then: []Op{SetOp("b", []byte("x"))}}), true, nil, nil},
		{"delete c", mustTxn(t, Txn{Then: []Op{DeleteOp("c")}}), true, nil, nil},
		{"keep-alive", leaseCmd(leaseIDOps(opLeaseKeepAlive, 1)...), true, nil, func() {
			if f.leases.leases[1].touch != 6 {
				t.Fatalf("touch %d after a keep-alive at 6", f.leases.leases[1].touch)
			}
		}},
		// The leader timed the grant (touch 1), but a renewal came first.
		{"stale expiry", leaseCmd(expireOp(1, 1)), true, nil, func() {
			if _, ok := f.leases.leases[1]; !ok {
				t.Fatal("a stale expiry ended a renewed lease")
			}
		}},
		{"unknown lease", mustTxn(t, Txn{Then: []Op{SetOp("d", nil), {Key: "e", Lease: 99}}}), false, ErrLeaseNotFound, func() {
			if _, ok, _ := f.get("d"); ok {
				t.Fatal("a refused write was half applied")
			}
		}},
		{"else branch binds to unknown", mustTxn(t, Txn{If: []Cond{IfAbsent("a")}, Else: []Op{{Key: "e", Lease: 99}}}), false, ErrLeaseNotFound, nil},
		{"two grants", leaseCmd(append(grantOps(time.Second), grantOps(time.Second)...)...), false, ErrInvalidCommand, nil},
		{"revoke", leaseCmd(leaseIDOps(opLeaseRevoke, 1)...), true, nil, func() {
			if keys, _ := f.keys(""); !reflect.DeepEqual(keys, []string{"b"}) {
				t.Fatalf("keys after revoke: %q", keys)
			}
		}},
		{"keep-alive after revoke", leaseCmd(leaseIDOps(opLeaseKeepAlive, 1)...), false, nil, nil},
		{"grant 2", leaseCmd(grantOps(time.Hour)...), true, nil, nil},
		{"bind f", mustTxn(t, Txn{Then: []Op{{Key: "f", Lease: 13}}}), true, nil, nil},
		{"expire 2", leaseCmd(expireOp(13, 13)), true, nil, func() {
			if _, ok, _ := f.get("f"); ok {
				t.Fatal("f survived its lease's expiry")
			}
		}},
	}
	for i, s := range steps {
		res, err := applyAt(t, f, uint64(i+1), s.cmd)
		if !errors.Is(err, s.err) || (err == nil && res.OK != s.ok) {
			t.Fatalf("%s (index %d): %+v %v, want ok %v err %v", s.name, i+1, res, err, s.ok, s.err)
		}
		if s.check != nil {
			s.check()
		}
	}
	if e, _, _ := f.getEntry("b"); e.Lease != 0 {
		t.Fatalf("b overwritten without a lease keeps lease %d", e.Lease)
	}
	var deletes []string
	for _, ev := range events {
		if ev.Kind == EventDelete {
			deletes = append(deletes, fmt.Sprintf("%s@%d", ev.Key, ev.Index))
		}
	}
	// c deleted by hand at 5, a by the revocation at 11, f by the expiry.
	if want := []string{"c@5", "a@11", "f@15"}; !reflect.DeepEqual(deletes, want) {
		t.Fatalf("delete events %v, want %v", deletes, want)
	}
	// Reopened on the same datastore: the same table.
	if _, err := applyAt(t, f, 16, leaseCmd(grantOps(time.Minute)...)); err != nil {
		t.Fatal(err)
	}
	if _, err := applyAt(t, f, 17, mustTxn(t, Txn{Then: []Op{{Key: "g", Lease: 16}, {Key: "h", Lease: 16}}})); err != nil {
		t.Fatal(err)
	}
	g, err := newKVStore(ds, f.prefix)
	if err != nil {
		t.Fatal(err)
	}
	sameLeases(t, f, g)
}

// sameLeases fails unless two stores hold the same lease table.
func sameLeases(t *testing.T, f, g *kvStore) {
	t.Helper()
	if len(f.leases.leases) != len(g.leases.leases) {
		t.Fatalf("%d leases, want %d", len(g.leases.leases), len(f.leases.leases))
	}
	for id, l := range f.leases.leases {
		m, ok := g.leases.leases[id]
		if !ok || m.ttl != l.ttl || m.touch != l.touch || !reflect.DeepEqual(m.keys, l.keys) {
			t.Fatalf("lease %d: %+v, want %+v", id, m, l)
		}
	}
}

// A snapshot carries the lease table; restoring it replaces the target's
// (a lease only the target had is gone, records and all).
func TestLeaseSnapshotRestore(t *testing.T) {
	f, _ := newTestStore(t)
	for i, cmd := range [][]byte{
		leaseCmd(grantOps(3 * time.Second)...),
		mustTxn(t, Txn{Then: []Op{{Key: "x", Lease: 1}, {Key: "y", Lease: 1}, SetOp("z", nil)}}),
		leaseCmd(leaseIDOps(opLeaseKeepAlive, 1)...),
		leaseCmd(grantOps(time.Minute)...),
	} {
		if _, err := applyAt(t, f, uint64(i+1), cmd); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	g, gds := newTestStore(t)
	if _, err := applyAt(t, g, 1, leaseCmd(grantOps(time.Hour)...)); err != nil {
		t.Fatal(err)
	}
	// Index 1 is taken by f's lease too, with another TTL: the snapshot's wins.
	if err := g.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	sameLeases(t, f, g)
	h, err := newKVStore(gds, g.prefix)
	if err != nil {
		t.Fatal(err)
	}
	sameLeases(t, f, h)
	// A store wiped to join another cluster has no leases left.
	if err := h.wipe(); err != nil {
		t.Fatal(err)
	}
	if n := countLeaseRecords(t, h); n != 0 || len(h.leases.leases) != 0 {
		t.Fatalf("after wipe: %d records, %d leases", n, len(h.leases.leases))
	}
}

func countLeaseRecords(t *testing.T, f *kvStore) int {
	n := 0
	if err := f.scanLeases(func(LeaseID, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// The tables are bounded: a grant past MaxLeases and a binding past
// MaxLeaseKeys fail with ErrTooLarge, applying nothing.
func TestLeaseLimits(t *testing.T) {
	f, _ := newTestStore(t)
	logs := make([]*hraft.Log, MaxLeases+1)
	for i := range logs {
		logs[i] = &hraft.Log{Index: uint64(i + 1), Type: hraft.LogCommand, Data: leaseCmd(grantOps(time.Minute)...)}
	}
	out := f.ApplyBatch(logs)
	if err := out[MaxLeases-1].(*FSMResponse).Error; err != nil {
		t.Fatalf("grant %d: %v", MaxLeases, err)
	}
	if err := out[MaxLeases].(*FSMResponse).Error; !errors.Is(err, ErrTooLarge) {
		t.Fatalf("grant past MaxLeases: %v", err)
	}
	ops := make([]Op, MaxLeaseKeys+1)
	for i := range ops {
		ops[i] = Op{Key: fmt.Sprintf("k%05d", i), Lease: 1}
	}
	next := uint64(MaxLeases + 2)
	if _, err := applyAt(t, f, next, mustTxn(t, Txn{Then: ops})); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("binding past MaxLeaseKeys: %v", err)
	}
	if keys, _ := f.keys(""); len(keys) != 0 {
		t.Fatalf("a refused binding left %d keys", len(keys))
	}
	if _, err := applyAt(t, f, next+1, mustTxn(t, Txn{Then: ops[:MaxLeaseKeys]})); err != nil {
		t.Fatalf("binding MaxLeaseKeys: %v", err)
	}
	// Rebinding a bound key adds nothing.
	if _, err := applyAt(t, f, next+2, mustTxn(t, Txn{Then: ops[:1]})); err != nil {
		t.Fatalf("rebinding: %v", err)
	}
	for _, ttl := range []time.Duration{MinLeaseTTL - 1, MaxLeaseTTL + 1} {
		if err := checkLeaseTTL(binary.BigEndian.AppendUint64(nil, uint64(ttl))); !errors.Is(err, ErrInvalidTimeout) {
			t.Fatalf("TTL %v: %v", ttl, err)
		}
	}
}

// The leader's timers: a lease is due TTL after it was first seen or last
// renewed, never before; renewed or gone leases are re-timed or forgotten.
func TestExpiredLeases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	timers := map[LeaseID]leaseTimer{}
	l1 := leaseInfo{id: 1, ttl: time.Second, touch: 1}
	l2 := leaseInfo{id: 2, ttl: 3 * time.Second, touch: 2}
	steps := []struct {
		at     time.Duration
		leases []leaseInfo
		due    []LeaseID
	}{
		{0, []leaseInfo{l1, l2}, nil},
		{999 * time.Millisecond, []leaseInfo{l1, l2}, nil},
		{time.Second, []leaseInfo{l1, l2}, []LeaseID{1}},
		// Renewed (touch 5) at 1.5 s: due at 2.5 s.
		{1500 * time.Millisecond, []leaseInfo{{id: 1, ttl: time.Second, touch: 5}, l2}, nil},
		{2400 * time.Millisecond, []leaseInfo{{id: 1, ttl: time.Second, touch: 5}, l2}, nil},
		{3 * time.Second, []leaseInfo{{id: 1, ttl: time.Second, touch: 5}, l2}, []LeaseID{1, 2}},
		// Lease 2 gone: forgotten; seen again it starts over.
		{3100 * time.Millisecond, nil, nil},
		{3200 * time.Millisecond, []leaseInfo{l2}, nil},
		{6100 * time.Millisecond, []leaseInfo{l2}, nil},
		{6200 * time.Millisecond, []leaseInfo{l2}, []LeaseID{2}},
	}
	for _, s := range steps {
		due := expiredLeases(timers, s.leases, t0.Add(s.at))
		var got []LeaseID
		for _, op := range due {
			if checkLeaseExpire(op.value) != nil {
				t.Fatalf("at %v: invalid expiry %x", s.at, op.value)
			}
			got = append(got, leaseOf(op.value))
		}
		if !slices.Equal(got, s.due) {
			t.Fatalf("at %v: due %v, want %v", s.at, got, s.due)
		}
	}
}

func TestLeaseRecordCodec(t *testing.T) {
	l := &leaseState{ttl: 5 * time.Second, touch: 1 << 40}
	got, err := decodeLeaseRecord(encodeLeaseRecord(l))
	if err != nil || got.ttl != l.ttl || got.touch != l.touch {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for name, b := range map[string][]byte{
		"empty":       nil,
		"version":     {2, 1, 1},
		"short":       {leaseRecordVersion, 0x80},
		"trailing":    append(encodeLeaseRecord(l), 0),
		"ttl too low": encodeLeaseRecord(&leaseState{ttl: time.Millisecond}),
	} {
		if _, err := decodeLeaseRecord(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeLeaseRecord(f *testing.F) {
	f.Add(encodeLeaseRecord(&leaseState{ttl: time.Minute, touch: 7}))
	f.Add([]byte{leaseRecordVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLeaseRecord(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes (one form per lease).
		if again := encodeLeaseRecord(l); !bytes.Equal(again, b) {
			t.Fatalf("%x re-encodes as %x", b, again)
		}
	})
}

// Snapshot headers: version 4 (epoch, then lease records) is written;
// version 3 (epoch, no lease records) reads with no leases.
func TestSnapshotHeaderWithLeases(t *testing.T) {
	cases := []struct {
		raw  []uint64
		want snapshotHeader
	}{
		{[]uint64{3, 9, 0, 5, 0, 7}, snapshotHeader{Version: 3, Applied: 9, Clock: 5, Epoch: 7}},
		{[]uint64{4, 9, 0, 5, 0, 7, 0}, snapshotHeader{Version: 4, Applied: 9, Clock: 5, Epoch: 7}},
	}
	for _, c := range cases {
		b, err := cborEnc.Marshal(c.raw)
		if err != nil {
			t.Fatal(err)
		}
		var got snapshotHeader
		if err := readSnapshot(bytes.NewReader(b), snapshotReader{header: func(h snapshotHeader) error { got = h; return nil }}); err != nil || got != c.want {
			t.Fatalf("%v: %+v %v", c.raw, got, err)
		}
	}
	var buf bytes.Buffer
	s := &kvSnapshot{Header: snapshotHeader{Version: snapshotVersion, Applied: 3}, Leases: []snapshotLease{{ID: 1, Record: encodeLeaseRecord(&leaseState{ttl: time.Second, touch: 1})}}}
	if err := s.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	var raw []uint64
	if err := cborDec.NewDecoder(&buf).Decode(&raw); err != nil || len(raw) != 7 || raw[0] != 4 || raw[6] != 1 {
		t.Fatalf("written header %v %v", raw, err)
	}
}

// A set bound to the lease granted in the same entry (and its sequential
// form): the key's lease is the entry's index; without a grant before it
// the whole command is refused; a sequential key too long is refused.
func TestLeaseGrantedSet(t *testing.T) {
	f, _ := newTestStore(t)
	grantSet := func(extra ...cmdOp) []byte {
		ops := append(grantOps(time.Minute), cmdOp{kind: opSetGrantedLease, key: []byte("k"), value: []byte("v")})
		return leaseCmd(append(ops, extra...)...)
	}
	if res, err := applyAt(t, f, 5, grantSet(cmdOp{kind: opSetGrantedSeq, key: []byte("q/")})); err != nil || !res.OK {
		t.Fatalf("grant and set: %+v %v", res, err)
	}
	for _, key := range []string{"k", seqKey("q/", 5)} {
		e, ok, err := f.getEntry(key)
		if err != nil || !ok || e.Lease != 5 || e.CreateIndex != 5 {
			t.Fatalf("%s: %+v %v %v", key, e, ok, err)
		}
	}
	if got, ok := f.leaseKeys(5); !ok || !reflect.DeepEqual(got, []string{"k", "q/00000000000000000005"}) {
		t.Fatalf("lease 5 keys %q %v", got, ok)
	}
	for k, bad := range []struct {
		name string
		cmd  []byte
		err  error
	}{
		{"no grant", leaseCmd(cmdOp{kind: opSetGrantedLease, key: []byte("x")}), ErrInvalidCommand},
		{"set before the grant", leaseCmd(append([]cmdOp{{kind: opSetGrantedSeq, key: []byte("x")}}, grantOps(time.Minute)...)...), ErrInvalidCommand},
		{"sequential key too long", leaseCmd(append(grantOps(time.Minute), cmdOp{kind: opSetGrantedSeq, key: bytes.Repeat([]byte("x"), MaxKeySize-seqDigits+1)})...), ErrTooLarge},
	} {
		index := uint64(6 + k)
		if _, err := applyAt(t, f, index, bad.cmd); !errors.Is(err, bad.err) {
			t.Fatalf("%s: %v, want %v", bad.name, err, bad.err)
		}
		if _, ok := f.leases.leases[LeaseID(index)]; ok {
			t.Fatalf("%s: granted a lease", bad.name)
		}
	}
	// Revoking the lease deletes both keys.
	if _, err := applyAt(t, f, 9, leaseCmd(leaseIDOps(opLeaseRevoke, 5)...)); err != nil {
		t.Fatal(err)
	}
	if keys, _ := f.keys(""); len(keys) != 0 {
		t.Fatalf("keys after revoke: %q", keys)
	}
}
