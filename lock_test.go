package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// ---- decision rules ----

func TestLockKeyLayout(t *testing.T) {
	// No two names share a key, whatever bytes they hold: each kind of key
	// ends in its own fixed form.
	names := []string{"a", "a/", "a/b", "ab", "a/00000000000000000001", "h/a", "w/a", "g/a", "/"}
	seen := map[string]string{}
	for _, n := range names {
		for _, k := range []string{LockKey(n), lockGateKey(n), lockWaiterKey(n, 1), lockWaiterKey(n, 12345)} {
			if other, dup := seen[k]; dup {
				t.Fatalf("key %q of %q also belongs to %q", k, n, other)
			}
			seen[k] = n
		}
	}
	if got := lockWaiterKey("x", 42); got != "_tauraft/lock/w/x/00000000000000000042" {
		t.Fatalf("waiter key %q", got)
	}
	long := string(make([]byte, MaxLockNameSize))
	if err := validateLockName(long); err != nil {
		t.Fatalf("a name of MaxLockNameSize: %v", err)
	}
	if len(lockWaiterKey(long, ^LeaseID(0))) != MaxKeySize {
		t.Fatalf("the longest waiter key has %d bytes, want MaxKeySize", len(lockWaiterKey(long, ^LeaseID(0))))
	}
	for _, bad := range []struct {
		name string
		err  error
	}{{"", ErrInvalidKey}, {long + "x", ErrTooLarge}} {
		if err := validateLockName(bad.name); !errors.Is(err, bad.err) {
			t.Fatalf("name of %d bytes: %v, want %v", len(bad.name), err, bad.err)
		}
	}
}

func TestLockEventLost(t *testing.T) {
	for _, tc := range []struct {
		e    Event
		lost bool
	}{
		{Event{Kind: EventDelete, Entry: Entry{CreateIndex: 10}, Index: 12}, true},             // unlocked, revoked, expired
		{Event{Kind: EventSet, Entry: Entry{CreateIndex: 10, ModIndex: 11}, Index: 11}, false}, // rewritten, same lock
		{Event{Kind: EventSet, Entry: Entry{CreateIndex: 14, ModIndex: 14}, Index: 14}, true},  // a new holder's key
	} {
		if got := lockEventLost(tc.e, 10); got != tc.lost {
			t.Errorf("lockEventLost(%+v, 10) = %v", tc.e, got)
		}
	}
}

func TestRenewalRules(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, renewOK},
		{ErrLeaseNotFound, renewLost},
		{&remoteError{sentinel: ErrLeaseNotFound, msg: "x"}, renewLost}, // over the wire
		{errAfterClose, renewLost},
		{ErrNoLeader, renewRetry},
		{ErrTimeout, renewRetry},
		{&unknownOutcome{err: ErrLeadershipLost}, renewRetry},
		{errors.New("stream reset"), renewRetry},
	} {
		if got := renewalVerdict(tc.err); got != tc.want {
			t.Errorf("renewalVerdict(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	for _, tc := range []struct{ left, want time.Duration }{
		{time.Second, time.Second},
		{0, lockRetryPause},
		{-time.Second, lockRetryPause},
		{2 * MaxTimeout, MaxTimeout},
	} {
		if got := renewTimeout(tc.left); got != tc.want {
			t.Errorf("renewTimeout(%v) = %v, want %v", tc.left, got, tc.want)
		}
	}
}

// ---- on a cluster ----

// lockMesh forms a 3-member cluster (nodes 0-2) and starts a Client on each
// of the next nClients nodes.
func lockMesh(t *testing.T, ns string, nClients int) (*testCluster, []*Client) {
	t.Helper()
	mesh := rafttest.NewMesh(t, 3+nClients, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	tc.form(15*time.Second, 0, 1, 2)
	tc.leader(10 * time.Second)
	clients := make([]*Client, nClients)
	for i := range clients {
		cl, err := NewClient(mesh.Node(3+i), ns, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		clients[i] = cl
	}
	return tc, clients
}

// lockKeysOn lists node i's keys of the lock space (holder, gate, waiters).
func lockKeysOn(tc *testCluster, i int) []string { return tc.get(i).Keys(lockPrefix) }

// TryLock: ErrLocked on both sides of the wire and on a member (leader or
// follower) while the lock is held, nothing left behind by the refusals,
// and free again after Unlock.
func TestTryLockLocked(t *testing.T) {
	tc, cls := lockMesh(t, "/raft/trylock", 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	a, err := cls[0].TryLock("job", 2*time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e, ok, err := cls[1].GetEntry(LockKey("job"), int64(5*time.Second))
	if err != nil || !ok || e.CreateIndex != a.Token() || e.Lease != LeaseID(a.Token()) {
		t.Fatalf("lock key %+v %v %v; token %d", e, ok, err, a.Token())
	}
	leases := leaseCount(tc, l)
	for name, try := range map[string]func() (Lock, error){
		"client":   func() (Lock, error) { return cls[1].TryLock("job", 2*time.Second, 5*time.Second) },
		"leader":   func() (Lock, error) { return tc.get(l).TryLock("job", 2*time.Second, 5*time.Second) },
		"follower": func() (Lock, error) { return tc.get(f).TryLock("job", 2*time.Second, 5*time.Second) },
	} {
		if got, err := try(); !errors.Is(err, ErrLocked) || got != nil {
			t.Fatalf("%s TryLock of a held lock: %v %v", name, got, err)
		}
	}
	if err := tc.get(l).Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if n := leaseCount(tc, l); n != leases {
		t.Fatalf("refused TryLocks left leases: %d, was %d", n, leases)
	}
	// Another name is free.
	other, err := tc.get(f).TryLock("job2", 2*time.Second, 5*time.Second)
	if err != nil || other.Token() <= a.Token() {
		t.Fatalf("TryLock of another name on a follower: %v %v", other, err)
	}
	if err := other.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("Done open after Unlock")
	}
	if err := a.Unlock(); err != nil {
		t.Fatalf("second Unlock: %v", err)
	}
	b, err := cls[1].TryLock("job", 2*time.Second, 5*time.Second)
	if err != nil || b.Token() <= a.Token() {
		t.Fatalf("TryLock after Unlock: %v %v (token before %d)", b, err, a.Token())
	}
	if err := b.Unlock(); err != nil {
		t.Fatal(err)
	}
	tc.waitFor(10*time.Second, "no lock keys and no leases left", func() bool {
		return len(lockKeysOn(tc, l)) == 0 && leaseCount(tc, l) == leases-1
	})
	// Bad input, refused before anything is sent.
	for _, bad := range []struct {
		name     string
		ttl, tmo time.Duration
		err      error
	}{
		{"", time.Second, time.Second, ErrInvalidKey},
		{"x", time.Millisecond, time.Second, ErrInvalidTimeout},
		{"x", time.Second, 0, ErrInvalidTimeout},
		{string(make([]byte, MaxLockNameSize+1)), time.Second, time.Second, ErrTooLarge},
	} {
		if _, err := cls[0].TryLock(bad.name, bad.ttl, bad.tmo); !errors.Is(err, bad.err) {
			t.Fatalf("TryLock(%d bytes, %v, %v): %v, want %v", len(bad.name), bad.ttl, bad.tmo, err, bad.err)
		}
	}
	if _, err := cls[0].Lock(context.Background(), "", time.Second); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("Lock with an empty name: %v", err)
	}
}

// A holder that stops renewing loses the lock: Done closes within a TTL,
// the next holder gets a higher token, and the stale holder's Unlock, and
// a retry of its unlock entry, release nothing of the new holder's.
func TestUnlockStaleToken(t *testing.T) {
	const ttl = time.Second
	tc, cls := lockMesh(t, "/raft/lockstale", 2)
	l := tc.leader(10 * time.Second)
	old, err := cls[0].TryLock("s", ttl, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stalled := time.Now()
	old.(*heldLock).stopRenewing()
	select {
	case <-old.Done():
	case <-time.After(2 * ttl):
		t.Fatal("Done still open 2 TTL after renewals stopped")
	}
	if d := time.Since(stalled); d > ttl+ttl/2 {
		t.Fatalf("Done closed %v after the renewals stopped (TTL %v)", d, ttl)
	}
	// The new holder waits for the old lease to expire.
	ctx, cancel := ctxTimeout(20 * time.Second)
	defer cancel()
	cur, err := cls[1].Lock(ctx, "s", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Token() <= old.Token() {
		t.Fatalf("new token %d not above the old %d", cur.Token(), old.Token())
	}
	if err := old.Unlock(); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("stale Unlock: %v", err)
	}
	// The same unlock entry again, as a retry that arrives late would be.
	res, err := tc.get(l).(*cluster).leaseWrite(unlockOps("s", old.Token(), LeaseID(old.Token())), 5*time.Second)
	if err != nil || res.OK {
		t.Fatalf("stale unlock entry: %+v %v", res, err)
	}
	e, ok, err := cls[0].GetEntry(LockKey("s"), int64(5*time.Second))
	if err != nil || !ok || e.CreateIndex != cur.Token() {
		t.Fatalf("the new holder's lock after stale unlocks: %+v %v %v", e, ok, err)
	}
	select {
	case <-cur.Done():
		t.Fatal("the new holder's Done closed")
	default:
	}
	if err := cur.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// lockRecord is one acquisition in TestLockFencedUnderFailures.
type lockRecord struct {
	client           int
	token            uint64
	acquiredAt       time.Time
	doneAt           time.Time // when Done closed (Unlock closes it at the latest)
	unlockErr        error
	paused           bool
	refusedAfterDone int // the paused holder's fenced writes refused after Done
}

// resWrite is a fenced write the resource accepted, as the log ordered it.
type resWrite struct{ token, index uint64 }

// The must-show test of locks. Five Clients on five nodes each take the
// lock 100 times (Lock, a write to a resource fenced by IfCreateIndex of
// the lock key and the token, Unlock) while the leader is killed (cut off,
// closed, and later brought back) and one holder stops renewing past its
// TTL and keeps writing. Checked:
//   - the tokens, in the order the state machine created the lock key and
//     in the order the Clients got them, strictly increase;
//   - the resource accepted a write of token t at index i only if no other
//     acquisition came between t and i (never from a holder after its lock
//     was lost), and the stalled holder's writes after its loss were refused;
//   - every holder whose lock was lost saw Done close within one TTL of the
//     loss (the lock key's delete).
func TestLockFencedUnderFailures(t *testing.T) {
	// Not parallel: Done must close within one TTL (2 s) of the loss, a
	// bound in time that another test's load could break.
	const (
		ns      = "/raft/lockfence"
		name    = "fence"
		res     = "fence/resource"
		ttl     = 2 * time.Second
		rounds  = 100
		clients = 5
	)
	began := time.Now()
	tc, cls := lockMesh(t, ns, clients+1) // the last Client watches
	mesh := tc.mesh
	members := []int{0, 1, 2}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The log's view: lock keys created and deleted, resource writes.
	var (
		mu       sync.Mutex
		created  []uint64                 // tokens, as the log created the lock key
		deleted  = map[uint64]time.Time{} // token -> when its delete was seen
		accepted []resWrite
	)
	events, err := cls[clients].Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for e := range events {
			mu.Lock()
			switch {
			case e.Key == LockKey(name) && e.Kind == EventSet && e.Entry.CreateIndex == e.Index:
				created = append(created, e.Index)
			case e.Key == LockKey(name) && e.Kind == EventDelete:
				deleted[e.Entry.CreateIndex] = time.Now()
			case e.Key == res && e.Kind == EventSet:
				accepted = append(accepted, resWrite{binary.BigEndian.Uint64(e.Entry.Value), e.Index})
			}
			mu.Unlock()
		}
	}()

	var (
		recMu    sync.Mutex
		records  []*lockRecord
		lockErrs int
		progress atomic.Int64
		pausedAt = rounds * 3 / 5 // the round at which client 1 stalls
		// targets lists the members, the leader first (as a Client that
		// follows the leader would): writes then skip a forwarding hop.
		targets atomic.Pointer[[]peer.ID]
	)
	leaderFirst := func(among ...int) {
		l := tc.leaderAmong(20*time.Second, among...)
		ids := []peer.ID{mesh.ID(l)}
		for _, i := range members {
			if i != l {
				ids = append(ids, mesh.ID(i))
			}
		}
		targets.Store(&ids)
	}
	leaderFirst(members...)
	fenced := func(cl *Client, token uint64) (bool, error) {
		r, err := cl.Txn(Txn{
			If:   []Cond{IfCreateIndex(LockKey(name), token)},
			Then: []Op{SetOp(res, binary.BigEndian.AppendUint64(nil, token))},
		}, 5*time.Second, *targets.Load()...)
		return r.OK, err
	}
	var wg sync.WaitGroup
	for c := range clients {
		cl := cls[c]
		wg.Go(func() {
			for round := 0; round < rounds; {
				lk, err := cl.Lock(ctx, name, ttl, *targets.Load()...)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					recMu.Lock()
					lockErrs++
					recMu.Unlock()
					t.Logf("client %d round %d: Lock: %v", c, round, err)
					time.Sleep(lockRetryPause)
					continue
				}
				rec := &lockRecord{client: c, token: lk.Token(), acquiredAt: time.Now()}
				doneSeen := make(chan struct{})
				go func() {
					<-lk.Done()
					rec.doneAt = time.Now()
					close(doneSeen)
				}()
				if _, err := fenced(cl, rec.token); err != nil {
					t.Logf("client %d round %d: fenced write: %v", c, round, err)
				}
				if c == 1 && round == pausedAt {
					// Stall: no more renewals, but keep writing until the
					// lock is lost and another holder has taken it.
					rec.paused = true
					lk.(*heldLock).stopRenewing()
					<-doneSeen
					for from := progress.Load(); ; time.Sleep(20 * time.Millisecond) {
						ok, err := fenced(cl, rec.token)
						if err == nil && !ok {
							rec.refusedAfterDone++
						}
						if rec.refusedAfterDone > 0 && progress.Load() > from+1 {
							break
						}
						if ctx.Err() != nil {
							return
						}
					}
				}
				rec.unlockErr = lk.Unlock()
				<-doneSeen
				recMu.Lock()
				records = append(records, rec)
				recMu.Unlock()
				progress.Add(1)
				round++
			}
		})
	}

	// The leader is killed after a fifth of the acquisitions, and brought
	// back 100 acquisitions later.
	faults := make(chan struct{})
	go func() {
		defer close(faults)
		wait := func(n int64) bool {
			deadline := time.Now().Add(60 * time.Second)
			for progress.Load() < n {
				if time.Now().After(deadline) {
					t.Errorf("no progress past %d acquisitions", progress.Load())
					return false
				}
				time.Sleep(rafttest.PollInterval)
			}
			return true
		}
		if !wait(clients * rounds / 5) {
			return
		}
		l := tc.leaderAmong(20*time.Second, members...)
		t.Logf("acquisition %d: killing the leader, node %d", progress.Load(), l)
		mesh.Isolate(l)
		tc.stop(l)
		mesh.Stop(l)
		rest := slices.DeleteFunc(slices.Clone(members), func(i int) bool { return i == l })
		leaderFirst(rest...)
		if !wait(progress.Load() + 100) {
			return
		}
		t.Logf("acquisition %d: restarting node %d", progress.Load(), l)
		mesh.Rejoin(l)
		mesh.Restart(l)
		tc.mustStart(l)
		leaderFirst(members...)
	}()
	wg.Wait()
	<-faults

	// Let the watcher see the last changes: a final write's index.
	last, err := cls[0].Txn(Txn{Then: []Op{SetOp("fence/end", nil)}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc.waitFor(30*time.Second, "the watcher to reach the end", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) > 0 && accepted[len(accepted)-1].index <= last.Index && len(created) >= len(records)
	})
	time.Sleep(200 * time.Millisecond)
	cancel()
	<-watched

	mu.Lock()
	defer mu.Unlock()
	recMu.Lock()
	defer recMu.Unlock()
	if len(records) != clients*rounds {
		t.Fatalf("%d acquisitions, want %d", len(records), clients*rounds)
	}
	// Tokens: strictly increasing in the log's order, and in the order the
	// Clients got them; every Client's token is a creation of the lock key.
	for k := 1; k < len(created); k++ {
		if created[k] <= created[k-1] {
			t.Fatalf("lock key created at %d after %d", created[k], created[k-1])
		}
	}
	byTime := slices.Clone(records)
	slices.SortFunc(byTime, func(a, b *lockRecord) int { return a.acquiredAt.Compare(b.acquiredAt) })
	for k := 1; k < len(byTime); k++ {
		if byTime[k].token <= byTime[k-1].token {
			t.Fatalf("client %d got token %d after client %d got %d", byTime[k].client, byTime[k].token, byTime[k-1].client, byTime[k-1].token)
		}
	}
	for _, r := range records {
		if _, ok := slices.BinarySearch(created, r.token); !ok {
			t.Fatalf("client %d's token %d is no creation of the lock key", r.client, r.token)
		}
	}
	if extra := len(created) - len(records); extra > lockErrs {
		t.Fatalf("%d lock key creations nobody got, but only %d Lock errors", extra, lockErrs)
	}
	// Fencing: an accepted write of token t at index i has no acquisition
	// between t and i.
	for _, w := range accepted {
		k, ok := slices.BinarySearch(created, w.token)
		if !ok || w.index <= w.token {
			t.Fatalf("resource accepted token %d at %d: not an acquisition before it", w.token, w.index)
		}
		if k+1 < len(created) && created[k+1] < w.index {
			t.Fatalf("resource accepted token %d at index %d, after the next holder's acquisition at %d", w.token, w.index, created[k+1])
		}
	}
	// Losses: Done within one TTL of the lock key's delete.
	var lost, stalled int
	for _, r := range records {
		if r.paused {
			stalled++
			if !errors.Is(r.unlockErr, ErrLeaseNotFound) || r.refusedAfterDone == 0 {
				t.Fatalf("stalled holder: Unlock %v, %d writes refused after Done", r.unlockErr, r.refusedAfterDone)
			}
		}
		if r.unlockErr == nil {
			continue
		}
		lost++
		gone, ok := deleted[r.token]
		if !ok {
			t.Fatalf("client %d lost token %d (%v) but its delete was never seen", r.client, r.token, r.unlockErr)
		}
		if r.doneAt.After(gone.Add(ttl)) {
			t.Fatalf("client %d: Done closed %v after the lock key's delete (TTL %v)", r.client, r.doneAt.Sub(gone), ttl)
		}
	}
	if stalled != 1 {
		t.Fatalf("%d stalled holders, want 1", stalled)
	}
	t.Logf("%d acquisitions, %d Lock errors, %d locks lost, %d resource writes accepted, in %v",
		len(records), lockErrs, lost, len(accepted), time.Since(began).Round(time.Millisecond))
}
