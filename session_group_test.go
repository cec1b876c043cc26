package raft

import (
	"errors"
	"fmt"
	"testing"

	hraft "github.com/hashicorp/raft"
)

// groupCmd encodes parts as one grouped entry.
func groupCmd(parts ...[]cmdOp) []byte {
	var ops []cmdOp
	for i, p := range parts {
		if i > 0 {
			ops = append(ops, cmdOp{kind: opNext})
		}
		ops = append(ops, p...)
	}
	return encodeOps(ops)
}

// applyGroup applies a grouped entry at index and returns its parts'
// answers.
func applyGroup(t *testing.T, f *kvStore, index uint64, cmd []byte) []FSMResponse {
	t.Helper()
	resp := f.ApplyBatch([]*hraft.Log{{Index: index, Type: hraft.LogCommand, Data: cmd}})[0].(*FSMResponse)
	if resp.Error != nil {
		t.Fatalf("grouped entry at %d: %v", index, resp.Error)
	}
	return resp.parts
}

// Each part of a grouped entry is applied as its own command at the
// entry's index, in order, and answered on its own: its conditions, its
// request ID (a retry inside or outside the group gets the first result,
// a stale one its error while the others apply), its lease check.
func TestGroupedEntryParts(t *testing.T) {
	f, _ := newTestStore(t)
	a := &requestID{client: clientN(1), seq: 1}
	b := &requestID{client: clientN(2), seq: 1}
	if _, err := applyAt(t, f, 3, encodeOps([]cmdOp{{kind: opSet, key: []byte("old"), value: []byte("o")}})); err != nil {
		t.Fatal(err)
	}
	parts := applyGroup(t, f, 5, groupCmd(
		[]cmdOp{{kind: opMeta, value: metaValue(10, a)}, {kind: opSet, key: []byte("x"), value: []byte("1")}},
		[]cmdOp{{kind: opMeta, value: metaValue(11, b)}, {kind: opDelete, key: []byte("old")}},
		// Its condition fails: nothing written, answered OK=false.
		[]cmdOp{{kind: opMeta, value: metaValue(12, nil)}, {kind: opIfAbsent, key: []byte("x")}, {kind: opSet, key: []byte("y"), value: []byte("2")}},
		// A retry of a's request inside the group: a's first answer.
		[]cmdOp{{kind: opMeta, value: metaValue(13, a)}, {kind: opSet, key: []byte("z"), value: []byte("3")}},
		// Bound to a lease nobody granted: refused alone.
		[]cmdOp{{kind: opMeta, value: metaValue(14, nil)}, {kind: opSetLease, key: []byte("l"), value: append(indexBytes(99), 'v')}},
	))
	if len(parts) != 5 {
		t.Fatalf("%d answers for 5 parts", len(parts))
	}
	want := []struct {
		ok  bool
		err error
	}{{true, nil}, {true, nil}, {false, nil}, {true, nil}, {false, ErrLeaseNotFound}}
	for i, w := range want {
		res, _, err := answerOf(parts[i])
		if w.err != nil {
			if !errors.Is(err, w.err) {
				t.Errorf("part %d: %v, want %v", i, err, w.err)
			}
			continue
		}
		if err != nil || res.OK != w.ok || res.Index != 5 {
			t.Errorf("part %d: %+v %v, want OK=%v at 5", i, res, err, w.ok)
		}
	}
	if e, ok, _ := f.getEntry("x"); !ok || string(e.Value) != "1" || e.ModIndex != 5 || e.CreateIndex != 5 {
		t.Errorf("x: %+v %v", e, ok)
	}
	for _, k := range []string{"old", "y", "z", "l"} {
		if _, ok, _ := f.getEntry(k); ok {
			t.Errorf("%s is there", k)
		}
	}
	if f.clockNanos != 14 {
		t.Errorf("clock %d, want the largest stamp, 14", f.clockNanos)
	}
	// A retry of b's request in a later single entry: b's first answer.
	retry := encodeOps([]cmdOp{{kind: opMeta, value: metaValue(20, b)}, {kind: opDelete, key: []byte("x")}})
	if res, err := applyAt(t, f, 6, retry); err != nil || !res.OK || res.Index != 5 {
		t.Errorf("retry of a grouped write: %+v %v, want OK at 5", res, err)
	}
	if _, ok, _ := f.getEntry("x"); !ok {
		t.Error("the retry deleted x")
	}
}

// A grouped entry is only ever what the leader builds: parts separated by
// single markers, none empty; a caller cannot send one.
func TestGroupedEntryShape(t *testing.T) {
	set := cmdOp{kind: opSet, key: []byte("k"), value: []byte("v")}
	meta := cmdOp{kind: opMeta, value: metaValue(1, nil)}
	next := cmdOp{kind: opNext}
	good := [][]cmdOp{
		{meta, set, next, meta, set},
		{set, next, set},
		{meta, set, next, set, next, meta, set},
	}
	for i, ops := range good {
		if b := encodeOps(ops); !walkCommand(b, nil) {
			t.Errorf("good %d: fast parser refused it", i)
		} else if _, err := decodeCommand(b); err != nil {
			t.Errorf("good %d: full decoder: %v", i, err)
		}
	}
	bad := map[string][]cmdOp{
		"leading marker":   {next, set},
		"trailing marker":  {set, next},
		"two markers":      {set, next, next, set},
		"meta-only part":   {set, next, meta},
		"keyed marker":     {set, {kind: opNext, key: []byte("k")}, set},
		"valued marker":    {set, {kind: opNext, value: []byte{1}}, set},
		"meta in the part": {set, next, set, meta},
	}
	for name, ops := range bad {
		b := encodeOps(ops)
		if walkCommand(b, nil) {
			t.Errorf("%s: fast parser accepted it", name)
		}
		if _, err := decodeCommand(b); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: full decoder: %v", name, err)
		}
	}
	if err := refuseInternal([]cmdOp{set, next, set}); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("a caller's grouped command: %v", err)
	}
}

// partOf picks a part's answer; a whole-entry error answers every part,
// and a part the entry does not have is an error, not a zero answer.
func TestPartOf(t *testing.T) {
	stopped := errors.New("stopped")
	one := FSMResponse{Data: resultData(true, 4)}
	grouped := FSMResponse{parts: []FSMResponse{one, {Error: ErrLeaseNotFound}}}
	cases := []struct {
		resp    FSMResponse
		part    int
		wantErr error
		wantOK  bool
	}{
		{one, -1, nil, true},
		{grouped, 0, nil, true},
		{grouped, 1, ErrLeaseNotFound, false},
		{FSMResponse{Error: stopped}, 3, stopped, false},
	}
	for i, c := range cases {
		res, _, err := answerOf(partOf(c.resp, c.part))
		if c.wantErr != nil {
			if !errors.Is(err, c.wantErr) {
				t.Errorf("case %d: %v, want %v", i, err, c.wantErr)
			}
			continue
		}
		if err != nil || res.OK != c.wantOK {
			t.Errorf("case %d: %+v %v", i, res, err)
		}
	}
	if _, _, err := answerOf(partOf(grouped, 2)); err == nil {
		t.Error("a part beyond the entry's answered without an error")
	}
}

// The reader's group: a second write to a key already held, or a group at
// its bound, closes the group first, so that no two parts of an entry
// touch one key.
func TestCollectBounds(t *testing.T) {
	var flushed [][]string
	keys := func(g []*fastWrite) []string {
		var out []string
		for _, fw := range g {
			out = append(out, string(fw.op[0].key))
		}
		return out
	}
	ss := &serverSession{}
	hold := func(key string) {
		fw := &fastWrite{req: getRequest()}
		fw.op[0] = cmdOp{kind: opSet, key: []byte(key), value: []byte("v")}
		if ss.wouldOverflow(fw) {
			flushed = append(flushed, keys(ss.group))
			ss.resetGroup()
		}
		ss.hold(fw)
	}
	for _, k := range []string{"a", "b", "a", "c"} {
		hold(k)
	}
	if fmt.Sprint(flushed) != "[[a b]]" || fmt.Sprint(keys(ss.group)) != "[a c]" {
		t.Fatalf("flushed %v, held %v", flushed, keys(ss.group))
	}
	ss.resetGroup()
	flushed = nil
	for i := range maxGroupParts + 1 {
		hold(fmt.Sprint("k", i))
	}
	if len(flushed) != 1 || len(flushed[0]) != maxGroupParts || len(ss.group) != 1 {
		t.Fatalf("flushed %d groups, held %d", len(flushed), len(ss.group))
	}
	ss.resetGroup()
}

// Whatever the parsers accept applies on a fresh store, alike on two
// replicas: one answer per part, each a result or a deterministic refusal.
func FuzzGroupedEntry(f *testing.F) {
	a := &requestID{client: clientN(1), seq: 1}
	f.Add(groupCmd(
		[]cmdOp{{kind: opMeta, value: metaValue(10, a)}, {kind: opSet, key: []byte("x"), value: []byte("1")}},
		[]cmdOp{{kind: opMeta, value: metaValue(11, a)}, {kind: opDelete, key: []byte("x")}},
	))
	f.Add(groupCmd(
		[]cmdOp{{kind: opIfAbsent, key: []byte("x")}, {kind: opSet, key: []byte("x"), value: []byte("1")}},
		[]cmdOp{{kind: opSetLease, key: []byte("l"), value: append(indexBytes(3), 'v')}},
		[]cmdOp{{kind: opDelete, key: []byte("y")}},
	))
	f.Fuzz(func(t *testing.T, b []byte) {
		ops, err := parseCommand(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidCommand) && !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		parts := 1
		for _, op := range ops {
			if op.kind == opNext {
				parts++
			}
		}
		var answers [2]string
		for i := range answers {
			st, _ := newTestStore(t)
			resp := st.ApplyBatch([]*hraft.Log{{Index: 1, Type: hraft.LogCommand, Data: b}})[0].(*FSMResponse)
			if resp.Error != nil {
				t.Fatalf("a valid entry stopped the store: %v", resp.Error)
			}
			list := []FSMResponse{*resp}
			if parts > 1 {
				list = resp.parts
			}
			if len(list) != parts {
				t.Fatalf("%d answers for %d parts", len(list), parts)
			}
			for j, p := range list {
				if p.Error != nil && !errors.Is(p.Error, ErrLeaseNotFound) && !errors.Is(p.Error, ErrInvalidCommand) {
					t.Fatalf("part %d: %v", j, p.Error)
				}
				answers[i] += fmt.Sprintf("%x %v|", p.Data, p.Error)
			}
			keys, err := st.keys("")
			if err != nil {
				t.Fatal(err)
			}
			answers[i] += fmt.Sprint(keys)
		}
		if answers[0] != answers[1] {
			t.Fatalf("replicas differ: %s vs %s", answers[0], answers[1])
		}
	})
}
