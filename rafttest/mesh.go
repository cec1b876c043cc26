// Package rafttest provides in-process test networks of p2pnode nodes for the
// integration tests of package raft: a Mesh of real libp2p hosts on 127.0.0.1
// sharing one in-memory discovery Registry, with link cutting (Switch),
// discovery visibility rules, and node stop/restart with persistent identity
// and storage.
//
// It deliberately does not import package raft, so that both the internal
// tests of package raft and its external raft_test package can use it.
package rafttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
	"github.com/tauraft/raft/p2pnode"
)

// connectTimeout bounds each dial the mesh makes itself. Everything is on
// loopback, so a dial that takes longer is broken, not slow.
const connectTimeout = 10 * time.Second

// MeshOption configures NewMesh.
type MeshOption func(*meshConfig)

type meshConfig struct {
	connected bool
	pebble    bool
	quic      bool
	ttl       time.Duration
	configure func(i int, cfg *p2pnode.Config)
}

// Connected makes the mesh fully connected: NewMesh connects every pair of
// nodes, and Add and Restart connect the new or restarted node to every
// running node it is not cut from. Without it nodes only know each other
// through discovery.
func Connected() MeshOption { return func(c *meshConfig) { c.connected = true } }

// WithPebble gives each node a pebble datastore in its own directory under
// t.TempDir() instead of an in-memory one.
func WithPebble() MeshOption { return func(c *meshConfig) { c.pebble = true } }

// WithQUIC makes nodes listen on QUIC as well as TCP. Off by default because
// TCP alone is faster to set up and enough for most tests.
func WithQUIC() MeshOption { return func(c *meshConfig) { c.quic = true } }

// WithDiscoveryTTL sets the registry's default advertisement TTL (DefaultTTL
// otherwise).
func WithDiscoveryTTL(ttl time.Duration) MeshOption { return func(c *meshConfig) { c.ttl = ttl } }

// WithNodeConfig lets a test adjust each node's configuration just before the
// node is started (at creation and at every restart); i is the node index.
// Changing PrivKey, Datastore or DataDir breaks restart semantics.
func WithNodeConfig(f func(i int, cfg *p2pnode.Config)) MeshOption {
	return func(c *meshConfig) { c.configure = f }
}

// Mesh is a set of p2pnode nodes in one process. Nodes are addressed by
// index, stable for the life of the mesh, including across Stop and Restart.
//
// Methods that can fail (NewMesh, Add, Restart, ConnectAll) report through
// t.Fatalf and so must be called from the test goroutine; all others may be
// called from any goroutine, concurrently.
type Mesh struct {
	t        testing.TB
	cfg      meshConfig
	registry *Registry
	sw       *Switch
	baseDir  string

	mu      sync.Mutex
	members []*member
	closed  bool
}

// member is a node slot: what survives the node's restarts.
type member struct {
	index   int
	key     crypto.PrivKey
	id      peer.ID
	dataDir string             // WithPebble only
	store   datastore.Batching // in-memory only: the node's "disk"

	node   atomic.Pointer[p2pnode.Node] // nil while stopped
	detach func()                       // guarded by Mesh.mu
}

// NewMesh starts n nodes on 127.0.0.1 sharing a new Registry and Switch. The
// mesh is closed automatically when the test ends.
func NewMesh(t testing.TB, n int, opts ...MeshOption) *Mesh {
	t.Helper()
	m := &Mesh{t: t, registry: NewRegistry(), sw: NewSwitch()}
	for _, o := range opts {
		o(&m.cfg)
	}
	if m.cfg.ttl > 0 {
		m.registry.SetDefaultTTL(m.cfg.ttl)
	}
	if m.cfg.pebble {
		// Created before registering Close: cleanups run last-in first-out,
		// so the directory is removed only after the nodes closed it.
		m.baseDir = t.TempDir()
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("rafttest: close mesh: %v", err)
		}
	})
	for range n {
		m.Add()
	}
	return m
}

// Registry returns the discovery registry shared by the mesh's nodes.
func (m *Mesh) Registry() *Registry { return m.registry }

// Switch returns the switch enforcing the mesh's link cuts.
func (m *Mesh) Switch() *Switch { return m.sw }

// Len returns the number of nodes, stopped ones included.
func (m *Mesh) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.members)
}

// Node returns node i, or nil while it is stopped.
func (m *Mesh) Node(i int) *p2pnode.Node { return m.member(i).node.Load() }

// Running reports whether node i is running.
func (m *Mesh) Running(i int) bool { return m.Node(i) != nil }

// ID returns the peer ID of node i, which never changes, even while it is
// stopped.
func (m *Mesh) ID(i int) peer.ID { return m.member(i).id }

// IDs returns the peer IDs of all nodes, in index order.
func (m *Mesh) IDs() []peer.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]peer.ID, len(m.members))
	for i, mem := range m.members {
		ids[i] = mem.id
	}
	return ids
}

// Index returns the index of the node with peer ID id, or -1.
func (m *Mesh) Index(id peer.ID) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, mem := range m.members {
		if mem.id == id {
			return i
		}
	}
	return -1
}

// Nodes returns the running nodes, in index order.
func (m *Mesh) Nodes() []*p2pnode.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	var nodes []*p2pnode.Node
	for _, mem := range m.members {
		if n := mem.node.Load(); n != nil {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// Add starts a new node and returns its index. With Connected it is
// connected to every running node it is not cut from.
func (m *Mesh) Add() int {
	m.t.Helper()
	key, err := p2pnode.NewIdentity()
	if err != nil {
		m.t.Fatalf("rafttest: %v", err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		m.t.Fatalf("rafttest: %v", err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		m.t.Fatalf("rafttest: Add on a closed mesh")
	}
	mem := &member{index: len(m.members), key: key, id: id}
	if m.cfg.pebble {
		mem.dataDir = filepath.Join(m.baseDir, fmt.Sprintf("node%d", mem.index))
		if err := os.Mkdir(mem.dataDir, 0o700); err != nil {
			m.t.Fatalf("rafttest: %v", err)
		}
	} else {
		mem.store = dssync.MutexWrap(datastore.NewMapDatastore())
	}
	m.members = append(m.members, mem)
	if err := m.startLocked(mem); err != nil {
		m.t.Fatalf("rafttest: start node %d: %v", mem.index, err)
	}
	return mem.index
}

// Stop closes node i, keeping its identity and its datastore contents for
// Restart. Its discovery records stay in the registry until they expire, as
// they would in a real DHT. Stopping a stopped node does nothing.
func (m *Mesh) Stop(i int) {
	mem := m.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.stopLocked(mem); err != nil {
		m.t.Errorf("rafttest: stop node %d: %v", i, err)
	}
}

// Restart stops node i if it is running and starts it again with the same
// identity and datastore contents, like a restarted process on the same
// machine. It listens on new ports; its discovery records are updated with
// the new addresses, but other nodes' peerstores still hold the old ones
// until they rediscover or are dialled by it.
func (m *Mesh) Restart(i int) {
	m.t.Helper()
	mem := m.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		m.t.Fatalf("rafttest: Restart on a closed mesh")
	}
	if err := m.stopLocked(mem); err != nil {
		m.t.Errorf("rafttest: stop node %d: %v", i, err)
	}
	if err := m.startLocked(mem); err != nil {
		m.t.Fatalf("rafttest: restart node %d: %v", i, err)
	}
}

// startLocked starts mem's node. m.mu must be held.
func (m *Mesh) startLocked(mem *member) error {
	listen := []string{"/ip4/127.0.0.1/tcp/0"}
	if m.cfg.quic {
		listen = append(listen, "/ip4/127.0.0.1/udp/0/quic-v1")
	}
	cfg := p2pnode.Config{
		ListenAddrs: listen,
		PrivKey:     mem.key,
		// The discovery view reads the node's addresses when it advertises,
		// through the member because the node does not exist yet.
		Discovery: m.registry.Discovery(mem.id, func() []multiaddr.Multiaddr {
			if n := mem.node.Load(); n != nil {
				return n.Peer().Addrs()
			}
			return nil
		}),
		ConnectionGater: m.sw.Gater(mem.id),
	}
	if m.cfg.pebble {
		cfg.DataDir = mem.dataDir
	} else {
		// Owned by the mesh: p2pnode does not close a supplied datastore, so
		// it outlives the node like a disk outlives a process.
		cfg.Datastore = mem.store
	}
	if m.cfg.configure != nil {
		m.cfg.configure(mem.index, &cfg)
	}
	n, err := p2pnode.New(context.Background(), cfg)
	if err != nil {
		return err
	}
	mem.node.Store(n)
	mem.detach = m.sw.Attach(n.Peer())
	m.registry.UpdateAddrs(mem.id, n.Peer().Addrs())

	if m.cfg.connected {
		return m.connectLocked(mem)
	}
	return nil
}

// stopLocked closes mem's node, if running. m.mu must be held.
func (m *Mesh) stopLocked(mem *member) error {
	n := mem.node.Swap(nil)
	if n == nil {
		return nil
	}
	mem.detach()
	mem.detach = nil
	return n.Close()
}

// connectLocked connects mem's node to every other running node it is not
// cut from, concurrently. m.mu must be held.
func (m *Mesh) connectLocked(mem *member) error {
	self := mem.node.Load()
	var (
		wg   sync.WaitGroup
		errs = make([]error, len(m.members))
	)
	for j, other := range m.members {
		o := other.node.Load()
		if o == nil || other == mem || m.sw.IsCut(mem.id, other.id) {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
			defer cancel()
			if err := self.Peer().Connect(ctx, o.AddrInfo()); err != nil {
				errs[j] = fmt.Errorf("connect %d to %d: %w", mem.index, j, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Connect connects nodes a and b (both must be running).
func (m *Mesh) Connect(a, b int) error {
	na, nb := m.Node(a), m.Node(b)
	if na == nil || nb == nil {
		return fmt.Errorf("rafttest: connect %d to %d: node stopped", a, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	return na.Peer().Connect(ctx, nb.AddrInfo())
}

// ConnectAll connects every pair of running nodes whose link is not cut.
func (m *Mesh) ConnectAll() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mem := range m.members {
		if mem.node.Load() == nil {
			continue
		}
		if err := m.connectLocked(mem); err != nil {
			m.t.Fatalf("rafttest: %v", err)
		}
	}
}

// Cut takes the link between nodes a and b down in both directions and
// closes their connections; see Switch.Cut.
func (m *Mesh) Cut(a, b int) { m.sw.Cut(m.ID(a), m.ID(b)) }

// Heal brings the link between nodes a and b back up.
func (m *Mesh) Heal(a, b int) { m.sw.Heal(m.ID(a), m.ID(b)) }

// Isolate cuts node a from every other current node. Nodes added later are
// not cut from it.
func (m *Mesh) Isolate(a int) {
	for j, id := range m.IDs() {
		if j != a {
			m.sw.Cut(m.ID(a), id)
		}
	}
}

// Rejoin heals every link of node a.
func (m *Mesh) Rejoin(a int) {
	for j, id := range m.IDs() {
		if j != a {
			m.sw.Heal(m.ID(a), id)
		}
	}
}

// Partition splits the mesh: after healing every link, it cuts every pair of
// nodes that are in different groups. A node listed in no group is isolated.
func (m *Mesh) Partition(groups ...[]int) {
	ids := m.IDs()
	group := make([]int, len(ids))
	for i := range group {
		group[i] = -1 - i // a group of its own
	}
	for g, members := range groups {
		for _, i := range members {
			m.member(i) // range check
			group[i] = g
		}
	}
	m.sw.HealAll()
	for a := range ids {
		for b := a + 1; b < len(ids); b++ {
			if group[a] != group[b] {
				m.sw.Cut(ids[a], ids[b])
			}
		}
	}
}

// HealAll brings every link back up.
func (m *Mesh) HealAll() { m.sw.HealAll() }

// HideFrom makes discovery stop showing node a to each of the nodes in from.
func (m *Mesh) HideFrom(a int, from ...int) {
	id := m.ID(a)
	for _, f := range from {
		m.registry.Hide(id, m.ID(f))
	}
}

// ShowOnlyTo makes discovery show node a only to the nodes in to (and to
// itself), including hiding it from nodes added later.
func (m *Mesh) ShowOnlyTo(a int, to ...int) {
	ids := make([]peer.ID, len(to))
	for k, i := range to {
		ids[k] = m.ID(i)
	}
	m.registry.ShowOnlyTo(m.ID(a), ids...)
}

// Reveal makes discovery show node a to the nodes in to again; with no nodes
// given, to everyone (every rule about a is dropped).
func (m *Mesh) Reveal(a int, to ...int) {
	ids := make([]peer.ID, len(to))
	for k, i := range to {
		ids[k] = m.ID(i)
	}
	m.registry.Reveal(m.ID(a), ids...)
}

// RevealAll drops every discovery visibility rule.
func (m *Mesh) RevealAll() { m.registry.RevealAll() }

// ClearAddrs removes node i's addresses from the peerstore of every other
// running node, as if their entries had expired. Existing connections are
// left alone: combine it with Stop, Restart or Cut to force a rediscovery.
func (m *Mesh) ClearAddrs(i int) {
	id := m.ID(i)
	for _, n := range m.Nodes() {
		if n.ID() != id {
			n.Peer().Peerstore().ClearAddrs(id)
		}
	}
}

// Close stops every node. It is called automatically at the end of the test
// and is idempotent.
func (m *Mesh) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, mem := range m.members {
		if err := m.stopLocked(mem); err != nil {
			errs = append(errs, fmt.Errorf("node %d: %w", mem.index, err))
		}
	}
	return errors.Join(errs...)
}

// member returns slot i, panicking on an invalid index: that is a bug in the
// test, and panicking works from any goroutine, unlike t.Fatal.
func (m *Mesh) member(i int) *member {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i < 0 || i >= len(m.members) {
		panic(fmt.Sprintf("rafttest: node index %d out of range [0, %d)", i, len(m.members)))
	}
	return m.members[i]
}
