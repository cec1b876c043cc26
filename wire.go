package raft

// The command service's wire: what a request and a response hold, how they
// are framed (msgio varint frames, capped at MaxMessageSize), and the
// envelope that says whether a frame is plaintext or sealed with the
// namespace key. The server side is stream.go, the client side caller.go.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/libp2p/go-msgio"
	"golang.org/x/sync/semaphore"
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
	cmdGetEntry      = "getEntry"
	cmdTxn           = "txn"
	cmdWatch         = "watch" // a stream of frames: watch_wire.go
	// cmdClaimOf finds a queue's claim bound to a lease (queue.go): Key is
	// the queue, Lease the lease, and Barrier (linearizable) or After (the
	// index the member must have applied first) how current the read is.
	cmdClaimOf = "claimOf"
	// cmdStatus asks a member for its own Stats (status_wire.go).
	cmdStatus = "status"
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
	// Kinds (exchangePeers): the operation kinds the sender's build knows.
	// Not in status, whose array form an older member could not decode
	// with an extra element.
	Kinds []uint8 `cbor:"11,keyasint,omitempty"`
	// Client and Seq name a Client write (exactly-once; see requests.go).
	Client []byte `cbor:"12,keyasint,omitempty"`
	Seq    uint64 `cbor:"13,keyasint,omitempty"`
	// Command (txn): the transaction's operations, encoded as a command.
	Command []byte `cbor:"14,keyasint,omitempty"`
	// NonVoters (exchangePeers): the non-voters of the sender's
	// configuration, beside Status for the same reason as Kinds.
	NonVoters *nonVoterList `cbor:"15,keyasint,omitempty"`
	// Lowest (exchangePeers): the sender's founder claim (bootstrap.go).
	Lowest *lowestClaim `cbor:"16,keyasint,omitempty"`
	// SawCluster (exchangePeers): how long ago (milliseconds) the sender
	// last heard of a cluster in the namespace (discovery.go).
	SawCluster *int64 `cbor:"17,keyasint,omitempty"`
	// watch (keys 20-29; watch_wire.go): changes above After, frames
	// sealed for the stream WatchID names.
	After   uint64 `cbor:"20,keyasint,omitempty"`
	WatchID []byte `cbor:"21,keyasint,omitempty"`
	// claimOf (keys 30-39; queue.go): the lease whose claim is looked up.
	Lease uint64 `cbor:"30,keyasint,omitempty"`
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
	Kinds   []uint8    `cbor:"9,keyasint,omitempty"` // exchangePeers, as in request
	// OK: a transaction's conditions held.
	OK bool `cbor:"10,keyasint,omitempty"`
	// An entry's versions (getEntry).
	CreateIndex uint64 `cbor:"11,keyasint,omitempty"`
	ModIndex    uint64 `cbor:"12,keyasint,omitempty"`
	Lease       uint64 `cbor:"13,keyasint,omitempty"`
	// NonVoters (exchangePeers), as in request.
	NonVoters *nonVoterList `cbor:"14,keyasint,omitempty"`
	Lowest    *lowestClaim  `cbor:"15,keyasint,omitempty"`
	// SawCluster (exchangePeers), as in request.
	SawCluster *int64 `cbor:"16,keyasint,omitempty"`
	// watch frames (keys 20-29; watch_wire.go): the next changes, and the
	// index up to which every matching change has been sent.
	Events  []wireEvent `cbor:"20,keyasint,omitempty"`
	Through uint64      `cbor:"21,keyasint,omitempty"`
	// A queue claim's answer (keys 30-39; queue.go): Claimed says a claim
	// ran and its answer is here: Found, the item's ID and Value. claimOf
	// answers with Found, Item, Value and the claim's token in Index.
	Item    uint64 `cbor:"30,keyasint,omitempty"`
	Claimed bool   `cbor:"31,keyasint,omitempty"`
	// A status answer (key 40; status_wire.go): the member's Stats.
	Stats *wireStats `cbor:"40,keyasint,omitempty"`
}

// claimed is what a transaction's queue claim found, nil when it held
// none (or the answer does not say: a retried Client write's).
func (r *response) claimed() *claimedItem {
	if !r.Claimed {
		return nil
	}
	v := r.Value
	if r.Found && v == nil {
		v = []byte{}
	}
	return &claimedItem{found: r.Found, id: r.Item, value: v}
}

// entry is the Entry a getEntry answer carries.
func (r *response) entry() Entry {
	if !r.Found {
		return Entry{}
	}
	v := r.Value
	if v == nil {
		v = []byte{}
	}
	return Entry{Value: v, CreateIndex: r.CreateIndex, ModIndex: r.ModIndex, Lease: LeaseID(r.Lease)}
}

// requestIDOf reads a request's ID, nil when it has none.
func requestIDOf(req *request) (*requestID, error) {
	if len(req.Client) == 0 && req.Seq == 0 {
		return nil, nil
	}
	if len(req.Client) != clientIDSize || req.Seq == 0 {
		return nil, fmt.Errorf("%w: request ID of %d bytes, sequence %d", ErrInvalidCommand, len(req.Client), req.Seq)
	}
	id := &requestID{seq: req.Seq}
	copy(id.client[:], req.Client)
	return id, nil
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
	// NonVoters lists the non-voters of its configuration; nil when the
	// member did not say (an older build). It travels beside the status
	// (request.NonVoters, response.NonVoters), not in its array.
	NonVoters *nonVoterList `cbor:"-"`
	// Lowest is its founder claim (bootstrap.go), carried beside the
	// status like NonVoters.
	Lowest *lowestClaim `cbor:"-"`
	// SawCluster is how long ago (milliseconds) it last heard of a
	// cluster, first-hand or from a peer; nil when not lately. Carried
	// beside the status like NonVoters.
	SawCluster *int64 `cbor:"-"`
	// LastIndex is its Raft log's last index, carried in response.Index
	// (autopilot asks whether a non-voter is caught up); 0 when unknown.
	LastIndex uint64 `cbor:"-"`
}

// maxStatusVoters caps the voter list a status carries.
const maxStatusVoters = 64

// listsEveryVoter reports whether the status names a leader and lists every
// voter of its configuration: only then does a peer's absence from VoterIDs
// mean it is not a voter (a list cut at maxStatusVoters proves nothing).
func (st *status) listsEveryVoter() bool {
	return len(st.Leader) > 0 && len(st.VoterIDs) > 0 && len(st.VoterIDs) >= st.Voters
}

func (r *response) err() error { return errorFromWire(r.Code, r.Message) }

// errorResponse is the answer that carries err; nil gives a plain success.
func errorResponse(err error) *response {
	if err == nil {
		return &response{}
	}
	return &response{Code: errorCode(err), Message: err.Error()}
}

// wireDec decodes requests and responses: strict about types and sizes,
// tolerant of fields it does not know (newer peers may send more).
var wireDec = strictDecMode(1<<16, 64, cbor.ExtraDecErrorNone)

// codec frames and (optionally) seals messages of one namespace.
type codec struct {
	key *secretKey
}

// encode turns a message into a frame body.
func (c codec) encode(v any) ([]byte, error) {
	return c.encodeAAD(v, nil)
}

// encodeAAD is encode with the sealed body bound to aad (see sealAAD);
// plaintext frames carry no aad.
func (c codec) encodeAAD(v any, aad []byte) ([]byte, error) {
	// Requests and responses have an encoder of their own (wire_codec.go),
	// which writes the same bytes as cborEnc without reflection.
	var b []byte
	var err error
	switch m := v.(type) {
	case *request:
		b, err = appendRequest([]byte{envelopePlain}, m)
	case *response:
		b, err = appendResponse([]byte{envelopePlain}, m)
	default:
		var enc []byte
		if enc, err = cborEnc.Marshal(v); err == nil {
			b = append([]byte{envelopePlain}, enc...)
		}
	}
	if err != nil {
		return nil, err
	}
	if c.key == nil {
		return b, nil
	}
	b = b[1:] // under a key the CBOR alone is sealed
	sealed, err := c.key.sealAAD(b, aad)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+len(sealed))
	out[0] = envelopeSealed
	copy(out[1:], sealed)
	if err := checkSize("message", len(out), MaxMessageSize); err != nil {
		return nil, err
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
	if err := checkSize("message", len(body), MaxMessageSize); err != nil {
		return err
	}
	return msgio.NewVarintWriter(w).WriteMsg(body)
}

// readFrame reads one whole frame.
func readFrame(r io.Reader) ([]byte, error) {
	n, err := readFrameLength(r)
	if err != nil {
		return nil, err
	}
	return readFull(r, n)
}

// readMessage reads one frame and returns its CBOR payload, opened with the
// codec's key, and the release of the room it took in budget (call it once
// the payload is decoded). msgio's reader would allocate whatever length a
// peer announces; here a body is read only once the budget has room for it,
// and under a key only after its first commandPrefixSize bytes authenticate
// the sender, so a peer without the key gets nothing but a refusal. A
// plaintext frame under a key is refused before its body is read, unless
// plainAnswer (a member's plaintext refusal of our request): then plain
// reports it.
func (c codec) readMessage(r io.Reader, plainAnswer bool, budget *readBudget) (payload []byte, plain bool, release func(), err error) {
	return c.readMessageAAD(r, plainAnswer, budget, nil)
}

// readMessageAAD is readMessage for a body sealed with aad (see sealAAD).
func (c codec) readMessageAAD(r io.Reader, plainAnswer bool, budget *readBudget, aad []byte) (payload []byte, plain bool, release func(), err error) {
	release = func() {}
	n, err := readFrameLength(r)
	if err != nil {
		return nil, false, release, err
	}
	if n == 0 {
		return nil, false, release, fmt.Errorf("%w: empty frame", ErrInvalidCommand)
	}
	var env [1]byte
	if _, err := io.ReadFull(r, env[:]); err != nil {
		return nil, false, release, err
	}
	n--
	switch env[0] {
	case envelopePlain:
		if c.key != nil && !plainAnswer {
			return nil, true, release, ErrEncryptionRequired
		}
		if release, err = budget.take(n); err != nil {
			return nil, true, func() {}, err
		}
		b, err := readFull(r, n)
		return b, true, release, err
	case envelopeSealed:
		if c.key == nil {
			return nil, false, release, ErrUnexpectedEncryption
		}
		if n < commandOverhead {
			return nil, false, release, fmt.Errorf("%w: command message of %d bytes is too short", ErrDecrypt, n)
		}
		prefix, err := readFull(r, commandPrefixSize)
		if err != nil {
			return nil, false, release, err
		}
		aead, bodyLen, err := c.key.openHeader(prefix)
		if err != nil {
			return nil, false, release, err
		}
		if bodyLen != n-commandPrefixSize {
			return nil, false, release, fmt.Errorf("%w: command body of %d bytes, header says %d", ErrDecrypt, n-commandPrefixSize, bodyLen)
		}
		if release, err = budget.take(bodyLen); err != nil {
			return nil, false, func() {}, err
		}
		body, err := readFull(r, bodyLen)
		if err != nil {
			return nil, false, release, err
		}
		payload, err := openBodyAAD(aead, body, aad)
		return payload, false, release, err
	}
	return nil, false, release, fmt.Errorf("%w: unknown envelope %d", ErrInvalidCommand, env[0])
}

// readBudget bounds the bytes of requests a member reads and decodes at
// once: a frame may announce up to MaxMessageSize, and many streams may
// announce it together. A request waits (within its read deadline) for room,
// so a flood of large requests slows only the flood. A nil budget is
// unbounded (a caller reading the answers to its own requests).
type readBudget struct {
	sem  *semaphore.Weighted
	wait time.Duration
}

// errBusy refuses a request that found no room in the read budget in time.
var errBusy = errors.New("raft: too many large requests being read")

func newReadBudget(bytes int64, wait time.Duration) *readBudget {
	return &readBudget{sem: semaphore.NewWeighted(bytes), wait: wait}
}

// take reserves room for a frame body of n bytes (twice that: the body and
// its decoded form live together) and returns its release.
func (b *readBudget) take(n int) (func(), error) {
	if b == nil {
		return func() {}, nil
	}
	w := 2 * int64(n)
	ctx, cancel := context.WithTimeout(context.Background(), b.wait)
	defer cancel()
	if err := b.sem.Acquire(ctx, w); err != nil {
		return func() {}, errBusy
	}
	var once sync.Once
	return func() { once.Do(func() { b.sem.Release(w) }) }, nil
}

// reserve is take for a session frame, returning the weight to give back
// (give) instead of a closure: one frame per request is read this way, and
// with room to spare it waits on no timer.
func (b *readBudget) reserve(n int) (int64, error) {
	if b == nil {
		return 0, nil
	}
	w := 2 * int64(n)
	if b.sem.TryAcquire(w) {
		return w, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.wait)
	defer cancel()
	if err := b.sem.Acquire(ctx, w); err != nil {
		return 0, errBusy
	}
	return w, nil
}

// give gives back the weight reserve took (0: none).
func (b *readBudget) give(w int64) {
	if b != nil && w > 0 {
		b.sem.Release(w)
	}
}

// readFrameLength reads a frame's varint length, at most MaxMessageSize.
func readFrameLength(r io.Reader) (int, error) {
	n, err := binary.ReadUvarint(byteReader{r})
	if err != nil {
		return 0, fmt.Errorf("raft: frame length: %w", err)
	}
	if n > MaxMessageSize {
		return 0, fmt.Errorf("%w: frame over %d bytes", ErrTooLarge, MaxMessageSize)
	}
	return int(n), nil
}

// readFull reads exactly n bytes. Callers reserve n in a readBudget first
// (or read from a peer they dialled), so one allocation of n is bounded.
func readFull(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// byteReader reads one byte at a time, for the varint of a frame: reading
// ahead would take bytes of the frame itself.
type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var one [1]byte
	_, err := io.ReadFull(b.r, one[:])
	return one[0], err
}
