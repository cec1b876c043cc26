package raft

// The calling side of command sessions (session_wire.go): a pool that keeps
// one session per member, opens it on first use and again after it breaks,
// and falls back to a stream per request for members that do not speak
// sessions (an older build). A Client and a member's forwarder each have
// one. One session's calls are client_session.go.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

const (
	// sessionInflight caps the requests a caller has in flight on one
	// session; more wait (within their deadline) for a place. The member
	// counts them under sessionRequestsPerPeer, above this, so a Client is
	// not refused for its own concurrency. Past 64 so that a busy Client's
	// writes reach the leader's Raft log in batches as large as its own
	// callers' (a cap under the number of writers halves them).
	sessionInflight = 96
	// sessionIdle is how long a caller keeps a session without calls
	// before closing it; a member closes one after sessionMemberIdle, so
	// the caller, who knows when it sends, is always first.
	sessionIdle       = 30 * time.Second
	sessionMemberIdle = 2 * sessionIdle
	// sessionWriteTimeout bounds one write of frames: a peer that stops
	// reading ends the session.
	sessionWriteTimeout = defaultCallTimeout
	// sessionFallback is how long a member that does not speak sessions
	// (but answers on Protocol(ns)) is called a stream per request before
	// sessions are tried again (it may have been upgraded).
	sessionFallback = time.Minute
	// sessionDialBackoff is how long a member that could not be reached is
	// tried after the others (see sessionPool.unreachable).
	sessionDialBackoff = time.Second
	// maxPoolSessions bounds the sessions of one pool; past it calls go a
	// stream per request.
	maxPoolSessions = 64
	// sessionReadBuffer is the buffered reader of each side of a session
	// (larger frames are read past it).
	sessionReadBuffer = 4 << 10
)

var (
	// errSessionBusy: the member had no room for the request; it was not
	// handled.
	errSessionBusy = fmt.Errorf("%w: the member had no room for the request", errNotSent)
	// errSessionGoaway: the member closed the session before reading the
	// request; it was not handled.
	errSessionGoaway = fmt.Errorf("%w: the member closed the session before reading the request", errNotSent)
)

// sessionPool keeps a caller's sessions, one per member.
type sessionPool struct {
	ctx    context.Context
	host   host.Host
	proto  protocol.ID
	caller *caller // codec, the fallback, and the tests' afterWrite hook
	// linger is readerLinger (tests set another before the first call).
	linger time.Duration

	mu        sync.Mutex
	sessions  map[peer.ID]*clientSession
	dialing   map[peer.ID]chan struct{} // closed when the dial ends
	fallback  map[peer.ID]time.Time     // no sessions until then
	failedAt  map[peer.ID]time.Time     // last failed dial
	closed    bool
	wg        sync.WaitGroup // readers
	leader    atomic.Pointer[peer.ID]
	opened    atomic.Int64 // sessions opened (tests)
	fallbacks atomic.Int64 // calls sent a stream per request (tests)
}

func newSessionPool(ctx context.Context, cl *caller, namespace string) *sessionPool {
	return &sessionPool{
		ctx: ctx, host: cl.host, proto: sessionProtocol(namespace), caller: cl, linger: readerLinger,
		sessions: map[peer.ID]*clientSession{},
		dialing:  map[peer.ID]chan struct{}{},
		fallback: map[peer.ID]time.Time{},
		failedAt: map[peer.ID]time.Time{},
	}
}

// leaderHint is the leader the latest answer named, "" when none is known.
func (p *sessionPool) leaderHint() peer.ID {
	if l := p.leader.Load(); l != nil {
		return *l
	}
	return ""
}

// noteLeader learns from an answer of member from: it leads, or it names
// the leader, or it knows none (then a hint naming it is dropped).
func (p *sessionPool) noteLeader(from, leader peer.ID, self bool) {
	if self {
		leader = from
	}
	cur := p.leader.Load()
	switch {
	case leader != "" && (cur == nil || *cur != leader):
		l := leader // only a change allocates
		p.leader.Store(&l)
	case leader == "" && cur != nil && *cur == from:
		p.leader.CompareAndSwap(cur, nil)
	}
}

// forgetLeader drops the hint if it still names id.
func (p *sessionPool) forgetLeader(id peer.ID) {
	if l := p.leader.Load(); l != nil && *l == id {
		p.leader.CompareAndSwap(l, nil)
	}
}

// unreachable tells whether a dial to id failed within sessionDialBackoff.
func (p *sessionPool) unreachable(id peer.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.failedAt[id]
	return ok && time.Since(t) < sessionDialBackoff
}

// call sends req to id on its session, opening one if needed, and returns
// the answer; errors are classed as caller.call's are (errNotSent: the
// request certainly was not handled).
func (p *sessionPool) call(ctx context.Context, id peer.ID, req *request, deadline time.Time) (*response, error) {
	for attempt := 0; ; attempt++ {
		s, how, resp, err := p.session(ctx, id, deadline)
		switch how {
		case useStreams, useStreamsOnce:
			p.fallbacks.Add(1)
			resp, err := p.caller.call(ctx, id, req, deadline)
			if how == useStreamsOnce && (err == nil || !protocolRefused(err)) {
				// It refused the session but answers here: an older
				// build, called this way for a while.
				p.noteFallbackAnswer(id)
			}
			return resp, err
		case refused:
			return resp, err
		}
		resp, err = s.call(ctx, req, deadline)
		// A session that ended before reading the request (a member that
		// closed it, idle or shutting down, or one that broke before the
		// request left) never handled it: once more on a new session.
		if attempt == 0 && errors.Is(err, errNotSent) && (errors.Is(err, errSessionGoaway) || errors.Is(err, errWriterClosed)) && time.Now().Before(deadline) && ctx.Err() == nil {
			continue
		}
		return resp, err
	}
}

// How a call goes (sessionPool.session).
type sessionUse int

const (
	useSession     sessionUse = iota
	useStreams                // a stream per request (pool full, older member)
	useStreamsOnce            // the same, the member having just refused a session
	refused                   // the call ends with the response or error given
)

// session returns id's session, opening it if there is none, or says how
// else the call goes: a stream per request, or ended by the refusal (resp:
// a member's answer with an error code) or error given.
func (p *sessionPool) session(ctx context.Context, id peer.ID, deadline time.Time) (*clientSession, sessionUse, *response, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, refused, nil, fmt.Errorf("%w: %w", errNotSent, ErrShutdown)
		}
		if s := p.sessions[id]; s != nil {
			p.mu.Unlock()
			return s, useSession, nil, nil
		}
		if until, ok := p.fallback[id]; ok {
			if time.Now().Before(until) {
				p.mu.Unlock()
				return nil, useStreams, nil, nil
			}
			delete(p.fallback, id)
		}
		if len(p.sessions) >= maxPoolSessions {
			p.mu.Unlock()
			return nil, useStreams, nil, nil
		}
		wait, busy := p.dialing[id]
		if !busy {
			wait = make(chan struct{})
			p.dialing[id] = wait
			p.mu.Unlock()
			s, resp, err := p.dial(ctx, id, deadline)
			p.mu.Lock()
			delete(p.dialing, id)
			close(wait)
			if s != nil && p.closed {
				p.mu.Unlock()
				s.abort(ErrShutdown)
				return nil, refused, nil, fmt.Errorf("%w: %w", errNotSent, ErrShutdown)
			}
			if s != nil {
				p.sessions[id] = s
				delete(p.failedAt, id)
				p.wg.Add(1)
				go s.readLoop()
				p.mu.Unlock()
				return s, useSession, nil, nil
			}
			p.mu.Unlock()
			switch {
			case resp != nil:
				return nil, refused, resp, nil
			case protocolRefused(err):
				// No session protocol there: a stream per request (the
				// member may be an older build, or not serve at all).
				return nil, useStreamsOnce, nil, nil
			case resourceLimited(err):
				// No room for one more session (several Clients on one
				// node): this call goes a stream per request.
				return nil, useStreams, nil, nil
			}
			p.mu.Lock()
			p.failedAt[id] = time.Now()
			p.mu.Unlock()
			return nil, refused, nil, err
		}
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, refused, nil, fmt.Errorf("%w: %w", errNotSent, ctx.Err())
		case <-time.After(time.Until(deadline)):
			return nil, refused, nil, fmt.Errorf("%w: %w: opening a session to %s", errNotSent, ErrTimeout, id)
		}
	}
}

// protocolRefused tells whether a member refused a stream's protocol: at
// negotiation, or (negotiated lazily) by resetting the stream.
func protocolRefused(err error) bool {
	var se *network.StreamError
	return notServed(err) || (errors.As(err, &se) && se.Remote && se.ErrorCode == network.StreamProtocolNegotiationFailed)
}

// resourceLimited tells whether a member reset a stream for lack of room.
func resourceLimited(err error) bool {
	var se *network.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == network.StreamResourceLimitExceeded
}

// noteFallbackAnswer records that id answered a stream per request after
// refusing sessions: it is an older build, called that way for a while.
func (p *sessionPool) noteFallbackAnswer(id peer.ID) {
	p.mu.Lock()
	p.fallback[id] = time.Now().Add(sessionFallback)
	p.mu.Unlock()
}

// dial opens a session to id: the stream, then the hello each way.
func (p *sessionPool) dial(ctx context.Context, id peer.ID, deadline time.Time) (*clientSession, *response, error) {
	cd := p.caller.codec
	salt, err := newSessionSalt()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	hello := &sessionHello{Version: sessionVersion}
	if cd.key != nil {
		hello.Salt = salt
	}
	body, err := cd.encode(hello)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	st, err := p.host.NewStream(network.WithAllowLimitedConn(dctx, "raft"), id, p.proto)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: open session to %s: %w", errNotSent, id, err)
	}
	stop := context.AfterFunc(dctx, func() { _ = st.Reset() })
	defer stop()
	_ = st.SetDeadline(deadline)
	if err := writeFrame(st, body); err != nil {
		_ = st.Reset()
		return nil, nil, fmt.Errorf("%w: open session to %s: %w", errNotSent, id, err)
	}
	var aad []byte
	if cd.key != nil {
		aad = sessionHelloAAD(salt)
	}
	payload, plain, _, err := cd.readMessageAAD(st, true, nil, aad)
	if err != nil {
		_ = st.Reset()
		if refusedBeforeHandling(err) {
			return nil, nil, fmt.Errorf("%w: %s refused the session: %w", errNotSent, id, err)
		}
		return nil, nil, fmt.Errorf("%w: open session to %s: %w", errNotSent, id, err)
	}
	var reply sessionHello
	if err := wireDec.Unmarshal(payload, &reply); err != nil {
		_ = st.Reset()
		return nil, nil, fmt.Errorf("%w: session hello from %s: %v", errNotSent, id, err)
	}
	if reply.Code != codeOK {
		// A refusal, with the code a request would have got (wrong key,
		// no key): the request is answered with it.
		_ = st.Reset()
		return nil, &response{Code: reply.Code, Message: reply.Message}, nil
	}
	if plain && cd.key != nil {
		_ = st.Reset()
		return nil, nil, fmt.Errorf("%w: %w: %s answered in plaintext", errNotSent, ErrEncryptionRequired, id)
	}
	if reply.Version != sessionVersion {
		_ = st.Reset()
		return nil, nil, fmt.Errorf("%w: %s speaks session version %d, not %d", errNotSent, id, reply.Version, sessionVersion)
	}
	_ = st.SetDeadline(time.Time{})
	s := &clientSession{pool: p, peer: id, st: st, pending: map[uint64]*pendingCall{},
		slots: make(chan struct{}, sessionInflight), done: make(chan struct{}),
		br: bufio.NewReaderSize(st, sessionReadBuffer), wake: make(chan struct{}, 1)}
	if cd.key != nil {
		c2s, s2c, err := cd.key.sessionCiphers(salt, reply.Salt)
		if err != nil {
			_ = st.Reset()
			return nil, nil, fmt.Errorf("%w: session with %s: %w", errNotSent, id, err)
		}
		s.w.ciph, s.recv = c2s, s2c
	}
	s.w.w = st
	var wd lazyDeadline // used by one write at a time
	s.w.deadline = func() {
		if now := time.Now(); wd.due(now, sessionWriteTimeout) {
			_ = st.SetWriteDeadline(now.Add(sessionWriteTimeout))
		}
	}
	s.w.done = s.written
	s.w.taken = s.taken
	s.w.queued = s.queued
	s.w.busy = func() bool { return len(s.slots) > 1 }
	s.idle = time.AfterFunc(sessionIdle, s.closeIfIdle)
	p.opened.Add(1)
	return s, nil, nil
}

// drop removes s from the pool if it is still there.
func (p *sessionPool) drop(s *clientSession) {
	p.mu.Lock()
	if p.sessions[s.peer] == s {
		delete(p.sessions, s.peer)
	}
	p.mu.Unlock()
}

// close ends every session (calls in flight fail) and waits for them.
func (p *sessionPool) close() {
	p.mu.Lock()
	p.closed = true
	all := make([]*clientSession, 0, len(p.sessions))
	for _, s := range p.sessions {
		all = append(all, s)
	}
	clear(p.sessions)
	p.mu.Unlock()
	for _, s := range all {
		s.abort(ErrShutdown)
	}
	p.wg.Wait()
}

// count is the number of open sessions (tests).
func (p *sessionPool) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sessions)
}
