package raft

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
)

const logPeerID = "12D3KooWQw7RAjtDNbPGSmerQRNXQyTb4a3M5P6rg9qUC8NaUuf2"

func TestClassifyRaftLine(t *testing.T) {
	srv := hraft.Server{Suffrage: hraft.Voter, ID: logPeerID, Address: logPeerID}
	dialErr := errors.New("failed to dial")
	cases := []struct {
		name  string
		msg   string
		args  []interface{}
		class lineClass
		peer  string
	}{
		{"election at start", "heartbeat timeout reached, starting election",
			[]interface{}{"last-leader-addr", hraft.ServerAddress(""), "last-leader-id", ""}, lineStartElection, ""},
		{"election after a leader", "heartbeat timeout reached, starting election",
			[]interface{}{"last-leader-addr", hraft.ServerAddress(logPeerID), "last-leader-id", logPeerID}, lineKeep, ""},
		{"no peers yet", "no known peers, aborting election", nil, lineRoutine, ""},
		{"stale candidate", "rejecting vote request since our last term is greater", []interface{}{"candidate", logPeerID, "last-term", 2}, lineRoutine, ""},
		{"split vote", "Election timeout reached, restarting election", nil, lineStartElection, ""},
		{"catch-up", "failed to get previous log", []interface{}{"previous-index", 7, "last-index", 3, "error", dialErr}, lineRoutine, ""},
		{"older logs", "appendEntries rejected, sending older logs", []interface{}{"peer", srv, "next", 4}, lineRoutine, ""},
		{"vote refused, leader known", "rejecting vote request since we have a leader", []interface{}{"from", logPeerID}, lineRoutine, ""},
		{"heartbeat failed", "failed to heartbeat to", []interface{}{"peer", hraft.ServerAddress(logPeerID), "backoff time", time.Second, "error", dialErr}, lineAttemptFailed, logPeerID},
		{"appendEntries failed", "failed to appendEntries to", []interface{}{"peer", srv, "error", dialErr}, lineAttemptFailed, logPeerID},
		{"vote RPC failed", "failed to make requestVote RPC", []interface{}{"target", srv, "error", dialErr, "term", 3}, lineAttemptFailed, logPeerID},
		{"attempt without a peer", "failed to appendEntries to", []interface{}{"error", dialErr}, lineKeep, ""},
		{"no contact", "failed to contact", []interface{}{"server-id", hraft.ServerID(logPeerID), "time", time.Second}, lineNoContact, logPeerID},
		{"pipeline", "pipelining replication", []interface{}{"peer", srv}, lineReplicating, logPeerID},
		{"removed", "removed peer, stopping replication", []interface{}{"peer", hraft.ServerID(logPeerID), "last-index", 9}, linePeerRemoved, logPeerID},
		{"quorum lost", "failed to contact quorum of nodes, stepping down", nil, lineKeep, ""},
		{"state machine", "failed to apply", []interface{}{"error", dialErr}, lineKeep, ""},
	}
	for _, c := range cases {
		class, p := classifyRaftLine(c.msg, c.args)
		if class != c.class || p != c.peer {
			t.Errorf("%s: got class %d peer %q, want %d %q", c.name, class, p, c.class, c.peer)
		}
	}
}

// TestReachTrackerSchedule: a peer down for 10 minutes, retried every
// 500 ms, gets 6 summaries (after 10 s, then each time the outage doubled),
// and one line when it is back.
func TestReachTrackerSchedule(t *testing.T) {
	tr := newReachTracker()
	t0 := time.Unix(1_000_000, 0)
	var lines []string
	var at []time.Duration
	for d := time.Duration(0); d <= 10*time.Minute; d += 500 * time.Millisecond {
		if n := tr.failed(logPeerID, "dial failed", t0.Add(d), true); n.msg != "" {
			if n.level != hclog.Warn || n.err != "dial failed" {
				t.Fatalf("summary %q at level %v with error %q", n.msg, n.level, n.err)
			}
			lines = append(lines, n.msg)
			at = append(at, d)
		}
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 320 * time.Second}
	if len(at) != len(want) {
		t.Fatalf("summaries at %v, want %v:\n%s", at, want, strings.Join(lines, "\n"))
	}
	for i := range want {
		if at[i] != want[i] {
			t.Fatalf("summaries at %v, want %v", at, want)
		}
	}
	if lines[0] != "member NaUuf2 unreachable for 10s, 21 attempts" || lines[5] != "member NaUuf2 unreachable for 5m20s, 641 attempts" {
		t.Fatalf("summaries read:\n%s", strings.Join(lines, "\n"))
	}
	n := tr.resumed(logPeerID, t0.Add(10*time.Minute+time.Second))
	if n.level != hclog.Warn || n.msg != "member NaUuf2 reachable again after 10m, 1,201 failed attempts" {
		t.Fatalf("end of the outage: %q at %v", n.msg, n.level)
	}
	if n := tr.resumed(logPeerID, t0.Add(11*time.Minute)); n.msg != "" {
		t.Fatalf("a second resume logged %q", n.msg)
	}
}

func TestReachTrackerRules(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		at      time.Duration
		op      string // "fail", "contact", "resume", "remove"
		peer    string
		wantMsg string // prefix of the line wanted, "" for none
		level   hclog.Level
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"a blip logs nothing, its end only at DEBUG", []step{
			{0, "fail", "a", "", 0},
			{time.Second, "fail", "a", "", 0},
			{2 * time.Second, "resume", "a", "member a reachable again after 2s, 2 failed attempts", hclog.Debug},
		}},
		{"no contact alone never summarizes", []step{
			{0, "contact", "a", "", 0},
			{20 * time.Second, "contact", "a", "", 0},
			{21 * time.Second, "fail", "a", "member a unreachable for 21s, 1 attempts", hclog.Warn},
		}},
		{"peers are independent", []step{
			{0, "fail", "a", "", 0},
			{5 * time.Second, "fail", "b", "", 0},
			{10 * time.Second, "fail", "a", "member a unreachable for 10s", hclog.Warn},
			{11 * time.Second, "fail", "b", "", 0},
			{15 * time.Second, "fail", "b", "member b unreachable for 10s", hclog.Warn},
		}},
		{"a pause of over a minute starts a new outage", []step{
			{0, "fail", "a", "", 0},
			{10 * time.Second, "fail", "a", "member a unreachable for 10s", hclog.Warn},
			{2 * time.Minute, "fail", "a", "", 0},
			{2*time.Minute + 10*time.Second, "fail", "a", "member a unreachable for 10s, 2 attempts", hclog.Warn},
		}},
		{"a removed peer is forgotten", []step{
			{0, "fail", "a", "", 0},
			{10 * time.Second, "fail", "a", "member a unreachable", hclog.Warn},
			{11 * time.Second, "remove", "a", "", 0},
			{12 * time.Second, "resume", "a", "", 0},
		}},
	}
	for _, c := range cases {
		tr := newReachTracker()
		for i, s := range c.steps {
			var n reachNote
			now := t0.Add(s.at)
			switch s.op {
			case "fail":
				n = tr.failed(s.peer, "e", now, true)
			case "contact":
				n = tr.failed(s.peer, "", now, false)
			case "resume":
				n = tr.resumed(s.peer, now)
			case "remove":
				tr.removed(s.peer)
			}
			if !strings.HasPrefix(n.msg, s.wantMsg) || (s.wantMsg == "") != (n.msg == "") || (n.msg != "" && n.level != s.level) {
				t.Errorf("%s, step %d: got %q at %v, want %q at %v", c.name, i, n.msg, n.level, s.wantMsg, s.level)
			}
		}
	}
}

func TestReachTrackerBounded(t *testing.T) {
	tr := newReachTracker()
	t0 := time.Unix(1_000_000, 0)
	for i := range 3 * maxReachPeers {
		tr.failed(strings.Repeat("x", i+1), "e", t0.Add(time.Duration(i)), true)
	}
	if len(tr.outages) > maxReachPeers {
		t.Fatalf("%d outages followed, cap %d", len(tr.outages), maxReachPeers)
	}
}

func TestLogFormatHelpers(t *testing.T) {
	durations := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {400 * time.Millisecond, "0s"}, {40 * time.Second, "40s"}, {5 * time.Minute, "5m"},
		{5*time.Minute + 20*time.Second, "5m20s"}, {10*time.Minute + 29*time.Second, "10m"},
		{time.Hour, "1h"}, {90 * time.Minute, "1h30m"},
	}
	for _, c := range durations {
		if got := roundDuration(c.d); got != c.want {
			t.Errorf("roundDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	numbers := []struct {
		n    int
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {1200, "1,200"}, {1234567, "1,234,567"}, {-1200, "-1,200"}}
	for _, c := range numbers {
		if got := thousands(c.n); got != c.want {
			t.Errorf("thousands(%d) = %q, want %q", c.n, got, c.want)
		}
	}
	srv := hraft.Server{ID: logPeerID, Address: logPeerID}
	args := []interface{}{"peer", srv, "id", hraft.ServerID(logPeerID), "addr", hraft.ServerAddress(logPeerID), "n", 3, "s", "text"}
	got := shortNameArgs(args)
	want := []interface{}{"peer", "NaUuf2", "id", "NaUuf2", "addr", "NaUuf2", "n", 3, "s", "text"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("shortNameArgs = %v, want %v", got, want)
		}
	}
	if args[1] != srv {
		t.Fatal("shortNameArgs changed its argument")
	}
}

func TestRepeatKey(t *testing.T) {
	e1, e2 := errors.New("dial failed"), errors.New("refused")
	cases := []struct {
		name   string
		a, b   []interface{}
		same   bool
		limits bool
	}{
		{"same error, same peer", []interface{}{"peer", "p1", "error", e1}, []interface{}{"peer", "p1", "error", e1}, true, true},
		{"another peer", []interface{}{"peer", "p1", "error", e1}, []interface{}{"peer", "p2", "error", e1}, false, true},
		{"another error", []interface{}{"peer", "p1", "error", e1}, []interface{}{"peer", "p1", "error", e2}, false, true},
		{"peer as a Server", []interface{}{"target", hraft.Server{ID: "p1"}, "error", e1}, []interface{}{"target", hraft.ServerID("p1"), "error", e1}, true, true},
		{"no error: an event, not limited", []interface{}{"peer", "p1"}, []interface{}{"peer", "p1"}, false, false},
	}
	for _, c := range cases {
		ka, oka := repeatKey("tauraft", "m", c.a)
		kb, _ := repeatKey("tauraft", "m", c.b)
		if oka != c.limits || (c.limits && (ka == kb) != c.same) {
			t.Errorf("%s: keys %q, %q (limited %v)", c.name, ka, kb, oka)
		}
	}
}

// TestRaftLoggerDemotesAndSummarizes: through the wrapper, routine lines
// fall below WARN, failed attempts become summaries, other lines pass with
// peers named by their short ID.
func TestRaftLoggerDemotesAndSummarizes(t *testing.T) {
	sink := &lockedBuf{}
	now := time.Unix(1_000_000, 0)
	st := newRaftLogState(func() time.Time { return now })
	l := newRaftLogger(hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info, Output: sink}), st).Named("sub")
	srv := hraft.Server{ID: logPeerID, Address: logPeerID}
	l.Warn("no known peers, aborting election")
	l.Warn("heartbeat timeout reached, starting election", "last-leader-addr", hraft.ServerAddress(""), "last-leader-id", "")
	for range 30 {
		l.Error("failed to heartbeat to", "peer", hraft.ServerAddress(logPeerID), "error", errors.New("dial failed"))
		now = now.Add(500 * time.Millisecond)
	}
	l.Warn("appendEntries rejected, sending older logs", "peer", srv, "next", 3)
	l.Warn("failed to contact quorum of nodes, stepping down")
	l.Info("added peer, starting replication", "peer", hraft.ServerID(logPeerID))
	out := sink.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{
		"[INFO]  raft.sub: heartbeat timeout reached, starting election",
		`[WARN]  raft.sub: member NaUuf2 unreachable for 10s, 21 attempts: last_error="dial failed"`,
		"[WARN]  raft.sub: failed to contact quorum of nodes, stepping down",
		"[INFO]  raft.sub: added peer, starting replication: peer=NaUuf2",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i := range want {
		if !strings.Contains(lines[i], want[i]) {
			t.Fatalf("line %d is %q, want it to contain %q", i, lines[i], want[i])
		}
	}
}
