package raft

import (
	"net"
	"sync"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// inboundListener is the net.Listener Raft's NetworkTransport accepts from.
// Unlike gostream.Listen, which parks every inbound stream in its handler
// until the single accept loop takes it (so a flood of streams queues
// without bound), it only carries streams the layer has already admitted
// and counted against their caps (streamLayer.handle); at most the caps'
// worth of handlers can wait on it.
type inboundListener struct {
	host  host.Host
	proto protocol.ID
	ch    chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newInboundListener(h host.Host, proto protocol.ID) *inboundListener {
	return &inboundListener{host: h, proto: proto, ch: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands c to Accept; false once the listener is closed (the caller
// then resets c).
func (l *inboundListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// Accept returns the next admitted stream, or net.ErrClosed once closed.
func (l *inboundListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops serving the protocol; streams waiting in deliver are reset by
// their handlers.
func (l *inboundListener) Close() error {
	l.once.Do(func() {
		l.host.RemoveStreamHandler(l.proto)
		close(l.done)
	})
	return nil
}

// Addr is the local peer ID.
func (l *inboundListener) Addr() net.Addr { return peerAddr(l.host.ID()) }

// streamConn is a libp2p stream as a net.Conn whose addresses are peer IDs,
// as gostream's are.
type streamConn struct {
	network.Stream
}

// LocalAddr is this host's peer ID.
func (c *streamConn) LocalAddr() net.Addr { return peerAddr(c.Stream.Conn().LocalPeer()) }

// RemoteAddr is the remote peer's ID.
func (c *streamConn) RemoteAddr() net.Addr { return peerAddr(c.Stream.Conn().RemotePeer()) }

// peerAddr is a peer ID as a net.Addr.
type peerAddr peer.ID

// Network names libp2p.
func (a peerAddr) Network() string { return "libp2p" }

// String is the peer ID's string form, which is also its Raft address.
func (a peerAddr) String() string { return peer.ID(a).String() }
