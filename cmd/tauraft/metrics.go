package main

// tauraft node --metrics ADDR: an HTTP listener for Prometheus and for
// health checks. /metrics serves the member's series (raft.WithMetrics on a
// private registry, never the global one) and the process's own;
// /healthz answers 200 while the process runs; /readyz answers 200 once
// the member has a leader and has applied what it knows to be committed,
// 503 otherwise (starting, cut off from a quorum, catching up, stopped).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// readyApplySlack is how many committed entries a member may still have to
// apply and be ready: one batch of appended entries (hashicorp's
// MaxAppendEntries as tauraft sets it) in flight between commit and apply
// is normal under load; more means it is catching up.
const readyApplySlack = 256

// readiness decides /readyz from what the member reports: ready once it
// knows a leader and has applied all but readyApplySlack of the entries it
// knows to be committed. why says what is missing.
func readiness(reported, hasLeader bool, commit, applied uint64) (ready bool, why string) {
	switch {
	case !reported:
		return false, "not started"
	case !hasLeader:
		return false, "no leader"
	case commit > applied+readyApplySlack:
		return false, fmt.Sprintf("catching up: %d committed entries not applied yet", commit-applied)
	}
	return true, "ok"
}

// metricsServer is the listener of --metrics.
type metricsServer struct {
	srv       *http.Server
	ln        net.Listener
	raftReg   *prometheus.Registry // what raft.WithMetrics registers on
	namespace string
	done      chan struct{}
}

// listenMetrics binds addr at once, so a bad or taken address fails the
// command before the member starts.
func listenMetrics(addr, namespace string) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usageErr("--metrics %q: %v", addr, err)
	}
	m := &metricsServer{ln: ln, raftReg: prometheus.NewRegistry(), namespace: namespace, done: make(chan struct{})}
	process := prometheus.NewRegistry()
	process.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{m.raftReg, process}, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", m.readyz)
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	return m, nil
}

// url is where the member's series are.
func (m *metricsServer) url() string { return "http://" + m.ln.Addr().String() + "/metrics" }

// serve answers until shutdown; a listener that fails is reported on
// stderr (the member keeps running: metrics are not worth stopping it).
func (m *metricsServer) serve(stderr io.Writer) {
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(stderr, "metrics listener stopped: %v\n", err)
		}
	}()
}

// shutdown stops the listener, giving requests in flight a second.
func (m *metricsServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
}

// readyz reads the member's own gauges: the same figures an operator
// scrapes, so the two never disagree.
func (m *metricsServer) readyz(w http.ResponseWriter, _ *http.Request) {
	ready, why := m.ready()
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, why+"\n")
}

func (m *metricsServer) ready() (bool, string) {
	families, err := m.raftReg.Gather()
	if err != nil {
		return false, "metrics: " + err.Error()
	}
	var reported, hasLeader bool
	var commit, applied uint64
	for _, mf := range families {
		for _, s := range mf.GetMetric() {
			if !hasLabel(s.GetLabel(), "namespace", m.namespace) || s.Gauge == nil {
				continue
			}
			v := s.Gauge.GetValue()
			switch mf.GetName() {
			case "tauraft_has_leader":
				reported, hasLeader = true, v == 1
			case "tauraft_commit_index":
				commit = uint64(v)
			case "tauraft_applied_index":
				applied = uint64(v)
			}
		}
	}
	return readiness(reported, hasLeader, commit, applied)
}

func hasLabel(labels []*dto.LabelPair, name, value string) bool {
	for _, l := range labels {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
