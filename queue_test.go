package raft

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// queueCluster starts three members on nodes 0-2 of a mesh of n nodes.
func queueCluster(t *testing.T, ns string, n int, opts ...rafttest.MeshOption) (*rafttest.Mesh, *testCluster) {
	t.Helper()
	mesh := rafttest.NewMesh(t, n, append([]rafttest.MeshOption{rafttest.Connected()}, opts...)...)
	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach([]int{0, 1, 2}, func(i int) []Option { return forceFirst(i) }); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(15*time.Second, 0, 1, 2)
	return mesh, tc
}

func mustClient(t *testing.T, mesh *rafttest.Mesh, i int, ns string) *Client {
	t.Helper()
	cl, err := NewClient(mesh.Node(i), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// A claim that lapses makes its item claimable again, before later items,
// with a larger token; the lapsed claim's Ack is refused (ErrLeaseNotFound,
// through a Client and on a member), the current claim's is not, and an
// Ack leaves no lease behind.
func TestQueueAckFencingAndRedelivery(t *testing.T) {
	const ns, q, ttl = "/raft/queue-fence", "jobs", time.Second
	mesh, tc := queueCluster(t, ns, 4)
	cl := mustClient(t, mesh, 3, ns)
	l := tc.leader(10 * time.Second)
	f := tc.get(tc.follower(l, 0))

	id1, err := cl.Enqueue(q, []byte("one"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := f.Enqueue(q, []byte("two"), 5*time.Second)
	if err != nil || id2 <= id1 {
		t.Fatalf("second Enqueue: %d %v (first %d)", id2, err, id1)
	}
	ctx, cancel := ctxTimeout(30 * time.Second)
	defer cancel()
	first, err := cl.Claim(ctx, q, ttl)
	if err != nil || first.ID != id1 || string(first.Value) != "one" || first.Token <= id2 {
		t.Fatalf("Client.Claim: %+v %v", first, err)
	}
	// Item 1 is claimed: the next Claim takes item 2.
	second, err := f.Claim(ctx, q, 10*time.Second)
	if err != nil || second.ID != id2 || string(second.Value) != "two" || second.Token <= first.Token {
		t.Fatalf("Claim of item 2: %+v %v", second, err)
	}
	// Nothing is claimable until item 1's claim lapses; then it comes back.
	start := time.Now()
	again, err := f.Claim(ctx, q, ttl)
	if err != nil || again.ID != id1 || again.Token <= second.Token {
		t.Fatalf("Claim after the lapse: %+v %v (first token %d)", again, err, first.Token)
	}
	if waited := time.Since(start); waited < ttl/2 {
		t.Fatalf("item claimed again %v into a %v claim", waited, ttl)
	}
	if err := cl.Ack(q, first, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Client.Ack of the lapsed claim: %v", err)
	}
	if err := tc.get(l).Ack(q, first, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("Ack of the lapsed claim on the leader: %v", err)
	}
	if err := f.Ack(q, again, 5*time.Second); err != nil {
		t.Fatalf("Ack of the current claim: %v", err)
	}
	if err := cl.Ack(q, again, 5*time.Second); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("second Ack: %v", err)
	}
	// An Ack from a member that did not claim it reads the claim's lease.
	if err := tc.get(l).Ack(q, second, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	tc.waitFor(10*time.Second, "no lease left on any member", func() bool {
		return leaseCount(tc, 0)+leaseCount(tc, 1)+leaseCount(tc, 2) == 0
	})
	if keys := tc.get(l).Keys(queueWatchPrefix(q)); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// Claim waits for an item, on a member and through a Client, without
// polling; it ends with ctx, leaving no lease. Bad input fails at once with
// the sentinel, through the wire too.
func TestQueueClaimWaits(t *testing.T) {
	const ns, q = "/raft/queue-wait", "work"
	mesh, tc := queueCluster(t, ns, 4)
	cl := mustClient(t, mesh, 3, ns)
	l := tc.leader(10 * time.Second)
	m := tc.get(tc.follower(l, 0))

	ctx, cancel := ctxTimeout(30 * time.Second)
	defer cancel()
	type got struct {
		item Item
		err  error
	}
	results := make(chan got, 2)
	writes := atomic.Int64{} // the Client's writes: its lease, its claims
	cl.caller.afterWrite = func(id peer.ID, req *request) {
		if req.Cmd == cmdTxn {
			writes.Add(1)
		}
	}
	go func() { it, err := cl.Claim(ctx, q, 5*time.Second); results <- got{it, err} }()
	go func() { it, err := m.Claim(ctx, q, 5*time.Second); results <- got{it, err} }()
	tc.waitFor(10*time.Second, "the Client's Claim to find the queue empty", func() bool { return writes.Load() >= 2 })
	// Waiting: nothing returns, and the Client does not poll.
	select {
	case r := <-results:
		t.Fatalf("Claim returned on an empty queue: %+v %v", r.item, r.err)
	case <-time.After(500 * time.Millisecond):
	}
	if n := writes.Load(); n > 2 {
		t.Fatalf("the waiting Client wrote %d times (a lease and a claim expected)", n)
	}
	var ids []uint64
	for _, v := range []string{"a", "b"} {
		id, err := tc.get(l).Enqueue(q, []byte(v), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var claimed []uint64
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("waiting Claim: %v", r.err)
		}
		claimed = append(claimed, r.item.ID)
	}
	slices.Sort(claimed)
	if !slices.Equal(claimed, ids) {
		t.Fatalf("claimed %v, enqueued %v", claimed, ids)
	}

	// ctx ends the wait.
	for _, c := range []func(context.Context) (Item, error){
		func(ctx context.Context) (Item, error) { return cl.Claim(ctx, q, 5*time.Second) },
		func(ctx context.Context) (Item, error) { return m.Claim(ctx, q, 5*time.Second) },
	} {
		cctx, ccancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, ccancel)
		start := time.Now()
		if _, err := c(cctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Claim: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("cancelled Claim returned after %v", d)
		}
		dctx, dcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		if _, err := c(dctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Claim past its deadline: %v", err)
		}
		dcancel()
	}

	// Bad input.
	if _, err := cl.Enqueue("", []byte("x"), time.Second); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("empty queue name: %v", err)
	}
	if _, err := cl.Enqueue(q, make([]byte, MaxValueSize+1), time.Second); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("item over MaxValueSize: %v", err)
	}
	if _, err := m.Claim(ctx, q, MinLeaseTTL/2); !errors.Is(err, ErrInvalidTimeout) {
		t.Fatalf("ttl under MinLeaseTTL: %v", err)
	}
	if err := cl.Ack(q, Item{ID: 1}, time.Second); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("Ack without token: %v", err)
	}
	// A request the Client's checks would stop, sent as is: the member
	// refuses it with the same sentinel.
	resp, err := cl.call(&request{Cmd: cmdClaimOf, Key: "a\x00b", Lease: 1}, 5*time.Second, true, []peer.ID{mesh.ID(l)})
	if !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("claim lookup with a bad name: %+v %v", resp, err)
	}
	bad := encodeOps([]cmdOp{{kind: opClaim, key: []byte(queueClaimsPrefix(q)), value: indexBytes(1)}})
	if _, err := cl.write(&request{Cmd: cmdTxn, Command: bad, Timeout: int64(time.Second)}, time.Second, nil); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("a claim of a key that is no queue's: %v", err)
	}
}

// The must-show run: 3 producers (two Clients, one through whichever member
// is up) and 3 consumers (two Clients, each preferring another member, and
// one through the members), 2,000 items, consumers that die holding an
// item, and the leader killed twice. Every item is acked exactly once,
// none is lost, and each producer's items are first delivered (first
// claimed: the claim's token orders claims as the log did) in the order it
// enqueued them.
func TestQueueWorkersUnderFailures(t *testing.T) {
	t.Parallel() // long and timing-free: it runs beside the other such tests
	const (
		ns       = "/raft/queue-run"
		q        = "orders"
		items    = 2000
		ttl      = 2 * time.Second
		dieEvery = 150 // a consumer dies holding about one claim in this many
	)
	// On pebble, as in production: the claims' ordered reads are range
	// reads there (the in-memory test store answers any read by copying
	// every record it holds).
	givenUpBefore := claimsGivenUp.Load()
	mesh, tc := queueCluster(t, ns, 6, rafttest.WithPebble())
	members := []int{0, 1, 2}
	anyMember := func(n int) Cluster {
		for k := range 3 {
			if c := tc.get(members[(n+k)%3]); c != nil {
				return c
			}
		}
		return nil
	}

	var (
		mu        sync.Mutex
		acks      = map[uint64]int{}    // item ID: Acks that succeeded
		unknown   = map[uint64]int{}    // item ID: Acks whose outcome is unknown
		firstTok  = map[uint64]uint64{} // item ID: token of its first observed claim
		producer  = map[uint64]int{}    // item ID: its producer, from its value
		enqueued  [3][]uint64           // per producer, IDs in enqueue order
		deaths    atomic.Int64
		progress  atomic.Int64 // items acked
		errs      []string
		failf     = func(format string, a ...any) { mu.Lock(); errs = append(errs, fmt.Sprintf(format, a...)); mu.Unlock() }
		abandoned atomic.Int64
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Producers: item values say who made them, and their number.
	var pwg sync.WaitGroup
	producerClients := []*Client{mustClient(t, mesh, 3, ns), mustClient(t, mesh, 4, ns)}
	for p := range 3 {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for n := p; n < items; n += 3 {
				value := []byte(fmt.Sprintf("p%d-%d", p, n))
				for {
					var id uint64
					var err error
					if p < 2 {
						id, err = producerClients[p].Enqueue(q, value, 10*time.Second)
					} else if c := anyMember(n); c != nil {
						id, err = c.Enqueue(q, value, 5*time.Second)
					} else {
						err = ErrNoLeader
					}
					if err == nil {
						mu.Lock()
						enqueued[p] = append(enqueued[p], id)
						mu.Unlock()
						break
					}
					if ctx.Err() != nil {
						failf("producer %d: %v", p, err)
						return
					}
					if !IsNotApplied(err) {
						// The item may exist: a second one with this value
						// may follow. Both must be delivered and acked.
						t.Logf("producer %d: enqueue of %s: outcome unknown (%v)", p, value, err)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}

	// Consumers.
	type backend struct {
		claim func(context.Context) (Item, error)
		ack   func(Item) error
		close func()
	}
	newConsumer := func(k int) backend {
		if k == 2 {
			var n atomic.Int64
			return backend{
				claim: func(ctx context.Context) (Item, error) {
					c := anyMember(int(n.Add(1)))
					if c == nil {
						return Item{}, ErrNoLeader
					}
					return c.Claim(ctx, q, ttl)
				},
				ack: func(it Item) error {
					c := anyMember(int(n.Add(1)))
					if c == nil {
						return ErrNoLeader
					}
					return c.Ack(q, it, 5*time.Second)
				},
				close: func() {},
			}
		}
		cl, err := NewClient(mesh.Node(3+k), ns, nil)
		if err != nil {
			panic(err)
		}
		prefer := []peer.ID{mesh.ID(members[k]), mesh.ID(members[(k+1)%3]), mesh.ID(members[(k+2)%3])}
		return backend{
			claim: func(ctx context.Context) (Item, error) { return cl.Claim(ctx, q, ttl, prefer...) },
			ack:   func(it Item) error { return cl.Ack(q, it, 10*time.Second, prefer...) },
			close: func() { _ = cl.Close() },
		}
	}
	done := make(chan struct{})
	var phases [3]atomic.Value // what each consumer is doing, for a failure's dump
	var cwg sync.WaitGroup
	for k := range 3 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			rng := rand.New(rand.NewSource(int64(k) + time.Now().UnixNano()))
			b := newConsumer(k)
			defer func() { b.close() }()
			for {
				cctx, ccancel := context.WithCancel(ctx)
				go func() {
					select {
					case <-done:
					case <-cctx.Done():
					}
					ccancel()
				}()
				phases[k].Store("claiming")
				it, err := b.claim(cctx)
				ccancel()
				phases[k].Store(fmt.Sprintf("claimed %d (%v)", it.ID, err))
				if err != nil {
					select {
					case <-done:
						return
					default:
					}
					if ctx.Err() != nil {
						failf("consumer %d: %v", k, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
					continue
				}
				p, perr := strconv.Atoi(strings.TrimPrefix(strings.Split(string(it.Value), "-")[0], "p"))
				mu.Lock()
				if perr != nil || p < 0 || p > 2 {
					errs = append(errs, fmt.Sprintf("item %d has value %q", it.ID, it.Value))
				}
				producer[it.ID] = p
				if tok, ok := firstTok[it.ID]; !ok || it.Token < tok {
					firstTok[it.ID] = it.Token
				}
				mu.Unlock()
				if rng.Intn(dieEvery) == 0 {
					// Dies holding the item: never acks; its claim lapses.
					deaths.Add(1)
					abandoned.Add(1)
					b.close()
					b = newConsumer(k)
					continue
				}
				for {
					err := b.ack(it)
					phases[k].Store(fmt.Sprintf("acked %d: %v", it.ID, err))
					mu.Lock()
					switch {
					case err == nil:
						acks[it.ID]++
						progress.Add(1)
					case errors.Is(err, ErrLeaseNotFound):
						// The claim lapsed before the Ack: someone else has
						// the item now.
					case IsNotApplied(err):
						mu.Unlock()
						time.Sleep(20 * time.Millisecond)
						continue
					default:
						unknown[it.ID]++
					}
					mu.Unlock()
					break
				}
			}
		}()
	}

	// Progress, for the log.
	go func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				mu.Lock()
				n := len(enqueued[0]) + len(enqueued[1]) + len(enqueued[2])
				mu.Unlock()
				t.Logf("progress: %d enqueued, %d acked", n, progress.Load())
			}
		}
	}()

	// The leader is killed twice: cut off, closed, its node stopped; later
	// restarted.
	killLeader := func(at int64) {
		tc.waitFor(90*time.Second, fmt.Sprintf("%d items acked", at), func() bool { return progress.Load() >= at })
		l := tc.leaderAmong(20*time.Second, members...)
		t.Logf("%d acked: killing the leader, node %d", progress.Load(), l)
		mesh.Isolate(l)
		tc.stop(l)
		mesh.Stop(l)
		resume := progress.Load() + 100
		tc.waitFor(60*time.Second, "progress without the old leader", func() bool { return progress.Load() >= resume })
		mesh.Restart(l)
		mesh.Rejoin(l)
		tc.mustStart(l)
	}
	killLeader(items / 4)
	killLeader(items * 5 / 8)
	pwg.Wait()

	// Every item acked: the queue drains.
	drainBy := time.Now().Add(150 * time.Second)
	tc.waitFor(155*time.Second, "the queue to drain", func() bool {
		if time.Now().After(drainBy) {
			dumpQueue(t, tc, q, phases[:])
			drainBy = time.Now().Add(time.Hour)
		}
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for p := range 3 {
			n += len(enqueued[p])
		}
		for p := range 3 {
			for _, id := range enqueued[p] {
				if acks[id]+unknown[id] == 0 {
					return false
				}
			}
		}
		if n < items {
			return false
		}
		// An enqueue whose outcome was unknown may have left a second item
		// that no producer recorded; a consumer that died holding it left
		// it claimed until its claim lapses. The queue is drained when a
		// leader holds no key of it.
		for _, i := range members {
			if c := tc.get(i); c != nil && c.IsLeader() {
				return len(c.Keys(queueWatchPrefix(q))) == 0
			}
		}
		return false
	})
	close(done)
	cwg.Wait()
	l := tc.leader(10 * time.Second)
	if err := tc.get(l).Barrier(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if keys := tc.get(l).Keys(queueWatchPrefix(q)); len(keys) != 0 {
		t.Fatalf("%d queue keys left after every item was acked, e.g. %q", len(keys), keys[0])
	}

	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("%d failures, first: %s", len(errs), errs[0])
	}
	// Exactly once: no item acked twice; an item without a successful Ack
	// is one whose Ack outcome was unknown (and it is gone: applied).
	total := 0
	for id, n := range acks {
		if n != 1 {
			t.Errorf("item %d acked %d times", id, n)
		}
	}
	for p := range 3 {
		total += len(enqueued[p])
		for _, id := range enqueued[p] {
			if acks[id] == 0 && unknown[id] == 0 {
				t.Errorf("item %d of producer %d never acked", id, p)
			}
		}
	}
	for id := range firstTok {
		if acks[id] == 0 && unknown[id] == 0 {
			t.Errorf("delivered item %d (producer %d) never acked", id, producer[id])
		}
	}
	// Each producer's items, in ID (enqueue) order, were first claimed in
	// that order, but for the documented exception: a claim whose outcome
	// was unknown and that its Claim gave up may still apply late and hold
	// its item, unseen, until its lease is revoked or runs out; meanwhile
	// later items are delivered. Each such claim can put one item out of
	// order, no more.
	outOfOrder := 0
	for p := range 3 {
		var ids []uint64
		for id, pp := range producer {
			if pp == p {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		for i := 1; i < len(ids); i++ {
			if firstTok[ids[i]] <= firstTok[ids[i-1]] {
				outOfOrder++
				t.Logf("producer %d: item %d first claimed at %d, before item %d (at %d)",
					p, ids[i], firstTok[ids[i]], ids[i-1], firstTok[ids[i-1]])
			}
		}
	}
	if givenUp := claimsGivenUp.Load() - givenUpBefore; int64(outOfOrder) > givenUp {
		t.Fatalf("%d items first delivered out of order, and only %d claims of unknown outcome were given up", outOfOrder, givenUp)
	} else {
		t.Logf("%d items first delivered out of order; %d claims of unknown outcome given up", outOfOrder, givenUp)
	}
	unknownN := 0
	for _, n := range unknown {
		unknownN += n
	}
	t.Logf("%d items from %d enqueues, %d consumer deaths, %d Acks with an unknown outcome", len(firstTok), total, deaths.Load(), unknownN)
	if deaths.Load() == 0 {
		t.Log("no consumer died this run (random)")
	}
}

// dumpQueue logs a queue's claims and items on a member, and what each
// consumer is doing, for a test that failed to drain it.
func dumpQueue(t *testing.T, tc *testCluster, q string, phases []atomic.Value) {
	for k := range phases {
		t.Logf("consumer %d: %v", k, phases[k].Load())
	}
	l := tc.leader(10 * time.Second)
	c := tc.get(l).(*cluster)
	keys := c.Keys(queueWatchPrefix(q))
	t.Logf("%d keys of queue %q on the leader (node %d); %d leases", len(keys), q, l, len(c.fsm.leaseList()))
	for i, k := range keys {
		if i == 10 {
			break
		}
		e, _, _ := c.GetEntry(k)
		t.Logf("  %q: create %d mod %d lease %d", k[len(queueKeyPrefix):], e.CreateIndex, e.ModIndex, e.Lease)
	}
	for _, l := range c.fsm.leaseList() {
		keys, _ := c.fsm.leaseKeys(l.id)
		t.Logf("  lease %d ttl %v touch %d keys %d", l.id, l.ttl, l.touch, len(keys))
	}
	ctx, cancel := ctxTimeout(3 * time.Second)
	defer cancel()
	it, err := c.Claim(ctx, q, 5*time.Second)
	t.Logf("a Claim on the leader now: item %d token %d: %v", it.ID, it.Token, err)
}

// ---- pure rules ----

func TestClaimPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{ErrNoLeader, false},
		{ErrNotLeader, false},
		{ErrTimeout, false},
		{ErrLeadershipLost, false},
		{ErrShutdown, false},
		{ErrNoMembers, false},
		{ErrLeaseNotFound, false},
		{ErrCompacted, false},
		{errors.New("stream reset"), false},
		{fmt.Errorf("x: %w", ErrInvalidKey), true},
		{ErrInvalidTimeout, true},
		{ErrInvalidCommand, true}, // a voter without the queue's kinds
		{ErrTooLarge, true},
		{ErrEncryptionRequired, true},
		{ErrDecrypt, true},
	} {
		if got := claimPermanent(tc.err); got != tc.want {
			t.Errorf("claimPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRelevantEvent(t *testing.T) {
	for _, tc := range []struct {
		e    Event
		want bool
	}{
		{Event{Kind: EventSet, Key: queueItemKey("q", 5)}, true},                 // a new item
		{Event{Kind: EventDelete, Key: queueClaimKey("q", 5)}, true},             // a claim gone
		{Event{Kind: EventSet, Key: queueClaimKey("q", 5)}, false},               // a claim made
		{Event{Kind: EventDelete, Key: queueItemKey("q", 5)}, false},             // an item acked
		{Event{Kind: EventSet, Key: queueItemKey("q2", 5)}, false},               // another queue
		{Event{Kind: EventSet, Key: queueItemsPrefix("q") + "short"}, false},     // not an item key
		{Event{Kind: EventSet, Key: queueItemsPrefix("q") + "123456789"}, false}, // nor this
	} {
		if got := relevantEvent("q", tc.e); got != tc.want {
			t.Errorf("relevantEvent(%q %v) = %v, want %v", tc.e.Key, tc.e.Kind, got, tc.want)
		}
	}
}

func TestNextPause(t *testing.T) {
	p := time.Duration(0)
	var seen []time.Duration
	for range 10 {
		p = nextPause(p)
		seen = append(seen, p)
	}
	if seen[0] != queueRetryMin || seen[len(seen)-1] != queueRetryMax || !slices.IsSorted(seen) {
		t.Fatalf("pauses %v", seen)
	}
}

// The memo is bounded, forgets what it hands out, and reuses only fresh
// leases of the same TTL.
func TestQueueMemo(t *testing.T) {
	var m queueMemo
	now := time.Now()
	for i := range maxRemembered + 10 {
		m.putClaim(claimRef{queue: "q", id: uint64(i + 1), token: uint64(i + 1)}, heldLease{id: LeaseID(i + 1)})
	}
	if len(m.claims) != maxRemembered || len(m.order) != maxRemembered {
		t.Fatalf("%d remembered, %d in order", len(m.claims), len(m.order))
	}
	if _, ok := m.takeClaim(claimRef{queue: "q", id: 1, token: 1}); ok {
		t.Fatal("the oldest claim was kept")
	}
	r := claimRef{queue: "q", id: maxRemembered + 10, token: maxRemembered + 10}
	if l, ok := m.takeClaim(r); !ok || l.id != maxRemembered+10 {
		t.Fatalf("takeClaim: %+v %v", l, ok)
	}
	if _, ok := m.takeClaim(r); ok {
		t.Fatal("takeClaim twice")
	}

	for _, tc := range []struct {
		name    string
		free    []heldLease
		ttl     time.Duration
		want    LeaseID
		restLen int
	}{
		{"empty", nil, time.Second, 0, 0},
		{"fresh, same ttl", []heldLease{{1, time.Second, now}}, time.Second, 1, 0},
		{"other ttl", []heldLease{{1, 2 * time.Second, now}}, time.Second, 0, 1},
		{"stale", []heldLease{{1, time.Second, now.Add(-600 * time.Millisecond)}}, time.Second, 0, 0},
		{"newest first", []heldLease{{1, time.Second, now.Add(-100 * time.Millisecond)}, {2, time.Second, now}}, time.Second, 2, 1},
		{"stale ones dropped", []heldLease{{1, time.Second, now.Add(-time.Second)}, {2, 3 * time.Second, now}}, time.Second, 0, 1},
	} {
		m := queueMemo{free: slices.Clone(tc.free)}
		l, ok := m.getFree(tc.ttl, now)
		if l.id != tc.want || ok != (tc.want != 0) || len(m.free) != tc.restLen {
			t.Errorf("%s: got %+v %v, %d left; want %d, %d left", tc.name, l, ok, len(m.free), tc.want, tc.restLen)
		}
	}
	var full queueMemo
	for i := range maxFreeLeases {
		if !full.putFree(heldLease{id: LeaseID(i + 1)}) {
			t.Fatalf("putFree refused lease %d", i+1)
		}
	}
	if full.putFree(heldLease{id: 99}) {
		t.Fatal("putFree past maxFreeLeases")
	}
}
