package raft

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tauraft/raft/rafttest"
)

// BenchmarkCompareMetrics: Cluster.Set on the leader of a cluster with
// WithMetrics against the same without, in the same run (see BENCHMARKS.md
// for how a pair is measured), with a second cluster without metrics as a
// control: ops-x:control/cluster is the noise floor of a ratio in that run.
func BenchmarkCompareMetrics(b *testing.B) {
	plain := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-metrics")
	control := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-metrics")
	reg := prometheus.NewRegistry()
	measured := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-metrics", WithMetrics(reg))
	benchWarmUp(b, plain.set)
	benchWarmUp(b, control.set)
	benchWarmUp(b, measured.set)
	sides := []benchSide{plain.side("cluster"), measured.side("metrics"), control.side("control")}
	ratios := []benchRatio{{"metrics", "cluster"}, {"control", "cluster"}}
	b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, sides, ratios) })
	b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, sides, ratios) })
	// The series moved: the side measured what it claims to.
	if n, _ := metricSum(b, reg, "tauraft_commit_seconds", nil); n == 0 {
		b.Fatal("the metrics side recorded no commit")
	}
}

// BenchmarkMetricsPerWrite: what metrics add to one write on the leader
// (the commit timing, a share of a batch's apply timing, a command-service
// count), for a figure that load on the machine does not blur: compare its
// ns/op with the cpu-us/op of BenchmarkCompareMetrics.
func BenchmarkMetricsPerWrite(b *testing.B) {
	m, err := newClusterMetrics(prometheus.NewRegistry(), "/raft/bench", rafttest.NewMesh(b, 1).Node(0).ID())
	if err != nil {
		b.Fatal(err)
	}
	defer m.close()
	b.ReportAllocs()
	for b.Loop() {
		start := m.start()
		m.observeCommit(start)
		m.observeApply(start)
		m.request(cmdSet, codeOK)
	}
}
