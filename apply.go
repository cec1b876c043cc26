package raft

// Applying one command to the store: its meta operation (the leader's stamp
// and the request ID), its conditions, and the branch they select, with
// every change of the batch visible to the next operation and collected as
// events.

import (
	"context"
	"encoding/binary"

	"github.com/ipfs/go-datastore"
)

// applyCtx is the state of one batch being applied.
type applyCtx struct {
	f     *kvStore
	ctx   context.Context
	batch datastore.Batch
	index uint64 // of the entry being applied
	// pending holds the entries this batch changed: a datastore batch
	// cannot be read back, and a later operation must see them.
	pending map[string]pendingEntry
	// sizeHint sizes pending: the entries of the batch.
	sizeHint int
	// results is what is left of the slab answers are cut from.
	results []byte
	// ops is the parsed command of the entry being applied, its slice
	// reused for the next entry.
	ops []cmdOp
	// events tells whether to collect eventList (someone consumes them).
	events    bool
	eventList []Event
	// enqueued lists the item keys this batch enqueued, in index order,
	// and claimed is what the command being applied claimed, if it holds
	// a claim (queue_store.go).
	enqueued []string
	claimed  *claimedItem
}

type pendingEntry struct {
	e      Entry
	exists bool
}

// lookup reads a key's entry as the batch left it so far. What it reads
// from the datastore is kept too: a condition and the write after it read
// the key once.
func (a *applyCtx) lookup(key []byte) (Entry, bool, error) {
	l, err := a.lookupKey(key, true)
	return l.e, l.exists, err
}

// looked is what lookupKey found.
type looked struct {
	e      Entry
	exists bool
	// dk is the key's datastore key and name the key as a string, when
	// lookupKey computed them (empty when the entry was pending): a write
	// that follows reuses them instead of building them again.
	dk   datastore.Key
	name string
}

// lookupKey is lookup that also returns what it computed on the way. keep
// false leaves what it read out of the batch's pending entries: a write
// that is about to remember its own result needs no second map update.
func (a *applyCtx) lookupKey(key []byte, keep bool) (looked, error) {
	if p, ok := a.pending[string(key)]; ok {
		return looked{e: p.e, exists: p.exists}, nil
	}
	dk := a.f.dataKeyBytes(key)
	e, ok, err := a.f.readEntry(a.ctx, dk)
	if err != nil {
		return looked{}, err
	}
	name := string(key)
	if keep {
		a.remember(name, e, ok)
	}
	return looked{e: e, exists: ok, dk: dk, name: name}, nil
}

// keyName is l.name, or key as a string when l did not compute it.
func (l looked) keyName(key []byte) string {
	if l.name == "" {
		return string(key)
	}
	return l.name
}

// maxPendingScratch bounds the pending map kept between batches: a batch
// that touched more keys (a large transaction) leaves it to the collector.
const maxPendingScratch = 256

// keepPending keeps m, emptied, for the next batch: every batch of writes
// would otherwise allocate a map of its size. Called with f.mu held.
func (f *kvStore) keepPending(m map[string]pendingEntry) {
	if m == nil || len(m) > maxPendingScratch {
		return
	}
	clear(m)
	f.pendingScratch = m
}

func (a *applyCtx) remember(key string, e Entry, exists bool) {
	if a.pending == nil {
		a.pending = make(map[string]pendingEntry, a.sizeHint)
	}
	a.pending[key] = pendingEntry{e: e, exists: exists}
}

// dataKey is dk, or key's datastore key when dk is empty.
func (a *applyCtx) dataKey(key []byte, dk datastore.Key) datastore.Key {
	if dk.String() == "" {
		return a.f.dataKeyBytes(key)
	}
	return dk
}

// set writes key: a new key is created at this index, an existing one keeps
// its CreateIndex.
func (a *applyCtx) set(key, value []byte) error {
	return a.setWithLease(key, value, 0)
}

// setWithLease is set binding key to lease (0: none). A key overwritten
// with another lease, or none, leaves its old lease.
func (a *applyCtx) setWithLease(key, value []byte, lease LeaseID) error {
	l, err := a.lookupKey(key, false)
	if err != nil {
		return err
	}
	old, exists := l.e, l.exists
	e := Entry{Value: value, CreateIndex: a.index, ModIndex: a.index, Lease: lease}
	if e.Value == nil {
		e.Value = []byte{}
	}
	if exists {
		e.CreateIndex = old.CreateIndex
	}
	// The stored record copies the value out of the log entry; from here
	// on the value is the record's (its tail): a fresh allocation that
	// nobody writes again, so onChange (the watch history) may keep it
	// without a copy of its own, and keeping it keeps no log entry alive.
	rec := encodeEntry(e)
	n := len(rec)
	e.Value = rec[n-len(e.Value) : n : n]
	k := l.keyName(key)
	if exists && old.Lease != 0 && old.Lease != lease {
		a.f.leases.unbind(old.Lease, k)
	}
	if lease != 0 {
		a.f.leases.bind(lease, k)
	}
	a.remember(k, e, true)
	if a.events {
		a.eventList = append(a.eventList, Event{Kind: EventSet, Key: k, Entry: e, Index: a.index})
	}
	return a.batch.Put(a.ctx, a.dataKey(key, l.dk), rec)
}

// delete removes key; deleting an absent key changes nothing.
func (a *applyCtx) delete(key []byte) error {
	l, err := a.lookupKey(key, false)
	if err != nil || !l.exists {
		return err
	}
	old := l.e
	k := l.keyName(key)
	if old.Lease != 0 {
		a.f.leases.unbind(old.Lease, k)
	}
	a.remember(k, Entry{}, false)
	if a.events {
		a.eventList = append(a.eventList, Event{Kind: EventDelete, Key: k,
			Entry: Entry{CreateIndex: old.CreateIndex, ModIndex: a.index}, Index: a.index})
	}
	return a.batch.Delete(a.ctx, a.dataKey(key, l.dk))
}

// execEntry applies one entry's parsed command: one command, or the parts
// of a grouped entry one after the other, each answered on its own.
func (a *applyCtx) execEntry(ops []cmdOp) (FSMResponse, error) {
	n := 1
	for _, op := range ops {
		if op.kind == opNext {
			n++
		}
	}
	if n == 1 {
		return a.exec(ops)
	}
	parts := make([]FSMResponse, 0, n)
	for len(ops) > 0 {
		end := len(ops)
		for i, op := range ops {
			if op.kind == opNext {
				end = i
				break
			}
		}
		resp, err := a.exec(ops[:end])
		if err != nil {
			return FSMResponse{}, err
		}
		parts = append(parts, resp)
		if end == len(ops) {
			break
		}
		ops = ops[end+1:]
	}
	return FSMResponse{parts: parts}, nil
}

// exec applies one parsed command and returns its response. A retried
// Client write gets its first result and changes nothing; an error is a
// storage failure (the store stops).
func (a *applyCtx) exec(ops []cmdOp) (FSMResponse, error) {
	f := a.f
	a.claimed = nil
	var id *requestID
	if len(ops) > 0 && ops[0].kind == opMeta {
		var stamp uint64
		stamp, id = parseMeta(ops[0].value)
		f.clockNanos = max(f.clockNanos, stamp)
		ops = ops[1:]
	}
	if id != nil {
		res, found, stale := f.requests.lookup(*id)
		if found {
			return FSMResponse{Data: resultData(res.ok, res.index)}, nil
		}
		if stale {
			return FSMResponse{Error: errStaleRequest}, nil
		}
	}
	ok := true
	i := 0
	for ; i < len(ops); i++ {
		k, _ := lookupOp(ops[i].kind) // parseCommand passes valid kinds only
		if k.role != roleCond {
			break
		}
		if !ok {
			continue // the outcome is decided; the rest need not be read
		}
		held, err := k.holds(a, ops[i].key, ops[i].value)
		if err != nil {
			return FSMResponse{}, err
		}
		ok = held
	}
	branch := ops[i:]
	split := len(branch)
	for j, op := range branch {
		if op.kind == opElse {
			split = j
			break
		}
	}
	if ok {
		branch = branch[:split]
	} else if split < len(branch) {
		branch = branch[split+1:]
	} else {
		branch = nil
	}
	if err := a.checkLeases(branch); err != nil {
		// Refused whole, before any change: deterministic, so every
		// replica refuses it alike. The request is not recorded: a retry
		// is decided again (a lease ID, a log index, is never reused).
		return FSMResponse{Error: err}, nil
	}
	for _, op := range branch {
		k, _ := lookupOp(op.kind)
		if err := k.apply(a, op.key, op.value); err != nil {
			return FSMResponse{}, err
		}
	}
	if id != nil {
		f.requests.record(*id, reqResult{ok: ok, index: a.index}, a.index)
	}
	if a.claimed != nil {
		return FSMResponse{Data: appendClaimed(resultData(ok, a.index), a.claimed)}, nil
	}
	return FSMResponse{Data: a.result(ok, a.index)}, nil
}

// result is resultData cut from one slab per batch: a batch of writes
// costs one allocation for their answers, not one each.
func (a *applyCtx) result(ok bool, index uint64) []byte {
	if len(a.results) < resultSize {
		a.results = make([]byte, resultSize*max(a.sizeHint, 1))
	}
	b := a.results[:resultSize:resultSize]
	a.results = a.results[resultSize:]
	putResult(b, ok, index)
	return b
}

// resultData is a command's result as FSMResponse.Data carries it: a byte
// for whether its conditions held, then the index of the entry that applied
// it (the first one, for a retried Client write).
func resultData(ok bool, index uint64) []byte {
	b := make([]byte, resultSize)
	putResult(b, ok, index)
	return b
}

// resultSize is the length of resultData.
const resultSize = 9

func putResult(b []byte, ok bool, index uint64) {
	if ok {
		b[0] = 1
	}
	binary.BigEndian.PutUint64(b[1:], index)
}

// parseResult reads resultData (and ignores what a claim adds to it);
// anything else reads as not applied.
func parseResult(b []byte) (TxnResult, bool) {
	res, _, ok := parseClaimResult(b)
	return res, ok
}

// appendClaimed adds what a claim found to a result: a byte for whether
// it found an item, then its ID and value.
func appendClaimed(b []byte, c *claimedItem) []byte {
	switch {
	case c == nil:
		return b
	case !c.found:
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.BigEndian.AppendUint64(b, c.id)
	return append(b, c.value...)
}

// parseClaimResult reads a result and what a claim added to it (nil when
// the command held no claim, or when the answer is a retried Client
// write's, which keeps only the result).
func parseClaimResult(b []byte) (TxnResult, *claimedItem, bool) {
	if len(b) < resultSize {
		return TxnResult{}, nil, false
	}
	res := TxnResult{OK: b[0] == 1, Index: binary.BigEndian.Uint64(b[1:resultSize])}
	switch rest := b[resultSize:]; {
	case len(rest) == 0:
		return res, nil, true
	case len(rest) == 1 && rest[0] == 0:
		return res, &claimedItem{}, true
	case len(rest) >= 9 && rest[0] == 1:
		return res, &claimedItem{found: true, id: binary.BigEndian.Uint64(rest[1:9]), value: rest[9:]}, true
	}
	return TxnResult{}, nil, false
}
