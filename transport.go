package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/gostream"
)

// transportPoolSize is how many idle connections the transport keeps to each
// peer. Pooling matters: without it every heartbeat and append would open a
// new libp2p stream.
const transportPoolSize = 4

// layerConfig is what a stream layer works with besides its host. Every
// field may be left zero.
type layerConfig struct {
	// resolve, when set, makes sure the host knows how to reach a peer
	// before it is dialled (for example by asking discovery).
	resolve func(ctx context.Context, id peer.ID)
	// lookup, when set, asks discovery for a peer's current addresses and
	// reports whether it found any; Dial uses it once after a failed dial,
	// at most once per lookupInterval per peer.
	lookup func(ctx context.Context, id peer.ID) bool
	// secure, when set, wraps every connection (encryption).
	secure func(net.Conn) (net.Conn, error)
	// admit, when set, decides whether an inbound RPC may reach Raft (see
	// admitRPC); isMember tells whether a peer is a server of the current
	// configuration, which sets how many inbound streams it may hold.
	admit    func(rpcType byte, from peer.ID) error
	isMember func(id peer.ID) bool
	// dialed, when set, hears of every stream opened to a peer: the peer
	// is reachable (it ends an outage in the log, logging_raft.go).
	dialed func(id peer.ID)
	logger hclog.Logger
}

// streamLayer carries Raft RPC on libp2p streams of TransportProtocol(ns).
// Raft addresses are peer ID strings; libp2p finds the peer's multiaddrs in
// the peerstore (or through the resolver when it has none).
type streamLayer struct {
	layerConfig
	host     host.Host
	protocol protocol.ID
	// listener hands Raft the inbound streams the layer admitted (see
	// handle).
	listener net.Listener

	lookupMu   sync.Mutex
	lastLookup map[peer.ID]time.Time

	// gate spaces out the dials of a peer that stays unreachable (see
	// dialgate.go).
	gate dialGate

	connMu     sync.Mutex
	closed     bool
	conns      map[*layerConn]struct{} // every open stream, to close on Close
	inbound    map[peer.ID]int         // open inbound streams per peer
	nonMembers int                     // open inbound streams from non-members
}

// Inbound transport streams are capped: hashicorp serves every accepted
// stream with its own goroutine and a 256 KiB read buffer, held until the
// stream ends, so a peer opening streams and leaving them idle would
// otherwise grow the member without bound.
const (
	// transportStreamsPerPeer caps one peer's open inbound streams. Raft
	// needs a few per peer (a pooled stream for appends, one for
	// heartbeats, one for a snapshot); more is refused.
	transportStreamsPerPeer = 8
	// transportStreamsNonMembers caps the inbound streams of all peers
	// outside the configuration together: joining nodes, a candidate whose
	// membership this member has not learned yet.
	transportStreamsNonMembers = 16
	// transportIdleTimeout closes an inbound stream that carries nothing for
	// this long. Pooled streams are busy (heartbeats) or quickly redialled.
	transportIdleTimeout = 2 * time.Minute
)

// newStreamLayer serves TransportProtocol streams on h (replacing any
// handler of proto) and dials them.
func newStreamLayer(h host.Host, proto protocol.ID, cfg layerConfig) *streamLayer {
	l := newInboundListener(h, proto)
	s := &streamLayer{layerConfig: cfg, host: h, protocol: proto, listener: l}
	h.SetStreamHandler(proto, s.handle)
	return s
}

// Dial opens a stream to the peer named by address.
func (s *streamLayer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	id, err := peer.Decode(string(address))
	if err != nil {
		return nil, fmt.Errorf("raft: transport address %q is not a peer ID: %w", address, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	connected := s.host.Network().Connectedness(id) == network.Connected
	if !connected && !s.gate.allow(id, time.Now()) {
		return nil, fmt.Errorf("%w: %s", errDialGated, id)
	}
	if s.resolve != nil {
		s.resolve(ctx, id)
	}
	// Raft backs off between retries itself and the gate spaces out the
	// dials of a peer that stays down; libp2p's own dial backoff would
	// keep a restarted peer unreachable for seconds more.
	c, err := gostream.Dial(network.WithForceDirectDial(ctx, "raft"), s.host, id, s.protocol)
	if err != nil && s.mayLookup(ctx, id) && s.lookup(ctx, id) {
		// The peer may have restarted at another address while the
		// peerstore still holds the old one: dial again with what
		// discovery knows now, instead of waiting for the next round of
		// peer exchange to bring it.
		c, err = gostream.Dial(network.WithForceDirectDial(ctx, "raft"), s.host, id, s.protocol)
	}
	if err != nil {
		if s.host.Network().Connectedness(id) != network.Connected {
			s.gate.failed(id, time.Now())
		}
		return nil, err
	}
	s.gate.reached(id)
	w, err := s.wrap(c)
	if err != nil {
		return nil, err
	}
	if s.dialed != nil {
		s.dialed(id)
	}
	return s.track(w, c, id, false)
}

// errDialGated refuses a dial of a peer that has been unreachable for a
// while, until the gate lets the next one out (see dialWait).
var errDialGated = errors.New("raft: peer unreachable, next dial later")

// lookupInterval bounds how often a failed dial may ask discovery about the
// same peer: Raft keeps dialling a peer that is down, and a lookup can be a
// DHT query.
const lookupInterval = time.Second

// mayLookup reports whether a failed dial to id should ask discovery for its
// addresses now: there is a lookup, time left, no live connection to id
// (then the peer is up but refused the stream) and no lookup of id in the
// last lookupInterval.
func (s *streamLayer) mayLookup(ctx context.Context, id peer.ID) bool {
	if s.lookup == nil || ctx.Err() != nil || s.host.Network().Connectedness(id) == network.Connected {
		return false
	}
	s.lookupMu.Lock()
	defer s.lookupMu.Unlock()
	now := time.Now()
	if last, ok := s.lastLookup[id]; ok && now.Sub(last) < lookupInterval {
		return false
	}
	if s.lastLookup == nil {
		s.lastLookup = map[peer.ID]time.Time{}
	}
	s.lastLookup[id] = now
	return true
}

// Accept waits for the next inbound stream that handle admitted.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.listener.Accept()
	if err != nil {
		return nil, net.ErrClosed
	}
	return c, nil
}

// handle takes an inbound stream, in the libp2p handler's own goroutine.
// Streams over their peer's cap are reset at once, before any key
// derivation or buffer, and many at a time: a flood costs each stream
// next to nothing and never queues behind Raft's one accept loop. The
// others are decrypted (with a key), checked RPC by RPC (rpcGuard: the
// header names the stream's peer, and admit agrees), closed after
// transportIdleTimeout without traffic, and handed to Accept.
func (s *streamLayer) handle(st network.Stream) {
	from := st.Conn().RemotePeer()
	if s.full(from) {
		_ = st.Reset()
		return
	}
	raw := &streamConn{Stream: st}
	w, err := s.wrap(raw)
	if err != nil {
		if s.logger != nil {
			s.logger.Warn("refused transport connection", "peer", from, "error", err)
		}
		return
	}
	w = &idleConn{Conn: newRPCGuard(w, from, s.admit), idle: transportIdleTimeout}
	t, err := s.track(w, raw, from, true)
	if err != nil {
		if s.logger != nil {
			s.logger.Debug("refused transport stream", "peer", from, "error", err)
		}
		return
	}
	if l, ok := s.listener.(*inboundListener); !ok || !l.deliver(t) {
		t.(*layerConn).reset()
	}
}

// errTransportFull refuses an inbound stream over its peer's cap.
var errTransportFull = errors.New("raft: too many transport streams")

// full tells whether an inbound stream from id would be over its cap now
// (track checks again when it records the stream).
func (s *streamLayer) full(id peer.ID) bool {
	member := s.isMember == nil || s.isMember(id)
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.closed || s.inbound[id] >= transportStreamsPerPeer || (!member && s.nonMembers >= transportStreamsNonMembers)
}

// track records an open stream c (raw is the libp2p stream under its
// wrappers, so Close can reset it) and, for inbound ones, enforces the caps.
func (s *streamLayer) track(c, raw net.Conn, id peer.ID, inbound bool) (net.Conn, error) {
	member := !inbound || s.isMember == nil || s.isMember(id)
	lc := &layerConn{Conn: c, raw: raw, layer: s, peer: id, inbound: inbound, member: member}
	s.connMu.Lock()
	var err error
	switch {
	case s.closed:
		err = net.ErrClosed
	case inbound && s.inbound[id] >= transportStreamsPerPeer,
		inbound && !member && s.nonMembers >= transportStreamsNonMembers:
		err = fmt.Errorf("%w from %s", errTransportFull, id)
	default:
		if s.conns == nil {
			s.conns, s.inbound = map[*layerConn]struct{}{}, map[peer.ID]int{}
		}
		s.conns[lc] = struct{}{}
		if inbound {
			s.inbound[id]++
			if !member {
				s.nonMembers++
			}
		}
	}
	s.connMu.Unlock()
	if err != nil {
		lc.reset() // outside the lock: a stream's close can wait on the network
		return nil, err
	}
	return lc, nil
}

// untrack forgets a closed stream.
func (s *streamLayer) untrack(lc *layerConn) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if _, ok := s.conns[lc]; !ok {
		return
	}
	delete(s.conns, lc)
	if lc.inbound {
		if s.inbound[lc.peer]--; s.inbound[lc.peer] <= 0 {
			delete(s.inbound, lc.peer)
		}
		if !lc.member {
			s.nonMembers--
		}
	}
}

// closeStreams resets every open stream, inbound and outbound, so that no
// Raft goroutine stays blocked on one, and makes later dials and accepts
// fail. Reset, not Close: closing a stream to a stalled peer can wait on the
// network for seconds.
func (s *streamLayer) closeStreams() {
	s.connMu.Lock()
	s.closed = true
	conns := make([]*layerConn, 0, len(s.conns))
	for lc := range s.conns {
		conns = append(conns, lc)
	}
	s.connMu.Unlock()
	for _, lc := range conns {
		lc.reset()
	}
}

// layerConn is a stream the layer tracks.
type layerConn struct {
	net.Conn
	raw     net.Conn // the libp2p stream under the wrappers
	layer   *streamLayer
	peer    peer.ID
	inbound bool
	member  bool
	once    sync.Once
}

// Close closes the stream and forgets it.
func (c *layerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.layer.untrack(c) })
	return err
}

// reset aborts the stream at once (where it can) and forgets it.
func (c *layerConn) reset() {
	if r, ok := c.raw.(interface{ Reset() error }); ok {
		_ = r.Reset()
	}
	_ = c.Close()
}

// idleConn closes a stream that carries nothing for idle: every Read gets a
// fresh deadline. hashicorp sets none on inbound streams.
type idleConn struct {
	net.Conn
	idle time.Duration
}

// Read reads with a deadline of idle from now.
func (c *idleConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (s *streamLayer) wrap(c net.Conn) (net.Conn, error) {
	if s.secure == nil {
		return c, nil
	}
	w, err := s.secure(c)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return w, nil
}

// Close stops accepting streams.
func (s *streamLayer) Close() error { return s.listener.Close() }

// Addr is the local peer ID.
func (s *streamLayer) Addr() net.Addr { return s.listener.Addr() }

// transportTimeout is the I/O deadline of Raft RPC: well above the heartbeat
// on slow presets, so a slow link is not cut mid-append.
func transportTimeout(t TimeoutConfig) time.Duration {
	d := 10 * time.Second
	if x := 5 * t.ElectionTimeout; x > d {
		d = x
	}
	return d
}

func newNetworkTransport(layer *streamLayer, timeout time.Duration, logger hclog.Logger) *hraft.NetworkTransport {
	return hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: transportPoolSize,
		Timeout: timeout,
		Logger:  transportLogger{Logger: logger, refusals: newLogLimiter(refusedLogInterval)},
		// No pipelining: hashicorp's pipeline can deadlock when a follower
		// answers Success=false while the pipeline is full (hashicorp/raft
		// #612): the leader keeps heartbeating that follower but never
		// sends it another entry, and Shutdown waits for it forever. One
		// RPC in flight makes Raft replicate with plain AppendEntries,
		// which batches up to MaxAppendEntries per round trip.
		MaxRPCsInFlight: 1,
	})
}

// transportLogger demotes the transport's report of a connection that ended
// (a peer closed its cluster, a pooled stream was reset) from an error to a
// debug line: it is routine on libp2p streams, and it drowned real errors.
type transportLogger struct {
	hclog.Logger
	refusals *logLimiter
}

// Error logs at debug level when the error only says the connection ended.
func (l transportLogger) Error(msg string, args ...interface{}) {
	if msg == "failed to decode incoming command" && refusedRPC(args) {
		// A peer without the key, or an RPC the guard refused: one line a
		// minute says so (hashicorp's line does not name the peer; the
		// guard's error does).
		if ok, suppressed := l.refusals.allow("refused", time.Now()); ok {
			l.Logger.Warn("refused transport stream", append(args, "refused_since_last_line", suppressed)...)
			return
		}
		l.Logger.Debug(msg, args...)
		return
	}
	if msg == "failed to decode incoming command" && connectionEnded(args) {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Error(msg, args...)
}

// refusedRPC tells whether the error is the guard's refusal or a failed
// decryption (hashicorp's decode error does not wrap them, so they are found
// by their text).
func refusedRPC(args []interface{}) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && (errors.Is(err, errRPCRefused) || errors.Is(err, ErrDecrypt) ||
			strings.Contains(err.Error(), errRPCRefused.Error()) || strings.Contains(err.Error(), ErrDecrypt.Error())) {
			return true
		}
	}
	return false
}

func connectionEnded(args []interface{}) bool {
	for _, a := range args {
		err, ok := a.(error)
		if !ok {
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, network.ErrReset) {
			return true
		}
		msg := err.Error()
		for _, s := range []string{"closed", "reset", "shutdown", "EOF"} {
			if strings.Contains(msg, s) {
				return true
			}
		}
	}
	return false
}

var _ io.Closer = (*streamLayer)(nil)
