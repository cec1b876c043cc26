package raft

// The gauges of WithMetrics that are read when scraped: term, indexes,
// leadership, members by suffrage and peers tracked. Reading them costs
// nothing between scrapes, and what Raft already keeps is never copied on
// the hot path.

import (
	"fmt"
	"sync"

	hraft "github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// gaugeReading is one cluster's scrape-time figures.
type gaugeReading struct {
	term, commitIndex, appliedIndex, lastIndex uint64
	hasLeader, isLeader                        bool
	voters, nonVoters, staging                 int
	peersTracked                               int
}

func gaugeDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metricNamespace, "", name), help,
		append([]string{labelNamespace, labelMember}, labels...), nil)
}

var (
	descTerm        = gaugeDesc("term", "The Raft term this member is in.")
	descCommitIndex = gaugeDesc("commit_index",
		"The highest log index this member knows to be committed.")
	descAppliedIndex = gaugeDesc("applied_index",
		"The highest log index this member has applied to its state machine; commit_index minus applied_index is its apply lag.")
	descLastIndex = gaugeDesc("last_log_index", "The last index in this member's log.")
	descHasLeader = gaugeDesc("has_leader", "1 while this member knows a leader, else 0.")
	descIsLeader  = gaugeDesc("is_leader", "1 while this member leads, else 0.")
	descMembers   = gaugeDesc("members",
		"Servers of the latest configuration this member knows, by suffrage (voter, nonvoter, staging).", "suffrage")
	descPeers = gaugeDesc("peers_tracked",
		"Peers of the namespace this member tracks (discovered, exchanged with, or named by a member).")
	gaugeDescs = []*prometheus.Desc{descTerm, descCommitIndex, descAppliedIndex, descLastIndex,
		descHasLeader, descIsLeader, descMembers, descPeers}
)

// gaugeCollector reads every attached cluster when scraped.
type gaugeCollector struct {
	mu      sync.Mutex
	sources map[*clusterMetrics]func() (gaugeReading, bool)
}

func newGaugeCollector() *gaugeCollector {
	return &gaugeCollector{sources: map[*clusterMetrics]func() (gaugeReading, bool){}}
}

// add reserves m's labels, with nothing to read yet (see attach); labels
// already taken are an error (the series would collide).
func (g *gaugeCollector) add(m *clusterMetrics) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for other := range g.sources {
		if other.labels[labelNamespace] == m.labels[labelNamespace] && other.labels[labelMember] == m.labels[labelMember] {
			return errDuplicateMetrics(m.labels[labelNamespace], m.labels[labelMember])
		}
	}
	g.sources[m] = nil
	return nil
}

// attach sets how m's cluster is read, once it can be.
func (g *gaugeCollector) attach(m *clusterMetrics, read func() (gaugeReading, bool)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.sources[m]; ok {
		g.sources[m] = read
	}
}

// remove detaches m's cluster.
func (g *gaugeCollector) remove(m *clusterMetrics) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.sources, m)
}

// Describe sends the gauges' descriptions.
func (g *gaugeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range gaugeDescs {
		ch <- d
	}
}

// Collect reads every attached cluster, outside the lock: a slow reading
// must not hold up Close.
func (g *gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	type source struct {
		ns, member string
		read       func() (gaugeReading, bool)
	}
	g.mu.Lock()
	sources := make([]source, 0, len(g.sources))
	for m, read := range g.sources {
		if read == nil {
			continue // not started yet
		}
		sources = append(sources, source{m.labels[labelNamespace], m.labels[labelMember], read})
	}
	g.mu.Unlock()
	for _, s := range sources {
		r, ok := s.read()
		if !ok {
			continue // closed or stopped: nothing to report
		}
		gauge := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{s.ns, s.member}, extra...)...)
		}
		gauge(descTerm, float64(r.term))
		gauge(descCommitIndex, float64(r.commitIndex))
		gauge(descAppliedIndex, float64(r.appliedIndex))
		gauge(descLastIndex, float64(r.lastIndex))
		gauge(descHasLeader, boolGauge(r.hasLeader))
		gauge(descIsLeader, boolGauge(r.isLeader))
		gauge(descMembers, float64(r.voters), "voter")
		gauge(descMembers, float64(r.nonVoters), "nonvoter")
		gauge(descMembers, float64(r.staging), "staging")
		gauge(descPeers, float64(r.peersTracked))
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// gaugeReading reads the cluster's scrape-time figures; false once it is
// closed or its state machine stopped.
func (c *cluster) gaugeReading() (gaugeReading, bool) {
	r, err := c.r()
	if err != nil {
		return gaugeReading{}, false
	}
	g := gaugeReading{
		term:         r.CurrentTerm(),
		commitIndex:  r.CommitIndex(),
		appliedIndex: r.AppliedIndex(),
		lastIndex:    r.LastIndex(),
		isLeader:     r.State() == hraft.Leader,
		peersTracked: c.peers.tracked(),
	}
	_, id := r.LeaderWithID()
	g.hasLeader = id != ""
	// Raft keeps the latest configuration at hand: this does not wait on
	// its main loop.
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			switch s.Suffrage {
			case hraft.Voter:
				g.voters++
			case hraft.Nonvoter:
				g.nonVoters++
			case hraft.Staging:
				g.staging++
			}
		}
	}
	return g, true
}

// errDuplicateMetrics refuses a second cluster of one namespace and member
// on one registerer.
func errDuplicateMetrics(namespace, member string) error {
	return fmt.Errorf("raft: WithMetrics: namespace %q of member %s already reports on this registerer", namespace, member)
}

// tracked is how many peers the tracker holds.
func (t *peerTracker) tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}
