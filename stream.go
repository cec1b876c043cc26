package raft

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// kvReader reads the local replica (the state machine).
type kvReader interface {
	get(key string) ([]byte, bool, error)
	getEntry(key string) (Entry, bool, error)
	keys(prefix string) ([]string, error)
	claimOfLease(name string, lease LeaseID) (claimedItem, uint64, error)
	waitIndex(idx uint64, wait time.Duration) error
}

// peerExchanger takes a peer's side of a peer exchange and gives ours (the
// peer tracker).
type peerExchanger interface {
	exchange(from peer.ID, peers []wirePeer, st *status, kinds []uint8) ([]wirePeer, *status, []uint8)
}

// leaderCalls are the leader's code paths that the command service shares
// with the Cluster methods, so a request is applied (and validated) exactly
// as a local call would be.
type leaderCalls interface {
	// propose replicates validated operations, with the request ID of a
	// Client write (nil for none), and returns their result (Cluster.Set,
	// Delete, Txn).
	propose(ops []cmdOp, id *requestID, timeout time.Duration) (TxnResult, error)
	// proposeAnswer is propose returning what a queue claim among the
	// operations found too (nil: none).
	proposeAnswer(ops []cmdOp, id *requestID, timeout time.Duration) (TxnResult, *claimedItem, error)
	// readIndex returns an index covering every acknowledged write
	// (Cluster.Barrier).
	readIndex(timeout time.Duration) (uint64, error)
	// joinVoter adds a validated peer as a voter unless it is one; via is
	// the member that forwarded the request, "" when the peer asked itself.
	joinVoter(id, via peer.ID, timeout time.Duration) error
}

// commandService serves Protocol(ns) on a member: it reads one request per
// stream, runs it (locally, or on the leader through the forwarder) and
// answers.
type commandService struct {
	host   host.Host
	proto  protocol.ID
	codec  codec
	logger hclog.Logger
	kv     kvReader
	peers  peerExchanger
	leader leaderCalls
	fwd    *forwarder
	wg     sync.WaitGroup

	mu       sync.Mutex
	done     bool
	streams  map[network.Stream]struct{} // being served, reset on close
	perPeer  map[peer.ID]int             // streams being served per peer
	total    int                         // streams being served
	refusals *logLimiter                 // see refused
	budget   *readBudget                 // bytes of requests read at once

	// Sessions (stream_session.go): those serving, and how many each peer
	// holds and all hold. Until its hello is in, a session also counts in
	// streams, perPeer and total; after, each of its requests in flight
	// counts in sessReqPerPeer (under its own cap, sessionRequestsPerPeer)
	// and in total.
	sessions       map[*serverSession]struct{}
	sessPerPeer    map[peer.ID]int
	sessTotal      int
	sessReqPerPeer map[peer.ID]int
	// startedWrites counts the writes session readers handed to Raft
	// themselves (session_fastwrite.go; tests).
	startedWrites atomic.Int64
	// sessIdle, when set (tests), replaces sessionMemberIdle.
	sessIdle atomic.Int64

	// Watch streams (watch_wire.go): the history they read and their own
	// caps. They stay in streams while they run, so close resets them.
	hub          *watchHub
	watchPerPeer map[peer.ID]int
	watchTotal   int

	// stats makes this member's Stats for the status command
	// (status_wire.go); nil answers ErrInvalidCommand.
	stats func() Stats

	// metrics counts the requests answered (nil: not counted).
	metrics *clusterMetrics
}

// Command streams are capped per peer and in total: each holds a goroutine
// and whatever of its request has arrived, so a peer opening streams and
// trickling bytes must not grow a member without bound. A stream over a cap
// is reset as a resource-limit refusal, which a caller knows was never
// handled (it tries another member).
const (
	commandStreamsPerPeer = 64
	commandStreamsTotal   = 512
	// commandReadBudget bounds the bytes of requests read and decoded at
	// once (see readBudget): room for two maximal commands, or thousands of
	// ordinary ones.
	commandReadBudget = 2 * 2 * MaxMessageSize
)

func newCommandService(h host.Host, proto protocol.ID, cd codec, logger hclog.Logger, kv kvReader, peers peerExchanger, leader leaderCalls, fwd *forwarder, hub *watchHub, m *clusterMetrics) *commandService {
	s := &commandService{
		host: h, proto: proto, codec: cd, logger: logger, metrics: m,
		kv: kv, peers: peers, leader: leader, fwd: fwd,
		hub: hub, watchPerPeer: map[peer.ID]int{},
		streams:  map[network.Stream]struct{}{},
		perPeer:  map[peer.ID]int{},
		sessions: map[*serverSession]struct{}{}, sessPerPeer: map[peer.ID]int{},
		sessReqPerPeer: map[peer.ID]int{},
		refusals:       newLogLimiter(refusedLogInterval),
		budget:         newReadBudget(commandReadBudget, requestReadTimeout),
	}
	return s
}

// listen starts taking streams. Everything the handlers read is set
// before: a request may arrive the moment the handlers are in place.
func (s *commandService) listen() {
	// Sessions first: a member that answers on proto always speaks them
	// too, so a Client never takes it for an older build.
	s.host.SetStreamHandler(sessionProtocolOf(s.proto), s.handleSession)
	s.host.SetStreamHandler(s.proto, s.handle)
}

// close stops taking streams and waits for the ones being served.
func (s *commandService) close() {
	s.host.RemoveStreamHandler(s.proto)
	s.host.RemoveStreamHandler(sessionProtocolOf(s.proto))
	s.mu.Lock()
	s.done = true
	// A stalled peer must not hold Close for the read timeout (nor a
	// watcher for its next write).
	for st := range s.streams {
		_ = st.Reset()
	}
	// Sessions stop reading, tell their callers which requests they read
	// (goaway) and answer those.
	for ss := range s.sessions {
		ss.halt()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.fwd != nil {
		s.fwd.closeSessions()
	}
}

func (s *commandService) handle(st network.Stream) {
	from := st.Conn().RemotePeer()
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		_ = st.Reset()
		return
	}
	if s.perPeer[from] >= commandStreamsPerPeer || s.total >= commandStreamsTotal {
		s.mu.Unlock()
		_ = st.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	s.wg.Add(1)
	s.streams[st] = struct{}{}
	s.perPeer[from]++
	s.total++
	s.mu.Unlock()
	// A watch gives its command-stream slot back once its request is in
	// (it has caps of its own), so the slot's release runs once, early or
	// at the end.
	slotHeld := true
	releaseSlot := func() {
		if !slotHeld {
			return
		}
		slotHeld = false
		s.mu.Lock()
		delete(s.streams, st)
		if s.perPeer[from]--; s.perPeer[from] <= 0 {
			delete(s.perPeer, from)
		}
		s.total--
		s.mu.Unlock()
	}
	defer func() {
		releaseSlot()
		s.wg.Done()
	}()

	_ = st.SetReadDeadline(time.Now().Add(requestReadTimeout))
	payload, _, release, err := s.codec.readMessage(st, false, s.budget)
	defer release()
	// The request is in: from here on the member answers, even while it is
	// closing (ErrShutdown), so close must no longer reset the stream.
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
	switch {
	case errors.Is(err, ErrTooLarge):
		s.metrics.request("", errorCode(err))
		s.reply(st, s.codec, errorResponse(err))
		return
	case errors.Is(err, errBusy):
		_ = st.ResetWithError(network.StreamResourceLimitExceeded) // never handled: try another member
		return
	case errors.Is(err, ErrEncryptionRequired), errors.Is(err, ErrUnexpectedEncryption),
		errors.Is(err, ErrDecrypt), errors.Is(err, ErrInvalidCommand):
		s.refused(from, err)
		s.metrics.request("", errorCode(err))
		// The refusal goes back in plaintext: the peer cannot read anything
		// else, and it reveals nothing.
		s.reply(st, codec{}, errorResponse(err))
		return
	case err != nil:
		s.logger.Debug("bad request frame", "peer", from, "error", err)
		_ = st.Reset()
		return
	}
	req, err := decodeRequest(payload)
	release() // the frame is decoded: its bytes are garbage now
	if err != nil {
		s.metrics.request("", errorCode(err))
		s.reply(st, s.codec, errorResponse(err))
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if req.Cmd == cmdWatch {
		s.metrics.request(cmdWatch, codeOK)
		releaseSlot()
		s.serveWatch(st, from, req)
		return
	}
	s.reply(st, s.codec, s.answer(from, req))
}

// refusedLogInterval is how often a refused peer is logged: one clear line
// for a misconfigured peer, not a line per request.
const refusedLogInterval = time.Minute

// refused logs refused requests at most once per refusedLogInterval for each
// kind of refusal (whichever peers they come from: a member with the wrong
// key is refused by, and refuses, every other), naming the peer of the line
// and counting the refusals left out since.
func (s *commandService) refused(from peer.ID, err error) {
	if ok, suppressed := s.refusals.allow(fmt.Sprint(errorCode(err)), time.Now()); ok {
		s.logger.Warn("refused request", "peer", from, "error", err, "refused_since_last_line", suppressed)
		return
	}
	s.logger.Debug("refused request", "peer", from, "error", err)
}

func (s *commandService) reply(st network.Stream, cd codec, resp *response) {
	body, err := cd.encode(resp)
	if err == nil {
		err = checkSize("answer", len(body), MaxMessageSize)
	}
	if err != nil {
		body, _ = cd.encode(errorResponse(err))
	}
	_ = st.SetWriteDeadline(time.Now().Add(defaultCallTimeout))
	if err := writeFrame(st, body); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

// answer is dispatch, counted (metrics).
func (s *commandService) answer(from peer.ID, req *request) *response {
	resp := s.dispatch(from, req)
	s.metrics.request(req.Cmd, resp.Code)
	return resp
}

// dispatch runs one request and builds its answer. Each handler validates
// its request once, here on the member that received it, then runs the
// Cluster's own code path, on the leader when the call is leader-only.
func (s *commandService) dispatch(from peer.ID, req *request) *response {
	switch req.Cmd {
	case cmdKeys:
		keys, err := s.kv.keys(req.Prefix)
		if err != nil {
			return errorResponse(err)
		}
		return &response{Keys: keys}
	case cmdGet, cmdGetEntry:
		return s.get(req)
	case cmdSet:
		return s.write(req, SetOp(req.Key, req.Value))
	case cmdDelete:
		return s.write(req, DeleteOp(req.Key))
	case cmdTxn:
		return s.txn(req)
	case cmdClaimOf:
		return s.claimOf(req)
	case cmdJoinVoter:
		return s.joinVoter(from, req)
	case cmdReadIndex:
		if err := validateTimeout(time.Duration(req.Timeout)); err != nil {
			return errorResponse(err)
		}
		return s.readIndex(req)
	case cmdStatus:
		return s.status()
	case cmdExchangePeers:
		peers, st, kinds := s.peers.exchange(from, req.Peers, req.status(), req.Kinds)
		resp := &response{Peers: peers, Kinds: kinds}
		resp.setStatus(st)
		return resp
	}
	return errorResponse(fmt.Errorf("%w: unknown command %q", ErrInvalidCommand, req.Cmd))
}

// get reads a key: from the local replica, or with a barrier on the leader
// after a read index (linearizable).
func (s *commandService) get(req *request) *response {
	if err := validateKey(req.Key); err != nil {
		return errorResponse(err)
	}
	if err := validateBarrier(req.Barrier); err != nil {
		return errorResponse(err)
	}
	if req.Barrier == 0 {
		return s.localGet(req)
	}
	barrier := time.Duration(req.Barrier)
	return s.fwd.onLeader(req, barrier, func() *response {
		if _, err := s.leader.readIndex(barrier); err != nil {
			return errorResponse(err)
		}
		return s.localGet(req)
	})
}

// localGet answers get (the value) or getEntry (the value and versions)
// from the local replica.
func (s *commandService) localGet(req *request) *response {
	if req.Cmd == cmdGet {
		v, ok, err := s.kv.get(req.Key)
		if err != nil {
			return errorResponse(err)
		}
		return &response{Value: v, Found: ok}
	}
	e, ok, err := s.kv.getEntry(req.Key)
	if err != nil {
		return errorResponse(err)
	}
	return &response{Value: e.Value, Found: ok, CreateIndex: e.CreateIndex, ModIndex: e.ModIndex, Lease: uint64(e.Lease)}
}

// write applies one Set or Delete on the leader.
func (s *commandService) write(req *request, op Op) *response {
	timeout := time.Duration(req.Timeout)
	if err := validateTimeout(timeout); err != nil {
		return errorResponse(err)
	}
	if err := checkUserOp(op); err != nil {
		return errorResponse(err)
	}
	ops := []cmdOp{{kind: opKindOf(op), key: []byte(op.Key), value: op.Value}}
	return s.propose(req, ops, timeout)
}

// txn applies a transaction on the leader.
func (s *commandService) txn(req *request) *response {
	timeout := time.Duration(req.Timeout)
	if err := validateTimeout(timeout); err != nil {
		return errorResponse(err)
	}
	ops, err := parseTxnCommand(req.Command)
	if err != nil {
		return errorResponse(err)
	}
	return s.propose(req, ops, timeout)
}

// propose runs validated operations on the leader, with the request's ID.
func (s *commandService) propose(req *request, ops []cmdOp, timeout time.Duration) *response {
	id, err := requestIDOf(req)
	if err != nil {
		return errorResponse(err)
	}
	return s.fwd.onLeader(req, timeout, func() *response {
		return writeResponse(s.leader.proposeAnswer(ops, id, timeout))
	})
}

// writeResponse is the answer to a write (a session gives it back: handle).
func writeResponse(res TxnResult, claimed *claimedItem, err error) *response {
	if err != nil {
		return errorResponse(err)
	}
	resp := getResponse()
	resp.OK, resp.Index = res.OK, res.Index
	if claimed != nil {
		resp.Claimed, resp.Found, resp.Item, resp.Value = true, claimed.found, claimed.id, claimed.value
	}
	return resp
}

// joinVoter adds the peer a request names as a voter, on the leader. A peer
// may only ask for itself: nobody can make up voters (made-up voters that
// never answer would cost the cluster its quorum). A member that forwards
// the request has checked that for the leader.
func (s *commandService) joinVoter(from peer.ID, req *request) *response {
	timeout := time.Duration(req.Timeout)
	if err := validateTimeout(timeout); err != nil {
		return errorResponse(err)
	}
	id, err := peer.IDFromBytes(req.Peer)
	if err != nil {
		return errorResponse(fmt.Errorf("%w: peer ID: %v", ErrInvalidCommand, err))
	}
	var via peer.ID
	if req.Forwarded {
		via = from
	} else if id != from {
		return errorResponse(fmt.Errorf("%w: %s may only ask to add itself, not %s", ErrInvalidCommand, from, id))
	}
	return s.fwd.onLeader(req, timeout, func() *response {
		if err := s.leader.joinVoter(id, via, timeout); err != nil {
			return errorResponse(err)
		}
		// The leader names itself: its next AppendEntries reaches a joiner
		// that has no configuration yet, which takes it only from a leader
		// it has heard of (admitRPC), and its exchanges may not have said
		// so yet.
		return &response{Status: &status{Formed: true, Leader: []byte(s.host.ID())}}
	})
}

// readIndex asks the leader for a read index (a follower's Barrier runs this
// too, with a request of its own).
func (s *commandService) readIndex(req *request) *response {
	timeout := time.Duration(req.Timeout)
	return s.fwd.onLeader(req, timeout, func() *response {
		idx, err := s.leader.readIndex(timeout)
		if err != nil {
			return errorResponse(err)
		}
		return &response{Index: idx}
	})
}
