package raft

// Lifecycle tests of cluster.go: the public accessors never wait behind a
// reset, a Close or a restart, and logging never holds Raft up.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/ipfs/go-datastore"
	"github.com/tauraft/raft/rafttest"
)

// gate blocks whoever passes it while it is shut.
type gate struct {
	mu   sync.Mutex
	open chan struct{} // closed while the gate is open
}

func newGate() *gate {
	g := &gate{open: make(chan struct{})}
	close(g.open)
	return g
}

// shut makes pass block until reopen.
func (g *gate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default:
	}
}

// reopen lets everyone through again.
func (g *gate) reopen() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *gate) pass() {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	<-ch
}

// stallDS is a datastore whose writes (a stalled disk) wait at a gate;
// reads pass.
type stallDS struct {
	datastore.Batching
	g *gate
}

func (d *stallDS) Put(ctx context.Context, k datastore.Key, v []byte) error {
	d.g.pass()
	return d.Batching.Put(ctx, k, v)
}

func (d *stallDS) Delete(ctx context.Context, k datastore.Key) error {
	d.g.pass()
	return d.Batching.Delete(ctx, k)
}

func (d *stallDS) Batch(ctx context.Context) (datastore.Batch, error) {
	b, err := d.Batching.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &stallBatch{Batch: b, g: d.g}, nil
}

type stallBatch struct {
	datastore.Batch
	g *gate
}

func (b *stallBatch) Commit(ctx context.Context) error {
	b.g.pass()
	return b.Batch.Commit(ctx)
}

// stallWriter is a log sink that blocks while its gate is shut (a stderr
// nobody reads).
type stallWriter struct {
	g     *gate
	lines atomic.Int64
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.g.pass()
	w.lines.Add(1)
	return len(p), nil
}

// accessorWatch calls every public accessor of the members in a loop and
// keeps the slowest call of each.
type accessorWatch struct {
	mu      sync.Mutex
	slowest map[string]time.Duration
	calls   atomic.Int64
	// late sums how late the stall probe woke up, all told: the part of
	// a call's time during which the process was not running it.
	late atomic.Int64
}

func (w *accessorWatch) time(name string, f func()) {
	late0 := w.late.Load()
	start := time.Now()
	f()
	d := time.Since(start) - time.Duration(w.late.Load()-late0)
	w.calls.Add(1)
	w.mu.Lock()
	if d > w.slowest[name] {
		w.slowest[name] = d
	}
	w.mu.Unlock()
}

// run calls the accessors of tc's member i (whichever cluster runs there
// at the time) until ctx ends.
func (w *accessorWatch) run(ctx context.Context, tc *testCluster, i int) {
	for ctx.Err() == nil {
		c := tc.get(i)
		if c == nil {
			time.Sleep(time.Millisecond)
			continue
		}
		w.time("IsLeader", func() { c.IsLeader() })
		w.time("Leader", func() { _, _ = c.Leader() })
		w.time("State", func() { c.State() })
		w.time("Members", func() { _, _ = c.Members() })
		w.time("Get", func() { c.Get("k") })
		w.time("Keys", func() { c.Keys("") })
		w.time("Namespace", func() { c.Namespace() })
		time.Sleep(100 * time.Microsecond)
	}
}

// stalls measures, until ctx ends, the longest time the process could not
// run a goroutine that was ready: how late a 1 ms sleep wakes up.
func (w *accessorWatch) stalls(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		time.Sleep(time.Millisecond)
		late := time.Since(start) - time.Millisecond
		w.late.Add(int64(late))
		w.mu.Lock()
		if late > w.slowest[stallName] {
			w.slowest[stallName] = late
		}
		w.mu.Unlock()
	}
}

// stallName is the key of the scheduling stall in accessorWatch.slowest.
const stallName = "(scheduling stall)"

// TestAccessorsNeverBlock calls IsLeader, Leader, State, Members, Get, Keys
// and Namespace on every member in a loop while the leader's disk stalls
// and it resets (its Raft cannot stop until the disk comes back), a
// follower resets, and a member closes and starts again; all the while the
// members' log output is stuck. No call may take over 50 ms (Keys, a scan: 500 ms), and writes go
// on while nothing can be logged. (On a loaded machine the whole process
// can go unscheduled for a while, which a probe measures by how late a
// 1 ms sleep wakes up: the stalls it saw during a call are not counted as
// the call's, and the longest one is allowed on top.)
func TestAccessorsNeverBlock(t *testing.T) {
	const n = 3
	mesh := rafttest.NewMesh(t, n, rafttest.Connected(), rafttest.WithPebble())
	tc := newTestCluster(t, mesh, "/raft/accessors")
	logGate := newGate()
	sink := &stallWriter{g: logGate}
	diskGates := make([]*gate, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		diskGates[i] = newGate()
		logger := hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Debug, Output: sink})
		opts := append(append(append([]Option{}, tc.opts...), forceFirst(i)...), WithLogger(logger))
		wg.Go(func() {
			node := &faultNode{Node: mesh.Node(i), store: &stallDS{Batching: mesh.Node(i).Store(), g: diskGates[i]}}
			c, err := New(node, tc.ns, opts...)
			if err != nil {
				errs[i] = err
				return
			}
			tc.mu.Lock()
			tc.clusters[i] = c
			tc.mu.Unlock()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	other := others(l, n)
	restart := other[0]
	if restart == f {
		restart = other[1]
	}

	watch := &accessorWatch{slowest: map[string]time.Duration{}}
	ctx, stop := context.WithCancel(context.Background())
	var hammer sync.WaitGroup
	for i := range n {
		hammer.Go(func() { watch.run(ctx, tc, i) })
	}
	hammer.Go(func() { watch.stalls(ctx) })

	// Writes through whichever member leads, all along.
	var acked atomic.Int64
	writes := make(chan struct{})
	go func() {
		defer close(writes)
		for k := 0; ctx.Err() == nil; k++ {
			for _, i := range tc.running() {
				if c := tc.get(i); c != nil && c.IsLeader() {
					if c.Set(fmt.Sprintf("w%d", k), []byte("v"), time.Second) == nil {
						acked.Add(1)
					}
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() {
		// Before the members close: Close drains the logs.
		logGate.reopen()
		stop()
		hammer.Wait()
		<-writes
	}()

	// The log output sticks, and a burst of errors fills the leader's
	// queue: lines are dropped, Raft carries on.
	logGate.shut()
	lc := tc.get(l).(*cluster)
	for k := range logQueueSize + 100 {
		lc.logger.Error("a burst of errors", "n", k)
	}
	if lc.logq.dropped.Load() == 0 {
		t.Fatal("no line dropped: the queue never filled")
	}
	before := acked.Load()
	tc.waitFor(10*time.Second, "writes while the log output is stuck", func() bool { return acked.Load() >= before+20 })

	// The leader's disk stalls under its writes, and it resets: its Raft
	// cannot stop until the disk is back.
	diskGates[l].shut()
	resetDone := make(chan error, 1)
	go func() { resetDone <- tc.get(l).(*cluster).reset() }()
	time.Sleep(1500 * time.Millisecond) // the reset is stuck meanwhile; the accessors are timed
	select {
	case err := <-resetDone:
		t.Fatalf("the reset finished while the disk was stalled: %v", err)
	default:
	}
	diskGates[l].reopen()
	if err := <-resetDone; err != nil {
		t.Fatalf("reset of the leader: %v", err)
	}

	// A follower resets, another member closes and starts again.
	if err := tc.get(f).(*cluster).reset(); err != nil {
		t.Fatalf("reset of a follower: %v", err)
	}
	tc.stop(restart)
	node := &faultNode{Node: mesh.Node(restart), store: &stallDS{Batching: mesh.Node(restart).Store(), g: diskGates[restart]}}
	logger := hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Debug, Output: sink})
	c, err := New(node, tc.ns, append(append([]Option{}, tc.opts...), WithLogger(logger))...)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	tc.mu.Lock()
	tc.clusters[restart] = c
	tc.mu.Unlock()
	before = acked.Load()
	tc.waitFor(20*time.Second, "writes after the resets and the restart", func() bool { return acked.Load() >= before+20 })
	logGate.reopen()
	tc.waitVoters(20*time.Second, 0, 1, 2)

	stop()
	hammer.Wait()
	watch.mu.Lock()
	defer watch.mu.Unlock()
	t.Logf("%d accessor calls; slowest: %v; %d writes acknowledged", watch.calls.Load(), watch.slowest, acked.Load())
	noise := watch.slowest[stallName]
	for name, d := range watch.slowest {
		bound := 50 * time.Millisecond
		if name == "Keys" {
			// A scan of the replica's keys, whose cost under the race
			// detector on a busy machine reaches tens of milliseconds by
			// itself; the bound still catches a wait behind the stalled
			// reset (seconds).
			bound = 500 * time.Millisecond
		}
		if name != stallName && d > bound+noise {
			t.Errorf("%s took %v, over %v (plus %v of scheduling stalls)", name, d, bound, noise)
		}
	}
}
