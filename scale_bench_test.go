package raft

// Measurements against member count (3, 12, 24, 48): how long a namespace
// takes to form, sequential Set latency, and failover, each reported with
// its ratio to the 3-member figure of the same run.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// scaleFormTimeout is how long BenchmarkScale waits for one cluster of every
// member: formation is measured here, not bounded (TestBootstrapScale bounds
// it).
const scaleFormTimeout = 3 * time.Minute

// benchScaleSets is how many sequential writes give the Set p50.
const benchScaleSets = 2000

// scaleBaseline holds the 3-member figures of this run, for the ratios.
var scaleBaseline struct {
	formation, p50, failover time.Duration
}

// BenchmarkScale forms a namespace of n members (PresetLocal; node 0
// bootstraps, the others start at once and join: the formation rule itself
// is TestBootstrapScale's), then measures sequential Cluster.Set on the
// leader (p50) and the failover after the leader's node is cut off (until
// the others agree on a new leader, in election timeouts). With
// WithMaxVoters' default of 5, the quorum stays 3 however many members.
func BenchmarkScale(b *testing.B) {
	et := PresetLocal.Timeouts().ElectionTimeout
	if os.Getenv("TAURAFT_BENCH_NOAP") != "" {
		benchScaleExtra = []Option{WithAutopilot(AutopilotConfig{Disabled: true})}
	}
	maxVoters := DefaultMaxVoters
	if env := os.Getenv("TAURAFT_BENCH_MAXVOTERS"); env != "" { // the same quorum at every size
		n, err := strconv.Atoi(env)
		if err != nil {
			b.Fatalf("TAURAFT_BENCH_MAXVOTERS=%q: %v", env, err)
		}
		maxVoters = n
	}
	sizes := []int{3, 12, 24, 48}
	if env := os.Getenv("TAURAFT_BENCH_MEMBERS"); env != "" { // "48" or "3,48"
		sizes = nil
		for f := range strings.SplitSeq(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("TAURAFT_BENCH_MEMBERS=%q: want member counts separated by commas", env)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) {
			mesh := rafttest.NewMesh(b, n, rafttest.Connected())
			cs := make([]Cluster, n)
			defer func() {
				for _, c := range cs {
					if c != nil {
						_ = c.Close()
					}
				}
			}()
			ns := fmt.Sprintf("/raft/bench-scale-%d", n)
			start := time.Now()
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				opts := benchClusterOpts(b, append([]Option{WithMaxVoters(maxVoters)}, benchScaleExtra...)...)
				if os.Getenv("TAURAFT_BENCH_LOG") != "" {
					opts = append(opts, WithLogger(hclog.New(&hclog.LoggerOptions{Name: strconv.Itoa(i), Level: hclog.Info, Output: os.Stderr})))
				}
				if i == 0 {
					opts = append(opts, WithForceBootstrap())
				}
				wg.Go(func() { cs[i], errs[i] = New(mesh.Node(i), ns, opts...) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
			for !scaleSettled(cs, min(n, maxVoters)) {
				if time.Since(start) > scaleFormTimeout {
					b.Fatal("no single cluster of every member")
				}
				time.Sleep(benchPoll)
			}
			formation := time.Since(start)

			var leader Cluster
			for _, c := range cs {
				if c.IsLeader() {
					leader = c
				}
			}
			if leader == nil {
				b.Fatal("no leader")
			}
			sets := benchScaleSets
			if env := os.Getenv("TAURAFT_BENCH_SETS"); env != "" { // a longer run, for a profile
				n, err := strconv.Atoi(env)
				if err != nil || n < 1 {
					b.Fatalf("TAURAFT_BENCH_SETS=%q: want a positive count", env)
				}
				sets = n
			}
			lat := make([]time.Duration, 0, sets)
			for k := range sets {
				t0 := time.Now()
				if err := leader.Set("k"+strconv.Itoa(k), benchValue, benchWriteTimeout); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			p50 := lat[len(lat)/2]

			leaderID, err := leader.Leader()
			if err != nil {
				b.Fatal(err)
			}
			li := mesh.Index(leaderID)
			t0 := time.Now()
			mesh.Isolate(li)
			rest := slices.Delete(slices.Clone(cs), li, li+1)
			var failover time.Duration
			for {
				if l, ok := benchAgreedLeader(rest); ok && l != leaderID {
					failover = time.Since(t0)
					break
				}
				if time.Since(t0) > benchSetupTimeout {
					b.Fatal("no new leader after the leader was cut off")
				}
				time.Sleep(benchPoll)
			}
			if n == 3 {
				scaleBaseline.formation, scaleBaseline.p50, scaleBaseline.failover = formation, p50, failover
			}
			b.ReportMetric(formation.Seconds(), "formation-s")
			b.ReportMetric(float64(p50)/1e3, "set-p50-us")
			b.ReportMetric(float64(failover)/float64(et), "failover-election-timeouts")
			if scaleBaseline.p50 > 0 {
				b.ReportMetric(float64(p50)/float64(scaleBaseline.p50), "set-p50-x3")
				b.ReportMetric(float64(formation)/float64(scaleBaseline.formation), "formation-x3")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// scaleSettled reports whether every member holds every member in one
// configuration with voters voters, and names the same leader.
func scaleSettled(cs []Cluster, voters int) bool {
	var leader string
	for _, c := range cs {
		ms, err := c.Members()
		if err != nil || len(ms) != len(cs) {
			return false
		}
		v, _ := suffrages(c)
		if v != voters {
			return false
		}
		l, err := c.Leader()
		if err != nil || (leader != "" && l.String() != leader) {
			return false
		}
		leader = l.String()
	}
	return true
}

// benchAgreedLeader is the leader every one of cs names, if they agree and
// it says it leads.
func benchAgreedLeader(cs []Cluster) (id peer.ID, ok bool) {
	for _, c := range cs {
		l, err := c.Leader()
		if err != nil || (id != "" && l != id) {
			return "", false
		}
		id = l
	}
	for _, c := range cs {
		if c.IsLeader() {
			return id, true
		}
	}
	return "", false
}

// benchScaleExtra are options for every member of BenchmarkScale.
var benchScaleExtra []Option
