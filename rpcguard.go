package raft

// This file implements rpcGuard, a net.Conn wrapper for inbound Raft
// transport connections. hashicorp's NetworkTransport trusts the RPC header
// a request carries: any libp2p peer able to open a transport stream could
// claim another server's ID, or push a term of 2^64-1 from outside the
// cluster. The guard sits between the stream and hashicorp's decoder and
// lets a request through only when its header names the stream's
// authenticated remote peer and a membership rule admits that peer.
//
// The inbound wire format (hashicorp/raft v1.8.0, net_transport.go) is, for
// each request:
//
//	type   1 byte: 0 AppendEntries, 1 RequestVote, 2 InstallSnapshot,
//	       3 TimeoutNow, 4 RequestPreVote
//	value  one msgpack value (go-msgpack v2, default MsgpackHandle): the
//	       request struct as a map keyed by field name, with the RPCHeader
//	       fields ProtocolVersion, ID and Addr flattened into it
//	data   InstallSnapshot only: exactly Size raw bytes of snapshot, after
//	       which the sender never reuses the connection
//
// The guard scans that stream as it passes and never changes a byte. It
// lets the scanned bytes through at once, with one exception that carries
// the whole security argument: the byte that completes a request value is
// let through only after the value has been checked. Until then hashicorp's
// decoder lacks at least that byte, so it cannot finish decoding, and so
// cannot dispatch, a request the guard goes on to refuse.
//
// The checks on each request:
//   - the type byte is one of the five above and admit accepts the remote
//     peer for that type (asked once, when the type byte arrives, so a peer
//     admit refuses never gets a byte of a request to the decoder);
//   - the value is a map (not nil, not the array form of a struct) of at
//     most rpcGuardMaxFields entries;
//   - every key, at any depth, is a str or bin of 1..rpcGuardMaxKey ASCII
//     bytes, so the decoder's field lookup can only match a field by its
//     exact name (it searches a byte table of all names, and a key holding
//     bytes >= 0x80 could match across two of its entries);
//   - every top-level "ID" and every "Addr" value is a str or bin equal to
//     the remote peer ID string (peer.ID.String(), as Raft server IDs and
//     addresses are here), and each key appears at least once: the
//     decoder keeps the last of repeated keys, and all of them match;
//   - nesting and sizes stay within the limits below;
//   - InstallSnapshot carries exactly one integer "Size", not negative; that
//     many bytes then pass unchecked and the guard reports io.EOF after
//     them.
//
// A refused request ends the connection: Read returns an error wrapping
// errRPCRefused, now and on every later call, and the inner connection is
// reset (or closed). Writes (hashicorp's responses) pass through unchecked.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Limits of the guard. They are far above what hashicorp's encoder produces
// for this package's traffic, and low enough that the scanner's state is a
// few fixed-size arrays.
const (
	// rpcGuardBufSize is the guard's read buffer. Any size above the
	// longest msgpack head (9 bytes) works; 32 KiB keeps the number of
	// reads of the inner connection low. Snapshot data and the middle of
	// long bodies skip it when it is empty, going straight to the caller.
	rpcGuardBufSize = 32 << 10

	// rpcGuardMaxDepth is the deepest nesting of maps and arrays accepted.
	// Real requests nest 3 deep (request map, Entries array, Log map);
	// the margin allows for future fields without letting a peer build
	// deep structures for the decoder to recurse into.
	rpcGuardMaxDepth = 8

	// rpcGuardMaxFields is the most entries the top-level request map may
	// declare. hashicorp's largest request, InstallSnapshotRequest, has 12
	// fields.
	rpcGuardMaxFields = 32

	// rpcGuardMaxItems is the most elements of any nested array or entries
	// of any nested map. The largest is AppendEntries' Entries array, of at
	// most MaxAppendEntries (256 here; hashicorp refuses more than 1024).
	rpcGuardMaxItems = 1024

	// rpcGuardMaxBlob is the longest str, bin or ext body accepted. The
	// largest is a log entry's Data: a command of at most MaxCommandSize,
	// or a configuration, far smaller. A body is counted, not buffered, so
	// the limit only bounds what one field may make the decoder allocate.
	rpcGuardMaxBlob = 4 * MaxCommandSize

	// rpcGuardMaxKey is the longest map key accepted. Keys are field names
	// (the longest in hashicorp's requests has 18 bytes).
	rpcGuardMaxKey = 64
)

// hashicorp's request type bytes (net_transport.go, rpcAppendEntries...).
const (
	rpcTypeAppendEntries   byte = 0
	rpcTypeRequestVote     byte = 1
	rpcTypeInstallSnapshot byte = 2
	rpcTypeTimeoutNow      byte = 3
	rpcTypeRequestPreVote  byte = 4
)

// errRPCRefused is wrapped by the error an rpcGuard's Read returns once it
// has refused a request. (Its text must not say "closed", "reset" or "EOF",
// or transportLogger would log a refusal as a routine end of connection.)
var errRPCRefused = errors.New("raft: inbound transport rpc refused")

// rpcTypeName names a request type byte for error messages.
func rpcTypeName(t byte) string {
	switch t {
	case rpcTypeAppendEntries:
		return "AppendEntries"
	case rpcTypeRequestVote:
		return "RequestVote"
	case rpcTypeInstallSnapshot:
		return "InstallSnapshot"
	case rpcTypeTimeoutNow:
		return "TimeoutNow"
	case rpcTypeRequestPreVote:
		return "RequestPreVote"
	}
	return fmt.Sprintf("unknown type %d", t)
}

// guardPhase is where in the inbound stream the guard is.
type guardPhase uint8

const (
	phaseType     guardPhase = iota // expecting the type byte of a request
	phaseValue                      // inside a request value
	phaseSnapshot                   // passing InstallSnapshot data through
	phaseEnd                        // after snapshot data: the stream is over
	phaseRefused                    // a request was refused
)

// bodyUse says what the scanner does with the bytes of a str, bin or ext
// body it is inside.
type bodyUse uint8

const (
	bodySkip  bodyUse = iota // count them
	bodyKey                  // collect them into key (a map key)
	bodyMatch                // compare them with the remote peer ID
)

// fieldRole is what the decoder will do with the value of a top-level key.
type fieldRole uint8

const (
	roleOther fieldRole = iota
	roleID              // RPCHeader.ID
	roleAddr            // RPCHeader.Addr
	roleSize            // InstallSnapshotRequest.Size
)

// guardFrame is an open map or array.
type guardFrame struct {
	left  uint32 // items still to come; a map counts keys and values
	isMap bool
}

// rpcGuard is the net.Conn described at the top of this file. Read is
// serialised by mu; every other method goes straight to the inner conn.
type rpcGuard struct {
	net.Conn // the inner connection: Write, Close, addresses, deadlines
	remote   peer.ID
	want     string // remote.String(): Raft server IDs and addresses are peer ID strings
	admit    func(rpcType byte, id peer.ID) error

	mu sync.Mutex
	// buf[out:scan] is scanned and may be handed out; buf[scan:end] has
	// been read from the inner conn and is not scanned yet.
	buf            [rpcGuardBufSize]byte
	out, scan, end int
	readErr        error // from the inner conn, returned once buf is drained
	err            error // the refusal, returned by every Read after it

	phase   guardPhase
	rpcType byte
	left    uint64 // snapshot bytes (phaseSnapshot) or body bytes still to come
	use     bodyUse
	matched int // bytes of the remote ID compared so far (bodyMatch)
	key     [rpcGuardMaxKey]byte
	keyLen  int
	role    fieldRole // of the next top-level value
	stack   [rpcGuardMaxDepth]guardFrame
	depth   int
	sawID   bool
	sawAddr bool
	sawSize bool
	size    int64
}

// newRPCGuard wraps an inbound transport connection from remote. admit is
// asked once per request, with the request type and remote, before any byte
// of the request reaches the reader; an error refuses the request.
// A nil admit admits every peer; only the header checks then apply.
func newRPCGuard(c net.Conn, remote peer.ID, admit func(rpcType byte, id peer.ID) error) net.Conn {
	return &rpcGuard{Conn: c, remote: remote, want: remote.String(), admit: admit}
}

// Read hands out scanned bytes, reading and scanning more as needed.
func (g *rpcGuard) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if g.out < g.scan {
			n := copy(p, g.buf[g.out:g.scan])
			g.out += n
			return n, nil
		}
		switch g.phase {
		case phaseRefused:
			return 0, g.err
		case phaseEnd:
			return 0, io.EOF
		}
		if g.scan < g.end && g.scanBuffered() {
			continue
		}
		// Everything read so far is handed out, except at most the
		// first bytes of a msgpack head: more input is needed.
		if err := g.readErr; err != nil {
			g.readErr = nil
			return 0, err
		}
		if limit := g.directLimit(); limit > 0 {
			return g.readDirect(p, limit)
		}
		g.fill()
	}
}

// directLimit is how many bytes Read may take from the inner conn straight
// into the caller's buffer, skipping the copy through buf: bytes the guard
// only counts (snapshot data, the body of a str or bin it does not look
// into). Never the last byte of a body, which may complete the request
// value, and nothing while buf holds unscanned bytes, which come first.
func (g *rpcGuard) directLimit() uint64 {
	if g.scan != g.end {
		return 0
	}
	switch {
	case g.phase == phaseSnapshot:
		return g.left
	case g.phase == phaseValue && g.use == bodySkip && g.left > 1:
		return g.left - 1
	}
	return 0
}

// readDirect reads up to limit bytes of the inner conn into p; see
// directLimit.
func (g *rpcGuard) readDirect(p []byte, limit uint64) (int, error) {
	if uint64(len(p)) > limit {
		p = p[:limit]
	}
	n, err := g.Conn.Read(p)
	g.left -= uint64(n)
	if g.phase == phaseSnapshot && g.left == 0 {
		g.phase = phaseEnd
	}
	return n, err
}

// fill reads more of the inner conn into buf, after moving the unscanned
// tail (at most a partial msgpack head: everything before it has been
// handed out) to the front. A read error is kept in readErr, to be returned
// once the bytes read with it are handed out.
func (g *rpcGuard) fill() {
	g.end = copy(g.buf[:], g.buf[g.scan:g.end])
	g.out, g.scan = 0, 0
	// Like bufio, give up on a reader that keeps returning nothing.
	for range 100 {
		n, err := g.Conn.Read(g.buf[g.end:])
		g.end += n
		if err != nil {
			g.readErr = err
			return
		}
		if n > 0 {
			return
		}
	}
	g.readErr = io.ErrNoProgress
}

// scanBuffered scans buf[scan:end] as far as it can and reports whether it
// made progress: scanned bytes, or changed phase (refused, or reached the
// end of the stream).
func (g *rpcGuard) scanBuffered() bool {
	start, phase := g.scan, g.phase
	for g.scan < g.end {
		b := g.buf[g.scan:g.end]
		var n int
		switch {
		case g.phase == phaseType:
			n = g.scanType(b[0])
		case g.phase == phaseValue && g.left > 0:
			n = g.scanBody(b)
		case g.phase == phaseValue:
			n = g.scanHead(b)
		case g.phase == phaseSnapshot:
			n = g.scanSnapshot(b)
		}
		// 0: refused, past the end, or a msgpack head cut short.
		if n == 0 {
			break
		}
		g.scan += n
	}
	return g.scan != start || g.phase != phase
}

// scanType takes the type byte of a request and asks admit about it. It
// returns 1, or 0 when it refuses the request.
func (g *rpcGuard) scanType(t byte) int {
	g.rpcType = t
	if t > rpcTypeRequestPreVote {
		g.refuse("unknown request type", nil)
		return 0
	}
	if g.admit != nil {
		if err := g.admit(t, g.remote); err != nil {
			g.refuse("peer not admitted", err)
			return 0
		}
	}
	g.phase = phaseValue
	g.left, g.use, g.depth, g.role = 0, bodySkip, 0, roleOther
	g.sawID, g.sawAddr, g.sawSize, g.size = false, false, false, 0
	return 1
}

// scanSnapshot passes InstallSnapshot data through.
func (g *rpcGuard) scanSnapshot(b []byte) int {
	n := min(uint64(len(b)), g.left)
	g.left -= n
	if g.left == 0 {
		g.phase = phaseEnd
	}
	return int(n)
}

// scanHead takes the head of the next msgpack item of a request value. It
// returns the head's length, or 0 when b does not hold all of it yet or the
// item is refused.
func (g *rpcGuard) scanHead(b []byte) int {
	h, ok := parseHead(b)
	if !ok {
		return 0
	}
	if reason := g.beginItem(h); reason != "" {
		g.refuse(reason, nil)
		return 0
	}
	return h.size
}

// scanBody takes bytes of the str, bin or ext body the scanner is inside:
// it counts them, or collects a map key, or compares a header value with
// the remote peer ID. It returns how many it took, or 0 when it refuses.
func (g *rpcGuard) scanBody(b []byte) int {
	n := min(uint64(len(b)), g.left)
	if n == g.left && n > 1 && g.lastItem() {
		// This body ends the request, so its last byte waits for the
		// checks; the bytes before it need not, and get a step of their
		// own.
		n--
	}
	chunk := b[:n]
	switch g.use {
	case bodyKey:
		for _, c := range chunk {
			if c >= 0x80 {
				g.refuse("map key is not ASCII", nil)
				return 0
			}
		}
		g.keyLen += copy(g.key[g.keyLen:], chunk)
	case bodyMatch:
		if string(chunk) != g.want[g.matched:g.matched+len(chunk)] {
			g.refuse(g.role.mismatch(), nil)
			return 0
		}
		g.matched += len(chunk)
	}
	g.left -= uint64(len(chunk))
	if g.left == 0 {
		if reason := g.bodyDone(); reason != "" {
			g.refuse(reason, nil)
			return 0
		}
	}
	return len(chunk)
}

// beginItem checks the head of an item against where it stands in the
// request value, and enters it. It returns why it refuses the item, or "".
func (g *rpcGuard) beginItem(h mpHead) string {
	if g.depth == 0 {
		return g.beginRequest(h)
	}
	top := &g.stack[g.depth-1]
	if top.isMap && top.left%2 == 0 {
		return g.beginKey(h)
	}
	if g.depth == 1 {
		switch g.role {
		case roleID, roleAddr:
			return g.beginHeaderValue(h)
		case roleSize:
			return g.takeSize(h)
		}
	}
	return g.beginOther(h)
}

// beginRequest enters the request value itself, which must be a map: the
// decoder would also take the array form of a struct, or nil, which carry
// no field names to check.
func (g *rpcGuard) beginRequest(h mpHead) string {
	if h.kind != mpMap {
		return "request is not a map"
	}
	if h.n == 0 || h.n > rpcGuardMaxFields {
		return "request map size out of range"
	}
	g.stack[0] = guardFrame{left: 2 * uint32(h.n), isMap: true}
	g.depth = 1
	return ""
}

// beginKey enters a map key. The decoder reads struct field names as str
// or bin (also from nil or an array of bytes, which are refused here).
func (g *rpcGuard) beginKey(h mpHead) string {
	if h.kind != mpBlob || h.n == 0 || h.n > rpcGuardMaxKey {
		return "map key is not a short str or bin"
	}
	g.use, g.left, g.keyLen = bodyKey, h.n, 0
	return ""
}

// beginHeaderValue enters the value of a top-level ID or Addr, which must
// be a str or bin holding exactly the remote peer ID.
func (g *rpcGuard) beginHeaderValue(h mpHead) string {
	if h.kind != mpBlob || h.n != uint64(len(g.want)) || h.n == 0 {
		return g.role.mismatch()
	}
	g.use, g.left, g.matched = bodyMatch, h.n, 0
	return ""
}

// takeSize takes InstallSnapshot's Size, the length of the snapshot data
// that follows the request. It must be an integer the decoder reads as a
// non-negative int64, given once.
func (g *rpcGuard) takeSize(h mpHead) string {
	g.role = roleOther
	if h.kind != mpInt || h.i < 0 || g.sawSize {
		return "bad InstallSnapshot Size"
	}
	g.size, g.sawSize = h.i, true
	return g.itemDone()
}

// beginOther enters any other item, within the limits.
func (g *rpcGuard) beginOther(h mpHead) string {
	switch h.kind {
	case mpScalar, mpInt:
		return g.itemDone()
	case mpBlob, mpExt:
		if h.n > rpcGuardMaxBlob {
			return "str, bin or ext over the size limit"
		}
		if h.n == 0 {
			return g.itemDone()
		}
		g.use, g.left = bodySkip, h.n
		return ""
	case mpArray, mpMap:
		if g.depth == rpcGuardMaxDepth {
			return "nesting over the depth limit"
		}
		if h.n > rpcGuardMaxItems {
			return "array or map over the size limit"
		}
		if h.n == 0 {
			return g.itemDone()
		}
		left := uint32(h.n)
		if h.kind == mpMap {
			left *= 2
		}
		g.stack[g.depth] = guardFrame{left: left, isMap: h.kind == mpMap}
		g.depth++
		return ""
	}
	return "invalid msgpack byte"
}

// bodyDone ends the body the scanner was inside.
func (g *rpcGuard) bodyDone() string {
	switch g.use {
	case bodyKey:
		if g.depth == 1 {
			g.role = g.keyRole()
		}
	case bodyMatch:
		if g.role == roleID {
			g.sawID = true
		} else {
			g.sawAddr = true
		}
		g.role = roleOther
	}
	g.use = bodySkip
	return g.itemDone()
}

// keyRole tells what the decoder does with the value of the top-level key
// just collected. Keys are ASCII, so the decoder matches field names
// exactly, as this does.
func (g *rpcGuard) keyRole() fieldRole {
	switch string(g.key[:g.keyLen]) {
	case "ID":
		return roleID
	case "Addr":
		return roleAddr
	case "Size":
		if g.rpcType == rpcTypeInstallSnapshot {
			return roleSize
		}
	}
	return roleOther
}

// lastItem reports whether the item the scanner is inside is the last of
// the request value: the last one of every open container.
func (g *rpcGuard) lastItem() bool {
	for _, f := range g.stack[:g.depth] {
		if f.left != 1 {
			return false
		}
	}
	return true
}

// itemDone counts a finished item in the containers it closes, and checks
// the request when it was the last one.
func (g *rpcGuard) itemDone() string {
	for g.depth > 0 {
		top := &g.stack[g.depth-1]
		top.left--
		if top.left > 0 {
			return ""
		}
		g.depth--
	}
	return g.requestDone()
}

// requestDone checks a complete request value. The byte that completed it
// is not handed out yet: when this refuses, the decoder never sees it.
func (g *rpcGuard) requestDone() string {
	if !g.sawID {
		return "request has no ID"
	}
	if !g.sawAddr {
		return "request has no Addr"
	}
	if g.rpcType != rpcTypeInstallSnapshot {
		g.phase = phaseType
		return ""
	}
	if !g.sawSize {
		return "InstallSnapshot has no Size"
	}
	g.left, g.use = uint64(g.size), bodySkip
	g.phase = phaseSnapshot
	if g.left == 0 {
		g.phase = phaseEnd
	}
	return ""
}

// mismatch is why a header value is refused.
func (r fieldRole) mismatch() string {
	if r == roleID {
		return "header ID is not the stream's peer"
	}
	return "header Addr is not the stream's peer"
}

// refuse ends the connection: every Read from now on returns the error, and
// the inner conn is reset (or closed where it cannot be reset).
func (g *rpcGuard) refuse(reason string, cause error) {
	if cause != nil {
		g.err = fmt.Errorf("%w: %s (%s from %s): %w", errRPCRefused, reason, rpcTypeName(g.rpcType), g.want, cause)
	} else {
		g.err = fmt.Errorf("%w: %s (%s from %s)", errRPCRefused, reason, rpcTypeName(g.rpcType), g.want)
	}
	g.phase = phaseRefused
	if r, ok := g.Conn.(interface{ Reset() error }); ok {
		_ = r.Reset()
	} else {
		_ = g.Conn.Close()
	}
}

// mpKind is the shape of a msgpack item, as far as the scanner cares.
type mpKind uint8

const (
	mpScalar  mpKind = iota // nil, bool, float: complete in its head
	mpInt                   // an integer: complete in its head
	mpBlob                  // str or bin: n bytes follow the head
	mpExt                   // ext, fixext: n bytes follow the head (which holds the ext type)
	mpArray                 // n items follow
	mpMap                   // n key/value pairs follow
	mpInvalid               // 0xc1, which msgpack never uses
)

// mpHead is the head of a msgpack item.
type mpHead struct {
	kind mpKind
	size int    // bytes in the head
	n    uint64 // body length (mpBlob, mpExt) or item count (mpArray, mpMap)
	i    int64  // mpInt: the value, as the decoder's DecodeInt64 reads it
}

// mpHeadSize is the length of the head of the items whose first byte is
// 0xc0+i, payload of numbers included.
var mpHeadSize = [32]int{
	1, 1, 1, 1, // nil, (unused), false, true
	2, 3, 5, // bin8, bin16, bin32
	3, 4, 6, // ext8, ext16, ext32: length, then the ext type
	5, 9, // float32, float64
	2, 3, 5, 9, // uint8..uint64
	2, 3, 5, 9, // int8..int64
	2, 2, 2, 2, 2, // fixext1..fixext16: the ext type
	2, 3, 5, // str8, str16, str32
	3, 5, // array16, array32
	3, 5, // map16, map32
}

// parseHead reads the head of the msgpack item that b starts with; ok is
// false when b is too short to hold all of it.
func parseHead(b []byte) (h mpHead, ok bool) {
	t := b[0]
	switch {
	case t <= 0x7f: // positive fixint
		return mpHead{kind: mpInt, size: 1, i: int64(t)}, true
	case t <= 0x8f: // fixmap
		return mpHead{kind: mpMap, size: 1, n: uint64(t & 0x0f)}, true
	case t <= 0x9f: // fixarray
		return mpHead{kind: mpArray, size: 1, n: uint64(t & 0x0f)}, true
	case t <= 0xbf: // fixstr
		return mpHead{kind: mpBlob, size: 1, n: uint64(t & 0x1f)}, true
	case t >= 0xe0: // negative fixint
		return mpHead{kind: mpInt, size: 1, i: int64(int8(t))}, true
	}
	h.size = mpHeadSize[t-0xc0]
	if len(b) < h.size {
		return h, false
	}
	switch t {
	case 0xc0, 0xc2, 0xc3, 0xca, 0xcb:
		h.kind = mpScalar
	case 0xc1:
		h.kind = mpInvalid
	case 0xc4, 0xd9:
		h.kind, h.n = mpBlob, uint64(b[1])
	case 0xc5, 0xda:
		h.kind, h.n = mpBlob, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xc6, 0xdb:
		h.kind, h.n = mpBlob, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xc7:
		h.kind, h.n = mpExt, uint64(b[1])
	case 0xc8:
		h.kind, h.n = mpExt, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xc9:
		h.kind, h.n = mpExt, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xcc:
		h.kind, h.i = mpInt, int64(b[1])
	case 0xcd:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint16(b[1:]))
	case 0xce:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint32(b[1:]))
	case 0xcf: // a uint64 over MaxInt64 reads as negative, as in the decoder
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint64(b[1:]))
	case 0xd0:
		h.kind, h.i = mpInt, int64(int8(b[1]))
	case 0xd1:
		h.kind, h.i = mpInt, int64(int16(binary.BigEndian.Uint16(b[1:])))
	case 0xd2:
		h.kind, h.i = mpInt, int64(int32(binary.BigEndian.Uint32(b[1:])))
	case 0xd3:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint64(b[1:]))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		h.kind, h.n = mpExt, 1<<(t-0xd4)
	case 0xdc:
		h.kind, h.n = mpArray, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdd:
		h.kind, h.n = mpArray, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xde:
		h.kind, h.n = mpMap, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdf:
		h.kind, h.n = mpMap, uint64(binary.BigEndian.Uint32(b[1:]))
	}
	return h, true
}

// Write, Close, the addresses and the deadlines are the inner conn's
// (embedded); Read is the guard's.
var _ net.Conn = (*rpcGuard)(nil)
