// Package p2pnode builds a standalone libp2p node (host, datastore and
// peer discovery) that satisfies the Node interface consumed by package raft.
//
// It exists for deployments without a Taubyte node, for tests and for command
// line tools. A Node owns everything it opens and releases it in Close.
//
// Hostile peers: a node runs libp2p's resource manager with fixed per-peer
// caps on connections and streams (DefaultResourceLimits), so that one peer
// cannot take more than its share of a node; and with a Config.SwarmKey it
// joins a libp2p private network, which peers without the key cannot even
// connect to.
package p2pnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft/addrbook"
)

// DefaultListenAddrs are the addresses a node listens on when
// Config.ListenAddrs is empty: an ephemeral TCP and an ephemeral QUIC port on
// the loopback interface, so that a node started without configuration is
// never reachable from outside the machine by accident. A node with a
// Config.SwarmKey listens on the TCP one only.
var DefaultListenAddrs = []string{
	"/ip4/127.0.0.1/tcp/0",
	"/ip4/127.0.0.1/udp/0/quic-v1",
}

// DefaultDHTProtocolPrefix is the Kademlia protocol prefix used when
// Config.DHTProtocolPrefix is empty. A private prefix keeps these nodes out of
// the public IPFS (Amino) DHT even if they ever connect to one of its peers,
// and lifts Amino's public-address-only restrictions for local clusters.
const DefaultDHTProtocolPrefix protocol.ID = "/tauraft"

// bootstrapTimeout bounds how long New waits for each bootstrap peer. New does
// not fail when bootstrap peers are unreachable: the first node of a cluster
// has nobody to reach, and the DHT keeps retrying its bootstrap peers while its
// routing table is empty.
const bootstrapTimeout = 10 * time.Second

// Config configures New. The zero value is a usable, private, in-memory node
// listening on loopback only.
type Config struct {
	// ListenAddrs are the multiaddrs the host listens on, for example
	// "/ip4/0.0.0.0/tcp/4001" or "/ip4/0.0.0.0/udp/4001/quic-v1". Empty means
	// DefaultListenAddrs (loopback, ephemeral ports). TCP and QUIC transports
	// are always available for dialing whatever is listed here, except with
	// a SwarmKey: then only TCP.
	ListenAddrs []string

	// SwarmKey, if set, makes the node a member of the libp2p private
	// network of this 32-byte pre-shared key (read it from a swarm key file,
	// the format IPFS and Taubyte use, with ReadSwarmKeyFile or
	// ParseSwarmKey; make one with NewSwarmKey). Every connection is then
	// encrypted with the key beneath libp2p's own security handshake, so a
	// peer without the same key cannot even complete a connection: it never
	// gets to open a stream, send a DHT query or learn the node's protocols.
	//
	// libp2p has no private-network mode for QUIC, so a node with a swarm
	// key runs TCP only: it neither listens on nor dials QUIC addresses, New
	// fails if ListenAddrs names one, and empty ListenAddrs means only the
	// TCP address of DefaultListenAddrs. Nil means a public node, which can
	// connect to any libp2p peer that is not in a private network.
	SwarmKey pnet.PSK

	// PrivKey is the node's identity; its peer ID is what raft uses as the
	// server ID. Nil means a fresh Ed25519 key, i.e. a new identity on every
	// start: use LoadOrCreateIdentity for a node whose data must survive
	// restarts.
	PrivKey crypto.PrivKey

	// DataDir, if set, is the directory of a pebble datastore opened with
	// synced writes, so that whatever raft persisted survives a crash of the
	// machine, not just of the process. Empty means an in-memory datastore
	// whose contents die with the node. Ignored when Datastore is set.
	DataDir string

	// Datastore, if set, is used as the node's store instead of opening one
	// from DataDir. The caller keeps ownership: Close does not close it, which
	// lets a test harness restart a node on the same in-memory "disk".
	Datastore datastore.Batching

	// BootstrapPeers seed the DHT routing table. New connects to them before it
	// returns (failures are tolerated, see bootstrapTimeout) and the DHT keeps
	// using them whenever its routing table runs empty. There are no default
	// bootstrap peers: public IPFS peers are never contacted.
	BootstrapPeers []peer.AddrInfo

	// SeedNamespaces are raft namespaces whose address book (the last
	// addresses of each member, which a raft member keeps in this node's
	// datastore; see package addrbook) seeds the DHT besides BootstrapPeers:
	// New connects to those members too (at most seedTimeout each, in
	// parallel) and the DHT falls back on them whenever its routing table
	// runs empty. A node restarted after its bootstrap peers are gone for
	// good so still finds the DHT through its namespace's members.
	SeedNamespaces []string

	// Discovery, if set, is used as the node's discovery service and no DHT is
	// started. Tests use it to plug in a shared in-process registry.
	Discovery discovery.Discovery

	// DHTProtocolPrefix is the Kademlia protocol prefix. Empty means
	// DefaultDHTProtocolPrefix. Nodes only form a DHT with nodes using the same
	// prefix, so it can also separate unrelated clusters on one network.
	DHTProtocolPrefix protocol.ID

	// ConnectionGater, if set, is consulted by the host for every dial and
	// every accepted connection (tests use it to cut links).
	ConnectionGater connmgr.ConnectionGater

	// ResourceLimits, if set, are the limits of the node's libp2p resource
	// manager instead of DefaultResourceLimits() (libp2p's defaults, scaled
	// to the machine, with fixed caps on what one peer may hold: see
	// PeerMaxStreamsInbound and the other caps). Callers that need more
	// start from DefaultResourceLimits(); &rcmgr.InfiniteLimits switches
	// limits off. Ignored when ResourceManager is set.
	ResourceLimits *rcmgr.ConcreteLimitConfig

	// ResourceManager, if set, replaces the resource manager New would build
	// from ResourceLimits. The host takes ownership of it and closes it with
	// the node.
	ResourceManager network.ResourceManager

	// EnableMetrics turns on libp2p's Prometheus metrics (registered with
	// prometheus.DefaultRegisterer unless Libp2pOptions say otherwise).
	EnableMetrics bool

	// Libp2pOptions are appended to the options New passes to libp2p.New, as
	// an escape hatch (connection manager, address factory, ...). Options that
	// conflict with the ones New already sets make New fail.
	Libp2pOptions []libp2p.Option
}

// Node is a running libp2p host with its datastore and discovery service. It
// implements the Node interface of package raft. All methods are safe for
// concurrent use.
type Node struct {
	ctx    context.Context
	cancel context.CancelFunc

	host      host.Host
	dht       *dht.IpfsDHT // nil when Config.Discovery was supplied
	store     datastore.Batching
	ownsStore bool
	disc      discovery.Discovery

	closeOnce sync.Once
	closeErr  error
}

// New starts a node: a libp2p host listening on cfg.ListenAddrs, a datastore
// (pebble in cfg.DataDir or in memory), and, unless cfg.Discovery is set, a
// Kademlia DHT in server mode exposed as a discovery.Discovery. It connects to
// cfg.BootstrapPeers before returning.
//
// ctx is the parent of Context(); cancelling it cancels Context() but does not
// release resources, Close does.
func New(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := &Node{}
	// Resources are released in reverse order of creation if a later step
	// fails, so that New never leaks listeners, goroutines or file locks.
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				_ = undo[i]()
			}
		}
	}()

	priv := cfg.PrivKey
	if priv == nil {
		if priv, err = NewIdentity(); err != nil {
			return nil, err
		}
	}

	switch {
	case cfg.Datastore != nil:
		n.store = cfg.Datastore
	case cfg.DataDir != "":
		// Every Put/Delete/Batch.Commit is fsynced, see openPebble.
		ps, err := openPebble(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		n.store, n.ownsStore = ps, true
		undo = append(undo, ps.Close)
	default:
		n.store, n.ownsStore = dssync.MutexWrap(datastore.NewMapDatastore()), true
	}

	seeds, err := savedSeeds(ctx, n.store, cfg.SeedNamespaces)
	if err != nil {
		return nil, err
	}

	h, err := newHost(priv, cfg)
	if err != nil {
		return nil, err
	}
	n.host = h
	undo = append(undo, h.Close)

	if cfg.Discovery != nil {
		n.disc = cfg.Discovery
	} else {
		prefix := cfg.DHTProtocolPrefix
		if prefix == "" {
			prefix = DefaultDHTProtocolPrefix
		}
		// Server mode: with only a handful of private peers, a node in client
		// mode would neither answer queries nor store provider records, and
		// auto mode waits for AutoNAT to declare the node public, which never
		// happens on loopback or behind NAT.
		d, err := dht.New(h,
			dht.Mode(dht.ModeServer),
			dht.ProtocolPrefix(prefix),
			dht.BootstrapPeers(append(slices.Clone(cfg.BootstrapPeers), seeds...)...),
		)
		if err != nil {
			return nil, fmt.Errorf("p2pnode: start dht: %w", err)
		}
		n.dht = d
		n.disc = drouting.NewRoutingDiscovery(d)
		undo = append(undo, d.Close)
	}

	n.ctx, n.cancel = context.WithCancel(ctx)
	undo = append(undo, func() error { n.cancel(); return nil })

	n.bootstrap(cfg.BootstrapPeers, seeds)
	return n, nil
}

// seedTimeout bounds a connection attempt to a member from an address book:
// its addresses may be old, and a node must not start late because of them.
const seedTimeout = 3 * time.Second

// savedSeeds reads the address books of namespaces from store.
func savedSeeds(ctx context.Context, store datastore.Read, namespaces []string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for _, ns := range namespaces {
		infos, err := addrbook.Load(ctx, store, ns)
		if err != nil {
			return nil, fmt.Errorf("p2pnode: %w", err)
		}
		out = append(out, infos...)
	}
	return out, nil
}

// newHost builds the libp2p host. Relay, hole punching and NAT port mapping
// are left off: raft peers are expected to be directly reachable, and each of
// those services adds background traffic and goroutines.
func newHost(priv crypto.PrivKey, cfg Config) (host.Host, error) {
	listen, err := listenAddrs(cfg)
	if err != nil {
		return nil, err
	}
	rm := cfg.ResourceManager
	if rm == nil {
		limits := cfg.ResourceLimits
		if limits == nil {
			l := DefaultResourceLimits()
			limits = &l
		}
		rm, err = rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(*limits))
		if err != nil {
			return nil, fmt.Errorf("p2pnode: resource manager: %w", err)
		}
	}
	opts := []libp2p.Option{
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings(listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
	}
	if cfg.SwarmKey != nil {
		opts = append(opts, libp2p.PrivateNetwork(cfg.SwarmKey))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	if !cfg.EnableMetrics {
		// Metrics register collectors in a process-wide Prometheus registry,
		// which is wasted work for the many short-lived nodes of a test run.
		opts = append(opts, libp2p.DisableMetrics())
	}
	if cfg.ConnectionGater != nil {
		opts = append(opts, libp2p.ConnectionGater(cfg.ConnectionGater))
	}
	opts = append(opts, cfg.Libp2pOptions...)
	h, err := libp2p.New(opts...)
	if err != nil {
		if cfg.ResourceManager == nil {
			// libp2p.New closes the resource manager only once the host
			// exists; ours would otherwise keep its background goroutine.
			_ = rm.Close()
		}
		return nil, fmt.Errorf("p2pnode: start libp2p host: %w", err)
	}
	return h, nil
}

// listenAddrs returns the addresses the host of cfg listens on, checking
// them against cfg.SwarmKey: a private network runs over TCP only.
func listenAddrs(cfg Config) ([]string, error) {
	if cfg.SwarmKey == nil {
		if len(cfg.ListenAddrs) == 0 {
			return DefaultListenAddrs, nil
		}
		return cfg.ListenAddrs, nil
	}
	if len(cfg.SwarmKey) != 32 {
		return nil, fmt.Errorf("p2pnode: %w: a key of %d bytes, want 32 bytes", ErrInvalidSwarmKey, len(cfg.SwarmKey))
	}
	if len(cfg.ListenAddrs) == 0 {
		var tcpOnly []string
		for _, a := range DefaultListenAddrs {
			if isTCP(a) {
				tcpOnly = append(tcpOnly, a)
			}
		}
		return tcpOnly, nil
	}
	for _, a := range cfg.ListenAddrs {
		if !isTCP(a) {
			return nil, fmt.Errorf("p2pnode: listen address %s: a node with a swarm key listens on TCP only (libp2p private networks do not support QUIC)", a)
		}
	}
	return cfg.ListenAddrs, nil
}

// isTCP reports whether the multiaddr s is a plain TCP address (an invalid
// one is left for libp2p to report).
func isTCP(s string) bool {
	m, err := multiaddr.NewMultiaddr(s)
	if err != nil {
		return true
	}
	tcp := false
	for _, c := range m {
		switch c.Protocol().Code {
		case multiaddr.P_TCP:
			tcp = true
		case multiaddr.P_UDP, multiaddr.P_QUIC, multiaddr.P_QUIC_V1, multiaddr.P_WEBTRANSPORT, multiaddr.P_WS, multiaddr.P_WSS, multiaddr.P_WEBRTC_DIRECT:
			return false
		}
	}
	return tcp
}

// bootstrap connects to the bootstrap peers in parallel and then asks the DHT
// to refresh its routing table. Connections alone only put the bootstrap
// peers themselves into the routing table; a refresh runs lookups through
// them so that the node learns (and is learned by) the rest of the cluster,
// which provider records need: Advertise stores a record on the peers closest
// to the namespace key, and FindPeers only finds it if both sides agree on who
// those are. The DHT does refresh by itself when its table gains its first
// peer, but with several bootstrap peers that may happen before the others
// are connected; one more refresh once all are connected is cheap.
func (n *Node) bootstrap(peers, seeds []peer.AddrInfo) {
	var wg sync.WaitGroup
	connect := func(pi peer.AddrInfo, timeout time.Duration) {
		if pi.ID == n.host.ID() {
			return
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(n.ctx, timeout)
			defer cancel()
			_ = n.host.Connect(ctx, pi) // tolerated: see bootstrapTimeout
		})
	}
	for _, pi := range peers {
		connect(pi, bootstrapTimeout)
	}
	for _, pi := range seeds {
		connect(pi, seedTimeout)
	}
	wg.Wait()
	if n.dht != nil && len(peers)+len(seeds) > 0 {
		// Not waited for: the returned channel is buffered, and the refresh
		// keeps going in the DHT's own goroutines until Close.
		_ = n.dht.RefreshRoutingTable()
	}
}

// Context returns a context that is cancelled when the node is closed (or
// when the context given to New is cancelled).
func (n *Node) Context() context.Context { return n.ctx }

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Peer returns the node's libp2p host.
func (n *Node) Peer() host.Host { return n.host }

// Store returns the node's datastore.
func (n *Node) Store() datastore.Batching { return n.store }

// Discovery returns the node's discovery service: the DHT-backed routing
// discovery, or Config.Discovery when one was supplied.
func (n *Node) Discovery() discovery.Discovery { return n.disc }

// DHT returns the node's Kademlia DHT, or nil when Config.Discovery was set.
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// AddrInfo returns the node's peer ID with its current listen addresses, in
// the form other nodes need to connect to it (e.g. as a bootstrap peer).
func (n *Node) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.host.ID(), Addrs: n.host.Addrs()}
}

// Addrs returns the node's addresses as full p2p multiaddrs ending in
// /p2p/<peer ID>, suitable for printing or for passing on a command line.
func (n *Node) Addrs() []multiaddr.Multiaddr {
	ai := n.AddrInfo()
	addrs, err := peer.AddrInfoToP2pAddrs(&ai)
	if err != nil {
		// Only fails for an invalid peer ID, which a running host never has.
		return nil
	}
	return addrs
}

// Close shuts the node down: it cancels Context(), stops the DHT, closes the
// host (and with it every connection and stream) and finally the datastore,
// unless it was supplied via Config.Datastore. The datastore goes last because
// DHT and stream handlers may still be using it until the host is down. Close
// is idempotent; later calls return the first call's result.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		var errs []error
		if n.dht != nil {
			if err := n.dht.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close dht: %w", err))
			}
		}
		if err := n.host.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close host: %w", err))
		}
		if n.ownsStore {
			if err := n.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close datastore: %w", err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			n.closeErr = fmt.Errorf("p2pnode: %w", err)
		}
	})
	return n.closeErr
}
