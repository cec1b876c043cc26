package raft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Cluster is this node's membership in the Raft cluster of one namespace.
// Writes and membership changes go through the leader; reads are served from
// the local replica and may be stale unless preceded by Barrier.
type Cluster interface {
	// Namespace is the namespace the cluster was started with.
	Namespace() string
	// Set stores value under key. Leader only.
	Set(key string, value []byte, timeout time.Duration) error
	// Get reads key from the local replica, which may be stale.
	Get(key string) ([]byte, bool)
	// Delete removes key. Leader only.
	Delete(key string, timeout time.Duration) error
	// Keys lists the local replica's keys that start with prefix, sorted.
	Keys(prefix string) []string
	// Apply replicates a command made by EncodeCommand. Leader only.
	Apply(cmd []byte, timeout time.Duration) (FSMResponse, error)
	// Barrier waits until the local replica has applied every write the
	// leader had acknowledged when it was called. On a follower it asks the
	// leader for its applied index and waits to reach it.
	Barrier(timeout time.Duration) error
	// IsLeader tells whether this node is the leader now.
	IsLeader() bool
	// Leader is the current leader's peer ID, or ErrNoLeader.
	Leader() (peer.ID, error)
	// State is the local Raft state.
	State() hraft.RaftState
	// Members lists the servers of the latest configuration.
	Members() ([]Member, error)
	// WaitForLeader returns once a leader is known, or ctx's error.
	WaitForLeader(ctx context.Context) error
	// AddVoter adds a peer as a voter. Leader only.
	AddVoter(id peer.ID, timeout time.Duration) error
	// RemoveServer removes a peer from the configuration. Leader only.
	RemoveServer(id peer.ID, timeout time.Duration) error
	// TransferLeadership hands leadership to another voter. Leader only.
	TransferLeadership() error
	// Close stops Raft, the command service and every background loop, and
	// waits for them. It leaves the Node, its host and datastore open. A
	// leader first hands leadership to the most up-to-date voter (waiting at
	// most one election timeout), so the others need not detect its absence.
	Close() error
}

// Member is one server of the configuration.
type Member struct {
	ID       peer.ID
	Address  hraft.ServerAddress
	Suffrage hraft.ServerSuffrage
}

// Protocol is the libp2p protocol of the namespace's command service.
func Protocol(namespace string) protocol.ID {
	return protocol.ID("/raft/v1" + namespace)
}

// TransportProtocol is the libp2p protocol of the namespace's Raft RPC.
func TransportProtocol(namespace string) protocol.ID {
	return Protocol(namespace) + "/transport"
}

// ValidateNamespace checks that namespace starts with "/raft/", names
// something after it, and is a clean path: no empty, "." or ".." segment, no
// trailing slash, no control characters.
func ValidateNamespace(namespace string) error {
	rest, ok := strings.CutPrefix(namespace, "/raft/")
	if !ok || rest == "" {
		return fmt.Errorf("%w: %q must start with /raft/ and name a cluster", ErrInvalidNamespace, namespace)
	}
	if path.Clean(namespace) != namespace {
		return fmt.Errorf("%w: %q is not a clean path", ErrInvalidNamespace, namespace)
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q has an empty, . or .. segment", ErrInvalidNamespace, namespace)
		}
	}
	for _, r := range namespace {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %q has a control character", ErrInvalidNamespace, namespace)
		}
	}
	return nil
}

func validateTimeout(d time.Duration) error {
	if d <= 0 || d > MaxTimeout {
		return fmt.Errorf("%w: %v is outside (0, %v]", ErrInvalidTimeout, d, MaxTimeout)
	}
	return nil
}

// cluster is the Cluster of one namespace on one node.
type cluster struct {
	node      Node
	namespace string
	self      peer.ID
	cfg       *config
	logger    hclog.Logger
	key       *secretKey

	// ctx is cancelled by Close; every background loop watches it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	logs    *LogStore
	stable  *StableStore
	fsm     *kvStore
	snapDir string

	mu    sync.RWMutex // guards raft and trans, which a reset replaces
	raft  *hraft.Raft
	trans *hraft.NetworkTransport

	svc            *commandService
	peers          *peerTracker
	membershipOnce sync.Once
	// orphanRounds counts consecutive membership rounds in which this
	// leaderless voter saw its configuration taken over (see
	// leaveOrphanedConfig). Only the membership loop touches it.
	orphanRounds int

	closed atomic.Bool
	// votedIn is set once this run has applied (so: committed) a
	// configuration that makes this node a voter. Only such a member, once
	// a configuration without it shows, counts as removed while running and
	// stays out; a member that merely learns of a removal that happened
	// while it was down (or of a join attempt that did not commit) asks to
	// join again.
	votedIn atomic.Bool
}

var _ Cluster = (*cluster)(nil)

// New starts or joins the Raft cluster of namespace on node. Without
// WithForceBootstrap, and without Raft state from an earlier run, it runs the
// bootstrap protocol (see the README): it looks for peers during the
// bootstrap window, joins a leader it finds, and otherwise bootstraps together
// with the founders it saw, or alone. New returns once this node has decided:
// it bootstrapped, joined, or is asking to join in the background.
func New(node Node, namespace string, opts ...Option) (Cluster, error) {
	if node == nil {
		return nil, errors.New("raft: nil node")
	}
	if err := ValidateNamespace(namespace); err != nil {
		return nil, err
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(cfg); err != nil {
			return nil, err
		}
	}
	logger := cfg.logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Warn, Output: os.Stderr})
	}
	logger = logger.With("namespace", namespace)

	ctx, cancel := context.WithCancel(node.Context())
	c := &cluster{
		node:      node,
		namespace: namespace,
		self:      node.ID(),
		cfg:       cfg,
		logger:    logger,
		ctx:       ctx,
		cancel:    cancel,
		snapDir:   cfg.snapshotPath(namespace, node.ID()),
	}
	if cfg.key != nil {
		k, err := newSecretKey(cfg.key, namespace)
		if err != nil {
			cancel()
			return nil, err
		}
		c.key = k
	}
	if err := c.open(); err != nil {
		cancel()
		return nil, err
	}
	c.peers = newPeerTracker(c)
	c.svc = newCommandService(c)
	hasState, r, trans, err := c.start()
	if err != nil {
		c.svc.close()
		cancel()
		return nil, err
	}
	// The command service already takes streams: publish under the lock.
	c.mu.Lock()
	c.raft, c.trans = r, trans
	c.mu.Unlock()

	// Cancelling the node's context stops the cluster as Close would.
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		<-ctx.Done()
		if node.Context().Err() != nil {
			go c.Close() //nolint:errcheck // the error is ErrAlreadyClosed at worst
		}
	}()

	c.peers.start()
	switch {
	case hasState:
		logger.Debug("resuming from existing raft state")
		c.startMembership()
	case cfg.forceBootstrap:
		if err := c.bootstrapAlone(); err != nil {
			_ = c.Close()
			return nil, err
		}
		c.startMembership()
	default:
		if err := c.bootstrap(); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	return c, nil
}

// open creates the stores. They live as long as the cluster.
func (c *cluster) open() error {
	ds := c.node.Store()
	if ds == nil {
		return errors.New("raft: node has no datastore")
	}
	logs, err := NewLogStore(ds, c.namespace+"/log")
	if err != nil {
		return err
	}
	c.logs = logs
	c.stable = NewStableStore(ds, c.namespace+"/stable")
	fsmStore := ds
	if u, ok := ds.(UnsyncedStore); ok {
		// The state machine is rebuilt from the synced log after a crash:
		// its own writes need no fsync (see UnsyncedStore).
		if uds := u.Unsynced(); uds != nil {
			fsmStore = uds
		}
	}
	c.fsm, err = newKVStore(fsmStore, c.namespace+"/data")
	if err != nil {
		return err
	}
	self := hraft.ServerID(c.self.String())
	c.fsm.onConfig = func(conf hraft.Configuration) {
		for _, s := range conf.Servers {
			if s.ID == self && s.Suffrage == hraft.Voter {
				c.votedIn.Store(true)
			}
		}
	}
	return nil
}

// start builds the transport and Raft itself, and reports whether there was
// Raft state from an earlier run.
func (c *cluster) start() (hasState bool, r *hraft.Raft, trans *hraft.NetworkTransport, err error) {
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(c.snapDir, SnapshotRetain, c.logger.Named("snapshots"))
	if err != nil {
		return false, nil, nil, fmt.Errorf("raft: snapshot store in %s: %w", c.snapDir, err)
	}
	hasState, err = hraft.HasExistingState(c.logs, c.stable, snaps)
	if err != nil {
		return false, nil, nil, fmt.Errorf("raft: reading existing state: %w", err)
	}

	layer, err := newStreamLayer(c.node.Peer(), TransportProtocol(c.namespace))
	if err != nil {
		return false, nil, nil, err
	}
	layer.logger = c.logger
	layer.resolve = c.peers.ensureAddrs
	layer.lookup = c.peers.lookup
	if c.key != nil {
		layer.secure = c.key.secureConn
	}
	trans = newNetworkTransport(layer, transportTimeout(c.cfg.timeouts), c.logger.Named("transport"))

	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(c.self.String())
	c.cfg.timeouts.apply(rc)
	// Keep about one threshold's worth of entries after a snapshot, so
	// slightly lagging followers catch up from the log while the log stays
	// bounded.
	rc.TrailingLogs = c.cfg.timeouts.SnapshotThreshold
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	rc.Logger = c.logger.Named("raft")
	if err := hraft.ValidateConfig(rc); err != nil {
		_ = trans.Close()
		return false, nil, nil, fmt.Errorf("raft: %w", err)
	}
	cache, err := hraft.NewLogCache(512, c.logs)
	if err != nil {
		_ = trans.Close()
		return false, nil, nil, err
	}
	r, err = hraft.NewRaft(rc, c.fsm, cache, c.stable, snaps, trans)
	if err != nil {
		_ = trans.Close()
		return false, nil, nil, fmt.Errorf("raft: starting raft: %w", err)
	}
	return hasState, r, trans, nil
}

// bootstrapAlone makes this node a cluster of one.
func (c *cluster) bootstrapAlone() error {
	return c.bootstrapWith([]peer.ID{c.self})
}

// bootstrapWith bootstraps a configuration of the given voters.
func (c *cluster) bootstrapWith(ids []peer.ID) error {
	r, err := c.r()
	if err != nil {
		return err
	}
	conf := hraft.Configuration{}
	for _, id := range ids {
		conf.Servers = append(conf.Servers, hraft.Server{
			Suffrage: hraft.Voter,
			ID:       hraft.ServerID(id.String()),
			Address:  hraft.ServerAddress(id.String()),
		})
	}
	err = r.BootstrapCluster(conf).Error()
	if errors.Is(err, hraft.ErrCantBootstrap) {
		return nil // state appeared meanwhile: nothing to do
	}
	if err != nil {
		return fmt.Errorf("raft: bootstrap: %w", translateRaftError(err))
	}
	c.logger.Info("bootstrapped", "voters", len(ids))
	return nil
}

// r returns the running Raft, or ErrShutdown after Close.
func (c *cluster) r() (*hraft.Raft, error) {
	if c.closed.Load() {
		return nil, ErrShutdown
	}
	c.mu.RLock()
	r := c.raft
	c.mu.RUnlock()
	if r == nil {
		return nil, ErrShutdown
	}
	return r, nil
}

func (c *cluster) Namespace() string { return c.namespace }

func (c *cluster) Set(key string, value []byte, timeout time.Duration) error {
	if len(value) > MaxValueSize {
		return fmt.Errorf("%w: value of %d bytes (max %d)", ErrTooLarge, len(value), MaxValueSize)
	}
	return c.applyOps(timeout, SetOp(key, value))
}

func (c *cluster) Delete(key string, timeout time.Duration) error {
	return c.applyOps(timeout, DeleteOp(key))
}

func (c *cluster) applyOps(timeout time.Duration, ops ...Op) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	// EncodeCommand validates what it encodes: no second check needed.
	cmd, err := EncodeCommand(ops...)
	if err != nil {
		return err
	}
	resp, err := c.applyEncoded(cmd, timeout)
	if err != nil {
		return err
	}
	return resp.Error
}

func (c *cluster) Get(key string) ([]byte, bool) {
	if c.closed.Load() || validateKey(key) != nil {
		return nil, false
	}
	v, ok, err := c.fsm.get(key)
	if err != nil {
		c.logger.Warn("get failed", "error", err)
		return nil, false
	}
	return v, ok
}

func (c *cluster) Keys(prefix string) []string {
	if c.closed.Load() {
		return nil
	}
	keys, err := c.fsm.keys(prefix)
	if err != nil {
		c.logger.Warn("keys failed", "error", err)
	}
	return keys
}

func (c *cluster) Apply(cmd []byte, timeout time.Duration) (FSMResponse, error) {
	if err := validateTimeout(timeout); err != nil {
		return FSMResponse{}, err
	}
	if !walkCommand(cmd, nil) {
		if _, err := decodeCommand(cmd); err != nil {
			return FSMResponse{}, err
		}
	}
	return c.applyEncoded(cmd, timeout)
}

// applyEncoded replicates a command already validated.
func (c *cluster) applyEncoded(cmd []byte, timeout time.Duration) (FSMResponse, error) {
	r, err := c.r()
	if err != nil {
		return FSMResponse{}, err
	}
	f := r.Apply(cmd, timeout)
	if err := c.wait(f, timeout); err != nil {
		return FSMResponse{}, err
	}
	resp, _ := f.Response().(FSMResponse)
	return resp, nil
}

// wait waits for a Raft future for at most timeout beyond its enqueueing:
// hashicorp's own timeout only bounds the enqueueing.
func (c *cluster) wait(f hraft.Future, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return translateRaftError(err)
	case <-t.C:
		return fmt.Errorf("%w after %v: the outcome is unknown", ErrTimeout, timeout)
	case <-c.ctx.Done():
		// Closing: do not hold Close for the rest of the timeout.
		return fmt.Errorf("%w while waiting: the outcome is unknown", ErrShutdown)
	}
}

func (c *cluster) Barrier(timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	if r.State() == hraft.Leader {
		return c.wait(r.Barrier(timeout), timeout)
	}
	// A follower asks the leader which index covers every acknowledged write
	// and waits until it has applied that far (a read index).
	deadline := time.Now().Add(timeout)
	idx, err := c.svc.leaderAppliedIndex(deadline)
	if err != nil {
		return err
	}
	return c.waitApplied(idx, deadline)
}

// waitApplied waits until the local replica has applied index idx.
func (c *cluster) waitApplied(idx uint64, deadline time.Time) error {
	for {
		if c.closed.Load() {
			return ErrShutdown
		}
		// The state machine's own index, not Raft's AppliedIndex: Raft
		// counts an entry applied when it hands it to the state machine,
		// before the data is written.
		applied := c.fsm.appliedIndex()
		if applied >= idx {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: applied index %d, waiting for %d", ErrTimeout, applied, idx)
		}
		select {
		case <-c.ctx.Done():
			return ErrShutdown
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (c *cluster) IsLeader() bool {
	r, err := c.r()
	return err == nil && r.State() == hraft.Leader
}

func (c *cluster) Leader() (peer.ID, error) {
	r, err := c.r()
	if err != nil {
		return "", err
	}
	_, id := r.LeaderWithID()
	if id == "" {
		return "", ErrNoLeader
	}
	p, err := peer.Decode(string(id))
	if err != nil {
		return "", fmt.Errorf("raft: leader id %q: %w", id, err)
	}
	return p, nil
}

func (c *cluster) State() hraft.RaftState {
	r, err := c.r()
	if err != nil {
		return hraft.Shutdown
	}
	return r.State()
}

func (c *cluster) Members() ([]Member, error) {
	r, err := c.r()
	if err != nil {
		return nil, err
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, translateRaftError(err)
	}
	servers := f.Configuration().Servers
	out := make([]Member, 0, len(servers))
	for _, s := range servers {
		id, err := peer.Decode(string(s.ID))
		if err != nil {
			return nil, fmt.Errorf("raft: member id %q: %w", s.ID, err)
		}
		out = append(out, Member{ID: id, Address: s.Address, Suffrage: s.Suffrage})
	}
	return out, nil
}

// isVoter tells whether id is a voter of the latest configuration.
func (c *cluster) isVoter(id peer.ID) bool {
	members, err := c.Members()
	if err != nil {
		return false
	}
	for _, m := range members {
		if m.ID == id && m.Suffrage == hraft.Voter {
			return true
		}
	}
	return false
}

func (c *cluster) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := c.Leader(); err == nil {
			return nil
		} else if !errors.Is(err, ErrNoLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrShutdown
		case <-t.C:
		}
	}
}

func (c *cluster) AddVoter(id peer.ID, timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	if err := id.Validate(); err != nil {
		return fmt.Errorf("%w: peer ID: %v", ErrInvalidCommand, err)
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	if r.State() != hraft.Leader {
		return ErrNotLeader
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	c.peers.ensureAddrs(ctx, id)
	cancel()
	addr := hraft.ServerAddress(id.String())
	return c.wait(r.AddVoter(hraft.ServerID(id.String()), addr, 0, timeout), timeout)
}

func (c *cluster) RemoveServer(id peer.ID, timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	return c.wait(r.RemoveServer(hraft.ServerID(id.String()), 0, timeout), timeout)
}

func (c *cluster) TransferLeadership() error {
	r, err := c.r()
	if err != nil {
		return err
	}
	return translateRaftError(r.LeadershipTransfer().Error())
}

func (c *cluster) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return ErrAlreadyClosed
	}
	c.cancel()
	c.svc.close()
	c.mu.Lock()
	r := c.raft
	c.mu.Unlock()
	var err error
	if r != nil && r.State() == hraft.Leader {
		// Hand leadership to the most up-to-date follower first, so the
		// others need not wait out a heartbeat and an election timeout.
		// LeadershipTransfer gives up by itself after an election timeout.
		_ = r.LeadershipTransfer().Error()
	}
	if r != nil {
		// Shutdown also closes the transport.
		err = translateRaftError(r.Shutdown().Error())
		if errors.Is(err, ErrShutdown) {
			err = nil
		}
	}
	c.wg.Wait()
	return err
}

// ---- Bootstrap decision and membership ----

// status reports this member's state for peer exchange.
func (c *cluster) status() *status {
	st := &status{Deciding: c.peers.deciding.Load()}
	r, err := c.r()
	if err != nil {
		return st
	}
	if _, id := r.LeaderWithID(); id != "" {
		if p, err := peer.Decode(string(id)); err == nil {
			st.Leader = []byte(p)
		}
	}
	st.Formed = r.LastIndex() > 0
	if st.Formed {
		if f := r.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if s.Suffrage == hraft.Voter {
					st.Voters++
					if s.ID == hraft.ServerID(c.self.String()) {
						st.Member = true
					}
					if id, err := peer.Decode(string(s.ID)); err == nil && len(st.VoterIDs) < maxStatusVoters {
						st.VoterIDs = append(st.VoterIDs, []byte(id))
					}
				}
			}
		}
	}
	return st
}

// formed tells whether this member has Raft state: it bootstrapped, or a
// leader has replicated to it.
func (c *cluster) formed() bool {
	r, err := c.r()
	return err == nil && r.LastIndex() > 0
}

// bootstrap runs the bootstrap window: it discovers and exchanges peers, joins
// a leader as soon as one is reachable, and at the deadline decides (see
// decide). It returns once this node has decided.
func (c *cluster) bootstrap() error {
	t := c.peers
	t.deciding.Store(true)
	defer t.deciding.Store(false)
	window := c.cfg.bootstrapTimeout
	start := time.Now()
	deadline := start.Add(window)
	cutoff := start.Add(time.Duration(float64(window) * c.cfg.bootstrapThreshold))
	t.kick()
	tick := time.NewTicker(t.fastInterval() / 2)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-c.ctx.Done():
			return ErrShutdown
		case <-tick.C:
		}
		if c.formed() && c.isVoter(c.self) {
			// A founder bootstrapped a configuration that includes us.
			c.logger.Info("joined as a founder", "after", time.Since(start))
			c.startMembership()
			return nil
		}
		view := t.view()
		if leaderOf(view) == "" {
			continue
		}
		budget := time.Until(deadline)
		if budget < time.Second {
			budget = time.Second
		}
		if c.requestJoin(view, budget) {
			// The leader committed us; return once our own replica knows it,
			// so a caller's first Members or Barrier already sees it.
			c.waitVoter(time.Now().Add(time.Second))
			c.logger.Info("joined an existing cluster", "after", time.Since(start))
			c.startMembership()
			return nil
		}
	}
	t.deciding.Store(false)
	c.decide(cutoff)
	return nil
}

// decide is the bootstrap decision at the end of the window:
//   - a member that some founder already included, or that sees a leader or a
//     formed member, joins;
//   - a node that saw no live peer bootstraps alone;
//   - otherwise the node with the smallest peer ID among itself and the live
//     peers that have no cluster yet bootstraps, with the founders (peers
//     first seen before the cutoff) as voters; everyone else asks to join.
//
// Only the smallest ID bootstraps, so two founders that saw each other can
// never both start a cluster.
func (c *cluster) decide(cutoff time.Time) {
	defer c.startMembership()
	if c.formed() {
		return
	}
	view := c.peers.view()
	var founders []peer.ID
	for _, v := range view {
		if !v.alive {
			continue
		}
		if v.status.Formed || len(v.status.Leader) > 0 {
			return // a cluster exists: the membership loop joins it
		}
		if v.id < c.self {
			return // a smaller founder bootstraps; we join it
		}
		if !v.firstSeen.After(cutoff) {
			founders = append(founders, v.id)
		}
	}
	voters := append([]peer.ID{c.self}, founders...)
	if err := c.bootstrapWith(voters); err != nil {
		c.logger.Error("bootstrap failed", "error", err)
		return
	}
	c.logger.Info("bootstrapped as founder", "voters", len(voters))
}

// waitVoter waits until this node's configuration makes it a voter, or the
// deadline passes.
func (c *cluster) waitVoter(deadline time.Time) {
	for !c.isVoter(c.self) && time.Now().Before(deadline) {
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// leaderOf returns the leader that a live, formed peer reports, if any.
func leaderOf(view []peerView) peer.ID {
	for _, v := range view {
		if v.alive && v.status.Formed && len(v.status.Leader) > 0 {
			if id, err := peer.IDFromBytes(v.status.Leader); err == nil {
				return id
			}
		}
	}
	return ""
}

// requestJoin asks the cluster to add this node as a voter: the leader first,
// then every live formed member (which forwards to its leader). It reports
// whether one of them accepted.
func (c *cluster) requestJoin(view []peerView, timeout time.Duration) bool {
	var targets []peer.ID
	if l := leaderOf(view); l != "" && l != c.self {
		targets = append(targets, l)
	}
	for _, v := range view {
		if v.alive && v.status.Formed && (len(targets) == 0 || v.id != targets[0]) {
			targets = append(targets, v.id)
		}
	}
	// The whole attempt, every target included, fits in timeout: during the
	// bootstrap window New must not overrun by much.
	deadline := time.Now().Add(timeout)
	for _, id := range targets {
		left := time.Until(deadline)
		if c.ctx.Err() != nil || left <= 0 {
			return false
		}
		// The member gets most of the time; the rest carries its answer.
		req := &request{Cmd: cmdJoinVoter, Peer: []byte(c.self), Timeout: int64(left * 4 / 5)}
		resp, err := roundTrip(c.ctx, c.node.Peer(), id, Protocol(c.namespace), c.svc.codec, req, deadline)
		if err == nil {
			err = resp.err()
		}
		if err == nil {
			return true
		}
		c.logger.Debug("join request failed", "via", id, "error", err)
	}
	return false
}

// startMembership starts the membership loop once.
func (c *cluster) startMembership() {
	c.membershipOnce.Do(func() {
		c.wg.Add(1)
		go c.membershipLoop()
	})
}

// membershipLoop keeps this node in the cluster. Until it is a voter it asks
// to join, with backoff, through every live member it knows (and, when no
// cluster exists anywhere it can see and it has the smallest ID, it
// bootstraps the waiting nodes). Once a voter it watches for a second cluster
// in the namespace (see mergeIfSplit). A voter removed while running stays
// out until restarted.
func (c *cluster) membershipLoop() {
	defer c.wg.Done()
	t := c.peers
	wasVoter := false
	warnedRemoved := false
	backoff := t.fastInterval()
	for {
		wait := backoff
		switch {
		case c.isVoter(c.self):
			if !wasVoter {
				c.logger.Info("voter of the cluster")
				wasVoter, warnedRemoved = true, false
				t.fast.Store(false)
				backoff = t.fastInterval()
			}
			if c.mergeIfSplit() {
				wasVoter = false
				t.fast.Store(true)
				wait = 0
				break
			}
			wait = steadyExchangeInterval
		case c.votedIn.Load():
			if !warnedRemoved {
				c.logger.Warn("removed from the configuration; not rejoining until restarted")
				warnedRemoved = true
			}
			wait = steadyExchangeInterval
		default:
			t.fast.Store(true)
			view := t.view()
			if c.requestJoin(view, 5*time.Second) {
				wait = 20 * time.Millisecond // becoming a voter takes one replication
				break
			}
			if !c.formed() && c.mayBootstrap(view) {
				var voters []peer.ID
				voters = append(voters, c.self)
				for _, v := range view {
					if v.alive && !v.status.Formed {
						voters = append(voters, v.id)
					}
				}
				if err := c.bootstrapWith(voters); err != nil {
					c.logger.Error("bootstrap failed", "error", err)
				} else {
					c.logger.Info("bootstrapped the waiting nodes", "voters", len(voters))
				}
				wait = 20 * time.Millisecond
				break
			}
			backoff *= 2
			if backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// mayBootstrap tells whether a node that is past its window and has no
// cluster should bootstrap now: nobody it can see has a cluster, and it has
// the smallest ID among itself and the live nodes without one.
func (c *cluster) mayBootstrap(view []peerView) bool {
	for _, v := range view {
		if !v.alive {
			continue
		}
		if v.status.Formed || len(v.status.Leader) > 0 || v.id < c.self {
			return false
		}
	}
	return true
}

// mergeIfSplit handles a second cluster in the namespace, which the
// bootstrap protocol avoids but cannot rule out when discovery was slow or
// the network split during formation (for example a node that bootstrapped
// alone). A voter that sees a live member of a cluster whose voters share
// none with its own, and that cluster is larger (or as large, with a smaller
// leader ID), drops its state and joins it. Every member of the smaller
// cluster does the same, so the namespace ends as one cluster. Writes that
// the smaller cluster accepted are lost; the README says so. It reports
// whether it dropped its state.
func (c *cluster) mergeIfSplit() bool {
	members, err := c.Members()
	if err != nil || len(members) == 0 {
		return false
	}
	mine := map[peer.ID]bool{}
	for _, m := range members {
		if m.Suffrage == hraft.Voter {
			mine[m.ID] = true
		}
	}
	myLeader, err := c.Leader()
	if err != nil {
		c.rejoinIfRemoved(mine)
		return c.leaveOrphanedConfig(mine)
	}
	c.orphanRounds = 0
	for _, v := range c.peers.view() {
		if !v.alive || !v.status.Formed || len(v.status.Leader) == 0 || mine[v.id] {
			continue
		}
		leader, err := peer.IDFromBytes(v.status.Leader)
		if err != nil || mine[leader] {
			continue
		}
		disjoint := true
		for _, b := range v.status.VoterIDs {
			if id, err := peer.IDFromBytes(b); err == nil && mine[id] {
				disjoint = false
			}
		}
		if !disjoint || len(v.status.VoterIDs) == 0 {
			continue
		}
		theirs, ours := len(v.status.VoterIDs), len(mine)
		if !(theirs > ours || (theirs == ours && leader < myLeader)) {
			continue
		}
		// Believe no single peer: a majority of the other cluster's voters
		// must confirm it before this member drops its data.
		if !c.confirmCluster(leader, v.status.VoterIDs, mine) {
			c.logger.Warn("a peer reported another cluster that its voters do not confirm", "peer", v.id, "leader", leader)
			continue
		}
		c.logger.Warn("found another cluster in the namespace; dropping this one to join it",
			"leader", leader, "their_voters", theirs, "our_voters", ours)
		if err := c.reset(); err != nil {
			c.logger.Error("reset failed", "error", err)
			return false
		}
		return true
	}
	return false
}

// leaveOrphanedConfig handles overlapping configurations, which the disjoint
// rule of mergeIfSplit cannot see: two founders that never saw each other
// during their windows, but both saw a third node c with a larger ID, both
// bootstrap with it ({a, c} and {b, c}). c follows only one of them; the
// other is left a leaderless candidate forever. This member, having no
// leader, drops its state and joins the other cluster when a live voter of
// its own configuration follows a leader outside that configuration, in a
// configuration without this member; the sighting must hold on two
// consecutive rounds (an election in progress is not an orphaned
// configuration) and the leader itself must confirm it. mine is this
// member's voter set.
func (c *cluster) leaveOrphanedConfig(mine map[peer.ID]bool) bool {
	leader, ok := c.orphanedBy(mine)
	if !ok {
		c.orphanRounds = 0
		return false
	}
	if c.orphanRounds++; c.orphanRounds < 2 {
		return false
	}
	if !c.confirmLeaderWithout(leader) {
		return false
	}
	c.orphanRounds = 0
	c.logger.Warn("a voter of our configuration follows another cluster and we have no leader; dropping this configuration to join it",
		"leader", leader)
	if err := c.reset(); err != nil {
		c.logger.Error("reset failed", "error", err)
		return false
	}
	return true
}

// rejoinIfRemoved handles a voter that was removed while it was down: its
// own configuration still lists it, so it waits for a leader that will never
// call. When a live member of its configuration follows a leader of that same
// configuration, and that leader confirms that its configuration no longer
// holds this node, it asks to join again. Joining is harmless if wrong: the
// leader only adds a voter.
func (c *cluster) rejoinIfRemoved(mine map[peer.ID]bool) {
	for _, v := range c.peers.view() {
		st := v.status
		if !v.alive || !mine[v.id] || !st.Formed || len(st.Leader) == 0 ||
			len(st.VoterIDs) == 0 || len(st.VoterIDs) < st.Voters || containsPeer(st.VoterIDs, c.self) {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || !mine[leader] || leader == c.self || !c.confirmLeaderWithout(leader) {
			continue
		}
		c.logger.Info("removed from the configuration while away; asking to join again", "leader", leader)
		if c.requestJoin(c.peers.view(), 5*time.Second) {
			c.waitVoter(time.Now().Add(time.Second))
		}
		return
	}
}

// orphanedBy returns the leader that a live voter of our configuration (mine)
// follows, when that leader is not in mine and that voter's configuration,
// reported in full, does not hold this member.
func (c *cluster) orphanedBy(mine map[peer.ID]bool) (peer.ID, bool) {
	for _, v := range c.peers.view() {
		st := v.status
		if !v.alive || v.id == c.self || !mine[v.id] || !st.Formed || !st.Member ||
			len(st.Leader) == 0 || len(st.VoterIDs) == 0 || len(st.VoterIDs) < st.Voters {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || mine[leader] || leader == c.self {
			continue
		}
		if !containsPeer(st.VoterIDs, c.self) {
			return leader, true
		}
	}
	return "", false
}

// confirmLeaderWithout asks leader itself whether it leads a configuration,
// given in full, that does not hold this member.
func (c *cluster) confirmLeaderWithout(leader peer.ID) bool {
	req := &request{Cmd: cmdExchangePeers, Status: c.status()}
	resp, err := roundTrip(c.ctx, c.node.Peer(), leader, Protocol(c.namespace), c.svc.codec, req, time.Now().Add(exchangeTimeout))
	if err != nil || resp.err() != nil || resp.Status == nil {
		return false
	}
	st := resp.Status
	l, err := peer.IDFromBytes(st.Leader)
	return err == nil && l == leader && st.Formed && st.Member &&
		len(st.VoterIDs) > 0 && len(st.VoterIDs) >= st.Voters && !containsPeer(st.VoterIDs, c.self)
}

// containsPeer reports whether ids (peer IDs as bytes) holds id.
func containsPeer(ids [][]byte, id peer.ID) bool {
	for _, b := range ids {
		if peer.ID(b) == id {
			return true
		}
	}
	return false
}

// confirmCluster asks each claimed voter of another cluster for its state,
// and reports whether a majority of them answer that they are voters of a
// cluster led by leader that shares no voter with ours.
func (c *cluster) confirmCluster(leader peer.ID, voterIDs [][]byte, mine map[peer.ID]bool) bool {
	confirmed := 0
	for _, b := range voterIDs {
		id, err := peer.IDFromBytes(b)
		if err != nil || mine[id] || id == c.self {
			continue
		}
		req := &request{Cmd: cmdExchangePeers, Status: c.status()}
		resp, err := roundTrip(c.ctx, c.node.Peer(), id, Protocol(c.namespace), c.svc.codec, req, time.Now().Add(exchangeTimeout))
		if err != nil || resp.err() != nil || resp.Status == nil {
			continue
		}
		st := resp.Status
		l, err := peer.IDFromBytes(st.Leader)
		if err != nil || l != leader || !st.Formed || !st.Member {
			continue
		}
		overlap := false
		for _, vb := range st.VoterIDs {
			if vid, err := peer.IDFromBytes(vb); err == nil && mine[vid] {
				overlap = true
			}
		}
		if !overlap {
			confirmed++
		}
	}
	return confirmed*2 > len(voterIDs)
}

// reset drops this member's Raft state and key-value data and starts Raft
// afresh, ready to join another cluster.
func (c *cluster) reset() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrShutdown
	}
	if err := c.raft.Shutdown().Error(); err != nil {
		return err
	}
	// The state machine goes first: a crash part way must never leave it
	// with data and an applied index but no log, or it would skip the
	// entries of the cluster it joins. (The log's synced delete below also
	// makes the wipe durable when the wipe itself was not synced.)
	if err := c.fsm.wipe(); err != nil {
		return err
	}
	if first, err := c.logs.FirstIndex(); err == nil {
		if last, err := c.logs.LastIndex(); err == nil && last > 0 {
			if err := c.logs.DeleteRange(first, last); err != nil {
				return err
			}
		}
	}
	if err := deleteChildren(c.node.Store(), c.namespace+"/stable"); err != nil {
		return err
	}
	c.votedIn.Store(false)
	if err := os.RemoveAll(c.snapDir); err != nil {
		return err
	}
	_, r, trans, err := c.start()
	if err != nil {
		return err
	}
	c.raft, c.trans = r, trans
	return nil
}

// deleteChildren deletes the keys exactly one segment below prefix.
func deleteChildren(ds datastore.Batching, prefix string) error {
	ctx := context.Background()
	res, err := ds.Query(ctx, query.Query{Prefix: prefix, KeysOnly: true})
	if err != nil {
		return err
	}
	entries, err := res.Rest()
	if err != nil {
		return err
	}
	b, err := ds.Batch(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Key, prefix+"/")
		if ok && rest != "" && !strings.Contains(rest, "/") {
			if err := b.Delete(ctx, datastore.RawKey(e.Key)); err != nil {
				return err
			}
		}
	}
	return b.Commit(ctx)
}
