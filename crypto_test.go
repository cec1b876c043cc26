package raft

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cryptoTestTimeout bounds every blocking step of these tests, so a bug shows up as
// a failure instead of a hung test binary.
const cryptoTestTimeout = 20 * time.Second

// cryptoTestSecret returns a deterministic 32-byte secret named by name.
func cryptoTestSecret(name string) []byte {
	sum := sha256.Sum256([]byte("tauraft test secret " + name))
	return sum[:]
}

// cryptoTestKey builds a secretKey from the secret called name for namespace.
func cryptoTestKey(t testing.TB, name, namespace string) *secretKey {
	t.Helper()
	k, err := newSecretKey(cryptoTestSecret(name), namespace)
	if err != nil {
		t.Fatalf("newSecretKey: %v", err)
	}
	return k
}

// cryptoTestRand returns a seeded generator and logs the seed so a failure can be
// replayed.
func cryptoTestRand(t testing.TB) *mrand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return mrand.New(mrand.NewPCG(seed, seed^0x5eed))
}

// cryptoRandomBytes returns n bytes from r.
func cryptoRandomBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// cryptoConnPair makes two connected net.Conns and closes them at cleanup.
type cryptoConnPair struct {
	name string
	make func(t testing.TB) (net.Conn, net.Conn)
}

var cryptoConnPairs = []cryptoConnPair{
	{"pipe", cryptoPipePair},
	{"tcp", cryptoTCPPair},
}

// cryptoPipePair returns the two ends of a synchronous in-memory net.Pipe.
func cryptoPipePair(t testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

// cryptoTCPPair returns both ends of a real TCP connection over 127.0.0.1.
func cryptoTCPPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer func() { _ = ln.Close() }()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- result{c, err}
	}()
	a, err := net.DialTimeout("tcp", ln.Addr().String(), cryptoTestTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-accepted
	if r.err != nil {
		_ = a.Close()
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = r.c.Close() })
	return a, r.c
}

// mustSecure wraps c with k and fails the test on error.
func mustSecure(t testing.TB, k *secretKey, c net.Conn) *cryptoConn {
	t.Helper()
	sc, err := k.secureConn(c)
	if err != nil {
		t.Fatalf("secureConn: %v", err)
	}
	return sc.(*cryptoConn)
}

// cryptoDeadline sets a generous deadline so a broken test fails rather than
// hangs.
func cryptoDeadline(t testing.TB, cs ...net.Conn) {
	t.Helper()
	for _, c := range cs {
		if err := c.SetDeadline(time.Now().Add(cryptoTestTimeout)); err != nil {
			t.Fatalf("SetDeadline: %v", err)
		}
	}
}

// wireRecorder copies everything written to the inner connection, to look
// at the bytes that actually go on the wire.
type wireRecorder struct {
	net.Conn
	mu  sync.Mutex
	rec bytes.Buffer
}

func (r *wireRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.rec.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *wireRecorder) recorded() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.rec.Bytes())
}

// cryptoMemConn is a net.Conn over memory: reads come from r (EOF when nil),
// writes are appended to w unless failWrites is set.
type cryptoMemConn struct {
	r          io.Reader
	mu         sync.Mutex
	w          bytes.Buffer
	failWrites bool
	closed     atomic.Bool
}

func (m *cryptoMemConn) Read(p []byte) (int, error) {
	if m.closed.Load() {
		return 0, net.ErrClosed
	}
	if m.r == nil {
		return 0, io.EOF
	}
	return m.r.Read(p)
}

func (m *cryptoMemConn) Write(p []byte) (int, error) {
	if m.closed.Load() {
		return 0, net.ErrClosed
	}
	if m.failWrites {
		return 0, errors.New("cryptoMemConn: write failed")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.w.Write(p)
}

func (m *cryptoMemConn) written() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.w.Bytes())
}

func (m *cryptoMemConn) Close() error                     { m.closed.Store(true); return nil }
func (m *cryptoMemConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (m *cryptoMemConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (m *cryptoMemConn) SetDeadline(time.Time) error      { return nil }
func (m *cryptoMemConn) SetReadDeadline(time.Time) error  { return nil }
func (m *cryptoMemConn) SetWriteDeadline(time.Time) error { return nil }

// cryptoDiscardConn swallows writes; used to measure the write path alone.
type cryptoDiscardConn struct{ cryptoMemConn }

func (d *cryptoDiscardConn) Write(p []byte) (int, error) { return len(p), nil }

// captureSecureStream encrypts each of msgs with one Write on a fresh connection of
// k and returns the bytes it put on the wire.
func captureSecureStream(t testing.TB, k *secretKey, msgs ...[]byte) []byte {
	t.Helper()
	mc := &cryptoMemConn{}
	sc := mustSecure(t, k, mc)
	for _, m := range msgs {
		if _, err := sc.Write(m); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	return mc.written()
}

// readAllSecure decodes a captured stream with a fresh connection of k. It
// returns the plaintext delivered before the first error and that error
// (nil at a clean end of stream), plus the inner cryptoMemConn.
func readAllSecure(t testing.TB, k *secretKey, stream []byte, bufSize int) ([]byte, error, *cryptoMemConn) {
	t.Helper()
	mc := &cryptoMemConn{r: bytes.NewReader(stream)}
	sc := mustSecure(t, k, mc)
	var out []byte
	buf := make([]byte, bufSize)
	for {
		n, err := sc.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil, mc
		}
		if err != nil {
			return out, err, mc
		}
	}
}

// cryptoWriteChunks writes data to c in pieces of the given sizes.
func cryptoWriteChunks(c net.Conn, data []byte, sizes []int) error {
	for _, s := range sizes {
		n, err := c.Write(data[:s])
		if err != nil {
			return err
		}
		if n != s {
			return fmt.Errorf("short write %d of %d", n, s)
		}
		data = data[s:]
	}
	return nil
}

// cryptoReadExactly reads want bytes from c using a buffer of bufSize bytes.
func cryptoReadExactly(c net.Conn, want, bufSize int) ([]byte, error) {
	out := make([]byte, 0, want)
	buf := make([]byte, bufSize)
	for len(out) < want {
		n, err := c.Read(buf[:min(bufSize, want-len(out))])
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// cryptoExchange sends a random stream each way at the same time, written
// with the given write sizes and read with bufSize-byte reads, and checks both
// arrive intact and in order.
func cryptoExchange(t *testing.T, r *mrand.Rand, a, b net.Conn, sizesAB, sizesBA []int, bufSize int) {
	t.Helper()
	total := func(s []int) int {
		n := 0
		for _, v := range s {
			n += v
		}
		return n
	}
	dataAB := cryptoRandomBytes(r, total(sizesAB))
	dataBA := cryptoRandomBytes(r, total(sizesBA))
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Add(4)
	go func() { defer wg.Done(); errs <- cryptoWriteChunks(a, dataAB, sizesAB) }()
	go func() { defer wg.Done(); errs <- cryptoWriteChunks(b, dataBA, sizesBA) }()
	check := func(dst net.Conn, want []byte, dir string) {
		defer wg.Done()
		got, err := cryptoReadExactly(dst, len(want), bufSize)
		if err != nil {
			errs <- fmt.Errorf("%s: read after %d of %d bytes: %w", dir, len(got), len(want), err)
			return
		}
		if !bytes.Equal(got, want) {
			errs <- fmt.Errorf("%s: received bytes differ from sent bytes", dir)
			return
		}
		errs <- nil
	}
	go check(b, dataAB, "a->b")
	go check(a, dataBA, "b->a")
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestNewSecretKey(t *testing.T) {
	for _, n := range []int{0, 1, 16, MinKeySize - 1} {
		_, err := newSecretKey(make([]byte, n), "ns")
		if !errors.Is(err, ErrKeyTooShort) {
			t.Errorf("key of %d bytes: err = %v, want ErrKeyTooShort", n, err)
		}
	}
	if !strings.Contains(ErrKeyTooShort.Error(), strconv.Itoa(MinKeySize)) {
		t.Errorf("ErrKeyTooShort %q does not name MinKeySize %d", ErrKeyTooShort, MinKeySize)
	}
	for _, n := range []int{MinKeySize, 64} {
		if _, err := newSecretKey(make([]byte, n), "ns"); err != nil {
			t.Errorf("key of %d bytes: %v", n, err)
		}
	}

	// The key is copied: changing the caller's slice afterwards changes
	// nothing.
	secret := cryptoTestSecret("copy")
	k, err := newSecretKey(secret, "ns")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.seal([]byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	clear(secret)
	if _, err := k.open(sealed); err != nil {
		t.Errorf("open after the caller wiped its key slice: %v", err)
	}
}

func TestDeriveKeySeparation(t *testing.T) {
	salt := bytes.Repeat([]byte{7}, transportSaltSize)
	alpha := cryptoTestKey(t, "one", "alpha")
	alpha2 := cryptoTestKey(t, "one", "alpha")
	beta := cryptoTestKey(t, "one", "beta")
	other := cryptoTestKey(t, "two", "alpha")

	derive := func(k *secretKey, salt []byte, info string) string {
		key, err := k.deriveKey(salt, info)
		if err != nil {
			t.Fatal(err)
		}
		if len(key) != aesKeySize {
			t.Fatalf("derived key has %d bytes, want %d", len(key), aesKeySize)
		}
		return string(key)
	}
	base := derive(alpha, salt, alpha.transportInfo)
	if base != derive(alpha2, salt, alpha2.transportInfo) {
		t.Error("same secret, namespace and salt derived different keys")
	}
	distinct := map[string]string{
		"other namespace": derive(beta, salt, beta.transportInfo),
		"other purpose":   derive(alpha, salt, alpha.commandInfo),
		"other secret":    derive(other, salt, other.transportInfo),
		"other salt":      derive(alpha, bytes.Repeat([]byte{8}, transportSaltSize), alpha.transportInfo),
	}
	for what, key := range distinct {
		if key == base {
			t.Errorf("%s derived the same key", what)
		}
	}

	// A namespace cannot make the transport info of one namespace equal the
	// command info of another, thanks to the 0x00 after the label.
	if alpha.transportInfo == cryptoTestKey(t, "one", "transport\x00alpha").commandInfo {
		t.Error("info strings of different purposes collide")
	}
}

func TestSecureConnRoundTrip(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	for _, cp := range cryptoConnPairs {
		for _, bufSize := range []int{1, 7, 4 << 10, 256 << 10} {
			t.Run(fmt.Sprintf("%s/read%d", cp.name, bufSize), func(t *testing.T) {
				r := cryptoTestRand(t)
				// Edge sizes around the 64 KiB frame limit plus random
				// sizes up to 300 KiB; fewer bytes for byte-at-a-time
				// reads, which are slow under -race.
				sizes := func() []int {
					s := []int{0, 1, maxFramePlaintext - 1, maxFramePlaintext, maxFramePlaintext + 1}
					count, limit := 10, 300<<10
					if bufSize < 16 {
						count, limit = 2, 100<<10
					}
					for range count {
						s = append(s, r.IntN(limit+1))
					}
					r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
					return s
				}
				a, b := cp.make(t)
				sa, sb := mustSecure(t, k, a), mustSecure(t, k, b)
				cryptoDeadline(t, sa, sb)
				cryptoExchange(t, r, sa, sb, sizes(), sizes(), bufSize)
			})
		}
	}
}

// TestSecureConnConcurrentWriters checks that concurrent Writes never
// interleave: each record, written with one Write, must arrive whole.
func TestSecureConnConcurrentWriters(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	for _, cp := range cryptoConnPairs {
		t.Run(cp.name, func(t *testing.T) {
			const writers, records = 4, 25
			r := cryptoTestRand(t)
			a, b := cp.make(t)
			sa, sb := mustSecure(t, k, a), mustSecure(t, k, b)
			cryptoDeadline(t, sa, sb)

			// Record: writer id, sequence, length (uint32 each), then
			// length bytes all equal to byte(id*31+seq).
			payloads := make([][][]byte, writers)
			for w := range payloads {
				for s := range records {
					n := r.IntN(150 << 10)
					rec := make([]byte, 12+n)
					binary.BigEndian.PutUint32(rec[0:], uint32(w))
					binary.BigEndian.PutUint32(rec[4:], uint32(s))
					binary.BigEndian.PutUint32(rec[8:], uint32(n))
					for i := 12; i < len(rec); i++ {
						rec[i] = byte(w*31 + s)
					}
					payloads[w] = append(payloads[w], rec)
				}
			}
			var wg sync.WaitGroup
			// On failure, close first so blocked writers return, then
			// wait for them before the test ends.
			defer wg.Wait()
			defer func() { _ = sa.Close(); _ = sb.Close() }()
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, rec := range payloads[w] {
						if _, err := sa.Write(rec); err != nil {
							t.Errorf("writer %d: %v", w, err)
							return
						}
					}
				}()
			}
			next := make([]int, writers)
			hdr := make([]byte, 12)
			for range writers * records {
				if _, err := io.ReadFull(sb, hdr); err != nil {
					t.Fatalf("read header: %v", err)
				}
				w := int(binary.BigEndian.Uint32(hdr[0:]))
				s := int(binary.BigEndian.Uint32(hdr[4:]))
				n := int(binary.BigEndian.Uint32(hdr[8:]))
				if w >= writers || s != next[w] || n != len(payloads[w][s])-12 {
					t.Fatalf("corrupt record header: writer %d seq %d len %d", w, s, n)
				}
				body := make([]byte, n)
				if _, err := io.ReadFull(sb, body); err != nil {
					t.Fatalf("read body: %v", err)
				}
				if !bytes.Equal(body, payloads[w][s][12:]) {
					t.Fatalf("record %d of writer %d interleaved with another", s, w)
				}
				next[w]++
			}
			wg.Wait()
		})
	}
}

func TestSecureConnWrongKey(t *testing.T) {
	cases := []struct {
		name   string
		reader *secretKey
	}{
		{"other secret", cryptoTestKey(t, "two", "ns")},
		{"other namespace", cryptoTestKey(t, "one", "other-ns")},
	}
	writer := cryptoTestKey(t, "one", "ns")
	for _, tc := range cases {
		for _, cp := range cryptoConnPairs {
			t.Run(tc.name+"/"+cp.name, func(t *testing.T) {
				a, b := cp.make(t)
				sa, sb := mustSecure(t, writer, a), mustSecure(t, tc.reader, b)
				cryptoDeadline(t, sa, sb)
				go func() { _, _ = sa.Write([]byte("hello from another key")) }()

				start := time.Now()
				buf := make([]byte, 64)
				n, err := sb.Read(buf)
				if n != 0 || !errors.Is(err, ErrDecrypt) {
					t.Fatalf("Read = %d, %v; want 0, ErrDecrypt", n, err)
				}
				if retryableTimeout(err) || time.Since(start) > cryptoTestTimeout/2 {
					t.Fatalf("failure took %v (err %v): should be immediate", time.Since(start), err)
				}
				// The failure is permanent.
				for range 3 {
					if _, err := sb.Read(buf); !errors.Is(err, ErrDecrypt) {
						t.Fatalf("later Read: %v, want ErrDecrypt", err)
					}
				}
			})
		}
	}
}

func TestSecureConnUnkeyedPeer(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	// Looks like a hashicorp RPC: type byte, then a msgpack map.
	msgpackish := append([]byte{0x00, 0x86, 0xa4, 'T', 'e', 'r', 'm', 0x05, 0xa6}, bytes.Repeat([]byte("Leader"), 20)...)
	cases := []struct {
		name     string
		send     []byte
		close    bool
		deadline time.Duration
		want     func(error) bool
	}{
		{"raft msgpack", msgpackish, false, cryptoTestTimeout, func(err error) bool { return errors.Is(err, ErrDecrypt) }},
		{"huge length", bytes.Repeat([]byte{0xde}, 64), false, cryptoTestTimeout, func(err error) bool { return errors.Is(err, errFrameSize) }},
		{"small length, garbage body", append(make([]byte, 32), 0, 0, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), false, cryptoTestTimeout,
			func(err error) bool { return errors.Is(err, ErrDecrypt) && !errors.Is(err, errFrameSize) }},
		{"too short then silent", []byte("short"), false, 200 * time.Millisecond, retryableTimeout},
		{"too short then closed", []byte("still short of a salt and a frame"), true, cryptoTestTimeout,
			func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	}
	for _, tc := range cases {
		for _, cp := range cryptoConnPairs {
			t.Run(tc.name+"/"+cp.name, func(t *testing.T) {
				a, raw := cp.make(t)
				sa := mustSecure(t, k, a)
				cryptoDeadline(t, raw)
				if err := sa.SetReadDeadline(time.Now().Add(tc.deadline)); err != nil {
					t.Fatal(err)
				}
				go func() {
					_, _ = raw.Write(tc.send)
					if tc.close {
						_ = raw.Close()
					}
				}()
				start := time.Now()
				_, err := sa.Read(make([]byte, 512))
				if !tc.want(err) {
					t.Fatalf("Read error = %v", err)
				}
				if elapsed := time.Since(start); elapsed > tc.deadline+5*time.Second {
					t.Fatalf("Read took %v, beyond its deadline", elapsed)
				}
			})
		}
	}
}

func TestSecureConnNoPlaintextOnWire(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	marker := []byte("TAURAFT-PLAINTEXT-MARKER-7f3a9c")
	for _, cp := range cryptoConnPairs {
		t.Run(cp.name, func(t *testing.T) {
			a, b := cp.make(t)
			rec := &wireRecorder{Conn: a}
			sa, sb := mustSecure(t, k, rec), mustSecure(t, k, b)
			cryptoDeadline(t, sa, sb)

			var msgs [][]byte
			msgs = append(msgs, marker, bytes.Repeat(marker, 10))
			msgs = append(msgs, bytes.Repeat(marker, (200<<10)/len(marker)))
			var want []byte
			var wantWire int
			frames := func(n int) int { return (n + maxFramePlaintext - 1) / maxFramePlaintext }
			for _, m := range msgs {
				want = append(want, m...)
				wantWire += len(m) + frames(len(m))*(frameHeaderSize+gcmTagSize)
			}
			wantWire += transportSaltSize

			done := make(chan error, 1)
			go func() {
				for _, m := range msgs {
					if _, err := sa.Write(m); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			got, err := cryptoReadExactly(sb, len(want), 32<<10)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("plaintext corrupted")
			}
			wire := rec.recorded()
			if bytes.Contains(wire, marker[:12]) {
				t.Fatal("plaintext marker found on the wire")
			}
			if len(wire) != wantWire {
				t.Errorf("wire carries %d bytes, want %d (salt + 20 bytes per frame)", len(wire), wantWire)
			}
		})
	}
}

// TestSecureConnWireFormat decodes a captured stream by hand, following the
// documented format, to pin down salt, length, nonce and AAD.
func TestSecureConnWireFormat(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	msgs := [][]byte{[]byte("first"), bytes.Repeat([]byte{'x'}, maxFramePlaintext+10), []byte("last")}
	wire := captureSecureStream(t, k, msgs...)
	aead, err := k.newAEAD(wire[:transportSaltSize], k.transportInfo)
	if err != nil {
		t.Fatal(err)
	}
	rest := wire[transportSaltSize:]
	var got []byte
	for seq := uint64(0); len(rest) > 0; seq++ {
		size := binary.BigEndian.Uint32(rest)
		var nonce [gcmNonceSize]byte
		binary.BigEndian.PutUint64(nonce[4:], seq)
		pt, err := aead.Open(nil, nonce[:], rest[frameHeaderSize:frameHeaderSize+size], rest[:frameHeaderSize])
		if err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
		got = append(got, pt...)
		rest = rest[frameHeaderSize+size:]
	}
	if !bytes.Equal(got, bytes.Join(msgs, nil)) {
		t.Fatal("hand-decoded stream differs")
	}
}

func TestSecureConnTamper(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	first := []byte("first message, frame zero")
	second := []byte("second message, frame one")
	stream := captureSecureStream(t, k, first, second)
	frame0 := transportSaltSize
	frame1 := frame0 + frameHeaderSize + len(first) + gcmTagSize

	// Untouched, a fresh connection decodes it (this is also how a replay
	// would look: see secureConn).
	got, err, _ := readAllSecure(t, k, stream, 64)
	if err != nil || !bytes.Equal(got, append(bytes.Clone(first), second...)) {
		t.Fatalf("clean stream: %q, %v", got, err)
	}

	cases := []struct {
		name      string
		bit       int // bit index into stream
		delivered []byte
	}{
		{"salt", 3, nil},
		{"length low bit", (frame0+3)*8 + 0, nil},
		{"length high bit", frame0 * 8, nil},
		{"ciphertext", (frame0+frameHeaderSize+4)*8 + 5, nil},
		{"tag", (frame1-1)*8 + 7, nil},
		{"second frame", (frame1+frameHeaderSize+2)*8 + 1, first},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(stream)
			bad[tc.bit/8] ^= 1 << (tc.bit % 8)
			got, err, mc := readAllSecure(t, k, bad, 7)
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("err = %v, want ErrDecrypt", err)
			}
			if !bytes.Equal(got, tc.delivered) {
				t.Fatalf("delivered %q before the error, want %q", got, tc.delivered)
			}
			if !mc.closed.Load() {
				t.Error("inner connection left open after authentication failure")
			}
		})
	}

	// Every single-bit flip anywhere in the stream must be caught: at most a
	// prefix of the true plaintext is delivered, then an error. (A flipped
	// length on the last frame may ask for more bytes than exist, which ends
	// as io.ErrUnexpectedEOF instead of ErrDecrypt.)
	want := append(bytes.Clone(first), second...)
	for bit := range len(stream) * 8 {
		bad := bytes.Clone(stream)
		bad[bit/8] ^= 1 << (bit % 8)
		got, err, _ := readAllSecure(t, k, bad, 1<<10)
		if err == nil || !bytes.HasPrefix(want, got) {
			t.Fatalf("bit %d: delivered %q, err %v", bit, got, err)
		}
		if !errors.Is(err, ErrDecrypt) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("bit %d: unexpected error %v", bit, err)
		}
	}
}

func TestSecureConnTruncated(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	stream := captureSecureStream(t, k, []byte("abc"), []byte("defgh"))
	frame1 := transportSaltSize + frameHeaderSize + 3 + gcmTagSize
	for cut := range len(stream) {
		got, err, _ := readAllSecure(t, k, stream[:cut], 64)
		switch {
		case cut == 0 || cut == transportSaltSize:
			// A clean end of stream: the peer closed before sending a
			// frame.
			if err != nil || len(got) != 0 {
				t.Fatalf("cut %d: %q, %v", cut, got, err)
			}
		case cut == frame1:
			if err != nil || string(got) != "abc" {
				t.Fatalf("cut %d: %q, %v", cut, got, err)
			}
		default:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("cut %d: %q, %v; want io.ErrUnexpectedEOF", cut, got, err)
			}
		}
	}
}

func TestSecureConnNonceUniqueness(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	msg := []byte("the same plaintext, every time")

	// Two connections with the same key: different salts, different bytes.
	s1 := captureSecureStream(t, k, msg)
	s2 := captureSecureStream(t, k, msg)
	if bytes.Equal(s1[:transportSaltSize], s2[:transportSaltSize]) {
		t.Error("two connections chose the same salt")
	}
	if bytes.Equal(s1[transportSaltSize:], s2[transportSaltSize:]) {
		t.Error("two connections produced the same ciphertext")
	}

	// One connection: the same plaintext twice gives different frames.
	s := captureSecureStream(t, k, msg, msg)
	frameLen := frameHeaderSize + len(msg) + gcmTagSize
	f0 := s[transportSaltSize : transportSaltSize+frameLen]
	f1 := s[transportSaltSize+frameLen:]
	if bytes.Equal(f0, f1) {
		t.Error("repeated plaintext produced a repeated frame")
	}

	// A long stream: 1000 frames carry the counter past byte boundaries.
	var msgs [][]byte
	for i := range 1000 {
		msgs = append(msgs, []byte(fmt.Sprintf("frame %d;", i)))
	}
	got, err, _ := readAllSecure(t, k, captureSecureStream(t, k, msgs...), 100)
	if err != nil || !bytes.Equal(got, bytes.Join(msgs, nil)) {
		t.Fatalf("long stream: err %v, intact %v", err, bytes.Equal(got, bytes.Join(msgs, nil)))
	}
}

// TestSecureConnCounterBoundaries starts both ends near counter limits.
func TestSecureConnCounterBoundaries(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	for _, start := range []uint64{1<<32 - 2, 1<<56 - 2, math.MaxUint64 - 3} {
		t.Run(strconv.FormatUint(start, 16), func(t *testing.T) {
			wc := &cryptoMemConn{}
			w := mustSecure(t, k, wc)
			w.wseq = start
			for i := range 3 {
				if _, err := w.Write([]byte{byte(i)}); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			rc := &cryptoMemConn{r: bytes.NewReader(wc.written())}
			r := mustSecure(t, k, rc)
			r.rseq = start
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, []byte{0, 1, 2}) {
				t.Fatalf("got %v, %v", got, err)
			}
		})
	}

	// The last counter value is never used: the nonce would wrap.
	w := mustSecure(t, k, &cryptoMemConn{})
	w.wseq = math.MaxUint64
	if n, err := w.Write([]byte("x")); n != 0 || !errors.Is(err, errNonceExhausted) {
		t.Fatalf("Write at the counter limit = %d, %v", n, err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after exhaustion succeeded")
	}
}

func TestSecureConnReflection(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	mc := &cryptoMemConn{}
	c := mustSecure(t, k, mc)
	if _, err := c.Write([]byte("echo me")); err != nil {
		t.Fatal(err)
	}
	// The peer sends our own bytes back. Without the salt check these
	// frames would authenticate.
	mc.r = bytes.NewReader(mc.written())
	if _, err := c.Read(make([]byte, 16)); !errors.Is(err, errReflected) || !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Read of reflected stream: %v, want errReflected", err)
	}
}

// TestSecureConnTimeoutResumes checks that a read deadline expiring, even in
// the middle of a frame, does not break the connection.
func TestSecureConnTimeoutResumes(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	for _, cp := range cryptoConnPairs {
		t.Run(cp.name, func(t *testing.T) {
			a, raw := cp.make(t)
			sa := mustSecure(t, k, a)
			cryptoDeadline(t, raw)
			msg := bytes.Repeat([]byte("resume "), 1000)
			wire := captureSecureStream(t, k, msg)
			cut := transportSaltSize + 1000 // inside the first frame

			buf := make([]byte, len(msg))
			// Nothing sent yet.
			_ = sa.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := sa.Read(buf); !retryableTimeout(err) {
				t.Fatalf("idle Read: %v, want timeout", err)
			}
			// Half a frame, then the deadline. One goroutine writes both
			// halves so they cannot be reordered.
			rest := make(chan struct{})
			go func() {
				_, _ = raw.Write(wire[:cut])
				<-rest
				_, _ = raw.Write(wire[cut:])
			}()
			defer close(rest)
			// Retry until the deadline hits with part of the frame
			// buffered, however slowly the writer gets scheduled.
			for try := 0; ; try++ {
				_ = sa.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := sa.Read(buf); !retryableTimeout(err) {
					t.Fatalf("mid-frame Read: %v, want timeout", err)
				}
				if sa.recv != nil && sa.fr.end > sa.fr.start {
					break
				}
				if try == 100 {
					t.Fatal("the first half never arrived")
				}
			}
			// The rest arrives; the Read picks up where it stopped.
			rest <- struct{}{}
			_ = sa.SetReadDeadline(time.Now().Add(cryptoTestTimeout))
			got, err := cryptoReadExactly(sa, len(msg), len(msg))
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("after timeouts: %v, intact %v", err, bytes.Equal(got, msg))
			}
		})
	}
}

func TestSecureConnWriteErrorIsSticky(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	mc := &cryptoMemConn{failWrites: true}
	c := mustSecure(t, k, mc)
	if _, err := c.Write([]byte("a")); err == nil {
		t.Fatal("first Write succeeded on a failing conn")
	}
	mc.failWrites = false
	if _, err := c.Write([]byte("b")); err == nil {
		t.Fatal("Write after a failed Write succeeded; the peer could not decode it")
	}
	if n, err := c.Write(nil); n != 0 || err == nil {
		t.Fatalf("empty Write after failure = %d, %v", n, err)
	}
}

func TestSecureConnDelegates(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	a, _ := cryptoTCPPair(t)
	c := mustSecure(t, k, a)
	if c.LocalAddr().String() != a.LocalAddr().String() || c.RemoteAddr().String() != a.RemoteAddr().String() {
		t.Error("addresses not delegated")
	}
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !retryableTimeout(err) {
		t.Errorf("Read past SetDeadline: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("inner conn not closed: %v", err)
	}
	if _, err := k.secureConn(nil); err == nil {
		t.Error("secureConn(nil) succeeded")
	}
}

// TestSecureConnNoAllocs checks that the hot paths reuse their buffers.
func TestSecureConnNoAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	k := cryptoTestKey(t, "one", "ns")
	for _, size := range []int{4 << 10, 200 << 10} {
		w := mustSecure(t, k, &cryptoDiscardConn{})
		msg := make([]byte, size)
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		if allocs := testing.AllocsPerRun(50, func() { _, _ = w.Write(msg) }); allocs != 0 {
			t.Errorf("Write of %d bytes: %v allocations", size, allocs)
		}
	}

	const runs = 50
	var msgs [][]byte
	for range runs + 2 {
		msgs = append(msgs, make([]byte, 4<<10))
	}
	stream := captureSecureStream(t, k, msgs...)
	for _, bufSize := range []int{64 << 10, 1 << 10} {
		r := mustSecure(t, k, &cryptoMemConn{r: bytes.NewReader(stream)})
		buf := make([]byte, bufSize)
		if _, err := io.ReadFull(r, make([]byte, 4<<10)); err != nil {
			t.Fatal(err)
		}
		if allocs := testing.AllocsPerRun(runs, func() { _, _ = r.Read(buf) }); allocs != 0 {
			t.Errorf("Read with a %d-byte buffer: %v allocations", bufSize, allocs)
		}
	}
}

// TestReadFrameBoundedMemory feeds length fields up to 4 GiB and checks the
// reader never allocates beyond its fixed buffer.
func TestReadFrameBoundedMemory(t *testing.T) {
	for _, size := range []uint32{math.MaxUint32, maxFramePayload + 1, 1 << 30} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var fr frameReader
		var hdr [frameHeaderSize]byte
		binary.BigEndian.PutUint32(hdr[:], size)
		_, err := fr.readFrame(bytes.NewReader(append(hdr[:], make([]byte, 100)...)))
		runtime.ReadMemStats(&after)
		if !errors.Is(err, errFrameSize) || !errors.Is(err, ErrDecrypt) {
			t.Errorf("length %d: err %v, want errFrameSize", size, err)
		}
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 2*maxFrameSize {
			t.Errorf("length %d: allocated %d bytes", size, grown)
		}
		if len(fr.buf) != maxFrameSize {
			t.Errorf("buffer grew to %d", len(fr.buf))
		}
	}
}

func TestSealOpen(t *testing.T) {
	k := cryptoTestKey(t, "one", "ns")
	r := cryptoTestRand(t)
	for _, n := range []int{0, 1, 15, 16, 17, 1000, 1 << 20} {
		msg := cryptoRandomBytes(r, n)
		sealed, err := k.seal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != n+commandOverhead {
			t.Errorf("sealed %d bytes into %d", n, len(sealed))
		}
		if n >= 16 && bytes.Contains(sealed, msg[:16]) {
			t.Errorf("plaintext visible in sealed message")
		}
		got, err := k.open(sealed)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round trip of %d bytes: %v", n, err)
		}
	}

	msg := []byte("transfer 100 to alice")
	sealed, err := k.seal(msg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := k.seal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(sealed, again) {
		t.Error("sealing the same plaintext twice gave the same output")
	}

	// open must not touch its input.
	keep := bytes.Clone(sealed)
	if _, err := k.open(sealed); err != nil || !bytes.Equal(sealed, keep) {
		t.Fatalf("open modified its input or failed: %v", err)
	}

	bad := map[string]struct {
		key  *secretKey
		data []byte
	}{
		"wrong key":       {cryptoTestKey(t, "two", "ns"), sealed},
		"wrong namespace": {cryptoTestKey(t, "one", "other"), sealed},
		"empty":           {k, nil},
		"salt only":       {k, sealed[:commandSaltSize]},
		"one short":       {k, sealed[:commandOverhead-1]},
		"truncated":       {k, sealed[:len(sealed)-1]},
		"extended":        {k, append(bytes.Clone(sealed), 0)},
	}
	for _, bit := range []int{0, commandSaltSize*8 + 3, len(sealed)*8 - 1} {
		flipped := bytes.Clone(sealed)
		flipped[bit/8] ^= 1 << (bit % 8)
		bad["bit "+strconv.Itoa(bit)] = struct {
			key  *secretKey
			data []byte
		}{k, flipped}
	}
	// A transport frame is not a command message, even with equal salts:
	// the purpose label keeps the keys apart.
	bad["transport frame"] = struct {
		key  *secretKey
		data []byte
	}{k, captureSecureStream(t, k, msg)[transportSaltSize-commandSaltSize:]}
	for name, tc := range bad {
		got, err := tc.key.open(tc.data)
		if !errors.Is(err, ErrDecrypt) || got != nil {
			t.Errorf("%s: open = %q, %v; want ErrDecrypt", name, got, err)
		}
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	if errors.Is(ErrDecrypt, ErrKeyTooShort) || errors.Is(ErrKeyTooShort, ErrDecrypt) {
		t.Error("sentinels overlap")
	}
	for _, err := range []error{errFrameSize, errReflected} {
		if !errors.Is(err, ErrDecrypt) {
			t.Errorf("%v does not wrap ErrDecrypt", err)
		}
	}
	if errors.Is(errNonceExhausted, ErrDecrypt) {
		t.Error("nonce exhaustion is not an authentication failure")
	}
}

// cryptoChunkReader returns data in chunks whose sizes come from plan, and before
// some chunks a timeout error, as a slow network with deadlines would.
type cryptoChunkReader struct {
	data []byte
	plan []byte
	step int
}

func (c *cryptoChunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.plan) > 0 {
		b := c.plan[c.step%len(c.plan)]
		c.step++
		if b&0x80 != 0 && c.step%2 == 1 {
			return 0, os.ErrDeadlineExceeded
		}
		n = min(n, 1+int(b&0x7f)*int(b&0x7f))
	}
	n = copy(p, c.data[:min(n, len(p))])
	c.data = c.data[n:]
	return n, nil
}

// decodeTestFrames reads frames until a non-timeout error (timeouts are retried,
// as a caller extending its deadline would) and checks the reader's
// invariants along the way.
func decodeTestFrames(t *testing.T, r io.Reader) ([][]byte, error) {
	var fr frameReader
	var frames [][]byte
	for range 1 << 20 {
		f, err := fr.readFrame(r)
		if retryableTimeout(err) {
			continue
		}
		if len(fr.buf) != maxFrameSize || cap(fr.buf) != maxFrameSize {
			t.Fatalf("receive buffer resized to %d/%d", len(fr.buf), cap(fr.buf))
		}
		if err != nil {
			// Errors are sticky.
			if _, again := fr.readFrame(r); !errors.Is(again, err) && again.Error() != err.Error() {
				t.Fatalf("error not sticky: %v then %v", err, again)
			}
			return frames, err
		}
		size := binary.BigEndian.Uint32(f)
		if len(f) != frameHeaderSize+int(size) || size < gcmTagSize || size > maxFramePayload {
			t.Fatalf("frame of %d bytes with length field %d", len(f), size)
		}
		frames = append(frames, bytes.Clone(f))
	}
	t.Fatal("no terminal error")
	return nil, nil
}

func FuzzReadFrame(f *testing.F) {
	frame := func(size uint32, body int) []byte {
		b := binary.BigEndian.AppendUint32(nil, size)
		return append(b, make([]byte, body)...)
	}
	k, _ := newSecretKey(cryptoTestSecret("fuzz"), "fuzz")
	mc := &cryptoMemConn{}
	sc, _ := k.secureConn(mc)
	_, _ = sc.Write([]byte("a real frame"))
	_, _ = sc.Write(make([]byte, maxFramePlaintext+1))
	captured := mc.written()[transportSaltSize:]

	f.Add([]byte{}, []byte{})
	f.Add([]byte{0, 0}, []byte{1})
	f.Add(frame(0, 0), []byte{})
	f.Add(frame(gcmTagSize-1, gcmTagSize-1), []byte{})
	f.Add(frame(gcmTagSize, gcmTagSize), []byte{0x80, 3})
	f.Add(frame(maxFramePayload, maxFramePayload), []byte{0x7f, 0x80})
	f.Add(frame(maxFramePayload+1, 10), []byte{})
	f.Add(frame(math.MaxUint32, 10), []byte{2})
	f.Add(append(frame(20, 20), frame(16, 16)...), []byte{0x83, 1, 2})
	f.Add(append(frame(20, 20), frame(16, 5)...), []byte{})
	f.Add(captured, []byte{0x85, 0x10, 0x7f})

	f.Fuzz(func(t *testing.T, data, plan []byte) {
		wantFrames, wantErr := decodeTestFrames(t, bytes.NewReader(data))
		gotFrames, gotErr := decodeTestFrames(t, &cryptoChunkReader{data: data, plan: plan})

		// Chunking and timeouts must not change the outcome.
		if len(gotFrames) != len(wantFrames) {
			t.Fatalf("%d frames with chunked reads, %d without", len(gotFrames), len(wantFrames))
		}
		for i := range gotFrames {
			if !bytes.Equal(gotFrames[i], wantFrames[i]) {
				t.Fatalf("frame %d differs with chunked reads", i)
			}
		}
		if (gotErr == io.EOF) != (wantErr == io.EOF) ||
			errors.Is(gotErr, io.ErrUnexpectedEOF) != errors.Is(wantErr, io.ErrUnexpectedEOF) ||
			errors.Is(gotErr, errFrameSize) != errors.Is(wantErr, errFrameSize) {
			t.Fatalf("chunked reads end with %v, plain reads with %v", gotErr, wantErr)
		}
		if wantErr != io.EOF && !errors.Is(wantErr, io.ErrUnexpectedEOF) && !errors.Is(wantErr, errFrameSize) {
			t.Fatalf("unexpected error %v", wantErr)
		}
		// The frames are exactly a prefix of the input.
		if joined := bytes.Join(wantFrames, nil); !bytes.HasPrefix(data, joined) {
			t.Fatal("frames are not a prefix of the input")
		}

		// The same bytes behind a salt, read through a real connection,
		// never authenticate (the fuzzer cannot forge GCM tags).
		in := append(make([]byte, transportSaltSize), data...)
		rc, _ := k.secureConn(&cryptoMemConn{r: &cryptoChunkReader{data: in, plan: plan}})
		buf := make([]byte, 1+len(plan))
		for range 1 << 20 {
			n, err := rc.Read(buf)
			if n != 0 {
				t.Fatalf("forged stream delivered %d bytes", n)
			}
			if retryableTimeout(err) {
				continue
			}
			if err != nil && err != io.EOF && !errors.Is(err, ErrDecrypt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error %v", err)
			}
			break
		}
	})
}

func FuzzOpen(f *testing.F) {
	k, _ := newSecretKey(cryptoTestSecret("fuzz"), "fuzz")
	other, _ := newSecretKey(cryptoTestSecret("fuzz"), "other")
	for _, msg := range []string{"", "x", "a command for the state machine"} {
		sealed, _ := k.seal([]byte(msg))
		f.Add(sealed)
	}
	f.Add([]byte{})
	f.Add(make([]byte, commandOverhead-1))
	f.Add(make([]byte, commandOverhead))
	f.Add(bytes.Repeat([]byte{0xff}, 100))

	f.Fuzz(func(t *testing.T, data []byte) {
		keep := bytes.Clone(data)
		pt, err := k.open(data)
		if !bytes.Equal(data, keep) {
			t.Fatal("open modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrDecrypt) || pt != nil {
				t.Fatalf("open = %q, %v", pt, err)
			}
			return
		}
		// Only genuine messages (the seeds) open; check what they give.
		if len(pt) != len(data)-commandOverhead {
			t.Fatalf("plaintext of %d bytes from %d sealed", len(pt), len(data))
		}
		if _, err := other.open(data); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("message opened under another namespace: %v", err)
		}
		flipped := bytes.Clone(data)
		flipped[len(flipped)/2] ^= 1
		if _, err := k.open(flipped); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("altered message opened: %v", err)
		}
	})
}

// benchCryptoConn measures one-way throughput of writes of each size, with a reader
// draining through a 256 KiB buffer as hashicorp's bufio.Reader does.
func benchCryptoConn(b *testing.B, encrypted bool) {
	k := cryptoTestKey(b, "bench", "ns")
	for _, cp := range cryptoConnPairs {
		for _, size := range []int{4 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%dKiB", cp.name, size>>10), func(b *testing.B) {
				w, r := cp.make(b)
				if encrypted {
					w, r = mustSecure(b, k, w), mustSecure(b, k, r)
				}
				done := make(chan error, 1)
				go func() {
					buf := make([]byte, 256<<10)
					for {
						if _, err := r.Read(buf); err != nil {
							if err == io.EOF {
								err = nil
							}
							done <- err
							return
						}
					}
				}()
				msg := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := w.Write(msg); err != nil {
						b.Fatal(err)
					}
				}
				_ = w.Close()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

func BenchmarkSecureConn(b *testing.B) { benchCryptoConn(b, true) }

func BenchmarkPlainConn(b *testing.B) { benchCryptoConn(b, false) }

// BenchmarkSealOpen measures one command message round trip, dominated by
// the two per-message key derivations.
func BenchmarkSealOpen(b *testing.B) {
	k := cryptoTestKey(b, "bench", "ns")
	msg := make([]byte, 1<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		sealed, err := k.seal(msg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := k.open(sealed); err != nil {
			b.Fatal(err)
		}
	}
}
