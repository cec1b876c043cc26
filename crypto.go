package raft

// This file implements the optional shared-key encryption turned on by
// WithEncryptionKey. libp2p already secures every stream between two peer
// IDs, but any libp2p peer may open a stream to us; the shared key is what
// restricts a namespace to its members and clients. Two uses are covered:
//
//   - the Raft transport: every net.Conn handed to hashicorp's
//     NetworkTransport is wrapped by secretKey.secureConn, which turns the
//     byte stream into a sequence of AES-256-GCM frames;
//   - the command service: every request and response blob is sealed on its
//     own by secretKey.seal and checked by secretKey.open.
//
// Wire format of one direction of a transport connection (each direction is
// independent and is written only by its sender):
//
//	salt     32 random bytes, chosen by the sender for this connection
//	frame*   length  uint32, big endian: len(ciphertext)+16, in [16, 65552]
//	         sealed  AES-256-GCM(key, nonce, plaintext, aad = length bytes)
//
//	key   = HKDF-SHA256(secret = shared key, salt = salt,
//	                    info = "tauraft/v1/transport" || 0x00 || namespace)
//	nonce = 4 zero bytes || uint64 big-endian frame counter, starting at 0
//
// A plaintext frame carries at most 64 KiB; longer writes are split.
//
// Wire format of a sealed command message:
//
//	salt    16 random bytes, fresh for every message
//	header  AES-256-GCM(key, nonce = 12 zero bytes, uint64 big-endian
//	        length of body, no aad): 24 bytes
//	body    AES-256-GCM(key, nonce = 11 zero bytes || 0x01, plaintext,
//	        aad = none, or for a watch stream's frames watchAAD: label,
//	        the stream's random ID and the frame's number)
//
//	key   = HKDF-SHA256(secret = shared key, salt = salt,
//	                    info = "tauraft/v1/command" || 0x00 || namespace)
//
// The header lets a member authenticate a message after its first 40 bytes:
// a peer without the key is refused before the member reads (or allocates
// for) the body, whatever length its frame claims.
//
// Because the namespace is part of every HKDF info string, one shared key
// used for two namespaces yields unrelated keys, and the purpose label keeps
// transport keys and command keys apart even for equal salts.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"
)

// MinKeySize is the minimum length in bytes of the shared secret passed to
// WithEncryptionKey. It equals the AES-256 key size, so the derived keys are
// never stronger than the secret they come from would allow. The secret must
// be uniformly random (for example 32 bytes from crypto/rand): HKDF is not a
// password hash and does nothing to slow down guessing a weak passphrase.
const MinKeySize = 32

var (
	// ErrKeyTooShort is returned (possibly wrapped) when an encryption key
	// shorter than MinKeySize is configured.
	ErrKeyTooShort = errors.New("raft: encryption key shorter than 32 bytes")

	// ErrDecrypt is returned (wrapped, test with errors.Is) when data
	// received from a peer or client cannot be authenticated: the peer uses
	// another key or namespace, is not encrypting at all, or the data was
	// altered in transit. Every such failure maps to this one error so that a
	// misconfigured member or client gets one clear diagnosis.
	ErrDecrypt = errors.New("raft: message authentication failed")
)

const (
	// transportLabel and commandLabel are the purpose labels of the HKDF
	// info strings. The trailing 0x00 added by newSecretKey ends the label,
	// so no namespace can make one info string a prefix of another.
	transportLabel = "tauraft/v1/transport"
	commandLabel   = "tauraft/v1/command"

	// aesKeySize selects AES-256.
	aesKeySize = 32

	// transportSaltSize is the per-connection, per-direction salt. 256 bits
	// make a repeated salt, and so a repeated (key, nonce) pair, impossible
	// in practice however many connections are opened.
	transportSaltSize = 32

	// commandSaltSize is the per-message salt of sealed commands; see seal
	// for why 128 bits are enough with fixed nonces.
	commandSaltSize = 16
	// commandHeaderSize is a sealed command's authenticated body length.
	commandHeaderSize = 8 + gcmTagSize
	// commandPrefixSize is what a member reads of a sealed command before
	// it knows whether the sender holds the key.
	commandPrefixSize = commandSaltSize + commandHeaderSize
	// commandOverhead is how much longer a sealed command is than its
	// plaintext.
	commandOverhead = commandPrefixSize + gcmTagSize

	// gcmNonceSize and gcmTagSize are the standard AES-GCM sizes used by
	// cipher.NewGCM.
	gcmNonceSize = 12
	gcmTagSize   = 16

	// frameHeaderSize is the big-endian uint32 length before each frame.
	frameHeaderSize = 4

	// maxFramePlaintext bounds the plaintext of one transport frame. It keeps
	// the receive buffer small and fixed, so a hostile length field can never
	// make us allocate more than this.
	maxFramePlaintext = 64 << 10

	// maxFramePayload is the largest valid value of a frame's length field.
	maxFramePayload = maxFramePlaintext + gcmTagSize

	// maxFrameSize is a whole frame on the wire, header included; it is also
	// the size of the per-connection receive buffer.
	maxFrameSize = frameHeaderSize + maxFramePayload

	// maxEmptyReads stops a misbehaving inner reader that keeps returning
	// (0, nil) from spinning a Read forever; bufio uses the same limit.
	maxEmptyReads = 100
)

var (
	// errFrameSize reports a frame length field outside the valid range. It
	// wraps ErrDecrypt because an honest peer holding our key never sends
	// one: in practice it means the peer is not encrypting (raw Raft
	// msgpack read as a length) or the stream was corrupted.
	errFrameSize = fmt.Errorf("%w: invalid transport frame length", ErrDecrypt)

	// errReflected reports a peer that sent back our own salt. Accepting it
	// would make our receive key equal our send key, letting someone without
	// the key echo our own frames back to us as if the peer had written them.
	errReflected = fmt.Errorf("%w: peer echoed our transport salt", ErrDecrypt)

	// errNonceExhausted guards the 64-bit frame counter. Reaching it takes
	// 2^64 frames, but wrapping to zero would reuse a nonce, so it is checked.
	errNonceExhausted = errors.New("raft: encrypted connection exhausted its nonce space")

	// headerNonce and bodyNonce are the fixed nonces of a sealed command's
	// two parts; see seal.
	headerNonce [gcmNonceSize]byte
	bodyNonce   = [gcmNonceSize]byte{gcmNonceSize - 1: 1}
)

// secretKey holds a namespace's shared secret and derives from it the keys of
// the transport and the command service. It is immutable after construction
// and safe for concurrent use.
type secretKey struct {
	// shared is a private copy of the configured secret, so a caller
	// reusing or zeroing its slice cannot change our keys.
	shared []byte
	// transportInfo and commandInfo are the HKDF info strings: purpose
	// label, 0x00, namespace. They are built once since every key
	// derivation needs one of them.
	transportInfo string
	commandInfo   string
}

// newSecretKey checks and copies the shared secret of namespace. It returns an
// error wrapping ErrKeyTooShort if shared is shorter than MinKeySize.
func newSecretKey(shared []byte, namespace string) (*secretKey, error) {
	if len(shared) < MinKeySize {
		return nil, fmt.Errorf("%w (got %d bytes)", ErrKeyTooShort, len(shared))
	}
	return &secretKey{
		shared:        bytes.Clone(shared),
		transportInfo: transportLabel + "\x00" + namespace,
		commandInfo:   commandLabel + "\x00" + namespace,
	}, nil
}

// deriveKey returns the AES-256 key HKDF-SHA256(shared, salt, info).
func (k *secretKey) deriveKey(salt []byte, info string) ([]byte, error) {
	return hkdf.Key(sha256.New, k.shared, salt, info, aesKeySize)
}

// newAEAD returns AES-256-GCM keyed with deriveKey(salt, info).
func (k *secretKey) newAEAD(salt []byte, info string) (cipher.AEAD, error) {
	key, err := k.deriveKey(salt, info)
	if err != nil {
		return nil, fmt.Errorf("raft: derive encryption key: %w", err)
	}
	// aes.NewCipher expands the key into its own schedule, so our copy of
	// the raw derived key can be wiped straight away.
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("raft: create cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("raft: create cipher: %w", err)
	}
	return aead, nil
}

// seal encrypts and authenticates one command-service message and returns
// salt || header || body (see the wire format above), commandOverhead bytes
// longer than plaintext.
//
// The two nonces are fixed. That is safe because every message gets its own
// key, derived from a fresh 128-bit random salt, and the header and body use
// different nonces: a (key, nonce) pair repeats only if two salts collide,
// which after 2^32 messages has probability about 2^-65. Random nonces would
// add bytes to every message while guarding against exactly the same event
// (a failing random source), so they buy nothing here.
func (k *secretKey) seal(plaintext []byte) ([]byte, error) {
	return k.sealAAD(plaintext, nil)
}

// sealAAD is seal with additional authenticated data bound to the body: a
// message of a sequence (a watch stream's frames) carries its stream and
// position there, so a frame cannot be replayed, reordered or moved to
// another stream without failing to open. Each message still gets its own
// key from a fresh salt, so a sequence is as nonce-safe as single messages.
func (k *secretKey) sealAAD(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, commandSaltSize, len(plaintext)+commandOverhead)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("raft: generate message salt: %w", err)
	}
	aead, err := k.newAEAD(out, k.commandInfo)
	if err != nil {
		return nil, err
	}
	var length [8]byte
	binary.BigEndian.PutUint64(length[:], uint64(len(plaintext)+gcmTagSize))
	// Seal appends to out, whose capacity already fits the result, so the
	// salt, header and body share one allocation.
	out = aead.Seal(out, headerNonce[:], length[:], nil)
	return aead.Seal(out, bodyNonce[:], plaintext, aad), nil
}

// openHeader checks the first commandPrefixSize bytes of a sealed message
// and returns the body's cipher and length. Failure wraps ErrDecrypt: the
// sender does not hold the key (or the message was altered).
func (k *secretKey) openHeader(prefix []byte) (cipher.AEAD, int, error) {
	if len(prefix) != commandPrefixSize {
		return nil, 0, fmt.Errorf("%w: command message header of %d bytes", ErrDecrypt, len(prefix))
	}
	aead, err := k.newAEAD(prefix[:commandSaltSize], k.commandInfo)
	if err != nil {
		return nil, 0, err
	}
	var length [8]byte
	if _, err := aead.Open(length[:0], headerNonce[:], prefix[commandSaltSize:], nil); err != nil {
		return nil, 0, fmt.Errorf("%w: command message rejected (different key or namespace, or altered)", ErrDecrypt)
	}
	n := binary.BigEndian.Uint64(length[:])
	if n < gcmTagSize || n > MaxMessageSize {
		return nil, 0, fmt.Errorf("%w: command body of %d bytes", ErrDecrypt, n)
	}
	return aead, int(n), nil
}

// openBody checks and decrypts a sealed message's body.
func openBody(aead cipher.AEAD, body []byte) ([]byte, error) {
	return openBodyAAD(aead, body, nil)
}

// openBodyAAD is openBody for a body sealed with sealAAD.
func openBodyAAD(aead cipher.AEAD, body, aad []byte) ([]byte, error) {
	plaintext, err := aead.Open(nil, bodyNonce[:], body, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: command message rejected (different key or namespace, or altered)", ErrDecrypt)
	}
	return plaintext, nil
}

// open checks and decrypts a whole message produced by seal with the same
// shared key and namespace. Any input that is too short, of the wrong length
// or fails authentication yields an error wrapping ErrDecrypt; sealed itself
// is never modified.
func (k *secretKey) open(sealed []byte) ([]byte, error) {
	return k.openAAD(sealed, nil)
}

// openAAD is open for a message sealed with sealAAD.
func (k *secretKey) openAAD(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < commandOverhead {
		return nil, fmt.Errorf("%w: command message of %d bytes is too short", ErrDecrypt, len(sealed))
	}
	aead, n, err := k.openHeader(sealed[:commandPrefixSize])
	if err != nil {
		return nil, err
	}
	if body := sealed[commandPrefixSize:]; len(body) == n {
		return openBodyAAD(aead, body, aad)
	}
	return nil, fmt.Errorf("%w: command body of %d bytes, header says %d", ErrDecrypt, len(sealed)-commandPrefixSize, n)
}

// secureConn wraps c so that everything written is encrypted and everything
// read is authenticated and decrypted, as described at the top of this file.
// It is used the same way for dialled and accepted connections.
//
// secureConn does no I/O: our salt goes out in front of the first frame we
// write, and the peer's salt is read by our first Read. Each direction's key
// depends only on its sender's salt, so neither side ever waits for the other
// before sending. That keeps an accept loop from blocking on a slow or silent
// peer, cannot deadlock even on a synchronous net.Pipe, and leaves every
// handshake byte under the deadlines the caller sets for its own Read and
// Write calls.
//
// The cost of that choice is that the receiver contributes nothing to the key
// of the data it receives: someone who recorded one direction of a connection
// could replay it in full on a new connection. libp2p's own channel security
// already keeps these bytes away from anyone but the two endpoints.
//
// A peer without the key (sending raw Raft msgpack) fails on our first Read:
// its first 32 bytes are taken as a salt, the next 4 as a length that is
// almost always out of range, and otherwise the frame fails authentication.
// Either way Read returns an error wrapping ErrDecrypt and closes c; if the
// peer sends too little, Read blocks only until the read deadline.
//
// secureConn fails only for a nil c or a failing random source.
func (k *secretKey) secureConn(c net.Conn) (net.Conn, error) {
	if c == nil {
		return nil, errors.New("raft: secureConn: nil connection")
	}
	sc := &cryptoConn{conn: c, key: k}
	if _, err := rand.Read(sc.salt[:]); err != nil {
		return nil, fmt.Errorf("raft: generate connection salt: %w", err)
	}
	send, err := k.newAEAD(sc.salt[:], k.transportInfo)
	if err != nil {
		return nil, err
	}
	sc.send = send
	return sc, nil
}

// cryptoConn is the net.Conn returned by secureConn. The read side and the
// write side have separate locks and state, so a Read and a Write may run at
// the same time (hashicorp pipelines writes while decoding responses);
// concurrent Reads, and concurrent Writes, are serialized.
type cryptoConn struct {
	conn net.Conn
	key  *secretKey

	// Read side, guarded by rmu.
	rmu     sync.Mutex
	fr      frameReader
	recv    cipher.AEAD // nil until the peer's salt has been read
	rseq    uint64      // counter of the next frame to open
	rnonce  [gcmNonceSize]byte
	pending []byte // decrypted bytes not yet returned, inside fr.buf
	rerr    error  // sticky authentication failure

	// Write side, guarded by wmu. salt and send are set by secureConn and
	// never change, so Read may look at salt without taking wmu.
	wmu      sync.Mutex
	salt     [transportSaltSize]byte
	send     cipher.AEAD
	saltSent bool
	wseq     uint64 // counter of the next frame to seal
	wnonce   [gcmNonceSize]byte
	wbuf     []byte // reused frame buffer, allocated on the first Write
	werr     error  // sticky write failure
}

// Read returns decrypted bytes in order. A buffer smaller than a frame gets
// the rest of that frame on later calls. Timeouts are not fatal: the bytes
// read so far stay buffered and the next Read resumes, as with any net.Conn.
// An authentication failure closes the connection, and it and every later
// Read return an error wrapping ErrDecrypt: the stream cannot be trusted past
// a bad frame.
func (c *cryptoConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.pending) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.recv == nil {
			if err := c.readSalt(); err != nil {
				return 0, err
			}
		}
		frame, err := c.fr.readFrame(c.conn)
		if err != nil {
			return 0, c.readFailed(err)
		}
		n, err := c.openFrame(p, frame)
		if err != nil {
			return 0, c.readFailed(err)
		}
		if n > 0 {
			return n, nil
		}
		// An empty frame (which we never send, but a peer may) or a frame
		// left in c.pending: loop, since returning (0, nil) is discouraged.
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readSalt reads the peer's salt and sets up the receive cipher.
func (c *cryptoConn) readSalt() error {
	salt, err := c.fr.readN(c.conn, transportSaltSize)
	if err != nil {
		return c.readFailed(err)
	}
	if bytes.Equal(salt, c.salt[:]) {
		return c.readFailed(errReflected)
	}
	recv, err := c.key.newAEAD(salt, c.key.transportInfo)
	if err != nil {
		return c.readFailed(err)
	}
	c.recv = recv
	return nil
}

// openFrame authenticates and decrypts frame (header included). When the
// plaintext fits in p it is decrypted straight into p, saving a copy for the
// large reads of hashicorp's bufio.Reader, and its length is returned.
// Otherwise it is decrypted in place into the receive buffer and left in
// c.pending, and 0 is returned.
func (c *cryptoConn) openFrame(p, frame []byte) (int, error) {
	if c.rseq == math.MaxUint64 {
		return 0, errNonceExhausted
	}
	header, sealed := frame[:frameHeaderSize], frame[frameHeaderSize:]
	binary.BigEndian.PutUint64(c.rnonce[gcmNonceSize-8:], c.rseq)
	direct := len(sealed)-gcmTagSize <= len(p)
	dst := sealed[:0]
	if direct {
		dst = p[:0]
	}
	plaintext, err := c.recv.Open(dst, c.rnonce[:], sealed, header)
	if err != nil {
		return 0, fmt.Errorf("%w: transport frame %d rejected (peer uses a different key or namespace, or data was altered)", ErrDecrypt, c.rseq)
	}
	c.rseq++
	if direct {
		return len(plaintext), nil
	}
	c.pending = plaintext
	return 0, nil
}

// readFailed decides what a read error does to the connection. Errors from the
// inner connection are returned unchanged (frameReader already keeps the
// non-timeout ones sticky). Anything else means the stream is corrupt or
// forged: it becomes permanent and the inner connection is closed, so the
// peer stops sending and a blocked Write on our side is released.
func (c *cryptoConn) readFailed(err error) error {
	if errors.Is(err, ErrDecrypt) || errors.Is(err, errNonceExhausted) {
		c.rerr = err
		_ = c.conn.Close()
	}
	return err
}

// Write encrypts p into one frame per 64 KiB and writes them to the inner
// connection. The whole of p is written under one lock, so the data of
// concurrent Writes never interleaves.
//
// Any error from the inner connection, a timeout included, is permanent: part
// of a frame may have been sent, and its nonce is spent either way, so the
// peer could not decode anything we sent afterwards. hashicorp's transport
// drops a connection after any error, so nothing is lost by this.
func (c *cryptoConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if len(p) > 0 && c.wbuf == nil {
		// Room for the salt and one full frame; reused for every frame.
		c.wbuf = make([]byte, transportSaltSize+maxFrameSize)
	}
	written := 0
	for len(p) > 0 {
		if c.wseq == math.MaxUint64 {
			c.werr = errNonceExhausted
			return written, c.werr
		}
		chunk := p[:min(len(p), maxFramePlaintext)]
		off := 0
		if !c.saltSent {
			// The salt rides in the same inner Write as the first frame.
			off = copy(c.wbuf, c.salt[:])
		}
		header := c.wbuf[off : off+frameHeaderSize]
		binary.BigEndian.PutUint32(header, uint32(len(chunk)+gcmTagSize))
		binary.BigEndian.PutUint64(c.wnonce[gcmNonceSize-8:], c.wseq)
		sealed := c.send.Seal(c.wbuf[off+frameHeaderSize:off+frameHeaderSize], c.wnonce[:], chunk, header)
		// The counter moves on before the inner Write so that this nonce can
		// never be used again, even if the Write fails.
		c.wseq++
		if _, err := c.conn.Write(c.wbuf[:off+frameHeaderSize+len(sealed)]); err != nil {
			c.werr = fmt.Errorf("raft: encrypted connection unusable after write error: %w", err)
			return written, err
		}
		c.saltSent = true
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// Close closes the inner connection, which also unblocks pending Reads and
// Writes.
func (c *cryptoConn) Close() error { return c.conn.Close() }

// LocalAddr returns the inner connection's local address.
func (c *cryptoConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the inner connection's remote address.
func (c *cryptoConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the inner connection's deadlines; they bound the salt
// exchange too, since it happens inside Read and Write.
func (c *cryptoConn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the inner connection's read deadline.
func (c *cryptoConn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the inner connection's write deadline.
func (c *cryptoConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// frameReader cuts the byte stream of one receive direction into frames. It
// owns a single buffer of maxFrameSize bytes, allocated on first use, so no
// length field, however large, makes it allocate more. It reads greedily, so
// small frames usually cost one inner Read rather than two, and it keeps
// partial data across timeouts, so a Read that hits its deadline mid-frame
// can be retried without losing the stream.
//
// The zero value is ready to use. It is not safe for concurrent use.
type frameReader struct {
	buf   []byte
	start int   // first unconsumed byte in buf
	end   int   // end of the buffered bytes in buf
	err   error // sticky non-timeout error from the inner reader
	empty int   // consecutive (0, nil) reads
}

// readFrame returns the next frame, its 4-byte header included, validating
// the length field before reading the body. The result aliases the internal
// buffer and is valid until the next call; the caller may modify it (it is
// decrypted in place). Errors: errFrameSize (wrapping ErrDecrypt) for a bad
// length, io.EOF at a frame boundary, io.ErrUnexpectedEOF inside a frame, or
// the inner reader's error. Only timeouts are not sticky.
func (fr *frameReader) readFrame(r io.Reader) ([]byte, error) {
	if err := fr.fill(r, frameHeaderSize); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(fr.buf[fr.start:])
	if size < gcmTagSize || size > maxFramePayload {
		// The bad header stays buffered, so every later call fails the
		// same way.
		return nil, fmt.Errorf("%w: %d bytes, want %d to %d", errFrameSize, size, gcmTagSize, maxFramePayload)
	}
	total := frameHeaderSize + int(size)
	if err := fr.fill(r, total); err != nil {
		return nil, err
	}
	frame := fr.buf[fr.start : fr.start+total : fr.start+total]
	fr.start += total
	return frame, nil
}

// readN returns the next n raw bytes (n <= maxFrameSize), with the same
// aliasing and error rules as readFrame.
func (fr *frameReader) readN(r io.Reader, n int) ([]byte, error) {
	if err := fr.fill(r, n); err != nil {
		return nil, err
	}
	b := fr.buf[fr.start : fr.start+n : fr.start+n]
	fr.start += n
	return b, nil
}

// fill reads from r until at least need unconsumed bytes are buffered.
func (fr *frameReader) fill(r io.Reader, need int) error {
	if fr.buf == nil {
		fr.buf = make([]byte, maxFrameSize)
	}
	for fr.end-fr.start < need {
		if fr.err != nil {
			if fr.err == io.EOF && fr.end > fr.start {
				return io.ErrUnexpectedEOF
			}
			return fr.err
		}
		if fr.start == fr.end {
			fr.start, fr.end = 0, 0
		} else if len(fr.buf)-fr.start < need {
			// Move the partial frame to the front so the whole frame fits.
			fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
			fr.start = 0
		}
		n, err := r.Read(fr.buf[fr.end:])
		fr.end += n
		switch {
		case err == nil && n == 0:
			fr.empty++
			if fr.empty >= maxEmptyReads {
				fr.err = io.ErrNoProgress
			}
		case err == nil:
			fr.empty = 0
		case retryableTimeout(err):
			// Keep what was read; the caller may extend the deadline
			// and call again.
			fr.empty = 0
			if fr.end-fr.start < need {
				return err
			}
		default:
			// Buffered complete frames are still delivered first; the
			// error surfaces once the buffer runs short.
			fr.err = err
		}
	}
	return nil
}

// retryableTimeout reports whether err is a deadline expiry, after which a
// net.Conn stays usable once the deadline is moved.
func retryableTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
