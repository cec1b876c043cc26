package raft

// Command sessions on the wire. A session is one long-lived libp2p stream on
// sessionProtocol(ns) that carries many requests and their answers,
// pipelined: a Client (or a follower forwarding to its leader) keeps one per
// member it talks to, so a call costs one frame each way instead of opening
// a stream, negotiating its protocol and closing it on both hops.
//
//	hello     client -> member: a command-service message (wire.go's
//	          envelope: plaintext, or sealed with a fresh salt under a key,
//	          so a peer without the key is refused exactly as on
//	          Protocol(ns), before the member reads or allocates more)
//	          holding sessionHello{Version, Salt: 32 random bytes}.
//	          member -> client: sessionHello{Version, Salt: 32 random bytes}
//	          sealed the same way with aad sessionHelloAAD(client salt), or
//	          a plaintext refusal (Code, Message: the same codes as a
//	          request's answer).
//	frame*    uvarint length, then the body: the payload in plaintext, or,
//	          under a key, AES-256-GCM(direction key, nonce = 4 zero bytes ||
//	          uint64 big-endian frame counter from 0, payload, no aad).
//	payload   kind (1 byte), uvarint id, then
//	          request  (client -> member): the request's CBOR
//	          answer   (member -> client): a leader hint, then the
//	                   response's CBOR
//	          busy     (member -> client): request id was not handled (no
//	                   room); it may go elsewhere
//	          goaway   (member -> client): the member handled requests up to
//	                   id and reads no more; later ones were not handled
//
//	direction keys = HKDF-SHA256(shared key, salt = client salt || member
//	          salt, info = "tauraft/v1/session/c2s" or ".../s2c", 0x00,
//	          namespace)
//
// Both sides contribute a salt, so the keys are fresh for every session and
// a recorded session cannot be replayed on a new one; each direction has its
// own key, so a frame cannot be reflected; the counter nonce binds every
// frame to its place, so none can be dropped, repeated or reordered without
// failing to open, and the session ends at the first frame that does not.
// Request ids increase strictly in the order sent; a member refuses a
// session whose ids do not.

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// sessionVersion is the session wire's version (see the hello).
const sessionVersion = 1

// sessionProtocol is the libp2p protocol of command sessions. Its prefix is
// not "/raft/v1", so it can never equal Protocol of another namespace. A
// member of a build without sessions does not speak it: a Client then falls
// back to a stream per request on Protocol(ns).
func sessionProtocol(namespace string) protocol.ID {
	return protocol.ID("/raft/session/1" + namespace)
}

// Frame kinds.
const (
	frameRequest byte = 1
	frameAnswer  byte = 2
	frameBusy    byte = 3
	frameGoaway  byte = 4
)

// Leader hints in an answer: the answering member's view of the leader, so
// that a Client sends its next leader-only requests there directly.
const (
	hintNone   byte = 0
	hintSelf   byte = 1 // the answering member leads
	hintLeader byte = 2 // followed by uvarint length and the leader's peer ID
)

const (
	// sessionSaltSize is each side's contribution to the session keys.
	sessionSaltSize = 32
	// sessionOverhead bounds what a frame adds to a request or response
	// (kind, id, hint, tag): frames are checked against MaxMessageSize
	// plus this.
	sessionOverhead = 1 + binary.MaxVarintLen64 + 1 + binary.MaxVarintLen64 + 128 + gcmTagSize
	// maxSessionFrame is the largest frame body either side reads.
	maxSessionFrame = MaxMessageSize + sessionOverhead
	// sessionHelloLabel starts the aad of the member's hello.
	sessionHelloLabel = "tauraft/v1/session-hello\x00"
	sessionC2SLabel   = "tauraft/v1/session/c2s"
	sessionS2CLabel   = "tauraft/v1/session/s2c"
)

// sessionHello is the first message each way. Code and Message share the
// keys of response's, so a member's plaintext refusal decodes as a hello
// with an error.
type sessionHello struct {
	Code    uint16 `cbor:"1,keyasint,omitempty"`
	Message string `cbor:"2,keyasint,omitempty"`
	Version uint64 `cbor:"30,keyasint,omitempty"`
	Salt    []byte `cbor:"31,keyasint,omitempty"`
}

// sessionHelloAAD binds the member's hello to the client's salt, so it
// cannot be taken from another session.
func sessionHelloAAD(clientSalt []byte) []byte {
	return append([]byte(sessionHelloLabel), clientSalt...)
}

// newSessionSalt returns a fresh random salt.
func newSessionSalt() ([]byte, error) {
	salt := make([]byte, sessionSaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("raft: session salt: %w", err)
	}
	return salt, nil
}

// sessionCiphers derives a session's two direction ciphers.
func (k *secretKey) sessionCiphers(clientSalt, memberSalt []byte) (c2s, s2c *frameCipher, err error) {
	if len(clientSalt) != sessionSaltSize || len(memberSalt) != sessionSaltSize {
		return nil, nil, fmt.Errorf("%w: session salt of %d and %d bytes", ErrDecrypt, len(clientSalt), len(memberSalt))
	}
	ns := strings.TrimPrefix(k.commandInfo, commandLabel+"\x00")
	salt := append(append(make([]byte, 0, 2*sessionSaltSize), clientSalt...), memberSalt...)
	a, err := k.newAEAD(salt, sessionC2SLabel+"\x00"+ns)
	if err != nil {
		return nil, nil, err
	}
	b, err := k.newAEAD(salt, sessionS2CLabel+"\x00"+ns)
	if err != nil {
		return nil, nil, err
	}
	return &frameCipher{aead: a}, &frameCipher{aead: b}, nil
}

// frameCipher seals or opens one direction's frames in order, with the frame
// counter as nonce. Its user serializes the calls.
type frameCipher struct {
	aead  cipher.AEAD
	seq   uint64
	nonce [gcmNonceSize]byte
}

func (c *frameCipher) next() error {
	if c.seq == math.MaxUint64 {
		return errNonceExhausted
	}
	binary.BigEndian.PutUint64(c.nonce[gcmNonceSize-8:], c.seq)
	c.seq++
	return nil
}

// seal appends the sealed payload to dst.
func (c *frameCipher) seal(dst, payload []byte) ([]byte, error) {
	if err := c.next(); err != nil {
		return nil, err
	}
	return c.aead.Seal(dst, c.nonce[:], payload, nil), nil
}

// open opens the next frame in place.
func (c *frameCipher) open(body []byte) ([]byte, error) {
	if err := c.next(); err != nil {
		return nil, err
	}
	out, err := c.aead.Open(body[:0], c.nonce[:], body, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: session frame %d rejected", ErrDecrypt, c.seq-1)
	}
	return out, nil
}

// framePayload starts a payload of kind for id.
func framePayload(kind byte, id uint64, size int) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+size)
	b = append(b, kind)
	return binary.AppendUvarint(b, id)
}

// parsePayload splits a payload into kind, id and the rest.
func parsePayload(p []byte) (kind byte, id uint64, rest []byte, err error) {
	if len(p) < 2 {
		return 0, 0, nil, fmt.Errorf("%w: session frame of %d bytes", ErrInvalidCommand, len(p))
	}
	id, n := binary.Uvarint(p[1:])
	if n <= 0 {
		return 0, 0, nil, fmt.Errorf("%w: session frame id", ErrInvalidCommand)
	}
	return p[0], id, p[1+n:], nil
}

// appendHint appends a leader hint.
func appendHint(b []byte, self bool, leader peer.ID) []byte {
	switch {
	case self:
		return append(b, hintSelf)
	case leader != "":
		b = append(b, hintLeader)
		b = binary.AppendUvarint(b, uint64(len(leader)))
		return append(b, leader...)
	}
	return append(b, hintNone)
}

// parseHint reads a leader hint: the leader it names ("" for none) and
// whether it is the answering member; rest is what follows.
func parseHint(b []byte) (leader peer.ID, self bool, rest []byte, err error) {
	if len(b) == 0 {
		return "", false, nil, fmt.Errorf("%w: answer without a leader hint", ErrInvalidCommand)
	}
	switch b[0] {
	case hintNone:
		return "", false, b[1:], nil
	case hintSelf:
		return "", true, b[1:], nil
	case hintLeader:
		n, k := binary.Uvarint(b[1:])
		if k <= 0 || n == 0 || n > 128 || uint64(len(b)-1-k) < n {
			return "", false, nil, fmt.Errorf("%w: leader hint", ErrInvalidCommand)
		}
		id, err := peer.IDFromBytes(b[1+k : 1+k+int(n)])
		if err != nil {
			return "", false, nil, fmt.Errorf("%w: leader hint: %v", ErrInvalidCommand, err)
		}
		return id, false, b[1+k+int(n):], nil
	}
	return "", false, nil, fmt.Errorf("%w: leader hint kind %d", ErrInvalidCommand, b[0])
}

// readSessionFrame reads one frame body of at most maxSessionFrame bytes;
// a member reserves room for it in its read budget first (nil: none) and
// gives back the weight returned once the request is decoded.
func readSessionFrame(r io.ByteReader, full io.Reader, budget *readBudget) ([]byte, int64, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, 0, err
	}
	if n == 0 || n > maxSessionFrame {
		return nil, 0, fmt.Errorf("%w: session frame of %d bytes", ErrTooLarge, n)
	}
	weight, err := budget.reserve(int(n))
	if err != nil {
		return nil, 0, err
	}
	b, err := readFull(full, int(n))
	return b, weight, err
}

// lazyDeadline moves a stream's deadline only when it has drifted: setting
// one costs a timer on the stream, and a session would set one for every
// frame it reads or writes. A deadline of d asked for again is kept while
// at least d - d/16 of it is left, so every wait is still bounded by d, and
// given at least 15/16 of it.
type lazyDeadline struct {
	until time.Time
	d     time.Duration
}

// due tells whether the deadline d from now must be set (and records it).
func (l *lazyDeadline) due(now time.Time, d time.Duration) bool {
	if d == l.d && l.until.Sub(now) >= d-d/16 {
		return false
	}
	l.d, l.until = d, now.Add(d)
	return true
}

// frameWriter writes one direction's frames. Frames are sealed in the order
// they are queued and written by whichever sender finds no write under
// way, together with every frame queued meanwhile: concurrent calls share
// one write (and one round trip) instead of taking turns. done learns, for
// each queued frame, whether the write that carried it went through.
type frameWriter struct {
	w    io.Writer
	ciph *frameCipher // nil: plaintext
	// deadline, when set, is called before each write.
	deadline func()
	// busy, when set, tells whether other frames are likely on their way
	// (more than one request in flight): the sender that is to write then
	// yields once first, so they join its write.
	busy func() bool
	// queued, when set, is called under the lock with the tag and id of a
	// frame send is about to queue.
	queued func(tag any, id uint64)
	// taken, when set, is called under the lock with the tags of the
	// frames a write is about to carry.
	taken func(tags []any)
	// done is called outside the lock with the tags of a written batch and
	// the write's error (nil: every frame went out whole; else the frames
	// ending past n did not leave).
	done func(tags []any, ends []int, n int, err error)

	mu      sync.Mutex
	buf     []byte
	spare   []byte
	tags    []any
	ends    []int
	spareT  []any
	spareE  []int
	writing bool
	err     error
	nextID  uint64
}

// errWriterClosed refuses frames queued after the writer failed or closed.
var errWriterClosed = errors.New("raft: session closed")

// send queues the frame of kind for the next id, with body after the id,
// and, unless a write is under way, writes everything queued. It returns
// the frame's id, or an error when the frame was not queued. body is copied
// before send returns.
func (fw *frameWriter) send(kind byte, body []byte, tag any) (uint64, error) {
	fw.mu.Lock()
	if fw.err != nil {
		fw.mu.Unlock()
		return 0, fw.err
	}
	fw.nextID++
	id := fw.nextID
	if fw.queued != nil {
		fw.queued(tag, id)
	}
	var head [1 + binary.MaxVarintLen64]byte
	if err := fw.queueLocked(binary.AppendUvarint(append(head[:0], kind), id), body, tag); err != nil {
		fw.mu.Unlock()
		return 0, err
	}
	fw.flushLocked()
	return id, nil
}

// sendID is send for a frame whose head (kind, id and what follows) is
// given: answers, with the request's id.
func (fw *frameWriter) sendID(head, body []byte) error {
	fw.mu.Lock()
	if fw.err != nil {
		fw.mu.Unlock()
		return fw.err
	}
	if err := fw.queueLocked(head, body, nil); err != nil {
		fw.mu.Unlock()
		return err
	}
	fw.flushLocked()
	return nil
}

// queueID is sendID without the write: the frame waits in the queue for
// the next write, which a later send, sendID or flush makes. For a sender
// that knows more frames of its own follow at once: they leave together.
func (fw *frameWriter) queueID(head, body []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.err != nil {
		return fw.err
	}
	return fw.queueLocked(head, body, nil)
}

// flush writes what is queued, unless a write is under way (which then
// carries it).
func (fw *frameWriter) flush() {
	fw.mu.Lock()
	if len(fw.buf) == 0 {
		fw.mu.Unlock()
		return
	}
	fw.flushLocked()
}

// queueLocked appends the frame of payload head||body to the queue, sealed
// in place under a key (no copy of its own).
func (fw *frameWriter) queueLocked(head, body []byte, tag any) error {
	n := len(head) + len(body)
	if fw.ciph != nil {
		n += gcmTagSize
	}
	mark := len(fw.buf)
	fw.buf = binary.AppendUvarint(fw.buf, uint64(n))
	start := len(fw.buf)
	fw.buf = append(append(slices.Grow(fw.buf, n), head...), body...)
	if fw.ciph != nil {
		// The payload's own bytes take the sealed payload: Seal
		// writes over its plaintext when dst is plaintext[:0], and the
		// room for the tag is there, so nothing is reallocated.
		sealed, err := fw.ciph.seal(fw.buf[start:start], fw.buf[start:])
		if err != nil {
			fw.buf = fw.buf[:mark]
			return err
		}
		fw.buf = fw.buf[:start+len(sealed)]
	}
	fw.tags = append(fw.tags, tag)
	fw.ends = append(fw.ends, len(fw.buf))
	return nil
}

// flushLocked writes the queue unless a write is under way, and unlocks.
func (fw *frameWriter) flushLocked() {
	if fw.writing {
		fw.mu.Unlock()
		return
	}
	fw.writing = true
	if fw.busy != nil && fw.busy() {
		// Let the senders that are running queue their frames: one write
		// (one record, one system call on each side) carries them all.
		fw.mu.Unlock()
		runtime.Gosched()
		fw.mu.Lock()
	}
	for len(fw.buf) > 0 {
		buf, tags, ends := fw.buf, fw.tags, fw.ends
		fw.buf, fw.spare = fw.spare[:0], nil
		fw.tags, fw.ends, fw.spareT, fw.spareE = fw.spareT[:0], fw.spareE[:0], nil, nil
		if fw.taken != nil {
			fw.taken(tags)
		}
		fw.mu.Unlock()
		if fw.deadline != nil {
			fw.deadline()
		}
		n, err := fw.w.Write(buf)
		if fw.done != nil {
			fw.done(tags, ends, n, err)
		}
		fw.mu.Lock()
		// The batch's slices go back for the next one (done has
		// returned, and keeps none of them).
		if cap(buf) <= 64<<10 {
			fw.spare = buf[:0]
		}
		if cap(tags) <= 1024 {
			clear(tags)
			fw.spareT, fw.spareE = tags[:0], ends[:0]
		}
		if err != nil {
			fw.failLocked(err)
			break
		}
	}
	fw.writing = false
	fw.mu.Unlock()
}

// failLocked makes the writer refuse further frames; frames still queued
// are reported as not written.
func (fw *frameWriter) failLocked(err error) {
	if fw.err == nil {
		fw.err = fmt.Errorf("%w: %w", errWriterClosed, err)
	}
	if len(fw.tags) > 0 && fw.done != nil {
		tags, ends := fw.tags, fw.ends
		fw.buf, fw.tags, fw.ends = nil, nil, nil
		done := fw.done
		fw.mu.Unlock()
		done(tags, ends, 0, fw.err)
		fw.mu.Lock()
	}
}

// close makes the writer refuse further frames (those queued still go out
// with the write under way, if any).
func (fw *frameWriter) close(err error) {
	fw.mu.Lock()
	if fw.err == nil {
		fw.err = err
	}
	fw.mu.Unlock()
}

// lastID is the id of the last frame queued by send.
func (fw *frameWriter) lastID() uint64 {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.nextID
}
