package raft

// Exactly-once writes of a Client: each write gets a request ID, and an
// attempt whose outcome is unknown is sent again, with the same ID, until
// the caller's timeout; the state machine answers a retry of an applied
// write with its first result (see requests.go).

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// writeRetryPause is the pause between rounds of attempts at a write whose
// outcome is still unknown (a leader change takes at least this long).
const writeRetryPause = 50 * time.Millisecond

// write sends a write request with a fresh request ID to the targets in
// turn until one answers, retrying attempts whose outcome is unknown until
// timeout. A nil error: applied exactly once. An error: applied at most once
// (and certainly not when IsNotApplied says so).
func (c *Client) write(req *request, timeout time.Duration, peers []peer.ID) (*response, error) {
	resp, _, err := c.writeReq(req, timeout, peers)
	return resp, err
}

// writeReq is write telling also whether req is free again (free): its
// first attempt was answered, so no call that gave up may still hold it.
func (c *Client) writeReq(req *request, timeout time.Duration, peers []peer.ID) (resp *response, free bool, err error) {
	resp, err = c.writeAttempts(req, timeout, peers, &free)
	return resp, free, err
}

// writeAttempts is write's loop; *free is set as writeReq says.
func (c *Client) writeAttempts(req *request, timeout time.Duration, peers []peer.ID, free *bool) (*response, error) {
	if c.closed.Load() {
		return nil, errAfterClose
	}
	deadline := time.Now().Add(timeout)
	ticket, err := c.seqs.acquire(c.ctx, deadline)
	if err != nil {
		if c.ctx.Err() != nil {
			return nil, errAfterClose
		}
		return nil, err
	}
	defer c.seqs.release(ticket)
	req.Client = ticket.lane.identity[:]
	req.Seq = ticket.seq
	var targets targetList
	c.targets(peers, &targets)
	var lastErr, unknown error
	attempts := 0
	for {
		// served tells whether any target still serves the namespace.
		served := false
		for i := 0; ; i++ {
			id, ok := targets.at(i)
			if !ok {
				break
			}
			if c.ctx.Err() != nil {
				return nil, c.writeFailed(ErrShutdown, unknown)
			}
			left := time.Until(deadline)
			if left <= 0 {
				return nil, c.writeFailed(lastErr, unknown)
			}
			if id == c.node.ID() {
				continue // a node cannot open a stream to itself
			}
			c.ensureAddrs(id)
			// Each attempt carries the time left. The first sends req
			// itself; later ones a copy, as an earlier attempt's request
			// may still be read (a write under way when its call gave up).
			attempt := req
			if attempts > 0 {
				attempt = new(request)
				*attempt = *req
			}
			attempts++
			attempt.Timeout = int64(left)
			resp, err := c.sessions.call(c.ctx, id, attempt, deadline.Add(callMargin))
			if err == nil {
				err = resp.err()
			}
			if !notServed(err) {
				served = true
			}
			switch {
			case err == nil:
				// The tests' hook may read a request after its answer.
				*free = attempts == 1 && c.caller.afterWrite == nil
				return resp, nil
			case c.ctx.Err() != nil:
				return nil, c.writeFailed(ErrShutdown, unknown)
			case mayTryElsewhere(err):
				lastErr = err
			case outcomeUnknown(err):
				lastErr, unknown = err, err
			default:
				// Refused (bad input), or the table could no longer tell
				// the outcome: final.
				return nil, c.writeFailed(err, unknown)
			}
		}
		if unknown == nil {
			// Every member refused it before applying: as before request
			// IDs, do not wait for a leader beyond what members waited.
			if lastErr == nil {
				lastErr = fmt.Errorf("%w: %s", ErrNoMembers, c.namespace)
			}
			return nil, lastErr
		}
		if !served {
			// No target serves the namespace any more (their clusters were
			// closed): nobody can apply the write, nor tell its outcome.
			return nil, c.writeFailed(lastErr, unknown)
		}
		select {
		case <-c.ctx.Done():
			return nil, c.writeFailed(ErrShutdown, unknown)
		case <-time.After(writeRetryPause):
		}
	}
}

// outcomeUnknown tells whether a failed attempt may have been applied, so
// that the same request must be sent again to learn its result: a timeout,
// a lost leadership, a member shutting down, or a stream that broke after
// the request left.
func outcomeUnknown(err error) bool {
	if IsNotApplied(err) {
		return false
	}
	var remote *remoteError
	if errors.As(err, &remote) {
		// An answer: only these codes leave the outcome open.
		return errors.Is(err, ErrTimeout) || errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrShutdown)
	}
	return true // no answer at all
}

// writeFailed is the error of a write that did not succeed: once an attempt
// had an unknown outcome, the write as a whole has one too, whatever later
// attempts said.
func (c *Client) writeFailed(last, unknown error) error {
	if unknown == nil {
		if last == nil {
			return fmt.Errorf("%w: %s", ErrNoMembers, c.namespace)
		}
		return last
	}
	if last != nil && last != unknown && !IsNotApplied(last) {
		return last
	}
	return &unknownOutcome{err: unknown}
}

// unknownOutcome is the error of a write whose outcome stayed unknown: the
// first such failure, which keeps its sentinel (and IsNotApplied false).
type unknownOutcome struct{ err error }

func (e *unknownOutcome) Error() string {
	msg := e.err.Error()
	if strings.Contains(msg, "outcome is unknown") || strings.Contains(msg, "outcome unknown") {
		return msg + " (retried until the timeout)"
	}
	return msg + " (retried until the timeout; the outcome is unknown)"
}

func (e *unknownOutcome) Unwrap() error { return e.err }

// notServed tells whether an attempt found a node that does not serve the
// namespace at all (protocol not supported).
func notServed(err error) bool {
	if err == nil {
		return false // without the target below, which escapes
	}
	var ns msmux.ErrNotSupported[protocol.ID]
	return errors.As(err, &ns)
}

// seqWindowSize bounds how far apart in sequence numbers the writes in
// flight of one request identity may be: a write gets number s only once
// every write numbered s-seqWindowSize or below has ended. The request
// table keeps an identity's latest maxRequestsPerClient results and calls a
// request older than the ones it dropped stale (requests.go); with the
// window, while write s is in flight every other write that can be applied
// before it is numbered within (s-seqWindowSize, s+seqWindowSize), at most
// 2*seqWindowSize-2 of them, so for 32 no result numbered s or above is
// dropped before s is applied, and a first attempt is never taken for a
// stale retry however the writes are reordered on their way (goroutines,
// followers, sessions).
const seqWindowSize = maxRequestsPerClient / 2

// maxSeqLanes bounds a Client's request identities: past seqWindowSize
// writes in flight a Client numbers further writes under a second identity
// of its own (a lane), and so on, so up to maxSeqLanes*seqWindowSize writes
// are in flight at once; more wait for one to end. Each lane in use is one
// client in the request table (maxRequestClients).
const maxSeqLanes = 4

// seqWindow hands out a Client's request IDs within the window of each
// lane.
type seqWindow struct {
	mu      sync.Mutex
	lanes   []*seqLane
	changed chan struct{} // closed and replaced when a window moves
	// watched: a write waits on changed (it is replaced only then, not
	// at every write's end).
	watched bool
}

// seqLane is one identity of a Client and its window.
type seqLane struct {
	identity [clientIDSize]byte
	last     uint64              // last number handed out
	inflight map[uint64]struct{} // numbers of writes not ended
	// low is the lowest number in inflight (when not empty), kept so
	// that a write looks at no more than the lane's ends.
	low uint64
}

// seqTicket is the request ID of one write.
type seqTicket struct {
	lane *seqLane
	seq  uint64
}

func (w *seqWindow) init(first [clientIDSize]byte) {
	w.lanes = []*seqLane{{identity: first, inflight: map[uint64]struct{}{}}}
	w.changed = make(chan struct{})
}

// room tells whether the lane may hand out its next number.
func (l *seqLane) room() bool {
	return len(l.inflight) == 0 || l.last+1-l.low < seqWindowSize
}

// acquire returns the next request ID of the first lane with room (opening
// a lane if none has and fewer than maxSeqLanes exist), or fails (nothing
// was sent) at the deadline or when ctx ends.
func (w *seqWindow) acquire(ctx context.Context, deadline time.Time) (seqTicket, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		w.mu.Lock()
		var lane *seqLane
		for _, l := range w.lanes {
			if l.room() {
				lane = l
				break
			}
		}
		if lane == nil && len(w.lanes) < maxSeqLanes {
			lane = &seqLane{inflight: map[uint64]struct{}{}}
			if _, err := rand.Read(lane.identity[:]); err != nil {
				w.mu.Unlock()
				return seqTicket{}, fmt.Errorf("%w: client identity: %w", errNotSent, err)
			}
			w.lanes = append(w.lanes, lane)
		}
		if lane != nil {
			lane.last++
			t := seqTicket{lane: lane, seq: lane.last}
			if len(lane.inflight) == 0 {
				lane.low = t.seq
			}
			lane.inflight[t.seq] = struct{}{}
			w.mu.Unlock()
			return t, nil
		}
		changed := w.changed
		w.watched = true
		w.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return seqTicket{}, fmt.Errorf("%w: %w", errNotSent, ErrShutdown)
		case <-timer.C:
			return seqTicket{}, fmt.Errorf("%w: %w: waiting for earlier writes of this Client to end", errNotSent, ErrTimeout)
		}
	}
}

// release ends a write. Only the end of a lane's lowest number in flight
// moves its window, so only that wakes the writes waiting.
func (w *seqWindow) release(t seqTicket) {
	w.mu.Lock()
	l := t.lane
	delete(l.inflight, t.seq)
	lowest := t.seq == l.low
	if lowest && len(l.inflight) > 0 {
		// The next lowest: numbers are handed out in order, so it is
		// found within the window above.
		for s := t.seq + 1; ; s++ {
			if _, ok := l.inflight[s]; ok {
				l.low = s
				break
			}
		}
	}
	if lowest && w.watched {
		close(w.changed)
		w.changed = make(chan struct{})
		w.watched = false
	}
	w.mu.Unlock()
}
