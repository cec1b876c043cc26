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

// Write, Close, the addresses and the deadlines are the inner conn's
// (embedded); Read is the guard's.
var _ net.Conn = (*rpcGuard)(nil)
