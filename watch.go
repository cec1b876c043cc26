package raft

// Watch, member side: the bounded history of recent changes each member
// keeps (watchHub) and Cluster.Watch. The state machine feeds the hub after
// every datastore commit (kvStore.onChange) and tells it when its state was
// replaced (kvStore.onReset); watchers read the history through cursors, so
// the state machine never waits for a watcher and the only buffer of a slow
// watcher is the shared, bounded history. The wire side (the watch command
// and Client.Watch) is in watch_wire.go and watch_client.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// WithWatchHistory sets how much history of changes each member keeps for
// Watch: at most events events and about bytes bytes of keys and values
// (DefaultWatchHistoryEvents and DefaultWatchHistoryBytes by default). A
// watcher that falls further behind than the history, or asks for an index
// older than it, gets ErrCompacted. Both must be positive.
func WithWatchHistory(events, bytes int) Option {
	return func(c *config) error {
		if events <= 0 || bytes <= 0 {
			return fmt.Errorf("raft: WithWatchHistory: %d events, %d bytes: both must be positive", events, bytes)
		}
		c.watchHistory = historyLimits{events: events, bytes: bytes}
		return nil
	}
}

// historyLimits bound a watch history. The zero value means the defaults.
type historyLimits struct {
	events int
	bytes  int
}

func (l historyLimits) orDefault() historyLimits {
	if l.events <= 0 || l.bytes <= 0 {
		return historyLimits{events: DefaultWatchHistoryEvents, bytes: DefaultWatchHistoryBytes}
	}
	return l
}

// eventCost is what an event counts against the byte budget of a history:
// its key and value plus a fixed overhead for the rest of it.
func eventCost(e *Event) int { return len(e.Key) + len(e.Entry.Value) + 64 }

// matchPrefix is the watch filter: a plain string prefix, "" matching every
// key (the same rule as Keys).
func matchPrefix(prefix, key string) bool { return strings.HasPrefix(key, prefix) }

// eventRing is the history: events in log order, each numbered by a
// sequence number (seq) that counts every event the hub ever took, so a
// cursor is one number and several events of one log index stay apart. It
// grows by doubling up to its event limit and drops its oldest events past
// either limit. Not safe for concurrent use (the hub locks it).
type eventRing struct {
	lim      historyLimits
	buf      []Event
	head     int    // position of the oldest event in buf
	n        int    // events held
	bytes    int    // their eventCost
	firstSeq uint64 // seq of the oldest event held (nextSeq when empty)
	// floor: every change with an index above floor is held (or was never
	// made). It rises as events are dropped, and is reset with the state.
	floor uint64
}

func newEventRing(lim historyLimits, floor uint64) *eventRing {
	return &eventRing{lim: lim.orDefault(), floor: floor}
}

// nextSeq is the seq the next event pushed gets.
func (r *eventRing) nextSeq() uint64 { return r.firstSeq + uint64(r.n) }

// at returns the event numbered seq, which must be held.
func (r *eventRing) at(seq uint64) *Event {
	return &r.buf[(r.head+int(seq-r.firstSeq))%len(r.buf)]
}

// push appends e and drops the oldest events past the limits (e itself,
// when it alone is over the byte budget).
func (r *eventRing) push(e Event) {
	if r.n == len(r.buf) {
		r.grow()
	}
	*r.at(r.firstSeq + uint64(r.n)) = e
	r.n++
	r.bytes += eventCost(&e)
	for r.n > 0 && (r.n > r.lim.events || r.bytes > r.lim.bytes) {
		old := r.at(r.firstSeq)
		r.bytes -= eventCost(old)
		// Only the changes after the dropped one's index are all still
		// here (some of its own index may be).
		r.floor = max(r.floor, old.Index)
		*old = Event{} // let its value be collected
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		r.firstSeq++
	}
}

// grow doubles the buffer (at least one more slot than the event limit is
// never needed: push drops down to the limit right after adding).
func (r *eventRing) grow() {
	size := min(max(2*len(r.buf), 64), r.lim.events+1)
	buf := make([]Event, size)
	for i := 0; i < r.n; i++ {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// reset drops everything: the state machine's state was replaced, and the
// changes up to floor are no longer known one by one.
func (r *eventRing) reset(floor uint64) {
	next := r.nextSeq()
	*r = eventRing{lim: r.lim, floor: floor, firstSeq: next}
}

// seek returns the seq of the first event with an index above after, or
// ErrCompacted when changes above after may have been dropped.
func (r *eventRing) seek(after uint64) (uint64, error) {
	if after < r.floor {
		return 0, fmt.Errorf("%w: index %d is older than this member's history (it starts after %d); resync with GetEntry/Keys and watch from that index", ErrCompacted, after, r.floor)
	}
	lo, hi := 0, r.n // binary search: indexes never decrease along the ring
	for lo < hi {
		mid := (lo + hi) / 2
		if r.at(r.firstSeq+uint64(mid)).Index <= after {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return r.firstSeq + uint64(lo), nil
}

// watchHub is a member's history of changes and the wake-up of its
// watchers. publish and reset run on Raft's apply path and never wait for a
// watcher: they take the lock for a copy and wake everyone by closing a
// channel.
type watchHub struct {
	mu    sync.Mutex
	ring  *eventRing
	epoch uint64 // bumped by reset: older cursors are dead
	// changed is closed by the next publish or reset; nil while nobody
	// waits, so a member without waiting watchers makes no channel per
	// apply batch.
	changed chan struct{}
	done    chan struct{} // closed by close
	closed  bool
	wg      sync.WaitGroup // Cluster.Watch's delivery goroutines
}

// newWatchHub returns a hub whose history starts after applied: the state
// machine's index when the member starts (a restarted member knows nothing
// of the changes before it).
func newWatchHub(lim historyLimits, applied uint64) *watchHub {
	return &watchHub{ring: newEventRing(lim, applied), done: make(chan struct{})}
}

// publish adds the events of one committed apply batch, in index order. It
// keeps the events' values as they are, without a copy: the state machine
// hands over values that are its stored records' own bytes, which nobody
// writes again (see applyCtx.setWithLease); the event list itself is the
// caller's to reuse.
func (h *watchHub) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range events {
		h.ring.push(e)
	}
	h.wakeLocked()
}

// reset drops the history after the state machine's state was replaced (a
// snapshot restored, or the data wiped): what changed up to applied is not
// known event by event. Every cursor dies, so every watcher of this member
// ends; a watcher past applied could in principle go on, but a replaced
// state is rare and a clean end is simpler to reason about.
func (h *watchHub) reset(applied uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring.reset(applied)
	h.epoch++
	h.wakeLocked()
}

func (h *watchHub) wakeLocked() {
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
}

// close ends every cursor and waits for Cluster.Watch's goroutines.
func (h *watchHub) close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// floor is the index after which the history is complete.
func (h *watchHub) floor() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ring.floor
}

// watchCursor is one watcher's place in the history.
type watchCursor struct {
	hub     *watchHub
	prefix  string
	seq     uint64 // next event to look at
	epoch   uint64
	through uint64 // every matching change up to it has been returned
}

// errFellBehind ends a cursor whose next events were dropped from the
// history before it read them (a watcher slower than the writes), or whose
// history was reset. It wraps ErrCompacted: watching again from the last
// index gets ErrCompacted (or the missing changes from another member).
var errFellBehind = fmt.Errorf("%w: the watcher fell behind the history", ErrCompacted)

// errHistoryReset ends the cursors of a member whose state was replaced.
var errHistoryReset = fmt.Errorf("%w: the member's state was replaced from a snapshot", ErrCompacted)

// subscribe returns a cursor at the first change under prefix above after.
// No change is missed or repeated between the history and later changes:
// both come from the one ring, by sequence number.
func (h *watchHub) subscribe(prefix string, after uint64) (*watchCursor, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrShutdown
	}
	seq, err := h.ring.seek(after)
	if err != nil {
		return nil, err
	}
	return &watchCursor{hub: h, prefix: prefix, seq: seq, epoch: h.epoch, through: after}, nil
}

// next waits for changes and returns the next ones under the prefix, at
// most maxEvents and about maxBytes of keys and values (at least one event),
// and through: every matching change up to through has now been returned.
// It may return no events with a higher through (changes under other
// prefixes went by). It fails with errFellBehind or errHistoryReset, with
// ErrShutdown once the hub is closed, or with ctx's error.
func (c *watchCursor) next(ctx context.Context, maxEvents, maxBytes int) ([]Event, uint64, error) {
	h := c.hub
	for {
		h.mu.Lock()
		switch {
		case h.closed:
			h.mu.Unlock()
			return nil, c.through, ErrShutdown
		case c.epoch != h.epoch:
			h.mu.Unlock()
			return nil, c.through, errHistoryReset
		case c.seq < h.ring.firstSeq:
			h.mu.Unlock()
			return nil, c.through, errFellBehind
		}
		if c.seq < h.ring.nextSeq() {
			out := c.takeLocked(maxEvents, maxBytes)
			h.mu.Unlock()
			return out, c.through, nil
		}
		if h.changed == nil {
			h.changed = make(chan struct{})
		}
		wake := h.changed
		h.mu.Unlock()
		select {
		case <-wake:
		case <-h.done:
		case <-ctx.Done():
			return nil, c.through, ctx.Err()
		}
	}
}

// takeLocked copies the next matching events (the values stay shared: the
// ring never changes an event it holds) and moves the cursor past them.
func (c *watchCursor) takeLocked(maxEvents, maxBytes int) []Event {
	r := c.hub.ring
	var out []Event
	size := 0
	end := r.nextSeq()
	for c.seq < end {
		e := r.at(c.seq)
		if matchPrefix(c.prefix, e.Key) {
			if len(out) > 0 && (len(out) >= maxEvents || size+eventCost(e) > maxBytes) {
				break
			}
			out = append(out, *e)
			size += eventCost(e)
		}
		c.seq++
	}
	// Complete up to the last index looked at, unless the next event shares
	// it (a batch cut inside one log index).
	if c.seq > r.firstSeq {
		last := r.at(c.seq - 1).Index
		if c.seq < end && r.at(c.seq).Index == last {
			last--
		}
		c.through = max(c.through, last)
	}
	return out
}

// watchChanBuffer is the channel buffer of Cluster.Watch. The real buffer is
// the shared history; this only saves a goroutine hand-off per event.
const watchChanBuffer = 64

// Watch delivers every change under prefix (a plain string prefix, "" for
// every key) with an index above after, in index order, without gaps or
// repeats, from this member's replica (a follower sees the changes as it
// applies them). The channel closes when ctx ends, when the cluster closes,
// or when the watcher falls further behind than the history the member
// keeps; a new Watch from the last index delivered then tells which: it
// goes on, or returns ErrCompacted. ErrCompacted means the changes after
// `after` are no longer known one by one: resync with GetEntry/Keys, then
// watch from the index read. A restarted member keeps no history: it can
// only serve watches from its applied index on.
//
// The Values of delivered events are the caller's own.
func (c *cluster) Watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error) {
	if ctx == nil {
		return nil, errors.New("raft: Watch: nil context")
	}
	if err := checkSize("watch prefix", len(prefix), MaxKeySize); err != nil {
		return nil, err
	}
	if _, err := c.r(); err != nil {
		return nil, err
	}
	h := c.watch
	cur, err := h.subscribe(prefix, after)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, watchChanBuffer)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrShutdown
	}
	h.wg.Add(1) // under the lock: close cannot be waiting yet
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		defer close(ch)
		for {
			events, _, err := cur.next(ctx, watchChanBuffer, watchFrameBytes)
			if err != nil {
				return
			}
			for _, e := range events {
				e.Entry.Value = bytes.Clone(e.Entry.Value)
				select {
				case ch <- e:
				case <-ctx.Done():
					return
				case <-h.done:
					return
				}
			}
		}
	}()
	return ch, nil
}
