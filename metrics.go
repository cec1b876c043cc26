package raft

// Prometheus metrics (WithMetrics). Nothing is global: the collectors live
// on the registerer the caller passes. Every cluster on one registerer
// shares one collector per series, each series labelled with the cluster's
// namespace and member (its peer ID), so several clusters in one process,
// even several members of one namespace, report separate figures. The
// first cluster registers a collector; the next ones find it through
// prometheus.AlreadyRegisteredError and add their own label values; Close
// deletes them again.
//
// The hot path stays cheap: each cluster curries its label values once, at
// New, into the children it observes (no label lookup per write), and a
// cluster without WithMetrics has a nil *clusterMetrics whose methods return
// at once. What can be read when scraped (term, indexes, members, peers) is
// read then, by gaugeCollector, and costs nothing in between.

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// metricNamespace prefixes every series: tauraft_....
const metricNamespace = "tauraft"

// Label names of every series.
const (
	labelNamespace = "namespace"
	labelMember    = "member"
)

// Values of the command label of tauraft_command_requests_total: the
// commands of the command service, then the catch-alls.
var commandLabels = []string{
	cmdSet, cmdGet, cmdDelete, cmdKeys, cmdJoinVoter, cmdExchangePeers,
	cmdReadIndex, cmdGetEntry, cmdTxn, cmdWatch, cmdClaimOf, cmdStatus,
	"other", // a command this build does not serve
}

// commandLabelIndex is cmd's index in commandLabels; "other" for a command
// not listed (so a peer cannot grow the series with made-up names).
func commandLabelIndex(cmd string) int {
	for i, c := range commandLabels[:len(commandLabels)-1] {
		if c == cmd {
			return i
		}
	}
	return len(commandLabels) - 1
}

// sentinelLabels names the sentinels that travel as codes, as the code
// label of tauraft_command_requests_total.
var sentinelLabels = map[error]string{
	ErrNotLeader: "not_leader", ErrNoLeader: "no_leader", ErrShutdown: "shutdown",
	ErrAlreadyClosed: "already_closed", ErrInvalidNamespace: "invalid_namespace",
	ErrInvalidTimeout: "invalid_timeout", ErrInvalidBarrier: "invalid_barrier",
	ErrInvalidCommand: "invalid_command", ErrInvalidKey: "invalid_key",
	ErrTooLarge: "too_large", ErrTimeout: "timeout", ErrLeadershipLost: "leadership_lost",
	ErrEncryptionRequired: "encryption_required", ErrUnexpectedEncryption: "unexpected_encryption",
	ErrDecrypt: "decrypt", ErrKeyTooShort: "key_too_short", ErrNoMembers: "no_members",
	ErrCompacted: "compacted", ErrLeaseNotFound: "lease_not_found", ErrLocked: "locked",
}

// codeLabels names every wire code (errors.go), index = code: "ok",
// "other", then each sentinel of wireErrors by sentinelLabels ("code_N"
// for one it does not name; TestCodeLabelsFollowWireErrors wants none).
var codeLabels = func() []string {
	out := []string{"ok", "other"}
	for i, s := range wireErrors {
		name, ok := sentinelLabels[s]
		if !ok {
			name = fmt.Sprintf("code_%d", i+2)
		}
		out = append(out, name)
	}
	return out
}()

// codeLabelIndex is code's index in codeLabels; that of "other" for a code
// this build does not know (a newer peer's).
func codeLabelIndex(code uint16) int {
	if int(code) < len(codeLabels) {
		return int(code)
	}
	return int(codeOther)
}

// Bootstrap decisions (tauraft_bootstrap_decisions_total's decision).
const (
	decisionResume        = "resume"         // Raft state from an earlier run
	decisionForce         = "force"          // WithForceBootstrap
	decisionJoinedFounder = "joined_founder" // a founder's bootstrap included us
	decisionJoinedLeader  = "joined_leader"  // a leader added us in the window
	decisionBootstrapped  = "bootstrapped"   // we bootstrapped as the smallest founder
	decisionDeferred      = "deferred"       // a cluster or a smaller founder exists: join later
	decisionLate          = "late_bootstrap" // bootstrapped after the window, with the waiting nodes
)

// bootstrapDecisions lists the decisions above.
var bootstrapDecisions = []string{decisionResume, decisionForce, decisionJoinedFounder,
	decisionJoinedLeader, decisionBootstrapped, decisionDeferred, decisionLate}

// Reasons of a merge (tauraft_merges_total's reason).
const (
	mergeOtherCluster = "other_cluster" // a larger cluster in the namespace
	mergeOrphaned     = "orphaned"      // our voters follow another cluster
)

// mergeReasons lists the reasons above.
var mergeReasons = []string{mergeOtherCluster, mergeOrphaned}

// metricSet is the collectors of one registerer, shared by its clusters.
type metricSet struct {
	leaderChanges *prometheus.CounterVec
	commit        *prometheus.HistogramVec
	apply         *prometheus.HistogramVec
	requests      *prometheus.CounterVec
	forwarded     *prometheus.CounterVec
	bootstrap     *prometheus.CounterVec
	merges        *prometheus.CounterVec
	exchanges     *prometheus.CounterVec
	snapshot      *prometheus.HistogramVec
	restore       *prometheus.HistogramVec
	gauges        *gaugeCollector
}

// vecs lists the label-vector collectors, for Close's clean-up.
func (s *metricSet) vecs() []interface {
	DeletePartialMatch(prometheus.Labels) int
} {
	return []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		s.leaderChanges, s.commit, s.apply, s.requests, s.forwarded,
		s.bootstrap, s.merges, s.exchanges, s.snapshot, s.restore,
	}
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace, Name: name, Help: help},
		append([]string{labelNamespace, labelMember}, labels...))
}

func histogramVec(name, help string, buckets []float64) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricNamespace, Name: name, Help: help, Buckets: buckets},
		[]string{labelNamespace, labelMember})
}

// newCollectors makes the collectors, unregistered.
func newCollectors() *metricSet {
	return &metricSet{
		leaderChanges: counterVec("leadership_changes_total",
			"Leaderships this member has seen begin (a new leader, or a new term of the same one)."),
		commit: histogramVec("commit_seconds",
			"Time from proposing a write on the leader to its answer: replicated to a quorum, committed and applied.",
			prometheus.ExponentialBuckets(0.0005, 2, 16)),
		apply: histogramVec("apply_seconds",
			"Time the state machine took to apply one batch of committed entries, datastore commit included.",
			prometheus.ExponentialBuckets(0.0001, 2, 16)),
		requests: counterVec("command_requests_total",
			"Requests the command service answered, by command and result code.", "command", "code"),
		forwarded: counterVec("forwarded_requests_total",
			"Leader-only requests this member forwarded to the leader, by outcome: answered (whatever the answer) or no_answer.", "outcome"),
		bootstrap: counterVec("bootstrap_decisions_total",
			"How this member came to a cluster: resume, force, joined_founder, joined_leader, bootstrapped, deferred, late_bootstrap.", "decision"),
		merges: counterVec("merges_total",
			"Times this member dropped its cluster's state to join another cluster of the namespace, by reason.", "reason"),
		exchanges: counterVec("exchange_rounds_total",
			"Peer exchange rounds this member ran (rounds with at least one exchange)."),
		snapshot: histogramVec("snapshot_seconds",
			"Time to take and persist one snapshot of the state machine.",
			prometheus.ExponentialBuckets(0.001, 2, 18)),
		restore: histogramVec("restore_seconds",
			"Time to restore the state machine from a snapshot.",
			prometheus.ExponentialBuckets(0.001, 2, 18)),
		gauges: newGaugeCollector(),
	}
}

// newMetricSet makes the collectors and registers them on reg, or takes
// the ones a cluster registered there before.
func newMetricSet(reg prometheus.Registerer) (*metricSet, error) {
	s := newCollectors()
	var err error
	var fresh []prometheus.Collector // registered here, not shared
	register := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		var got prometheus.Collector
		got, err = registerShared(reg, c)
		if got == c {
			fresh = append(fresh, c)
		}
		return got
	}
	// The type assertions hold: registerShared returns a collector of c's
	// own type or an error.
	s.leaderChanges, _ = register(s.leaderChanges).(*prometheus.CounterVec)
	s.commit, _ = register(s.commit).(*prometheus.HistogramVec)
	s.apply, _ = register(s.apply).(*prometheus.HistogramVec)
	s.requests, _ = register(s.requests).(*prometheus.CounterVec)
	s.forwarded, _ = register(s.forwarded).(*prometheus.CounterVec)
	s.bootstrap, _ = register(s.bootstrap).(*prometheus.CounterVec)
	s.merges, _ = register(s.merges).(*prometheus.CounterVec)
	s.exchanges, _ = register(s.exchanges).(*prometheus.CounterVec)
	s.snapshot, _ = register(s.snapshot).(*prometheus.HistogramVec)
	s.restore, _ = register(s.restore).(*prometheus.HistogramVec)
	s.gauges, _ = register(s.gauges).(*gaugeCollector)
	if err != nil {
		// Leave the registerer as it was: a half set is of no use.
		for _, c := range fresh {
			reg.Unregister(c)
		}
		return nil, err
	}
	return s, nil
}

// registerShared registers c on reg, or returns the collector of the same
// series registered before (by another cluster). A collector of another
// type under the same names is an error: it is not ours to share.
func registerShared(reg prometheus.Registerer, c prometheus.Collector) (prometheus.Collector, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if reflect.TypeOf(are.ExistingCollector) == reflect.TypeOf(c) {
			return are.ExistingCollector, nil
		}
		return nil, fmt.Errorf("raft: WithMetrics: a %T of another kind holds these series: %w", are.ExistingCollector, err)
	}
	return nil, fmt.Errorf("raft: WithMetrics: %w", err)
}

// clusterMetrics is one cluster's view of its metricSet: its label values
// curried into the children it observes. A nil *clusterMetrics (no
// WithMetrics) records nothing.
type clusterMetrics struct {
	set    *metricSet
	labels prometheus.Labels // namespace and member

	leaderChanges     prometheus.Counter
	commit            prometheus.Observer
	apply             prometheus.Observer
	snapshot          prometheus.Observer
	restore           prometheus.Observer
	forwardedAnswered prometheus.Counter
	forwardedFailed   prometheus.Counter
	exchangeRounds    prometheus.Counter
	// requests holds the request counters, made on first use: most
	// (command, code) pairs never happen, and a series of zeros for each
	// would bury the ones that do.
	requests [][]atomic.Pointer[prometheus.Counter]

	// lastLeader and lastTerm are the leadership last counted; only the
	// leadership monitor's goroutine touches them.
	lastLeader peer.ID
	lastTerm   uint64

	closeOnce sync.Once
}

// newClusterMetrics registers (or joins) the collectors on reg and curries
// the cluster's label values.
func newClusterMetrics(reg prometheus.Registerer, namespace string, self peer.ID) (*clusterMetrics, error) {
	set, err := newMetricSet(reg)
	if err != nil {
		return nil, err
	}
	ns, member := namespace, self.String()
	m := &clusterMetrics{
		set:               set,
		labels:            prometheus.Labels{labelNamespace: ns, labelMember: member},
		leaderChanges:     set.leaderChanges.WithLabelValues(ns, member),
		commit:            set.commit.WithLabelValues(ns, member),
		apply:             set.apply.WithLabelValues(ns, member),
		snapshot:          set.snapshot.WithLabelValues(ns, member),
		restore:           set.restore.WithLabelValues(ns, member),
		forwardedAnswered: set.forwarded.WithLabelValues(ns, member, "answered"),
		forwardedFailed:   set.forwarded.WithLabelValues(ns, member, "no_answer"),
		exchangeRounds:    set.exchanges.WithLabelValues(ns, member),
		requests:          make([][]atomic.Pointer[prometheus.Counter], len(commandLabels)),
	}
	for i := range m.requests {
		m.requests[i] = make([]atomic.Pointer[prometheus.Counter], len(codeLabels))
	}
	// Every decision and merge reason starts at zero: a dashboard sees the
	// series before the first one, and increase() counts the first one.
	for _, d := range bootstrapDecisions {
		set.bootstrap.WithLabelValues(ns, member, d)
	}
	for _, r := range mergeReasons {
		set.merges.WithLabelValues(ns, member, r)
	}
	// Two clusters of one namespace and member on one registerer would
	// report the same series: the second is refused here, before it
	// records (or, closing, deletes) anything.
	if err := set.gauges.add(m); err != nil {
		return nil, err
	}
	return m, nil
}

// attach makes the scrape-time gauges read the cluster through read.
func (m *clusterMetrics) attach(read func() (gaugeReading, bool)) {
	if m != nil {
		m.set.gauges.attach(m, read)
	}
}

// close removes the cluster's series from the shared collectors.
func (m *clusterMetrics) close() {
	if m == nil {
		return
	}
	m.closeOnce.Do(func() {
		m.set.gauges.remove(m)
		for _, v := range m.set.vecs() {
			v.DeletePartialMatch(m.labels)
		}
	})
}

// start returns the time an observation starts at; zero (and no clock
// read) without metrics.
func (m *clusterMetrics) start() time.Time {
	if m == nil {
		return time.Time{}
	}
	return time.Now()
}

// observeCommit records a leader write's commit latency.
func (m *clusterMetrics) observeCommit(start time.Time) {
	if m != nil {
		m.commit.Observe(time.Since(start).Seconds())
	}
}

// observeApply records one applied batch.
func (m *clusterMetrics) observeApply(start time.Time) {
	if m != nil {
		m.apply.Observe(time.Since(start).Seconds())
	}
}

// observeSnapshot records one snapshot taken and persisted.
func (m *clusterMetrics) observeSnapshot(start time.Time) {
	if m != nil {
		m.snapshot.Observe(time.Since(start).Seconds())
	}
}

// observeRestore records one restore from a snapshot.
func (m *clusterMetrics) observeRestore(start time.Time) {
	if m != nil {
		m.restore.Observe(time.Since(start).Seconds())
	}
}

// request counts one answered command-service request.
func (m *clusterMetrics) request(cmd string, code uint16) {
	if m == nil {
		return
	}
	ci, ki := commandLabelIndex(cmd), codeLabelIndex(code)
	slot := &m.requests[ci][ki]
	c := slot.Load()
	if c == nil {
		made := m.set.requests.WithLabelValues(m.labels[labelNamespace], m.labels[labelMember], commandLabels[ci], codeLabels[ki])
		slot.CompareAndSwap(nil, &made)
		c = slot.Load()
	}
	(*c).Inc()
}

// forwarded counts one request forwarded to the leader.
func (m *clusterMetrics) forwarded(answered bool) {
	switch {
	case m == nil:
	case answered:
		m.forwardedAnswered.Inc()
	default:
		m.forwardedFailed.Inc()
	}
}

// bootstrapDecision counts one decision (rare: no currying needed).
func (m *clusterMetrics) bootstrapDecision(decision string) {
	if m != nil {
		m.set.bootstrap.WithLabelValues(m.labels[labelNamespace], m.labels[labelMember], decision).Inc()
	}
}

// merged counts one merge.
func (m *clusterMetrics) merged(reason string) {
	if m != nil {
		m.set.merges.WithLabelValues(m.labels[labelNamespace], m.labels[labelMember], reason).Inc()
	}
}

// exchangeRound counts one peer exchange round.
func (m *clusterMetrics) exchangeRound() {
	if m != nil {
		m.exchangeRounds.Inc()
	}
}

// observeLeader counts a leadership seen begin: a known leader that is not
// the one last counted, or the same one in a later term. Only the
// leadership monitor calls it.
func (m *clusterMetrics) observeLeader(leader peer.ID, term uint64) {
	if m == nil || leader == "" {
		return
	}
	if leader != m.lastLeader || term > m.lastTerm {
		m.lastLeader, m.lastTerm = leader, term
		m.leaderChanges.Inc()
	}
}
