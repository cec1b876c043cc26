//go:build unix

package raft

// Transport tests, on real libp2p hosts:
//
//   - TestTransportPipelineDeadlock reproduces hashicorp/raft's pipeline
//     deadlock (hashicorp/raft#612) over this library's stream layer with
//     pipelining on (a control), and shows that the library's transport
//     (no pipelining) keeps replicating through the same failure and stops.
//   - TestCloseUnderStalledNetwork measures Close while the network under a
//     member stalls (connections stay open, nothing gets through).
//   - TestTransportStreamCaps floods a member with idle transport streams.
//
// The raw hashicorp clusters reuse bench_test.go's Raft configuration
// (benchRaftConfig) and state machine (benchFSM), hence the build tag;
// benchLibp2pTransports and benchStartRaw take a *testing.B and cannot be
// called from a test.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// ---- 1. hashicorp's pipeline deadlock ----
//
// With MaxRPCsInFlight=2 (hashicorp's default) both channels of netPipeline
// are unbuffered. When a follower answers Success=false, pipelineDecode
// returns and nobody reads the pipeline's done channel any more; if the
// response decoder has meanwhile taken the next request in flight, it blocks
// handing that one over, and if the send loop picks another send (a new
// entry, or the commit timeout) before it sees pipelineDecode finish, it
// blocks handing its request to the decoder. pipeline.Close, which would
// free both, is deferred in the blocked send loop: replication to that
// follower stops for good while its heartbeats go on, and Shutdown waits for
// the send loop forever. Closing connections does not help: both goroutines
// wait on channels, not on I/O.

// plShutdownBound is how long a Shutdown may take before it counts as hung.
const plShutdownBound = 5 * time.Second

// errPLInjected is the failure plLogStore injects.
var errPLInjected = errors.New("injected StoreLogs failure")

// plLogStore is an in-memory log store whose StoreLogs fails on demand: a
// follower whose append fails answers AppendEntries with Success=false on a
// healthy connection (hashicorp raft.go, appendEntries).
type plLogStore struct {
	*hraft.InmemStore
	failNext atomic.Int64 // StoreLogs calls still to fail
	failed   atomic.Int64 // StoreLogs calls failed so far
}

func (s *plLogStore) StoreLog(l *hraft.Log) error { return s.StoreLogs([]*hraft.Log{l}) }

func (s *plLogStore) StoreLogs(logs []*hraft.Log) error {
	for n := s.failNext.Load(); n > 0; n = s.failNext.Load() {
		if s.failNext.CompareAndSwap(n, n-1) {
			s.failed.Add(1)
			return errPLInjected
		}
	}
	return s.InmemStore.StoreLogs(logs)
}

// plTransport is a NetworkTransport that watches the pipelines Raft opens.
// Everything but AppendEntriesPipeline is the embedded transport's.
type plTransport struct {
	*hraft.NetworkTransport

	mu        sync.Mutex
	pipelines []*plPipeline

	// direct hands Raft hashicorp's own response channel: no proxy, no
	// hold, the pipeline exactly as hashicorp built it.
	direct bool
	// refused counts AppendEntriesPipeline calls answered with
	// ErrPipelineReplicationNotSupported (pipelining off).
	refused atomic.Int64
	// hold names the follower whose next failed pipelined append is held
	// (see plPipeline.proxy); it is cleared when one is.
	hold atomic.Pointer[hraft.ServerID]
	// held counts held responses, released those handed on with the send
	// loop blocked behind them.
	held, released atomic.Int64
}

func (t *plTransport) AppendEntriesPipeline(id hraft.ServerID, target hraft.ServerAddress) (hraft.AppendPipeline, error) {
	inner, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		if errors.Is(err, hraft.ErrPipelineReplicationNotSupported) {
			t.refused.Add(1)
		}
		return nil, err
	}
	p := &plPipeline{
		inner:     inner,
		trans:     t,
		target:    id,
		out:       make(chan hraft.AppendFuture),
		closed:    make(chan struct{}),
		enteredCh: make(chan struct{}, 1),
		seq:       map[*hraft.AppendEntriesRequest]uint64{},
	}
	t.mu.Lock()
	t.pipelines = append(t.pipelines, p)
	t.mu.Unlock()
	if !t.direct {
		go p.proxy()
	}
	return p, nil
}

// pipelined reports how many pipelines Raft opened to target, how many of
// them are open, and how many successful responses came back on them (not
// counted when direct).
func (t *plTransport) pipelined(target hraft.ServerID) (opened, open int, ok int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pipelines {
		if p.target != target {
			continue
		}
		opened++
		ok += p.ok.Load()
		select {
		case <-p.closed:
		default:
			open++
		}
	}
	return opened, open, ok
}

func (t *plTransport) openedTotal() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pipelines)
}

// holdFor reports whether a failed response from target is to be held, once.
func (t *plTransport) holdFor(target hraft.ServerID) bool {
	h := t.hold.Load()
	return h != nil && *h == target && t.hold.CompareAndSwap(h, nil)
}

// releasePipelines closes every pipeline Raft opened, which is what frees a
// deadlocked one: only its Close (deferred in the blocked goroutine) wakes
// its two goroutines.
func (t *plTransport) releasePipelines() {
	t.mu.Lock()
	ps := append([]*plPipeline(nil), t.pipelines...)
	t.mu.Unlock()
	for _, p := range ps {
		_ = p.Close()
	}
}

// plPipeline passes a hashicorp pipeline through, numbering the requests
// sent on it and handing responses to Raft through a proxy goroutine.
type plPipeline struct {
	inner  hraft.AppendPipeline
	trans  *plTransport
	target hraft.ServerID
	out    chan hraft.AppendFuture
	closed chan struct{}
	once   sync.Once
	ok     atomic.Int64

	mu        sync.Mutex
	entered   atomic.Uint64 // AppendEntries calls so far
	enteredCh chan struct{} // signalled on each
	seq       map[*hraft.AppendEntriesRequest]uint64
}

func (p *plPipeline) AppendEntries(args *hraft.AppendEntriesRequest, resp *hraft.AppendEntriesResponse) (hraft.AppendFuture, error) {
	p.mu.Lock()
	p.seq[args] = p.entered.Add(1)
	p.mu.Unlock()
	select {
	case p.enteredCh <- struct{}{}:
	default:
	}
	return p.inner.AppendEntries(args, resp)
}

func (p *plPipeline) Consumer() <-chan hraft.AppendFuture {
	if p.trans.direct {
		return p.inner.Consumer()
	}
	return p.out
}

func (p *plPipeline) Close() error {
	p.once.Do(func() { close(p.closed) })
	return p.inner.Close()
}

// proxy hands the inner pipeline's responses to Raft's pipelineDecode, one
// at a time. It holds one (the first failed response to the follower named
// by plTransport.hold) until the send loop has entered AppendEntries for the
// second request after it, and only then hands it on. That is a schedule
// hashicorp reaches by itself: pipelineDecode took the response and was
// descheduled before returning, the decoder meanwhile took the next request
// in flight, and the send loop, not yet seeing pipelineDecode finish, sent
// again. It makes the deadlock deterministic; without the hold it is a coin
// toss in the send loop's select (TAURAFT_PIPELINE_NOHOLD=1 measures it).
//
// After the response that makes pipelineDecode return (Success=false or a
// newer term) the proxy stops reading, as pipelineDecode does. Besides the
// hold, the proxy adds one response of buffering, what MaxRPCsInFlight=3
// would.
func (p *plPipeline) proxy() {
	in := p.inner.Consumer()
	for {
		var f hraft.AppendFuture
		select {
		case f = <-in:
		case <-p.closed:
			return
		}
		req, resp := f.Request(), f.Response()
		p.mu.Lock()
		n := p.seq[req]
		delete(p.seq, req)
		p.mu.Unlock()
		last := !resp.Success || resp.Term > req.Term
		if resp.Success {
			p.ok.Add(1)
		}
		if !resp.Success && p.trans.holdFor(p.target) {
			p.trans.held.Add(1)
			for p.entered.Load() < n+2 {
				select {
				case <-p.enteredCh:
				case <-p.closed:
					return
				}
			}
			p.trans.released.Add(1)
		}
		select {
		case p.out <- f:
		case <-p.closed:
			return
		}
		if last {
			return
		}
	}
}

// plNode is one member of a raw hashicorp cluster over the library's
// stream layer.
type plNode struct {
	id    hraft.ServerID
	layer *streamLayer
	trans *plTransport
	store *plLogStore
	raft  *hraft.Raft

	shutdownOnce sync.Once
	done         chan struct{} // closed when Shutdown has returned
	took         time.Duration // how long it took (set before done closes)
}

func (n *plNode) addr() hraft.ServerAddress { return hraft.ServerAddress(n.id) }

func (n *plNode) name() string {
	s := string(n.id)
	return s[max(0, len(s)-6):]
}

// startShutdown calls Shutdown once, in the background.
func (n *plNode) startShutdown() {
	n.shutdownOnce.Do(func() {
		start := time.Now()
		f := n.raft.Shutdown()
		go func() {
			_ = f.Error()
			n.took = time.Since(start)
			close(n.done)
		}()
	})
}

// waitShutdown reports whether Shutdown has returned within d.
func (n *plNode) waitShutdown(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-n.done:
		return true
	case <-t.C:
		return false
	}
}

// plCluster is a 3-member raw hashicorp cluster on the library's transport
// (pipelining off) or on a NetworkTransport with hashicorp's default
// pipelining, both over newStreamLayer on real libp2p hosts. direct leaves
// the pipelines' response channels unproxied (see plTransport.direct).
type plCluster struct {
	t     *testing.T
	nodes []*plNode

	applyStop chan struct{}
	applyOnce sync.Once
	applyWG   sync.WaitGroup
	applied   atomic.Int64
}

func startPLCluster(t *testing.T, ns string, pipelined, direct bool) *plCluster {
	t.Helper()
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	c := &plCluster{t: t, applyStop: make(chan struct{})}
	t.Cleanup(c.close) // before the hosts close
	timeout := transportTimeout(PresetLocal.Timeouts())
	var conf hraft.Configuration
	for i := range 3 {
		layer := newStreamLayer(mesh.Node(i).Peer(), TransportProtocol(ns), layerConfig{})
		var nt *hraft.NetworkTransport
		if pipelined {
			nt = hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
				Stream:          layer,
				MaxPool:         transportPoolSize,
				Timeout:         timeout,
				Logger:          hclog.NewNullLogger(),
				MaxRPCsInFlight: hraft.DefaultMaxRPCsInFlight,
			})
		} else {
			nt = newNetworkTransport(layer, timeout, hclog.NewNullLogger())
		}
		id := hraft.ServerID(mesh.ID(i).String())
		c.nodes = append(c.nodes, &plNode{
			id:    id,
			layer: layer,
			trans: &plTransport{NetworkTransport: nt, direct: direct},
			store: &plLogStore{InmemStore: hraft.NewInmemStore()},
			done:  make(chan struct{}),
		})
		conf.Servers = append(conf.Servers, hraft.Server{Suffrage: hraft.Voter, ID: id, Address: hraft.ServerAddress(id)})
	}
	for _, n := range c.nodes {
		rc := benchRaftConfig(n.id)
		if os.Getenv("TAURAFT_DEBUG") != "" {
			rc.Logger = testLogger(t).Named(n.name())
		}
		r, err := hraft.NewRaft(rc, &benchFSM{}, n.store, n.store.InmemStore, hraft.NewInmemSnapshotStore(), n.trans)
		if err != nil {
			t.Fatal(err)
		}
		n.raft = r
		if err := r.BootstrapCluster(conf).Error(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// leader waits until every member names one leader, and returns it.
func (c *plCluster) leader() *plNode {
	c.t.Helper()
	var l *plNode
	rafttest.WaitFor(c.t, 15*time.Second, "one leader named by every member", func() bool {
		l = c.currentLeader()
		if l == nil {
			return false
		}
		for _, n := range c.nodes {
			if _, id := n.raft.LeaderWithID(); id != l.id {
				return false
			}
		}
		return true
	})
	return l
}

func (c *plCluster) currentLeader() *plNode {
	for _, n := range c.nodes {
		if n.raft.State() == hraft.Leader {
			return n
		}
	}
	return nil
}

// followers returns the two members other than l.
func (c *plCluster) followers(l *plNode) (f, h *plNode) {
	var fs []*plNode
	for _, n := range c.nodes {
		if n != l {
			fs = append(fs, n)
		}
	}
	return fs[0], fs[1]
}

// startApplies keeps writers writing through whichever member leads, until
// stopApplies.
func (c *plCluster) startApplies(writers int) {
	for range writers {
		c.applyWG.Go(func() {
			for {
				select {
				case <-c.applyStop:
					return
				default:
				}
				l := c.currentLeader()
				if l == nil {
					time.Sleep(5 * time.Millisecond) // pacing while leaderless
					continue
				}
				if l.raft.Apply(benchValue, time.Second).Error() == nil {
					c.applied.Add(1)
				}
				time.Sleep(time.Millisecond) // pacing: a steady stream, not a flood
			}
		})
	}
}

func (c *plCluster) stopApplies() {
	c.applyOnce.Do(func() { close(c.applyStop) })
	c.applyWG.Wait()
}

// waitCaughtUp waits until f's log reaches l's last index of now.
func (c *plCluster) waitCaughtUp(l, f *plNode, what string) time.Duration {
	c.t.Helper()
	start := time.Now()
	target := l.raft.LastIndex()
	rafttest.WaitFor(c.t, 15*time.Second, what, func() bool { return f.raft.LastIndex() >= target })
	return time.Since(start)
}

// close stops the cluster: every Shutdown (bounded), then every stream.
func (c *plCluster) close() {
	c.stopApplies()
	for _, n := range c.nodes {
		if n.raft != nil {
			n.startShutdown()
		}
	}
	for _, n := range c.nodes {
		if n.raft == nil {
			continue
		}
		if !n.waitShutdown(2 * plShutdownBound) {
			c.t.Errorf("node %s: Shutdown still blocked after %v; closing its pipelines", n.name(), 2*plShutdownBound)
			n.trans.releasePipelines()
			if !n.waitShutdown(plShutdownBound) {
				c.t.Errorf("node %s: Shutdown still blocked after closing its pipelines", n.name())
			}
		}
	}
	for _, n := range c.nodes {
		n.trans.CloseStreams()
		_ = n.trans.Close()
		n.layer.closeStreams()
	}
}

// plWait polls cond until it holds or timeout passes, and reports which.
func plWait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(rafttest.PollInterval)
	}
	return true
}

// plWedged watches f for window and reports whether replication to it has
// stopped while its heartbeats go on: f's last index stays put, the leader l
// keeps committing, and f heard from l within a heartbeat timeout.
func plWedged(l, f *plNode, window time.Duration) (bool, string) {
	idx0, commit0 := f.raft.LastIndex(), l.raft.CommitIndex()
	deadline := time.Now().Add(window)
	for time.Now().Before(deadline) {
		if idx := f.raft.LastIndex(); idx != idx0 {
			return false, fmt.Sprintf("follower's log moved on from %d to %d", idx0, idx)
		}
		time.Sleep(rafttest.PollInterval)
	}
	commit1 := l.raft.CommitIndex()
	contact := time.Since(f.raft.LastContact())
	state := f.raft.State()
	detail := fmt.Sprintf("follower's last index stayed at %d for %v while the leader committed %d -> %d; the follower (%v) last heard from the leader %v ago",
		idx0, window, commit0, commit1, state, contact.Round(time.Millisecond))
	return commit1 > commit0 && contact < PresetLocal.Timeouts().HeartbeatTimeout && state == hraft.Follower, detail
}

// plAttempts is how many failures the control injects before it gives up.
func plAttempts(hold bool) int {
	if hold {
		return 5
	}
	return 20
}

// TestTransportPipelineDeadlock: a follower answers Success=false while the
// leader's pipeline to it is full, then leadership changes. The control
// (hashicorp's pipelining) deadlocks: replication to the follower stops while
// its heartbeats go on, and the old leader's Shutdown never returns, even
// with every stream closed, until the pipeline is closed under it. The
// library's transport (no pipelining) replicates again as soon as the
// follower recovers, through a leadership and a membership change, and every
// Shutdown returns within plShutdownBound.
func TestTransportPipelineDeadlock(t *testing.T) {
	t.Run("control-pipelined", func(t *testing.T) {
		hold := os.Getenv("TAURAFT_PIPELINE_NOHOLD") == ""
		c := startPLCluster(t, "/raft/pipeline-control", true, !hold)
		c.startApplies(4)
		var (
			l, f, h *plNode
			wedged  bool
			detail  string
			tries   int
		)
		for tries < plAttempts(hold) && !wedged {
			tries++
			l = c.leader()
			f, h = c.followers(l)
			rafttest.WaitFor(t, 15*time.Second, "the leader to pipeline appends to the follower", func() bool {
				_, open, ok := l.trans.pipelined(f.id)
				return ok > 0 || (l.trans.direct && open > 0)
			})
			failed0, released0 := f.store.failed.Load(), l.trans.released.Load()
			if hold {
				l.trans.hold.Store(&f.id)
			}
			armed := time.Now()
			f.store.failNext.Store(1)
			rafttest.WaitFor(t, 10*time.Second, "the follower to fail an append", func() bool { return f.store.failed.Load() > failed0 })
			if hold && !plWait(2*time.Second, func() bool { return l.trans.released.Load() > released0 }) {
				// The failed append was not a pipelined one (the leader
				// had just fallen back to plain AppendEntries): again.
				l.trans.hold.Store(nil)
				t.Logf("attempt %d: the failed append was not pipelined; again", tries)
				c.waitCaughtUp(l, f, "the follower to catch up before another attempt")
				continue
			}
			wedged, detail = plWedged(l, f, 2*time.Second)
			t.Logf("attempt %d (%v after the failure was armed): wedged=%v: %s", tries, time.Since(armed).Round(time.Millisecond), wedged, detail)
			if !wedged {
				c.waitCaughtUp(l, f, "the follower to catch up before another attempt")
			}
		}
		if !wedged {
			t.Logf("control did not reproduce the pipeline deadlock on this run (%d attempts, hold=%v)", tries, hold)
			return
		}
		opened, _, _ := l.trans.pipelined(f.id)
		t.Logf("control: pipeline deadlock reproduced on attempt %d (hold=%v; %d pipelines opened to the follower)", tries, hold, opened)

		// Leadership changes: the other follower takes over and replicates
		// to the stuck one; the old leader's blocked goroutine stays.
		if err := l.raft.LeadershipTransferToServer(h.id, h.addr()).Error(); err != nil {
			t.Logf("control: leadership transfer: %v", err)
		}
		nl := c.leader()
		if nl == l {
			t.Fatalf("control: leadership stayed on the wedged leader")
		}
		took := c.waitCaughtUp(nl, f, "the stuck follower to catch up from the new leader")
		t.Logf("control: after the leadership change the follower caught up from the new leader in %v", took.Round(time.Millisecond))
		c.stopApplies()

		l.startShutdown()
		if l.waitShutdown(plShutdownBound) {
			t.Logf("control: the old leader's Shutdown returned in %v: no deadlock after all", l.took)
			return
		}
		t.Logf("control: reproduced: the old leader's Shutdown has not returned after %v", plShutdownBound)
		l.trans.CloseStreams()
		l.layer.closeStreams()
		if l.waitShutdown(2 * time.Second) {
			t.Logf("control: closing the old leader's streams released its Shutdown (%v in all)", l.took)
		} else {
			t.Logf("control: closing every stream of the old leader did not release it (its goroutines wait on channels, not I/O)")
			start := time.Now()
			l.trans.releasePipelines()
			if !l.waitShutdown(plShutdownBound) {
				t.Errorf("control: the old leader's Shutdown still blocked after closing its pipelines")
				return
			}
			t.Logf("control: closing its pipelines released it in %v (Shutdown took %v in all)", time.Since(start).Round(time.Millisecond), l.took.Round(time.Millisecond))
		}
	})

	t.Run("library", func(t *testing.T) {
		c := startPLCluster(t, "/raft/pipeline-library", false, false)
		l := c.leader()
		f, h := c.followers(l)
		c.startApplies(4)
		c.waitCaughtUp(l, f, "the follower to replicate")

		// Round 1: the follower refuses every append, leadership moves.
		failed0 := f.store.failed.Load()
		f.store.failNext.Store(math.MaxInt64)
		rafttest.WaitFor(t, 10*time.Second, "the follower to refuse appends", func() bool { return f.store.failed.Load() >= failed0+2 })
		if err := l.raft.LeadershipTransferToServer(h.id, h.addr()).Error(); err != nil {
			t.Fatalf("leadership transfer: %v", err)
		}
		nl := c.leader()
		if nl == l {
			t.Fatalf("leadership stayed on the old leader")
		}
		f.store.failNext.Store(0)
		took := c.waitCaughtUp(nl, f, "the follower to catch up after leadership moved")
		t.Logf("round 1 (%d appends refused, then leadership moved): the follower caught up in %v", f.store.failed.Load()-failed0, took.Round(time.Millisecond))

		// Round 2: the follower refuses every append, it is removed and
		// added back.
		failed0 = f.store.failed.Load()
		f.store.failNext.Store(math.MaxInt64)
		rafttest.WaitFor(t, 10*time.Second, "the follower to refuse appends", func() bool { return f.store.failed.Load() >= failed0+2 })
		if err := nl.raft.RemoveServer(f.id, 0, 5*time.Second).Error(); err != nil {
			t.Fatalf("remove the follower: %v", err)
		}
		if err := nl.raft.AddVoter(f.id, f.addr(), 0, 5*time.Second).Error(); err != nil {
			t.Fatalf("add the follower back: %v", err)
		}
		f.store.failNext.Store(0)
		took = c.waitCaughtUp(nl, f, "the follower to catch up after it was removed and added back")
		t.Logf("round 2 (%d appends refused, then removed and added back): the follower caught up in %v", f.store.failed.Load()-failed0, took.Round(time.Millisecond))
		c.stopApplies()

		var refused int64
		for _, n := range c.nodes {
			if k := n.trans.openedTotal(); k > 0 {
				t.Errorf("node %s opened %d pipelines with the library's transport", n.name(), k)
			}
			refused += n.trans.refused.Load()
		}
		if refused == 0 {
			t.Errorf("Raft never asked the library's transport for a pipeline: the scenario did not reach pipelining")
		}
		t.Logf("%d writes applied; Raft asked for a pipeline %d times and got plain AppendEntries", c.applied.Load(), refused)

		for _, n := range c.nodes {
			n.startShutdown()
		}
		for _, n := range c.nodes {
			if !n.waitShutdown(plShutdownBound) {
				t.Errorf("node %s: Shutdown did not return within %v", n.name(), plShutdownBound)
				continue
			}
			t.Logf("node %s: Shutdown returned in %v", n.name(), n.took.Round(time.Microsecond))
		}
	})
}

// ---- 2. Close under a stalled network ----
//
// A stall, unlike rafttest's Cut, closes nothing: connections stay open and
// nothing gets through them, so every RPC waits for its deadline and no
// error tells Raft to give up. That is what a member sees when a peer's
// process is frozen (SIGSTOP, a VM paused, a GC pause of minutes) or when a
// link black-holes its packets, until TCP or yamux keepalives notice, tens
// of seconds later. It is built here with a TCP proxy on every link: each
// host reaches each other host only through its own proxy (a connection
// gater refuses every other dial), and a frozen proxy stops copying bytes
// in both directions while it keeps both sockets open, so the kernels
// accept a little and then everything waits. Pausing Raft alone would leave
// libp2p answering and streams erroring; closing connections is a cut.

// stallNet is a set of freezable proxies, one per ordered pair of hosts.
type stallNet struct {
	mu      sync.Mutex
	allow   map[peer.ID]map[string]bool // dialer -> proxy addresses it may dial
	proxies map[[2]peer.ID]*stallProxy  // (from, to) -> the proxy from dials to reach to
	addrs   map[[2]peer.ID]multiaddr.Multiaddr
}

func newStallNet() *stallNet {
	return &stallNet{
		allow:   map[peer.ID]map[string]bool{},
		proxies: map[[2]peer.ID]*stallProxy{},
		addrs:   map[[2]peer.ID]multiaddr.Multiaddr{},
	}
}

// stallGater is a host's gater: the mesh's (rafttest's Switch) plus: dial
// only the proxies set up for this host.
type stallGater struct {
	connmgr.ConnectionGater
	net  *stallNet
	self peer.ID
}

func (g *stallGater) InterceptAddrDial(p peer.ID, a multiaddr.Multiaddr) bool {
	g.net.mu.Lock()
	ok := g.net.allow[g.self][a.String()]
	g.net.mu.Unlock()
	return ok && g.ConnectionGater.InterceptAddrDial(p, a)
}

// newStallMesh starts n hosts whose every link goes through a proxy of the
// returned stallNet, and connects them all.
func newStallMesh(t *testing.T, n int) (*rafttest.Mesh, *stallNet) {
	t.Helper()
	sn := newStallNet()
	mesh := rafttest.NewMesh(t, n, rafttest.WithNodeConfig(func(_ int, cfg *p2pnode.Config) {
		id, err := peer.IDFromPrivateKey(cfg.PrivKey)
		if err != nil {
			panic(err)
		}
		cfg.ConnectionGater = &stallGater{ConnectionGater: cfg.ConnectionGater, net: sn, self: id}
	}))
	t.Cleanup(sn.close) // after whatever the test registers later, before the hosts close
	for i := range n {
		for j := range n {
			if i != j {
				sn.addProxy(t, mesh, i, j)
			}
		}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := mesh.Node(i).Peer().Connect(ctx, peer.AddrInfo{ID: mesh.ID(j), Addrs: []multiaddr.Multiaddr{sn.addr(mesh.ID(i), mesh.ID(j))}})
			cancel()
			if err != nil {
				t.Fatalf("connect %d to %d through the proxy: %v", i, j, err)
			}
		}
	}
	return mesh, sn
}

// addProxy starts the proxy host i dials to reach host j.
func (sn *stallNet) addProxy(t *testing.T, mesh *rafttest.Mesh, i, j int) {
	t.Helper()
	var target string
	for _, a := range mesh.Node(j).AddrInfo().Addrs {
		if na, err := manet.ToNetAddr(a); err == nil {
			if ta, ok := na.(*net.TCPAddr); ok && ta.IP.IsLoopback() {
				target = ta.String()
				break
			}
		}
	}
	if target == "" {
		t.Fatalf("host %d has no loopback TCP address", j)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ma, err := manet.FromNetAddr(ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	from, to := mesh.ID(i), mesh.ID(j)
	sn.mu.Lock()
	if sn.allow[from] == nil {
		sn.allow[from] = map[string]bool{}
	}
	sn.allow[from][ma.String()] = true
	sn.proxies[[2]peer.ID{from, to}] = p
	sn.addrs[[2]peer.ID{from, to}] = ma
	sn.mu.Unlock()
	mesh.Node(i).Peer().Peerstore().AddAddr(to, ma, peerstore.PermanentAddrTTL)
	p.wg.Add(1)
	go p.serve()
}

func (sn *stallNet) addr(from, to peer.ID) multiaddr.Multiaddr {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.addrs[[2]peer.ID{from, to}]
}

// freeze stalls the link between a and b, both ways.
func (sn *stallNet) freeze(a, b peer.ID) { sn.setFrozen(a, b, true) }

func (sn *stallNet) setFrozen(a, b peer.ID, frozen bool) {
	sn.mu.Lock()
	ps := []*stallProxy{sn.proxies[[2]peer.ID{a, b}], sn.proxies[[2]peer.ID{b, a}]}
	sn.mu.Unlock()
	for _, p := range ps {
		if p != nil {
			p.setFrozen(frozen)
		}
	}
}

// thawAll lets every link carry bytes again.
func (sn *stallNet) thawAll() {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	for _, p := range sn.proxies {
		p.setFrozen(false)
	}
}

// close stops every proxy and closes every connection through them.
func (sn *stallNet) close() {
	sn.mu.Lock()
	ps := make([]*stallProxy, 0, len(sn.proxies))
	for _, p := range sn.proxies {
		ps = append(ps, p)
	}
	sn.mu.Unlock()
	for _, p := range ps {
		p.close()
	}
}

// stallProxy forwards TCP connections to target; frozen, it holds the bytes.
type stallProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{} // closed when thawed; valid while frozen
	closed bool
	conns  map[net.Conn]struct{}
}

func (p *stallProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst, holding every chunk while the proxy is frozen
// (and so reading nothing more from src).
func (p *stallProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitThawed() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitThawed waits while the proxy is frozen; false once it is closed.
func (p *stallProxy) waitThawed() bool {
	for {
		p.mu.Lock()
		closed, frozen, thaw := p.closed, p.frozen, p.thaw
		p.mu.Unlock()
		if closed {
			return false
		}
		if !frozen {
			return true
		}
		<-thaw
	}
}

func (p *stallProxy) setFrozen(frozen bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || frozen == p.frozen {
		return
	}
	p.frozen = frozen
	if frozen {
		p.thaw = make(chan struct{})
	} else {
		close(p.thaw)
	}
}

func (p *stallProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// stallCluster forms a 3-member library cluster on a stallable mesh.
func stallCluster(t *testing.T, ns string) (*rafttest.Mesh, *stallNet, *testCluster) {
	t.Helper()
	mesh, sn := newStallMesh(t, 3)
	tc := newTestCluster(t, mesh, ns)
	t.Cleanup(sn.thawAll) // first: the remaining members then close normally
	tc.form(30*time.Second, 0, 1, 2)
	return mesh, sn, tc
}

// stallClose closes c and measures it. At each of the times at (from the
// start of Close) at which Close is still running, it notes the stacks of the
// goroutines then closing one of the stream layer's streams, in short. Close
// should be done in about an election timeout (two for a leader) once
// closing the streams has unblocked Raft.
func stallClose(c Cluster, at ...time.Duration) (took time.Duration, err error, stuck string) {
	done := make(chan struct{})
	stacks := make(chan string, 1)
	start := time.Now()
	go func() {
		var b strings.Builder
		defer func() { stacks <- b.String() }()
		for _, d := range at {
			timer := time.NewTimer(time.Until(start.Add(d)))
			select {
			case <-done:
				timer.Stop()
				return
			case <-timer.C:
			}
			fmt.Fprintf(&b, "\n%v into Close, these goroutines were closing transport streams:\n%s", d, layerCloseStacks())
		}
	}()
	err = c.Close()
	took = time.Since(start)
	close(done)
	return took, err, <-stacks
}

// layerCloseStacks lists the goroutines inside layerConn.Close, or closing a
// stream from streamLayer.track, each as its state and the functions on its
// stack.
func layerCloseStacks() string {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	var out []string
	for _, g := range strings.Split(b.String(), "\n\n") {
		inTrack := strings.Contains(g, "raft.(*streamLayer).track") && strings.Contains(g, ").Close")
		if !strings.Contains(g, "raft.(*layerConn).Close") && !inTrack {
			continue
		}
		var frames []string
		for k, line := range strings.Split(g, "\n") {
			if k == 0 || (!strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "created by")) {
				if j := strings.LastIndex(line, "("); k > 0 && j > 0 {
					line = line[:j]
				}
				frames = append(frames, line)
			}
		}
		out = append(out, "  "+strings.Join(frames, "\n    "))
	}
	return strings.Join(out, "\n")
}

// TestCloseUnderStalledNetwork: Close returns within its documented bound
// (a leader's hand-off and a grace period, one election timeout each, then
// ShutdownTimeout) when the network under the member stalls, for a member
// cut off by the stall and for a leader whose followers stall.
func TestCloseUnderStalledNetwork(t *testing.T) {
	et := PresetLocal.Timeouts().ElectionTimeout
	const margin = 3 * time.Second

	t.Run("stalled-member", func(t *testing.T) {
		mesh, sn, tc := stallCluster(t, "/raft/stall-member")
		l := tc.leader(15 * time.Second)
		s := tc.follower(l, 0)
		tc.set("before", []byte("1"))
		tc.waitValue(s, "before", []byte("1"))

		for _, o := range others(s, 3) {
			sn.freeze(mesh.ID(s), mesh.ID(o))
		}
		cs := tc.get(s).(*cluster)
		// The stall bites: the member hears nothing, stands for election,
		// and its vote requests wait on the stalled streams.
		rafttest.WaitFor(t, 15*time.Second, "the stalled member to stand for election", func() bool { return cs.State() == hraft.Candidate })
		// The others go on without it.
		tc.set("during", []byte("2"), others(s, 3)...)

		tc.forget(s)
		took, err, stuck := stallClose(cs, et+2*time.Second, et+ShutdownTimeout/2+ShutdownTimeout)
		bound := et + ShutdownTimeout + margin
		t.Logf("Close of the stalled member took %v (bound %v): %v%s", took.Round(time.Millisecond), bound, err, stuck)
		if took > bound {
			t.Errorf("Close of the stalled member took %v, over its bound %v", took, bound)
		}
		if err != nil {
			t.Errorf("Close of the stalled member: %v", err)
		}
	})

	t.Run("leader-with-stalled-followers", func(t *testing.T) {
		mesh, sn, tc := stallCluster(t, "/raft/stall-leader")
		l := tc.leader(15 * time.Second)
		fs := others(l, 3)
		tc.set("before", []byte("1"))
		cl := tc.get(l).(*cluster)

		for _, f := range fs {
			sn.freeze(mesh.ID(l), mesh.ID(f))
		}
		// A write in flight: replication to both followers waits on them.
		var wg sync.WaitGroup
		var writeErr error
		wg.Go(func() { writeErr = cl.Set("during", []byte("2"), 5*time.Second) })
		wasLeader := cl.IsLeader()

		tc.forget(l)
		took, err, stuck := stallClose(cl, 2*et+2*time.Second, 2*et+ShutdownTimeout/2+ShutdownTimeout)
		wg.Wait()
		bound := 2*et + ShutdownTimeout + margin
		t.Logf("Close of the leader (leading when Close began: %v) with stalled followers took %v (bound %v): %v; the write in flight: %v%s",
			wasLeader, took.Round(time.Millisecond), bound, err, writeErr, stuck)
		if took > bound {
			t.Errorf("Close of the leader took %v, over its bound %v", took, bound)
		}
		if err != nil {
			t.Errorf("Close of the leader: %v", err)
		}

		// The followers, still linked to each other, carry on.
		tc.leaderAmong(15*time.Second, fs...)
		tc.set("after", []byte("3"), fs...)
	})
}

// ---- 3. Inbound stream caps ----

// capStreams are raw transport streams opened to a member, each with a
// reader that tells whether the member closed it.
type capStreams struct {
	mu      sync.Mutex
	streams []network.Stream
	closing atomic.Bool
	wg      sync.WaitGroup

	refused atomic.Int64 // closed by the member
	other   atomic.Int64 // ended otherwise before we closed them
	slowest atomic.Int64 // longest time from open to refusal, ns
}

// open opens n streams of proto from h to the member to and starts their
// readers (the first Read also completes libp2p's lazy protocol handshake,
// so the member sees the stream).
func (cs *capStreams) open(t *testing.T, h host.Host, to peer.ID, proto protocol.ID, n int) {
	t.Helper()
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := h.NewStream(ctx, to, proto)
		cancel()
		if err != nil {
			t.Fatalf("open a transport stream to %s: %v", shortID(to), err)
		}
		opened := time.Now()
		cs.mu.Lock()
		cs.streams = append(cs.streams, s)
		cs.mu.Unlock()
		cs.wg.Go(func() {
			_ = s.SetReadDeadline(time.Now().Add(time.Minute))
			_, err := s.Read(make([]byte, 1))
			if cs.closing.Load() {
				return
			}
			// Refused: closed (EOF) or reset by the member.
			if errors.Is(err, io.EOF) || errors.Is(err, network.ErrReset) {
				cs.refused.Add(1)
				d := int64(time.Since(opened))
				for old := cs.slowest.Load(); d > old && !cs.slowest.CompareAndSwap(old, d); old = cs.slowest.Load() {
				}
				return
			}
			cs.other.Add(1)
		})
	}
}

// close resets every stream and waits for the readers.
func (cs *capStreams) close() {
	cs.closing.Store(true)
	cs.mu.Lock()
	ss := cs.streams
	cs.streams = nil
	cs.mu.Unlock()
	for _, s := range ss {
		_ = s.Reset()
	}
	cs.wg.Wait()
}

// layerCounts reads c's stream layer: open inbound streams from p, and from
// non-members together.
func layerCounts(c Cluster, p peer.ID) (fromPeer, nonMembers int) {
	cl := c.(*cluster)
	layer := cl.run.Load().layer
	layer.connMu.Lock()
	defer layer.connMu.Unlock()
	return layer.inbound[p], layer.nonMembers
}

// TestTransportStreamCaps: a member peer opens more idle transport streams to
// the leader than transportStreamsPerPeer, and peers outside the
// configuration more than transportStreamsNonMembers together. The excess
// are closed at once, the leader keeps at most the caps open, and the
// cluster keeps working; closed streams are forgotten.
func TestTransportStreamCaps(t *testing.T) {
	const members, outsiders, perOutsider = 3, 4, 6 // 24 streams from outsiders
	mesh := rafttest.NewMesh(t, members+outsiders, rafttest.Connected())
	ns := "/raft/stream-caps"
	tc := newTestCluster(t, mesh, ns)
	tc.form(30*time.Second, seq(members)...)
	l := tc.leader(15 * time.Second)
	f := tc.follower(l, 0)
	lc := tc.get(l)
	hl := mesh.Node(l).Peer()
	proto := TransportProtocol(ns)

	// One member peer over its cap.
	fromMember := &capStreams{}
	t.Cleanup(fromMember.close)
	before := inboundStreams(hl, mesh.ID(f), proto)
	n1 := transportStreamsPerPeer + 4
	fromMember.open(t, mesh.Node(f).Peer(), mesh.ID(l), proto, n1)
	rafttest.WaitFor(t, 10*time.Second, "the streams over the member's cap to be closed", func() bool {
		return fromMember.refused.Load() >= int64(n1-transportStreamsPerPeer)
	})
	open := inboundStreams(hl, mesh.ID(f), proto)
	tracked, _ := layerCounts(lc, mesh.ID(f))
	t.Logf("member peer: %d streams open before, opened %d, %d closed at once (slowest %v), %d open on the leader (layer counts %d), cap %d",
		before, n1, fromMember.refused.Load(), time.Duration(fromMember.slowest.Load()).Round(time.Millisecond), open, tracked, transportStreamsPerPeer)
	if open > transportStreamsPerPeer || tracked > transportStreamsPerPeer {
		t.Errorf("the leader holds %d streams from one peer (layer counts %d), over the cap %d", open, tracked, transportStreamsPerPeer)
	}
	if n := fromMember.other.Load(); n > 0 {
		t.Errorf("%d streams from the member peer ended otherwise than closed by the leader", n)
	}

	// Peers outside the configuration, over their common cap.
	fromOutsiders := &capStreams{}
	t.Cleanup(fromOutsiders.close)
	for i := members; i < members+outsiders; i++ {
		fromOutsiders.open(t, mesh.Node(i).Peer(), mesh.ID(l), proto, perOutsider)
	}
	total := outsiders * perOutsider
	rafttest.WaitFor(t, 10*time.Second, "the streams over the non-members' cap to be closed", func() bool {
		return fromOutsiders.refused.Load() >= int64(total-transportStreamsNonMembers)
	})
	outsiderStreams := func() int {
		n := 0
		for i := members; i < members+outsiders; i++ {
			n += inboundStreams(hl, mesh.ID(i), proto)
		}
		return n
	}
	_, nonMembers := layerCounts(lc, "")
	open = outsiderStreams()
	t.Logf("non-members: opened %d, %d closed at once (slowest %v), %d open on the leader (layer counts %d), cap %d",
		total, fromOutsiders.refused.Load(), time.Duration(fromOutsiders.slowest.Load()).Round(time.Millisecond), open, nonMembers, transportStreamsNonMembers)
	if open != transportStreamsNonMembers || nonMembers != transportStreamsNonMembers {
		t.Errorf("the leader holds %d streams from non-members (layer counts %d), want exactly the cap %d", open, nonMembers, transportStreamsNonMembers)
	}
	if n := fromOutsiders.other.Load(); n > 0 {
		t.Errorf("%d streams from non-members ended otherwise than closed by the leader", n)
	}

	// The cluster keeps working while the streams are held.
	tc.set("during-flood", []byte("1"))
	for i := range members {
		tc.waitValue(i, "during-flood", []byte("1"))
	}

	// Closed streams are forgotten: the caps are free again.
	fromMember.close()
	fromOutsiders.close()
	rafttest.WaitFor(t, 10*time.Second, "the leader to forget the closed streams", func() bool {
		fromPeer, nonMembers := layerCounts(lc, mesh.ID(f))
		return nonMembers == 0 && outsiderStreams() == 0 && fromPeer < transportStreamsPerPeer
	})
	tc.set("after-flood", []byte("2"))
	for i := range members {
		tc.waitValue(i, "after-flood", []byte("2"))
	}
}
