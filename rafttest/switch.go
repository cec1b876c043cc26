package rafttest

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/multiformats/go-multiaddr"
)

// Switch is the patch panel of a test network: it records which links
// between peers are cut, and enforces that on the hosts attached to it. Each
// host must be built with the gater returned by Gater so that no new
// connection crosses a cut link, and attached with Attach so that existing
// connections are dropped when a link is cut. Links are keyed by peer ID, so
// a cut survives a restart of either end. It is safe for concurrent use.
type Switch struct {
	mu    sync.Mutex
	cut   map[link]bool
	hosts map[peer.ID]host.Host
}

// link is an unordered pair of peers: a cut blocks both directions.
type link struct{ lo, hi peer.ID }

func linkOf(a, b peer.ID) link {
	if b < a {
		a, b = b, a
	}
	return link{a, b}
}

// NewSwitch returns a switch with every link up.
func NewSwitch() *Switch {
	return &Switch{cut: map[link]bool{}, hosts: map[peer.ID]host.Host{}}
}

// Cut takes the link between a and b down: neither may dial or accept the
// other any more, and the connections they have are closed, resetting their
// streams, before Cut returns.
func (s *Switch) Cut(a, b peer.ID) {
	if a == b {
		return
	}
	s.mu.Lock()
	s.cut[linkOf(a, b)] = true
	ha, hb := s.hosts[a], s.hosts[b]
	s.mu.Unlock()
	// The flag is set first, so a connection being established concurrently
	// either fails the gater or is closed by the Connected notification;
	// ClosePeer takes care of those established earlier.
	if ha != nil {
		_ = ha.Network().ClosePeer(b)
	}
	if hb != nil {
		_ = hb.Network().ClosePeer(a)
	}
}

// Heal brings the link between a and b back up. It does not reconnect them;
// the next dial does.
func (s *Switch) Heal(a, b peer.ID) {
	s.mu.Lock()
	delete(s.cut, linkOf(a, b))
	ha, hb := s.hosts[a], s.hosts[b]
	s.mu.Unlock()
	clearBackoff(ha, b)
	clearBackoff(hb, a)
}

// HealAll brings every link back up.
func (s *Switch) HealAll() {
	s.mu.Lock()
	healed := make([]link, 0, len(s.cut))
	for l := range s.cut {
		healed = append(healed, l)
	}
	clear(s.cut)
	hosts := make(map[peer.ID]host.Host, len(s.hosts))
	for id, h := range s.hosts {
		hosts[id] = h
	}
	s.mu.Unlock()
	for _, l := range healed {
		clearBackoff(hosts[l.lo], l.hi)
		clearBackoff(hosts[l.hi], l.lo)
	}
}

// IsCut reports whether the link between a and b is down.
func (s *Switch) IsCut(a, b peer.ID) bool {
	if a == b {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cut[linkOf(a, b)]
}

// clearBackoff forgets failed dials from h to p. A dial that failed while the
// link was cut (one racing with Cut gets past the dialer's gater and is
// refused by the other side) puts p's addresses into the swarm's dial backoff,
// which would make dials fail for seconds after Heal for no visible reason.
func clearBackoff(h host.Host, p peer.ID) {
	if h == nil {
		return
	}
	if sw, ok := h.Network().(*swarm.Swarm); ok {
		sw.Backoff().Clear(p)
	}
}

// Attach makes the switch enforce cuts on h's existing connections: Cut
// closes them, and a connection that races with Cut past the gater is closed
// as soon as it is established. The returned function detaches h again; call
// it before (or right after) closing h.
func (s *Switch) Attach(h host.Host) (detach func()) {
	self := h.ID()
	notifee := &network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			if s.IsCut(self, c.RemotePeer()) {
				// Not inline: the notification may be delivered while the
				// swarm holds locks that Close needs.
				go c.Close()
			}
		},
	}
	s.mu.Lock()
	s.hosts[self] = h
	s.mu.Unlock()
	h.Network().Notify(notifee)
	return func() {
		h.Network().StopNotify(notifee)
		s.mu.Lock()
		if s.hosts[self] == h {
			delete(s.hosts, self)
		}
		s.mu.Unlock()
	}
}

// Gater returns the connection gater for the host whose peer ID is self.
func (s *Switch) Gater(self peer.ID) connmgr.ConnectionGater {
	return &gater{s: s, self: self}
}

// gater refuses connections across cut links. Outbound dials are stopped
// before any packet is sent (InterceptPeerDial, InterceptAddrDial); inbound
// connections are refused once the remote peer is authenticated
// (InterceptSecured), the first point where its ID is known.
type gater struct {
	s    *Switch
	self peer.ID
}

var _ connmgr.ConnectionGater = (*gater)(nil)

func (g *gater) allowed(p peer.ID) bool { return !g.s.IsCut(g.self, p) }

// InterceptPeerDial implements connmgr.ConnectionGater.
func (g *gater) InterceptPeerDial(p peer.ID) bool { return g.allowed(p) }

// InterceptAddrDial implements connmgr.ConnectionGater.
func (g *gater) InterceptAddrDial(p peer.ID, _ multiaddr.Multiaddr) bool { return g.allowed(p) }

// InterceptAccept implements connmgr.ConnectionGater; the remote peer is not
// known yet at this point, so everything is accepted.
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

// InterceptSecured implements connmgr.ConnectionGater.
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.allowed(p)
}

// InterceptUpgraded implements connmgr.ConnectionGater. It re-checks because
// a link may have been cut during the muxer handshake.
func (g *gater) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	return g.allowed(c.RemotePeer()), 0
}
