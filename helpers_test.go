package raft

// The test fixture: testCluster runs the clusters of one namespace on the
// nodes of a rafttest mesh (all of them or a subset, each node with its own
// options if need be) and waits for what the tests need. Every wait that can
// time out prints every member's view (dumpState) before it fails the test,
// and every write that has to get through goes through the one retry loop,
// retry.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
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

// snapshotEvery is the local preset with a snapshot every threshold log
// entries, checked every 50 ms: a test's writes produce snapshots and
// truncate the log.
func snapshotEvery(threshold uint64) Option {
	tm := PresetLocal.Timeouts()
	tm.SnapshotThreshold = threshold
	tm.SnapshotInterval = 50 * time.Millisecond
	return WithTimeouts(tm)
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

// ---- starting and stopping members ----

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

// startEach starts the cluster on the nodes idx at once, node i with the
// common options plus opts(i) (opts may be nil), and waits for New to return
// on each. opts(i) runs on node i's own goroutine right before its New, so it
// may also delay that start. It returns the failures, joined; it does not
// fail the test, so it may run on any goroutine.
func (tc *testCluster) startEach(idx []int, opts func(i int) []Option) error {
	errs := make([]error, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		wg.Go(func() {
			var extra []Option
			if opts != nil {
				extra = opts(i)
			}
			if _, err := tc.start(i, extra...); err != nil {
				errs[k] = fmt.Errorf("start node %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startAll is startEach with the common options only, failing the test on
// error.
func (tc *testCluster) startAll(idx ...int) {
	tc.t.Helper()
	if err := tc.startEach(idx, nil); err != nil {
		tc.t.Fatal(err)
	}
}

// form starts the cluster on the nodes idx at once and waits until every
// running member has exactly them as voters.
func (tc *testCluster) form(timeout time.Duration, idx ...int) {
	tc.t.Helper()
	tc.startAll(idx...)
	tc.waitVoters(timeout, idx...)
}

// forceFirst is a startEach option function: node 0 founds the cluster at
// once (WithForceBootstrap) and the others join it.
func forceFirst(i int) []Option {
	if i == 0 {
		return []Option{WithForceBootstrap()}
	}
	return nil
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
	return slices.Sorted(maps.Keys(tc.clusters))
}

// among returns idx, or every running member when idx is empty.
func (tc *testCluster) among(idx []int) []int {
	if len(idx) == 0 {
		return tc.running()
	}
	return idx
}

func (tc *testCluster) closeAll() {
	for _, i := range tc.running() {
		tc.stop(i)
	}
}

// ---- waits ----

// waitFor polls cond until it holds; after timeout it prints every member's
// view and fails the test.
func (tc *testCluster) waitFor(timeout time.Duration, what string, cond func() bool) {
	tc.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tc.dumpState()
			tc.t.Fatalf("timed out after %v waiting for %s", timeout, what)
			return // only reached with a testing.TB whose Fatalf returns
		}
		time.Sleep(rafttest.PollInterval)
	}
}

// leader waits for the running members to agree on one leader and returns
// its node index.
func (tc *testCluster) leader(timeout time.Duration) int {
	tc.t.Helper()
	return tc.leaderAmong(timeout)
}

// leaderAmong waits until the members idx (every running member when idx is
// empty) agree on one leader that is one of them and says it leads, and
// returns its index. Members outside idx are ignored (the far side of a
// partition, say).
func (tc *testCluster) leaderAmong(timeout time.Duration, idx ...int) int {
	tc.t.Helper()
	what := "one leader agreed by every running member"
	if len(idx) > 0 {
		what = fmt.Sprintf("one leader agreed by nodes %v", idx)
	}
	li := -1
	tc.waitFor(timeout, what, func() bool {
		among := tc.among(idx)
		var agreed peer.ID
		for _, i := range among {
			c := tc.get(i)
			if c == nil {
				return false
			}
			l, err := c.Leader()
			if err != nil || (agreed != "" && l != agreed) {
				return false
			}
			agreed = l
		}
		li = tc.mesh.Index(agreed)
		c := tc.get(li)
		return slices.Contains(among, li) && c != nil && c.IsLeader()
	})
	return li
}

// follower returns the n-th (modulo their number) running member other than
// node l.
func (tc *testCluster) follower(l, n int) int {
	tc.t.Helper()
	var fs []int
	for _, i := range tc.running() {
		if i != l {
			fs = append(fs, i)
		}
	}
	if len(fs) == 0 {
		tc.t.Fatalf("no follower besides %d", l)
	}
	return fs[n%len(fs)]
}

// voters returns the sorted voter IDs of c's configuration.
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
	slices.Sort(out)
	return out
}

// sortedIDs returns the IDs of the given mesh nodes, sorted like voters().
func sortedIDs(mesh *rafttest.Mesh, idx ...int) []peer.ID {
	var out []peer.ID
	for _, i := range idx {
		out = append(out, mesh.ID(i))
	}
	slices.Sort(out)
	return out
}

// waitVoters waits until every running member's configuration has exactly
// the voters of the given node indexes.
func (tc *testCluster) waitVoters(timeout time.Duration, want ...int) {
	tc.t.Helper()
	tc.waitVotersOn(timeout, nil, want...)
}

// waitVotersOn waits until each member in on (every running member when on
// is empty) has exactly the voters want. A removed or cut-off member may
// legitimately lag: leave it out of on.
func (tc *testCluster) waitVotersOn(timeout time.Duration, on []int, want ...int) {
	tc.t.Helper()
	ids := fmt.Sprint(sortedIDs(tc.mesh, want...))
	what := fmt.Sprintf("voters %v on every member", want)
	if len(on) > 0 {
		what = fmt.Sprintf("nodes %v to have voters %v", on, want)
	}
	tc.waitFor(timeout, what, func() bool {
		for _, i := range tc.among(on) {
			if c := tc.get(i); c == nil || fmt.Sprint(voters(c)) != ids {
				return false
			}
		}
		return true
	})
}

// waitOneCluster waits until every running member is a voter of one and the
// same configuration holding all of want, with one agreed leader.
func (tc *testCluster) waitOneCluster(timeout time.Duration, want ...int) {
	tc.t.Helper()
	tc.waitVoters(timeout, want...)
	tc.leader(timeout)
}

// waitValue waits until node i's replica holds want under key.
func (tc *testCluster) waitValue(i int, key string, want []byte) {
	tc.t.Helper()
	tc.waitFor(15*time.Second, fmt.Sprintf("node %d to hold %s=%q", i, key, want), func() bool {
		v, ok := tc.get(i).Get(key)
		return ok && string(v) == string(want)
	})
}

// ---- writes that have to get through ----

// notAppliedOrLost reports whether a write failed because leadership was
// missing or moving: certainly not applied (IsNotApplied), or in flight when
// leadership was lost (ErrLeadershipLost, ErrTimeout: outcome unknown).
func notAppliedOrLost(err error) bool {
	return IsNotApplied(err) || errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrTimeout)
}

// retry runs op until it returns nil, pausing between attempts, for at most
// timeout. It retries the errors retryable accepts (every error when
// retryable is nil) and returns the first other one, or the last one at the
// deadline. Retrying a write whose outcome is unknown is only right when the
// write is idempotent: every caller writes one fixed value per key.
func retry(timeout time.Duration, retryable func(error) bool, op func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := op()
		if err == nil || (retryable != nil && !retryable(err)) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustRetry is retry that prints every member's view and fails the test
// when op does not succeed.
func (tc *testCluster) mustRetry(what string, timeout time.Duration, retryable func(error) bool, op func() error) {
	tc.t.Helper()
	if err := retry(timeout, retryable, op); err != nil {
		tc.dumpState()
		tc.t.Fatalf("%s: %v", what, err)
	}
}

// onLeader runs op on whichever member of idx (every running member when idx
// is empty) says it leads, or returns ErrNoLeader.
func (tc *testCluster) onLeader(idx []int, op func(c Cluster) error) error {
	for _, i := range tc.among(idx) {
		if c := tc.get(i); c != nil && c.IsLeader() {
			return op(c)
		}
	}
	return ErrNoLeader
}

// set writes key=value through whichever member of among (every running
// member when among is empty) leads, retrying any failure while leadership
// moves (the value is fixed, so a retried write whose first attempt did apply
// changes nothing); it fails the test after 30 s.
func (tc *testCluster) set(key string, value []byte, among ...int) {
	tc.t.Helper()
	tc.mustRetry(fmt.Sprintf("set %q among %v", key, tc.among(among)), 30*time.Second, nil, func() error {
		return tc.onLeader(among, func(c Cluster) error { return c.Set(key, value, 5*time.Second) })
	})
}

// setRetry writes through the current leader from any goroutine, retrying
// only while leadership is missing or moving (notAppliedOrLost), and returns
// the error it gave up on.
func (tc *testCluster) setRetry(key string, value []byte) error {
	return retry(30*time.Second, notAppliedOrLost, func() error {
		return tc.onLeader(nil, func(c Cluster) error { return c.Set(key, value, 10*time.Second) })
	})
}

// untilClosed calls f(0), f(1), ... until stop is closed: the loop of the
// tests' background writers and clients.
func untilClosed(stop <-chan struct{}, f func(n int)) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		f(n)
	}
}

// heldWrites counts the keys of keys that c holds with the value "v"+key,
// the value every bulk writer of these tests (healWriteMany, the
// linearizability test's unique writes) gives a key.
func heldWrites(c Cluster, keys []string) int {
	n := 0
	for _, k := range keys {
		if v, ok := c.Get(k); ok && string(v) == "v"+k {
			n++
		}
	}
	return n
}

// ---- diagnostics ----

// sentinelName names the first sentinel error err matches, for test logs and
// summaries ("not the leader"), or returns "" when it matches none. Those a
// failed write most often ends with come first.
func sentinelName(err error) string {
	if err == nil {
		return ""
	}
	common := []error{ErrNotLeader, ErrNoLeader, ErrNoMembers, errNotSent, ErrTimeout, ErrLeadershipLost, ErrShutdown}
	for _, s := range append(common, wireErrors...) {
		if errors.Is(err, s) {
			return strings.TrimPrefix(s.Error(), "raft: ")
		}
	}
	return ""
}

// dumpState logs every running member's view, for failing tests.
func (tc *testCluster) dumpState() {
	for _, i := range tc.running() {
		c, ok := tc.get(i).(*cluster)
		if !ok {
			continue // stopped meanwhile
		}
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

// ---- small helpers ----

// seq returns 0, 1, ..., n-1.
func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// others returns 0, 1, ..., n-1 without skip.
func others(skip, n int) []int {
	var out []int
	for i := 0; i < n; i++ {
		if i != skip {
			out = append(out, i)
		}
	}
	return out
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// newSecret returns a fresh uniformly random shared key of MinKeySize bytes.
func newSecret(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, MinKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatalf("random key: %v", err)
	}
	return k
}

// secondErr and thirdErr keep only the error of a call's results.
func secondErr[A any](_ A, err error) error        { return err }
func thirdErr[A, B any](_ A, _ B, err error) error { return err }

// isTimeout reports a deadline expiry.
func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// inboundStreams counts h's inbound streams of proto from peer from.
func inboundStreams(h host.Host, from peer.ID, proto protocol.ID) int {
	n := 0
	for _, c := range h.Network().ConnsToPeer(from) {
		for _, s := range c.GetStreams() {
			if s.Protocol() == proto && s.Stat().Direction == network.DirInbound {
				n++
			}
		}
	}
	return n
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

// TestMain checks that no test leaves a goroutine behind.
func TestMain(m *testing.M) {
	// ---- hostile-peer subprocess roles (re-executed test binary) ----
	if role := os.Getenv("TAURAFT_HOSTILE_ROLE"); role != "" {
		switch {
		case strings.HasPrefix(role, "keyed-"): // hostile_keyed_test.go
			os.Exit(hostileKeyedRole(role))
		case strings.HasPrefix(role, "open-"): // hostile_open_test.go
			os.Exit(hostileOpenRole(role))
		}
		fmt.Fprintf(os.Stderr, "unknown TAURAFT_HOSTILE_ROLE %q\n", role)
		os.Exit(2)
	}
	// ---- end of hostile-peer roles ----
	goleak.VerifyTestMain(m)
}

// syncBuffer collects a subprocess's output (its first MiB) for a failing
// test to show; safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() < 1<<20 {
		b.b.Write(p)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startSubprocess starts cmd (an attacker role of this test binary) with its
// stderr collected in stderr, and returns its stdin and stdout.
func startSubprocess(t testing.TB, cmd *exec.Cmd, stderr *syncBuffer) (io.WriteCloser, io.Reader) {
	t.Helper()
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("attacker stdout: %v", err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("attacker stdin: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start attacker: %v", err)
	}
	return stdin, stdout
}

// leaseCount is the number of leases on member i's replica.
func leaseCount(tc *testCluster, i int) int { return len(tc.get(i).(*cluster).fsm.leaseList()) }
