package p2pnode

import (
	"github.com/libp2p/go-libp2p"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
)

// Per-peer caps of DefaultResourceLimits. libp2p's own defaults grow every
// limit with the machine's memory, per-peer ones included: on a large
// machine one remote peer may hold well over a thousand streams. These caps
// do not grow. They bound what a single peer, hostile or broken, can hold on
// a node, whatever the machine, while leaving room for what a cluster member
// legitimately uses on one peer:
//
//   - Raft's transport keeps up to 4 pooled streams per peer in each
//     direction, plus a few in flight (pipelined appends, heartbeats, votes,
//     a snapshot);
//   - the command protocol uses one short-lived stream per request: a
//     client's calls, the writes a follower forwards to the leader, peer
//     exchange, joins;
//   - the DHT, identify and ping use a few more (libp2p caps identify and
//     ping per peer itself).
//
// A peer that goes over a cap has its new streams reset
// (network.StreamResourceLimitExceeded), which callers in package raft treat
// as "not sent": nothing is applied, and a client moves on to another member.
const (
	// PeerMaxConns is the most connections one peer may have with a node,
	// per direction and in all. It is libp2p's own default: one is what a
	// peer needs, two happen when both sides dial at once, and 8 matches the
	// number of concurrent dials libp2p makes to one peer.
	PeerMaxConns = 8

	// PeerMaxStreamsInbound is the most streams one peer may have open to a
	// node at once, over all protocols: ProtocolPeerMaxStreamsInbound on one
	// protocol plus as much again for everything else. libp2p's default
	// starts at the same 256 but grows by 128 per GiB of its memory budget.
	PeerMaxStreamsInbound = 256
	// PeerMaxStreamsOutbound is the most streams a node opens to one peer
	// at once. Outbound streams are the node's own doing; the cap matches
	// the inbound one, which is what the peer enforces anyway.
	PeerMaxStreamsOutbound = 256
	// PeerMaxStreams caps both directions together.
	PeerMaxStreams = PeerMaxStreamsInbound + PeerMaxStreamsOutbound

	// ProtocolPeerMaxStreamsInbound is the most streams one peer may have
	// open to a node on any one protocol (Raft's transport, its command
	// protocol, the DHT, ...). 128 is twice the concurrency of this
	// repository's throughput benchmarks (64 writers through one member)
	// and far above the handful of streams the Raft transport pools.
	// libp2p's default is 64 plus 4 per GiB.
	ProtocolPeerMaxStreamsInbound = 128
	// ProtocolPeerMaxStreamsOutbound is the same cap for the streams a node
	// opens to one peer on one protocol.
	ProtocolPeerMaxStreamsOutbound = 128
	// ProtocolPeerMaxStreams caps both directions together.
	ProtocolPeerMaxStreams = ProtocolPeerMaxStreamsInbound + ProtocolPeerMaxStreamsOutbound

	// PeerMaxMemory is the most memory the streams of one peer may reserve.
	// The stream multiplexer (yamux) reserves a 256 KiB receive window per
	// stream from the peer's budget and grows the windows of busy streams
	// while less than half of it is used: 128 MiB holds the initial windows
	// of PeerMaxStreams streams, so the stream caps above, not memory, are
	// what a peer runs into first. libp2p's default is 64 MiB plus 128 MiB
	// per GiB of its memory budget.
	PeerMaxMemory = 128 << 20
)

// DefaultResourceLimits returns the resource manager limits New uses unless
// Config.ResourceLimits or Config.ResourceManager says otherwise: libp2p's
// defaults (rcmgr.DefaultLimits with libp2p.SetDefaultServiceLimits, scaled
// to the machine by AutoScale, exactly as libp2p.New would set them up),
// with the per-peer caps above, which do not scale.
//
// The node-wide limits stay libp2p's: they scale with the machine and, for
// example, let a node keep connections to a few hundred peers at once, which
// covers meshes of dozens of nodes in one test process (every node has its
// own resource manager). Connections from the loopback network are exempt
// from libp2p's per-IP connection and rate limits.
//
// To raise a limit, start from this configuration:
//
//	partial := p2pnode.DefaultResourceLimits().ToPartialLimitConfig()
//	partial.PeerDefault.StreamsInbound = 1024
//	limits := partial.Build(p2pnode.DefaultResourceLimits())
//	cfg.ResourceLimits = &limits
//
// To switch limits off altogether, set Config.ResourceLimits to
// &rcmgr.InfiniteLimits.
func DefaultResourceLimits() rcmgr.ConcreteLimitConfig {
	limits := rcmgr.DefaultLimits // a copy; its maps are nil until the next line
	libp2p.SetDefaultServiceLimits(&limits)

	limits.PeerBaseLimit = rcmgr.BaseLimit{
		ConnsInbound:    PeerMaxConns,
		ConnsOutbound:   PeerMaxConns,
		Conns:           PeerMaxConns,
		StreamsInbound:  PeerMaxStreamsInbound,
		StreamsOutbound: PeerMaxStreamsOutbound,
		Streams:         PeerMaxStreams,
		Memory:          PeerMaxMemory,
		// libp2p's file descriptor share per peer, which does scale with the
		// process's descriptor limit (FDFraction below): a peer's TCP
		// connections each take one.
		FD: rcmgr.DefaultLimits.PeerBaseLimit.FD,
	}
	limits.PeerLimitIncrease = rcmgr.BaseLimitIncrease{
		FDFraction: rcmgr.DefaultLimits.PeerLimitIncrease.FDFraction,
	}
	limits.ProtocolPeerBaseLimit = rcmgr.BaseLimit{
		StreamsInbound:  ProtocolPeerMaxStreamsInbound,
		StreamsOutbound: ProtocolPeerMaxStreamsOutbound,
		Streams:         ProtocolPeerMaxStreams,
		Memory:          rcmgr.DefaultLimits.ProtocolPeerBaseLimit.Memory,
	}
	limits.ProtocolPeerLimitIncrease = rcmgr.BaseLimitIncrease{}
	return limits.AutoScale()
}
