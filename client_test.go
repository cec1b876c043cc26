package raft

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// csBarrier is the read barrier the client tests use for linearizable reads.
const csBarrier = int64(2 * time.Second)

// csFixture is a 3-member cluster (mesh nodes 0, 1, 2) and a Client on a
// fourth node (index 3) that never joins the namespace.
type csFixture struct {
	t      testing.TB
	mesh   *rafttest.Mesh
	tc     *testCluster
	ns     string
	cn     int // the client's node index
	client *Client
}

const csClientNode = 3

func newCSFixture(t testing.TB, ns string) *csFixture {
	t.Helper()
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	tc.form(15*time.Second, 0, 1, 2)
	tc.leader(10 * time.Second)
	cl, err := NewClient(mesh.Node(csClientNode), ns, nil)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return &csFixture{t: t, mesh: mesh, tc: tc, ns: ns, cn: csClientNode, client: cl}
}

// role names a member's role for test messages.
func (f *csFixture) role(i int) string {
	if c := f.tc.get(i); c != nil && c.IsLeader() {
		return "leader"
	}
	return "follower"
}

// raw sends one request straight to member i with a caller, bypassing the
// Client's own validation, and returns the member's error (nil on success).
func (f *csFixture) raw(i int, req *request) (*response, error) {
	f.t.Helper()
	resp, err := newCaller(f.mesh.Node(f.cn).Peer(), Protocol(f.ns), codec{}).call(f.t.Context(), f.mesh.ID(i), req, time.Now().Add(15*time.Second))
	if err != nil {
		f.t.Fatalf("raw %s to member %d: transport error %v", req.Cmd, i, err)
	}
	return resp, resp.err()
}

// state returns member i's whole key space after a barrier.
func (f *csFixture) state(i int) map[string]string {
	f.t.Helper()
	c := f.tc.get(i)
	if err := c.Barrier(5 * time.Second); err != nil {
		f.t.Fatalf("barrier on member %d: %v", i, err)
	}
	out := map[string]string{}
	for _, k := range c.Keys("") {
		v, _ := c.Get(k)
		out[k] = string(v)
	}
	return out
}

// 1. A non-member Client reaches every member, leader and followers alike,
// by target peer ID; and with no target it finds members itself.
func TestClientThroughEachMember(t *testing.T) {
	f := newCSFixture(t, "/raft/client-each")
	cl := f.client
	for i := range 3 {
		id := f.mesh.ID(i)
		role := f.role(i)
		key := fmt.Sprintf("each/%d", i)
		if err := cl.Set(key, []byte("v1"), 5*time.Second, id); err != nil {
			t.Fatalf("Set through member %d (%s): %v", i, role, err)
		}
		if v, ok, err := cl.Get(key, csBarrier, id); err != nil || !ok || string(v) != "v1" {
			t.Fatalf("barrier Get through member %d (%s) = %q, %v, %v; want v1", i, role, v, ok, err)
		}
		// Without a barrier the member answers from its own replica, which
		// catches up shortly.
		rafttest.WaitFor(t, 5*time.Second, fmt.Sprintf("member %d's replica to hold %s", i, key), func() bool {
			v, ok, err := cl.Get(key, 0, id)
			return err == nil && ok && string(v) == "v1"
		})
		rafttest.WaitFor(t, 5*time.Second, fmt.Sprintf("Keys through member %d to list %s", i, key), func() bool {
			keys, err := cl.Keys("each/", id)
			return err == nil && slices.Contains(keys, key)
		})
		if err := cl.Set(key, []byte("v2"), 5*time.Second, id); err != nil {
			t.Fatalf("overwrite through member %d (%s): %v", i, role, err)
		}
		if v, ok, err := cl.Get(key, csBarrier, id); err != nil || !ok || string(v) != "v2" {
			t.Fatalf("barrier Get after overwrite through member %d (%s) = %q, %v, %v", i, role, v, ok, err)
		}
		if err := cl.Delete(key, 5*time.Second, id); err != nil {
			t.Fatalf("Delete through member %d (%s): %v", i, role, err)
		}
		if v, ok, err := cl.Get(key, csBarrier, id); err != nil || ok {
			t.Fatalf("barrier Get after Delete through member %d (%s) = %q, %v, %v; want not found", i, role, v, ok, err)
		}
		// Deleting a missing key is not an error.
		if err := cl.Delete("each/missing", 5*time.Second, id); err != nil {
			t.Fatalf("Delete of a missing key through member %d (%s): %v", i, role, err)
		}
		if err := cl.Set(fmt.Sprintf("keep/%d", i), []byte{byte(i)}, 5*time.Second, id); err != nil {
			t.Fatalf("Set keep/%d through member %d (%s): %v", i, i, role, err)
		}
		t.Logf("member %d (%s): set, get, keys, delete OK", i, role)
	}
	// Keys are opaque bytes over the wire too, UTF-8 or not.
	binKey := "bin/\xff\xfe\x00"
	if err := cl.Set(binKey, []byte("b"), 5*time.Second, f.mesh.ID(1)); err != nil {
		t.Fatalf("Set of a non-UTF-8 key: %v", err)
	}
	if v, ok, err := cl.Get(binKey, csBarrier, f.mesh.ID(2)); err != nil || !ok || string(v) != "b" {
		t.Fatalf("Get of a non-UTF-8 key = %q, %v, %v", v, ok, err)
	}
	if keys, err := cl.Keys("bin/", f.mesh.ID(0)); err != nil || !slices.Equal(keys, []string{binKey}) {
		rafttest.WaitFor(t, 5*time.Second, "Keys(bin/) through member 0", func() bool {
			keys, err := cl.Keys("bin/", f.mesh.ID(0))
			return err == nil && slices.Equal(keys, []string{binKey})
		})
	}
	want := []string{"keep/0", "keep/1", "keep/2"}
	for i := range 3 {
		rafttest.WaitFor(t, 5*time.Second, fmt.Sprintf("Keys(keep/) through member %d", i), func() bool {
			keys, err := cl.Keys("keep/", f.mesh.ID(i))
			return err == nil && slices.Equal(keys, want)
		})
		if keys, err := cl.Keys("each/", f.mesh.ID(i)); err != nil || len(keys) != 0 {
			t.Fatalf("Keys(each/) through member %d = %v, %v; want none", i, keys, err)
		}
	}

	t.Run("no target", func(t *testing.T) {
		auto, err := NewClient(f.mesh.Node(f.cn), f.ns, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer auto.Close()
		csUseWithoutTargets(t, auto, "auto/connected")
	})

	t.Run("no target, discovery only", func(t *testing.T) {
		// Make the client node forget every member: no connection and no
		// address, so only discovery can find them.
		csForgetMembers(t, f)
		auto, err := NewClient(f.mesh.Node(f.cn), f.ns, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer auto.Close()
		csUseWithoutTargets(t, auto, "auto/discovered")
	})

	t.Run("target with unknown address", func(t *testing.T) {
		csForgetMembers(t, f)
		follower := (f.tc.leader(10*time.Second) + 1) % 3
		if err := cl.Set("auto/lookup", []byte("x"), 5*time.Second, f.mesh.ID(follower)); err != nil {
			t.Fatalf("Set through a member the host had no address for: %v", err)
		}
		if v, ok, err := cl.Get("auto/lookup", csBarrier, f.mesh.ID(follower)); err != nil || !ok || string(v) != "x" {
			t.Fatalf("Get = %q, %v, %v", v, ok, err)
		}
	})
}

// csUseWithoutTargets runs every KV call of cl without target peers.
func csUseWithoutTargets(t *testing.T, cl *Client, key string) {
	t.Helper()
	if err := cl.Set(key, []byte("auto"), 5*time.Second); err != nil {
		t.Fatalf("Set with no target: %v", err)
	}
	if v, ok, err := cl.Get(key, csBarrier); err != nil || !ok || string(v) != "auto" {
		t.Fatalf("barrier Get with no target = %q, %v, %v", v, ok, err)
	}
	rafttest.WaitFor(t, 5*time.Second, "Keys with no target to list "+key, func() bool {
		keys, err := cl.Keys(key)
		return err == nil && slices.Equal(keys, []string{key})
	})
	if err := cl.Delete(key, 5*time.Second); err != nil {
		t.Fatalf("Delete with no target: %v", err)
	}
	if _, ok, err := cl.Get(key, csBarrier); err != nil || ok {
		t.Fatalf("barrier Get after Delete with no target = %v, %v", ok, err)
	}
}

// csForgetMembers disconnects the client node from every member and drops
// their addresses from its peerstore.
func csForgetMembers(t *testing.T, f *csFixture) {
	t.Helper()
	h := f.mesh.Node(f.cn).Peer()
	rafttest.WaitFor(t, 10*time.Second, "the client node to forget the members", func() bool {
		done := true
		for i := range 3 {
			id := f.mesh.ID(i)
			if h.Network().Connectedness(id) == network.Connected {
				_ = h.Network().ClosePeer(id)
				done = false
			}
			h.Peerstore().ClearAddrs(id)
			if len(h.Peerstore().Addrs(id)) > 0 {
				done = false
			}
		}
		return done
	})
}

// 2. A write acknowledged through member A is seen by a barrier Get through
// member B, for every ordered pair, followers included. One key is
// overwritten each round, so a stale answer would show the previous value.
func TestClientBarrierReadAcrossMembers(t *testing.T) {
	f := newCSFixture(t, "/raft/client-pairs")
	cl := f.client
	n := 0
	for a := range 3 {
		for b := range 3 {
			n++
			val := fmt.Sprintf("round %d: written through %d (%s)", n, a, f.role(a))
			pairKey := fmt.Sprintf("pair/%d/%d", a, b)
			if err := cl.Set("lin", []byte(val), 5*time.Second, f.mesh.ID(a)); err != nil {
				t.Fatalf("Set through %d: %v", a, err)
			}
			if err := cl.Set(pairKey, []byte(val), 5*time.Second, f.mesh.ID(a)); err != nil {
				t.Fatalf("Set %s through %d: %v", pairKey, a, err)
			}
			for _, k := range []string{"lin", pairKey} {
				v, ok, err := cl.Get(k, csBarrier, f.mesh.ID(b))
				if err != nil || !ok || string(v) != val {
					t.Fatalf("write %s through %d (%s), barrier Get through %d (%s) = %q, %v, %v; want %q",
						k, a, f.role(a), b, f.role(b), v, ok, err, val)
				}
			}
			// The member's own Barrier (a read index on followers) gives the
			// same guarantee to its local Get.
			mb := f.tc.get(b)
			if err := mb.Barrier(2 * time.Second); err != nil {
				t.Fatalf("Barrier on member %d: %v", b, err)
			}
			if v, ok := mb.Get("lin"); !ok || string(v) != val {
				t.Fatalf("member %d local Get after Barrier = %q, %v; want %q", b, v, ok, val)
			}
		}
	}
}

// 3. Writers keep writing through random members while the leader dies and a
// new one is elected. Every acknowledged write survives; every write refused
// with an error that means "certainly not applied" is absent.
func TestClientWritesDuringLeaderFailover(t *testing.T) {
	f := newCSFixture(t, "/raft/client-failover")
	old := f.tc.leader(10 * time.Second)

	type outcome struct {
		key    string
		target int
		err    error
	}
	var (
		mu        sync.Mutex
		outcomes  []outcome
		okBefore  atomic.Int64
		okAfter   atomic.Int64
		electedAt atomic.Int64 // UnixNano once the new leader is known
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	const writers = 6
	for g := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			untilClosed(stop, func(n int) {
				target := rng.IntN(3)
				key := fmt.Sprintf("fo/%d/%05d", g, n)
				started := time.Now().UnixNano()
				err := f.client.Set(key, []byte(key), 2*time.Second, f.mesh.ID(target))
				mu.Lock()
				outcomes = append(outcomes, outcome{key, target, err})
				mu.Unlock()
				if err == nil {
					if e := electedAt.Load(); e != 0 && started > e {
						okAfter.Add(1)
					} else {
						okBefore.Add(1)
					}
				}
				// Pacing, so the verification below stays short.
				time.Sleep(10 * time.Millisecond)
			})
		})
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopWriters()

	f.tc.waitFor(10*time.Second, "writes before the kill", func() bool { return okBefore.Load() >= 30 })
	t.Logf("killing leader %d", old)
	killStart := time.Now()
	f.tc.stop(old)
	f.mesh.Stop(old)
	nl := f.tc.leader(15 * time.Second)
	electedAt.Store(time.Now().UnixNano())
	t.Logf("new leader %d after %v", nl, time.Since(killStart))
	f.tc.waitFor(10*time.Second, "writes after the election", func() bool { return okAfter.Load() >= 30 })
	stopWriters()

	// Classify.
	counts := map[string]int{}
	var acked, refused []outcome
	for _, o := range outcomes {
		var class string
		switch {
		case o.err == nil:
			class = "ok"
			acked = append(acked, o)
		case IsNotApplied(o.err):
			class, refused = sentinelName(o.err)+" (not applied)", append(refused, o)
		case sentinelName(o.err) != "":
			class = sentinelName(o.err) + " (unknown)"
		default:
			class = "other/stream (unknown)"
		}
		if counts[class] == 0 && o.err != nil {
			t.Logf("first %s: write %s through %d: %v", class, o.key, o.target, o.err)
		}
		counts[class]++
	}
	t.Logf("%d writes: %v", len(outcomes), counts)

	// Every acknowledged write is readable through a survivor; no refused one
	// is.
	survivors := others(old, 3)
	type check struct {
		o    outcome
		want bool
	}
	var checks []check
	for _, o := range acked {
		checks = append(checks, check{o, true})
	}
	for _, o := range refused {
		checks = append(checks, check{o, false})
	}
	var (
		next    atomic.Int64
		cmu     sync.Mutex
		bad     []string
		vwg     sync.WaitGroup
		readErr atomic.Int64
	)
	for w := range 4 {
		vwg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= len(checks) {
					return
				}
				c := checks[k]
				via := survivors[(k+w)%len(survivors)]
				v, ok, err := f.client.Get(c.o.key, csBarrier, f.mesh.ID(via))
				if err != nil {
					readErr.Add(1)
					cmu.Lock()
					bad = append(bad, fmt.Sprintf("barrier Get %s through %d: %v", c.o.key, via, err))
					cmu.Unlock()
					continue
				}
				if ok != c.want || (ok && string(v) != c.o.key) {
					cmu.Lock()
					bad = append(bad, fmt.Sprintf("write %s through %d returned %v; barrier Get through %d = %q, found %v",
						c.o.key, c.o.target, c.o.err, via, v, ok))
					cmu.Unlock()
				}
			}
		})
	}
	vwg.Wait()
	for k, b := range bad {
		if k == 20 {
			t.Errorf("... and %d more", len(bad)-20)
			break
		}
		t.Error(b)
	}
	t.Logf("checked %d acknowledged and %d refused writes", len(acked), len(refused))
}

// 4a. Local validation in the Client: nothing is sent, and the sentinel is
// the one a member would return.
func TestClientLocalValidation(t *testing.T) {
	mesh := rafttest.NewMesh(t, 1)
	cl, err := NewClient(mesh.Node(0), "/raft/client-local", nil)
	if err != nil {
		t.Fatal(err)
	}
	// No member exists: a call that passes validation would fail with
	// ErrNoMembers, so these errors come from the local checks.
	target := mesh.ID(0)
	long := strings.Repeat("k", MaxKeySize+1)
	checks := []struct {
		name string
		err  error
		want error
	}{
		{"Set empty key", cl.Set("", []byte("v"), time.Second), ErrInvalidKey},
		{"Get empty key", thirdErr(cl.Get("", 0)), ErrInvalidKey},
		{"Delete empty key", cl.Delete("", time.Second), ErrInvalidKey},
		{"Set long key", cl.Set(long, nil, time.Second), ErrTooLarge},
		{"Get long key", thirdErr(cl.Get(long, 0)), ErrTooLarge},
		{"Delete long key", cl.Delete(long, time.Second), ErrTooLarge},
		{"Set large value", cl.Set("k", make([]byte, MaxValueSize+1), time.Second), ErrTooLarge},
		{"Get negative barrier", thirdErr(cl.Get("k", -1)), ErrInvalidBarrier},
		{"Get barrier over max", thirdErr(cl.Get("k", int64(MaxBarrier)+1)), ErrInvalidBarrier},
		{"Set zero timeout", cl.Set("k", nil, 0), ErrInvalidTimeout},
		{"Delete long timeout", cl.Delete("k", MaxTimeout+1), ErrInvalidTimeout},
		{"JoinVoter zero timeout", cl.JoinVoter(target, 0), ErrInvalidTimeout},
		{"JoinVoter bad ID", cl.JoinVoter("", time.Second), ErrInvalidCommand},
		{"Set, no member anywhere", cl.Set("k", nil, time.Second), ErrNoMembers},
	}
	for _, c := range checks {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	// A closed Client refuses everything with ErrShutdown.
	if err := cl.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed := []error{
		cl.Set("k", nil, time.Second, target), thirdErr(cl.Get("k", 0, target)), cl.Delete("k", time.Second, target),
		secondErr(cl.Keys("", target)), cl.JoinVoter(target, time.Second, target), secondErr(cl.ExchangePeers(nil, target)),
		cl.Set("k", nil, time.Second),
	}
	for i, err := range closed {
		if !errors.Is(err, ErrShutdown) {
			t.Errorf("call %d on a closed Client: %v, want ErrShutdown", i, err)
		}
	}
	if err := cl.Close(); !errors.Is(err, ErrAlreadyClosed) {
		t.Errorf("second Close: %v, want ErrAlreadyClosed", err)
	}
}

// 4b. Member-side validation: raw requests that skip the Client's checks get
// the same sentinels back over the wire, from the leader and from followers
// (which must refuse before forwarding), and nothing is applied.
func TestClientErrorsAcrossWire(t *testing.T) {
	f := newCSFixture(t, "/raft/client-wire")
	if err := f.client.Set("base", []byte("line"), 5*time.Second, f.mesh.ID(0)); err != nil {
		t.Fatalf("baseline Set: %v", err)
	}
	before := f.state(0)
	l := f.tc.leader(10 * time.Second)
	tmo := int64(2 * time.Second)
	long := strings.Repeat("k", MaxKeySize+1)
	big := make([]byte, MaxValueSize+1)
	cases := []struct {
		name string
		req  request
		want error
	}{
		{"set empty key", request{Cmd: cmdSet, Value: []byte("v"), Timeout: tmo}, ErrInvalidKey},
		{"delete empty key", request{Cmd: cmdDelete, Timeout: tmo}, ErrInvalidKey},
		{"get empty key", request{Cmd: cmdGet}, ErrInvalidKey},
		{"get empty key with barrier", request{Cmd: cmdGet, Barrier: csBarrier}, ErrInvalidKey},
		{"set value over MaxValueSize", request{Cmd: cmdSet, Key: "big", Value: big, Timeout: tmo}, ErrTooLarge},
		{"set key over MaxKeySize", request{Cmd: cmdSet, Key: long, Timeout: tmo}, ErrTooLarge},
		{"delete key over MaxKeySize", request{Cmd: cmdDelete, Key: long, Timeout: tmo}, ErrTooLarge},
		{"get key over MaxKeySize", request{Cmd: cmdGet, Key: long}, ErrTooLarge},
		{"get barrier -1", request{Cmd: cmdGet, Key: "base", Barrier: -1}, ErrInvalidBarrier},
		{"get barrier over MaxBarrier", request{Cmd: cmdGet, Key: "base", Barrier: int64(MaxBarrier) + 1}, ErrInvalidBarrier},
		{"set no timeout", request{Cmd: cmdSet, Key: "t0", Value: []byte("v")}, ErrInvalidTimeout},
		{"set negative timeout", request{Cmd: cmdSet, Key: "t0", Timeout: -1}, ErrInvalidTimeout},
		{"delete timeout over MaxTimeout", request{Cmd: cmdDelete, Key: "base", Timeout: int64(MaxTimeout) + 1}, ErrInvalidTimeout},
		{"joinVoter no timeout", request{Cmd: cmdJoinVoter, Peer: []byte(f.mesh.ID(0))}, ErrInvalidTimeout},
		{"readIndex no timeout", request{Cmd: cmdReadIndex}, ErrInvalidTimeout},
		{"joinVoter garbage peer", request{Cmd: cmdJoinVoter, Peer: []byte("not a peer id"), Timeout: tmo}, ErrInvalidCommand},
		{"unknown command", request{Cmd: "compact"}, ErrInvalidCommand},
		{"no command", request{Key: "base"}, ErrInvalidCommand},
	}
	for i := range 3 {
		for _, c := range cases {
			req := c.req
			_, err := f.raw(i, &req)
			if !errors.Is(err, c.want) {
				t.Errorf("%s to member %d (%s): %v, want %v", c.name, i, f.role(i), err, c.want)
			}
			var re *remoteError
			if err != nil && !errors.As(err, &re) {
				t.Errorf("%s to member %d: %T is not a remote error", c.name, i, err)
			}
		}
	}

	// A follower refuses a forwarded write with ErrNotLeader, the sentinel
	// its own Set returns.
	for i := range 3 {
		if i == l {
			continue
		}
		_, err := f.raw(i, &request{Cmd: cmdSet, Key: "fwd", Value: []byte("v"), Timeout: tmo, Forwarded: true})
		if !errors.Is(err, ErrNotLeader) {
			t.Errorf("forwarded set to follower %d: %v, want ErrNotLeader", i, err)
		}
		if err := f.tc.get(i).Set("fwd", []byte("v"), time.Second); !errors.Is(err, ErrNotLeader) {
			t.Errorf("local Set on follower %d: %v, want ErrNotLeader", i, err)
		}
	}
	// Local calls on the leader return the same sentinels as the wire did.
	lc := f.tc.get(l)
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"Set empty key", lc.Set("", nil, time.Second), ErrInvalidKey},
		{"Set large value", lc.Set("k", big, time.Second), ErrTooLarge},
		{"Delete long key", lc.Delete(long, time.Second), ErrTooLarge},
		{"Set zero timeout", lc.Set("k", nil, 0), ErrInvalidTimeout},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("local %s: %v, want %v", c.name, c.err, c.want)
		}
	}

	// Nothing was applied, and the cluster still works.
	for i := range 3 {
		if after := f.state(i); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("member %d state changed by refused requests: %v, was %v", i, after, before)
		}
	}
	if err := f.client.Set("after", []byte("ok"), 5*time.Second, f.mesh.ID((l+1)%3)); err != nil {
		t.Fatalf("Set after refused requests: %v", err)
	}
}

// 4c. ErrNoLeader and ErrShutdown from a member, across the wire. Two members
// are cut from each other, so neither has a leader: a write through either
// waits for one and gives up with ErrNoLeader. A write waiting in a member
// whose cluster is then closed (its node stays up) is answered ErrShutdown.
// A client closed while its call waits returns ErrShutdown.
func TestClientNoLeaderAndShutdownAcrossWire(t *testing.T) {
	const ns = "/raft/client-noleader"
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	tc.form(15*time.Second, 0, 1)
	l := tc.leader(10 * time.Second)
	fl := 1 - l
	cl, err := NewClient(mesh.Node(2), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Set("before", []byte("cut"), 5*time.Second, mesh.ID(fl)); err != nil {
		t.Fatalf("Set before the cut: %v", err)
	}

	mesh.Cut(l, fl)
	for _, i := range []int{fl, l} {
		tc.waitFor(10*time.Second, fmt.Sprintf("member %d to lose its leader", i), func() bool {
			_, err := tc.get(i).Leader()
			return errors.Is(err, ErrNoLeader)
		})
	}
	for _, i := range []int{fl, l} {
		start := time.Now()
		err := cl.Set("nl", []byte("x"), time.Second, mesh.ID(i))
		if !errors.Is(err, ErrNoLeader) {
			t.Errorf("Set through leaderless member %d: %v, want ErrNoLeader", i, err)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("Set through leaderless member %d took %v with a 1s timeout", i, d)
		}
		// The local call agrees on "certainly not applied".
		if err := tc.get(i).Set("nl", []byte("x"), time.Second); !IsNotApplied(err) {
			t.Errorf("local Set on leaderless member %d: %v", i, err)
		}
		// A barrier read has the same fate.
		if _, _, err := cl.Get("before", int64(time.Second), mesh.ID(i)); !errors.Is(err, ErrNoLeader) {
			t.Errorf("barrier Get through leaderless member %d: %v, want ErrNoLeader", i, err)
		}
	}

	// Remote ErrShutdown: a write is waiting for a leader inside member fl
	// when fl's cluster is closed.
	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		err := cl.Set("sd", []byte("x"), 20*time.Second, mesh.ID(fl))
		done <- result{err, time.Now()}
	}()
	rafttest.WaitFor(t, 5*time.Second, "the request to reach member "+fmt.Sprint(fl), func() bool {
		return requestsServed(tc.get(fl), mesh.ID(2)) > 0
	})
	closedAt := time.Now()
	tc.stop(fl)
	select {
	case r := <-done:
		if !errors.Is(r.err, ErrShutdown) {
			t.Errorf("write waiting in a member that closed: %v, want ErrShutdown", r.err)
		}
		t.Logf("answered %v after Close began: %v", r.at.Sub(closedAt), r.err)
	case <-time.After(10 * time.Second):
		t.Fatalf("write waiting in a closed member did not return")
	}
	// The node is still up, but no longer serves the namespace: a new call
	// fails (it is not ErrShutdown: the member simply does not speak the
	// protocol any more), and nothing was sent.
	err = cl.Set("sd2", []byte("x"), time.Second, mesh.ID(fl))
	if err == nil {
		t.Errorf("Set through a closed member succeeded")
	}
	t.Logf("Set through a closed member whose node is up: %v (not sent: %v)", err, errors.Is(err, errNotSent))

	// Local ErrShutdown: the client is closed while its call waits in the
	// leaderless member l.
	go func() {
		err := cl.Set("cc", []byte("x"), 20*time.Second, mesh.ID(l))
		done <- result{err, time.Now()}
	}()
	rafttest.WaitFor(t, 5*time.Second, "the request to reach member "+fmt.Sprint(l), func() bool {
		return requestsServed(tc.get(l), mesh.ID(2)) > 0
	})
	closedAt = time.Now()
	if err := cl.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case r := <-done:
		if !errors.Is(r.err, ErrShutdown) {
			t.Errorf("call in flight when the Client closed: %v, want ErrShutdown", r.err)
		}
		if d := r.at.Sub(closedAt); d > 2*time.Second {
			t.Errorf("call in flight returned %v after Close", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("call in flight did not return after the Client closed")
	}
}

// requestsServed counts the requests of peer from that member c is
// serving, on streams of their own or on sessions.
func requestsServed(c Cluster, from peer.ID) int {
	return c.(*cluster).svc.inFlightFrom(from)
}

// 4d. Every sentinel survives the wire. A stub member answers each request
// with the error named by its key; the Client returns an error that matches
// that sentinel, and only it, and keeps the member's message.
func TestClientWireErrorMapping(t *testing.T) {
	const ns = "/raft/client-stub"
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	stub := mesh.Node(0).Peer()
	stub.SetStreamHandler(Protocol(ns), func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		frame, err := readFrame(s)
		if err != nil {
			_ = s.Reset()
			return
		}
		plain, err := codec{}.open(frame)
		if err != nil {
			_ = s.Reset()
			return
		}
		req, err := decodeRequest(plain)
		if err != nil {
			_ = s.Reset()
			return
		}
		var resp *response
		var n int
		switch {
		case req.Key == "other":
			resp = errorResponse(errors.New("stub: plain failure"))
		case req.Key == "future":
			resp = &response{Code: 999, Message: "stub: a code from a newer version"}
		case strings.HasPrefix(req.Key, "bare/"):
			fmt.Sscanf(req.Key, "bare/%d", &n)
			resp = &response{Code: errorCode(wireErrors[n])}
		default:
			fmt.Sscanf(req.Key, "code/%d", &n)
			resp = errorResponse(fmt.Errorf("%w: stub detail %d", wireErrors[n], n))
		}
		body, _ := codec{}.encode(resp)
		_ = writeFrame(s, body)
	})
	defer stub.RemoveStreamHandler(Protocol(ns))
	cl, err := NewClient(mesh.Node(1), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	target := mesh.ID(0)
	for n, sentinel := range wireErrors {
		for _, write := range []bool{false, true} {
			var err error
			if write {
				err = cl.Set(fmt.Sprintf("code/%d", n), nil, time.Second, target)
			} else {
				_, _, err = cl.Get(fmt.Sprintf("code/%d", n), 0, target)
			}
			if !errors.Is(err, sentinel) {
				t.Errorf("code of %v (write %v): got %v", sentinel, write, err)
				continue
			}
			for _, other := range wireErrors {
				if other != sentinel && errors.Is(err, other) {
					t.Errorf("error for %v also matches %v", sentinel, other)
				}
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("stub detail %d", n)) {
				t.Errorf("error for %v lost the member's message: %q", sentinel, err)
			}
		}
		// A code without a message still reads as its sentinel.
		_, _, err := cl.Get(fmt.Sprintf("bare/%d", n), 0, target)
		if !errors.Is(err, sentinel) || err.Error() == "" {
			t.Errorf("bare code of %v: %v", sentinel, err)
		}
	}
	for _, key := range []string{"other", "future"} {
		_, _, err := cl.Get(key, 0, target)
		if err == nil {
			t.Fatalf("%s: no error", key)
		}
		for _, s := range wireErrors {
			if errors.Is(err, s) {
				t.Errorf("%s error %q matches %v", key, err, s)
			}
		}
		if !strings.Contains(err.Error(), "stub: ") {
			t.Errorf("%s error lost the message: %q", key, err)
		}
	}
}

// 4e. A reply over MaxMessageSize (a Keys listing of many long keys) fails
// with ErrTooLarge, as every limit does, rather than as a broken stream.
func TestClientKeysReplyTooLarge(t *testing.T) {
	const ns = "/raft/client-bigkeys"
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	c := tc.mustStart(0, WithForceBootstrap())
	tc.leader(10 * time.Second)
	// 4400 keys of 1 KiB: about 4.5 MB of key names, over MaxMessageSize.
	const perBatch, batches = 1100, 4
	pad := strings.Repeat("p", MaxKeySize-len("big/0000/"))
	for b := range batches {
		ops := make([]Op, 0, perBatch)
		for i := range perBatch {
			ops = append(ops, SetOp(fmt.Sprintf("big/%04d/%s", b*perBatch+i, pad), nil))
		}
		if resp, err := c.Apply(mustCommand(t, ops...), 10*time.Second); err != nil || resp.Error != nil {
			t.Fatalf("apply batch %d: %v %v", b, err, resp.Error)
		}
	}
	if n := len(c.Keys("big/")); n != perBatch*batches {
		t.Fatalf("member holds %d keys", n)
	}
	cl, err := NewClient(mesh.Node(1), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// A small listing still works.
	if keys, err := cl.Keys("big/0001/", mesh.ID(0)); err != nil || len(keys) != 1 {
		t.Fatalf("small Keys = %d keys, %v", len(keys), err)
	}
	keys, err := cl.Keys("big/", mesh.ID(0))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Keys over MaxMessageSize: %d keys, %v; want ErrTooLarge", len(keys), err)
	}
	// The member keeps serving.
	if err := cl.Set("after", []byte("ok"), 5*time.Second, mesh.ID(0)); err != nil {
		t.Fatalf("Set after the large reply: %v", err)
	}
}

// A member whose cluster closed while its node stays up refuses the stream
// at protocol negotiation, so it never saw the request. The Client must take
// that as "not sent" and go on to its next target, even for a write. While
// the client's peerstore still lists the protocol for that member (as it
// does until the member's identify push arrives), libp2p negotiates lazily
// and the refusal only shows when the answer is read.
func TestClientSkipsMemberWithoutService(t *testing.T) {
	f := newCSFixture(t, "/raft/client-skip")
	l := f.tc.leader(10 * time.Second)
	gone, live := (l+1)%3, (l+2)%3
	f.tc.stop(gone)
	f.tc.waitVoters(10*time.Second, 0, 1, 2) // still configured: only its service is gone
	h := f.mesh.Node(f.cn).Peer()
	proto := Protocol(f.ns)

	// Peerstore up to date: negotiation fails when the stream opens.
	rafttest.WaitFor(t, 5*time.Second, "the client's peerstore to drop the protocol", func() bool {
		_ = h.Peerstore().RemoveProtocols(f.mesh.ID(gone), proto)
		ps, _ := h.Peerstore().SupportsProtocols(f.mesh.ID(gone), proto)
		return len(ps) == 0
	})
	if err := f.client.Set("skip/fresh", []byte("v"), 5*time.Second, f.mesh.ID(gone), f.mesh.ID(live)); err != nil {
		t.Fatalf("Set with a closed member first (fresh peerstore): %v", err)
	}

	// Peerstore stale: the stream opens lazily and is refused on read.
	for n := range 3 {
		if err := h.Peerstore().AddProtocols(f.mesh.ID(gone), proto); err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("skip/stale/%d", n)
		if err := f.client.Set(key, []byte("v"), 5*time.Second, f.mesh.ID(gone), f.mesh.ID(live)); err != nil {
			t.Fatalf("Set with a closed member first (stale peerstore): %v; the member never saw the request, so the next target should have been tried", err)
		}
		if v, ok, err := f.client.Get(key, csBarrier, f.mesh.ID(live)); err != nil || !ok || string(v) != "v" {
			t.Fatalf("Get %s = %q, %v, %v", key, v, ok, err)
		}
	}
}
