package raft

// One open command session on the calling side (session_pool.go opens
// them): calls pipelined on it, its read loop, and how it ends (goaway,
// idle, broken).

import (
	"bufio"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// clientSession is one open session.
type clientSession struct {
	pool *sessionPool
	peer peer.ID
	st   network.Stream
	w    frameWriter
	recv *frameCipher // nil: plaintext

	slots chan struct{} // places for requests in flight
	done  chan struct{} // closed when the session has ended
	idle  *time.Timer

	// The reader's role (see readLoop): whoever holds it reads answers
	// with br (and recv) and hands them to their calls. rdSet is the read
	// deadline last set, by the role's holder.
	br    *bufio.Reader
	rdSet time.Time
	wake  chan struct{} // buffered 1: the read loop is wanted

	mu       sync.Mutex
	pending  map[uint64]*pendingCall
	draining bool  // no new requests (goaway, idle close)
	dead     error // why it ended
	lastUse  time.Time
	reader   byte // who holds the reader's role: readerNone, readerCaller, readerLoop
}

// Holders of a session's reader's role.
const (
	readerNone   byte = iota
	readerCaller      // a caller alone on the session, reading its own answer
	readerLoop        // the session's read loop
)

// readerLinger is how long a session may go without a reader after its last
// call: a caller alone on a session reads its answer itself, saving the
// hand-off from the read loop, and the loop takes the reading back once no
// call has come for this long, so that an idle session still learns at once
// of a goaway or a broken connection.
const readerLinger = 20 * time.Millisecond

// pendingCall is a request waiting for its answer. Calls are reused
// (pendingCalls) with their channel, timer and encoding buffer: one goes
// back only once its caller has taken its result (finished) and the write
// that carried its frame is done with it (inWriter false), so that no late
// callback touches a call in its next use. A call whose caller gave up
// waiting (timeout, cancelled) is left to the collector: a result may still
// be sent to it.
type pendingCall struct {
	req *request
	id  uint64
	// taken: a write took its frame (it may have left); written: that
	// write went through; inWriter: queued, and the write's done has not
	// seen it yet; finished: its caller has its result. All under
	// clientSession.mu.
	taken    bool
	written  bool
	inWriter bool
	finished bool
	ch       chan callResult // buffered: one result
	timer    *time.Timer     // the call's deadline
	buf      []byte          // the request's encoding
}

var pendingCalls = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pendingCall{ch: make(chan callResult, 1), timer: t}
}}

// newPendingCall takes a call from the pool for req.
func newPendingCall(req *request) *pendingCall {
	pc := pendingCalls.Get().(*pendingCall)
	pc.req, pc.id = req, 0
	pc.taken, pc.written, pc.inWriter, pc.finished = false, false, false, false
	return pc
}

// recycle puts a call back; only for one nothing refers to any more.
func (pc *pendingCall) recycle() {
	pc.req = nil
	if cap(pc.buf) > 64<<10 {
		pc.buf = nil
	}
	pendingCalls.Put(pc)
}

type callResult struct {
	raw []byte // the answer's CBOR, decoded by the caller
	err error
}

// call sends one request and waits for its answer.
func (s *clientSession) call(ctx context.Context, req *request, deadline time.Time) (*response, error) {
	pc := newPendingCall(req)
	pc.timer.Reset(time.Until(deadline))
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		pc.timer.Stop()
		pc.recycle()
		return nil, fmt.Errorf("%w: %w", errNotSent, ctx.Err())
	case <-pc.timer.C:
		pc.recycle()
		return nil, fmt.Errorf("%w: %w: no room on the session to %s", errNotSent, ErrTimeout, s.peer)
	}
	defer func() { <-s.slots }()
	body, err := appendRequest(pc.buf[:0], req)
	pc.buf = body
	if err == nil {
		err = checkSize("message", len(body)+1, MaxMessageSize)
	}
	if err != nil {
		pc.timer.Stop()
		pc.recycle()
		return nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	if _, err = s.w.send(frameRequest, body, pc); err != nil {
		pc.timer.Stop()
		s.forget(pc)
		return nil, fmt.Errorf("%w: session to %s: %w", errNotSent, s.peer, err)
	}
	if r, ok := s.readOwn(ctx, pc, deadline); ok {
		pc.timer.Stop()
		s.finish(pc)
		if r.err != nil {
			if ctx.Err() != nil {
				// As a caller waiting on the loop would have seen.
				return nil, ctx.Err()
			}
			return nil, r.err
		}
		resp := getResponse()
		if err := decodeResponse(r.raw, resp); err != nil {
			putResponse(resp)
			return nil, fmt.Errorf("%w: answer from %s: %v", ErrInvalidCommand, s.peer, err)
		}
		return resp, nil
	}
	select {
	case r := <-pc.ch:
		pc.timer.Stop()
		s.finish(pc)
		if r.err != nil {
			return nil, r.err
		}
		resp := getResponse()
		if err := decodeResponse(r.raw, resp); err != nil {
			putResponse(resp)
			return nil, fmt.Errorf("%w: answer from %s: %v", ErrInvalidCommand, s.peer, err)
		}
		return resp, nil
	case <-ctx.Done():
		pc.timer.Stop()
		s.forget(pc)
		return nil, ctx.Err()
	case <-pc.timer.C:
		s.forget(pc)
		return nil, fmt.Errorf("%w: no answer from %s", ErrTimeout, s.peer)
	}
}

// queued registers a call whose frame is being queued as id
// (frameWriter.queued).
func (s *clientSession) queued(tag any, id uint64) {
	pc := tag.(*pendingCall)
	pc.id = id
	s.mu.Lock()
	pc.inWriter = true
	s.pending[id] = pc
	s.lastUse = time.Now()
	s.mu.Unlock()
}

// finish records that pc's caller has its result, and puts pc back unless
// a write still holds it (written then does).
func (s *clientSession) finish(pc *pendingCall) {
	s.mu.Lock()
	pc.finished = true
	reuse := !pc.inWriter
	s.mu.Unlock()
	if reuse {
		pc.recycle()
	}
}

// forget drops a call that no longer waits.
func (s *clientSession) forget(pc *pendingCall) {
	s.mu.Lock()
	if s.pending[pc.id] == pc {
		delete(s.pending, pc.id)
	}
	s.mu.Unlock()
	s.maybeFinish()
}

// taken marks the frames a write takes (frameWriter.taken).
func (s *clientSession) taken(tags []any) {
	s.mu.Lock()
	for _, t := range tags {
		t.(*pendingCall).taken = true
	}
	s.mu.Unlock()
}

// written learns the fate of a write of frames (frameWriter.done).
func (s *clientSession) written(tags []any, ends []int, n int, err error) {
	var lost []*pendingCall
	var reuse []*pendingCall
	hook := s.pool.caller.afterWrite
	s.mu.Lock()
	for i, t := range tags {
		pc := t.(*pendingCall)
		if hook == nil {
			pc.inWriter = false
			if pc.finished {
				reuse = append(reuse, pc)
			}
		}
		if err == nil || ends[i] <= n {
			pc.written = true
			continue
		}
		if s.pending[pc.id] == pc {
			delete(s.pending, pc.id)
			lost = append(lost, pc)
		}
	}
	s.mu.Unlock()
	for _, pc := range reuse {
		pc.recycle()
	}
	for _, pc := range lost {
		pc.ch <- callResult{err: fmt.Errorf("%w: write to %s: %w", errNotSent, s.peer, err)}
	}
	if hook != nil {
		// The tests' hook reads the calls' requests: they are released
		// only after it.
		for i, t := range tags {
			if err == nil || ends[i] <= n {
				hook(s.peer, t.(*pendingCall).req)
			}
		}
		s.mu.Lock()
		for _, t := range tags {
			pc := t.(*pendingCall)
			pc.inWriter = false
			if pc.finished {
				reuse = append(reuse, pc)
			}
		}
		s.mu.Unlock()
		for _, pc := range reuse {
			pc.recycle()
		}
	}
	if err != nil {
		s.abort(err)
	}
}

// readOwn reads frames until pc's result is in, when pc is the only call on
// the session and nobody reads: the caller then wakes straight from the
// stream instead of through the read loop. Frames of calls made meanwhile
// are handed to them on the way; once pc has its result the role goes back,
// to the loop if other calls wait. ok false: pc waits for its result as
// usual (someone else reads, or its deadline passed with no frame begun).
// A context that can be cancelled is still noticed only through the pool
// closing the session (Client.Close and a member's close do both).
func (s *clientSession) readOwn(ctx context.Context, pc *pendingCall, deadline time.Time) (callResult, bool) {
	s.mu.Lock()
	if s.reader != readerNone || s.dead != nil || s.draining || len(s.pending) != 1 || s.pending[pc.id] != pc || ctx.Err() != nil {
		// Not alone: unless someone reads, the loop must (it may be
		// lingering, and no other caller reads for pc).
		idle := s.reader == readerNone && s.dead == nil
		s.mu.Unlock()
		if idle {
			s.wakeLoop()
		}
		return callResult{}, false
	}
	s.reader = readerCaller
	s.mu.Unlock()
	for {
		select {
		case r := <-pc.ch:
			s.releaseReader()
			return r, true
		default:
		}
		now := time.Now()
		if !now.Before(deadline) && s.br.Buffered() == 0 {
			s.releaseReader()
			return callResult{}, false
		}
		s.ownDeadline(now, deadline)
		if s.br.Buffered() == 0 {
			if _, err := s.br.Peek(1); err != nil {
				if retryableTimeout(err) {
					continue // early (a deadline kept from before), or due: see above
				}
				s.abort(fmt.Errorf("raft: session to %s: %w", s.peer, err))
				continue // abort gave pc its result
			}
		}
		// A frame has begun: read it whole.
		if err := s.readFrame(); err != nil {
			if retryableTimeout(err) {
				// The deadline passed in the middle of a frame: the
				// frames can no longer be told apart, so the session
				// ends, but pc fails as any call without its answer in
				// time does (ErrTimeout, once its timer fires).
				s.forget(pc)
				s.abort(fmt.Errorf("raft: session to %s: %w", s.peer, err))
				s.releaseReader()
				return callResult{}, false
			}
			s.abort(fmt.Errorf("raft: session to %s: %w", s.peer, err))
		}
	}
}

// ownDeadline sets the read deadline for a caller that reads until
// deadline. One set costs a timer on the stream, so a deadline already set
// is kept while it falls no later than deadline and no more than 1/16 of
// the time left before it; an early one is met by reading again.
func (s *clientSession) ownDeadline(now, deadline time.Time) {
	slack := deadline.Sub(now) / 16
	if s.rdSet.After(now) && !s.rdSet.After(deadline) && !s.rdSet.Before(deadline.Add(-slack)) {
		return
	}
	s.rdSet = deadline
	_ = s.st.SetReadDeadline(deadline)
}

// releaseReader gives the reader's role back, waking the read loop if
// calls wait or the session drains.
func (s *clientSession) releaseReader() {
	s.mu.Lock()
	s.reader = readerNone
	want := len(s.pending) > 0 || s.draining
	s.mu.Unlock()
	if want {
		s.wakeLoop()
	}
}

// wakeLoop tells the read loop to look whether it is wanted.
func (s *clientSession) wakeLoop() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// readLoop reads answers until the session ends, whenever no caller does
// (readOwn): while calls wait for answers, while the session drains, and
// once it has had no call for readerLinger.
func (s *clientSession) readLoop() {
	defer s.pool.wg.Done()
	linger := time.NewTimer(s.pool.linger)
	defer linger.Stop()
	for s.awaitRole(linger) {
		if !s.rdSet.IsZero() {
			// A caller's deadline: the loop waits without one.
			s.rdSet = time.Time{}
			_ = s.st.SetReadDeadline(time.Time{})
		}
		for {
			if err := s.readFrame(); err != nil {
				s.abort(fmt.Errorf("raft: session to %s: %w", s.peer, err))
				return
			}
			s.mu.Lock()
			if len(s.pending) == 0 && !s.draining && s.dead == nil {
				// A lone call to come reads its own answer.
				s.reader = readerNone
				s.mu.Unlock()
				break
			}
			s.mu.Unlock()
		}
	}
}

// awaitRole waits until the read loop is wanted and gives it the reader's
// role; false once the session has ended.
func (s *clientSession) awaitRole(linger *time.Timer) bool {
	for {
		wait := s.pool.linger
		s.mu.Lock()
		if s.dead != nil {
			s.mu.Unlock()
			return false
		}
		if s.reader == readerNone {
			quiet := time.Since(s.lastUse)
			if len(s.pending) > 0 || s.draining || quiet >= s.pool.linger {
				s.reader = readerLoop
				s.mu.Unlock()
				return true
			}
			wait = s.pool.linger - quiet
		}
		s.mu.Unlock()
		linger.Reset(wait)
		select {
		case <-s.wake:
		case <-linger.C:
		case <-s.done:
		}
	}
}

// readFrame reads one frame and hands it to its call; only for the holder
// of the reader's role.
func (s *clientSession) readFrame() error {
	body, _, err := readSessionFrame(s.br, s.br, nil)
	if err != nil {
		return err
	}
	if s.recv != nil {
		if body, err = s.recv.open(body); err != nil {
			return err
		}
	}
	return s.deliver(body)
}

// deliver hands one frame to its call.
func (s *clientSession) deliver(payload []byte) error {
	kind, id, rest, err := parsePayload(payload)
	if err != nil {
		return err
	}
	switch kind {
	case frameGoaway:
		s.goaway(id)
		return nil
	case frameAnswer, frameBusy:
	default:
		return fmt.Errorf("%w: session frame kind %d", ErrInvalidCommand, kind)
	}
	s.mu.Lock()
	pc := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if kind == frameBusy {
		if pc != nil {
			pc.ch <- callResult{err: fmt.Errorf("%w (%s)", errSessionBusy, s.peer)}
		}
		s.maybeFinish()
		return nil
	}
	leader, self, rest, err := parseHint(rest)
	if err != nil {
		return err
	}
	s.pool.noteLeader(s.peer, leader, self)
	if pc != nil {
		pc.ch <- callResult{raw: rest}
	}
	s.maybeFinish()
	return nil
}

// goaway: the member handled requests up to last and reads no more.
func (s *clientSession) goaway(last uint64) {
	s.pool.drop(s)
	s.w.close(errSessionGoaway)
	var lost []*pendingCall
	s.mu.Lock()
	s.draining = true
	for id, pc := range s.pending {
		if id > last {
			delete(s.pending, id)
			lost = append(lost, pc)
		}
	}
	s.mu.Unlock()
	for _, pc := range lost {
		pc.ch <- callResult{err: fmt.Errorf("%w (%s)", errSessionGoaway, s.peer)}
	}
	s.maybeFinish()
}

// maybeFinish closes a draining session once nothing waits on it, and
// arms the idle close of an idle one.
func (s *clientSession) maybeFinish() {
	s.mu.Lock()
	empty := len(s.pending) == 0
	draining := s.draining
	s.mu.Unlock()
	if empty && draining {
		_ = s.st.CloseWrite()
	}
}

// closeIfIdle closes the session if no call used it for sessionIdle.
func (s *clientSession) closeIfIdle() {
	s.mu.Lock()
	if s.dead != nil || s.draining {
		s.mu.Unlock()
		return
	}
	if left := sessionIdle - time.Since(s.lastUse); len(s.pending) > 0 || left > 0 {
		s.mu.Unlock()
		s.idle.Reset(max(left, time.Second))
		return
	}
	s.draining = true
	s.mu.Unlock()
	s.wakeLoop() // to read to the end
	s.pool.drop(s)
	s.w.close(errSessionGoaway)
	// Nothing is pending and nothing more will be sent: the member sees
	// the end of the requests and closes its side.
	_ = s.st.CloseWrite()
}

// abort ends the session: calls waiting fail (their outcome unknown once
// their request left, else not sent).
func (s *clientSession) abort(cause error) {
	s.pool.drop(s)
	s.w.close(fmt.Errorf("%w: %w", errWriterClosed, cause))
	s.mu.Lock()
	if s.dead != nil {
		s.mu.Unlock()
		return
	}
	s.dead = cause
	type failed struct {
		pc   *pendingCall
		sent bool
	}
	var fails []failed
	for _, pc := range s.pending {
		// A frame a write has taken may have left whole, even if that
		// write has not returned yet.
		fails = append(fails, failed{pc, pc.written || pc.taken})
	}
	s.pending = map[uint64]*pendingCall{}
	s.mu.Unlock()
	s.idle.Stop()
	_ = s.st.Reset()
	for _, f := range fails {
		if f.sent {
			f.pc.ch <- callResult{err: fmt.Errorf("raft: no answer from %s, the request was sent (the outcome is unknown): %w", s.peer, cause)}
		} else {
			f.pc.ch <- callResult{err: fmt.Errorf("%w: %w", errNotSent, cause)}
		}
	}
	close(s.done)
}
