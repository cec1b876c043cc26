package raft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
	"go.uber.org/goleak"
)

// testWindow is the bootstrap window of the integration tests: short, so
// that tests run fast, and long enough for a few exchange rounds.
const testWindow = 1500 * time.Millisecond

// testLogger writes the cluster's warnings to the test log (or, with
// TAURAFT_DEBUG set, everything to stderr).
func testLogger(t testing.TB) hclog.Logger {
	if os.Getenv("TAURAFT_DEBUG") != "" {
		return hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Debug, Output: os.Stderr})
	}
	return hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Error, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// testOpts are the options every test cluster gets: the local preset, a short
// window, snapshots in the test's directory.
func testOpts(t testing.TB, snapRoot string, extra ...Option) []Option {
	opts := []Option{
		WithTimeoutPreset(PresetLocal),
		WithBootstrapTimeout(testWindow),
		WithSnapshotDir(snapRoot),
		WithLogger(testLogger(t)),
	}
	return append(opts, extra...)
}

// testCluster is a set of clusters of one namespace on a mesh, indexed like
// the mesh's nodes.
type testCluster struct {
	t        testing.TB
	mesh     *rafttest.Mesh
	ns       string
	snapRoot string
	opts     []Option

	mu       sync.Mutex
	clusters map[int]Cluster
}

func newTestCluster(t testing.TB, mesh *rafttest.Mesh, ns string, extra ...Option) *testCluster {
	tc := &testCluster{t: t, mesh: mesh, ns: ns, snapRoot: t.TempDir(), clusters: map[int]Cluster{}}
	tc.opts = testOpts(t, tc.snapRoot, extra...)
	t.Cleanup(tc.closeAll)
	return tc
}

// start starts the cluster on node i with the common options plus extra.
func (tc *testCluster) start(i int, extra ...Option) (Cluster, error) {
	opts := append(append([]Option{}, tc.opts...), extra...)
	c, err := New(tc.mesh.Node(i), tc.ns, opts...)
	if err != nil {
		return nil, err
	}
	tc.mu.Lock()
	tc.clusters[i] = c
	tc.mu.Unlock()
	return c, nil
}

// mustStart is start that fails the test on error.
func (tc *testCluster) mustStart(i int, extra ...Option) Cluster {
	tc.t.Helper()
	c, err := tc.start(i, extra...)
	if err != nil {
		tc.t.Fatalf("start node %d: %v", i, err)
	}
	return c
}

// startAll starts the cluster on the given nodes at once and waits for New
// to return on each.
func (tc *testCluster) startAll(idx ...int) {
	tc.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(idx))
	for k, i := range idx {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[k] = tc.start(i)
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			tc.t.Fatalf("start node %d: %v", idx[k], err)
		}
	}
}

func (tc *testCluster) get(i int) Cluster {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.clusters[i]
}

// stop closes the cluster on node i (the node stays up).
func (tc *testCluster) stop(i int) {
	tc.mu.Lock()
	c := tc.clusters[i]
	delete(tc.clusters, i)
	tc.mu.Unlock()
	if c != nil {
		if err := c.Close(); err != nil {
			tc.t.Errorf("close node %d: %v", i, err)
		}
	}
}

// forget drops node i's cluster from the set without closing it.
func (tc *testCluster) forget(i int) {
	tc.mu.Lock()
	delete(tc.clusters, i)
	tc.mu.Unlock()
}

func (tc *testCluster) running() []int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	var out []int
	for i := range tc.clusters {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

func (tc *testCluster) closeAll() {
	for _, i := range tc.running() {
		tc.stop(i)
	}
}

// leader waits for the running members to agree on one leader and returns
// its node index.
func (tc *testCluster) leader(timeout time.Duration) int {
	tc.t.Helper()
	var idx int
	rafttest.WaitFor(tc.t, timeout, "one agreed leader", func() bool {
		idx = -1
		var agreed peer.ID
		for _, i := range tc.running() {
			l, err := tc.get(i).Leader()
			if err != nil || (agreed != "" && l != agreed) {
				return false
			}
			agreed = l
		}
		idx = tc.mesh.Index(agreed)
		return idx >= 0 && tc.get(idx) != nil && tc.get(idx).IsLeader()
	})
	return idx
}

// voters returns the sorted voter IDs of node i's configuration.
func voters(c Cluster) []peer.ID {
	ms, err := c.Members()
	if err != nil {
		return nil
	}
	var out []peer.ID
	for _, m := range ms {
		if m.Suffrage == hraft.Voter {
			out = append(out, m.ID)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// waitVoters waits until every running member's configuration has exactly
// the voters of the given node indexes.
func (tc *testCluster) waitVoters(timeout time.Duration, idx ...int) {
	tc.t.Helper()
	var want []peer.ID
	for _, i := range idx {
		want = append(want, tc.mesh.ID(i))
	}
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, i := range tc.running() {
			if fmt.Sprint(voters(tc.get(i))) != fmt.Sprint(want) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tc.dumpState()
			tc.t.Fatalf("timed out after %v waiting for voters %v on every member", timeout, idx)
		}
		time.Sleep(rafttest.PollInterval)
	}
}

// setOnLeader writes through whichever member leads, retrying while
// leadership moves.
func (tc *testCluster) setOnLeader(key string, value []byte) {
	tc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l := tc.leader(20 * time.Second)
		err := tc.get(l).Set(key, value, 5*time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("set %q: %v", key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setRetry writes through the current leader from any goroutine, retrying
// errors that mean "certainly not applied" while leadership moves.
func (tc *testCluster) setRetry(key string, value []byte) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error = ErrNoLeader
		for _, i := range tc.running() {
			if c := tc.get(i); c != nil && c.IsLeader() {
				err = c.Set(key, value, 10*time.Second)
				break
			}
		}
		// Retrying a Set whose outcome is unknown is fine here: each key is
		// written by one goroutine with one value.
		retry := errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrTimeout)
		if err == nil || !retry || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitValue waits until node i's replica holds want under key.
func (tc *testCluster) waitValue(i int, key string, want []byte) {
	tc.t.Helper()
	rafttest.WaitFor(tc.t, 15*time.Second, fmt.Sprintf("node %d to hold %s=%q", i, key, want), func() bool {
		v, ok := tc.get(i).Get(key)
		return ok && string(v) == string(want)
	})
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// snapshotCount lists the snapshots a member kept on disk.
func snapshotCount(t testing.TB, c Cluster) int {
	t.Helper()
	dir := c.(*cluster).snapDir
	store, err := hraft.NewFileSnapshotStoreWithLogger(dir, SnapshotRetain, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("open snapshot store %s: %v", dir, err)
	}
	list, err := store.List()
	if err != nil {
		t.Fatalf("list snapshots: %v", err)
	}
	return len(list)
}

var _ = filepath.Join

// dumpState logs every running member's view, for failing tests.
func (tc *testCluster) dumpState() {
	for _, i := range tc.running() {
		c := tc.get(i).(*cluster)
		l, _ := c.Leader()
		tc.t.Logf("node %d (%s): state %v leader %s voters %v formed %v", i, shortID(c.self), c.State(), shortID(l), shortIDs(voters(c)), c.formed())
		for _, v := range c.peers.view() {
			tc.t.Logf("    peer %s alive %v formed %v deciding %v leader %s voters %d", shortID(v.id), v.alive, v.status.Formed, v.status.Deciding, shortID(peer.ID(v.status.Leader)), v.status.Voters)
		}
	}
}

func shortID(id peer.ID) string {
	s := id.String()
	if len(s) > 6 {
		return s[len(s)-6:]
	}
	return s
}

func shortIDs(ids []peer.ID) []string {
	var out []string
	for _, id := range ids {
		out = append(out, shortID(id))
	}
	return out
}

// TestMain checks that no test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
