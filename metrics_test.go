package raft

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tauraft/raft/rafttest"
)

// metricSum gathers reg and sums the series of name whose labels include
// want: a counter's or gauge's value, a histogram's sample count. found is
// false when no series matched.
func metricSum(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string) (sum float64, found bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsInclude(m.GetLabel(), want) {
				continue
			}
			found = true
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum, found
}

func labelsInclude(have []*dto.LabelPair, want map[string]string) bool {
	for k, v := range want {
		ok := false
		for _, l := range have {
			if l.GetName() == k && l.GetValue() == v {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Two namespaces in one process, on one registry, report separate
// figures; so do two members of one namespace; Close takes a cluster's
// series away and leaves the others'.
func TestMetricsSeparateNamespaces(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2)
	reg := prometheus.NewRegistry()
	a := newTestCluster(t, mesh, "/raft/metrics-a", WithMetrics(reg))
	b := newTestCluster(t, mesh, "/raft/metrics-b", WithMetrics(reg))
	ca := a.mustStart(0, WithForceBootstrap())
	if err := b.startEach([]int{0, 1}, forceFirst); err != nil {
		t.Fatal(err)
	}
	b.waitVoters(20*time.Second, 0, 1)
	bl := b.leader(10 * time.Second)
	a.leader(10 * time.Second)

	const writesA, writesB = 20, 2
	for i := range writesA {
		a.set("k"+string(rune('a'+i)), []byte("v"), 0)
	}
	for i := range writesB {
		b.set("k"+string(rune('a'+i)), []byte("v"), 0, 1)
	}
	// A write through the follower of b travels the command service and
	// the forwarder.
	bf := b.follower(bl, 2)
	if _, err := b.get(bf).Txn(Txn{Then: []Op{SetOp("via", []byte("f"))}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Cluster{ca, b.get(0), b.get(1)} {
		if err := c.Barrier(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}

	node := func(i int) string { return mesh.Node(i).ID().String() }
	lab := func(ns string, i int) map[string]string {
		return map[string]string{labelNamespace: ns, labelMember: node(i)}
	}
	la, lb0, lb1 := lab("/raft/metrics-a", 0), lab("/raft/metrics-b", 0), lab("/raft/metrics-b", 1)
	value := func(name string, l map[string]string) float64 {
		t.Helper()
		v, ok := metricSum(t, reg, name, l)
		if !ok {
			t.Fatalf("no %s for %v", name, l)
		}
		return v
	}

	// Applied indexes are each cluster's own: a's 20 writes are not b's.
	// (Barrier returned, so each applied its writes; gauges are read now.)
	appA, appB := value("tauraft_applied_index", la), value("tauraft_applied_index", lb0)
	if appA < writesA || appB >= appA || appB < writesB+1 {
		t.Fatalf("applied index a %v, b %v: not per namespace", appA, appB)
	}
	if v := value("tauraft_members", mergeLabels(la, "suffrage", "voter")); v != 1 {
		t.Fatalf("a has %v voters, want 1", v)
	}
	for _, l := range []map[string]string{lb0, lb1} {
		if v := value("tauraft_members", mergeLabels(l, "suffrage", "voter")); v != 2 {
			t.Fatalf("b has %v voters on %v, want 2", v, l)
		}
		if v := value("tauraft_has_leader", l); v != 1 {
			t.Fatalf("b member %v has no leader", l)
		}
	}
	// Commit latency counts the leader's writes (and its epoch markers).
	if n := value("tauraft_commit_seconds", la); n < writesA {
		t.Fatalf("a committed %v writes, want at least %d", n, writesA)
	}
	if n, _ := metricSum(t, reg, "tauraft_commit_seconds", lab("/raft/metrics-b", bl)); n < writesB || n >= writesA {
		t.Fatalf("b's leader committed %v writes, want %d to %d", n, writesB, writesA)
	}
	if value("tauraft_apply_seconds", la) < 1 || value("tauraft_leadership_changes_total", la) < 1 ||
		value("tauraft_leadership_changes_total", lb1) < 1 || value("tauraft_term", lb0) < 1 {
		t.Fatal("apply, leadership or term series empty")
	}
	if v := value("tauraft_bootstrap_decisions_total", mergeLabels(la, "decision", decisionForce)); v != 1 {
		t.Fatalf("a's bootstrap decision force counted %v times", v)
	}
	if v := value("tauraft_forwarded_requests_total", mergeLabels(lab("/raft/metrics-b", bf), "outcome", "answered")); v < 1 {
		t.Fatalf("b's follower forwarded %v requests", v)
	}
	if v := value("tauraft_command_requests_total", map[string]string{labelNamespace: "/raft/metrics-b", labelMember: node(bl), "command": cmdTxn, "code": "ok"}); v < 1 {
		t.Fatalf("b's leader answered %v txn requests", v)
	}
	if _, ok := metricSum(t, reg, "tauraft_command_requests_total", map[string]string{labelNamespace: "/raft/metrics-a"}); ok {
		t.Fatal("a, which nobody called, reports command requests")
	}
	b.waitFor(10*time.Second, "exchange rounds and tracked peers on b", func() bool {
		r, _ := metricSum(t, reg, "tauraft_exchange_rounds_total", lb1)
		p, _ := metricSum(t, reg, "tauraft_peers_tracked", lb1)
		return r >= 1 && p >= 1
	})

	// A second cluster of a's namespace and member on this registry would
	// report the same series: refused.
	if _, err := New(mesh.Node(0), "/raft/metrics-a", WithMetrics(reg), WithForceBootstrap()); err == nil || !strings.Contains(err.Error(), "already reports") {
		t.Fatalf("duplicate metrics: %v", err)
	}
	// Closing a takes its series away; b's stay.
	a.stop(0)
	if _, ok := metricSum(t, reg, "tauraft_applied_index", map[string]string{labelNamespace: "/raft/metrics-a"}); ok {
		t.Fatal("a's gauges outlive its Close")
	}
	if _, ok := metricSum(t, reg, "tauraft_commit_seconds", map[string]string{labelNamespace: "/raft/metrics-a"}); ok {
		t.Fatal("a's histograms outlive its Close")
	}
	if v := value("tauraft_applied_index", lb0); v < appB {
		t.Fatalf("b's applied index %v after a closed", v)
	}
}

func mergeLabels(l map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for lk, lv := range l {
		out[lk] = lv
	}
	return out
}

// Snapshots and restores are timed: one observation each.
func TestMetricsSnapshotRestore(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newClusterMetrics(reg, "/raft/metrics-snap", rafttest.NewMesh(t, 1).Node(0).ID())
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	f, _ := newTestStore(t)
	f.metrics = m
	if _, err := applyAt(t, f, 1, mustTxn(t, Txn{Then: []Op{SetOp("k", []byte("v"))}})); err != nil {
		t.Fatal(err)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	store := hraft.NewInmemSnapshotStore()
	sink, err := store.Create(hraft.SnapshotVersionMax, 1, 1, hraft.Configuration{}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	_, rc, err := store.Open(sink.ID())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	g, _ := newTestStore(t)
	g.metrics = m
	if err := g.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{labelNamespace: "/raft/metrics-snap"}
	for name, n := range map[string]float64{"tauraft_snapshot_seconds": 1, "tauraft_restore_seconds": 1, "tauraft_apply_seconds": 1} {
		if v, _ := metricSum(t, reg, name, want); v != n {
			t.Errorf("%s counted %v, want %v", name, v, n)
		}
	}
}

// The code labels name every wire code, in order, each once.
func TestCodeLabelsFollowWireErrors(t *testing.T) {
	if len(codeLabels) != len(wireErrors)+2 {
		t.Fatalf("%d code labels for %d wire errors", len(codeLabels), len(wireErrors))
	}
	seen := map[string]bool{}
	for code, label := range codeLabels {
		if seen[label] || strings.HasPrefix(label, "code_") {
			t.Errorf("code %d: label %q repeated or unnamed (add it to sentinelLabels)", code, label)
		}
		seen[label] = true
	}
	if codeLabels[errorCode(ErrNotLeader)] != "not_leader" || codeLabels[errorCode(nil)] != "ok" ||
		codeLabels[errorCode(errors.New("x"))] != "other" {
		t.Fatal("labels do not follow errorCode")
	}
	if codeLabelIndex(60000) != int(codeOther) || commandLabels[commandLabelIndex("made-up")] != "other" ||
		commandLabels[commandLabelIndex(cmdSet)] != cmdSet {
		t.Fatal("unknown codes or commands do not fall back to other")
	}
}

// Without WithMetrics a cluster records nothing, at the cost of a nil
// check.
func TestMetricsNilIsNoop(t *testing.T) {
	var m *clusterMetrics
	m.request(cmdSet, 0)
	m.forwarded(true)
	m.bootstrapDecision(decisionForce)
	m.merged(mergeOrphaned)
	m.exchangeRound()
	m.observeLeader("x", 1)
	m.observeCommit(m.start())
	m.attach(nil)
	m.close()
	if !m.start().IsZero() {
		t.Fatal("a nil clusterMetrics read the clock")
	}
}

// A registerer that already holds one of the names for something else is
// refused with an error that says so, and left as it was.
func TestMetricsNameTaken(t *testing.T) {
	reg := prometheus.NewRegistry()
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tauraft_exchange_rounds_total", Help: "someone else's"})
	reg.MustRegister(other)
	_, err := newClusterMetrics(reg, "/raft/taken", rafttest.NewMesh(t, 1).Node(0).ID())
	if err == nil || !strings.Contains(err.Error(), "WithMetrics") {
		t.Fatalf("name taken: %v", err)
	}
	// The collectors registered before the refusal are gone: the same
	// series register anew, with no AlreadyRegisteredError.
	if err := reg.Register(newCollectors().commit); err != nil {
		t.Fatalf("a collector outlived the refusal: %v", err)
	}
	if !reg.Unregister(other) {
		t.Fatal("the other collector is gone")
	}
}
