package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	msmux "github.com/multiformats/go-multistream"
)

// Commands of the command service.
const (
	cmdSet           = "set"
	cmdGet           = "get"
	cmdDelete        = "delete"
	cmdKeys          = "keys"
	cmdJoinVoter     = "joinVoter"
	cmdExchangePeers = "exchangePeers"
	cmdReadIndex     = "readIndex"
)

// Envelope bytes: the first byte of every frame says whether the rest is
// plaintext CBOR or sealed with the namespace key.
const (
	envelopePlain  byte = 0
	envelopeSealed byte = 1
)

const (
	// requestReadTimeout bounds how long a member waits for a request frame,
	// so a stream that never finishes cannot hold a handler.
	requestReadTimeout = 10 * time.Second
	// defaultCallTimeout bounds reads and other calls without a timeout of
	// their own.
	defaultCallTimeout = 10 * time.Second
	// callMargin is added to a request's own timeout on the wire, so that the
	// member's answer, even a timeout, gets back before the stream deadline.
	callMargin = 5 * time.Second
)

// request is one command. Fields are keyed by small integers, so the wire
// stays compact and new fields can be added.
type request struct {
	Cmd       string     `cbor:"1,keyasint"`
	Key       string     `cbor:"2,keyasint,omitempty"`
	Value     []byte     `cbor:"3,keyasint,omitempty"`
	Prefix    string     `cbor:"4,keyasint,omitempty"`
	Timeout   int64      `cbor:"5,keyasint,omitempty"` // nanoseconds
	Barrier   int64      `cbor:"6,keyasint,omitempty"` // nanoseconds
	Peer      []byte     `cbor:"7,keyasint,omitempty"` // joinVoter: the peer to add
	Peers     []wirePeer `cbor:"8,keyasint,omitempty"`
	Forwarded bool       `cbor:"9,keyasint,omitempty"`
	Status    *status    `cbor:"10,keyasint,omitempty"` // exchangePeers: the sender's state
}

// response answers a request. Code 0 is success; otherwise Code names the
// sentinel error (see errors.go) and Message explains.
type response struct {
	Code    uint16     `cbor:"1,keyasint,omitempty"`
	Message string     `cbor:"2,keyasint,omitempty"`
	Value   []byte     `cbor:"3,keyasint,omitempty"`
	Found   bool       `cbor:"4,keyasint,omitempty"`
	Keys    []string   `cbor:"5,keyasint,omitempty"`
	Peers   []wirePeer `cbor:"6,keyasint,omitempty"`
	Index   uint64     `cbor:"7,keyasint,omitempty"`
	Status  *status    `cbor:"8,keyasint,omitempty"`
}

// wirePeer is a peer as exchangePeers carries it. Age is how long ago the
// sender (or whoever told it) first saw the peer, so that sightings travel
// without the members' clocks having to agree.
type wirePeer struct {
	_     struct{} `cbor:",toarray"`
	ID    []byte
	Addrs [][]byte
	Age   int64 // milliseconds
}

// status is a member's view of its own cluster, sent in peer exchange.
type status struct {
	_ struct{} `cbor:",toarray"`
	// Leader is the leader the member knows, empty if none.
	Leader []byte
	// Formed: the member has Raft state (it bootstrapped or was added).
	Formed bool
	// Deciding: the member is still in its bootstrap window.
	Deciding bool
	// Voters is the number of voters in the member's configuration.
	Voters int
	// Member: the member is a voter of its own configuration.
	Member bool
	// VoterIDs are the voters of its configuration (at most maxStatusVoters),
	// which tells whether two members are in the same cluster.
	VoterIDs [][]byte
}

// maxStatusVoters caps the voter list a status carries.
const maxStatusVoters = 64

func (r *response) err() error { return errorFromWire(r.Code, r.Message) }

func errorResponse(err error) *response {
	return &response{Code: errorCode(err), Message: err.Error()}
}

// wireDec decodes requests and responses: strict about types and sizes,
// tolerant of fields it does not know (newer peers may send more).
var wireDec cbor.DecMode

func init() {
	var err error
	wireDec, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  8,
		MaxArrayElements: 1 << 16,
		MaxMapPairs:      64,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		// Keys are opaque bytes in Go strings, UTF-8 or not.
		UTF8: cbor.UTF8DecodeInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// decodeRequest decodes a plaintext request body.
func decodeRequest(b []byte) (*request, error) {
	var req request
	if err := wireDec.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	return &req, nil
}

// codec frames and (optionally) seals messages of one namespace.
type codec struct {
	key *secretKey
}

// encode turns a message into a frame body.
func (c codec) encode(v any) ([]byte, error) {
	b, err := cborEnc.Marshal(v)
	if err != nil {
		return nil, err
	}
	if c.key == nil {
		return append([]byte{envelopePlain}, b...), nil
	}
	sealed, err := c.key.seal(b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+len(sealed))
	out[0] = envelopeSealed
	copy(out[1:], sealed)
	if len(out) > MaxMessageSize {
		return nil, fmt.Errorf("%w: message of %d bytes (max %d)", ErrTooLarge, len(out), MaxMessageSize)
	}
	return out, nil
}

// open unwraps a frame body into its CBOR payload.
func (c codec) open(frame []byte) ([]byte, error) {
	if len(frame) == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrInvalidCommand)
	}
	switch frame[0] {
	case envelopePlain:
		if c.key != nil {
			return nil, ErrEncryptionRequired
		}
		return frame[1:], nil
	case envelopeSealed:
		if c.key == nil {
			return nil, ErrUnexpectedEncryption
		}
		return c.key.open(frame[1:])
	}
	return nil, fmt.Errorf("%w: unknown envelope %d", ErrInvalidCommand, frame[0])
}

func writeFrame(w io.Writer, body []byte) error {
	if len(body) > MaxMessageSize {
		return fmt.Errorf("%w: message of %d bytes (max %d)", ErrTooLarge, len(body), MaxMessageSize)
	}
	return msgio.NewVarintWriter(w).WriteMsg(body)
}

func readFrame(r io.Reader) ([]byte, error) {
	b, err := msgio.NewVarintReaderSize(r, MaxMessageSize).ReadMsg()
	if errors.Is(err, msgio.ErrMsgTooLarge) {
		return nil, fmt.Errorf("%w: frame over %d bytes", ErrTooLarge, MaxMessageSize)
	}
	return b, err
}

// errNotSent marks a call that failed before its request left this node, so
// it is safe to try another member.
var errNotSent = errors.New("raft: request not sent")

// roundTrip sends one request to one peer on its own stream and reads the
// answer. Errors that happen before the request is written wrap errNotSent.
func roundTrip(ctx context.Context, h host.Host, id peer.ID, proto protocol.ID, cd codec, req *request, deadline time.Time) (*response, error) {
	body, err := cd.encode(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	s, err := h.NewStream(network.WithAllowLimitedConn(ctx, "raft"), id, proto)
	if err != nil {
		return nil, fmt.Errorf("%w: open stream to %s: %w", errNotSent, id, err)
	}
	defer s.Close()
	_ = s.SetDeadline(deadline)
	// Abort the stream if the context ends first (Close of the cluster).
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if err := writeFrame(s, body); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("%w: write to %s: %w", errNotSent, id, err)
	}
	_ = s.CloseWrite()
	frame, err := readFrame(s)
	if err != nil {
		_ = s.Reset()
		if refusedBeforeHandling(err) {
			// The member does not serve the namespace (any more), or had
			// no room for the stream: it never saw the request.
			return nil, fmt.Errorf("%w: %s refused the stream: %w", errNotSent, id, err)
		}
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: no answer from %s", ErrTimeout, id)
		}
		return nil, fmt.Errorf("raft: read answer from %s: %w", id, err)
	}
	plain, err := cd.open(frame)
	var resp response
	if err != nil {
		// A member that refuses our envelope answers in plaintext with the
		// reason; surface that reason rather than our own decoding error.
		if len(frame) > 0 && frame[0] == envelopePlain && wireDec.Unmarshal(frame[1:], &resp) == nil && resp.Code != codeOK {
			return &resp, nil
		}
		return nil, err
	}
	if err := wireDec.Unmarshal(plain, &resp); err != nil {
		return nil, fmt.Errorf("%w: answer from %s: %v", ErrInvalidCommand, id, err)
	}
	return &resp, nil
}

// refusedBeforeHandling tells whether a stream error means the remote side
// rejected the stream itself (libp2p negotiates protocols lazily, so "not
// supported" only shows on the first read), before any handler ran.
func refusedBeforeHandling(err error) bool {
	var ns msmux.ErrNotSupported[protocol.ID]
	if errors.As(err, &ns) {
		return true
	}
	var se *network.StreamError
	if errors.As(err, &se) && se.Remote {
		switch se.ErrorCode {
		case network.StreamProtocolNegotiationFailed, network.StreamResourceLimitExceeded, network.StreamRateLimited:
			return true
		}
	}
	return false
}

// commandService serves Protocol(ns) on a member.
type commandService struct {
	c     *cluster
	codec codec
	wg    sync.WaitGroup

	mu      sync.Mutex
	done    bool
	streams map[network.Stream]struct{} // being served, reset on close
}

func newCommandService(c *cluster) *commandService {
	s := &commandService{c: c, codec: codec{key: c.key}, streams: map[network.Stream]struct{}{}}
	c.node.Peer().SetStreamHandler(Protocol(c.namespace), s.handle)
	return s
}

// close stops taking streams and waits for the ones being served.
func (s *commandService) close() {
	s.c.node.Peer().RemoveStreamHandler(Protocol(s.c.namespace))
	s.mu.Lock()
	s.done = true
	// A stalled peer must not hold Close for the read timeout.
	for st := range s.streams {
		_ = st.Reset()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *commandService) handle(st network.Stream) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		_ = st.Reset()
		return
	}
	s.wg.Add(1)
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		s.wg.Done()
	}()

	from := st.Conn().RemotePeer()
	_ = st.SetReadDeadline(time.Now().Add(requestReadTimeout))
	frame, err := readFrame(st)
	// The request is in: from here on the member answers, even while it is
	// closing (ErrShutdown), so close must no longer reset the stream.
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
	if err != nil {
		s.c.logger.Debug("bad request frame", "peer", from, "error", err)
		if errors.Is(err, ErrTooLarge) {
			s.reply(st, s.codec, errorResponse(err))
			return
		}
		_ = st.Reset()
		return
	}
	plain, err := s.codec.open(frame)
	if err != nil {
		s.c.logger.Warn("refused request", "peer", from, "error", err)
		// The refusal goes back in plaintext: the peer cannot read anything
		// else, and it reveals nothing.
		s.reply(st, codec{}, errorResponse(err))
		return
	}
	req, err := decodeRequest(plain)
	if err != nil {
		s.reply(st, s.codec, errorResponse(err))
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	s.reply(st, s.codec, s.dispatch(from, req))
}

func (s *commandService) reply(st network.Stream, cd codec, resp *response) {
	body, err := cd.encode(resp)
	if err == nil && len(body) > MaxMessageSize {
		err = fmt.Errorf("%w: answer of %d bytes (max %d)", ErrTooLarge, len(body), MaxMessageSize)
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

// dispatch runs one request and builds its answer.
func (s *commandService) dispatch(from peer.ID, req *request) *response {
	c := s.c
	switch req.Cmd {
	case cmdKeys:
		keys, err := c.fsm.keys(req.Prefix)
		if err != nil {
			return errorResponse(err)
		}
		return &response{Keys: keys}
	case cmdGet:
		if err := validateKey(req.Key); err != nil {
			return errorResponse(err)
		}
		if err := validateBarrier(req.Barrier); err != nil {
			return errorResponse(err)
		}
		if req.Barrier > 0 {
			return s.leaderOnly(req, time.Duration(req.Barrier), func(r *hraft.Raft) *response {
				if err := c.wait(r.Barrier(time.Duration(req.Barrier)), time.Duration(req.Barrier)); err != nil {
					return errorResponse(err)
				}
				return s.localGet(req.Key)
			})
		}
		return s.localGet(req.Key)
	case cmdSet, cmdDelete:
		timeout := time.Duration(req.Timeout)
		if err := validateTimeout(timeout); err != nil {
			return errorResponse(err)
		}
		op := SetOp(req.Key, req.Value)
		if req.Cmd == cmdDelete {
			op = DeleteOp(req.Key)
		}
		cmd, err := EncodeCommand(op)
		if err != nil {
			return errorResponse(err)
		}
		return s.leaderOnly(req, timeout, func(*hraft.Raft) *response {
			resp, err := c.Apply(cmd, timeout)
			if err == nil {
				err = resp.Error
			}
			if err != nil {
				return errorResponse(err)
			}
			return &response{}
		})
	case cmdJoinVoter:
		timeout := time.Duration(req.Timeout)
		if err := validateTimeout(timeout); err != nil {
			return errorResponse(err)
		}
		id, err := peer.IDFromBytes(req.Peer)
		if err != nil {
			return errorResponse(fmt.Errorf("%w: peer ID: %v", ErrInvalidCommand, err))
		}
		return s.leaderOnly(req, timeout, func(*hraft.Raft) *response {
			if c.isVoter(id) {
				return &response{}
			}
			if err := c.AddVoter(id, timeout); err != nil {
				return errorResponse(err)
			}
			c.logger.Info("added voter", "peer", id)
			return &response{}
		})
	case cmdReadIndex:
		timeout := time.Duration(req.Timeout)
		if err := validateTimeout(timeout); err != nil {
			return errorResponse(err)
		}
		return s.leaderOnly(req, timeout, func(r *hraft.Raft) *response {
			if err := c.wait(r.Barrier(timeout), timeout); err != nil {
				return errorResponse(err)
			}
			return &response{Index: c.fsm.appliedIndex()}
		})
	case cmdExchangePeers:
		c.peers.merge(from, req.Peers, req.Status)
		return &response{Peers: c.peers.wireList(), Status: c.status()}
	}
	return errorResponse(fmt.Errorf("%w: unknown command %q", ErrInvalidCommand, req.Cmd))
}

func (s *commandService) localGet(key string) *response {
	v, ok, err := s.c.fsm.get(key)
	if err != nil {
		return errorResponse(err)
	}
	return &response{Value: v, Found: ok}
}

// validateBarrier checks a read barrier in nanoseconds.
func validateBarrier(ns int64) error {
	if ns < 0 || time.Duration(ns) > MaxBarrier {
		return fmt.Errorf("%w: %v is outside [0, %v]", ErrInvalidBarrier, time.Duration(ns), MaxBarrier)
	}
	return nil
}

// leaderOnly runs fn if this member leads; otherwise it forwards the request
// to the leader, once: a forwarded request that reaches a non-leader fails
// with ErrNotLeader instead of travelling on, so leadership moves cannot make
// it loop. While no leader is known it waits for one until the timeout.
func (s *commandService) leaderOnly(req *request, timeout time.Duration, fn func(*hraft.Raft) *response) *response {
	c := s.c
	deadline := time.Now().Add(timeout)
	for {
		r, err := c.r()
		if err != nil {
			return errorResponse(err)
		}
		if r.State() == hraft.Leader {
			return fn(r)
		}
		if req.Forwarded {
			return errorResponse(ErrNotLeader)
		}
		leader, err := c.Leader()
		if err == nil && leader != c.self {
			fwd := *req
			fwd.Forwarded = true
			// The leader gets what is left of the caller's time, so a
			// forwarded call never runs much past its timeout.
			left := time.Until(deadline)
			if left <= 0 {
				return errorResponse(fmt.Errorf("%w within %v", ErrNoLeader, timeout))
			}
			if fwd.Timeout > 0 {
				fwd.Timeout = int64(left)
			}
			if fwd.Barrier > 0 && int64(left) < fwd.Barrier {
				fwd.Barrier = int64(left)
			}
			resp, err := roundTrip(c.ctx, c.node.Peer(), leader, Protocol(c.namespace), s.codec, &fwd, deadline.Add(callMargin))
			if err == nil {
				rerr := resp.err()
				// Refused by a former leader: certainly not applied, so it is
				// safe to try the new one while time remains.
				if !errors.Is(rerr, ErrNotLeader) && !errors.Is(rerr, ErrNoLeader) || time.Now().After(deadline) {
					return resp
				}
			} else if !errors.Is(err, errNotSent) || time.Now().After(deadline) {
				return errorResponse(err)
			}
		}
		if time.Now().After(deadline) {
			return errorResponse(fmt.Errorf("%w within %v", ErrNoLeader, timeout))
		}
		select {
		case <-c.ctx.Done():
			return errorResponse(ErrShutdown)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// leaderAppliedIndex asks the leader for an applied index that covers every
// write acknowledged so far (a read index), for a follower's Barrier.
func (s *commandService) leaderAppliedIndex(deadline time.Time) (uint64, error) {
	timeout := time.Until(deadline)
	if timeout <= 0 {
		return 0, ErrTimeout
	}
	resp := s.leaderOnly(&request{Cmd: cmdReadIndex, Timeout: int64(timeout)}, timeout, func(r *hraft.Raft) *response {
		if err := s.c.wait(r.Barrier(timeout), timeout); err != nil {
			return errorResponse(err)
		}
		return &response{Index: s.c.fsm.appliedIndex()}
	})
	if err := resp.err(); err != nil {
		return 0, err
	}
	return resp.Index, nil
}
