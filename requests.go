package raft

// Exactly-once Client writes: every Client write carries a request ID (the
// client's random identity and a sequence number), and the state machine
// remembers the results of recent IDs, so a retried write is answered with
// its first result instead of being applied again. The table is part of the
// replicated state: it changes only in Apply, in log order, is persisted
// with each applied batch and travels in snapshots, so every replica (and
// every future leader) answers a retry alike.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
)

// Bounds of the request table. A retry is recognised while its client is
// among the maxRequestClients that wrote most recently (by log order) and
// the request is among that client's maxRequestsPerClient latest ones; a
// Client has at most a few writes in flight, and retries within its call's
// timeout, so both are far above what a retry needs.
const (
	maxRequestClients    = 1024
	maxRequestsPerClient = 64
	// clientIDSize is the size of a Client's random identity.
	clientIDSize = 16
)

// requestID names one Client write.
type requestID struct {
	client [clientIDSize]byte
	seq    uint64
}

// reqResult is the recorded result of one request.
type reqResult struct {
	seq   uint64
	ok    bool
	index uint64
}

// clientRecord is what the table keeps of one client.
type clientRecord struct {
	// floor is the highest sequence number dropped from results: a request
	// at or below it that is not in results was answered long ago, and its
	// outcome can no longer be told.
	floor uint64
	// last is the log index of the client's latest request, which orders
	// clients for eviction.
	last    uint64
	results []reqResult // in the order applied, at most maxRequestsPerClient
	// body is nil or exactly the encoding of results (see
	// encodeClientRecord), kept in step by record: a client's record is
	// stored again at every batch that holds one of its writes, and
	// encoding its whole window each time was a large part of applying a
	// Client write.
	body []byte
}

// requestTable is the state machine's table of recent requests. Only the
// apply goroutine (under kvStore.mu) uses it.
type requestTable struct {
	clients map[[clientIDSize]byte]*clientRecord
	// changed lists the clients whose record changed (or went) since the
	// last flush, so a batch persists only those.
	changed map[[clientIDSize]byte]struct{}
}

func newRequestTable() *requestTable {
	return &requestTable{clients: map[[clientIDSize]byte]*clientRecord{}, changed: map[[clientIDSize]byte]struct{}{}}
}

// errStaleRequest answers a retry too old for the table to tell its
// outcome. It is not a "not applied" error: the first attempt may have been
// applied.
var errStaleRequest = errors.New("raft: request too old to tell whether it was applied (outcome unknown)")

// lookup finds a request's first result. stale means the request is older
// than what the table keeps of its client.
func (t *requestTable) lookup(id requestID) (res reqResult, found, stale bool) {
	c, ok := t.clients[id.client]
	if !ok {
		return reqResult{}, false, false
	}
	for _, r := range c.results {
		if r.seq == id.seq {
			return r, true, false
		}
	}
	return reqResult{}, false, id.seq <= c.floor
}

// record keeps a request's result, applied at index, evicting by log order:
// the client's oldest result past maxRequestsPerClient, and the client that
// wrote least recently past maxRequestClients.
func (t *requestTable) record(id requestID, res reqResult, index uint64) {
	c, ok := t.clients[id.client]
	if !ok {
		if len(t.clients) >= maxRequestClients {
			t.evictOldestClient()
		}
		c = &clientRecord{}
		t.clients[id.client] = c
	}
	res.seq = id.seq
	c.results = append(c.results, res)
	if c.body != nil || len(c.results) == 1 {
		c.body = appendResult(c.body, res)
	}
	if len(c.results) > maxRequestsPerClient {
		c.floor = max(c.floor, c.results[0].seq)
		c.results = slices.Delete(c.results, 0, 1)
		if c.body != nil {
			// Past the first result's encoding; an append that
			// outgrows the buffer copies only what is left.
			c.body = c.body[resultLen(c.body):]
		}
	}
	c.last = index
	t.changed[id.client] = struct{}{}
}

// evictOldestClient drops the client whose latest request is oldest (ties,
// which one batch can make, go by client ID): deterministic on every replica.
func (t *requestTable) evictOldestClient() {
	var victim [clientIDSize]byte
	var oldest *clientRecord
	for id, c := range t.clients {
		if oldest == nil || c.last < oldest.last || (c.last == oldest.last && bytes.Compare(id[:], victim[:]) < 0) {
			victim, oldest = id, c
		}
	}
	if oldest != nil {
		delete(t.clients, victim)
		t.changed[victim] = struct{}{}
	}
}

// encodeClientRecord is the stored (and snapshotted) form of a record:
// varints floor, last and the count, then per result its seq, a byte for ok
// and its index.
func encodeClientRecord(c *clientRecord) []byte {
	if c.body == nil {
		c.body = []byte{}
		for _, r := range c.results {
			c.body = appendResult(c.body, r)
		}
	}
	// Sized exactly, and fresh: the store keeps what it is given (and
	// gets it again at every write of its client), so room to spare is
	// memory held, and body is not the store's to keep.
	n := uvarintLen(c.floor) + uvarintLen(c.last) + uvarintLen(uint64(len(c.results))) + len(c.body)
	b := make([]byte, 0, n)
	b = binary.AppendUvarint(b, c.floor)
	b = binary.AppendUvarint(b, c.last)
	b = binary.AppendUvarint(b, uint64(len(c.results)))
	return append(b, c.body...)
}

// appendResult appends one result's encoding: its seq, a byte for ok, its
// index.
func appendResult(b []byte, r reqResult) []byte {
	b = binary.AppendUvarint(b, r.seq)
	if r.ok {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return binary.AppendUvarint(b, r.index)
}

// resultLen is the length of the result encoded first in b (appendResult).
func resultLen(b []byte) int {
	_, n := binary.Uvarint(b)
	_, m := binary.Uvarint(b[n+1:])
	return n + 1 + m
}

// decodeClientRecord reads a record, refusing anything out of bounds.
func decodeClientRecord(b []byte) (*clientRecord, error) {
	bad := func(what string) (*clientRecord, error) {
		return nil, fmt.Errorf("raft: corrupt request record: %s", what)
	}
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	c := &clientRecord{}
	var count uint64
	var ok bool
	if c.floor, ok = next(); !ok {
		return bad("floor")
	}
	if c.last, ok = next(); !ok {
		return bad("last")
	}
	if count, ok = next(); !ok || count > maxRequestsPerClient {
		return bad("count")
	}
	c.results = make([]reqResult, 0, count)
	for range count {
		var r reqResult
		if r.seq, ok = next(); !ok {
			return bad("seq")
		}
		if len(b) == 0 || b[0] > 1 {
			return bad("ok")
		}
		r.ok, b = b[0] == 1, b[1:]
		if r.index, ok = next(); !ok {
			return bad("index")
		}
		c.results = append(c.results, r)
	}
	if len(b) != 0 {
		return bad("trailing bytes")
	}
	return c, nil
}

// requestSegment is the datastore segment under which client records live
// (prefix + "/_req/" + hex client ID): lower case with an underscore, so it
// is never a key's encoding, and one level deeper than keys, so key scans
// skip it.
const requestSegment = "_req"

// clientFromHex parses the hex client ID of a record's key.
func clientFromHex(s string) ([clientIDSize]byte, bool) {
	var id [clientIDSize]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != clientIDSize || hex.EncodeToString(b) != s {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// metaValue is the value of a meta operation: the leader's stamp (unix
// nanoseconds), then, for a Client write, its request ID.
func metaValue(stamp int64, id *requestID) []byte {
	return appendMeta(make([]byte, 0, metaSize), stamp, id)
}

// metaSize is the size of the largest meta value.
const metaSize = 8 + clientIDSize + 8

// appendMeta appends metaValue(stamp, id) to b.
func appendMeta(b []byte, stamp int64, id *requestID) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(stamp))
	if id != nil {
		b = append(b, id.client[:]...)
		b = binary.BigEndian.AppendUint64(b, id.seq)
	}
	return b
}

// checkMeta validates a meta operation's value.
func checkMeta(value []byte) error {
	if len(value) != 8 && len(value) != metaSize {
		return fmt.Errorf("%w: meta operation of %d bytes", ErrInvalidCommand, len(value))
	}
	return nil
}

// parseMeta reads a checked meta value.
func parseMeta(value []byte) (stamp uint64, id *requestID) {
	stamp = binary.BigEndian.Uint64(value)
	if len(value) > 8 {
		id = &requestID{}
		copy(id.client[:], value[8:8+clientIDSize])
		id.seq = binary.BigEndian.Uint64(value[8+clientIDSize:])
	}
	return stamp, id
}
