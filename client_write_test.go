package raft

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// onceIncrements is how many increments the exactly-once test makes:
// TAURAFT_INCREMENTS, else 1,000 (200 with -short).
func onceIncrements(t *testing.T) int {
	if env := os.Getenv("TAURAFT_INCREMENTS"); env != "" {
		n, err := strconv.Atoi(env)
		if err != nil || n <= 0 {
			t.Fatalf("TAURAFT_INCREMENTS=%q", env)
		}
		return n
	}
	if testing.Short() {
		return 200
	}
	return 1000
}

// One Client increments a counter through a follower, each increment a Txn
// with IfModIndex of the value it read, while the leader is killed (twice),
// the client's follower restarts, and the answers of one write in ten are
// lost: the connection is closed right after the request is written. A
// write whose answer is lost is retried by the Client with the same request
// ID, so the counter ends equal to the number of calls that returned OK,
// and no call returns OK=false (which would mean that an earlier attempt of
// the same call had applied and the retry then found its own write).
func TestClientExactlyOnceIncrements(t *testing.T) {
	t.Parallel() // long and timing-free: it runs beside the other such tests
	n := onceIncrements(t)
	began := time.Now()
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/once")
	members := []int{0, 1, 2}
	tc.form(15*time.Second, members...)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	// The follower first, the others after it: the Client moves on when
	// its member goes away.
	targets := []peer.ID{mesh.ID(f)}
	for _, i := range members {
		if i != f {
			targets = append(targets, mesh.ID(i))
		}
	}
	cl, err := NewClient(mesh.Node(3), "/raft/once", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	var (
		cuts, attempts atomic.Int64
		rngMu          sync.Mutex
		rng            = rand.New(rand.NewSource(time.Now().UnixNano()))
	)
	host := mesh.Node(3).Peer()
	cl.caller.afterWrite = func(id peer.ID, req *request) {
		if req.Cmd != cmdTxn {
			return
		}
		attempts.Add(1)
		rngMu.Lock()
		cut, delay := rng.Intn(10) == 0, time.Duration(rng.Intn(4000))*time.Microsecond
		rngMu.Unlock()
		if cut {
			cuts.Add(1)
			// Mostly after the member got the request (it applies it and
			// its answer is lost), sometimes before.
			time.AfterFunc(delay, func() { _ = host.Network().ClosePeer(id) })
		}
	}

	var progress atomic.Int64
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		waitProgress := func(p int64) bool {
			deadline := time.Now().Add(60 * time.Second)
			for progress.Load() < p {
				if time.Now().After(deadline) {
					t.Errorf("no progress past %d of %d increments", progress.Load(), n)
					return false
				}
				time.Sleep(rafttest.PollInterval)
			}
			return true
		}
		killLeader := func(at int64) bool {
			if !waitProgress(at) {
				return false
			}
			l := tc.leaderAmong(20*time.Second, members...)
			t.Logf("increment %d: killing the leader, node %d", progress.Load(), l)
			tc.stop(l)
			mesh.Stop(l)
			if !waitProgress(progress.Load() + int64(n)/20) {
				return false
			}
			mesh.Restart(l)
			tc.mustStart(l)
			return true
		}
		if !killLeader(int64(n) / 5) {
			return
		}
		if !waitProgress(int64(n) * 2 / 5) {
			return
		}
		t.Logf("increment %d: restarting the client's follower, node %d", progress.Load(), f)
		tc.stop(f)
		mesh.Restart(f)
		tc.mustStart(f)
		killLeader(int64(n) * 3 / 5)
	}()

	var ok, failed, notOK int
	for i := range n {
		var e Entry
		tc.waitFor(30*time.Second, fmt.Sprintf("a barrier read before increment %d", i), func() bool {
			var err error
			e, _, err = cl.GetEntry("counter", int64(2*time.Second), targets...)
			return err == nil
		})
		cur := 0
		if len(e.Value) > 0 {
			cur, _ = strconv.Atoi(string(e.Value))
		}
		res, err := cl.Txn(Txn{
			If:   []Cond{IfModIndex("counter", e.ModIndex)},
			Then: []Op{SetOp("counter", []byte(strconv.Itoa(cur+1)))},
		}, 10*time.Second, targets...)
		switch {
		case err != nil:
			failed++
			t.Logf("increment %d failed (applied at most once): %v", i, err)
		case !res.OK:
			notOK++
			t.Errorf("increment %d returned OK=false at %d: an earlier attempt of the same call had applied", i, res.Index)
		default:
			ok++
		}
		progress.Add(1)
	}
	<-faultsDone

	var final Entry
	tc.waitFor(30*time.Second, "the final barrier read", func() bool {
		var err error
		final, _, err = cl.GetEntry("counter", int64(2*time.Second), targets...)
		return err == nil
	})
	got, _ := strconv.Atoi(string(final.Value))
	t.Logf("%d increments in %v: %d OK, %d OK=false, %d failed; %d write attempts, %d answers cut; counter %d",
		n, time.Since(began).Round(time.Millisecond), ok, notOK, failed, attempts.Load(), cuts.Load(), got)
	if got != ok {
		t.Fatalf("counter is %d but %d calls returned OK", got, ok)
	}
	if cuts.Load() == 0 || attempts.Load() <= int64(n) {
		t.Fatalf("no answer was lost (%d cuts, %d attempts): the test proved nothing", cuts.Load(), attempts.Load())
	}
}

// Which failures of an attempt a Client resends (outcome unknown) and which
// end the call.
func TestOutcomeUnknown(t *testing.T) {
	remote := func(err error) error { return errorFromWire(errorCode(err), err.Error()) }
	cases := []struct {
		err     error
		unknown bool
	}{
		{errors.New("raft: read answer from x: stream reset"), true}, // no answer at all
		{fmt.Errorf("%w: no answer from x", ErrTimeout), true},
		{remote(ErrTimeout), true},
		{remote(ErrLeadershipLost), true},
		{remote(forwardFailed("leader", errors.New("stream reset"))), true},
		{remote(fmt.Errorf("%w: member closing", ErrShutdown)), true},
		{remote(errStaleRequest), false}, // final: the table cannot tell
		{remote(ErrInvalidCommand), false},
		{remote(ErrTooLarge), false},
		{remote(ErrNotLeader), false}, // not applied: tried elsewhere, not resent as unknown
		{fmt.Errorf("%w: open stream", errNotSent), false},
		{errAfterClose, false},
	}
	for _, c := range cases {
		if got := outcomeUnknown(c.err); got != c.unknown {
			t.Errorf("%v: unknown=%v, want %v", c.err, got, c.unknown)
		}
	}
	// A forwarded request that was not sent stays "not sent"; a timeout
	// stays a timeout.
	if err := forwardFailed("l", fmt.Errorf("%w: x", errNotSent)); !errors.Is(err, errNotSent) || errors.Is(err, ErrLeadershipLost) {
		t.Errorf("not sent: %v", err)
	}
	if err := forwardFailed("l", fmt.Errorf("%w: x", ErrTimeout)); errors.Is(err, ErrLeadershipLost) {
		t.Errorf("timeout: %v", err)
	}
}
