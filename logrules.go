package raft

// The rules that turn hashicorp/raft's log lines into lines an operator can
// read. Raft logs at WARN or ERROR much that is routine: an election at
// start, a follower catching up, and above all a member that is down, which
// the leader reports on every retry (every few hundred milliseconds, for as
// long as it is down). The rules below are pure: classifyRaftLine says what
// a line means, reachTracker turns a stream of failed attempts into a few
// summaries at growing intervals; the raftLogger in logging_raft.go applies
// them.

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// LogTimeFormat is the timestamp of every line tauraft writes, its own
// default logger and the CLI's lines on stdout and stderr alike: RFC 3339
// with milliseconds and the zone, so lines from several machines sort and
// compare.
const LogTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// lineClass is what a Raft log line means to an operator.
type lineClass int

const (
	// lineKeep: log the line as Raft wrote it.
	lineKeep lineClass = iota
	// lineRoutine: expected in normal operation (at start, during
	// catch-up, while an election settles): log it at DEBUG.
	lineRoutine
	// lineStartElection: an election with no leader known before, as at
	// start: log it at INFO. One after a known leader stays a warning.
	lineStartElection
	// lineAttemptFailed: an RPC to a peer failed; counted towards the
	// peer's "unreachable" summary instead of logged.
	lineAttemptFailed
	// lineNoContact: the leader has not heard from a peer lately; the same
	// outage as lineAttemptFailed, but not an attempt of its own.
	lineNoContact
	// lineReplicating: replication to a peer runs again (its pipeline
	// started): the peer is reachable.
	lineReplicating
	// linePeerRemoved: the peer left the configuration; its outage, if
	// any, is no longer followed.
	linePeerRemoved
)

// routineRaftLines are Raft's warnings that a healthy cluster logs: a
// member that starts before it knows its peers, a follower that is behind
// and is sent older entries, a vote refused because a leader is known.
var routineRaftLines = map[string]bool{
	"no known peers, aborting election":                   true,
	"not part of stable configuration, aborting election": true,
	"failed to get previous log":                          true,
	"previous log term mis-match":                         true,
	"appendEntries rejected, sending older logs":          true,
	"rejecting vote request since we have a leader":       true,
	"rejecting pre-vote request since we have a leader":   true,
	// Refusals of a stale candidate: every election with two candidates
	// (as at start) has them.
	"rejecting vote request since our last term is greater":                                                          true,
	"rejecting vote request since our last index is greater":                                                         true,
	"rejecting pre-vote request since our last term is greater":                                                      true,
	"rejecting pre-vote request since our last index is greater":                                                     true,
	"duplicate requestVote from":                                                                                     true,
	"skipping application of old log":                                                                                true,
	"pre-vote is disabled because it is not supported by the Transport":                                              true,
	"heartbeat timeout reached, not part of a stable configuration or a non-voter, not triggering a leader election": true,
}

// attemptLines are Raft's reports of a failed RPC to a peer, and the
// argument that names the peer.
var attemptLines = map[string]string{
	"failed to heartbeat to":                  "peer",
	"failed to appendEntries to":              "peer",
	"failed to start pipeline replication to": "peer",
	"failed to pipeline appendEntries":        "peer",
	"failed to send snapshot to":              "peer",
	"failed to install snapshot":              "peer",
	"failed to make requestVote RPC":          "target",
}

// splitVoteLine is Raft's warning that an election ended without a
// winner: routine when two candidates start at once, so INFO.
const splitVoteLine = "Election timeout reached, restarting election"

// classifyRaftLine says what a line Raft logged means and, for the lines
// about one peer, which peer (its ID as Raft knows it).
func classifyRaftLine(msg string, args []interface{}) (lineClass, string) {
	if routineRaftLines[msg] {
		return lineRoutine, ""
	}
	if key, ok := attemptLines[msg]; ok {
		if p := argPeer(args, key); p != "" {
			return lineAttemptFailed, p
		}
		return lineKeep, ""
	}
	switch msg {
	case splitVoteLine:
		return lineStartElection, ""
	case "heartbeat timeout reached, starting election":
		if s, _ := argValue(args, "last-leader-id").(string); s == "" {
			if a, _ := argValue(args, "last-leader-addr").(hraft.ServerAddress); a == "" {
				return lineStartElection, ""
			}
		}
	case "failed to contact":
		if p := argPeer(args, "server-id"); p != "" {
			return lineNoContact, p
		}
	case "pipelining replication":
		if p := argPeer(args, "peer"); p != "" {
			return lineReplicating, p
		}
	case "removed peer, stopping replication":
		if p := argPeer(args, "peer"); p != "" {
			return linePeerRemoved, p
		}
	}
	return lineKeep, ""
}

// argValue returns the value of key in hclog's key, value list, or nil.
func argValue(args []interface{}, key string) interface{} {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			return args[i+1]
		}
	}
	return nil
}

// argPeer returns the peer named by key, whatever form Raft gave it in.
func argPeer(args []interface{}, key string) string {
	return peerString(argValue(args, key))
}

// peerString is the ID of a peer given as Raft or libp2p names it, or "".
func peerString(v interface{}) string {
	switch p := v.(type) {
	case hraft.Server:
		return string(p.ID)
	case *hraft.Server:
		if p != nil {
			return string(p.ID)
		}
	case hraft.ServerID:
		return string(p)
	case hraft.ServerAddress:
		return string(p)
	case peer.ID:
		return p.String()
	case string:
		return p
	}
	return ""
}

// shortName names a peer for humans: the last six characters of its ID,
// enough to tell the members of a cluster apart.
func shortName(id string) string {
	if len(id) > 6 {
		return id[len(id)-6:]
	}
	return id
}

// shortNameArgs returns args with every peer value (a Server, ServerID or
// ServerAddress, the forms Raft names peers in) replaced by its short name.
// args itself is not changed: Raft may still hold it.
func shortNameArgs(args []interface{}) []interface{} {
	var out []interface{}
	for i := 1; i < len(args); i += 2 {
		var s string
		switch args[i].(type) {
		case hraft.Server, *hraft.Server, hraft.ServerID, hraft.ServerAddress:
			s = peerString(args[i])
		default:
			continue
		}
		if out == nil {
			out = append([]interface{}(nil), args...)
		}
		out[i] = shortName(s)
	}
	if out == nil {
		return args
	}
	return out
}

// Summary schedule of an outage: the first line once a peer has failed for
// reachFirstSummary (a blip of a few failed heartbeats, as during a leader
// change, logs nothing), then each time the outage has doubled in length,
// at most reachMaxInterval apart. A 10-minute outage logs 6 lines.
const (
	reachFirstSummary = 10 * time.Second
	reachMaxInterval  = time.Hour
	// reachForgetAfter: an outage without a failed attempt for this long
	// is over (this member stopped trying: it lost leadership, or the peer
	// was removed); the next failure starts a new one. Raft retries a peer
	// at least every few seconds while it tries at all.
	reachForgetAfter = time.Minute
	// maxReachPeers bounds the outages followed: past it, the oldest are
	// forgotten. A cluster has far fewer members.
	maxReachPeers = 256
)

// outage is one peer's run of failed attempts.
type outage struct {
	since    time.Time // first failed attempt
	last     time.Time // latest failed attempt
	attempts int
	logged   int       // summaries logged so far
	next     time.Time // when the next summary is due
	lastErr  string
}

// reachTracker follows the outages of a member's peers. Not safe for
// concurrent use; raftLogger locks around it.
type reachTracker struct {
	outages map[string]*outage
}

func newReachTracker() *reachTracker {
	return &reachTracker{outages: map[string]*outage{}}
}

// reachNote is a line the tracker wants logged, or the zero value for none.
type reachNote struct {
	msg   string
	level hclog.Level
	err   string
}

// failed records a failed attempt to reach id at now, with its error, and
// returns the summary to log, if one is due.
func (t *reachTracker) failed(id, errText string, now time.Time, attempt bool) reachNote {
	o := t.outages[id]
	if o != nil && now.Sub(o.last) > reachForgetAfter {
		o = nil
	}
	if o == nil {
		if len(t.outages) >= maxReachPeers {
			t.forgetOldest()
		}
		o = &outage{since: now, next: now.Add(reachFirstSummary)}
		t.outages[id] = o
	}
	o.last = now
	if attempt {
		o.attempts++
	}
	if errText != "" {
		o.lastErr = errText
	}
	if now.Before(o.next) || o.attempts == 0 {
		return reachNote{}
	}
	down := now.Sub(o.since)
	o.logged++
	o.next = now.Add(min(max(down, reachFirstSummary), reachMaxInterval))
	return reachNote{
		msg: fmt.Sprintf("member %s unreachable for %s, %s attempts",
			shortName(id), roundDuration(down), thousands(o.attempts)),
		level: hclog.Warn,
		err:   o.lastErr,
	}
}

// resumed records that id is reachable again and returns the line that
// says so: a warning if the outage was reported (its end belongs next to
// its start), DEBUG otherwise.
func (t *reachTracker) resumed(id string, now time.Time) reachNote {
	o := t.outages[id]
	if o == nil {
		return reachNote{}
	}
	delete(t.outages, id)
	level := hclog.Debug
	if o.logged > 0 {
		level = hclog.Warn
	}
	return reachNote{
		msg: fmt.Sprintf("member %s reachable again after %s, %s failed attempts",
			shortName(id), roundDuration(now.Sub(o.since)), thousands(o.attempts)),
		level: level,
	}
}

// removed forgets id's outage: the peer is no longer in the configuration.
func (t *reachTracker) removed(id string) { delete(t.outages, id) }

func (t *reachTracker) forgetOldest() {
	var oldest string
	var at time.Time
	for id, o := range t.outages {
		if oldest == "" || o.last.Before(at) {
			oldest, at = id, o.last
		}
	}
	delete(t.outages, oldest)
}

// roundDuration shortens a duration for a log line: whole seconds under 10
// minutes, whole minutes above ("45s", "5m0s" becomes "5m").
func roundDuration(d time.Duration) string {
	if d >= 10*time.Minute {
		d = d.Round(time.Minute)
	} else {
		d = d.Round(time.Second)
	}
	s := d.String()
	if d >= time.Minute && d%time.Minute == 0 {
		s = strings.TrimSuffix(s, "0s") // "5m0s": "5m"
	}
	if d >= time.Hour && d%time.Hour == 0 {
		s = strings.TrimSuffix(s, "0m") // "1h0m": "1h"
	}
	return s
}

// thousands writes n with commas between groups of three digits: 1,200.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
