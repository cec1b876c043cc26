package raft

import (
	"fmt"
	"maps"
	"math"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The compare-and-set linearizability test: concurrent Clients, through
// members in random order, read keys (barrier GetEntry) and compare-and-set
// them (Txn with IfValue, or IfAbsent) while the leader is closed and
// restarted, the leader is isolated and a minority is partitioned; the
// history must be linearizable for a compare-and-set register per key.

const (
	casWorkers = 4
	casTimeout = 3 * time.Second
)

var casKeys = []string{"a", "b"}

// casInput is a read of Key, or a compare-and-set of Key from Expect ("":
// absent) to Value.
type casInput struct {
	CAS    bool
	Key    string
	Expect string
	Value  string
}

// casOutput: a read's value ("" absent), or whether the CAS applied;
// Unknown when its outcome is unknown.
type casOutput struct {
	Value   string
	OK      bool
	Unknown bool
}

var casModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(casInput).Key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range slices.Sorted(maps.Keys(byKey)) {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(casInput), output.(casOutput)
		switch {
		case !in.CAS:
			return out.Value == st, st
		case out.Unknown:
			// Linearized where it helps; where the condition holds it
			// applies (an unapplied one goes last, where it changes
			// nothing visible).
			if st == in.Expect {
				return true, in.Value
			}
			return true, st
		case out.OK:
			return st == in.Expect, in.Value
		default:
			return st != in.Expect, st
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(casInput), output.(casOutput)
		if !in.CAS {
			return fmt.Sprintf("get(%s) -> %q", in.Key, out.Value)
		}
		return fmt.Sprintf("cas(%s, %q -> %q) -> ok=%v unknown=%v", in.Key, in.Expect, in.Value, out.OK, out.Unknown)
	},
}

// casHistory records the operations of every worker.
type casHistory struct {
	start   time.Time
	mu      sync.Mutex
	ops     []porcupine.Operation
	clients int
	counts  map[string]int
}

func (h *casHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *casHistory) newClient() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients++
	return h.clients
}

func (h *casHistory) add(op porcupine.Operation, count string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[count]++
	if !strings.HasSuffix(count, "failed") {
		h.ops = append(h.ops, op)
	}
}

func (h *casHistory) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(h.counts)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, h.counts[k]))
	}
	return strings.Join(parts, " ")
}

// casWorker reads and compare-and-sets until stop is closed, expecting the
// last value it read of the key (which may be stale: the CAS then fails).
func casWorker(h *casHistory, cl *Client, members []peer.ID, w int, seed int64, stop <-chan struct{}) {
	rng := rand.New(rand.NewSource(seed))
	client := h.newClient()
	seen := map[string]string{}
	untilClosed(stop, func(n int) {
		targets := make([]peer.ID, len(members))
		for i, j := range rng.Perm(len(members)) {
			targets[i] = members[j]
		}
		key := casKeys[rng.Intn(len(casKeys))]
		if rng.Intn(2) == 0 {
			call := h.now()
			e, found, err := cl.GetEntry(key, int64(casTimeout), targets...)
			ret := h.now()
			if err != nil {
				h.add(porcupine.Operation{}, "read failed")
				return
			}
			v := ""
			if found {
				v = string(e.Value)
			}
			seen[key] = v
			h.add(porcupine.Operation{ClientId: client, Input: casInput{Key: key}, Output: casOutput{Value: v}, Call: call, Return: ret}, "read ok")
			return
		}
		in := casInput{CAS: true, Key: key, Expect: seen[key], Value: fmt.Sprintf("w%d.%d", w, n)}
		cond := IfValue(key, []byte(in.Expect))
		if in.Expect == "" {
			cond = IfAbsent(key)
		}
		call := h.now()
		res, err := cl.Txn(Txn{If: []Cond{cond}, Then: []Op{SetOp(key, []byte(in.Value))}}, casTimeout, targets...)
		op := porcupine.Operation{ClientId: client, Input: in, Call: call, Return: h.now()}
		switch {
		case err == nil:
			op.Output = casOutput{OK: res.OK}
			if res.OK {
				seen[key] = in.Value
				h.add(op, "cas ok")
			} else {
				h.add(op, "cas refused")
			}
		case IsNotApplied(err):
			h.add(op, "cas failed")
		default:
			op.Output, op.Return = casOutput{Unknown: true}, math.MaxInt64
			h.add(op, "cas unknown")
			client = h.newClient() // its operation never returns
		}
		time.Sleep(time.Duration(rng.Intn(5)) * time.Millisecond)
	})
}

// Compare-and-set through Txn is linearizable under faults.
func TestLinearizableTxnCAS(t *testing.T) { linSeedRuns(t, "TestLinearizableTxnCAS", casRun) }

func casRun(t *testing.T, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	began := time.Now()
	mesh, tc, members, ids := linCluster(t, "/raft/cas")
	h := &casHistory{start: time.Now(), counts: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range casWorkers {
		cl, err := NewClient(mesh.Node(linMembers+w%linClientNodes), "/raft/cas", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		wg.Go(func() { casWorker(h, cl, ids, w, seed*100+int64(w), stop) })
	}
	stopWorkers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWorkers)

	faults := []string{"leader restart", "leader isolated", "minority partition"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	linSleep(rng, 300*time.Millisecond, 600*time.Millisecond)
	for _, fault := range faults {
		l := tc.leader(15 * time.Second)
		at := time.Since(h.start).Round(time.Millisecond)
		switch fault {
		case "leader restart":
			t.Logf("%v: closing the leader, node %d", at, l)
			tc.stop(l)
			mesh.Stop(l)
			linSleep(rng, 800*time.Millisecond, 1500*time.Millisecond)
			mesh.Restart(l)
			tc.mustStart(l)
		case "leader isolated":
			t.Logf("%v: isolating the leader, node %d", at, l)
			mesh.Isolate(l)
			linSleep(rng, 800*time.Millisecond, 1500*time.Millisecond)
			mesh.Rejoin(l)
		case "minority partition":
			b := linOtherMember(rng, l)
			t.Logf("%v: partitioning {%d, %d} (the leader and one more) from the rest", at, l, b)
			for _, a := range []int{l, b} {
				for _, m := range members {
					if m != l && m != b {
						mesh.Cut(a, m)
					}
				}
			}
			linSleep(rng, time.Second, 1500*time.Millisecond)
			mesh.HealAll()
		}
		linSleep(rng, 300*time.Millisecond, 600*time.Millisecond)
	}
	tc.waitVoters(20*time.Second, members...)
	linSleep(rng, 300*time.Millisecond, 600*time.Millisecond)
	stopWorkers()
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	summary := h.summary()
	if h.counts["cas ok"] == 0 || h.counts["cas refused"] == 0 {
		t.Fatalf("the history has no successful or no refused CAS: %s", summary)
	}
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(casModel, ops, 30*time.Second)
	t.Logf("porcupine: %s on %d operations (%s) in %v; seed %d done in %v", res, len(ops), summary,
		time.Since(checkStart).Round(time.Millisecond), seed, time.Since(began).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := fmt.Sprintf("%s/tauraft-cas-%d.html", t.TempDir(), seed)
		if err := porcupine.VisualizePath(casModel, info, path); err == nil {
			t.Logf("visualization in %s", path)
		}
		t.Fatalf("history is %s (seed %d; rerun with TAURAFT_SEED=%d)", res, seed, seed)
	}
}
