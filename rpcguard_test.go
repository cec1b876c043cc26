package raft

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	msgpack "github.com/hashicorp/go-msgpack/v2/codec"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// guardPeers are two real peer IDs from fixed Ed25519 seeds: the stream's
// remote peer (self) and some other server (other).
var guardPeers = sync.OnceValues(func() (self, other peer.ID) {
	id := func(name string) peer.ID {
		seed := make([]byte, ed25519.SeedSize)
		copy(seed, name)
		key, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
		if err != nil {
			panic(err)
		}
		p, err := peer.IDFromPublicKey(key.GetPublic())
		if err != nil {
			panic(err)
		}
		return p
	}
	return id("tauraft rpc guard self"), id("tauraft rpc guard other")
})

// guardHeader is the RPC header hashicorp's transport sends for peer p.
func guardHeader(p peer.ID) hraft.RPCHeader {
	return hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: []byte(p.String()), Addr: []byte(p.String())}
}

// guardEncode encodes one request exactly like hashicorp's sendRPC: the
// type byte, then the request through a go-msgpack encoder on a default
// MsgpackHandle (TimeNotBuiltin as NetworkTransport sets it, unless
// newTime).
func guardEncode(t testing.TB, rpcType byte, req any, newTime bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(rpcType)
	mp := &msgpack.MsgpackHandle{}
	mp.TimeNotBuiltin = !newTime
	if err := msgpack.NewEncoder(&buf, mp).Encode(req); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// guardEntries makes n log entries of size bytes of data each.
func guardEntries(n, size int) []*hraft.Log {
	entries := make([]*hraft.Log, n)
	for i := range entries {
		data := bytes.Repeat([]byte{byte(i)}, size)
		entries[i] = &hraft.Log{
			Index: uint64(100 + i), Term: 7, Type: hraft.LogCommand, Data: data,
			Extensions: []byte("ext"),
			AppendedAt: time.Unix(1700000000+int64(i), 12345).UTC(),
		}
	}
	return entries
}

// guardRequest is a request and the snapshot data that follow it (for an
// InstallSnapshot).
type guardRequest struct {
	rpcType byte
	req     any
	data    []byte
}

// guardRequests are requests of every type with header h; InstallSnapshot,
// which ends a connection, comes last.
func guardRequests(h hraft.RPCHeader) []guardRequest {
	return []guardRequest{
		{rpcType: rpcTypeAppendEntries, req: &hraft.AppendEntriesRequest{RPCHeader: h, Term: 3}},
		{rpcType: rpcTypeAppendEntries, req: &hraft.AppendEntriesRequest{
			RPCHeader: h, Term: 3, Leader: h.Addr, PrevLogEntry: 9, PrevLogTerm: 2,
			Entries: guardEntries(1, 10), LeaderCommitIndex: 8}},
		{rpcType: rpcTypeAppendEntries, req: &hraft.AppendEntriesRequest{
			RPCHeader: h, Term: 3, Leader: h.Addr, PrevLogEntry: 10, PrevLogTerm: 3,
			Entries: guardEntries(200, 100), LeaderCommitIndex: 10}},
		{rpcType: rpcTypeRequestVote, req: &hraft.RequestVoteRequest{
			RPCHeader: h, Term: 4, Candidate: h.Addr, LastLogIndex: 12, LastLogTerm: 3, LeadershipTransfer: true}},
		{rpcType: rpcTypeRequestPreVote, req: &hraft.RequestPreVoteRequest{RPCHeader: h, Term: 5, LastLogIndex: 12, LastLogTerm: 3}},
		{rpcType: rpcTypeTimeoutNow, req: &hraft.TimeoutNowRequest{RPCHeader: h}},
		{rpcType: rpcTypeInstallSnapshot, req: &hraft.InstallSnapshotRequest{
			RPCHeader: h, SnapshotVersion: 1, Term: 5, Leader: h.Addr, LastLogIndex: 40, LastLogTerm: 5,
			Configuration: []byte("configuration"), ConfigurationIndex: 30, Size: 100000},
			data: bytes.Repeat([]byte("snapshot"), 12500)},
	}
}

// guardStream encodes reqs back to back, as one connection carries them.
func guardStream(t testing.TB, reqs []guardRequest, newTime bool) []byte {
	var out []byte
	for _, r := range reqs {
		out = append(out, guardEncode(t, r.rpcType, r.req, newTime)...)
		out = append(out, r.data...)
	}
	return out
}

// guardConn is an in-memory inbound connection: Read serves data in chunks
// of random sizes (at most limit bytes, when limit > 0), then io.EOF.
type guardConn struct {
	data   []byte
	rng    *rand.Rand
	limit  int
	closed atomic.Bool
	reset  atomic.Bool
	mu     sync.Mutex
	wrote  []byte
}

func newGuardConn(data []byte, seed uint64, limit int) *guardConn {
	return &guardConn{data: data, rng: rand.New(rand.NewPCG(seed, 1)), limit: limit}
}

func (c *guardConn) Read(p []byte) (int, error) {
	if c.closed.Load() || c.reset.Load() {
		return 0, net.ErrClosed
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data))
	if c.limit > 0 {
		n = min(n, 1+c.rng.IntN(c.limit))
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *guardConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wrote = append(c.wrote, p...)
	return len(p), nil
}

// Reset records that the guard reset the connection, as it does to a
// libp2p stream on refusal.
func (c *guardConn) Reset() error                     { c.reset.Store(true); return nil }
func (c *guardConn) Close() error                     { c.closed.Store(true); return nil }
func (c *guardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *guardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *guardConn) SetDeadline(time.Time) error      { return nil }
func (c *guardConn) SetReadDeadline(time.Time) error  { return errGuardTestDeadline }
func (c *guardConn) SetWriteDeadline(time.Time) error { return nil }

func (c *guardConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wrote
}

// ended reports whether the connection was closed or reset.
func (c *guardConn) ended() bool { return c.closed.Load() || c.reset.Load() }

// errGuardTestDeadline shows that deadline calls reach the inner conn.
var errGuardTestDeadline = errors.New("read deadline reached the inner conn")

// guardSmallReader hands the reader's Read calls on with buffers of random
// sizes up to limit (when limit > 0), so the guard is resumed at every
// possible point.
type guardSmallReader struct {
	r     io.Reader
	rng   *rand.Rand
	limit int
}

func (s *guardSmallReader) Read(p []byte) (int, error) {
	if s.limit > 0 && len(p) > 1 {
		p = p[:min(len(p), 1+s.rng.IntN(s.limit))]
	}
	return s.r.Read(p)
}

func guardSmall(r io.Reader, seed uint64, limit int) io.Reader {
	return &guardSmallReader{r: r, rng: rand.New(rand.NewPCG(seed, 3)), limit: limit}
}

// guardDecoded is one request decoded the way hashicorp's handleCommand
// decodes it.
type guardDecoded struct {
	rpcType byte
	req     hraft.WithRPCHeader
	data    []byte
}

// guardNewRequest is the request struct hashicorp decodes a request of type
// t into, or nil for an unknown type.
func guardNewRequest(t byte) hraft.WithRPCHeader {
	switch t {
	case rpcTypeAppendEntries:
		return &hraft.AppendEntriesRequest{}
	case rpcTypeRequestVote:
		return &hraft.RequestVoteRequest{}
	case rpcTypeInstallSnapshot:
		return &hraft.InstallSnapshotRequest{}
	case rpcTypeTimeoutNow:
		return &hraft.TimeoutNowRequest{}
	case rpcTypeRequestPreVote:
		return &hraft.RequestPreVoteRequest{}
	}
	return nil
}

// guardDecode reads requests from r until it fails or ends, exactly like
// hashicorp's handleConn and handleCommand: a 256 KiB bufio.Reader, the
// type byte, one Decode into the request struct with a default
// MsgpackHandle, and for InstallSnapshot, Size bytes of data.
func guardDecode(r io.Reader) ([]guardDecoded, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	dec := msgpack.NewDecoder(br, &msgpack.MsgpackHandle{})
	var out []guardDecoded
	for {
		t, err := br.ReadByte()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		req := guardNewRequest(t)
		if req == nil {
			return out, fmt.Errorf("unknown rpc type %d", t)
		}
		if err := dec.Decode(req); err != nil {
			return out, err
		}
		d := guardDecoded{rpcType: t, req: req}
		if is, ok := req.(*hraft.InstallSnapshotRequest); ok {
			if d.data, err = io.ReadAll(io.LimitReader(br, is.Size)); err != nil {
				return out, err
			}
			if int64(len(d.data)) != is.Size {
				return out, io.ErrUnexpectedEOF
			}
		}
		out = append(out, d)
	}
}

// guardReadAll reads r to its end through buffers of random sizes and
// returns what it got and the error that ended it (nil for io.EOF);
// limit > 0 bounds the buffer sizes. It
// fails the test when a Read makes no progress.
func guardReadAll(t testing.TB, r io.Reader, seed uint64, limit int) ([]byte, error) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 4))
	var out []byte
	buf := make([]byte, max(limit, 64<<10))
	for empty := 0; ; {
		p := buf
		if limit > 0 {
			p = buf[:1+rng.IntN(limit)]
		}
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			if empty++; empty > 100 {
				t.Fatal("Read keeps returning nothing")
			}
		}
	}
}

// guardAdmitAll admits every request and counts them.
func guardAdmitAll(calls *[]byte) func(byte, peer.ID) error {
	self, _ := guardPeers()
	return func(t byte, id peer.ID) error {
		if id != self {
			panic("admit asked about " + id.String())
		}
		*calls = append(*calls, t)
		return nil
	}
}

// guardSameRequest reports whether two requests encode to the same bytes.
func guardSameRequest(t testing.TB, rpcType byte, a, b any) bool {
	return bytes.Equal(guardEncode(t, rpcType, a, false), guardEncode(t, rpcType, b, false))
}

// TestRPCGuardPassesRequests: requests of every type that hashicorp's
// encoder makes for the stream's own peer pass through unchanged, back to
// back on one connection, read in pieces of every size, and hashicorp's
// decoder reading through the guard gets the same requests.
func TestRPCGuardPassesRequests(t *testing.T) {
	t.Parallel() // long and timing-free: it runs beside the other such tests
	self, _ := guardPeers()
	small := guardRequests(guardHeader(self))
	// Entries of the largest command, which skip the guard's buffer.
	large := append([]guardRequest{{rpcType: rpcTypeAppendEntries, req: &hraft.AppendEntriesRequest{
		RPCHeader: guardHeader(self), Term: 3, Leader: []byte(self.String()), PrevLogEntry: 10, PrevLogTerm: 3,
		Entries: append(guardEntries(64, 1024), guardEntries(2, MaxCommandSize)...), LeaderCommitIndex: 10}}},
		small...)
	// The requests of a 256-entry AppendEntries, the most this package sends.
	full := []guardRequest{{rpcType: rpcTypeAppendEntries, req: &hraft.AppendEntriesRequest{
		RPCHeader: guardHeader(self), Term: 3, Entries: guardEntries(256, 4096)}}}

	cases := []struct {
		name         string
		reqs         []guardRequest
		inner, outer []int // chunk limits of the inner conn and of the reader (0: none)
		newTime      []bool
	}{
		{"small", small, []int{0, 1, 9, 5000}, []int{0, 1, 3, 70000}, []bool{false, true}},
		{"large", large, []int{0, 4096}, []int{0, 33000, 300000}, []bool{false}},
		{"full", full, []int{0, 1000}, []int{0, 5000}, []bool{true}},
	}
	for _, c := range cases {
		for _, newTime := range c.newTime {
			stream := guardStream(t, c.reqs, newTime)
			for _, in := range c.inner {
				for _, out := range c.outer {
					name := fmt.Sprintf("%s/newTime=%v/inner=%d/outer=%d", c.name, newTime, in, out)
					t.Run(name, func(t *testing.T) {
						seed := uint64(in*1000 + out)
						var calls []byte
						g := newRPCGuard(newGuardConn(stream, seed, in), self, guardAdmitAll(&calls))
						got, err := guardReadAll(t, g, seed, out)
						if err != nil {
							t.Fatalf("read through the guard: %v", err)
						}
						if !bytes.Equal(got, stream) {
							t.Fatalf("guard passed %d bytes, want the %d sent unchanged", len(got), len(stream))
						}
						if len(calls) != len(c.reqs) {
							t.Fatalf("admit asked %d times, want %d", len(calls), len(c.reqs))
						}

						g = newRPCGuard(newGuardConn(stream, seed, in), self, nil)
						dec, err := guardDecode(guardSmall(g, seed, out))
						if err != nil {
							t.Fatalf("decode through the guard: %v", err)
						}
						if len(dec) != len(c.reqs) {
							t.Fatalf("decoded %d requests, want %d", len(dec), len(c.reqs))
						}
						for i, d := range dec {
							want := c.reqs[i]
							if d.rpcType != want.rpcType || !guardSameRequest(t, d.rpcType, d.req, want.req) || !bytes.Equal(d.data, want.data) {
								t.Fatalf("request %d decoded as %+v, want %+v", i, d.req, want.req)
							}
						}
					})
				}
			}
		}
	}
}

// guardMP builds msgpack by hand, for what hashicorp's encoder never makes.
type guardMP []byte

func (b guardMP) str(s string) guardMP {
	switch {
	case len(s) < 32:
		b = append(b, 0xa0|byte(len(s)))
	case len(s) < 256:
		b = append(b, 0xd9, byte(len(s)))
	default:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(len(s)))
	}
	return append(b, s...)
}

func (b guardMP) bin(s string) guardMP { return append(append(b, 0xc4, byte(len(s))), s...) }

func (b guardMP) uint(v uint64) guardMP { return binary.BigEndian.AppendUint64(append(b, 0xcf), v) }

func (b guardMP) int(v int64) guardMP {
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func (b guardMP) array(n int) guardMP {
	if n < 16 {
		return append(b, 0x90|byte(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func (b guardMP) raw(x ...byte) guardMP { return append(b, x...) }

// guardMsg is a request of type t whose value is a map of the given keys
// and values (alternating), each already encoded.
func guardMsg(t byte, kv ...guardMP) []byte {
	b := guardMP{t}
	if n := len(kv) / 2; n < 16 {
		b = append(b, 0x80|byte(n))
	} else {
		b = binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	}
	for _, x := range kv {
		b = append(b, x...)
	}
	return b
}

// guardK and guardV are a str key and a str value.
func guardK(s string) guardMP { return guardMP{}.str(s) }
func guardV(s string) guardMP { return guardMP{}.str(s) }

// guardBomb is n nested one-element arrays around a nil.
func guardBomb(n int) guardMP {
	var b guardMP
	for range n {
		b = b.array(1)
	}
	return b.raw(0xc0)
}

// guardEveryType is an array holding an item of every msgpack type, with
// bodies of every length encoding.
func guardEveryType() guardMP {
	be16 := func(n int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }
	be32 := func(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }
	body := func(n int) []byte { return bytes.Repeat([]byte{'b'}, n) }
	items := [][]byte{
		{0x05}, {0x7f}, {0xe0}, {0xff}, // fixints
		{0xc0}, {0xc2}, {0xc3}, // nil, false, true
		append([]byte{0xc4, 3}, body(3)...),                                            // bin8
		append(append([]byte{0xc5}, be16(300)...), body(300)...),                       // bin16
		append(append([]byte{0xc6}, be32(70000)...), body(70000)...),                   // bin32
		append([]byte{0xc7, 3, 9}, body(3)...),                                         // ext8
		append(append([]byte{0xc8}, be16(2)...), append([]byte{9}, body(2)...)...),     // ext16
		append(append([]byte{0xc9}, be32(300)...), append([]byte{9}, body(300)...)...), // ext32
		{0xca, 1, 2, 3, 4}, {0xcb, 1, 2, 3, 4, 5, 6, 7, 8}, // float32, float64
		{0xcc, 1}, {0xcd, 1, 2}, {0xce, 1, 2, 3, 4}, {0xcf, 1, 2, 3, 4, 5, 6, 7, 8}, // uint8..64
		{0xd0, 0xff}, {0xd1, 1, 2}, {0xd2, 1, 2, 3, 4}, {0xd3, 1, 2, 3, 4, 5, 6, 7, 8}, // int8..64
		append([]byte{0xd4, 9}, body(1)...), append([]byte{0xd5, 9}, body(2)...), // fixext1, 2
		append([]byte{0xd6, 9}, body(4)...), append([]byte{0xd7, 9}, body(8)...), // fixext4, 8
		append([]byte{0xd8, 9}, body(16)...),                       // fixext16
		append([]byte{0xa3}, body(3)...),                           // fixstr
		append([]byte{0xd9, 40}, body(40)...),                      // str8
		append(append([]byte{0xda}, be16(1000)...), body(1000)...), // str16
		append(append([]byte{0xdb}, be32(5)...), body(5)...),       // str32
		{0x92, 0x01, 0xc0},                                         // fixarray
		append([]byte{0xdc}, append(be16(2), 0x01, 0x02)...),       // array16
		append([]byte{0xdd}, append(be32(1), 0x01)...),             // array32
		{0x81, 0xa1, 'k', 0x01},                                    // fixmap
		append([]byte{0xde}, append(be16(1), 0xa1, 'k', 0x01)...),  // map16
		append([]byte{0xdf}, append(be32(1), 0xa1, 'k', 0xc0)...),  // map32
	}
	b := guardMP{}.array(len(items))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

// TestRPCGuardParseHead: parseHead reads the head of every msgpack type,
// and asks for more bytes when the head is cut short.
func TestRPCGuardParseHead(t *testing.T) {
	cases := []struct {
		in   []byte
		want mpHead
	}{
		{[]byte{0x05}, mpHead{kind: mpInt, size: 1, i: 5}},
		{[]byte{0xe0}, mpHead{kind: mpInt, size: 1, i: -32}},
		{[]byte{0x8f}, mpHead{kind: mpMap, size: 1, n: 15}},
		{[]byte{0x9a}, mpHead{kind: mpArray, size: 1, n: 10}},
		{[]byte{0xbf}, mpHead{kind: mpBlob, size: 1, n: 31}},
		{[]byte{0xc0}, mpHead{kind: mpScalar, size: 1}},
		{[]byte{0xc1}, mpHead{kind: mpInvalid, size: 1}},
		{[]byte{0xc3}, mpHead{kind: mpScalar, size: 1}},
		{[]byte{0xc4, 7}, mpHead{kind: mpBlob, size: 2, n: 7}},
		{[]byte{0xc5, 1, 2}, mpHead{kind: mpBlob, size: 3, n: 0x102}},
		{[]byte{0xc6, 1, 2, 3, 4}, mpHead{kind: mpBlob, size: 5, n: 0x1020304}},
		{[]byte{0xc7, 7, 1}, mpHead{kind: mpExt, size: 3, n: 7}},
		{[]byte{0xc8, 1, 2, 1}, mpHead{kind: mpExt, size: 4, n: 0x102}},
		{[]byte{0xc9, 1, 2, 3, 4, 1}, mpHead{kind: mpExt, size: 6, n: 0x1020304}},
		{[]byte{0xca, 1, 2, 3, 4}, mpHead{kind: mpScalar, size: 5}},
		{[]byte{0xcb, 1, 2, 3, 4, 5, 6, 7, 8}, mpHead{kind: mpScalar, size: 9}},
		{[]byte{0xcc, 0xff}, mpHead{kind: mpInt, size: 2, i: 255}},
		{[]byte{0xcd, 0xff, 0xff}, mpHead{kind: mpInt, size: 3, i: 65535}},
		{[]byte{0xce, 0xff, 0xff, 0xff, 0xff}, mpHead{kind: mpInt, size: 5, i: math.MaxUint32}},
		{[]byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mpHead{kind: mpInt, size: 9, i: -1}},
		{[]byte{0xd0, 0xff}, mpHead{kind: mpInt, size: 2, i: -1}},
		{[]byte{0xd1, 0xff, 0xfe}, mpHead{kind: mpInt, size: 3, i: -2}},
		{[]byte{0xd2, 0xff, 0xff, 0xff, 0xfd}, mpHead{kind: mpInt, size: 5, i: -3}},
		{[]byte{0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mpHead{kind: mpInt, size: 9, i: math.MaxInt64}},
		{[]byte{0xd4, 1}, mpHead{kind: mpExt, size: 2, n: 1}},
		{[]byte{0xd5, 1}, mpHead{kind: mpExt, size: 2, n: 2}},
		{[]byte{0xd6, 1}, mpHead{kind: mpExt, size: 2, n: 4}},
		{[]byte{0xd7, 1}, mpHead{kind: mpExt, size: 2, n: 8}},
		{[]byte{0xd8, 1}, mpHead{kind: mpExt, size: 2, n: 16}},
		{[]byte{0xd9, 200}, mpHead{kind: mpBlob, size: 2, n: 200}},
		{[]byte{0xda, 1, 2}, mpHead{kind: mpBlob, size: 3, n: 0x102}},
		{[]byte{0xdb, 0xff, 0xff, 0xff, 0xff}, mpHead{kind: mpBlob, size: 5, n: math.MaxUint32}},
		{[]byte{0xdc, 1, 2}, mpHead{kind: mpArray, size: 3, n: 0x102}},
		{[]byte{0xdd, 1, 2, 3, 4}, mpHead{kind: mpArray, size: 5, n: 0x1020304}},
		{[]byte{0xde, 1, 2}, mpHead{kind: mpMap, size: 3, n: 0x102}},
		{[]byte{0xdf, 1, 2, 3, 4}, mpHead{kind: mpMap, size: 5, n: 0x1020304}},
	}
	for _, c := range cases {
		got, ok := parseHead(append(c.in, 0xaa)) // a byte of what follows
		if !ok || got != c.want {
			t.Errorf("parseHead(% x) = %+v, %v; want %+v", c.in, got, ok, c.want)
		}
		for cut := 1; cut < len(c.in); cut++ {
			if _, ok := parseHead(c.in[:cut]); ok {
				t.Errorf("parseHead(% x) took a head cut to %d bytes", c.in, cut)
			}
		}
	}
}

// TestRPCGuardPassesOddEncodings: encodings hashicorp's encoder does not
// make but its decoder reads, which the guard can vouch for, pass; the
// decoded header is the stream's peer.
func TestRPCGuardPassesOddEncodings(t *testing.T) {
	self, other := guardPeers()
	s, o := self.String(), other.String()
	cases := []struct {
		name string
		msg  []byte
	}{
		{"hand-built", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Term"), guardMP{}.uint(5))},
		{"keys in any order", guardMsg(rpcTypeRequestVote, guardK("Term"), guardMP{}.uint(5), guardK("ID"), guardV(s), guardK("Addr"), guardV(s))},
		{"bin keys and values", guardMsg(rpcTypeRequestVote, guardMP{}.bin("ID"), guardMP{}.bin(s), guardMP{}.bin("Addr"), guardMP{}.bin(s))},
		{"repeated, all matching", guardMsg(rpcTypeTimeoutNow, guardK("ID"), guardV(s), guardK("Addr"), guardV(s), guardK("ID"), guardMP{}.bin(s), guardK("Addr"), guardV(s))},
		{"unknown keys", guardMsg(rpcTypeRequestPreVote, guardK("ID"), guardV(s), guardK("Addr"), guardV(s), guardK("Junk"), guardMP{}.array(2).str("x").raw(0xc3), guardK("More"), guardMP{}.raw(0xd4, 1, 2))},
		// RPCHeader is embedded: the decoder flattens it and has no field of
		// that name, so a nested header is skipped.
		{"nested RPCHeader ignored", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s),
			guardK("RPCHeader"), guardMP(guardMsg(0, guardK("ID"), guardV(o), guardK("Addr"), guardV(o))[1:]))},
		{"nil fields", guardMsg(rpcTypeAppendEntries, guardK("ID"), guardV(s), guardK("Addr"), guardV(s), guardK("Entries"), guardMP{0xc0}, guardK("Leader"), guardMP{0xc0})},
		{"every msgpack type in an unknown field", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("Junk"), guardEveryType(), guardK("ID"), guardV(s))},
		{"deep but within limits", guardMsg(rpcTypeAppendEntries, guardK("ID"), guardV(s), guardK("Addr"), guardV(s), guardK("Junk"), guardBomb(rpcGuardMaxDepth-1))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dec, err := guardDecode(newRPCGuard(newGuardConn(c.msg, 1, 3), self, nil))
			if err != nil {
				t.Fatalf("decode through the guard: %v", err)
			}
			if len(dec) != 1 {
				t.Fatalf("decoded %d requests, want 1", len(dec))
			}
			h := dec[0].req.GetRPCHeader()
			if string(h.ID) != s || string(h.Addr) != s {
				t.Fatalf("decoded header ID %q Addr %q, want the stream's peer", h.ID, h.Addr)
			}
		})
	}
}

// TestRPCGuardRefuses: each hostile request is refused; hashicorp's decoder
// behind the guard never gets all of it (though, for most, it would decode
// it without the guard), the error wraps errRPCRefused, and the inner
// connection is reset. A valid request before it still goes through.
func TestRPCGuardRefuses(t *testing.T) {
	self, other := guardPeers()
	s, o := self.String(), other.String()
	hdr := func(id, addr peer.ID) hraft.RPCHeader {
		return hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: []byte(id.String()), Addr: []byte(addr.String())}
	}
	enc := func(typ byte, req any) []byte { return guardEncode(t, typ, req, false) }
	arrayForm := func() []byte {
		var buf bytes.Buffer
		buf.WriteByte(rpcTypeRequestVote)
		mp := &msgpack.MsgpackHandle{}
		mp.StructToArray = true
		if err := msgpack.NewEncoder(&buf, mp).Encode(&hraft.RequestVoteRequest{RPCHeader: guardHeader(self), Term: 9}); err != nil {
			panic(err)
		}
		return buf.Bytes()
	}
	errNotMember := errors.New("not a member")
	bigSnap := &hraft.InstallSnapshotRequest{RPCHeader: guardHeader(self), Term: 5, Size: -1}

	cases := []struct {
		name    string
		msg     []byte
		admit   func(byte, peer.ID) error
		reason  string // in the error
		decodes bool   // hashicorp's decoder takes it without the guard
	}{
		{"wrong ID", enc(rpcTypeRequestVote, &hraft.RequestVoteRequest{RPCHeader: hdr(other, self), Term: 9}), nil, "header ID is not", true},
		{"wrong Addr", enc(rpcTypeRequestVote, &hraft.RequestVoteRequest{RPCHeader: hdr(self, other), Term: 9}), nil, "header Addr is not", true},
		{"other's header, max term", enc(rpcTypeAppendEntries, &hraft.AppendEntriesRequest{RPCHeader: hdr(other, other), Term: math.MaxUint64}), nil, "is not the stream's peer", true},
		{"empty ID", enc(rpcTypeTimeoutNow, &hraft.TimeoutNowRequest{RPCHeader: hraft.RPCHeader{ID: []byte{}, Addr: []byte(s)}}), nil, "header ID is not", true},
		{"nil ID", enc(rpcTypeTimeoutNow, &hraft.TimeoutNowRequest{RPCHeader: hraft.RPCHeader{Addr: []byte(s)}}), nil, "header ID is not", true},
		{"ID prefix of the peer", guardMsg(rpcTypeTimeoutNow, guardK("Addr"), guardV(s), guardK("ID"), guardV(s[:len(s)-1])), nil, "header ID is not", true},
		{"ID longer than the peer", guardMsg(rpcTypeTimeoutNow, guardK("Addr"), guardV(s), guardK("ID"), guardV(s+"x")), nil, "header ID is not", true},
		{"missing Addr", guardMsg(rpcTypeRequestVote, guardK("ID"), guardV(s), guardK("Term"), guardMP{}.uint(9)), nil, "request has no Addr", true},
		{"missing ID", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("Term"), guardMP{}.uint(9)), nil, "request has no ID", true},
		{"second ID, another peer", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("ID"), guardV(o)), nil, "header ID is not", true},
		{"second Addr, another peer", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Addr"), guardV(o)), nil, "header Addr is not", true},
		{"another peer, then ID repeated", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(o), guardK("ID"), guardV(s)), nil, "header ID is not", true},
		{"bin key ID, another peer", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardMP{}.bin("ID"), guardV(o)), nil, "header ID is not", true},
		{"bin value ID, another peer", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardMP{}.bin("ID"), guardMP{}.bin(o)), nil, "header ID is not", true},
		{"key as array of bytes", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardMP{}.array(2).raw('I', 'D'), guardV(o)), nil, "map key is not a short str or bin", true},
		{"nil key", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardMP{0xc0}, guardV(o)), nil, "map key is not a short str or bin", false},
		{"ID as array of bytes", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), append(guardMP{}.array(len(s)), s...)), nil, "header ID is not", true},
		{"non-ASCII key", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("I\xffD"), guardV(o)), nil, "map key is not ASCII", true},
		{"long key", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK(strings.Repeat("K", rpcGuardMaxKey+1)), guardV(o)), nil, "map key is not a short", true},
		{"array form", arrayForm(), nil, "request is not a map", true},
		{"nil request", []byte{rpcTypeRequestVote, 0xc0}, nil, "request is not a map", true},
		{"empty map", []byte{rpcTypeRequestVote, 0x80}, nil, "request map size", true},
		{"unknown type 5", append([]byte{5}, enc(rpcTypeRequestVote, &hraft.RequestVoteRequest{RPCHeader: guardHeader(self)})[1:]...), nil, "unknown request type", false},
		{"unknown type 255", []byte{255, 0x80}, nil, "unknown request type", false},
		{"depth bomb", guardMsg(rpcTypeAppendEntries, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Junk"), guardBomb(100)), nil, "nesting over the depth limit", true},
		{"depth bomb in Entries", guardMsg(rpcTypeAppendEntries, guardK("Addr"), guardV(s), guardK("Entries"), guardBomb(10000), guardK("ID"), guardV(s)), nil, "nesting over the depth limit", false},
		{"huge map count", guardMP{rpcTypeAppendEntries}.raw(0xdf, 0xff, 0xff, 0xff, 0xff).str("ID").str(s), nil, "request map size", false},
		{"huge array", guardMsg(rpcTypeAppendEntries, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Entries"), guardMP{}.array(1<<31)), nil, "array or map over the size limit", false},
		{"huge bin", guardMsg(rpcTypeAppendEntries, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Junk"), guardMP{}.raw(0xc6, 0x40, 0, 0, 0)), nil, "over the size limit", false},
		{"byte 0xc1", guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Term"), guardMP{0xc1}), nil, "invalid msgpack byte", false},
		{"admit refuses", enc(rpcTypeRequestVote, &hraft.RequestVoteRequest{RPCHeader: guardHeader(self), Term: 9}),
			func(t byte, _ peer.ID) error {
				if t == rpcTypeRequestVote {
					return errNotMember
				}
				return nil
			}, "peer not admitted", true},
		{"negative Size", enc(rpcTypeInstallSnapshot, bigSnap), nil, "bad InstallSnapshot Size", true},
		{"Size over MaxInt64", guardMsg(rpcTypeInstallSnapshot, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Size"), guardMP{}.uint(math.MaxUint64)), nil, "bad InstallSnapshot Size", true},
		{"Size twice", guardMsg(rpcTypeInstallSnapshot, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Size"), guardMP{}.int(1), guardK("Size"), guardMP{}.int(1)), nil, "bad InstallSnapshot Size", true},
		{"Size nil", guardMsg(rpcTypeInstallSnapshot, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Size"), guardMP{0xc0}), nil, "bad InstallSnapshot Size", true},
		{"no Size", guardMsg(rpcTypeInstallSnapshot, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Term"), guardMP{}.uint(3)), nil, "InstallSnapshot has no Size", true},
	}

	prefix := guardEncode(t, rpcTypeAppendEntries, &hraft.AppendEntriesRequest{RPCHeader: guardHeader(self), Term: 2}, false)
	suffix := prefix
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The threat is real: without the guard, hashicorp's decoder
			// takes (most of) these requests.
			decodes := false
			if req := guardNewRequest(c.msg[0]); req != nil {
				decodes = msgpack.NewDecoderBytes(c.msg[1:], &msgpack.MsgpackHandle{}).Decode(req) == nil
			}
			if got := decodes; got != c.decodes {
				t.Errorf("without the guard, decoded=%v, want %v", got, c.decodes)
			}

			stream := slices.Concat(prefix, c.msg, suffix)
			for seed := range uint64(4) {
				in, out := []int{0, 1, 5, 300}[seed], []int{0, 2, 1, 100}[seed]
				admit := c.admit

				// Decoding through the guard gets the valid request before
				// and fails on the hostile one.
				dec, err := guardDecode(guardSmall(newRPCGuard(newGuardConn(stream, seed, in), self, admit), seed, out))
				if err == nil || len(dec) != 1 {
					t.Fatalf("decode through the guard: %d requests, error %v; want 1 and an error", len(dec), err)
				}

				// Reading through the guard: a prefix of the stream that
				// ends before the hostile request does, then the refusal.
				conn := newGuardConn(stream, seed, in)
				g := newRPCGuard(conn, self, admit)
				got, err := guardReadAll(t, g, seed, out)
				if !errors.Is(err, errRPCRefused) || !strings.Contains(err.Error(), c.reason) {
					t.Fatalf("error %v, want errRPCRefused saying %q", err, c.reason)
				}
				if c.admit != nil && !errors.Is(err, errNotMember) {
					t.Fatalf("error %v does not wrap admit's error", err)
				}
				if !bytes.HasPrefix(stream, got) || len(got) < len(prefix) || len(got) >= len(prefix)+len(c.msg) {
					t.Fatalf("guard passed %d bytes, want the %d of the first request and less than the %d of the hostile one",
						len(got), len(prefix), len(c.msg))
				}
				if !conn.ended() {
					t.Fatal("the inner connection is still open")
				}
				if _, again := g.Read(make([]byte, 10)); again != err {
					t.Fatalf("next Read returned %v, want the same refusal", again)
				}
			}
		})
	}
}

// TestRPCGuardHoldsBackLastByte: the guard hands out the bytes of a request
// as it scans them, all but the last one, which waits for the checks.
func TestRPCGuardHoldsBackLastByte(t *testing.T) {
	self, _ := guardPeers()
	s := self.String()
	msg := guardMsg(rpcTypeRequestVote, guardK("ID"), guardV(s), guardK("Junk"), guardV("0123456789")) // no Addr
	for _, in := range []int{0, 1, 7} {
		conn := newGuardConn(msg, 9, in)
		got, err := guardReadAll(t, newRPCGuard(conn, self, nil), 9, 3)
		if !errors.Is(err, errRPCRefused) {
			t.Fatalf("error %v, want errRPCRefused", err)
		}
		if !bytes.Equal(got, msg[:len(msg)-1]) {
			t.Fatalf("guard passed %d bytes of %d, want all but the last", len(got), len(msg))
		}
	}

	// A wrong ID is refused as soon as it shows, even with more to come.
	self2, other := guardPeers()
	tail := bytes.Repeat([]byte{0xc0}, 1000)
	msg = append(guardMsg(rpcTypeRequestVote, guardK("ID"), guardV(other.String())), tail...)
	got, err := guardReadAll(t, newRPCGuard(newGuardConn(msg, 1, 0), self2, nil), 1, 0)
	if !errors.Is(err, errRPCRefused) || len(got) > 10 {
		t.Fatalf("passed %d bytes, error %v; want a refusal within the ID", len(got), err)
	}
}

// TestRPCGuardSnapshotEnds: after InstallSnapshot's data the guard reports
// io.EOF, even when more bytes follow, and a stream ending between
// requests ends with io.EOF.
func TestRPCGuardSnapshotEnds(t *testing.T) {
	self, _ := guardPeers()
	snap := guardEncode(t, rpcTypeInstallSnapshot, &hraft.InstallSnapshotRequest{RPCHeader: guardHeader(self), Size: 5}, false)
	for _, trailer := range [][]byte{nil, []byte("12345 and more")} {
		stream := append(slices.Concat(snap, []byte("abcde")), trailer...)
		got, err := guardReadAll(t, newRPCGuard(newGuardConn(stream, 2, 3), self, nil), 2, 2)
		if err != nil || !bytes.Equal(got, stream[:len(snap)+5]) {
			t.Fatalf("got %q, %v; want the request and its 5 bytes, then io.EOF", got, err)
		}
	}
	empty := guardEncode(t, rpcTypeInstallSnapshot, &hraft.InstallSnapshotRequest{RPCHeader: guardHeader(self)}, false)
	got, err := guardReadAll(t, newRPCGuard(newGuardConn(append(empty, 1, 2, 3), 2, 0), self, nil), 2, 0)
	if err != nil || !bytes.Equal(got, empty) {
		t.Fatalf("Size 0: got %d bytes, %v; want the request, then io.EOF", len(got), err)
	}
	// Cut inside a request: the decoder sees the stream end.
	ae := guardEncode(t, rpcTypeAppendEntries, &hraft.AppendEntriesRequest{RPCHeader: guardHeader(self)}, false)
	dec, err := guardDecode(newRPCGuard(newGuardConn(ae[:len(ae)-3], 2, 0), self, nil))
	if err == nil || len(dec) != 0 {
		t.Fatalf("cut request: decoded %d, error %v", len(dec), err)
	}
}

// TestRPCGuardConn: everything but Read is the inner conn's, and Close
// unblocks a pending Read.
func TestRPCGuardConn(t *testing.T) {
	self, _ := guardPeers()
	conn := newGuardConn(nil, 0, 0)
	g := newRPCGuard(conn, self, nil)
	if n, err := g.Write([]byte("response")); n != 8 || err != nil || string(conn.written()) != "response" {
		t.Fatalf("Write: %d, %v, inner got %q", n, err, conn.written())
	}
	if err := g.SetReadDeadline(time.Now()); err != errGuardTestDeadline {
		t.Fatalf("SetReadDeadline: %v", err)
	}
	if g.RemoteAddr() == nil || g.LocalAddr() == nil {
		t.Fatal("no addresses")
	}
	if n, err := g.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty Read: %d, %v", n, err)
	}
	if n, err := g.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read of an empty stream: %d, %v", n, err)
	}
	if err := g.Close(); err != nil || !conn.ended() {
		t.Fatalf("Close: %v", err)
	}

	// Over net.Pipe: a writer in random pieces, a Read blocked when Close
	// comes.
	a, b := net.Pipe()
	g = newRPCGuard(b, self, nil)
	reqs := guardRequests(guardHeader(self))
	reqs = reqs[:len(reqs)-1] // no InstallSnapshot, so the stream stays open
	stream := guardStream(t, reqs, false)
	go func() {
		rng := rand.New(rand.NewPCG(5, 5))
		for rest := stream; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(5000))
			if _, err := a.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}()
	br := bufio.NewReaderSize(g, 256<<10)
	dec := msgpack.NewDecoder(br, &msgpack.MsgpackHandle{})
	for i, r := range reqs {
		typ, err := br.ReadByte()
		if err != nil || typ != r.rpcType {
			t.Fatalf("request %d: type %d, %v", i, typ, err)
		}
		got := guardNewRequest(typ)
		if err := dec.Decode(got); err != nil || !guardSameRequest(t, typ, got, r.req) {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := br.ReadByte()
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	_ = g.Close()
	if err := <-done; err == nil {
		t.Fatal("Read after Close succeeded")
	}
	_ = a.Close()

	// A refusal closes a conn that cannot be reset: the sender's next
	// write fails.
	_, other := guardPeers()
	a, b = net.Pipe()
	defer func() { _ = a.Close() }()
	g = newRPCGuard(b, self, nil)
	hostile := guardEncode(t, rpcTypeRequestVote, &hraft.RequestVoteRequest{RPCHeader: guardHeader(other)}, false)
	go func() { _, _ = a.Write(hostile) }()
	if _, err := guardReadAll(t, g, 0, 0); !errors.Is(err, errRPCRefused) {
		t.Fatalf("hostile request over a pipe: %v", err)
	}
	if _, err := a.Write([]byte{0}); err == nil {
		t.Fatal("the pipe is still open after a refusal")
	}
}

// FuzzRPCGuard: whatever arrives, the guard does not panic or spin, passes
// a prefix of the input unchanged, and every request hashicorp's decoder
// gets from what it passed carries the stream's peer in ID and Addr.
func FuzzRPCGuard(f *testing.F) {
	self, other := guardPeers()
	s, o := self.String(), other.String()
	for _, r := range guardRequests(guardHeader(self)) {
		if r.rpcType == rpcTypeInstallSnapshot {
			r.req.(*hraft.InstallSnapshotRequest).Size = 4
			r.data = []byte("data")
		}
		if ae, ok := r.req.(*hraft.AppendEntriesRequest); ok && len(ae.Entries) > 2 {
			ae.Entries = ae.Entries[:2]
		}
		f.Add(guardStream(f, []guardRequest{r}, false), uint8(0), uint8(0))
		f.Add(guardStream(f, []guardRequest{r}, true), uint8(3), uint8(7))
	}
	f.Add(guardStream(f, guardRequests(guardHeader(other)), false), uint8(1), uint8(1))
	f.Add(guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardMP{}.bin("ID"), guardV(o)), uint8(2), uint8(5))
	f.Add(guardMsg(rpcTypeRequestVote, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardMP{}.array(2).raw('I', 'D'), guardV(o)), uint8(0), uint8(2))
	f.Add(guardMsg(rpcTypeAppendEntries, guardK("Addr"), guardV(s), guardK("ID"), guardV(s), guardK("Junk"), guardBomb(7)), uint8(9), uint8(0))

	f.Fuzz(func(t *testing.T, data []byte, inner, outer uint8) {
		var calls []byte
		g := newRPCGuard(newGuardConn(data, uint64(inner), int(inner)), self, guardAdmitAll(&calls))
		got, err := guardReadAll(t, g, uint64(outer), int(outer))
		if err != nil && !errors.Is(err, errRPCRefused) {
			t.Fatalf("unexpected error %v", err)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatal("the guard changed the bytes")
		}
		dec, _ := guardDecode(bytes.NewReader(got))
		if len(dec) > len(calls) {
			t.Fatalf("%d requests decoded, admit asked about %d", len(dec), len(calls))
		}
		for i, d := range dec {
			h := d.req.GetRPCHeader()
			if string(h.ID) != s || string(h.Addr) != s {
				t.Fatalf("request %d (type %d) passed with ID %q Addr %q", i, d.rpcType, h.ID, h.Addr)
			}
			if d.rpcType != calls[i] {
				t.Fatalf("request %d has type %d, admit was asked about %d", i, d.rpcType, calls[i])
			}
		}
	})
}

// guardLoopConn serves the same bytes over and over, for benchmarks.
type guardLoopConn struct {
	guardConn
	msg []byte
	off int
}

func (c *guardLoopConn) Read(p []byte) (int, error) {
	n := copy(p, c.msg[c.off:])
	c.off = (c.off + n) % len(c.msg)
	return n, nil
}

// BenchmarkRPCGuard reads requests straight from the connection ("raw")
// and through the guard ("guard"), a request per op; the "decode" variants
// also decode each request as hashicorp's handleCommand does, to show the
// guard's cost next to the decoder's.
func BenchmarkRPCGuard(b *testing.B) {
	self, _ := guardPeers()
	h := guardHeader(self)
	cases := []struct {
		name string
		req  *hraft.AppendEntriesRequest
	}{
		{"heartbeat", &hraft.AppendEntriesRequest{RPCHeader: h, Term: 3, Leader: h.Addr}},
		{"append64x1KiB", &hraft.AppendEntriesRequest{RPCHeader: h, Term: 3, Leader: h.Addr,
			PrevLogEntry: 10, PrevLogTerm: 3, Entries: guardEntries(64, 1024), LeaderCommitIndex: 9}},
	}
	admit := func(byte, peer.ID) error { return nil }
	for _, c := range cases {
		msg := guardEncode(b, rpcTypeAppendEntries, c.req, false)
		for _, mode := range []string{"raw", "guard", "decode", "decode+guard"} {
			b.Run(c.name+"/"+mode, func(b *testing.B) {
				var conn net.Conn = &guardLoopConn{msg: msg}
				if strings.HasSuffix(mode, "guard") {
					conn = newRPCGuard(conn, self, admit)
				}
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				if !strings.HasPrefix(mode, "decode") {
					dst := make([]byte, len(msg))
					for b.Loop() {
						if _, err := io.ReadFull(conn, dst); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				br := bufio.NewReaderSize(conn, 256<<10)
				dec := msgpack.NewDecoder(br, &msgpack.MsgpackHandle{})
				for b.Loop() {
					if _, err := br.ReadByte(); err != nil {
						b.Fatal(err)
					}
					var req hraft.AppendEntriesRequest
					if err := dec.Decode(&req); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
