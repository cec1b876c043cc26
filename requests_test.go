package raft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	hraft "github.com/hashicorp/raft"
)

func clientN(n int) [clientIDSize]byte {
	var id [clientIDSize]byte
	binary.BigEndian.PutUint64(id[8:], uint64(n))
	return id
}

// Eviction is by log order only: a client's oldest result past the
// per-client bound, the least recently writing client past the total.
func TestRequestTableEviction(t *testing.T) {
	cases := []struct {
		name      string
		writes    []requestID // recorded at index 1, 2, ...
		present   []requestID
		gone      []requestID
		stale     []requestID
		nClients  int
		sameIndex bool // all at one index: ties go by client ID
	}{
		{
			name:    "per client",
			writes:  seqs(clientN(1), 1, maxRequestsPerClient+2),
			present: []requestID{{clientN(1), 3}, {clientN(1), maxRequestsPerClient + 2}},
			stale:   []requestID{{clientN(1), 1}, {clientN(1), 2}},
			gone:    []requestID{{clientN(1), maxRequestsPerClient + 3}}, nClients: 1,
		},
		{
			name:     "total, least recent client first",
			writes:   append(append([]requestID{{clientN(0), 1}}, oneEach(1, maxRequestClients-1)...), requestID{clientN(0), 2}, requestID{clientN(9999), 1}),
			present:  []requestID{{clientN(0), 1}, {clientN(0), 2}, {clientN(9999), 1}, {clientN(2), 1}},
			gone:     []requestID{{clientN(1), 1}},
			nClients: maxRequestClients,
		},
		{
			name:      "ties by client ID",
			writes:    append(oneEach(1, maxRequestClients), requestID{clientN(0), 1}),
			present:   []requestID{{clientN(0), 1}, {clientN(maxRequestClients), 1}},
			gone:      []requestID{{clientN(1), 1}},
			nClients:  maxRequestClients,
			sameIndex: true,
		},
	}
	for _, c := range cases {
		tab := newRequestTable()
		for i, id := range c.writes {
			idx := uint64(i + 1)
			if c.sameIndex {
				idx = 1
			}
			tab.record(id, reqResult{ok: id.seq%2 == 0, index: idx}, idx)
		}
		if len(tab.clients) != c.nClients {
			t.Errorf("%s: %d clients, want %d", c.name, len(tab.clients), c.nClients)
		}
		for _, id := range c.present {
			if r, found, _ := tab.lookup(id); !found || r.ok != (id.seq%2 == 0) {
				t.Errorf("%s: %v not found (%+v)", c.name, id, r)
			}
		}
		for _, id := range c.gone {
			if _, found, stale := tab.lookup(id); found || stale {
				t.Errorf("%s: %v found=%v stale=%v, want neither", c.name, id, found, stale)
			}
		}
		for _, id := range c.stale {
			if _, found, stale := tab.lookup(id); found || !stale {
				t.Errorf("%s: %v found=%v stale=%v, want stale", c.name, id, found, stale)
			}
		}
		// Every record round-trips through its stored form.
		for id, rec := range tab.clients {
			got, err := decodeClientRecord(encodeClientRecord(rec))
			if err != nil || !sameRecord(got, rec) {
				t.Fatalf("%s: record of %x: %+v %v", c.name, id, got, err)
			}
		}
	}
}

func seqs(client [clientIDSize]byte, from, to uint64) []requestID {
	var out []requestID
	for s := from; s <= to; s++ {
		out = append(out, requestID{client, s})
	}
	return out
}

func oneEach(from, to int) []requestID {
	var out []requestID
	for n := from; n <= to; n++ {
		out = append(out, requestID{clientN(n), 1})
	}
	return out
}

// A retried Client write is answered with its first result and applied
// once, also after a reopen of the store and after a snapshot restore into
// another one.
func TestRequestDeduplication(t *testing.T) {
	f, ds := newTestStore(t)
	id := &requestID{client: clientN(7), seq: 1}
	incr := func(mod uint64, value string) []byte {
		return encodeOps([]cmdOp{
			{kind: opMeta, value: metaValue(1, id)},
			{kind: opIfModIndex, key: []byte("n"), value: indexBytes(mod)},
			{kind: opSet, key: []byte("n"), value: []byte(value)},
		})
	}
	first, err := applyAt(t, f, 5, incr(0, "1"))
	if err != nil || !first.OK || first.Index != 5 {
		t.Fatal(first, err)
	}
	// The retry's condition no longer holds; it must get OK=true at 5 all
	// the same, and change nothing.
	again, err := applyAt(t, f, 6, incr(0, "1"))
	if err != nil || again != first {
		t.Fatalf("retry: %+v %v, want %+v", again, err, first)
	}
	if e, _, _ := f.getEntry("n"); e.ModIndex != 5 {
		t.Fatalf("retry applied: %+v", e)
	}
	reopened, err := newKVStore(ds, "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := applyAt(t, reopened, 7, incr(0, "1")); err != nil || r != first {
		t.Fatalf("retry after reopen: %+v %v", r, err)
	}
	snap, err := reopened.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.(*kvSnapshot).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	other, _ := newTestStore(t)
	if err := other.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	if r, err := applyAt(t, other, 8, incr(0, "1")); err != nil || r != first {
		t.Fatalf("retry after restore: %+v %v", r, err)
	}
	// A request older than what the table keeps of its client is refused,
	// not applied again.
	for s := uint64(2); s <= maxRequestsPerClient+2; s++ {
		id.seq = s
		if _, err := applyAt(t, other, 8+s, incr(s, "x")); err != nil {
			t.Fatal(err)
		}
	}
	id.seq = 1
	if _, err := applyAt(t, other, 1000, incr(0, "1")); !errors.Is(err, errStaleRequest) || IsNotApplied(err) {
		t.Fatalf("stale retry: %v", err)
	}
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func FuzzDecodeClientRecord(f *testing.F) {
	f.Add(encodeClientRecord(&clientRecord{floor: 3, last: 10, results: []reqResult{{seq: 4, ok: true, index: 9}, {seq: 5, index: 10}}}))
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeClientRecord(b)
		if err != nil {
			return
		}
		if len(c.results) > maxRequestsPerClient {
			t.Fatalf("%d results", len(c.results))
		}
		again, err := decodeClientRecord(encodeClientRecord(c))
		if err != nil || !sameRecord(again, c) {
			t.Fatalf("round trip: %+v %v", again, err)
		}
	})
}

var _ = hraft.LogCommand

// A stored record is allocated at its exact size: the store keeps it, and a
// Client's every write stores its record again on every member.
func TestClientRecordExactSize(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 16383, 16384, 1 << 35, 1<<63 - 1, 1<<64 - 1} {
		rec := &clientRecord{floor: v / 2, last: v}
		for i := range uint64(maxRequestsPerClient) {
			rec.results = append(rec.results, reqResult{seq: v - i, ok: i%2 == 0, index: v / (i + 1)})
		}
		b := encodeClientRecord(rec)
		if cap(b) != len(b) {
			t.Errorf("record with values near %d: %d bytes in %d", v, len(b), cap(b))
		}
		got, err := decodeClientRecord(b)
		if err != nil || !sameRecord(got, rec) {
			t.Fatalf("record with values near %d: %+v %v", v, got, err)
		}
	}
}

// The encoding kept in step by record (clientRecord.body) is at every step
// the one encoded from scratch, through the window's turnover, with seqs
// and indexes of every varint length.
func TestClientRecordBodyInStep(t *testing.T) {
	tbl := newRequestTable()
	id := clientN(3)
	rng := rand.New(rand.NewPCG(1, 2))
	seq, index := uint64(0), uint64(0)
	for step := range 3 * maxRequestsPerClient {
		seq += 1 + rng.Uint64N(1<<uint(rng.IntN(40)))
		index += 1 + rng.Uint64N(1<<uint(rng.IntN(50)))
		tbl.record(requestID{client: id, seq: seq}, reqResult{ok: rng.IntN(2) == 0, index: index}, index)
		c := tbl.clients[id]
		got := encodeClientRecord(c)
		fresh := *c
		fresh.body = nil
		if want := encodeClientRecord(&fresh); !bytes.Equal(got, want) {
			t.Fatalf("step %d: kept % x, fresh % x", step, got, want)
		}
		back, err := decodeClientRecord(got)
		if err != nil || !sameRecord(back, c) {
			t.Fatalf("step %d: %+v %v", step, back, err)
		}
	}
}

// sameRecord tells whether two records hold the same requests (whatever
// encoding either keeps).
func sameRecord(a, b *clientRecord) bool {
	return a.floor == b.floor && a.last == b.last && slices.Equal(a.results, b.results)
}
