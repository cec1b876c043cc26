package raft

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestParseWaiters(t *testing.T) {
	p := lockWaitersPrefix("job")
	keys := []string{
		p + "00000000000000000007",
		p + "00000000000000000003",
		p + "00000000000000000003/w/00000000000000000001", // a longer name's waiter
		p + "0000000000000000000x",
		p + "0000000000000000007",  // 19 digits
		p + "00000000000000000000", // lease 0 does not exist
		lockWaitersPrefix("jobs") + "00000000000000000001",
		"other",
	}
	if got, want := parseWaiters(p, keys), []LeaseID{3, 7}; !reflect.DeepEqual(got, want) {
		t.Fatalf("parseWaiters: %v, want %v", got, want)
	}
}

func TestLockPredecessor(t *testing.T) {
	for _, tc := range []struct {
		ids    []LeaseID
		me     LeaseID
		pred   LeaseID
		listed bool
	}{
		{nil, 5, 0, false},                    // a replica that has not applied me
		{[]LeaseID{3, 7}, 5, 0, false},        // likewise, with others
		{[]LeaseID{5}, 5, 0, true},            // alone: first in line
		{[]LeaseID{5, 9, 12}, 5, 0, true},     // later ones do not matter
		{[]LeaseID{2, 3, 5, 9}, 5, 3, true},   // only the next lower one
		{[]LeaseID{2, 3, 5, 9}, 9, 5, true},   // the last in line
		{[]LeaseID{1, 2, 3, 4}, 2, 1, true},   // second
		{[]LeaseID{10, 20, 30}, 30, 20, true}, // sorted input
	} {
		pred, listed := lockPredecessor(tc.ids, tc.me)
		if pred != tc.pred || listed != tc.listed {
			t.Errorf("lockPredecessor(%v, %d) = %d %v, want %d %v", tc.ids, tc.me, pred, listed, tc.pred, tc.listed)
		}
	}
}

// waitQueued waits until n waiters of name are queued on node i's replica.
func waitQueued(tc *testCluster, i int, name string, n int) {
	tc.t.Helper()
	tc.waitFor(10*time.Second, "waiters queued", func() bool {
		return len(parseWaiters(lockWaitersPrefix(name), tc.get(i).Keys(lockWaitersPrefix(name)))) == n
	})
}

// Waiters take the lock in the order they queued, one at a time, with
// increasing tokens; a caller that comes while they wait, even at the
// moment the lock is free, queues behind them (TryLock: ErrLocked).
func TestLockWaitersOrder(t *testing.T) {
	tc, cls := lockMesh(t, "/raft/lockorder", 4)
	l := tc.leader(10 * time.Second)
	holder, err := cls[0].Lock(context.Background(), "q", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		who   int
		token uint64
	}
	order := make(chan got, 4)
	lockErrs := make(chan error, 4)
	unlocked := make(chan error, 4)
	start := func(who int, lock func() (Lock, error)) {
		go func() {
			lk, err := lock()
			if err != nil {
				lockErrs <- err
				return
			}
			order <- got{who, lk.Token()}
			// Hold briefly, then hand on.
			time.Sleep(50 * time.Millisecond)
			unlocked <- lk.Unlock()
		}()
	}
	// Three waiters, queued one after another: two Clients and a member.
	for k, who := range []int{1, 2, -1} {
		lock := func() (Lock, error) { return tc.get(tc.follower(l, 0)).Lock(context.Background(), "q", 5*time.Second) }
		if who >= 0 {
			lock = func() (Lock, error) { return cls[who].Lock(context.Background(), "q", 5*time.Second) }
		}
		start(who, lock)
		waitQueued(tc, l, "q", k+1)
	}
	if _, err := cls[3].TryLock("q", 5*time.Second, 5*time.Second); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while waiters queue: %v", err)
	}
	// A late caller, started the moment the holder unlocks.
	if err := holder.Unlock(); err != nil {
		t.Fatal(err)
	}
	start(3, func() (Lock, error) { return cls[3].Lock(context.Background(), "q", 5*time.Second) })
	var seq []got
	for range 4 {
		select {
		case g := <-order:
			seq = append(seq, g)
		case err := <-lockErrs:
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatalf("waiters stuck; acquired so far %v", seq)
		}
	}
	want := []int{1, 2, -1, 3}
	for k, g := range seq {
		if g.who != want[k] {
			t.Fatalf("acquisition order %v, want holders %v", seq, want)
		}
		if k > 0 && g.token <= seq[k-1].token {
			t.Fatalf("tokens not increasing: %v", seq)
		}
	}
	if seq[0].token <= holder.Token() {
		t.Fatalf("first waiter's token %d not above the holder's %d", seq[0].token, holder.Token())
	}
	// Wait for the remaining unlocks.
	for n := 0; n < 4; {
		select {
		case err := <-unlocked:
			if err != nil {
				t.Fatal(err)
			}
			n++
		case <-time.After(30 * time.Second):
			t.Fatal("unlocks stuck")
		}
	}
	tc.waitFor(10*time.Second, "no lock keys left", func() bool { return len(lockKeysOn(tc, l)) == 0 })
}

// Cancelling a waiting Lock removes its place in line and its lease; the
// line goes on without it.
func TestLockCancelWhileWaiting(t *testing.T) {
	tc, cls := lockMesh(t, "/raft/lockcancel", 3)
	l := tc.leader(10 * time.Second)
	holder, err := cls[0].TryLock("c", 5*time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leases := leaseCount(tc, l)
	// Waiter 1 stays; waiter 2 (queued after it) gives up.
	w1 := make(chan Lock, 1)
	go func() {
		lk, err := cls[1].Lock(context.Background(), "c", 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		w1 <- lk
	}()
	waitQueued(tc, l, "c", 1)
	ctx, cancel := context.WithCancel(context.Background())
	w2 := make(chan error, 1)
	go func() {
		lk, err := cls[2].Lock(ctx, "c", 5*time.Second)
		if lk != nil {
			t.Error("a cancelled Lock returned a lock")
		}
		w2 <- err
	}()
	waitQueued(tc, l, "c", 2)
	cancel()
	select {
	case err := <-w2:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Lock: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a cancelled Lock did not return")
	}
	// Its waiter key and lease are gone (the gate stays: waiter 1 still
	// waits, though no longer bound to the newest waiter's lease).
	tc.waitFor(10*time.Second, "the cancelled waiter's key and lease gone", func() bool {
		return len(parseWaiters(lockWaitersPrefix("c"), tc.get(l).Keys(lockWaitersPrefix("c")))) == 1 && leaseCount(tc, l) == leases+1
	})
	// Cancelled before it starts: nothing is written.
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, err := cls[2].Lock(done, "c", 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a cancelled context: %v", err)
	}
	if err := holder.Unlock(); err != nil {
		t.Fatal(err)
	}
	var lk Lock
	select {
	case lk = <-w1:
	case <-time.After(15 * time.Second):
		t.Fatal("the remaining waiter did not get the lock")
	}
	if lk == nil || lk.Token() <= holder.Token() {
		t.Fatalf("waiter's lock %v", lk)
	}
	if err := lk.Unlock(); err != nil {
		t.Fatal(err)
	}
	tc.waitFor(10*time.Second, "no lock keys and no leases left", func() bool {
		return len(lockKeysOn(tc, l)) == 0 && leaseCount(tc, l) == leases-1
	})
}
