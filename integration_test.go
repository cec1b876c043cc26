package raft

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/tauraft/raft/rafttest"
)

// A force-bootstrapped node, two more added as voters: replication, agreed
// leader, leadership transfer and removal.
func TestCoreThreeNodes(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/core")
	c0 := tc.mustStart(0, WithForceBootstrap())
	ctx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	if err := c0.WaitForLeader(ctx); err != nil {
		t.Fatalf("wait for leader: %v", err)
	}
	if !c0.IsLeader() {
		t.Fatalf("the force-bootstrapped node is not the leader")
	}
	tc.startAll(1, 2)
	for _, i := range []int{1, 2} {
		if err := c0.AddVoter(mesh.ID(i), 5*time.Second); err != nil {
			t.Fatalf("add voter %d: %v", i, err)
		}
	}
	tc.waitVoters(10*time.Second, 0, 1, 2)

	l := tc.leader(10 * time.Second)
	if err := tc.get(l).Set("greeting", []byte("hello"), 5*time.Second); err != nil {
		t.Fatalf("set: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := tc.get(i).Barrier(5 * time.Second); err != nil {
			t.Fatalf("barrier on %d: %v", i, err)
		}
		v, ok := tc.get(i).Get("greeting")
		if !ok || string(v) != "hello" {
			t.Fatalf("node %d: Get = %q, %v after Barrier", i, v, ok)
		}
		ms, err := tc.get(i).Members()
		if err != nil || len(ms) != 3 {
			t.Fatalf("node %d: Members = %v, %v", i, ms, err)
		}
	}
	// A follower refuses writes with ErrNotLeader.
	f := (l + 1) % 3
	if err := tc.get(f).Set("x", []byte("y"), time.Second); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower Set: %v, want ErrNotLeader", err)
	}
	if err := tc.get(f).AddVoter(mesh.ID(l), time.Second); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower AddVoter: %v, want ErrNotLeader", err)
	}

	// Leadership transfer moves the leader.
	if err := tc.get(l).TransferLeadership(); err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	tc.waitFor(10*time.Second, "a new leader after transfer", func() bool {
		nl, err := tc.get(l).Leader()
		return err == nil && nl != mesh.ID(l) && tc.get(mesh.Index(nl)).IsLeader()
	})
	l2 := tc.leader(10 * time.Second)
	if l2 == l {
		t.Fatalf("leader did not move")
	}

	// RemoveServer shrinks the configuration.
	victim := (l2 + 1) % 3
	if err := tc.get(l2).RemoveServer(mesh.ID(victim), 5*time.Second); err != nil {
		t.Fatalf("remove server: %v", err)
	}
	tc.stop(victim)
	tc.waitVoters(10*time.Second, others(victim, 3)...)
	if err := tc.get(l2).Set("after-remove", []byte("ok"), 5*time.Second); err != nil {
		t.Fatalf("set after remove: %v", err)
	}
}

// A member on pebble is closed, misses writes, and comes back with the same
// identity and its data.
func TestCoreRestartFromDisk(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected(), rafttest.WithPebble())
	tc := newTestCluster(t, mesh, "/raft/restart")
	tc.form(15*time.Second, 0, 1, 2)
	tc.set("before", []byte("1"))

	l := tc.leader(10 * time.Second)
	victim := (l + 1) % 3
	for i := range 3 {
		tc.waitValue(i, "before", []byte("1"))
	}
	tc.stop(victim)
	mesh.Stop(victim)
	for i := range 20 {
		tc.set(fmt.Sprintf("while-down/%02d", i), []byte("v"))
	}
	mesh.Restart(victim)
	c := tc.mustStart(victim)
	if got := c.(*cluster).self; got != mesh.ID(victim) {
		t.Fatalf("identity changed: %s != %s", got, mesh.ID(victim))
	}
	tc.waitValue(victim, "while-down/19", []byte("v"))
	if err := c.Barrier(5 * time.Second); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	if v, ok := c.Get("before"); !ok || string(v) != "1" {
		t.Fatalf("old value lost: %q %v", v, ok)
	}
	if n := len(c.Keys("while-down/")); n != 20 {
		t.Fatalf("restarted member has %d of 20 keys", n)
	}
	tc.waitVoters(10*time.Second, 0, 1, 2)
}

// With a low threshold, writes produce snapshots and truncate the log; a
// fresh member catches up through snapshot install.
func TestCoreSnapshotsAndInstall(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	const writes = 5000
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/snap", snapshotEvery(500))
	tc.form(15*time.Second, 0, 1, 2)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= writes {
					return
				}
				if err := tc.setRetry(fmt.Sprintf("k/%05d", i), []byte(fmt.Sprintf("v%d", i))); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("write: %v", err)
	}
	tc.waitFor(20*time.Second, "a snapshot and a truncated log on every member", func() bool {
		for i := range 3 {
			first, _ := tc.get(i).(*cluster).logs.FirstIndex()
			if snapshotCount(t, tc.get(i)) == 0 || first <= 1 {
				return false
			}
		}
		return true
	})

	n := mesh.Add()
	c := tc.mustStart(n)
	tc.waitVoters(20*time.Second, 0, 1, 2, n)
	tc.waitFor(20*time.Second, "the new member to hold every key", func() bool {
		return len(c.Keys("k/")) == writes
	})
	if snapshotCount(t, c) == 0 {
		t.Fatalf("the new member caught up without installing a snapshot")
	}
	for _, i := range []int{0, 1234, writes - 1} {
		k := fmt.Sprintf("k/%05d", i)
		if v, ok := c.Get(k); !ok || string(v) != fmt.Sprintf("v%d", i) {
			t.Fatalf("new member %s = %q, %v", k, v, ok)
		}
	}
}

// Two namespaces on the same hosts are two clusters with separate data.
func TestCoreTwoNamespaces(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	a := newTestCluster(t, mesh, "/raft/ns-a")
	b := newTestCluster(t, mesh, "/raft/ns-a/b") // nested on purpose: storage must not mix
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for k, tc := range []*testCluster{a, b} {
		wg.Go(func() { errs[k] = tc.startEach([]int{0, 1, 2}, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	a.waitVoters(15*time.Second, 0, 1, 2)
	b.waitVoters(15*time.Second, 0, 1, 2)
	a.set("shared-name", []byte("from-a"))
	b.set("shared-name", []byte("from-b"))
	b.set("only-b", []byte("b"))
	for i := range 3 {
		a.waitValue(i, "shared-name", []byte("from-a"))
		b.waitValue(i, "shared-name", []byte("from-b"))
		if _, ok := a.get(i).Get("only-b"); ok {
			t.Fatalf("namespace a sees b's key on node %d", i)
		}
		if keys := a.get(i).Keys(""); len(keys) != 1 {
			t.Fatalf("namespace a on node %d has keys %v", i, keys)
		}
	}
}

// Bad input gets a clear sentinel and the cluster keeps working.
func TestCoreBadInput(t *testing.T) {
	mesh := rafttest.NewMesh(t, 1)
	for _, ns := range []string{"", "raft/x", "/raft", "/raft/", "/raft//x", "/raft/x/", "/raft/./x", "/raft/../x", "/other/x", "/raft/x/..", "/raft/a\nb"} {
		if _, err := New(mesh.Node(0), ns); !errors.Is(err, ErrInvalidNamespace) {
			t.Errorf("New(%q) = %v, want ErrInvalidNamespace", ns, err)
		}
		if _, err := NewClient(mesh.Node(0), ns, nil); !errors.Is(err, ErrInvalidNamespace) {
			t.Errorf("NewClient(%q) = %v, want ErrInvalidNamespace", ns, err)
		}
	}
	for name, opt := range map[string]Option{
		"short key":         WithEncryptionKey(make([]byte, 31)),
		"zero window":       WithBootstrapTimeout(0),
		"threshold 0":       WithBootstrapThreshold(0),
		"threshold 1.5":     WithBootstrapThreshold(1.5),
		"lease > heartbeat": WithTimeouts(TimeoutConfig{HeartbeatTimeout: time.Second, ElectionTimeout: time.Second, CommitTimeout: time.Millisecond, LeaderLeaseTimeout: 2 * time.Second, SnapshotInterval: time.Second, SnapshotThreshold: 10}),
		"empty snap dir":    WithSnapshotDir(""),
		"bad preset":        WithTimeoutPreset(Preset(42)),
	} {
		if _, err := New(mesh.Node(0), "/raft/bad", opt); err == nil {
			t.Errorf("New with %s succeeded", name)
		}
	}

	tc := newTestCluster(t, mesh, "/raft/bad")
	c := tc.mustStart(0, WithForceBootstrap())
	tc.leader(10 * time.Second)
	checks := []struct {
		name string
		err  error
		want error
	}{
		{"empty key", c.Set("", []byte("v"), time.Second), ErrInvalidKey},
		{"empty key delete", c.Delete("", time.Second), ErrInvalidKey},
		{"long key", c.Set(strings.Repeat("k", MaxKeySize+1), nil, time.Second), ErrTooLarge},
		{"large value", c.Set("k", make([]byte, MaxValueSize+1), time.Second), ErrTooLarge},
		{"zero timeout", c.Set("k", nil, 0), ErrInvalidTimeout},
		{"negative timeout", c.Delete("k", -time.Second), ErrInvalidTimeout},
		{"long timeout", c.Set("k", nil, MaxTimeout+time.Second), ErrInvalidTimeout},
		{"apply timeout", secondErr(c.Apply(mustCommand(t, SetOp("k", nil)), 61*time.Second)), ErrInvalidTimeout},
		{"apply garbage", secondErr(c.Apply([]byte("garbage"), time.Second)), ErrInvalidCommand},
		{"barrier timeout", c.Barrier(0), ErrInvalidTimeout},
		{"add voter timeout", c.AddVoter(mesh.ID(0), 0), ErrInvalidTimeout},
	}
	for _, ch := range checks {
		if !errors.Is(ch.err, ch.want) {
			t.Errorf("%s: %v, want %v", ch.name, ch.err, ch.want)
		}
	}
	// Limits themselves are accepted.
	if err := c.Set(strings.Repeat("k", MaxKeySize), make([]byte, MaxValueSize), 10*time.Second); err != nil {
		t.Fatalf("set at the limits: %v", err)
	}
	// Keys are opaque: these are all distinct.
	odd := []string{"a//b", "a/b", "../x", "a/./b", "/", "ключ", "a b", "_applied", "\xff\x00not utf-8"}
	for _, k := range odd {
		if err := c.Set(k, []byte("="+k), 5*time.Second); err != nil {
			t.Fatalf("set %q: %v", k, err)
		}
	}
	for _, k := range odd {
		if v, ok := c.Get(k); !ok || string(v) != "="+k {
			t.Fatalf("get %q = %q, %v", k, v, ok)
		}
	}
	if got := c.Keys("a/"); fmt.Sprint(got) != "[a/./b a//b a/b]" {
		t.Fatalf("Keys(a/) = %v", got)
	}
	// An atomic batch through Apply.
	cmd := mustCommand(t, SetOp("b1", []byte("1")), SetOp("b2", []byte("2")), DeleteOp("a b"))
	if resp, err := c.Apply(cmd, 5*time.Second); err != nil || resp.Error != nil {
		t.Fatalf("apply batch: %v %v", err, resp.Error)
	}
	if _, ok := c.Get("a b"); ok {
		t.Fatalf("batch delete not applied")
	}
	tc.forget(0)
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	after := []error{
		c.Set("k", nil, time.Second), c.Delete("k", time.Second), c.Barrier(time.Second),
		secondErr(c.Apply(cmd, time.Second)), c.AddVoter(mesh.ID(0), time.Second),
		c.RemoveServer(mesh.ID(0), time.Second), c.TransferLeadership(),
		c.WaitForLeader(t.Context()), secondErr(c.Leader()), secondErr(c.Members()),
	}
	for i, err := range after {
		if !errors.Is(err, ErrShutdown) {
			t.Errorf("call %d after Close: %v, want ErrShutdown", i, err)
		}
	}
	if c.State() != hraft.Shutdown || c.IsLeader() {
		t.Errorf("state after Close: %v", c.State())
	}
	if _, ok := c.Get("b1"); ok {
		t.Errorf("Get after Close found a value")
	}
	if err := c.Close(); !errors.Is(err, ErrAlreadyClosed) {
		t.Errorf("second Close: %v, want ErrAlreadyClosed", err)
	}
}
