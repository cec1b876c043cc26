package raft

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tauraft/raft/rafttest"
)

// The healing tests: members go away (closed, rebooted, removed, cut off,
// moved to another port) and come back; each time the namespace must end as
// one cluster holding every acknowledged write, with nobody's help.

// healRemove removes node victim through whichever of the members among
// leads, retrying while leadership moves (removing twice changes nothing).
func healRemove(tc *testCluster, among []int, victim int) {
	tc.t.Helper()
	tc.mustRetry(fmt.Sprintf("remove node %d", victim), 15*time.Second, nil, func() error {
		return tc.onLeader(among, func(c Cluster) error { return c.RemoveServer(tc.mesh.ID(victim), 5*time.Second) })
	})
}

// healWriteMany writes n distinct keys prefix%05d with a few concurrent
// writers through the running leader and returns the keys it got
// acknowledged (every one, unless the test fails).
func healWriteMany(tc *testCluster, prefix string, n, writers int) []string {
	tc.t.Helper()
	var (
		next  atomic.Int64
		mu    sync.Mutex
		acked []string
		errs  []error
		wg    sync.WaitGroup
	)
	for range writers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				k := fmt.Sprintf("%s%05d", prefix, i)
				err := tc.setRetry(k, []byte("v"+k))
				mu.Lock()
				if err == nil {
					acked = append(acked, k)
				} else {
					errs = append(errs, fmt.Errorf("%s: %w", k, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		tc.dumpState()
		tc.t.Fatalf("%d of %d writes failed, first: %v", len(errs), n, errs[0])
	}
	sort.Strings(acked)
	return acked
}

// healWaitKeys waits until member i holds every key of keys with the value
// healWriteMany gave it.
func healWaitKeys(tc *testCluster, timeout time.Duration, i int, keys []string) {
	tc.t.Helper()
	tc.waitFor(timeout, fmt.Sprintf("node %d to hold %d keys", i, len(keys)), func() bool {
		return heldWrites(tc.get(i), keys) == len(keys)
	})
}

// healWipe deletes everything node i stored for the namespace (Raft log and
// stable state, key-value data) and its snapshot directory: a member that
// lost its disk. Its cluster must be closed.
func healWipe(tc *testCluster, i int, snapDir string) {
	tc.t.Helper()
	ctx := context.Background()
	ds := tc.mesh.Node(i).Store()
	count := func() []query.Entry {
		res, err := ds.Query(ctx, query.Query{Prefix: tc.ns, KeysOnly: true})
		if err != nil {
			tc.t.Fatalf("query node %d store: %v", i, err)
		}
		entries, err := res.Rest()
		if err != nil {
			tc.t.Fatalf("query node %d store: %v", i, err)
		}
		return entries
	}
	entries := count()
	if len(entries) == 0 {
		tc.t.Fatalf("node %d has nothing stored under %s: the wipe would test nothing", i, tc.ns)
	}
	for _, e := range entries {
		if err := ds.Delete(ctx, datastore.RawKey(e.Key)); err != nil {
			tc.t.Fatalf("delete %s: %v", e.Key, err)
		}
	}
	if left := count(); len(left) != 0 {
		tc.t.Fatalf("%d keys left under %s after the wipe", len(left), tc.ns)
	}
	if err := os.RemoveAll(snapDir); err != nil {
		tc.t.Fatalf("remove %s: %v", snapDir, err)
	}
}

// A voter removed with RemoveServer stays out while it runs; started again
// it asks to join by itself and becomes a voter again, holding what was
// written meanwhile: with its state kept, with its state wiped, and when it
// was removed while it was down (so its own state never saw the removal).
func TestHealRejoinAfterRemove(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/heal-rejoin")
	tc.form(15*time.Second, 0, 1, 2)
	tc.set("before", []byte("1"))

	for round, mode := range []struct {
		name      string
		wipe      bool
		whileDown bool
	}{
		{name: "state kept"},
		{name: "state wiped", wipe: true},
		{name: "removed while down", whileDown: true},
	} {
		l := tc.leader(10 * time.Second)
		victim := tc.follower(l, 0)
		rest := others(victim, 3)
		t.Logf("%s: removing node %d (leader %d)", mode.name, victim, l)
		tc.waitValue(victim, "before", []byte("1"))
		snapDir := tc.get(victim).(*cluster).snapDir
		if mode.whileDown {
			tc.stop(victim)
		}

		healRemove(tc, rest, victim)
		tc.waitVotersOn(10*time.Second, rest, rest...)
		// It stays out while it runs: nothing re-adds it, and the cluster
		// serves writes without it.
		key := fmt.Sprintf("while-removed/%d", round)
		tc.set(key, []byte(mode.name), rest...)
		if !mode.whileDown {
			stayOut := time.Now().Add(time.Second)
			for time.Now().Before(stayOut) {
				for _, i := range rest {
					if slices.Contains(voters(tc.get(i)), mesh.ID(victim)) {
						t.Fatalf("%s: the removed node %d is a voter again on node %d while still running", mode.name, victim, i)
					}
				}
				if tc.get(victim).IsLeader() {
					t.Fatalf("%s: the removed node %d leads", mode.name, victim)
				}
				time.Sleep(rafttest.PollInterval)
			}
			tc.stop(victim)
		}
		if mode.wipe {
			healWipe(tc, victim, snapDir)
		}

		start := time.Now()
		c := tc.mustStart(victim)
		tc.waitVoters(20*time.Second, 0, 1, 2)
		t.Logf("%s: node %d is a voter again %v after its restart", mode.name, victim, time.Since(start).Round(time.Millisecond))
		tc.waitValue(victim, key, []byte(mode.name))
		tc.waitValue(victim, "before", []byte("1"))
		// And it takes part: a new write reaches it.
		after := fmt.Sprintf("after-rejoin/%d", round)
		tc.set(after, []byte("ok"))
		tc.waitValue(victim, after, []byte("ok"))
		if err := c.Barrier(5 * time.Second); err != nil {
			t.Fatalf("%s: barrier on the rejoined node: %v", mode.name, err)
		}
	}
}

// A follower that is closed (cluster and node) misses writes and catches up
// when it comes back: from the log, or, when the leader's log was truncated
// past it, by installing a snapshot.
func TestHealFollowerReboot(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	for _, mode := range []string{"log", "snapshot"} {
		t.Run(mode, func(t *testing.T) {
			mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
			var extra []Option
			writes := 50
			if mode == "snapshot" {
				extra = append(extra, snapshotEvery(100))
				writes = 400
			}
			tc := newTestCluster(t, mesh, "/raft/heal-follower", extra...)
			tc.form(15*time.Second, 0, 1, 2)
			before := healWriteMany(tc, "before/", 5, 1)

			l := tc.leader(10 * time.Second)
			victim := tc.follower(l, 0)
			healWaitKeys(tc, 10*time.Second, victim, before)
			vc := tc.get(victim).(*cluster)
			r, _ := vc.r()
			victimLast := r.LastIndex()
			if mode == "snapshot" && snapshotCount(t, vc) != 0 {
				t.Fatalf("the follower has a snapshot already: its catching up could not prove an install")
			}
			tc.stop(victim)
			mesh.Stop(victim)

			down := healWriteMany(tc, "down/", writes, 8)
			if mode == "snapshot" {
				tc.waitFor(15*time.Second, "the leader's log to be truncated past the follower", func() bool {
					first, err := tc.get(tc.leader(10 * time.Second)).(*cluster).logs.FirstIndex()
					return err == nil && first > victimLast+1
				})
			}

			mesh.Restart(victim)
			start := time.Now()
			c := tc.mustStart(victim)
			healWaitKeys(tc, 20*time.Second, victim, append(before, down...))
			t.Logf("the follower caught up %d writes %v after its restart", len(down), time.Since(start).Round(time.Millisecond))
			if mode == "snapshot" && snapshotCount(t, c) == 0 {
				t.Fatalf("the follower caught up past a truncated log without a snapshot")
			}
			if n := len(c.Keys("down/")); n != writes {
				t.Fatalf("the follower has %d of %d keys", n, writes)
			}
			tc.waitVoters(10*time.Second, 0, 1, 2)
			tc.set("after", []byte("ok"))
			tc.waitValue(victim, "after", []byte("ok"))
		})
	}
}

// The leader, with a write of its own still uncommitted, is closed and its
// node stopped; the others elect a new leader and take writes; the old
// leader comes back as a follower, gets the new writes, and its stale entry
// is dropped: every member reads what was written after it left.
func TestHealLeaderReboot(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/heal-leader")
	tc.form(15*time.Second, 0, 1, 2)
	tc.set("k", []byte("old"))
	old := tc.leader(10 * time.Second)
	rest := others(old, 3)
	for i := range 3 {
		tc.waitValue(i, "k", []byte("old"))
	}

	// Cut off, the leader appends a write it can no longer commit.
	mesh.Isolate(old)
	if err := tc.get(old).Set("k", []byte("stale"), time.Second); err == nil {
		t.Fatalf("the cut-off leader acknowledged a write")
	} else {
		t.Logf("write on the cut-off leader: %v", err)
	}
	tc.stop(old)
	mesh.Stop(old)
	mesh.Rejoin(old)

	nl := tc.leaderAmong(15*time.Second, rest...)
	tc.set("k", []byte("new"), rest...)
	for i := range 10 {
		tc.set(fmt.Sprintf("after/%d", i), []byte("v"), rest...)
	}
	t.Logf("node %d leads after node %d left", nl, old)

	mesh.Restart(old)
	c := tc.mustStart(old)
	if s := c.State(); s == hraft.Leader {
		t.Fatalf("the old leader came back as %v", s)
	}
	// Its stale entry never shows, anywhere, while it catches up.
	tc.waitFor(20*time.Second, "the old leader to hold the new writes", func() bool {
		for _, i := range tc.running() {
			if v, _ := tc.get(i).Get("k"); string(v) == "stale" {
				t.Fatalf("node %d reads the old leader's uncommitted write", i)
			}
		}
		v, _ := c.Get("k")
		last, ok := c.Get("after/9")
		return string(v) == "new" && ok && string(last) == "v"
	})
	tc.waitVoters(10*time.Second, 0, 1, 2)
	tc.leader(10 * time.Second)
	for i := range 3 {
		if err := tc.get(i).Barrier(5 * time.Second); err != nil {
			t.Fatalf("barrier on node %d: %v", i, err)
		}
		if v, ok := tc.get(i).Get("k"); !ok || string(v) != "new" {
			t.Fatalf("node %d reads k=%q (%v), want the value written after the old leader left", i, v, ok)
		}
		if n := len(tc.get(i).Keys("after/")); n != 10 {
			t.Fatalf("node %d has %d of 10 keys written after the old leader left", i, n)
		}
	}
	// The old leader takes part again.
	tc.set("final", []byte("ok"))
	tc.waitValue(old, "final", []byte("ok"))
}

// Five members split into {leader, one follower} and the three others: the
// majority elects a leader and takes writes, the minority refuses every
// write with a clear error and none of its attempts ever shows; once healed
// the minority catches up and there is one cluster. Then a follower cut off
// from everyone rejoins the same cluster without starting another.
func TestHealPartition(t *testing.T) {
	t.Parallel()         // timing-free: it runs beside the other such tests
	const clientNode = 5 // not a member: a Client on the minority side
	mesh := rafttest.NewMesh(t, 6, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/heal-partition")
	all := seq(5)
	tc.form(20*time.Second, all...)
	tc.set("k", []byte("before"))

	old := tc.leader(10 * time.Second)
	buddy := (old + 1) % 5
	minority := []int{old, buddy}
	var majority []int
	for _, i := range all {
		if !slices.Contains(minority, i) {
			majority = append(majority, i)
		}
	}
	for _, i := range all {
		tc.waitValue(i, "k", []byte("before"))
	}
	cl, err := NewClient(mesh.Node(clientNode), tc.ns, nil)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer cl.Close()
	t.Logf("partition: minority %v (old leader %d) with a client, majority %v", minority, old, majority)
	mesh.Partition(append([]int{clientNode}, minority...), majority)

	// The minority keeps trying to write, on both of its members.
	type attempt struct {
		node int
		key  string
		err  error
	}
	var (
		mu       sync.Mutex
		attempts []attempt
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for _, i := range minority {
		wg.Go(func() {
			untilClosed(stop, func(n int) {
				key := fmt.Sprintf("min/%d/%03d", i, n)
				err := tc.get(i).Set(key, []byte("minority"), time.Second)
				if n%2 == 1 {
					key = "k"
					err = tc.get(i).Set(key, []byte(fmt.Sprintf("minority-%d-%d", i, n)), time.Second)
				}
				mu.Lock()
				attempts = append(attempts, attempt{i, key, err})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			})
		})
	}
	// And a Client writes through the minority's members.
	wg.Go(func() {
		untilClosed(stop, func(n int) {
			key := fmt.Sprintf("min/client/%03d", n)
			err := cl.Set(key, []byte("minority"), time.Second, mesh.ID(old), mesh.ID(buddy))
			mu.Lock()
			attempts = append(attempts, attempt{clientNode, key, err})
			mu.Unlock()
		})
	})

	start := time.Now()
	nl := tc.leaderAmong(15*time.Second, majority...)
	t.Logf("the majority elected node %d in %v", nl, time.Since(start).Round(time.Millisecond))
	tc.set("k", []byte("majority"), majority...)
	for i := range 10 {
		tc.set(fmt.Sprintf("maj/%d", i), []byte("v"), majority...)
	}
	// Let the minority try for a while past its leader's lease.
	if d := 2*time.Second - time.Since(start); d > 0 {
		time.Sleep(d)
	}
	close(stop)
	wg.Wait()
	counts := map[string]int{}
	for _, a := range attempts {
		switch {
		case a.err == nil:
			t.Errorf("node %d on the minority side acknowledged a write of %s", a.node, a.key)
		case !notAppliedOrLost(a.err):
			t.Errorf("node %d on the minority side: write of %s failed with %v, want an error that IsNotApplied, ErrLeadershipLost or ErrTimeout", a.node, a.key, a.err)
		}
		if name := sentinelName(a.err); name != "" {
			counts[name]++
		}
	}
	t.Logf("minority write attempts: %d (node %d is the client), refusals: %v", len(attempts), clientNode, counts)
	if len(attempts) == 0 {
		t.Fatalf("the minority made no write attempt")
	}

	mesh.HealAll()
	start = time.Now()
	tc.waitVoters(20*time.Second, all...)
	l := tc.leader(15 * time.Second)
	for _, i := range all {
		tc.waitValue(i, "maj/9", []byte("v"))
	}
	t.Logf("one cluster again (leader %d) %v after the heal", l, time.Since(start).Round(time.Millisecond))
	for _, i := range all {
		c := tc.get(i)
		if err := c.Barrier(5 * time.Second); err != nil {
			t.Fatalf("barrier on node %d: %v", i, err)
		}
		if v, _ := c.Get("k"); string(v) != "majority" {
			t.Fatalf("node %d reads k=%q after the heal, want the majority's write", i, v)
		}
		if keys := c.Keys("min/"); len(keys) != 0 {
			t.Fatalf("node %d holds writes tried on the minority side: %v", i, keys)
		}
		if n := len(c.Keys("maj/")); n != 10 {
			t.Fatalf("node %d holds %d of the majority's 10 writes", i, n)
		}
	}

	// An isolated follower rejoins the same cluster and never starts one.
	l = tc.leader(10 * time.Second)
	lid := mesh.ID(l)
	iso := (l + 2) % 5
	want := voters(tc.get(l))
	t.Logf("isolating node %d (leader %d)", iso, l)
	mesh.Isolate(iso)
	rest := others(iso, 5)
	tc.set("while-isolated", []byte("v"), rest...)
	isolatedUntil := time.Now().Add(2 * time.Second)
	for time.Now().Before(isolatedUntil) {
		c := tc.get(iso)
		if c.IsLeader() {
			t.Fatalf("the isolated node %d leads", iso)
		}
		if got := voters(c); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("the isolated node %d changed its configuration: %v, want %v", iso, shortIDs(got), shortIDs(want))
		}
		time.Sleep(rafttest.PollInterval)
	}
	mesh.Rejoin(iso)
	tc.waitValue(iso, "while-isolated", []byte("v"))
	tc.waitVoters(15*time.Second, all...)
	// One leader, agreed by all, in the unchanged configuration. (With
	// pre-vote the returning node should not depose it; a loaded machine
	// can still move leadership, so that is only logged.)
	if nl := tc.leader(10 * time.Second); mesh.ID(nl) != lid {
		t.Logf("leadership moved from node %d to node %d while node %d was away", l, nl, iso)
	} else {
		t.Logf("node %d still leads after node %d rejoined", l, iso)
	}
	for _, i := range all {
		if got := voters(tc.get(i)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("node %d's voters changed to %v", i, shortIDs(got))
		}
	}
	tc.set("after-rejoin", []byte("ok"))
	tc.waitValue(iso, "after-rejoin", []byte("ok"))
}

// healConnected reports whether node from has a live connection to node to.
func healConnected(tc *testCluster, from, to int) bool {
	n := tc.mesh.Node(from)
	return n != nil && n.Peer().Network().Connectedness(tc.mesh.ID(to)) == network.Connected
}

// A member restarted on another port is reached again by itself; one whose
// addresses every other member forgot is found again through discovery and
// dialled at its new address. The mesh is not connected: nodes meet only
// through discovery.
func TestHealChangedAddress(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3)
	tc := newTestCluster(t, mesh, "/raft/heal-address")
	tc.form(20*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	rest := others(f, 3)

	// 1. Restarted on a new port; the others still hold its old address,
	// and it cannot find them itself (discovery hides them from it, and its
	// new host knows nobody): the others must reach it at its new address.
	oldAddrs := fmt.Sprint(mesh.Node(f).Peer().Addrs())
	tc.stop(f)
	for _, i := range rest {
		mesh.HideFrom(i, f)
	}
	mesh.Restart(f)
	if newAddrs := fmt.Sprint(mesh.Node(f).Peer().Addrs()); newAddrs == oldAddrs {
		t.Fatalf("the restarted node kept its addresses %s", newAddrs)
	}
	for _, i := range rest {
		if len(mesh.Node(i).Peer().Peerstore().Addrs(mesh.ID(f))) == 0 {
			t.Fatalf("node %d has no address for node %d: the test needs a stale one", i, f)
		}
	}
	tc.set("moved/while-down", []byte("v"), rest...)
	start := time.Now()
	c := tc.mustStart(f)
	tc.waitFor(25*time.Second, "the others to reach the moved node", func() bool {
		v, ok := c.Get("moved/while-down")
		return ok && string(v) == "v"
	})
	t.Logf("the others reached the moved node %v after its restart", time.Since(start).Round(time.Millisecond))
	mesh.RevealAll()
	tc.set("moved/after", []byte("v"), rest...)
	tc.waitValue(f, "moved/after", []byte("v"))
	tc.waitVoters(10*time.Second, 0, 1, 2)

	// 2. Node restarted while the others forget its addresses: they must
	// find the new ones through discovery.
	tc.stop(f)
	mesh.Stop(f)
	mesh.ClearAddrs(f)
	tc.set("forgotten/while-down", []byte("v"), rest...)
	mesh.Restart(f)
	c = tc.mustStart(f)
	tc.waitValue(f, "forgotten/while-down", []byte("v"))

	// 3. Running, with every connection to it dropped and its address
	// forgotten by the others: the leader must look it up in discovery to
	// replicate. It cannot dial them itself: it forgot them too, and
	// discovery hides them from it.
	mesh.Isolate(f)
	mesh.ClearAddrs(f)
	for _, i := range rest {
		mesh.Node(f).Peer().Peerstore().ClearAddrs(mesh.ID(i))
		mesh.HideFrom(i, f)
		if n := len(mesh.Node(i).Peer().Peerstore().Addrs(mesh.ID(f))); n != 0 {
			t.Fatalf("node %d still has %d addresses for node %d", i, n, f)
		}
	}
	mesh.Rejoin(f)
	start = time.Now()
	tc.set("forgotten/after", []byte("v"), rest...)
	tc.waitValue(f, "forgotten/after", []byte("v"))
	t.Logf("the leader found the running node again %v after its addresses were forgotten", time.Since(start).Round(time.Millisecond))
	l = tc.leader(10 * time.Second)
	if l != f {
		tc.waitFor(10*time.Second, "the leader to be connected to the moved node", func() bool {
			return healConnected(tc, l, f)
		})
	}
	mesh.RevealAll()
	if err := c.Barrier(5 * time.Second); err != nil {
		t.Fatalf("barrier on the moved node: %v", err)
	}
	tc.waitVoters(10*time.Second, 0, 1, 2)
}

// Every member is closed and its node stopped; all restart with the same
// identities and data directories (pebble, synced writes) on new ports, two
// first and the last one later, and re-form the cluster by themselves, with
// every acknowledged write. Nodes meet only through discovery.
func TestHealWholeClusterRestart(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	const writes = 200
	mesh := rafttest.NewMesh(t, 3, rafttest.WithPebble())
	tc := newTestCluster(t, mesh, "/raft/heal-whole")
	tc.form(20*time.Second, 0, 1, 2)
	acked := healWriteMany(tc, "w/", writes, 8)
	t.Logf("%d of %d writes acknowledged", len(acked), writes)

	for i := range 3 {
		tc.stop(i)
	}
	for i := range 3 {
		mesh.Stop(i)
	}
	// Two come back first: a quorum, which elects a leader and serves.
	start := time.Now()
	for i := range 2 {
		mesh.Restart(i)
	}
	tc.startAll(0, 1)
	l := tc.leader(20 * time.Second)
	t.Logf("nodes 0 and 1 re-formed with leader %d %v after their restart", l, time.Since(start).Round(time.Millisecond))
	tc.set("two-of-three", []byte("v"), 0, 1)
	// Then the last one, which rejoins them.
	mesh.Restart(2)
	tc.mustStart(2)
	tc.waitVoters(20*time.Second, 0, 1, 2)
	l = tc.leader(20 * time.Second)
	tc.waitValue(2, "two-of-three", []byte("v"))
	t.Logf("all three together with leader %d %v after the restart", l, time.Since(start).Round(time.Millisecond))
	for i := range 3 {
		c := tc.get(i)
		if err := c.Barrier(10 * time.Second); err != nil {
			t.Fatalf("barrier on node %d: %v", i, err)
		}
		if found := heldWrites(c, acked); found != len(acked) {
			t.Fatalf("node %d holds %d of %d acknowledged writes after the restart", i, found, len(acked))
		}
	}
	tc.set("after-restart", []byte("ok"))
	for i := range 3 {
		tc.waitValue(i, "after-restart", []byte("ok"))
	}
}

// A member whose state machine lost its latest writes (what a machine crash
// can do to the key-value data, which p2pnode's pebble store does not fsync:
// see UnsyncedStore) catches up from its own log, or from its snapshot and
// log, when it starts again: the applied index is gone, one key is missing
// and one holds a stale value, yet afterwards it holds exactly what the
// others hold, including writes made while it was down.
func TestHealStateMachineBehindLog(t *testing.T) {
	t.Parallel() // timing-free: it runs beside the other such tests
	for _, tt := range []struct {
		name     string
		writes   int
		snapshot bool
	}{
		{name: "from the log", writes: 60},
		{name: "from a snapshot and the log", writes: 400, snapshot: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mesh := rafttest.NewMesh(t, 3, rafttest.Connected(), rafttest.WithPebble())
			var extra []Option
			if tt.snapshot {
				extra = append(extra, snapshotEvery(100))
			}
			ns := "/raft/heal-behind"
			tc := newTestCluster(t, mesh, ns, extra...)
			tc.form(20*time.Second, 0, 1, 2)
			acked := healWriteMany(tc, "w/", tt.writes, 8)
			if len(acked) < tt.writes/2 {
				t.Fatalf("only %d of %d writes acknowledged", len(acked), tt.writes)
			}
			f := (tc.leader(10*time.Second) + 1) % 3
			if err := tc.get(f).Barrier(10 * time.Second); err != nil {
				t.Fatalf("barrier on node %d: %v", f, err)
			}
			if tt.snapshot {
				tc.waitFor(10*time.Second, "a snapshot on the follower", func() bool {
					return snapshotCount(t, tc.get(f)) > 0
				})
			}
			tc.stop(f)

			// Roll the follower's state machine back behind its log.
			kv, err := newKVStore(mesh.Node(f).Store(), ns+"/data")
			if err != nil {
				t.Fatal(err)
			}
			if kv.applied == 0 {
				t.Fatal("the follower's state machine had applied nothing")
			}
			ctx := context.Background()
			for _, err := range []error{
				kv.ds.Delete(ctx, kv.appliedKey),
				kv.ds.Delete(ctx, kv.dataKey(acked[0])),
				kv.ds.Put(ctx, kv.dataKey(acked[1]), encodeEntry(Entry{Value: []byte("stale"), CreateIndex: 1, ModIndex: 1})),
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
			// Writes it misses while down.
			tc.set("while-down", []byte("w"))

			c := tc.mustStart(f)
			tc.waitValue(f, "while-down", []byte("w"))
			if err := c.Barrier(10 * time.Second); err != nil {
				t.Fatalf("barrier after the restart: %v", err)
			}
			for _, k := range acked {
				if v, ok := c.Get(k); !ok || string(v) != "v"+k {
					t.Fatalf("after the restart node %d has %s = %q, %v; want %q", f, k, v, ok, "v"+k)
				}
			}
			want := c.Keys("")
			for i := range 3 {
				if i == f {
					continue
				}
				if err := tc.get(i).Barrier(10 * time.Second); err != nil {
					t.Fatal(err)
				}
				if got := tc.get(i).Keys(""); !slices.Equal(got, want) {
					t.Fatalf("node %d lists %d keys, node %d %d", i, len(got), f, len(want))
				}
			}
		})
	}
}
