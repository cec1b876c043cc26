package raft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
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
	// GetEntry reads key's entry (value and versions) from the local
	// replica, which may be stale: call Barrier first for a current one.
	GetEntry(key string) (Entry, bool, error)
	// Txn applies a transaction as one log entry, all-or-nothing. Any
	// member: a follower forwards it to the leader.
	Txn(t Txn, timeout time.Duration) (TxnResult, error)
	// Grant creates a lease of ttl and returns its ID. Any member.
	Grant(ttl time.Duration, timeout time.Duration) (LeaseID, error)
	// KeepAlive renews a lease for its full TTL (ErrLeaseNotFound once it
	// expired or was revoked). Any member.
	KeepAlive(id LeaseID, timeout time.Duration) error
	// Revoke ends a lease and deletes the keys bound to it
	// (ErrLeaseNotFound when it does not exist). Any member.
	Revoke(id LeaseID, timeout time.Duration) error
	// Lock takes the lock of name, waiting in line until it is free or ctx
	// ends. The lock is the key LockKey(name), bound to a lease of ttl
	// that the returned Lock keeps alive; its Token fences what it guards
	// (see lock.go). Any member.
	Lock(ctx context.Context, name string, ttl time.Duration) (Lock, error)
	// TryLock takes the lock of name if it is free and nobody waits for
	// it, else fails at once with ErrLocked. Any member.
	TryLock(name string, ttl time.Duration, timeout time.Duration) (Lock, error)
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
	// Watch delivers every change under prefix with an index above after,
	// in index order, without gaps or repeats, until ctx ends. ErrCompacted:
	// after is older than the history this member keeps (see watch.go).
	Watch(ctx context.Context, prefix string, after uint64) (<-chan Event, error)
	// WatchLeader delivers this member's view of leadership: the current
	// state first, then each change, the latest state winning over one a
	// slow reader has not taken yet. It never blocks Raft. The channel
	// closes when ctx ends or the cluster closes.
	WatchLeader(ctx context.Context) <-chan LeaderEvent
	// RunAsLeader runs fn each time this member becomes leader, and returns
	// when ctx ends (ctx.Err()) or the cluster closes (ErrShutdown).
	//
	// Before fn runs, the new leader commits an epoch marker: epoch is its
	// log index, greater than every earlier leadership's. fn's ctx is
	// cancelled the moment this member sees its leadership end. An isolated
	// leader can still believe it leads for up to a leader lease after the
	// others elected a successor, so fn fences its writes with IfEpoch(epoch):
	// they are refused (TxnResult.OK false) once a newer leadership's marker
	// is applied.
	//
	// fn runs once per leadership: when it returns nil, RunAsLeader waits
	// for this member's next leadership. When it returns an error while this
	// member still leads, RunAsLeader returns that error (errors.Is holds):
	// as with a campaign whose work failed, the caller decides whether to
	// call RunAsLeader again, hand leadership on with TransferLeadership, or
	// stop (leadership does not move by itself, so until then the job runs
	// nowhere). An error returned after leadership was lost (fn's ctx
	// cancelled, ErrNotLeader, ErrNoLeader, ErrLeadershipLost) is the
	// normal end of that leadership: RunAsLeader waits for the next one.
	//
	// While this member leads but a voter does not know epoch markers (a
	// rolling upgrade in progress), RunAsLeader returns an error wrapping
	// ErrInvalidCommand rather than run fn unfenced.
	RunAsLeader(ctx context.Context, fn func(ctx context.Context, epoch uint64) error) error
	// Enqueue adds value (at most MaxValueSize bytes) to the end of queue
	// and returns the item's ID: the log index of its write, so IDs grow in
	// the order items were enqueued. Any member.
	Enqueue(queue string, value []byte, timeout time.Duration) (uint64, error)
	// Claim claims the queue's lowest unclaimed item for ttl, its
	// visibility timeout (a lease: MinLeaseTTL to MaxLeaseTTL), and waits
	// for one until ctx ends. An item not acked within ttl is claimable
	// again, by a later Claim anywhere, before any later item: delivery is
	// at-least-once, and each item is first delivered in ID order. Any
	// member.
	Claim(ctx context.Context, queue string, ttl time.Duration) (Item, error)
	// Ack removes a claimed item, fenced by item.Token: ErrLeaseNotFound
	// when the claim lapsed (the item may have been claimed again, and only
	// that claim can ack it now). Any member.
	Ack(queue string, item Item, timeout time.Duration) error
	// Stats is a snapshot of this member's view of the cluster: state,
	// term, leader, indexes, members and, on the leader, how far behind
	// each member is (see Stats). It never blocks, even while Raft is stuck
	// or shutting down.
	Stats() Stats
	// Close stops Raft, the command service and every background loop, and
	// waits for them. It leaves the Node, its host and datastore open. A
	// leader first hands leadership to the most up-to-date voter (waiting at
	// most one election timeout), so the others need not detect its absence.
	Close() error
}

// raftRun is one Raft instance and its stream layer (closed by Close if
// Raft hangs), and stopped, closed once that Raft has shut down: the
// futures it handed out end by then (see bindShutdown).
type raftRun struct {
	raft     *hraft.Raft
	layer    *streamLayer
	stopped  chan struct{}
	stopOnce sync.Once

	// waitMu guards the writes waiting on the run's futures (waits, a
	// list) and why they were all ended, if they were (apply_wait.go).
	waitMu     sync.Mutex
	waits      *writeWait
	waitsEnded waitCause
}

// newRaftRun is the run of r over layer.
func newRaftRun(r *hraft.Raft, layer *streamLayer) *raftRun {
	return &raftRun{raft: r, layer: layer, stopped: make(chan struct{})}
}

// markStopped records that the run's Raft has shut down (or was given up
// on).
func (run *raftRun) markStopped() {
	run.stopOnce.Do(func() { close(run.stopped) })
	run.endWaits(causeStopped)
}

// apply is Raft's Apply, with the future bound to the run's end.
func (run *raftRun) apply(cmd []byte, timeout time.Duration) hraft.ApplyFuture {
	f := run.raft.Apply(cmd, timeout)
	bindShutdown(f, run.stopped)
	return f
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

// cluster is the Cluster of one namespace on one node.
type cluster struct {
	// lastLeader is the leader ID Leader decoded last (decodeLeaderID).
	lastLeader atomic.Pointer[decodedLeader]
	// confView is the configuration as the hot paths last read it
	// (recentServers).
	confView atomic.Pointer[configView]

	node      Node
	namespace string
	self      peer.ID
	cfg       *config
	logger    hclog.Logger
	raftLogs  *raftLogState // Raft's log rules' state (logging_raft.go)
	key       *secretKey

	// ctx is cancelled by Close; every background loop watches it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	logs    *LogStore
	stable  *StableStore
	fsm     *kvStore
	watch   *watchHub // the history of changes Watch serves (watch.go)
	snapDir string

	// run is the running Raft and its streams, which a reset replaces.
	// Every accessor loads it without a lock: a reset or Close that waits
	// for Raft to stop must never hold up IsLeader, Members or Get.
	run atomic.Pointer[raftRun]
	// life serializes what stops or replaces Raft (reset, Close); only
	// those wait on it, never an accessor.
	life sync.Mutex
	// logs queues every log line so that logging never blocks Raft
	// (logging.go); Close drains it.
	logq *logQueue

	// caller sends this member's requests to other members (joins, merge
	// checks); fwd sends leader-only requests to the leader.
	caller         caller
	fwd            *forwarder
	svc            *commandService
	peers          *peerTracker
	membershipOnce sync.Once
	// orphanRounds counts consecutive membership rounds in which this
	// leaderless voter saw its configuration taken over (see
	// leaveOrphanedConfig). Only the membership loop touches it.
	orphanRounds int
	// lastReset is when this member last dropped its state to join another
	// cluster (see resetCooldown). Only the membership loop touches it.
	lastReset time.Time
	// confMu makes this leader's own configuration changes (joins,
	// autopilot's) one at a time, each decided on the configuration the
	// previous one left.
	confMu sync.Mutex
	// windowEnd is when this member's bootstrap window ended (or New
	// returned without one): founder claims are heeded for claimPatience
	// after it. Set before the membership loop starts.
	windowEnd time.Time

	// upgrade caches which operation kinds every voter knows, and
	// kindsBook remembers what each voter last advertised (upgrade.go).
	upgrade   upgradeState
	kindsBook *kindsBook
	// leaderMon follows this member's leadership and its epochs
	// (leadership.go).
	leaderMon *leaderMonitor
	// queues remembers this member's claims and their leases (queue.go).
	queues queueMemo
	// metrics records what WithMetrics asked for; nil without it
	// (metrics.go).
	metrics *clusterMetrics

	closed atomic.Bool
	// failure is set when the state machine could not apply a committed
	// entry: the member has stopped Raft and every call fails with it.
	failure atomic.Pointer[error]
	// votedIn is set once this run has applied (so: committed) a
	// configuration that holds this node (as a voter or a non-voter). Only
	// such a member, once
	// a configuration without it shows, counts as removed while running and
	// stays out; a member that merely learns of a removal that happened
	// while it was down (or of a join attempt that did not commit) asks to
	// join again.
	votedIn atomic.Bool
	// bootstraps counts the configurations this member bootstrapped (a
	// test of formation counts them across members: exactly one).
	bootstraps atomic.Int32
	// outcome is how this member came to be in its cluster, and lags the
	// followers' reports a leader's Stats shows (stats.go, lag.go).
	outcome outcomeCell
	lags    lagBook
	// book is the address book (addrbook.go).
	book *addrBook
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
	ap, err := cfg.autopilot.resolve(cfg.timeouts.ElectionTimeout, cfg.maxVoters)
	if err != nil {
		return nil, err
	}
	cfg.autopilot = ap
	logger := cfg.logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Warn, Output: os.Stderr, TimeFormat: LogTimeFormat})
	}
	logq := newLogQueue(logger)
	logger = newAsyncLogger(logger, logq).With("namespace", namespace)

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
		logq:      logq,
		raftLogs:  newRaftLogState(nil),
	}
	if cfg.metrics != nil {
		m, err := newClusterMetrics(cfg.metrics, namespace, c.self)
		if err != nil {
			c.cancel()
			logq.close()
			return nil, err
		}
		c.metrics = m
	}
	// Every failed start below closes the log queue and takes the
	// cluster's series off the registerer too.
	cancel = func() { c.cancel(); logq.close(); c.metrics.close() }
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
	book, err := openKindsBook(node.Store(), namespace+"/kinds")
	if err != nil {
		cancel()
		return nil, err
	}
	c.kindsBook = book
	addrs, saved, err := openAddrBook(ctx, node.Store(), namespace)
	if err != nil {
		cancel()
		return nil, err
	}
	c.book = addrs
	c.caller = newCaller(node.Peer(), Protocol(namespace), codec{key: c.key})
	c.peers = newPeerTracker(trackerConfig{
		node:      node,
		namespace: namespace,
		window:    cfg.bootstrapTimeout,
		logger:    logger,
		caller:    c.caller,
		status:    c,
		kinds:     cfg.kinds,
		onKinds:   c.rememberKinds,
		book:      c.book,
		metrics:   c.metrics,
	})
	c.seedFromBook(saved)
	c.fwd = &forwarder{ctx: ctx, self: c.self, caller: c.caller, role: c, metrics: c.metrics}
	c.svc = newCommandService(node.Peer(), Protocol(namespace), c.caller.codec, logger, c.fsm, c.peers, c, c.fwd, c.watch, c.metrics)
	c.svc.stats = c.Stats
	c.svc.listen()
	// Before Raft starts applying: the state machine rings the monitor.
	c.leaderMon = newLeaderMonitor(c)
	c.fsm.onEpoch = c.leaderMon.ring
	hasState, r, layer, err := c.start()
	if err != nil {
		c.svc.close()
		cancel()
		return nil, err
	}
	c.run.Store(newRaftRun(r, layer))
	c.metrics.attach(c.gaugeReading)

	// Cancelling the node's context stops the cluster as Close would.
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		<-ctx.Done()
		if node.Context().Err() != nil {
			go c.Close() //nolint:errcheck // the error is ErrAlreadyClosed at worst
		}
	}()

	c.peers.start(ctx)
	c.wg.Add(1)
	go c.leaseLoop()
	c.wg.Add(1)
	go c.autopilotLoop()
	c.wg.Add(1)
	go c.bookLoop()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.raftLogs.followResumes(c.ctx, c.logger.Named("raft"))
	}()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.leaderMon.run()
	}()
	switch {
	case hasState:
		logger.Debug("resuming from existing raft state")
		c.outcome.note(evRestored)
		c.metrics.bootstrapDecision(decisionResume)
		c.startMembership()
	case cfg.forceBootstrap:
		c.metrics.bootstrapDecision(decisionForce)
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
	c.fsm.onFail = c.stateMachineFailed
	c.fsm.metrics = c.metrics
	c.watch = newWatchHub(c.cfg.watchHistory, c.fsm.appliedIndex())
	c.fsm.onChange = c.watch.publish
	c.fsm.onReset = c.watch.reset
	self := hraft.ServerID(c.self.String())
	c.fsm.onConfig = func(conf hraft.Configuration) {
		for _, s := range conf.Servers {
			if s.ID == self {
				c.votedIn.Store(true)
			}
		}
	}
	return nil
}

// start builds the transport and Raft itself, and reports whether there was
// Raft state from an earlier run.
func (c *cluster) start() (hasState bool, r *hraft.Raft, layer *streamLayer, err error) {
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(c.snapDir, SnapshotRetain, c.logger.Named("snapshots"))
	if err != nil {
		return false, nil, nil, fmt.Errorf("raft: snapshot store in %s: %w", c.snapDir, err)
	}
	hasState, err = hraft.HasExistingState(c.logs, c.stable, snaps)
	if err != nil {
		return false, nil, nil, fmt.Errorf("raft: reading existing state: %w", err)
	}

	raftOut := c.logger.Named("raft") // where an outage's end is logged
	lc := layerConfig{
		logger: c.logger, resolve: c.peers.ensureAddrs, lookup: c.peers.lookup,
		admit: c.admitRPC, isMember: c.inConfiguration,
		dialed: func(id peer.ID) { c.raftLogs.reachable(id.String(), raftOut) },
	}
	if c.key != nil {
		lc.secure = c.key.secureConn
	}
	layer = newStreamLayer(c.node.Peer(), TransportProtocol(c.namespace), lc)
	trans := newPacedTransport(newNetworkTransport(layer, transportTimeout(c.cfg.timeouts), c.logger.Named("transport")), c.latestServers)

	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(c.self.String())
	c.cfg.timeouts.apply(rc)
	// Keep about one threshold's worth of entries after a snapshot, so
	// slightly lagging followers catch up from the log while the log stays
	// bounded.
	rc.TrailingLogs = c.cfg.timeouts.SnapshotThreshold
	// Let concurrent Apply calls reach the leader loop as one batch (one
	// log write, one AppendEntries per follower) instead of one at a time:
	// the main lever on write throughput with many writers. Raft never
	// answers a future still in that buffer when it shuts down: every
	// future the cluster waits for is bound to the run's end instead
	// (bindShutdown, apply_wait.go).
	rc.BatchApplyCh = true
	// hashicorp's default of 64 entries per AppendEntries makes a follower
	// that fell behind (or a burst of 64+ writers) take several round trips
	// per batch; 256 small entries still fit easily in one pooled stream
	// write.
	rc.MaxAppendEntries = 256
	// Raft's routine warnings demoted, a down peer's failures summarized
	// (logrules.go). One state per cluster, kept across resets, so an
	// outage that spans one is summarized as one.
	rc.Logger = newRaftLogger(c.logger.Named("raft"), c.raftLogs)
	if err := hraft.ValidateConfig(rc); err != nil {
		_ = trans.Close()
		return false, nil, nil, fmt.Errorf("raft: %w", err)
	}
	// Followers read back entries the leader just wrote (replication and
	// apply both read the log): a cache of two batches' worth keeps those
	// reads out of the datastore.
	cache, err := hraft.NewLogCache(logCacheSize, c.logs)
	if err != nil {
		_ = trans.Close()
		return false, nil, nil, err
	}
	r, err = hraft.NewRaft(rc, c.fsm, cache, c.stable, snaps, trans)
	if err != nil {
		_ = trans.Close()
		return false, nil, nil, fmt.Errorf("raft: starting raft: %w", err)
	}
	r.RegisterObserver(c.raftLogs.obs)
	return hasState, r, layer, nil
}

// logCacheSize is how many recent log entries Raft keeps in memory: twice
// MaxAppendEntries, so one batch being replicated and the next fit.
const logCacheSize = 512

// stateMachineFailed stops this member after its state machine could not
// apply a committed entry: serving on would mean serving a replica that
// skipped a write. It says so loudly and shuts Raft down; calls then fail
// with the cause. Restarted on a working store, the member re-applies the
// entry from its log.
func (c *cluster) stateMachineFailed(err error) {
	c.failure.Store(&err)
	c.logger.Error("stopping this member: a committed entry could not be applied; restart it on a working store", "error", err)
	c.wg.Add(1)
	go func() { // not inline: Raft's Shutdown waits for this very apply
		defer c.wg.Done()
		// Watchers of a replica that applies nothing more move on (a
		// Client's to another member).
		c.watch.close()
		if run := c.run.Load(); run != nil {
			_ = run.raft.Shutdown().Error()
			run.markStopped()
		}
	}()
}

// r returns the running Raft, or ErrShutdown after Close or once the state
// machine has stopped.
func (c *cluster) r() (*hraft.Raft, error) {
	run, err := c.current()
	if err != nil {
		return nil, err
	}
	return run.raft, nil
}

// current is r's run: its Raft and what its futures are bound to.
func (c *cluster) current() (*raftRun, error) {
	if c.closed.Load() {
		return nil, errAfterClose
	}
	if err := c.failure.Load(); err != nil {
		return nil, *err
	}
	run := c.run.Load()
	if run == nil {
		return nil, errAfterClose
	}
	return run, nil
}

// Namespace is the namespace the cluster was started with.
func (c *cluster) Namespace() string { return c.namespace }

func (c *cluster) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return ErrAlreadyClosed
	}
	c.cancel()
	if run := c.run.Load(); run != nil {
		// Writes waiting end at once, outcome unknown, as a closing
		// cluster answers any other call.
		run.endWaits(causeClosing)
	}
	c.watch.close() // ends every watcher, local and remote, at once
	c.svc.close()
	// A reset in progress finishes first (one that has not started yet
	// checks closed under the same lock and gives up).
	c.life.Lock()
	run := c.run.Load()
	var err error
	if run != nil && run.raft.State() == hraft.Leader {
		// Hand leadership to the most up-to-date follower first, so the
		// others need not wait out a heartbeat and an election timeout.
		// LeadershipTransfer gives up by itself after an election timeout.
		_ = run.raft.LeadershipTransfer().Error()
	}
	if run != nil {
		err = c.stopRaft(run)
	}
	// Released before waiting for the loops: a reset waiting for it then
	// sees closed and gives up.
	c.life.Unlock()
	c.wg.Wait()
	c.peers.wait()
	c.logq.close()
	// Last: nothing records into the series after this.
	c.metrics.close()
	return err
}

// ShutdownTimeout bounds how long Close waits for Raft to stop once it has
// closed Raft's streams (after a leader's hand-off, which takes at most an
// election timeout, and a grace period of one election timeout). Raft's
// goroutines block only on I/O and on each other; closing every stream
// unblocks the I/O, so only a bug can hold Raft past it, and then Close
// returns ErrTimeout instead of hanging.
const ShutdownTimeout = 10 * time.Second

// stopRaft shuts Raft down: gracefully for an election timeout, then with
// its streams closed under it, for at most ShutdownTimeout more.
func (c *cluster) stopRaft(run *raftRun) error {
	defer run.markStopped()
	r, layer := run.raft, run.layer
	f := r.Shutdown()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	grace := time.NewTimer(c.cfg.timeouts.ElectionTimeout)
	defer grace.Stop()
	select {
	case err := <-done:
		return shutdownResult(err)
	case <-grace.C:
	}
	c.logger.Warn("raft is slow to stop; closing its streams")
	if layer != nil {
		layer.closeStreams()
	}
	hard := time.NewTimer(ShutdownTimeout)
	defer hard.Stop()
	select {
	case err := <-done:
		return shutdownResult(err)
	case <-hard.C:
		c.logger.Error("raft did not stop; giving up on it", "waited", ShutdownTimeout)
		return fmt.Errorf("%w: raft did not stop within %v of closing its streams", ErrTimeout, ShutdownTimeout)
	}
}

// shutdownResult is Close's error from Raft's Shutdown: stopping something
// already stopped is no error.
func shutdownResult(err error) error {
	err = translateRaftError(err)
	if errors.Is(err, ErrShutdown) {
		return nil
	}
	return err
}
