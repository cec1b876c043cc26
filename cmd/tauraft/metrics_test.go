package main

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tauraft/raft/rafttest"
)

func TestReadiness(t *testing.T) {
	for _, tc := range []struct {
		name             string
		reported, leader bool
		commit, applied  uint64
		want             bool
		whyContains      string
	}{
		{"not started", false, false, 0, 0, false, "not started"},
		{"no leader", true, false, 10, 10, false, "no leader"},
		{"caught up", true, true, 10, 10, true, "ok"},
		{"within slack", true, true, 10 + readyApplySlack, 10, true, "ok"},
		{"catching up", true, true, 11 + readyApplySlack, 10, false, "catching up"},
		{"applied ahead of a stale commit", true, true, 5, 10, true, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := readiness(tc.reported, tc.leader, tc.commit, tc.applied)
			if got != tc.want || !strings.Contains(why, tc.whyContains) {
				t.Fatalf("readiness = %v %q, want %v %q", got, why, tc.want, tc.whyContains)
			}
		})
	}
}

// metricsURL waits for the node to print its metrics address.
func (p *proc) metricsURL(t *testing.T) string {
	t.Helper()
	var url string
	rafttest.WaitFor(t, 15*time.Second, p.name+" to print its metrics address", func() bool {
		for _, l := range p.lines() {
			if u, ok := strings.CutPrefix(l, "metrics: "); ok {
				url = u
				return true
			}
		}
		return false
	})
	return url
}

// httpGet returns the status code and body of GET url (0 when it fails).
func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b)
}

// TestNodeMetricsAndReadiness runs three "tauraft node" processes with
// --metrics: one's /metrics carries every tauraft series under its
// namespace label, its /readyz turns ready with a leader, and back to 503
// once the other two are killed (no quorum, no leader); /healthz stays 200.
func TestNodeMetricsAndReadiness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	const ns = "/raft/metrics-cli"
	procs, addrs := startCluster(t, bin, t.TempDir(), 3,
		"--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s", "--metrics", "127.0.0.1:0")
	base := strings.TrimSuffix(procs[0].metricsURL(t), "/metrics")

	rafttest.WaitFor(t, 15*time.Second, "n1 to be ready", func() bool {
		code, _ := httpGet(base + "/readyz")
		return code == http.StatusOK
	})
	// A write makes the command service and commit series move.
	kvUntil(t, bin, "--namespace", ns, "--peer", addrs[0], "set", "k", "v")

	code, body := httpGet(base + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	label := `namespace="` + ns + `"`
	for _, name := range []string{
		"tauraft_leadership_changes_total", "tauraft_term", "tauraft_commit_seconds_bucket",
		"tauraft_apply_seconds_count", "tauraft_applied_index", "tauraft_commit_index",
		"tauraft_members", "tauraft_command_requests_total", "tauraft_forwarded_requests_total",
		"tauraft_bootstrap_decisions_total", "tauraft_merges_total", "tauraft_exchange_rounds_total",
		"tauraft_peers_tracked", "tauraft_snapshot_seconds_count", "tauraft_restore_seconds_count",
		"tauraft_has_leader",
	} {
		if !hasSeries(body, name, label) {
			t.Errorf("/metrics has no %s with %s", name, label)
		}
	}
	if !hasSeries(body, "tauraft_members", `suffrage="voter"`) || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics lacks voters by suffrage or the process series")
	}

	// Cut off: the two others die, n1 loses its leader (or its
	// leadership) and is no longer ready; it is still alive.
	for _, p := range procs[1:] {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
	rafttest.WaitFor(t, 15*time.Second, "n1's /readyz to fail once cut off", func() bool {
		code, _ := httpGet(base + "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, _ := httpGet(base + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz of a live process: %d", code)
	}
	procs[0].stop(t)
}

// hasSeries tells whether the exposition text has a sample of name whose
// labels include label.
func hasSeries(text, name, label string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, name+"{") && strings.Contains(l, label) {
			return true
		}
	}
	return false
}
