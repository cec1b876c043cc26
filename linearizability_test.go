package raft

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// The linearizability test: concurrent Clients write and read (barrier
// reads) a few keys through random members while members are closed and
// restarted, cut off and partitioned; the history must be linearizable for a
// key-value register per key, and every acknowledged write must survive a
// restart of the whole cluster.

const (
	linMembers      = 5
	linClientNodes  = 2
	linWorkers      = 4
	linWriteTimeout = 2 * time.Second
	linBarrier      = 2 * time.Second
)

var linKeys = []string{"x", "y", "z"}

// linInput is one operation on one key: a write of Value, or a read.
type linInput struct {
	Write bool
	Key   string
	Value string
}

// linOutput is what a read returned (writes have no output).
type linOutput struct {
	Value string
	Found bool
}

// linModel is a register per key; the state of a partition is the key's
// value, "" while absent (values written are never empty).
var linModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(linInput).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in := state.(string), input.(linInput)
		if in.Write {
			return true, in.Value
		}
		out := output.(linOutput)
		if !out.Found {
			return st == "", st
		}
		return out.Value == st, st
	},
	DescribeOperation: func(input, output any) string {
		in := input.(linInput)
		if in.Write {
			return fmt.Sprintf("set(%s, %s)", in.Key, in.Value)
		}
		out, _ := output.(linOutput)
		if !out.Found {
			return fmt.Sprintf("get(%s) -> absent", in.Key)
		}
		return fmt.Sprintf("get(%s) -> %s", in.Key, out.Value)
	},
	DescribeState: func(state any) string {
		if state.(string) == "" {
			return "absent"
		}
		return state.(string)
	},
}

// linErrClass names an error for the summary.
func linErrClass(err error) string {
	if name := sentinelName(err); name != "" {
		return name
	}
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60]
	}
	return "other: " + msg
}

// linHistory records operations from every client.
type linHistory struct {
	start time.Time

	mu        sync.Mutex
	ops       []porcupine.Operation
	clientIDs int
	counts    map[string]int // "write ok", "write unknown", ...
	errs      map[string]int // error classes
	durable   []string       // acknowledged unique keys
}

func newLinHistory() *linHistory {
	return &linHistory{start: time.Now(), counts: map[string]int{}, errs: map[string]int{}}
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) newClientID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := h.clientIDs
	h.clientIDs++
	return id
}

// write records a register write; it reports whether its outcome was
// unknown (the caller then acts as a new client, as a crashed process).
func (h *linHistory) write(client int, key, value string, call, ret int64, err error) (unknown bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	op := porcupine.Operation{ClientId: client, Input: linInput{Write: true, Key: key, Value: value}, Call: call, Output: linOutput{}, Return: ret}
	switch {
	case err == nil:
		h.counts["write ok"]++
	case IsNotApplied(err):
		h.counts["write failed"]++
		h.errs["write: "+linErrClass(err)]++
		return false
	default:
		// The write may take effect at any time from its call on.
		op.Return = math.MaxInt64
		h.counts["write unknown"]++
		h.errs["write: "+linErrClass(err)]++
		unknown = true
	}
	h.ops = append(h.ops, op)
	return unknown
}

// read records a barrier read; failed reads are dropped.
func (h *linHistory) read(client int, key string, value []byte, found bool, call, ret int64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.counts["read failed"]++
		h.errs["read: "+linErrClass(err)]++
		return
	}
	h.counts["read ok"]++
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: linInput{Key: key}, Call: call, Output: linOutput{Value: string(value), Found: found}, Return: ret})
}

// durableWrite records a write of a unique key, outside the register
// history: acknowledged ones must all survive.
func (h *linHistory) durableWrite(key string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err == nil:
		h.counts["unique ok"]++
		h.durable = append(h.durable, key)
	case IsNotApplied(err):
		h.counts["unique failed"]++
	default:
		h.counts["unique unknown"]++
	}
}

func (h *linHistory) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(h.counts)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, h.counts[k]))
	}
	var errs []string
	for k, n := range h.errs {
		errs = append(errs, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(errs)
	return strings.Join(parts, " ") + "; errors: " + strings.Join(errs, ", ")
}

// linWorker runs one client until stop is closed: writes of unique values
// and barrier reads on the shared keys, and some writes of unique keys,
// each through the members in a random order.
func linWorker(h *linHistory, cl *Client, members []peer.ID, w int, seed int64, stop <-chan struct{}) {
	rng := rand.New(rand.NewSource(seed))
	client := h.newClientID()
	untilClosed(stop, func(n int) {
		targets := make([]peer.ID, len(members))
		for i, j := range rng.Perm(len(members)) {
			targets[i] = members[j]
		}
		key := linKeys[rng.Intn(len(linKeys))]
		switch r := rng.Intn(10); {
		case r < 4:
			value := fmt.Sprintf("w%d.%d", w, n)
			call := h.now()
			err := cl.Set(key, []byte(value), linWriteTimeout, targets...)
			if h.write(client, key, value, call, h.now(), err) {
				client = h.newClientID()
			}
		case r < 8:
			call := h.now()
			v, found, err := cl.Get(key, int64(linBarrier), targets...)
			h.read(client, key, v, found, call, h.now(), err)
		default:
			k := fmt.Sprintf("u/%d/%05d", w, n)
			h.durableWrite(k, cl.Set(k, []byte("v"+k), linWriteTimeout, targets...))
		}
		time.Sleep(time.Duration(rng.Intn(10)) * time.Millisecond)
	})
}

// linSleep sleeps between lo and hi.
func linSleep(rng *rand.Rand, lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(rng.Int63n(int64(hi-lo)+1)))
}

// linOtherMember picks a member other than l.
func linOtherMember(rng *rand.Rand, l int) int {
	o := rng.Intn(linMembers - 1)
	if o >= l {
		o++
	}
	return o
}

// linSeeds returns the seeds to run: TAURAFT_SEED alone, or three new ones.
func linSeeds(t *testing.T) []int64 {
	if env := os.Getenv("TAURAFT_SEED"); env != "" {
		s, err := strconv.ParseInt(env, 10, 64)
		if err != nil {
			t.Fatalf("TAURAFT_SEED=%q: %v", env, err)
		}
		return []int64{s}
	}
	base := time.Now().UnixNano() % 1_000_000_000
	return []int64{base, base + 1, base + 2}
}

// Concurrent clients, faults (leader closed and restarted, a follower cut
// off, a minority partition, in a random order), then a whole-cluster
// restart: the history of the shared keys is linearizable, and every
// acknowledged write of a unique key is on every member after the restart.
func TestLinearizable(t *testing.T) { linSeedRuns(t, "TestLinearizable", linRun) }

// linSeedRuns runs run once per seed of linSeeds, each in a subtest that
// says how to rerun it. The test runs beside the other parallel ones: it is
// long, and nothing in it is a bound on time.
func linSeedRuns(t *testing.T, name string, run func(t *testing.T, seed int64)) {
	t.Parallel()
	for _, seed := range linSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("seed %d (rerun with TAURAFT_SEED=%d go test -race -run '%s$' .)", seed, seed, name)
			run(t, seed)
		})
	}
}

// linCluster forms the linMembers-member cluster of namespace ns on a mesh
// with linClientNodes more nodes for clients, and returns the members' IDs.
func linCluster(t *testing.T, ns string, meshOpts ...rafttest.MeshOption) (*rafttest.Mesh, *testCluster, []int, []peer.ID) {
	mesh := rafttest.NewMesh(t, linMembers+linClientNodes, append([]rafttest.MeshOption{rafttest.Connected()}, meshOpts...)...)
	tc := newTestCluster(t, mesh, ns)
	members := seq(linMembers)
	tc.form(20*time.Second, members...)
	tc.leader(10 * time.Second)
	var ids []peer.ID
	for _, i := range members {
		ids = append(ids, mesh.ID(i))
	}
	return mesh, tc, members, ids
}

func linRun(t *testing.T, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	began := time.Now()
	mesh, tc, members, ids := linCluster(t, "/raft/lin", rafttest.WithPebble())

	h := newLinHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range linWorkers {
		cl, err := NewClient(mesh.Node(linMembers+w%linClientNodes), "/raft/lin", nil)
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		wg.Go(func() { linWorker(h, cl, ids, w, seed*100+int64(w), stop) })
	}
	stopWorkers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWorkers) // also when a fault step fails the test

	faults := []string{"leader restart", "follower isolated", "minority partition"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	linSleep(rng, 500*time.Millisecond, time.Second)
	for _, fault := range faults {
		l := tc.leader(15 * time.Second)
		at := time.Since(h.start).Round(time.Millisecond)
		switch fault {
		case "leader restart":
			t.Logf("%v: closing the leader, node %d", at, l)
			tc.stop(l)
			mesh.Stop(l)
			linSleep(rng, time.Second, 2*time.Second)
			mesh.Restart(l)
			tc.mustStart(l)
		case "follower isolated":
			f := linOtherMember(rng, l)
			t.Logf("%v: isolating node %d (leader %d)", at, f, l)
			mesh.Isolate(f)
			linSleep(rng, time.Second, 2*time.Second)
			mesh.Rejoin(f)
		case "minority partition":
			b := linOtherMember(rng, l)
			t.Logf("%v: partitioning {%d, %d} (the leader and one more) from the rest", at, l, b)
			for _, a := range []int{l, b} {
				for _, m := range members {
					if m != l && m != b {
						mesh.Cut(a, m)
					}
				}
			}
			linSleep(rng, 1500*time.Millisecond, 2500*time.Millisecond)
			mesh.HealAll()
		}
		linSleep(rng, 500*time.Millisecond, time.Second)
	}
	tc.waitVoters(20*time.Second, members...)
	linSleep(rng, 500*time.Millisecond, time.Second)
	stopWorkers()
	t.Logf("%v of load: %s", time.Since(h.start).Round(time.Millisecond), h.summary())

	// The whole cluster goes down and comes back from disk.
	for _, i := range members {
		tc.stop(i)
	}
	for _, i := range members {
		mesh.Stop(i)
	}
	restart := time.Now()
	for _, i := range members {
		mesh.Restart(i)
	}
	tc.form(20*time.Second, members...)
	tc.leader(20 * time.Second)
	t.Logf("whole cluster re-formed %v after its restart", time.Since(restart).Round(time.Millisecond))

	// Final barrier reads of the shared keys join the history: a restart
	// must not move them back in time.
	cl, err := NewClient(mesh.Node(linMembers), "/raft/lin", nil)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer cl.Close()
	client := h.newClientID()
	for _, k := range linKeys {
		tc.waitFor(20*time.Second, "a barrier read of "+k+" after the restart", func() bool {
			call := h.now()
			v, found, err := cl.Get(k, int64(linBarrier), ids...)
			if err == nil {
				h.read(client, k, v, found, call, h.now(), nil)
			}
			return err == nil
		})
	}

	// Durability: every acknowledged unique write is on every member.
	h.mu.Lock()
	durable := append([]string(nil), h.durable...)
	ops := append([]porcupine.Operation(nil), h.ops...)
	h.mu.Unlock()
	if len(durable) == 0 {
		t.Fatalf("no unique write was acknowledged: %s", h.summary())
	}
	for _, i := range members {
		c := tc.get(i)
		if err := c.Barrier(10 * time.Second); err != nil {
			t.Fatalf("barrier on node %d after the restart: %v", i, err)
		}
		if found := heldWrites(c, durable); found != len(durable) {
			t.Errorf("node %d holds %d of %d acknowledged unique writes after the restart", i, found, len(durable))
		}
	}
	t.Logf("durability: %d acknowledged unique writes, all found on all %d members", len(durable), linMembers)

	// Linearizability of the shared keys.
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(linModel, ops, 30*time.Second)
	t.Logf("porcupine: %s on %d operations in %v; seed %d done in %v", res, len(ops),
		time.Since(checkStart).Round(time.Millisecond), seed, time.Since(began).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("tauraft-linearizability-%d.html", seed))
		if err := porcupine.VisualizePath(linModel, info, path); err != nil {
			t.Logf("visualization: %v", err)
		} else {
			t.Logf("visualization in %s", path)
		}
		t.Fatalf("history is %s (seed %d; rerun with TAURAFT_SEED=%d)", res, seed, seed)
	}
}

// linSlowStore is a datastore whose batches that write key-value data (the
// state machine's applies) take linSlowApply to commit while slow is set: a
// slow disk under the state machine, while the Raft log stays fast.
type linSlowStore struct {
	datastore.Batching
	slow *atomic.Bool
}

const linSlowApply = 15 * time.Millisecond

func (s linSlowStore) Batch(ctx context.Context) (datastore.Batch, error) {
	b, err := s.Batching.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &linSlowBatch{Batch: b, slow: s.slow}, nil
}

type linSlowBatch struct {
	datastore.Batch
	slow *atomic.Bool
	data bool
}

func (b *linSlowBatch) Put(ctx context.Context, k datastore.Key, v []byte) error {
	if strings.Contains(k.String(), "/data/") {
		b.data = true
	}
	return b.Batch.Put(ctx, k, v)
}

func (b *linSlowBatch) Commit(ctx context.Context) error {
	if b.data && b.slow.Load() {
		time.Sleep(linSlowApply)
	}
	return b.Batch.Commit(ctx)
}

// Cluster.Barrier on a follower makes its local reads current: after it
// returns, Get sees every write acknowledged before Barrier was called, even
// when the follower's state machine is slower to apply than the leader's (a
// slow disk). One writer counts up on the leader; readers on both followers
// check that what they read after a Barrier is never older than the last
// count acknowledged before it.
func TestLinearizableFollowerBarrier(t *testing.T) {
	t.Parallel() // long and timing-free: it runs beside the other such tests
	slow := make([]atomic.Bool, 3)
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected(), rafttest.WithNodeConfig(func(i int, cfg *p2pnode.Config) {
		cfg.Datastore = linSlowStore{Batching: dssync.MutexWrap(datastore.NewMapDatastore()), slow: &slow[i]}
	}))
	tc := newTestCluster(t, mesh, "/raft/lin-barrier")
	tc.form(15*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	followers := others(l, 3)
	for _, f := range followers {
		slow[f].Store(true)
	}

	var (
		acked, started atomic.Int64
		reads, stale   atomic.Int64
		barrierErrs    atomic.Int64
		stop           = make(chan struct{})
		wg             sync.WaitGroup
	)
	wg.Go(func() {
		for n := int64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			started.Store(n)
			// Through whichever member leads (leadership may move under
			// load); a retried write has the same value, so counts only grow.
			if err := tc.setRetry("count", []byte(strconv.FormatInt(n, 10))); err != nil {
				t.Errorf("write %d: %v", n, err)
				return
			}
			acked.Store(n)
			// Paced so that the slow followers keep up on average.
			time.Sleep(2 * linSlowApply)
		}
	})
	for _, f := range followers {
		for range 2 {
			wg.Go(func() {
				c := tc.get(f)
				for {
					select {
					case <-stop:
						return
					default:
					}
					before := acked.Load()
					if err := c.Barrier(2 * time.Second); err != nil {
						// Leadership moved, or this member leads now: no
						// read to check.
						barrierErrs.Add(1)
						time.Sleep(10 * time.Millisecond)
						continue
					}
					if c.IsLeader() {
						continue // the follower path is what this test checks
					}
					v, _ := c.Get("count")
					after := started.Load()
					got, _ := strconv.ParseInt(string(v), 10, 64)
					reads.Add(1)
					if got < before {
						if stale.Add(1) <= 3 {
							t.Errorf("follower %d read count=%d after Barrier, but %d was acknowledged before Barrier was called", f, got, before)
						}
					} else if got > after {
						t.Errorf("follower %d read count=%d, never written (last write started: %d)", f, got, after)
					}
				}
			})
		}
	}
	time.Sleep(6 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d writes, %d follower reads after Barrier, %d stale, %d failed barriers", acked.Load(), reads.Load(), stale.Load(), barrierErrs.Load())
	if reads.Load() < 100 {
		t.Fatalf("only %d reads checked", reads.Load())
	}
}
