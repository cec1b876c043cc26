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

// streamLayer carries Raft RPC on libp2p streams of TransportProtocol(ns).
// Raft addresses are peer ID strings; libp2p finds the peer's multiaddrs in
// the peerstore (or through the resolver when it has none).
type streamLayer struct {
	host     host.Host
	protocol protocol.ID
	listener net.Listener
	// resolve, when set, makes sure the host knows how to reach a peer
	// before it is dialled (for example by asking discovery).
	resolve func(ctx context.Context, id peer.ID)
	// lookup, when set, asks discovery for a peer's current addresses and
	// reports whether it found any; Dial uses it once after a failed dial,
	// at most once per lookupInterval per peer.
	lookup func(ctx context.Context, id peer.ID) bool

	lookupMu   sync.Mutex
	lastLookup map[peer.ID]time.Time
	// secure, when set, wraps every connection (encryption).
	secure func(net.Conn) (net.Conn, error)
	logger hclog.Logger
}

func newStreamLayer(h host.Host, proto protocol.ID) (*streamLayer, error) {
	l, err := gostream.Listen(h, proto)
	if err != nil {
		return nil, fmt.Errorf("raft: transport listen: %w", err)
	}
	return &streamLayer{host: h, protocol: proto, listener: l}, nil
}

// Dial opens a stream to the peer named by address.
func (s *streamLayer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	id, err := peer.Decode(string(address))
	if err != nil {
		return nil, fmt.Errorf("raft: transport address %q is not a peer ID: %w", address, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if s.resolve != nil {
		s.resolve(ctx, id)
	}
	// Raft backs off between retries itself; libp2p's own dial backoff
	// would keep a restarted peer unreachable for seconds more.
	c, err := gostream.Dial(network.WithForceDirectDial(ctx, "raft"), s.host, id, s.protocol)
	if err != nil && s.mayLookup(ctx, id) && s.lookup(ctx, id) {
		// The peer may have restarted at another address while the
		// peerstore still holds the old one: dial again with what
		// discovery knows now, instead of waiting for the next round of
		// peer exchange to bring it.
		c, err = gostream.Dial(network.WithForceDirectDial(ctx, "raft"), s.host, id, s.protocol)
	}
	if err != nil {
		return nil, err
	}
	return s.wrap(c)
}

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

// Accept waits for the next inbound stream.
func (s *streamLayer) Accept() (net.Conn, error) {
	for {
		c, err := s.listener.Accept()
		if err != nil {
			// gostream reports a closed listener as a context error; Raft's
			// accept loop wants to see the listener closed.
			return nil, net.ErrClosed
		}
		w, err := s.wrap(c)
		if err != nil {
			if s.logger != nil {
				s.logger.Warn("refused transport connection", "peer", c.RemoteAddr().String(), "error", err)
			}
			continue
		}
		return w, nil
	}
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
		Logger:  transportLogger{logger},
	})
}

// transportLogger demotes the transport's report of a connection that ended
// (a peer closed its cluster, a pooled stream was reset) from an error to a
// debug line: it is routine on libp2p streams, and it drowned real errors.
type transportLogger struct{ hclog.Logger }

// Error logs at debug level when the error only says the connection ended.
func (l transportLogger) Error(msg string, args ...interface{}) {
	if msg == "failed to decode incoming command" && connectionEnded(args) {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Error(msg, args...)
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
