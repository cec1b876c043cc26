package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tauraft/raft/rafttest"
)

// cronAttempt is one slot claim a cron job tried.
type cronAttempt struct {
	member int
	epoch  uint64
	slot   int
	zombie bool // made after the job's ctx ended
	at     time.Time
	res    TxnResult
	err    error
}

// cronRun records what the cron jobs of TestCronLeaderFenced did.
type cronRun struct {
	mu       sync.Mutex
	attempts []cronAttempt
	starts   map[uint64]int       // epoch -> member whose job ran in it
	ended    map[uint64]time.Time // epoch -> when its job's ctx ended
}

func (r *cronRun) add(a cronAttempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, a)
}

// claimed counts the claims that succeeded.
func (r *cronRun) claimed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, a := range r.attempts {
		if a.err == nil && a.res.OK {
			n++
		}
	}
	return n
}

// epochs lists the epochs jobs ran in, ascending.
func (r *cronRun) epochs() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []uint64
	for e := range r.starts {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}

// Three members run a cron job with RunAsLeader; the job claims each
// schedule slot with Txn{If: IfEpoch(epoch), IfAbsent(slot)}. The leader
// is isolated mid-run (it believes it leads until its lease runs out) and
// its job, playing a process that notices the loss late, keeps claiming
// slots ahead of the schedule until after the heal. Over 200 slots: no
// slot is claimed twice, none is missed once the new leader runs the job,
// and every write of the deposed job that reached the log after the new
// epoch began was refused.
func TestCronLeaderFenced(t *testing.T) {
	const (
		slots = 200
		tick  = 25 * time.Millisecond // 200 slots: 5 s of schedule
	)
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/cron")
	tc.form(20*time.Second, 0, 1, 2)
	tc.leader(10 * time.Second)

	slotKey := func(s int) string { return fmt.Sprintf("cron/%03d", s) }
	run := &cronRun{starts: map[uint64]int{}, ended: map[uint64]time.Time{}}
	var isolated = -1 // set (under run.mu) before the leader is isolated
	zombieStop := make(chan struct{})
	begin := time.Now()
	due := func() int { return min(int(time.Since(begin)/tick)+1, slots) }

	job := func(member int, c Cluster) func(context.Context, uint64) error {
		return func(ctx context.Context, epoch uint64) error {
			run.mu.Lock()
			run.starts[epoch] = member
			run.mu.Unlock()
			claim := func(s int, zombie bool) error {
				key := slotKey(s)
				res, err := c.Txn(Txn{
					If:   []Cond{IfEpoch(epoch), IfAbsent(key)},
					Then: []Op{SetOp(key, fmt.Appendf(nil, "%d/%d", member, epoch))},
				}, 500*time.Millisecond)
				run.add(cronAttempt{member: member, epoch: epoch, slot: s, zombie: zombie, at: time.Now(), res: res, err: err})
				return err
			}
			next := 0
			for ctx.Err() == nil {
				for next < due() && ctx.Err() == nil {
					if _, ok := c.Get(slotKey(next)); ok {
						next++
						continue
					}
					if err := claim(next, false); err != nil {
						// Outcome unknown or leadership moving: try the
						// same slot again (IfAbsent makes that safe).
						time.Sleep(10 * time.Millisecond)
						continue
					}
					next++ // claimed, or refused: taken, or this epoch is over
				}
				select {
				case <-ctx.Done():
				case <-time.After(tick / 2):
				}
			}
			run.mu.Lock()
			run.ended[epoch] = time.Now()
			zombie := member == isolated
			run.mu.Unlock()
			// The deposed job goes on as a stuck process would, claiming
			// slots ahead of the schedule (not claimed by anyone yet, so
			// only its epoch can refuse them) until after the heal.
			for zombie {
				select {
				case <-zombieStop:
					return ctx.Err()
				case <-time.After(tick):
				}
				_ = claim(min(due()+3, slots-1), true)
			}
			return ctx.Err()
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan error, 3)
	for i := range 3 {
		c := tc.get(i)
		go func() { results <- c.RunAsLeader(ctx, job(i, c)) }()
	}
	tc.waitFor(15*time.Second, "50 slots claimed", func() bool { return run.claimed() >= 50 })

	// Isolate the leader whose job runs.
	run.mu.Lock()
	first := slices.Max(mapKeys(run.starts))
	isolated = run.starts[first]
	run.mu.Unlock()
	isolatedAt := time.Now()
	mesh.Isolate(isolated)
	t.Logf("isolated node %d (epoch %d) at slot %d", isolated, first, due())
	var second uint64
	tc.waitFor(15*time.Second, "a new leader's job", func() bool {
		es := run.epochs()
		second = es[len(es)-1]
		return second > first
	})
	run.mu.Lock()
	newLeader, lostAfter := run.starts[second], run.ended[first].Sub(isolatedAt)
	run.mu.Unlock()
	t.Logf("node %d runs the job in epoch %d, %v after the isolation; the isolated job's ctx ended %v after it", newLeader, second, time.Since(isolatedAt).Round(time.Millisecond), lostAfter.Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	mesh.Rejoin(isolated)
	time.Sleep(1500 * time.Millisecond) // the deposed job's writes now reach the new leader
	close(zombieStop)
	tc.waitFor(30*time.Second, "every slot claimed", func() bool {
		c := tc.get(newLeader)
		for s := range slots {
			if _, ok := c.Get(slotKey(s)); !ok {
				return false
			}
		}
		return true
	})
	cancel()
	for range 3 {
		select {
		case err := <-results:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("RunAsLeader returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("RunAsLeader did not return after its ctx ended")
		}
	}

	// Check the outcome on the new leader's replica (it holds every
	// claim, checked above).
	c := tc.get(newLeader)
	if err := c.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	epochs := run.epochs()
	nextEpoch := func(e uint64) uint64 { // the epoch after e, or none
		for _, x := range epochs {
			if x > e {
				return x
			}
		}
		return ^uint64(0)
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	okBySlot := map[int][]cronAttempt{}
	for _, a := range run.attempts {
		if a.err == nil && a.res.OK {
			okBySlot[a.slot] = append(okBySlot[a.slot], a)
		}
	}
	finalIndex := map[int]uint64{}
	for s := range slots {
		if n := len(okBySlot[s]); n > 1 {
			t.Errorf("slot %d claimed %d times: %+v", s, n, okBySlot[s])
		}
		e, ok, err := c.GetEntry(slotKey(s))
		if err != nil || !ok {
			t.Errorf("slot %d missed: %v", s, err)
			continue
		}
		finalIndex[s] = e.ModIndex
		var member int
		var epoch uint64
		if _, err := fmt.Sscanf(string(e.Value), "%d/%d", &member, &epoch); err != nil {
			t.Errorf("slot %d holds %q", s, e.Value)
			continue
		}
		// Every claim landed inside its own epoch: before the next
		// leadership's marker.
		if e.ModIndex <= epoch || e.ModIndex >= nextEpoch(epoch) {
			t.Errorf("slot %d claimed in epoch %d at index %d, outside it (next epoch %d)", s, epoch, e.ModIndex, nextEpoch(epoch))
		}
	}
	// Every write of the deposed job that reached the log after the new
	// epoch began was refused; those refused while their slot was still
	// free were refused by the epoch alone.
	var late, refused, byEpoch, failed int
	for _, a := range run.attempts {
		if a.member != isolated || a.epoch != first {
			continue
		}
		if a.err != nil {
			failed++
			continue
		}
		if a.res.Index > second {
			late++
			if a.res.OK {
				t.Errorf("deposed job's write accepted at index %d, after epoch %d began: %+v", a.res.Index, second, a)
			} else {
				refused++
				if finalIndex[a.slot] > a.res.Index {
					byEpoch++
				}
			}
		}
	}
	t.Logf("deposed job: %d writes reached the log after epoch %d began, %d refused (%d with their slot still free), %d failed without an answer", late, second, refused, byEpoch, failed)
	if byEpoch == 0 {
		t.Error("no write of the deposed job was refused by its epoch alone: the test did not exercise the fence")
	}
}

// mapKeys lists a map's keys.
func mapKeys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A leader whose voters do not all know epoch markers (a rolling upgrade)
// cannot fence its leadership: RunAsLeader says so instead of running fn
// unfenced, WatchLeader shows the leader without Self, and once the voter
// is upgraded the job runs with an epoch.
func TestRunAsLeaderRefusesUnfencedLeadership(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/unfenced")
	var older []uint8
	for _, k := range knownKinds() {
		if k != opEpoch && k != opIfEpoch {
			older = append(older, k)
		}
	}
	if err := tc.startEach([]int{0, 1, 2}, func(i int) []Option {
		if i == 2 {
			return []Option{withKinds(older)}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, 0, 1, 2)
	l := tc.leaderAmong(10*time.Second, 0, 1, 2)
	for l == 2 { // a leader trusts its own build: node 2 must not lead
		_ = tc.get(2).TransferLeadership()
		l = tc.leaderAmong(10*time.Second, 0, 1, 2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ran := false
	err := tc.get(l).RunAsLeader(ctx, func(context.Context, uint64) error { ran = true; return nil })
	if ran || !errors.Is(err, ErrInvalidCommand) || !strings.Contains(err.Error(), "epoch") || !strings.Contains(err.Error(), shortPeer(mesh.ID(2))) {
		t.Fatalf("RunAsLeader with a voter that does not know markers: ran %v, %v", ran, err)
	}
	ev := <-tc.get(l).WatchLeader(ctx)
	if ev.Leader != mesh.ID(l) || ev.Self {
		t.Fatalf("WatchLeader on the unfenced leader: %+v", ev)
	}
	// IfEpoch is refused by the same rule.
	if _, err := tc.get(l).Txn(Txn{If: []Cond{IfEpoch(ev.Epoch)}, Then: []Op{SetOp("k", nil)}}, time.Second); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("IfEpoch with a voter that does not know it: %v", err)
	}
	// Node 2 is upgraded.
	tc.stop(2)
	mesh.Restart(2)
	tc.mustStart(2)
	var epoch uint64
	tc.waitFor(20*time.Second, "the job to run once every voter knows markers", func() bool {
		err := tc.onLeader(nil, func(c Cluster) error {
			return c.RunAsLeader(ctx, func(_ context.Context, e uint64) error {
				epoch = e
				return errors.New("done")
			})
		})
		return err != nil && strings.Contains(err.Error(), "done")
	})
	if epoch == 0 {
		t.Fatal("job ran without an epoch")
	}
}
