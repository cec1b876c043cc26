package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tauraft/raft/rafttest"
)

// runStatus runs "tauraft status ..." for at most 30 s and returns its exit
// code and outputs.
func runStatus(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, outBuf.String(), errBuf.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), outBuf.String(), errBuf.String()
	}
	t.Fatalf("run status %v: %v", args, err)
	return -1, "", ""
}

// statusRow is one member's row of the status table.
type statusRow struct {
	suffrage, state, term, commit, applied, lag string
	leader                                      bool
}

// parseStatus reads the table "tauraft status" prints: a header line, the
// column names, then one row per member keyed by peer ID.
func parseStatus(t *testing.T, out string) map[string]statusRow {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "asked ") || strings.Join(strings.Fields(lines[1]), " ") != "MEMBER SUFFRAGE LEADER STATE TERM COMMIT APPLIED LAG" {
		t.Fatalf("status output is not a table:\n%s", out)
	}
	rows := map[string]statusRow{}
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		r := statusRow{}
		if len(f) == 8 && f[2] == "*" {
			r.leader, f = true, append(f[:2], f[3:]...)
		}
		if len(f) < 7 {
			t.Fatalf("status row %q has %d columns", l, len(f))
		}
		r.suffrage, r.state, r.term, r.commit, r.applied, r.lag = f[1], f[2], f[3], f[4], f[5], strings.Join(f[6:], " ")
		rows[f[0]] = r
	}
	return rows
}

// TestStatusCommand checks "tauraft status" against three "tauraft node"
// processes: asked through any one member, the table lists every member
// as a voter with the leader marked once, each member's own term and
// indexes, and, after a barrier read, a lag of 0 everywhere.
func TestStatusCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	const ns = "/raft/clistatus"
	procs, addrs := startCluster(t, bin, t.TempDir(), 3, "--namespace", ns, "--preset", "local", "--bootstrap-timeout", "2s")
	ids := map[string]bool{}
	for _, p := range procs {
		ids[p.peerID(t)] = true
	}
	kvUntil(t, bin, "--namespace", ns, "--peer", addrs[0], "--timeout", "5s", "set", "k", "v")
	kvUntil(t, bin, "--namespace", ns, "--peer", addrs[1], "get", "--barrier", "3s", "k")

	for i, a := range addrs {
		var out string
		var rows map[string]statusRow
		// The leader refreshes its reports of the others when asked, so
		// the first table may still show an older lag.
		rafttest.WaitFor(t, 20*time.Second, "status through member "+procs[i].name+" to show every member caught up", func() bool {
			code, o, stderr := runStatus(t, bin, "--namespace", ns, "--peer", a, "--timeout", "5s")
			if code != exitOK {
				t.Logf("status through %s: exit %d: %s", procs[i].name, code, strings.TrimSpace(stderr))
				return false
			}
			out, rows = o, parseStatus(t, o)
			for _, r := range rows {
				if r.lag != "0" || r.state == "unreachable" || r.applied != r.commit {
					return false
				}
			}
			return true
		})
		if i == 0 {
			t.Logf("status through %s:\n%s", procs[i].name, out)
		}
		leaders := 0
		for id, r := range rows {
			if !ids[id] {
				t.Errorf("status lists %s, not a member:\n%s", id, out)
			}
			if r.suffrage != "voter" {
				t.Errorf("member %s is %s:\n%s", id, r.suffrage, out)
			}
			if r.leader {
				leaders++
				if r.state != "leader" {
					t.Errorf("marked leader %s says it is %s:\n%s", id, r.state, out)
				}
			} else if r.state != "follower" {
				t.Errorf("member %s is %s:\n%s", id, r.state, out)
			}
			if r.term == "-" || r.term == "0" {
				t.Errorf("member %s: term %s:\n%s", id, r.term, out)
			}
		}
		if len(rows) != 3 || leaders != 1 {
			t.Errorf("status through %s lists %d members, %d marked leader; want 3 and 1:\n%s", procs[i].name, len(rows), leaders, out)
		}
	}
	if code, _, stderr := runStatus(t, bin, "--namespace", ns); code != exitUsage {
		t.Errorf("status without --peer: exit %d (%s), want %d", code, stderr, exitUsage)
	}
	for _, p := range procs {
		p.stop(t)
	}
}
