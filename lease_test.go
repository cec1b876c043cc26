package raft

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tauraft/raft/rafttest"
)

// A lease kind is proposed only once every voter advertises it: with a
// voter of an older build, Grant is refused and nothing is committed.
func TestLeaseKindsNeedEveryVoter(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/lease-upgrade")
	if err := tc.startEach([]int{0, 1}, func(i int) []Option {
		opts := forceFirst(i)
		if i == 1 {
			opts = append(opts, withKinds(legacyKinds))
		}
		return opts
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(15*time.Second, 0, 1)
	// The leader must be the new build (an old build's leader knows the
	// kinds it does not advertise here): node 0.
	if l := tc.leader(10 * time.Second); l != 0 {
		if err := tc.get(l).TransferLeadership(); err != nil {
			t.Fatal(err)
		}
		tc.waitFor(10*time.Second, "node 0 to lead", func() bool { return tc.get(0).IsLeader() })
	}
	if _, err := tc.get(0).Grant(time.Second, 5*time.Second); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("Grant with a voter that lacks leases: %v", err)
	}
}

// leaseKeysOn reports whether node i's replica holds every key (all true)
// or none of them (all false); mixed is neither.
func leaseKeysOn(tc *testCluster, i int, keys ...string) (all, none bool) {
	all, none = true, true
	for _, k := range keys {
		_, ok, err := tc.get(i).GetEntry(k)
		if err != nil {
			return false, false
		}
		all, none = all && ok, none && !ok
	}
	return all, none
}

// The must-show test of leases. Members' wall clocks are skewed by ±30 s
// (they stamp commands with them), which must not matter: expiry is timed
// on the leader's monotonic clock. Keys bound to a lease survive two leader
// changes while KeepAlives (alternately through a Client and a member)
// continue; after the last one they are gone within TTL + 3 election
// timeouts, and never before TTL from the start of that KeepAlive, on the
// test's own clock. Then: KeepAlive after expiry is ErrLeaseNotFound on
// both sides of the wire; the lease table survives a member's restart; and
// Revoke deletes the bound keys everywhere.
func TestLeaseKeepAliveExpiry(t *testing.T) {
	const (
		ns       = "/raft/lease"
		ttl      = 2 * time.Second
		election = 500 * time.Millisecond // PresetLocal
	)
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	skew := []time.Duration{30 * time.Second, -30 * time.Second, 0}
	if err := tc.startEach([]int{0, 1, 2}, func(i int) []Option {
		return append(forceFirst(i), withClock(func() time.Time { return time.Now().Add(skew[i]) }))
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(15*time.Second, 0, 1, 2)
	cl, err := NewClient(mesh.Node(3), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	id, err := cl.Grant(ttl, 5*time.Second)
	if err != nil || id == 0 {
		t.Fatalf("Client.Grant: %d %v", id, err)
	}
	l := tc.leader(10 * time.Second)
	if res, err := tc.get(tc.follower(l, 0)).Txn(Txn{Then: []Op{{Key: "svc/a", Value: []byte("a"), Lease: id}}}, 5*time.Second); err != nil || !res.OK {
		t.Fatalf("follower Txn with a lease: %+v %v", res, err)
	}
	if res, err := cl.Txn(Txn{Then: []Op{{Key: "svc/b", Value: []byte("b"), Lease: id}}}, 5*time.Second); err != nil || !res.OK {
		t.Fatalf("Client.Txn with a lease: %+v %v", res, err)
	}
	if e, ok, err := cl.GetEntry("svc/b", int64(5*time.Second)); err != nil || !ok || e.Lease != id {
		t.Fatalf("Client.GetEntry: %+v %v %v", e, ok, err)
	}
	keys := []string{"svc/a", "svc/b"}
	// The skewed wall clocks reach the state machine (node 0, 30 s ahead,
	// founded the cluster and led the first writes): the stamps are skewed,
	// and the expiry below must not care.
	if c := time.Unix(0, int64(tc.get(l).(*cluster).fsm.clock())); l == 0 && c.Before(time.Now().Add(20*time.Second)) {
		t.Fatalf("state machine clock %v: the leader's skewed stamps did not reach it", c)
	}

	// KeepAlives every TTL/4, through the Client and through members.
	var (
		mu           sync.Mutex
		lastStart    time.Time // of the last KeepAlive that succeeded
		lastAttempt  time.Time // end of the last KeepAlive tried
		keepFailures []error
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(ttl / 4)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			var err error
			if n%2 == 0 {
				err = cl.KeepAlive(id, ttl/2)
			} else {
				err = tc.get(n/2%3).KeepAlive(id, ttl/2)
			}
			mu.Lock()
			lastAttempt = time.Now()
			if err == nil {
				lastStart = start
			} else if errors.Is(err, ErrLeaseNotFound) {
				keepFailures = append(keepFailures, err)
			}
			mu.Unlock()
		}
	}()
	// Two leader changes; after each, a full TTL and more under the new
	// leader, and the keys stay on every member throughout.
	for round := range 2 {
		old := tc.leader(10 * time.Second)
		if err := tc.get(old).TransferLeadership(); err != nil {
			t.Fatalf("round %d: transfer: %v", round, err)
		}
		tc.waitFor(10*time.Second, "a new leader", func() bool {
			n, err := tc.get(old).Leader()
			return err == nil && n != mesh.ID(old)
		})
		until := time.Now().Add(ttl + ttl/2)
		for time.Now().Before(until) {
			for i := range 3 {
				if all, _ := leaseKeysOn(tc, i, keys...); !all {
					t.Fatalf("round %d: node %d lost a leased key while KeepAlives continue", round, i)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	close(stop)
	<-done
	mu.Lock()
	t0, t1, failures := lastStart, lastAttempt, keepFailures
	mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("KeepAlives refused while they continued: %v", failures)
	}
	// Gone within TTL + 3 election timeouts of the last KeepAlive, never
	// before TTL from its start.
	limit := t1.Add(ttl + 3*election)
	for gone := false; !gone; {
		gone = true
		for i := range 3 {
			before := time.Now()
			all, none := leaseKeysOn(tc, i, keys...)
			if !all && before.Before(t0.Add(ttl)) {
				t.Fatalf("node %d lost a leased key %v after the last KeepAlive began (TTL %v)", i, before.Sub(t0), ttl)
			}
			gone = gone && none
		}
		if !gone && time.Now().After(limit) {
			t.Fatalf("leased keys still there %v after the last KeepAlive ended (limit TTL + 3 election timeouts)", time.Since(t1))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("leased keys gone %v after the last KeepAlive began (TTL %v)", time.Since(t0), ttl)

	// KeepAlive after expiry: ErrLeaseNotFound, local and across the wire.
	l = tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	if err := cl.KeepAlive(id, 5*time.Second, mesh.ID(f)); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Client.KeepAlive after expiry: %v", err)
	}
	for _, i := range []int{l, f} {
		if err := tc.get(i).KeepAlive(id, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("node %d KeepAlive after expiry: %v", i, err)
		}
	}
	if _, err := cl.Txn(Txn{Then: []Op{{Key: "svc/c", Lease: id}}}, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("binding to an expired lease: %v", err)
	}

	// A long lease survives a member's restart, then Revoke deletes its
	// keys on every member.
	id2, err := tc.get(f).Grant(time.Minute, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	keys2 := []string{"job/1", "job/2"}
	if _, err := tc.get(l).Txn(Txn{Then: []Op{{Key: keys2[0], Lease: id2}, {Key: keys2[1], Lease: id2}}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	tc.waitFor(10*time.Second, "the leased keys on every member", func() bool {
		return slices.IndexFunc([]int{0, 1, 2}, func(i int) bool { all, _ := leaseKeysOn(tc, i, keys2...); return !all }) < 0
	})
	tc.stop(f)
	rc := tc.mustStart(f)
	if got, ok := rc.(*cluster).fsm.leaseKeys(id2); !ok || !slices.Equal(got, keys2) {
		t.Fatalf("restarted member's lease %d: %q %v", id2, got, ok)
	}
	if err := cl.Revoke(id2, 5*time.Second); err != nil {
		t.Fatalf("Client.Revoke: %v", err)
	}
	tc.waitFor(10*time.Second, "the revoked lease's keys gone on every member", func() bool {
		return slices.IndexFunc([]int{0, 1, 2}, func(i int) bool { _, none := leaseKeysOn(tc, i, keys2...); return !none }) < 0
	})
	if err := tc.get(l).Revoke(id2, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Revoke twice: %v", err)
	}
}

// A member that joins after the log was truncated installs a snapshot, and
// gets the lease table from it: the lease, its TTL and renewal, its keys.
func TestLeaseInSnapshotInstall(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/lease-snap", snapshotEvery(16))
	tc.form(15*time.Second, 0, 1)
	l := tc.leader(10 * time.Second)
	id, err := tc.get(l).Grant(time.Minute, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.get(l).Txn(Txn{Then: []Op{{Key: "a", Lease: id}, {Key: "b", Lease: id}}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := tc.get(l).KeepAlive(id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		tc.set(fmt.Sprintf("pad/%02d", i), nil)
	}
	// Past the first padding write, the lease's entries are out of the log.
	pad, _, _ := tc.get(l).GetEntry("pad/00")
	tc.waitFor(20*time.Second, "a snapshot and a log truncated past the lease's entries", func() bool {
		for i := range 2 {
			first, _ := tc.get(i).(*cluster).logs.FirstIndex()
			if snapshotCount(t, tc.get(i)) == 0 || first <= pad.ModIndex {
				return false
			}
		}
		return true
	})
	n := mesh.Add()
	c := tc.mustStart(n)
	tc.waitVoters(20*time.Second, 0, 1, n)
	want := tc.get(l).(*cluster).fsm
	tc.waitFor(20*time.Second, "the new member's lease table", func() bool {
		got := c.(*cluster).fsm
		keys, ok := got.leaseKeys(id)
		return ok && slices.Equal(keys, []string{"a", "b"})
	})
	if snapshotCount(t, c) == 0 {
		t.Fatal("the new member caught up without installing a snapshot")
	}
	got := c.(*cluster).fsm
	got.mu.Lock()
	want.mu.Lock()
	gl, wl := *got.leases.leases[id], *want.leases.leases[id]
	want.mu.Unlock()
	got.mu.Unlock()
	if gl.ttl != wl.ttl || gl.touch != wl.touch {
		t.Fatalf("installed lease %+v, leader's %+v", gl, wl)
	}
}
