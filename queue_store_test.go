package raft

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

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

// applyClaim applies one command holding a claim and returns what it found.
func applyClaim(t *testing.T, f *kvStore, index uint64, cmd []byte) (TxnResult, claimedItem) {
	t.Helper()
	resp := f.ApplyBatch([]*hraft.Log{{Index: index, Type: hraft.LogCommand, Data: cmd}})[0].(*FSMResponse)
	if resp.Error != nil {
		t.Fatalf("claim at %d: %v", index, resp.Error)
	}
	res, got, ok := parseClaimResult(resp.Data)
	if !ok || got == nil {
		t.Fatalf("claim at %d: answer %x", index, resp.Data)
	}
	return res, *got
}

func wantClaim(t *testing.T, f *kvStore, index uint64, queue string, lease LeaseID, found bool, id uint64, value string) {
	t.Helper()
	res, got := applyClaim(t, f, index, encodeOps(claimOps(queue, lease)))
	if got.found != found || (found && (got.id != id || string(got.value) != value)) || res.Index != index {
		t.Fatalf("claim of %q at %d: %+v %+v, want found %v id %d %q", queue, index, res, got, found, id, value)
	}
	if !found {
		return
	}
	if e, ok, _ := f.getEntry(queueClaimKey(queue, id)); !ok || e.CreateIndex != index || e.Lease != lease {
		t.Fatalf("claim key of item %d: %+v %v", id, e, ok)
	}
}

// The state machine's side of a queue: items named by their enqueue's
// index, a claim taking the lowest unclaimed item (stepping over claimed
// ones), a lapsed claim making its item the lowest again, a fenced ack,
// and two queues whose names are prefixes of each other kept apart. The
// keys live in the queue subspace, and Keys, snapshots and a wipe see them
// there.
func TestQueueStateMachine(t *testing.T) {
	f, ds := newTestStore(t)
	res := applySteps(t, f, 1,
		mustEnqueue(t, "jobs", "a"),        // 1
		mustEnqueue(t, "jobs", "b"),        // 2
		mustEnqueue(t, "job", "x"),         // 3: a queue whose name prefixes another's
		mustEnqueue(t, "jobs", "c"),        // 4
		leaseCmd(grantOps(time.Second)...), // 5
		leaseCmd(grantOps(time.Second)...), // 6
	)
	if res[0].Index != 1 || res[3].Index != 4 {
		t.Fatalf("results %+v", res)
	}
	if e, ok, _ := f.getEntry(queueItemKey("jobs", 2)); !ok || e.CreateIndex != 2 || string(e.Value) != "b" {
		t.Fatalf("item 2: %+v %v", e, ok)
	}
	wantClaim(t, f, 7, "jobs", 5, true, 1, "a")
	wantClaim(t, f, 8, "jobs", 6, true, 2, "b")
	wantClaim(t, f, 9, "job", 6, true, 3, "x")
	wantClaim(t, f, 10, "job", 6, false, 0, "")
	wantClaim(t, f, 11, "nothing", 6, false, 0, "")
	if _, err := applyAt(t, f, 12, encodeOps(claimOps("jobs", 99))); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("claim under an unknown lease: %v", err)
	}
	if f.leases.leases[6].touch != 11 {
		t.Fatalf("a claim did not renew its lease: touch %d", f.leases.leases[6].touch)
	}

	// The claim of item 1 lapses: item 1 is the lowest again, ahead of 4.
	applySteps(t, f, 13, leaseCmd(grantOps(time.Second)...), leaseCmd(expireOp(5, 7)))
	wantClaim(t, f, 15, "jobs", 13, true, 1, "a")
	wantClaim(t, f, 16, "jobs", 13, true, 4, "c")

	// Ack of item 2 by its claim's token; a second ack, or one with another
	// token, is refused.
	res = applySteps(t, f, 17,
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 7}, 0)), // a stale token
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 8}, 6)),
		encodeOps(ackOps("jobs", Item{ID: 2, Token: 8}, 6)),
	)
	if res[0].OK || !res[1].OK || res[2].OK {
		t.Fatalf("acks %+v, want refused, done, refused", res)
	}
	if _, ok := f.leases.leases[6]; ok {
		t.Fatal("the ack left the lease it revoked")
	}
	if _, ok, _ := f.getEntry(queueItemKey("jobs", 2)); ok {
		t.Fatal("acked item still there")
	}
	if got, token, err := f.claimOfLease("jobs", 13); err != nil || !got.found || token != 15 || got.id != 1 {
		// Lease 13 holds claims of items 1 and 4; the lowest is found.
		t.Fatalf("claimOfLease: %+v %d %v", got, token, err)
	}
	if got, _, err := f.claimOfLease("jobs", 6); err != nil || got.found {
		t.Fatalf("claimOfLease of a revoked lease: %+v %v", got, err)
	}

	keys, err := f.keys(queueKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{queueItemKey("job", 3), queueItemKey("jobs", 1), queueClaimKey("jobs", 1), queueItemKey("jobs", 4), queueClaimKey("jobs", 4)}
	slices.Sort(want)
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("queue keys %q, want %q", keys, want)
	}
	if n := countNested(t, ds, f.prefix); n != len(want) {
		t.Fatalf("%d records in the queue subspace, want %d", n, len(want))
	}

	// A snapshot carries the queue keys to another store; a wipe clears them.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g, gds := newTestStore(t)
	restoreInto(t, snap, g)
	if keys2, _ := g.keys(queueKeyPrefix); !reflect.DeepEqual(keys2, want) {
		t.Fatalf("restored queue keys %q", keys2)
	}
	if n := countNested(t, gds, g.prefix); n != len(want) {
		t.Fatalf("%d records in the restored queue subspace, want %d", n, len(want))
	}
	if err := g.wipe(); err != nil {
		t.Fatal(err)
	}
	if n := countNested(t, gds, g.prefix); n != 0 {
		t.Fatalf("%d queue records after a wipe", n)
	}
}

// A claim sees the changes made earlier in its own batch (enqueues, claims,
// acks, expiries), so every replica answers alike however Raft splits the
// log into batches: one batch, one entry per batch and random splits give
// the same answers and the same keys.
func TestQueueClaimBatchSplits(t *testing.T) {
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var cmds [][]byte
	cmds = append(cmds, leaseCmd(grantOps(time.Second)...), leaseCmd(grantOps(time.Second)...)) // leases 1, 2
	for i := range 60 {
		switch rng.Intn(5) {
		case 0, 1:
			cmds = append(cmds, mustEnqueue(t, "q", strconv.Itoa(i)))
		case 2:
			cmds = append(cmds, encodeOps(claimOps("q", LeaseID(1+rng.Intn(2)))))
		case 3:
			// An ack of a claim that may exist: item and token guessed from
			// earlier indexes (the same on every store).
			id, token := uint64(3+rng.Intn(len(cmds))), uint64(3+rng.Intn(len(cmds)))
			cmds = append(cmds, encodeOps(ackOps("q", Item{ID: id, Token: token}, 0)))
		case 4:
			cmds = append(cmds, mustTxn(t, Txn{Then: []Op{DeleteOp(queueClaimKey("q", uint64(3+rng.Intn(len(cmds)))))}}))
		}
	}
	run := func(split func(i int) bool) ([][]byte, []string) {
		f, _ := newTestStore(t)
		var answers [][]byte
		var batch []*hraft.Log
		flush := func() {
			for _, r := range f.ApplyBatch(batch) {
				resp := r.(*FSMResponse)
				if resp.Error != nil {
					answers = append(answers, []byte(resp.Error.Error()))
				} else {
					answers = append(answers, resp.Data)
				}
			}
			batch = nil
		}
		for i, cmd := range cmds {
			batch = append(batch, &hraft.Log{Index: uint64(i + 1), Type: hraft.LogCommand, Data: cmd})
			if split(i) {
				flush()
			}
		}
		flush()
		keys, err := f.keys("")
		if err != nil {
			t.Fatal(err)
		}
		return answers, keys
	}
	oneA, oneK := run(func(int) bool { return false })
	eachA, eachK := run(func(int) bool { return true })
	randA, randK := run(func(int) bool { return rng.Intn(4) == 0 })
	for i := range cmds {
		if !bytes.Equal(oneA[i], eachA[i]) || !bytes.Equal(oneA[i], randA[i]) {
			t.Fatalf("entry %d: answers differ: one batch %x, one per batch %x, random %x", i+1, oneA[i], eachA[i], randA[i])
		}
	}
	if !reflect.DeepEqual(oneK, eachK) || !reflect.DeepEqual(oneK, randK) {
		t.Fatalf("keys differ:\n%q\n%q\n%q", oneK, eachK, randK)
	}
	claims := 0
	for _, a := range oneA {
		if _, got, ok := parseClaimResult(a); ok && got != nil && got.found {
			claims++
		}
	}
	t.Logf("%d entries, %d claims that found an item, %d keys left", len(cmds), claims, len(oneK))
	if claims == 0 {
		t.Fatal("no claim found an item: the test proves nothing")
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
	if _, err := applyAt(t, g, 8, leaseCmd(grantOps(time.Second)...)); err != nil {
		t.Fatal(err)
	}
	wantClaim(t, g, 9, "old", 8, true, 7, "queued")
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
