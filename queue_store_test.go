package raft

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// steps applies commands at consecutive indexes from first and returns the
// results.
func applySteps(t *testing.T, f *kvStore, first uint64, cmds ...[]byte) []TxnResult {
	t.Helper()
	out := make([]TxnResult, len(cmds))
	for i, cmd := range cmds {
		res, err := applyAt(t, f, first+uint64(i), cmd)
		if err != nil {
			t.Fatalf("command %d (index %d): %v", i, first+uint64(i), err)
		}
		out[i] = res
	}
	return out
}

func mustEnqueue(t *testing.T, queue, value string) []byte {
	t.Helper()
	ops, err := enqueueOps(queue, []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	return encodeOps(ops)
}

func wantHead(t *testing.T, f *kvStore, queue string, found bool, id uint64, value string) {
	t.Helper()
	h, err := f.queueHead(queue)
	if err != nil {
		t.Fatal(err)
	}
	if h.found != found || (found && (h.id != id || string(h.value) != value)) {
		t.Fatalf("head of %q: found %v id %d %q, want found %v id %d %q", queue, h.found, h.id, h.value, found, id, value)
	}
	if h.applied != f.appliedIndex() {
		t.Fatalf("head read from applied index %d, store at %d", h.applied, f.appliedIndex())
	}
}

// The state machine's side of a queue: items named by their enqueue's
// index, the head read stepping over claimed items, a lapsed claim making
// its item the head again, a fenced ack, and two queues whose names are
// prefixes of each other kept apart. The keys live in the queue subspace,
// and Keys, snapshots and a wipe see them there.
func TestQueueStateMachine(t *testing.T) {
	f, ds := newTestStore(t)
	res := applySteps(t, f, 1,
		mustEnqueue(t, "jobs", "a"),        // 1
		mustEnqueue(t, "jobs", "b"),        // 2
		mustEnqueue(t, "job", "x"),         // 3: a queue whose name prefixes another's
		mustEnqueue(t, "jobs", "c"),        // 4
		leaseCmd(grantOps(time.Second)...), // 5
		encodeOps(claimOps("jobs", 1, 5)),  // 6
		encodeOps(claimOps("jobs", 1, 5)),  // 7: taken already
		leaseCmd(grantOps(time.Second)...), // 8
		encodeOps(claimOps("jobs", 2, 8)),  // 9
	)
	if res[0].Index != 1 || res[3].Index != 4 || !res[5].OK || res[6].OK || !res[8].OK {
		t.Fatalf("results %+v", res)
	}
	if e, ok, _ := f.getEntry(queueItemKey("jobs", 2)); !ok || e.CreateIndex != 2 || string(e.Value) != "b" {
		t.Fatalf("item 2: %+v %v", e, ok)
	}
	wantHead(t, f, "jobs", true, 4, "c")
	wantHead(t, f, "job", true, 3, "x")
	wantHead(t, f, "nothing", false, 0, "")

	// The claim of item 1 lapses: item 1 is the head again, ahead of 4.
	applySteps(t, f, 10, leaseCmd(expireOp(5, 5)))
	wantHead(t, f, "jobs", true, 1, "a")

	// Ack of item 2 by its claim's token; a second ack, or one with another
	// token, is refused.
	res = applySteps(t, f, 11,
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 6}, 0)), // a stale token
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 9}, 8)),
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 9}, 8)),
	)
	if res[0].OK || !res[1].OK || res[2].OK {
		t.Fatalf("acks %+v, want refused, done, refused", res)
	}
	if _, ok := f.leases.leases[8]; ok {
		t.Fatal("the ack left its claim's lease")
	}
	if _, ok, _ := f.getEntry(queueItemKey("jobs", 2)); ok {
		t.Fatal("acked item still there")
	}

	keys, err := f.keys(queueKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{queueItemKey("job", 3), queueItemKey("jobs", 1), queueItemKey("jobs", 4)}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("queue keys %q, want %q", keys, want)
	}
	if n := countNested(t, ds, f.prefix); n != 3 {
		t.Fatalf("%d records in the queue subspace, want 3", n)
	}

	// A snapshot carries the queue keys to another store; a wipe clears them.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g, gds := newTestStore(t)
	restoreInto(t, snap, g)
	wantHead(t, g, "jobs", true, 1, "a")
	if n := countNested(t, gds, g.prefix); n != 3 {
		t.Fatalf("%d records in the restored queue subspace, want 3", n)
	}
	if err := g.wipe(); err != nil {
		t.Fatal(err)
	}
	if n := countNested(t, gds, g.prefix); n != 0 {
		t.Fatalf("%d queue records after a wipe", n)
	}
}

// restoreInto restores a snapshot into another store.
func restoreInto(t *testing.T, snap interface{ Release() }, g *kvStore) {
	t.Helper()
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	if err := g.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
}

func countNested(t *testing.T, ds datastore.Batching, prefix string) int {
	t.Helper()
	res, err := ds.Query(context.Background(), query.Query{Prefix: prefix + "/" + queueSegment, KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	all, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	return len(all)
}

// A store of format 2 is upgraded when opened: a key under the queue
// prefix that an older build stored flat moves to the queue subspace and
// reads as before; other keys stay. A format this build does not know is
// refused.
func TestQueueFormatUpgrade(t *testing.T) {
	f, ds := newTestStore(t)
	ctx := context.Background()
	qkey := queueItemKey("old", 7)
	for k, v := range map[string]string{qkey: "queued", "plain": "p", queueKeyPrefix + "x": "short"} {
		if err := ds.Put(ctx, f.flatKey([]byte(k)), encodeEntry(Entry{Value: []byte(v), CreateIndex: 7, ModIndex: 7})); err != nil {
			t.Fatal(err)
		}
	}
	if err := ds.Put(ctx, f.formatKey, []byte{2}); err != nil {
		t.Fatal(err)
	}
	g, err := newKVStore(ds, f.prefix)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{qkey: "queued", "plain": "p", queueKeyPrefix + "x": "short"} {
		if got, ok, err := g.get(k); err != nil || !ok || string(got) != v {
			t.Fatalf("%q after the upgrade: %q %v %v", k, got, ok, err)
		}
	}
	if _, err := ds.Get(ctx, f.flatKey([]byte(qkey))); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("the flat record of a queue key stayed: %v", err)
	}
	wantHead(t, g, "old", true, 7, "queued")
	if b, _ := ds.Get(ctx, f.formatKey); len(b) != 1 || b[0] != dataFormat {
		t.Fatalf("format record %x", b)
	}
	if err := ds.Put(ctx, f.formatKey, []byte{9}); err != nil {
		t.Fatal(err)
	}
	if _, err := newKVStore(ds, f.prefix); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("format 9 opened: %v", err)
	}
}

// Where keys live: only keys of the reserved prefix with more than an ID
// after it go to the queue subspace, and the mapping is one to one.
func TestQueueKeyLayout(t *testing.T) {
	f, _ := newTestStore(t)
	for _, tc := range []struct {
		key    string
		nested bool
	}{
		{"plain", false},
		{queueKeyPrefix, false},
		{queueKeyPrefix + "12345678", false}, // nothing before the ID
		{queueKeyPrefix + "q12345678", true},
		{queueItemKey("jobs", 1), true},
		{queueClaimKey("jobs", 1), true},
		{"\x00queue", false},
	} {
		dk := f.dataKey(tc.key)
		nested := strings.Contains(dk.String(), "/"+queueSegment+"/")
		if nested != tc.nested {
			t.Errorf("%q stored at %s: nested %v, want %v", tc.key, dk, nested, tc.nested)
		}
		if nested && dk == f.flatKey([]byte(tc.key)) {
			t.Errorf("%q: nested and flat keys agree", tc.key)
		}
	}
	if queueItemKey("jobs", 1) == queueClaimKey("jobs", 1) || f.dataKey(queueItemKey("jobs", 1)) == f.dataKey(queueClaimKey("jobs", 1)) {
		t.Fatal("an item and its claim share a key")
	}
}

// Queue names, and the keys enqueue takes.
func TestQueueNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"jobs", nil},
		{"a/b c", nil},
		{"ünïcode", nil},
		{strings.Repeat("n", MaxQueueNameSize), nil},
		{"", ErrInvalidKey},
		{"a\x00b", ErrInvalidKey},
		{strings.Repeat("n", MaxQueueNameSize+1), ErrTooLarge},
	} {
		if err := validateQueueName(tc.name); !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("validateQueueName(%.20q) = %v, want %v", tc.name, err, tc.err)
		}
		err := checkItemsPrefix(queueItemsPrefix(tc.name))
		if (tc.err == nil) != (err == nil) {
			t.Errorf("checkItemsPrefix of %.20q: %v", tc.name, err)
		}
	}
	for _, key := range []string{"jobs", queueClaimsPrefix("jobs"), queueKeyPrefix + "jobs", queueItemKey("jobs", 1)} {
		if err := checkOp(opEnqueue, key, nil); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("enqueue to %q: %v", key, err)
		}
	}
	if _, err := enqueueOps("jobs", make([]byte, MaxValueSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("an item over MaxValueSize: %v", err)
	}
}
