package raft

// Writes that arrive in a burst on a session, on the leader. The session's
// reader hands each to Raft itself, in the order read, instead of giving
// every request a worker that decodes it, proposes it and waits: the burst
// reaches Raft's queue at once (the leader makes larger batches), and two
// goroutines per session (one waiting for the futures in order and
// answering each as it ends, one answering those that time out or outlive
// the member) replace a worker and a waiting goroutine per write. What a
// write is answered is exactly what the worker would answer: the same
// checks (a request that fails one, or that the leader could not start at
// once, goes to a worker as before), the same errors for a timeout or a
// closing member, the same answer.

import (
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
)

// sessionProposer is what the fast path needs of the leader (the cluster).
type sessionProposer interface {
	proposeStart(ops []cmdOp, id *requestID, timeout time.Duration, quick bool) (hraft.ApplyFuture, time.Time, error)
	// proposeGroupStart is proposeStart (quick) of several writes as one
	// grouped entry (session_group.go).
	proposeGroupStart(writes []*fastWrite) (hraft.ApplyFuture, time.Time, error)
	applied(f hraft.ApplyFuture, start time.Time) FSMResponse
	closing() <-chan struct{}
	// leading tells whether this member leads now (cheap: no decoding
	// for a follower, which forwards).
	leading() bool
}

// startedWrite is a write handed to Raft by the reader.
type startedWrite struct {
	id       uint64 // its request's id on the session
	cmd      string
	f        hraft.ApplyFuture
	part     int // its part of a grouped entry; -1: the entry is its alone
	start    time.Time
	timeout  time.Duration
	deadline time.Time
	err      error         // f's error, set before done is closed
	done     chan struct{} // closed once f has ended
	// answered is taken by whichever answers the write: the goroutine
	// waiting for the futures when f ends, or the one watching the
	// deadlines at the timeout or the member's closing.
	answered atomic.Bool
}

// claim tells whether the caller is the one to answer w.
func (w *startedWrite) claim() bool { return w.answered.CompareAndSwap(false, true) }

// fastWrite is a request the reader may hand to Raft itself: a Set or
// Delete that passed the checks a worker would make.
type fastWrite struct {
	j       sessionJob
	req     *request // from getRequest; op aliases it until it is given back
	op      [1]cmdOp
	id      *requestID
	timeout time.Duration
}

// fastWriteOf decodes and checks request j; false: it goes to a worker
// (not a Set or Delete, a check failed, or this member does not lead).
func (ss *serverSession) fastWriteOf(j sessionJob) (*fastWrite, bool) {
	p := ss.fast
	if p == nil || !p.leading() {
		return nil, false
	}
	req := getRequest()
	fw, ok := checkFastWrite(j, req)
	if !ok {
		putRequest(req)
	}
	return fw, ok
}

// checkFastWrite is fastWriteOf once the member leads, with req to decode
// into: the checks of commandService.write and propose.
func checkFastWrite(j sessionJob, req *request) (*fastWrite, bool) {
	if decodeRequestInto(j.raw, req) != nil {
		return nil, false
	}
	var op Op
	switch req.Cmd {
	case cmdSet:
		op = SetOp(req.Key, req.Value)
	case cmdDelete:
		op = DeleteOp(req.Key)
	default:
		return nil, false
	}
	timeout := time.Duration(req.Timeout)
	if validateTimeout(timeout) != nil || checkUserOp(op) != nil {
		return nil, false
	}
	id, err := requestIDOf(req)
	if err != nil {
		return nil, false
	}
	fw := &fastWrite{j: j, req: req, id: id, timeout: timeout}
	fw.op[0] = cmdOp{kind: opKindOf(op), key: []byte(op.Key), value: op.Value}
	return fw, true
}

// begin counts fw as started with future f (part: its part of a grouped
// entry, or -1) and hands it to the goroutines that answer it.
func (ss *serverSession) begin(fw *fastWrite, f hraft.ApplyFuture, start time.Time, part int) {
	ss.svc.budget.give(fw.j.weight)
	ss.svc.startedWrites.Add(1)
	ss.handlers.Add(1)
	w := &startedWrite{id: fw.j.id, cmd: fw.req.Cmd, f: f, part: part, start: start, timeout: fw.timeout,
		deadline: time.Now().Add(fw.timeout), done: make(chan struct{})}
	if ss.started == nil {
		// Room for every request the peer may have in flight: the
		// reader never waits here.
		ss.started = make(chan *startedWrite, sessionRequestsPerPeer)
		ss.answers = make(chan *startedWrite, sessionRequestsPerPeer)
		ss.fastDone = make(chan struct{})
		go ss.waitStarted(ss.started)
		go ss.watchStarted(ss.answers, ss.fast.closing())
	}
	ss.started <- w
	ss.answers <- w
}

// waitStarted waits for the started writes' futures, in the order they
// were started (Raft ends them in that order), and answers each as its
// future ends, unless it was already answered (timed out). Answering here
// rather than handing the write to another goroutine saves a wake-up on
// the way back to the caller.
func (ss *serverSession) waitStarted(started <-chan *startedWrite) {
	for w := range started {
		w.err = w.f.Error()
		if w.claim() {
			var resp *response
			if w.err != nil {
				resp = errorResponse(translateRaftError(w.err))
			} else {
				resp = writeResponse(answerOf(partOf(ss.fast.applied(w.f, w.start), w.part)))
			}
			// With more started writes waiting, their futures
			// likely end with this one (Raft answers a batch at
			// once): the answer waits in the queue, and the
			// watcher, woken by done, writes it with those that
			// joined it meanwhile. A lone write's answer leaves now.
			ss.answerStartedHold(w, resp, len(started) > 0)
		}
		close(w.done)
	}
}

// watchStarted answers, in order, the started writes whose futures have not
// ended by their timeout (outcome unknown) or by the member's closing, as
// commandService.write answers after cluster.wait.
func (ss *serverSession) watchStarted(answers <-chan *startedWrite, closing <-chan struct{}) {
	defer close(ss.fastDone)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for w := range answers {
		timer.Reset(time.Until(w.deadline))
		select {
		case <-w.done:
		case <-timer.C:
			ss.answerUnlessAnswered(w, errorResponse(waitTimedOut(w.timeout)))
		case <-closing:
			ss.answerUnlessAnswered(w, errorResponse(errWaitShutdown()))
		}
		timer.Stop()
		// w is answered, and its answer, or those of the writes before
		// it, may wait in the queue (waitStarted holds them while more
		// follow): write them.
		ss.w.flush()
	}
}

// answerUnlessAnswered answers w with resp unless waitStarted took it
// first; then it waits until waitStarted has queued its answer (done), so
// that the flush after it carries that answer.
func (ss *serverSession) answerUnlessAnswered(w *startedWrite, resp *response) {
	if w.claim() {
		ss.answerStarted(w, resp)
		return
	}
	putResponse(resp)
	<-w.done
}

// answerStarted sends a started write its answer and ends its request.
func (ss *serverSession) answerStarted(w *startedWrite, resp *response) {
	ss.answerStartedHold(w, resp, false)
}

// answerStartedHold is answerStarted; hold leaves the answer queued for the
// session's next write (the watcher makes one once it sees w done).
func (ss *serverSession) answerStartedHold(w *startedWrite, resp *response, hold bool) {
	ss.svc.metrics.request(w.cmd, resp.Code)
	ss.answerFrame(w.id, resp, hold)
	ss.release()
	ss.handlers.Done()
}

// closing is closed when the cluster closes.
func (c *cluster) closing() <-chan struct{} { return c.ctx.Done() }

// leading tells whether this member's Raft is the leader.
func (c *cluster) leading() bool {
	r, err := c.r()
	return err == nil && r.State() == hraft.Leader
}
