package raft

// The member's side of command sessions (session_wire.go). A session costs
// the member what the streams it replaces would: until its hello is in it
// holds one command stream slot (under the same per-peer and total caps),
// and every request in flight on it holds one slot of the total and one of
// its peer's session requests (sessionRequestsPerPeer, a cap of its own, so
// that a Client's calls in flight do not crowd out its other streams, and
// one session carries enough calls at once for the leader's Raft batches).
// Past a cap a request is answered "busy" (never handled: the caller may go
// elsewhere), as an over-cap stream is reset. Before its hello
// authenticates, a session is a command stream like any other: the same
// read timeout, read budget and refusals, so a peer without the key gets
// nothing more.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// sessionsPerPeer caps the sessions one peer holds open at a member: a
// Client keeps one, so this leaves room for several Clients on one node, a
// member's forwarder and sessions being replaced. sessionsTotal caps them
// all. An open session holds a goroutine and a small read buffer; until its
// hello is in it also holds a command stream slot, like any stream.
//
// sessionRequestsPerPeer caps the requests one peer has in flight on its
// sessions, all together, beside its commandStreamsPerPeer streams: room
// for one session at its own cap (sessionInflight) and a second one's
// calls (a Client and a forwarding member on one node). They also count in
// commandStreamsTotal, so the member's goroutines for requests stay bounded
// in all as before, and a peer holds at most three times what it held when
// its session requests shared its stream slots.
const (
	sessionsPerPeer        = 8
	sessionsTotal          = 256
	sessionRequestsPerPeer = 2 * commandStreamsPerPeer
)

// sessionProtocolOf is the session protocol beside a command protocol.
func sessionProtocolOf(proto protocol.ID) protocol.ID {
	return sessionProtocol(strings.TrimPrefix(string(proto), "/raft/v1"))
}

// serverSession is one session a member serves.
type serverSession struct {
	svc  *commandService
	st   network.Stream
	from peer.ID
	w    frameWriter
	recv *frameCipher
	// inflight counts its requests being served (under svc.mu).
	inflight int
	handlers sync.WaitGroup // requests being served
	jobs     chan sessionJob
	workers  sync.WaitGroup
	// stop is closed by close: the reader stops at the next frame.
	stop     chan struct{}
	stopOnce sync.Once
	// The reader's state, used by whichever goroutine holds its role (see
	// read); readDone is closed when reading ends, clean telling whether
	// the caller gets a goaway naming last, the last request read.
	br       *bufio.Reader
	last     uint64
	clean    bool
	rd       lazyDeadline // the read deadline last set
	readDone chan struct{}
	// Writes the reader started (session_fastwrite.go): fast is the
	// leader's side (nil: none); started and answers are made at the
	// first, fastDone is closed once they are all answered.
	fast     sessionProposer
	started  chan *startedWrite
	answers  chan *startedWrite
	fastDone chan struct{}
	// group is the writes of the burst being read, held to be proposed
	// as one entry when it ends (session_group.go), with their keys and
	// their size; the reader's alone.
	group     []*fastWrite
	groupKeys map[string]struct{}
	groupSize int
}

func (s *commandService) handleSession(st network.Stream) {
	from := st.Conn().RemotePeer()
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		_ = st.Reset()
		return
	}
	if s.perPeer[from] >= commandStreamsPerPeer || s.total >= commandStreamsTotal ||
		s.sessPerPeer[from] >= sessionsPerPeer || s.sessTotal >= sessionsTotal {
		s.mu.Unlock()
		_ = st.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	s.wg.Add(1)
	s.streams[st] = struct{}{}
	s.perPeer[from]++
	s.total++
	s.sessPerPeer[from]++
	s.sessTotal++
	s.mu.Unlock()
	ss := &serverSession{svc: s, st: st, from: from, stop: make(chan struct{}), jobs: make(chan sessionJob)}
	slotHeld := true
	releaseSlot := func() { // under s.mu
		if slotHeld {
			slotHeld = false
			if s.perPeer[from]--; s.perPeer[from] <= 0 {
				delete(s.perPeer, from)
			}
			s.total--
		}
	}
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		delete(s.sessions, ss)
		releaseSlot()
		if s.sessPerPeer[from]--; s.sessPerPeer[from] <= 0 {
			delete(s.sessPerPeer, from)
		}
		s.sessTotal--
		s.mu.Unlock()
		s.wg.Done()
	}()
	if !ss.hello() {
		return
	}
	s.mu.Lock()
	// From here on close stops it gracefully, and its requests in flight,
	// not the session, hold command stream slots.
	delete(s.streams, st)
	releaseSlot()
	if s.done {
		s.mu.Unlock()
		_ = st.Reset()
		return
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	ss.serve()
}

// hello reads the caller's hello and answers it; false when the session
// ends there (refused, or broken).
func (ss *serverSession) hello() bool {
	s, st := ss.svc, ss.st
	_ = st.SetReadDeadline(time.Now().Add(requestReadTimeout))
	payload, _, release, err := s.codec.readMessage(st, false, s.budget)
	defer release()
	switch {
	case errors.Is(err, errBusy):
		_ = st.ResetWithError(network.StreamResourceLimitExceeded)
		return false
	case errors.Is(err, ErrEncryptionRequired), errors.Is(err, ErrUnexpectedEncryption),
		errors.Is(err, ErrDecrypt), errors.Is(err, ErrInvalidCommand), errors.Is(err, ErrTooLarge):
		s.refused(ss.from, err)
		ss.refuse(codec{}, err)
		return false
	case err != nil:
		s.logger.Debug("bad session hello", "peer", ss.from, "error", err)
		_ = st.Reset()
		return false
	}
	var hello sessionHello
	if err := wireDec.Unmarshal(payload, &hello); err != nil {
		// Without a salt to bind an answer to: plaintext, which reveals
		// nothing.
		ss.refuse(codec{}, fmt.Errorf("%w: session hello: %v", ErrInvalidCommand, err))
		return false
	}
	if hello.Version != sessionVersion {
		err := fmt.Errorf("%w: session version %d, this member speaks %d", ErrInvalidCommand, hello.Version, sessionVersion)
		ss.refuseAAD(s.codec, err, sessionHelloAAD(hello.Salt))
		return false
	}
	reply := &sessionHello{Version: sessionVersion}
	var aad []byte
	if s.codec.key != nil {
		salt, err := newSessionSalt()
		if err != nil {
			ss.refuse(s.codec, err)
			return false
		}
		c2s, s2c, err := s.codec.key.sessionCiphers(hello.Salt, salt)
		if err != nil {
			ss.refuseAAD(s.codec, fmt.Errorf("%w: %v", ErrInvalidCommand, err), sessionHelloAAD(hello.Salt))
			return false
		}
		ss.recv, ss.w.ciph = c2s, s2c
		reply.Salt, aad = salt, sessionHelloAAD(hello.Salt)
	}
	body, err := s.codec.encodeAAD(reply, aad)
	if err != nil {
		_ = st.Reset()
		return false
	}
	_ = st.SetWriteDeadline(time.Now().Add(sessionWriteTimeout))
	if err := writeFrame(st, body); err != nil {
		_ = st.Reset()
		return false
	}
	ss.w.w = st
	ss.w.busy = ss.busy
	var wd lazyDeadline // used by one write at a time
	ss.w.deadline = func() {
		if now := time.Now(); wd.due(now, sessionWriteTimeout) {
			_ = st.SetWriteDeadline(now.Add(sessionWriteTimeout))
		}
	}
	ss.w.done = func(_ []any, _ []int, _ int, err error) {
		if err != nil {
			_ = st.Reset()
		}
	}
	return true
}

// refuse answers the hello with an error, as a request would be.
func (ss *serverSession) refuse(cd codec, err error) { ss.refuseAAD(cd, err, nil) }

// refuseAAD is refuse sealed, under a key, for the caller of an
// authenticated hello (whose answer it opens with the hello's aad).
func (ss *serverSession) refuseAAD(cd codec, err error, aad []byte) {
	if cd.key == nil {
		aad = nil
	}
	body, eerr := cd.encodeAAD(&sessionHello{Code: errorCode(err), Message: err.Error()}, aad)
	if eerr != nil {
		_ = ss.st.Reset()
		return
	}
	_ = ss.st.SetWriteDeadline(time.Now().Add(defaultCallTimeout))
	if writeFrame(ss.st, body) != nil {
		_ = ss.st.Reset()
		return
	}
	_ = ss.st.Close()
}

// serve reads requests until the caller closes its side, the session idles
// past sessionMemberIdle, breaks, or the member closes; then it says which
// requests it read (goaway), answers them, and ends the stream.
func (ss *serverSession) serve() {
	ss.br = bufio.NewReaderSize(ss.st, sessionReadBuffer)
	ss.readDone = make(chan struct{})
	ss.fast, _ = ss.svc.leader.(sessionProposer)
	ss.read()
	<-ss.readDone
	if ss.clean {
		// Requests up to last were read and get their answers; none after.
		_ = ss.w.sendID(framePayload(frameGoaway, ss.last, 0), nil)
	}
	if ss.started != nil {
		close(ss.started)
		close(ss.answers)
		<-ss.fastDone
	}
	ss.handlers.Wait()
	close(ss.jobs)
	ss.workers.Wait()
	ss.w.close(errWriterClosed)
	if ss.clean {
		_ = ss.st.Close()
	} else {
		_ = ss.st.Reset()
	}
}

// read reads requests while its goroutine holds the reader's role. A
// request read while more frames wait is a write the reader starts itself
// (with the others of its burst, session_group.go) or goes to a worker; one read alone (the usual case of a
// caller with one call in flight) is served right here, after the reader's
// role has gone to a worker: the request saves a hand-off between
// goroutines, the reading does not stop.
func (ss *serverSession) read() {
	for {
		j, ok := ss.next()
		if !ok {
			ss.flushGroup()
			return
		}
		more := ss.br.Buffered() > 0
		if more || len(ss.group) > 0 {
			// A burst: its writes are held for one entry, proposed
			// when the burst ends (or before a request that is not
			// one of them, so requests start in the order read).
			if ss.collect(j) {
				if !more {
					ss.flushGroup()
				}
				continue
			}
			ss.flushGroup()
			if more {
				ss.run(j)
				continue
			}
		}
		ss.handlers.Add(1)
		ss.pass(sessionJob{read: true})
		ss.handle(j.id, j.raw, j.weight)
		ss.handlers.Done()
		return
	}
}

// next reads the next request frame and admits it. false: reading has
// ended (ss.clean says how) and readDone is closed.
func (ss *serverSession) next() (sessionJob, bool) {
	s, br := ss.svc, ss.br
	for {
		// Wait for the next frame under the idle timeout, then read it
		// whole under the request read timeout. Deadlines are set only
		// where a read may block: a frame already buffered needs none. A
		// deadline set after close halted the reader would hide the halt:
		// check after setting one.
		if br.Buffered() == 0 {
			if !ss.deadline(s.idleTimeout()) {
				return ss.ended(true)
			}
			if _, err := br.Peek(1); err != nil {
				if retryableTimeout(err) && !ss.stopped() && ss.inFlight() > 0 {
					continue // idle counts only while nothing is in flight
				}
				return ss.ended(retryableTimeout(err) || errors.Is(err, io.EOF) || ss.stopped())
			}
		}
		if !frameBuffered(br) && !ss.deadline(requestReadTimeout) {
			return ss.ended(true)
		}
		body, weight, err := readSessionFrame(br, br, s.budget)
		if err != nil {
			s.budget.give(weight)
			// Out of read budget, or halted: the frame was not read, and
			// the goaway says so. Anything else breaks the session.
			clean := errors.Is(err, errBusy) || ss.stopped()
			if !clean {
				s.logger.Debug("session ended", "peer", ss.from, "error", err)
			}
			return ss.ended(clean)
		}
		if ss.recv != nil {
			if body, err = ss.recv.open(body); err != nil {
				s.budget.give(weight)
				s.refused(ss.from, err)
				return ss.ended(false)
			}
		}
		kind, id, rest, err := parsePayload(body)
		if err != nil || kind != frameRequest || id <= ss.last {
			s.budget.give(weight)
			s.logger.Debug("bad session frame", "peer", ss.from, "kind", kind, "id", id, "error", err)
			return ss.ended(false)
		}
		ss.last = id
		if !ss.admit() {
			s.budget.give(weight)
			_ = ss.w.sendID(framePayload(frameBusy, id, 0), nil)
			continue
		}
		return sessionJob{id: id, raw: rest, weight: weight}, true
	}
}

// ended records how reading ended and lets serve finish the session.
func (ss *serverSession) ended(clean bool) (sessionJob, bool) {
	ss.clean = clean
	close(ss.readDone)
	return sessionJob{}, false
}

// frameBuffered tells whether br holds a whole frame already.
func frameBuffered(br *bufio.Reader) bool {
	head, _ := br.Peek(min(br.Buffered(), binary.MaxVarintLen64))
	n, k := binary.Uvarint(head)
	return k > 0 && uint64(br.Buffered()-k) >= n
}

// deadline sets the read deadline d from now; false once close halted the
// session.
func (ss *serverSession) deadline(d time.Duration) bool {
	if now := time.Now(); ss.rd.due(now, d) {
		_ = ss.st.SetReadDeadline(now.Add(d))
	}
	return !ss.stopped()
}

// stopped tells whether close asked the session to stop.
func (ss *serverSession) stopped() bool {
	select {
	case <-ss.stop:
		return true
	default:
		return false
	}
}

// halt makes the reader stop at once (the member is closing).
func (ss *serverSession) halt() {
	ss.stopOnce.Do(func() {
		close(ss.stop)
		_ = ss.st.SetReadDeadline(time.Now())
	})
}

// inFlight counts its requests being served.
func (ss *serverSession) inFlight() int {
	ss.svc.mu.Lock()
	defer ss.svc.mu.Unlock()
	return ss.inflight
}

// busy tells whether requests are in flight other than the one answering.
func (ss *serverSession) busy() bool { return ss.inFlight() > 1 }

// sessionJob is one request read, for a worker, or (read) the reader's
// role.
type sessionJob struct {
	read   bool
	id     uint64
	raw    []byte
	weight int64 // its room in the read budget, given back once decoded
}

// sessionWorkerIdle is how long a session's worker waits for its next
// request before it ends. Workers are reused because a request's handling
// grows a fresh goroutine's stack several times over, which costs more
// than the rest of the session's work.
const sessionWorkerIdle = time.Second

// run hands a request to an idle worker, or starts one.
func (ss *serverSession) run(j sessionJob) {
	ss.handlers.Add(1)
	ss.pass(j)
}

// pass hands a job to an idle worker, or starts one.
func (ss *serverSession) pass(j sessionJob) {
	select {
	case ss.jobs <- j:
	default:
		ss.workers.Add(1)
		go ss.worker(j)
	}
}

// worker serves requests until none comes for sessionWorkerIdle or the
// session ends.
func (ss *serverSession) worker(j sessionJob) {
	defer ss.workers.Done()
	idle := time.NewTimer(sessionWorkerIdle)
	defer idle.Stop()
	for {
		if j.read {
			ss.read()
		} else {
			ss.handle(j.id, j.raw, j.weight)
			ss.handlers.Done()
		}
		idle.Reset(sessionWorkerIdle)
		var ok bool
		select {
		case j, ok = <-ss.jobs:
			if !ok {
				return
			}
		case <-idle.C:
			return
		}
	}
}

// admit takes a place for one request: a session request slot of its peer
// and a command slot of the total.
func (ss *serverSession) admit() bool {
	s := ss.svc
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessReqPerPeer[ss.from] >= sessionRequestsPerPeer || s.total >= commandStreamsTotal {
		return false
	}
	s.sessReqPerPeer[ss.from]++
	s.total++
	ss.inflight++
	return true
}

// handle decodes and serves one request (weight is its room in the read
// budget, given back once it is decoded) and answers it with a leader
// hint. The request and its response are reused (wire_pool.go): serving
// is synchronous, and nothing it calls keeps either past its answer (a
// forwarded request is a copy).
func (ss *serverSession) handle(id uint64, raw []byte, weight int64) {
	s := ss.svc
	req := getRequest()
	defer putRequest(req)
	decodeErr := decodeRequestInto(raw, req)
	s.budget.give(weight)
	defer ss.release()
	var resp *response
	switch {
	case decodeErr != nil:
		resp = errorResponse(decodeErr)
		s.metrics.request("", resp.Code)
	case req.Cmd == cmdWatch:
		resp = errorResponse(fmt.Errorf("%w: a watch needs a stream of its own", ErrInvalidCommand))
		s.metrics.request(cmdWatch, resp.Code)
	default:
		resp = s.answer(ss.from, req)
	}
	ss.answerWith(id, resp)
}

// release gives back the place admit took for a request.
func (ss *serverSession) release() {
	s := ss.svc
	s.mu.Lock()
	if s.sessReqPerPeer[ss.from]--; s.sessReqPerPeer[ss.from] <= 0 {
		delete(s.sessReqPerPeer, ss.from)
	}
	s.total--
	ss.inflight--
	s.mu.Unlock()
}

// answerWith sends resp as the answer to request id, with a leader hint,
// and gives resp back.
func (ss *serverSession) answerWith(id uint64, resp *response) {
	ss.answerFrame(id, resp, false)
}

// answerFrame is answerWith; hold leaves the answer queued for the next
// write of the session's frames instead of writing it now.
func (ss *serverSession) answerFrame(id uint64, resp *response, hold bool) {
	s := ss.svc
	buf := getWireBuf()
	body, err := appendResponse(buf.b[:0], resp)
	if err == nil {
		err = checkSize("answer", len(body)+1, MaxMessageSize)
	}
	if err != nil {
		body, _ = appendResponse(body[:0], errorResponse(err))
	}
	var self bool
	var leader peer.ID
	if s.fwd != nil && s.fwd.role != nil {
		self, leader, _ = s.fwd.role.leadership()
	}
	var hb [1 + 2*binary.MaxVarintLen64 + 1 + 64]byte
	head := appendHint(binary.AppendUvarint(append(hb[:0], frameAnswer), id), self, leader)
	if hold {
		_ = ss.w.queueID(head, body) // copies body
	} else {
		_ = ss.w.sendID(head, body) // copies body
	}
	buf.b = body
	putWireBuf(buf)
	putResponse(resp)
}

// idleTimeout is how long a session may stay without requests.
func (s *commandService) idleTimeout() time.Duration {
	if d := s.sessIdle.Load(); d > 0 {
		return time.Duration(d)
	}
	return sessionMemberIdle
}

// sessionsFrom counts the sessions peer holds open (tests).
func (s *commandService) sessionsFrom(from peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessPerPeer[from]
}

// inFlightFrom counts the command slots peer holds: its streams, its
// sessions still in their hello, and their requests in flight (tests).
func (s *commandService) inFlightFrom(from peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perPeer[from] + s.sessReqPerPeer[from]
}

// streamSlotsFrom counts the command-stream slots peer holds: its streams
// and its sessions still in their hello, not its session requests (tests).
func (s *commandService) streamSlotsFrom(from peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perPeer[from]
}

// sessionRequestsFrom counts the requests peer has in flight on its
// sessions (tests).
func (s *commandService) sessionRequestsFrom(from peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessReqPerPeer[from]
}
