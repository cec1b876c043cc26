package raft

// Hostile outsiders against an open namespace (no key): what one outsider
// with a libp2p host, and a few more identities, can do to a running cluster
// by speaking the command protocol and the Raft transport directly.
//
//   - TestHostileOpenSybilClaim: five identities claim, and confirm to each
//     other, a formed 5-voter cluster; no acknowledged key may be lost (kept
//     by the cluster, or in the backup files of members that gave their
//     cluster up), and once they leave the members form one working cluster.
//   - TestHostileOpenForgedRPCs: forged AppendEntries (term 2^64-1, own
//     header and a member's), RequestVote and pre-vote, TimeoutNow,
//     InstallSnapshot and a 200 ms AppendEntries flood change neither a
//     member's term nor the leader; writes go on, also after a real leader
//     change; the flood holds off no election when the leader is cut off;
//     the cluster is whole after the old leader returns and restarts.
//   - TestHostileOpenForgedRPCsJoiner: forged RequestVote, or AppendEntries,
//     of term 2^64-1 aimed at a node while it joins (no configuration yet)
//     must not reach the cluster's terms.
//   - TestHostileOpenFakeJoins: joinVoter naming made-up peers, directly, via
//     a follower, or posing as a forwarding member, adds nobody; a real node
//     asking for itself is added.
//   - TestHostileOpenExchangeBomb: six ~3 MB exchangePeers lists of made-up
//     peers with 64 long addresses each, to each member, from an attacker
//     process: heap growth under 64 MiB, trackers within their cap, no
//     made-up peer proven or passed on, writes go on.
//
// Every test logs one "FIGURES" line with what it measured. Helpers are
// prefixed with "ho" (hostile open).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/tauraft/raft/rafttest"
)

// hoMaxTerm is the term of the forged Raft RPCs: a member that took it could
// never hold an election again (term+1 wraps to 0).
const hoMaxTerm = uint64(math.MaxUint64)

// hoSaneTerm bounds the terms a test's own elections can reach: anything
// above it came from a forged RPC.
const hoSaneTerm = uint64(1) << 20

// hoHeapBudget is the most heap growth the exchange bomb may cause.
const hoHeapBudget = 64 << 20

// ---- helpers ----

// hoServe makes h answer Protocol(ns) like a member would, with answer
// deciding what it says: the fake command service of the attackers.
func hoServe(h host.Host, ns string, answer func(from peer.ID, req *request) *response) {
	h.SetStreamHandler(Protocol(ns), func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		payload, _, _, err := codec{}.readMessage(s, false, nil)
		if err != nil {
			_ = s.Reset()
			return
		}
		req, err := decodeRequest(payload)
		if err != nil {
			_ = s.Reset()
			return
		}
		body, err := codec{}.encode(answer(s.Conn().RemotePeer(), req))
		if err != nil || writeFrame(s, body) != nil {
			_ = s.Reset()
		}
	})
}

// hoSend sends a frame built in advance (varint length, envelope, CBOR) to a
// member's command service from h and decodes the answer. It does not touch
// the test, so it may run on any goroutine.
func hoSend(h host.Host, to peer.ID, proto protocol.ID, frame []byte, timeout time.Duration) (*response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := h.NewStream(ctx, to, proto)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(timeout))
	if _, err := s.Write(frame); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("write: %w", err)
	}
	_ = s.CloseWrite()
	payload, _, _, err := codec{}.readMessage(s, true, nil)
	if err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("read answer: %w", err)
	}
	var resp response
	if err := wireDec.Unmarshal(payload, &resp); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	return &resp, nil
}

// hoMadeUpPeers returns n peer IDs that no host runs.
func hoMadeUpPeers(t testing.TB, n int) []peer.ID {
	t.Helper()
	out := make([]peer.ID, n)
	for i := range out {
		_, pub, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = peer.IDFromPublicKey(pub); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// hoRaft returns member i's running Raft.
func hoRaft(t testing.TB, tc *testCluster, i int) *hraft.Raft {
	t.Helper()
	c, ok := tc.get(i).(*cluster)
	if !ok {
		t.Fatalf("member %d is not running", i)
	}
	r, err := c.r()
	if err != nil {
		t.Fatalf("member %d: %v", i, err)
	}
	return r
}

// hoTerms returns each member's current Raft term.
func hoTerms(t testing.TB, tc *testCluster, members []int) map[int]uint64 {
	t.Helper()
	out := map[int]uint64{}
	for _, i := range members {
		out[i] = hoRaft(t, tc, i).CurrentTerm()
	}
	return out
}

// hoHeader is an RPC header naming id as sender.
func hoHeader(id peer.ID) hraft.RPCHeader {
	s := []byte(id.String())
	return hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: s, Addr: s}
}

// hoBackups lists the backup files in dir (see backup.go).
func hoBackups(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasPrefix(e.Name(), "dropped-") && strings.HasSuffix(e.Name(), ".tauraft") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// hoReadBackup reads one backup file with ReadBackup.
func hoReadBackup(t testing.TB, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open backup: %v", err)
	}
	defer f.Close()
	out := map[string]string{}
	if err := ReadBackup(f, func(k string, v []byte) error {
		out[k] = string(v)
		return nil
	}); err != nil {
		t.Fatalf("ReadBackup %s: %v", path, err)
	}
	return out
}

// hoWrite writes key=value through the current leader, once (no retry), and
// waits until every member in on holds it.
func hoWrite(t testing.TB, tc *testCluster, leader int, on []int, key, value string) error {
	t.Helper()
	if err := tc.get(leader).Set(key, []byte(value), 5*time.Second); err != nil {
		return err
	}
	for _, i := range on {
		tc.waitValue(i, key, []byte(value))
	}
	return nil
}

// ---- 1. the Sybil claim ----

// Three real members and acknowledged writes; five attacker identities serve
// the command protocol and answer every exchange, the merge checks
// (confirmCluster) included, with a status claiming a formed 5-voter cluster
// of the five, led by the first. A member that believes them drops its
// data: every acknowledged key must then be in the backup file it wrote
// first (and named in its WARN line), or still in the cluster. Once the
// attackers leave, the members form one working cluster again.
func TestHostileOpenSybilClaim(t *testing.T) {
	const ns = "/raft/hostile-open-sybil"
	const nKeys = 20
	members := []int{0, 1, 2}
	attackers := []int{3, 4, 5, 6, 7}
	mesh := rafttest.NewMesh(t, len(members)+len(attackers), rafttest.Connected())
	logs := []*eiLogBuf{{}, {}, {}}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("member %d log:\n%s", i, l.String())
			}
		}
	})

	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach(members, func(i int) []Option {
		return append(forceFirst(i), WithLogger(hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Info, Output: logs[i]})))
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, members...)
	acked := map[string]string{}
	for k := range nKeys {
		key, value := fmt.Sprintf("sybil-%02d", k), fmt.Sprintf("value-%02d", k)
		tc.set(key, []byte(value))
		acked[key] = value
	}
	for _, i := range members {
		tc.waitValue(i, fmt.Sprintf("sybil-%02d", nKeys-1), []byte(fmt.Sprintf("value-%02d", nKeys-1)))
	}
	dirs := map[int]string{}
	for _, i := range members {
		dirs[i] = tc.get(i).(*cluster).backupDir()
	}

	// The attackers: each says it is a voter of the same 5-voter cluster,
	// led by the first, and lists the others.
	var sybilIDs [][]byte
	var sybilList []wirePeer
	for _, a := range attackers {
		sybilIDs = append(sybilIDs, []byte(mesh.ID(a)))
		wp := wirePeer{ID: []byte(mesh.ID(a))}
		for _, addr := range mesh.Node(a).Peer().Addrs() {
			wp.Addrs = append(wp.Addrs, addr.Bytes())
		}
		sybilList = append(sybilList, wp)
	}
	claim := &status{Leader: sybilIDs[0], Formed: true, Member: true, Voters: len(sybilIDs), VoterIDs: sybilIDs}
	var exchanges, joins atomic.Int64
	attackStart := time.Now()
	for _, a := range attackers {
		hoServe(mesh.Node(a).Peer(), ns, func(from peer.ID, req *request) *response {
			switch req.Cmd {
			case cmdExchangePeers:
				exchanges.Add(1)
				return &response{Peers: sybilList, Status: claim}
			case cmdJoinVoter:
				joins.Add(1)
			}
			return errorResponse(ErrNotLeader)
		})
		if _, err := mesh.Node(a).Discovery().Advertise(t.Context(), ns); err != nil {
			t.Fatalf("advertise attacker %d: %v", a, err)
		}
	}

	// Exposure: until every member has given its cluster up (written a
	// backup), or 25 s (about eight membership rounds) if some never do.
	firstReset := time.Duration(-1)
	deadline := time.Now().Add(25 * time.Second)
	for time.Now().Before(deadline) {
		all := true
		for _, i := range members {
			if n := len(hoBackups(dirs[i])); n == 0 {
				all = false
			} else if firstReset < 0 {
				firstReset = time.Since(attackStart)
			}
		}
		if all {
			break
		}
		time.Sleep(rafttest.PollInterval)
	}
	exposure := time.Since(attackStart)

	// The attackers leave.
	for _, a := range attackers {
		mesh.Node(a).Peer().RemoveStreamHandler(Protocol(ns))
		mesh.Stop(a)
	}
	left := time.Now()

	// One working cluster again: the three are the voters, with one leader,
	// and a write and a barrier read on every member succeed.
	tc.waitVoters(45*time.Second, members...)
	l := tc.leader(20 * time.Second)
	tc.set("after-sybil", []byte("ok"))
	for _, i := range members {
		c := tc.get(i)
		tc.mustRetry(fmt.Sprintf("barrier on member %d", i), 20*time.Second, nil, func() error { return c.Barrier(5 * time.Second) })
		if v, ok := c.Get("after-sybil"); !ok || string(v) != "ok" {
			t.Errorf("member %d: after a barrier, Get(after-sybil) = %q, %v", i, v, ok)
		}
	}
	recovery := time.Since(left)

	// Every acknowledged key: still in the cluster, or in a backup file.
	var files []string
	resets := map[int]int{}
	for _, i := range members {
		fs := hoBackups(dirs[i])
		resets[i] = len(fs)
		files = append(files, fs...)
		for _, f := range fs {
			if !logs[i].hasLine("kept this member's data", f) {
				t.Errorf("member %d wrote backup %s but no WARN line names it", i, f)
			}
		}
	}
	backedUp := map[string]map[string]bool{}
	for _, f := range files {
		for k, v := range hoReadBackup(t, f) {
			if backedUp[k] == nil {
				backedUp[k] = map[string]bool{}
			}
			backedUp[k][v] = true
		}
	}
	lc := tc.get(l)
	inCluster, onlyBackup := 0, 0
	var lost []string
	for _, k := range slices.Sorted(maps.Keys(acked)) {
		want := acked[k]
		if v, ok := lc.Get(k); ok && string(v) == want {
			inCluster++
		} else if backedUp[k][want] {
			onlyBackup++
		} else {
			lost = append(lost, k)
		}
	}
	if len(lost) > 0 {
		t.Errorf("acknowledged keys neither in the cluster nor in any backup file: %v", lost)
	}
	outcome := "no member dropped its data"
	if len(files) > 0 {
		outcome = fmt.Sprintf("members gave their cluster up %d times (backup files per member %v)", len(files), resets)
	}
	dropLines := 0
	for _, lg := range logs {
		dropLines += strings.Count(lg.String(), "found another cluster in the namespace")
	}
	t.Logf("FIGURES sybil: %s; acknowledged keys %d: %d still in the cluster, %d only in backup files, %d lost; "+
		"first reset %v after the attack began, exposure %v, %d merge WARN lines, attacker answered %d exchanges and %d joins; "+
		"one working cluster again %v after the attackers left",
		outcome, len(acked), inCluster, onlyBackup, len(lost), firstReset.Round(time.Millisecond),
		exposure.Round(time.Millisecond), dropLines, exchanges.Load(), joins.Load(), recovery.Round(time.Millisecond))
}

// ---- 2. forged Raft RPCs ----

// hoForger sends forged Raft RPCs from a non-member host through hashicorp's
// NetworkTransport on TransportProtocol(ns).
type hoForger struct {
	mesh  *rafttest.Mesh
	trans *hraft.NetworkTransport
	self  peer.ID
	entry []byte // a valid Set command, for forged log entries
}

func newHoForger(t testing.TB, mesh *rafttest.Mesh, ns string, from int) *hoForger {
	return &hoForger{
		mesh: mesh, self: mesh.ID(from),
		trans: eiDialOnlyTransport(t, mesh.Node(from).Peer(), ns, nil),
		entry: mustCommand(t, SetOp("forged", []byte("by an outsider"))),
	}
}

// appendEntries sends an AppendEntries of term 2^64-1 carrying one forged
// entry, with header as the sender, and returns the transport's error.
func (f *hoForger) appendEntries(to peer.ID, header hraft.RPCHeader, withEntry bool) (*hraft.AppendEntriesResponse, error) {
	req := &hraft.AppendEntriesRequest{RPCHeader: header, Term: hoMaxTerm, LeaderCommitIndex: 1 << 40}
	if withEntry {
		req.Entries = []*hraft.Log{{Index: 1, Term: hoMaxTerm, Type: hraft.LogCommand, Data: f.entry}}
	}
	var resp hraft.AppendEntriesResponse
	err := f.trans.AppendEntries(hraft.ServerID(to.String()), hraft.ServerAddress(to.String()), req, &resp)
	return &resp, err
}

// requestVote sends a RequestVote of term 2^64-1 with LeadershipTransfer.
func (f *hoForger) requestVote(to peer.ID, header hraft.RPCHeader) (*hraft.RequestVoteResponse, error) {
	req := &hraft.RequestVoteRequest{RPCHeader: header, Term: hoMaxTerm, LastLogIndex: hoMaxTerm, LastLogTerm: hoMaxTerm, LeadershipTransfer: true}
	var resp hraft.RequestVoteResponse
	err := f.trans.RequestVote(hraft.ServerID(to.String()), hraft.ServerAddress(to.String()), req, &resp)
	return &resp, err
}

// requestPreVote sends a RequestPreVote of term 2^64-1.
func (f *hoForger) requestPreVote(to peer.ID, header hraft.RPCHeader) (*hraft.RequestPreVoteResponse, error) {
	req := &hraft.RequestPreVoteRequest{RPCHeader: header, Term: hoMaxTerm, LastLogIndex: hoMaxTerm, LastLogTerm: hoMaxTerm}
	var resp hraft.RequestPreVoteResponse
	err := f.trans.RequestPreVote(hraft.ServerID(to.String()), hraft.ServerAddress(to.String()), req, &resp)
	return &resp, err
}

// timeoutNow sends a TimeoutNow (an order to start an election at once).
func (f *hoForger) timeoutNow(to peer.ID, header hraft.RPCHeader) error {
	var resp hraft.TimeoutNowResponse
	return f.trans.TimeoutNow(hraft.ServerID(to.String()), hraft.ServerAddress(to.String()), &hraft.TimeoutNowRequest{RPCHeader: header}, &resp)
}

// installSnapshot sends an InstallSnapshot of term 2^64-1 whose data is
// garbage.
func (f *hoForger) installSnapshot(to peer.ID, header hraft.RPCHeader) error {
	data := bytes.Repeat([]byte{0xA5}, 4096)
	req := &hraft.InstallSnapshotRequest{
		RPCHeader: header, SnapshotVersion: hraft.SnapshotVersionMax, Term: hoMaxTerm,
		Leader: []byte(f.self.String()), LastLogIndex: 1 << 40, LastLogTerm: hoMaxTerm,
		Configuration: hraft.EncodeConfiguration(hraft.Configuration{Servers: []hraft.Server{{
			Suffrage: hraft.Voter, ID: hraft.ServerID(f.self.String()), Address: hraft.ServerAddress(f.self.String()),
		}}}),
		ConfigurationIndex: 1, Size: int64(len(data)),
	}
	var resp hraft.InstallSnapshotResponse
	return f.trans.InstallSnapshot(hraft.ServerID(to.String()), hraft.ServerAddress(to.String()), req, &resp, bytes.NewReader(data))
}

// hoForgedStep is one kind of forged RPC, sent to every member.
type hoForgedStep struct {
	name string
	send func(to int) error // nil: refused or harmless; else what went wrong
}

// hoForgedSteps are the forged RPCs of the outsider at leader l (impersonated
// where a step poses as a member).
func hoForgedSteps(f *hoForger, members []int, l int) []hoForgedStep {
	mesh := f.mesh
	own := hoHeader(f.self)
	// The member each target is sent an impersonation of: the leader, or
	// (for the leader itself) a follower.
	posedAs := func(to int) peer.ID {
		if to != l {
			return mesh.ID(l)
		}
		for _, i := range members {
			if i != l {
				return mesh.ID(i)
			}
		}
		return mesh.ID(l)
	}
	refused := func(what string, err error, resp any) error {
		if err == nil {
			return fmt.Errorf("%s was answered (not refused): %+v", what, resp)
		}
		return nil
	}
	return []hoForgedStep{
		{"AppendEntries term 2^64-1, outsider's own header", func(to int) error {
			resp, err := f.appendEntries(mesh.ID(to), own, true)
			return refused("AppendEntries", err, resp)
		}},
		{"AppendEntries term 2^64-1 impersonating a member (header ID/Addr of another member)", func(to int) error {
			resp, err := f.appendEntries(mesh.ID(to), hoHeader(posedAs(to)), true)
			return refused("impersonated AppendEntries", err, resp)
		}},
		{"RequestVote term 2^64-1 with an empty ID, LeadershipTransfer", func(to int) error {
			h := own
			h.ID = nil
			resp, err := f.requestVote(mesh.ID(to), h)
			return refused("RequestVote with an empty ID", err, resp)
		}},
		{"RequestVote term 2^64-1 with an empty ID and the leader's Addr, LeadershipTransfer", func(to int) error {
			h := hoHeader(mesh.ID(l))
			h.ID = nil
			resp, err := f.requestVote(mesh.ID(to), h)
			return refused("RequestVote with an empty ID and the leader's Addr", err, resp)
		}},
		{"RequestVote term 2^64-1 with the outsider's own ID, LeadershipTransfer", func(to int) error {
			// Raft itself refuses a candidate outside its configuration;
			// an answer is fine as long as it grants nothing.
			resp, err := f.requestVote(mesh.ID(to), own)
			if err == nil && resp.Granted {
				return fmt.Errorf("vote granted to the outsider: %+v", resp)
			}
			return nil
		}},
		{"RequestPreVote term 2^64-1 with the outsider's own ID", func(to int) error {
			resp, err := f.requestPreVote(mesh.ID(to), own)
			if err == nil && resp.Granted {
				return fmt.Errorf("pre-vote granted to the outsider: %+v", resp)
			}
			return nil
		}},
		{"TimeoutNow from the outsider", func(to int) error {
			return refused("TimeoutNow", f.timeoutNow(mesh.ID(to), own), nil)
		}},
		{"TimeoutNow impersonating the leader", func(to int) error {
			return refused("impersonated TimeoutNow", f.timeoutNow(mesh.ID(to), hoHeader(posedAs(to))), nil)
		}},
		{"InstallSnapshot term 2^64-1 from the outsider", func(to int) error {
			return refused("InstallSnapshot", f.installSnapshot(mesh.ID(to), own), nil)
		}},
	}
}

// hoCheckUnchanged checks that every member still has the term it had and
// follows leader l, and that a write through l succeeds and reaches all.
func hoCheckUnchanged(t *testing.T, tc *testCluster, members []int, l int, terms map[int]uint64, step, key string) {
	t.Helper()
	leaderID := tc.mesh.ID(l)
	for _, i := range members {
		r := hoRaft(t, tc, i)
		if got := r.CurrentTerm(); got != terms[i] {
			t.Errorf("after %s: member %d term %d, was %d", step, i, got, terms[i])
		}
		if _, id := r.LeaderWithID(); id != hraft.ServerID(leaderID.String()) {
			t.Errorf("after %s: member %d follows %q, want the leader %d (%s)", step, i, id, l, shortID(leaderID))
		}
	}
	if err := hoWrite(t, tc, l, members, key, "v-"+key); err != nil {
		tc.dumpState()
		t.Fatalf("after %s: write through the leader failed: %v", step, err)
	}
}

// Forged Raft RPCs from a non-member host, with hashicorp's own transport:
// nothing they carry reaches Raft, so no member's term moves, the leader
// stays, and writes go on; a 3 s flood of forged AppendEntries every 200 ms
// holds off nobody; after a real leader change the cluster is as healthy,
// and stays so across a member's restart.
func TestHostileOpenForgedRPCs(t *testing.T) {
	const ns = "/raft/hostile-open-rpc"
	members := []int{0, 1, 2}
	const outsider = 3
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach(members, forceFirst); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, members...)
	l := tc.leader(15 * time.Second)
	tc.set("before", []byte("v"))
	for _, i := range members {
		tc.waitValue(i, "before", []byte("v"))
	}
	start := hoTerms(t, tc, members)
	f := newHoForger(t, mesh, ns, outsider)

	n := 0
	run := func(l int) {
		terms := hoTerms(t, tc, members)
		for _, step := range hoForgedSteps(f, members, l) {
			for _, i := range members {
				if err := step.send(i); err != nil {
					t.Errorf("%s to member %d: %v", step.name, i, err)
				}
			}
			n++
			hoCheckUnchanged(t, tc, members, l, terms, step.name, fmt.Sprintf("forged-%d", n))
		}
	}
	run(l)

	// The flood: forged AppendEntries (heartbeats of term 2^64-1, own
	// header and the leader's alternately) to every member every 200 ms
	// for 3 s, while the leader takes writes and every member is watched.
	terms := hoTerms(t, tc, members)
	leaderID := hraft.ServerID(mesh.ID(l).String())
	fl := startHoFlood(f, hoIDs(mesh, members), mesh.ID(l))
	writes, leaderless := 0, 0
	var writeErrs []error
	tick := time.NewTicker(100 * time.Millisecond)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); <-tick.C {
		for _, i := range members {
			if _, id := hoRaft(t, tc, i).LeaderWithID(); id != leaderID {
				leaderless++
			}
		}
		if err := tc.get(l).Set(fmt.Sprintf("flood-%d", writes), []byte("v"), 5*time.Second); err != nil {
			writeErrs = append(writeErrs, err)
		}
		writes++
	}
	tick.Stop()
	fl.end(t)
	if len(writeErrs) > 0 {
		t.Errorf("during the flood %d of %d writes failed, first: %v", len(writeErrs), writes, writeErrs[0])
	}
	if leaderless > 0 {
		t.Errorf("during the flood a member did not follow the leader %d times", leaderless)
	}
	hoCheckUnchanged(t, tc, members, l, terms, "the AppendEntries flood", "after-flood")

	// A real leader change, then the forged RPCs again against the new
	// leadership.
	if err := tc.get(l).TransferLeadership(); err != nil {
		t.Fatalf("TransferLeadership: %v", err)
	}
	first := l
	tc.waitFor(15*time.Second, "a new leader after the transfer", func() bool {
		for _, i := range members {
			if i != first && tc.get(i).IsLeader() {
				return true
			}
		}
		return false
	})
	l = tc.leader(15 * time.Second)
	afterTransfer := hoTerms(t, tc, members)
	tc.set("after-transfer", []byte("v"))
	run(l)

	// The leader drops off the network while the flood goes on, posing as
	// it: the forged heartbeats must not hold off the election of a new
	// leader among the other two.
	gone := l
	rest := slices.DeleteFunc(slices.Clone(members), func(i int) bool { return i == gone })
	fl2 := startHoFlood(f, hoIDs(mesh, rest), mesh.ID(gone))
	mesh.Isolate(gone)
	cut := time.Now()
	afterCutLeader := tc.leaderAmong(15*time.Second, rest...)
	elected := time.Since(cut)
	tc.set("leader-cut-off", []byte("v"), rest...)
	fl2.end(t)
	afterCut := hoTerms(t, tc, rest)

	// It comes back, then restarts: the cluster is one, with sane terms,
	// and takes writes that reach it.
	mesh.Rejoin(gone)
	tc.waitVoters(20*time.Second, members...)
	tc.leader(20 * time.Second)
	tc.stop(gone)
	tc.mustStart(gone)
	tc.waitVoters(20*time.Second, members...)
	l = tc.leader(20 * time.Second)
	tc.set("after-restart", []byte("v"))
	tc.waitValue(gone, "after-restart", []byte("v"))
	final := hoTerms(t, tc, members)
	for _, i := range members {
		if final[i] >= hoSaneTerm {
			t.Errorf("member %d ended at term %d", i, final[i])
		}
		if v, ok := tc.get(i).Get("forged"); ok {
			t.Errorf("member %d holds the forged entry's key: %q", i, v)
		}
	}
	t.Logf("FIGURES forged RPCs: terms at start %v, after %d forged steps and the flood %v, after the transfer %v, "+
		"with the leader %d cut off %v, after its return and restart %v; flood with a leader: %s, %d writes during it, %d failed, "+
		"%d leaderless samples; flood with the leader cut off: %s, new leader %d elected %v after the cut; leaders: %d, after the transfer %d, after the cut %d, at the end %d",
		start, n, terms, afterTransfer, gone, afterCut, final, fl, writes, len(writeErrs), leaderless,
		fl2, afterCutLeader, elected.Round(time.Millisecond), first, gone, afterCutLeader, l)
}

// hoIDs returns the peer IDs of the given mesh nodes.
func hoIDs(mesh *rafttest.Mesh, idx []int) []peer.ID {
	out := make([]peer.ID, len(idx))
	for k, i := range idx {
		out[k] = mesh.ID(i)
	}
	return out
}

// hoFlood is a running flood of forged AppendEntries heartbeats.
type hoFlood struct {
	stop           chan struct{}
	wg             sync.WaitGroup
	sent, answered atomic.Int64
	mu             sync.Mutex
	answers        []string
}

// startHoFlood sends a forged AppendEntries heartbeat of term 2^64-1 to each
// of targets every 200 ms until end, alternately with the outsider's own
// header and posing as posedAs (not to posedAs itself).
func startHoFlood(f *hoForger, targets []peer.ID, posedAs peer.ID) *hoFlood {
	fl := &hoFlood{stop: make(chan struct{})}
	fl.wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for k := 0; ; k++ {
			for _, to := range targets {
				h := hoHeader(f.self)
				if k%2 == 1 && to != posedAs {
					h = hoHeader(posedAs)
				}
				resp, err := f.appendEntries(to, h, false)
				fl.sent.Add(1)
				if err == nil {
					fl.answered.Add(1)
					fl.mu.Lock()
					fl.answers = append(fl.answers, fmt.Sprintf("%s answered: %+v", shortID(to), *resp))
					fl.mu.Unlock()
				}
			}
			select {
			case <-fl.stop:
				return
			case <-tick.C:
			}
		}
	})
	return fl
}

// end stops the flood and fails the test if a member answered any of it.
func (fl *hoFlood) end(t *testing.T) {
	t.Helper()
	close(fl.stop)
	fl.wg.Wait()
	for _, a := range fl.answers {
		t.Errorf("a forged AppendEntries of the flood was answered: %s", a)
	}
}

func (fl *hoFlood) String() string {
	return fmt.Sprintf("%d forged AppendEntries, %d answered", fl.sent.Load(), fl.answered.Load())
}

// The forged RPCs aimed at a node while it joins: until a leader has
// replicated to it, it has no configuration, and then the transport admits
// AppendEntries and InstallSnapshot from anyone (admitRPC), and votes always
// reach Raft, which grants them to anyone while its configuration is empty
// (hashicorp skips its configuration check then). An outsider sends the
// joiner one kind of forged RPC of term 2^64-1, its own header (the guard
// passes it), every 20 ms from before the joiner starts until it is a voter
// (or a member's term shows the forged one). The joiner must refuse them,
// become a voter, and the cluster keep small terms and take writes.
func TestHostileOpenForgedRPCsJoiner(t *testing.T) {
	for _, vector := range []string{"RequestVote", "AppendEntries"} {
		t.Run(vector, func(t *testing.T) { hoJoinerUnderForgedRPCs(t, vector) })
	}
}

func hoJoinerUnderForgedRPCs(t *testing.T, vector string) {
	ns := "/raft/hostile-open-joiner-" + strings.ToLower(vector)
	members := []int{0, 1, 2}
	const outsider, joiner = 3, 4
	all := append(slices.Clone(members), joiner)
	mesh := rafttest.NewMesh(t, 5, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach(members, forceFirst); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, members...)
	tc.set("before", []byte("v"))
	before := hoTerms(t, tc, members)
	f := newHoForger(t, mesh, ns, outsider)
	to := mesh.ID(joiner)
	own := hoHeader(f.self)

	// termOf is member i's term, or 0 while it is not running.
	termOf := func(i int) uint64 {
		if c, ok := tc.get(i).(*cluster); ok {
			if r, err := c.r(); err == nil {
				return r.CurrentTerm()
			}
		}
		return 0
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, taken atomic.Int64
	var maxJoinerTerm atomic.Uint64
	wg.Go(func() {
		untilClosed(stop, func(int) {
			sent.Add(1)
			switch vector {
			case "RequestVote":
				if resp, err := f.requestVote(to, own); err == nil && resp.Granted {
					taken.Add(1)
				}
			case "AppendEntries":
				if resp, err := f.appendEntries(to, own, false); err == nil && resp.Success {
					taken.Add(1)
				}
			}
			for {
				cur, term := maxJoinerTerm.Load(), termOf(joiner)
				if term <= cur || maxJoinerTerm.CompareAndSwap(cur, term) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond) // the forger's pace
		})
	})
	stopForger := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopForger()

	started := time.Now()
	if _, err := tc.start(joiner); err != nil {
		t.Fatalf("start joiner: %v", err)
	}
	want := fmt.Sprint(sortedIDs(mesh, all...))
	joined, forgedTerm := false, false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(rafttest.PollInterval) {
		joined = true
		for _, i := range all {
			if termOf(i) >= hoSaneTerm {
				forgedTerm = true
			}
			if fmt.Sprint(voters(tc.get(i))) != want {
				joined = false
			}
		}
		if joined || forgedTerm {
			break
		}
	}
	took := time.Since(started)
	stopForger()

	// With the outsider gone: does the cluster take writes?
	stopped := time.Now()
	writeErr := retry(8*time.Second, nil, func() error {
		return tc.onLeader(nil, func(c Cluster) error { return c.Set("after-join", []byte("v"), 3*time.Second) })
	})
	terms := map[int]uint64{}
	for _, i := range all {
		terms[i] = termOf(i)
	}
	joinerTerm := max(maxJoinerTerm.Load(), terms[joiner])
	t.Logf("FIGURES joiner (%s): %d forged RPCs sent, %d taken (granted/succeeded); highest joiner term seen %d; "+
		"joined %v, a forged term reached a member %v, after %v; terms before %v, after %v; "+
		"a write after the outsider stopped: %v (tried for %v)",
		vector, sent.Load(), taken.Load(), joinerTerm, joined, forgedTerm, took.Round(time.Millisecond),
		before, terms, writeErr, time.Since(stopped).Round(time.Millisecond))
	if taken.Load() > 0 || joinerTerm >= hoSaneTerm {
		t.Errorf("the joining node took the outsider's forged %s: %d of %d taken, its term reached %d", vector, taken.Load(), sent.Load(), joinerTerm)
	}
	for _, i := range all {
		if terms[i] >= hoSaneTerm {
			t.Errorf("member %d is at term %d after the joiner got forged %s RPCs", i, terms[i], vector)
		}
	}
	if !joined {
		tc.dumpState()
		t.Fatalf("the joiner did not become a voter under forged %s RPCs", vector)
	}
	if writeErr != nil {
		tc.dumpState()
		t.Fatalf("no write succeeded within 8 s after the outsider stopped: %v", writeErr)
	}
	for _, i := range all {
		tc.waitValue(i, "after-join", []byte("v"))
	}
}

// ---- 3. fake joins ----

// joinVoter requests naming made-up peers (nobody runs them) from a
// non-member, sent to the leader, to a follower, and posing as a forwarding
// member, add nobody; neither does the outsider asking for itself while it
// does not answer exchanges. A real node asking for itself is added.
func TestHostileOpenFakeJoins(t *testing.T) {
	const ns = "/raft/hostile-open-joins"
	members := []int{0, 1, 2}
	const outsider, newcomer = 3, 4
	sybils := []int{5, 6, 7, 8}
	mesh := rafttest.NewMesh(t, 9, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach(members, forceFirst); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, members...)
	l := tc.leader(15 * time.Second)
	fo := tc.follower(l, 0)
	fakes := hoMadeUpPeers(t, 2)
	caller := newCaller(mesh.Node(outsider).Peer(), Protocol(ns), codec{})
	tmo := int64(3 * time.Second)
	cases := []struct {
		name string
		to   int
		req  request
	}{
		{"made-up peer, to the leader", l, request{Cmd: cmdJoinVoter, Peer: []byte(fakes[0]), Timeout: tmo}},
		{"made-up peer, to a follower", fo, request{Cmd: cmdJoinVoter, Peer: []byte(fakes[1]), Timeout: tmo}},
		{"made-up peer, Forwarded from a non-member, to the leader", l, request{Cmd: cmdJoinVoter, Peer: []byte(fakes[0]), Timeout: tmo, Forwarded: true}},
		{"made-up peer, Forwarded from a non-member, to a follower", fo, request{Cmd: cmdJoinVoter, Peer: []byte(fakes[1]), Timeout: tmo, Forwarded: true}},
		{"outsider itself (answers no exchange), to the leader", l, request{Cmd: cmdJoinVoter, Peer: []byte(mesh.ID(outsider)), Timeout: tmo}},
		{"outsider itself (answers no exchange), via a follower", fo, request{Cmd: cmdJoinVoter, Peer: []byte(mesh.ID(outsider)), Timeout: tmo}},
	}
	bad := append(slices.Clone(fakes), mesh.ID(outsider))
	var refusals []string
	checkMembers := func(when string) {
		t.Helper()
		// A configuration change is a log entry: once a later write has
		// reached every member, so has any change the requests made.
		tc.set("probe-"+when, []byte("v"))
		for _, i := range members {
			tc.waitValue(i, "probe-"+when, []byte("v"))
			ms, err := tc.get(i).Members()
			if err != nil {
				t.Fatalf("member %d Members: %v", i, err)
			}
			for _, m := range ms {
				if slices.Contains(bad, m.ID) {
					t.Errorf("%s: member %d's configuration holds %s (%v)", when, i, shortID(m.ID), m.Suffrage)
				}
			}
		}
	}
	for k, c := range cases {
		resp, err := caller.call(t.Context(), mesh.ID(c.to), &c.req, time.Now().Add(15*time.Second))
		switch {
		case err != nil:
			refusals = append(refusals, fmt.Sprintf("%s: transport error %v", c.name, err))
		case resp.err() == nil:
			t.Errorf("%s: accepted", c.name)
		default:
			refusals = append(refusals, fmt.Sprintf("%s: %v", c.name, resp.err()))
		}
		checkMembers(fmt.Sprint(k))
	}
	for _, r := range refusals {
		t.Logf("refused: %s", r)
	}

	// Positive control: a real node asking for itself joins.
	tc.mustStart(newcomer)
	all := append(slices.Clone(members), newcomer)
	tc.waitVoters(30*time.Second, all...)
	tc.set("after-newcomer", []byte("v"))
	tc.waitValue(newcomer, "after-newcomer", []byte("v"))

	checkMembers("end")
	t.Logf("FIGURES fake joins: %d made-up/unreachable join requests, all refused (%d refusals); voters after: %d (the 3 members + the newcomer); newcomer added: yes",
		len(cases), len(refusals), len(voters(tc.get(tc.leader(15*time.Second)))))

	// For the note, not a check (it wedges the cluster, so it comes last):
	// joinVoter reaches the peer over the command protocol only. Identities
	// that answer an exchange but never serve the Raft transport ask for
	// themselves, one after the other, as many as there are real voters.
	var sybilLog []string
	for _, s := range sybils {
		hoServe(mesh.Node(s).Peer(), ns, func(peer.ID, *request) *response {
			return &response{Status: &status{}}
		})
		sc := newCaller(mesh.Node(s).Peer(), Protocol(ns), codec{})
		began := time.Now()
		var err error
		if l, lerr := tc.get(newcomer).Leader(); lerr != nil {
			err = lerr
		} else {
			var resp *response
			resp, err = sc.call(t.Context(), l, &request{Cmd: cmdJoinVoter, Peer: []byte(mesh.ID(s)), Timeout: tmo}, time.Now().Add(10*time.Second))
			if err == nil {
				err = resp.err()
			}
		}
		sybilLog = append(sybilLog, fmt.Sprintf("%s: %v (%v)", shortID(mesh.ID(s)), err, time.Since(began).Round(time.Millisecond)))
	}
	voterCount := len(voters(tc.get(newcomer)))
	writeErr := tc.onLeader(nil, func(c Cluster) error { return c.Set("after-sybils", []byte("v"), 3*time.Second) })
	var removeErr error = ErrNoLeader
	for _, i := range all {
		if c := tc.get(i); c.IsLeader() {
			removeErr = c.RemoveServer(mesh.ID(sybils[0]), 3*time.Second)
		}
	}
	t.Logf("FIGURES self-joining identities (answer exchanges, serve no Raft transport), %d real voters: joins %v; voters then %d; "+
		"a write then: %v; RemoveServer of one of them: %v",
		len(all), sybilLog, voterCount, writeErr, removeErr)
}

// ---- 4. the exchange bomb ----

// The bomb's shape: six requests of ~3 MB, each listing as many made-up
// peers as fit, with 64 addresses of 250 bytes each (under maxAddrSize, so
// none is refused for its length).
const (
	hoBombRequests = 6
	hoBombAddrs    = 64
	hoBombAddrSize = 250
	hoBombBytes    = 3 << 20
)

// hoBombPeersPer is how many made-up peers one bomb request lists.
const hoBombPeersPer = hoBombBytes / (hoBombAddrs*(hoBombAddrSize+3) + 48)

// hoBombWaves is how many bombs, of new made-up peers each, the attacker
// holds: the first goes to every member, the second to one member again, to
// see what a member keeps of a bomb once its tracker is full.
const hoBombWaves = 2

// hoBombPeers is how many made-up peers the attacker's bombs list in all.
const hoBombPeers = hoBombWaves * hoBombRequests * hoBombPeersPer

// The bomb's attacker runs in a child process (the test binary re-executed
// with TAURAFT_HOSTILE_ROLE=open-bomb; TestMain hands it to
// hostileOpenRole), so that its own buffers do not count in the members'
// heap. It reads its targets from the environment, says READY on stdout
// once it has built its requests and connected, and for each "GO <i>" line
// on stdin sends the six requests at once to target i and answers
// "DONE <json>". It leaves when its stdin closes.
const (
	hoRoleEnv      = "TAURAFT_HOSTILE_ROLE"
	hoRoleBomb     = "open-bomb"
	hoEnvTargets   = "TAURAFT_HO_TARGETS" // comma-separated /ip4/.../p2p/<id>
	hoEnvNamespace = "TAURAFT_HO_NS"
	hoEnvSeed      = "TAURAFT_HO_SEED" // the made-up peers' seed
)

// hoSeededPeers returns the made-up peers of the bomb: n peer IDs drawn
// from seed, the same in the test and in the attacker process.
func hoSeededPeers(seed uint64, n int) ([]peer.ID, error) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	rng := mrand.NewChaCha8(s)
	out := make([]peer.ID, n)
	for i := range out {
		_, pub, err := crypto.GenerateEd25519Key(rng)
		if err != nil {
			return nil, err
		}
		if out[i], err = peer.IDFromPublicKey(pub); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// hoBombAddr returns the bytes of a /unix multiaddr of exactly size bytes
// (128 to 16383) named after tag: no transport here dials /unix, so probing
// the made-up peers touches no network.
func hoBombAddr(tag string, size int) []byte {
	b := []byte{0x90, 0x03} // /unix (protocol code 400 as a uvarint)
	b = binary.AppendUvarint(b, uint64(size-4))
	b = append(b, '/')
	b = append(b, tag...)
	return append(b, strings.Repeat("x", size-len(b))...)
}

// hoBombFrames builds the bomb's requests over fakes, hoBombPeersPer made-up
// peers each.
func hoBombFrames(fakes []peer.ID) ([][]byte, error) {
	frames := make([][]byte, len(fakes)/hoBombPeersPer)
	for r := range frames {
		list := make([]wirePeer, 0, hoBombPeersPer)
		for p := range hoBombPeersPer {
			wp := wirePeer{ID: []byte(fakes[r*hoBombPeersPer+p]), Age: int64(time.Hour / time.Millisecond)}
			for a := range hoBombAddrs {
				wp.Addrs = append(wp.Addrs, hoBombAddr(fmt.Sprintf("r%dp%da%d-", r, p, a), hoBombAddrSize))
			}
			if _, err := ma.NewMultiaddrBytes(wp.Addrs[0]); err != nil || len(wp.Addrs[0]) != hoBombAddrSize {
				return nil, fmt.Errorf("bomb address %q (%d bytes): %v", wp.Addrs[0], len(wp.Addrs[0]), err)
			}
			list = append(list, wp)
		}
		body, err := cborEnc.Marshal(&request{Cmd: cmdExchangePeers, Peers: list, Status: &status{}})
		if err != nil {
			return nil, err
		}
		if frames[r] = plainFrame(body); len(frames[r]) > MaxMessageSize {
			return nil, fmt.Errorf("bomb frame of %d bytes is over MaxMessageSize", len(frames[r]))
		}
	}
	return frames, nil
}

// hostileOpenRole runs this file's attacker process roles and returns the
// exit code.
func hostileOpenRole(role string) int {
	if role != hoRoleBomb {
		fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
		return 2
	}
	if err := hoBombRole(); err != nil {
		fmt.Fprintf(os.Stderr, "hostile %s: %v\n", role, err)
		return 1
	}
	return 0
}

func hoBombRole() error {
	var seed uint64
	if _, err := fmt.Sscan(os.Getenv(hoEnvSeed), &seed); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	ns := os.Getenv(hoEnvNamespace)
	var targets []peer.AddrInfo
	for _, s := range strings.Split(os.Getenv(hoEnvTargets), ",") {
		ai, err := peer.AddrInfoFromString(s)
		if err != nil {
			return fmt.Errorf("target %q: %w", s, err)
		}
		targets = append(targets, *ai)
	}
	fakes, err := hoSeededPeers(seed, hoBombPeers)
	if err != nil {
		return err
	}
	fakeSet := map[peer.ID]bool{}
	for _, id := range fakes {
		fakeSet[id] = true
	}
	frames, err := hoBombFrames(fakes)
	if err != nil {
		return err
	}
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay())
	if err != nil {
		return err
	}
	defer h.Close()
	for _, ai := range targets {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := h.Connect(ctx, ai)
		cancel()
		if err != nil {
			return fmt.Errorf("connect %s: %w", ai.ID, err)
		}
	}
	say := func(kind string, v any) {
		b, _ := json.Marshal(v)
		fmt.Printf("%s %s\n", kind, b)
	}
	say("READY", map[string]any{"frame_bytes": len(frames[0]), "peers_per_request": hoBombPeersPer})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var k, w int
		if _, err := fmt.Sscanf(sc.Text(), "GO %d %d", &k, &w); err != nil || k < 0 || k >= len(targets) || w < 0 || w >= hoBombWaves {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		start := time.Now()
		wave := frames[w*hoBombRequests : (w+1)*hoBombRequests]
		resps := make([]*response, len(wave))
		errs := make([]error, len(wave))
		var wg sync.WaitGroup
		for r := range wave {
			wg.Go(func() { resps[r], errs[r] = hoSend(h, targets[k].ID, Protocol(ns), wave[r], 60*time.Second) })
		}
		wg.Wait()
		answered, listed := 0, 0
		var failures []string
		for r := range wave {
			switch {
			case errs[r] != nil:
				failures = append(failures, errs[r].Error())
			case resps[r].err() != nil:
				failures = append(failures, "refused: "+resps[r].err().Error())
			default:
				answered++
				for _, wp := range resps[r].Peers {
					if fakeSet[peer.ID(wp.ID)] {
						listed++
					}
				}
			}
		}
		say("DONE", map[string]any{"answered": answered, "failures": failures, "listed_fakes": listed,
			"took_ms": time.Since(start).Milliseconds()})
	}
	return nil
}

// hoBombAttacker is the running attacker process, from the test's side.
type hoBombAttacker struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	exited chan struct{}
	stderr *syncBuffer
}

// startHoBomb re-executes the test binary as the bomb's attacker against
// the members targets (under nice when nice(1) is there, so its CPU does
// not count against the members either). It is stopped, or killed, at the
// end of the test.
func startHoBomb(t *testing.T, ns string, seed uint64, targets []string) *hoBombAttacker {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("test binary: %v", err)
	}
	args := []string{exe, "-test.run=^$"}
	if nice, err := exec.LookPath("nice"); err == nil {
		args = append([]string{nice, "-n", "10"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), hoRoleEnv+"="+hoRoleBomb, hoEnvNamespace+"="+ns,
		fmt.Sprintf("%s=%d", hoEnvSeed, seed), hoEnvTargets+"="+strings.Join(targets, ","))
	a := &hoBombAttacker{cmd: cmd, lines: make(chan string, 16), exited: make(chan struct{}), stderr: &syncBuffer{}}
	var stdout io.Reader
	a.stdin, stdout = startSubprocess(t, cmd, a.stderr)
	go func() {
		defer close(a.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") || strings.HasPrefix(sc.Text(), "DONE ") {
				a.lines <- sc.Text()
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = a.stdin.Close()
		select {
		case <-a.exited:
		case <-time.After(5 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	})
	return a
}

// line waits for the attacker's next line of kind and decodes its JSON.
func (a *hoBombAttacker) line(t *testing.T, kind string, timeout time.Duration) map[string]any {
	t.Helper()
	select {
	case l := <-a.lines:
		body, ok := strings.CutPrefix(l, kind+" ")
		var v map[string]any
		if !ok || json.Unmarshal([]byte(body), &v) != nil {
			t.Fatalf("attacker said %q, want a %s line", l, kind)
		}
		return v
	case <-a.exited:
		t.Fatalf("attacker exited before its %s line: %s", kind, a.stderr)
	case <-time.After(timeout):
		t.Fatalf("no %s line from the attacker within %v: %s", kind, timeout, a.stderr)
	}
	return nil
}

// hoLiveHeap is the live heap as of the last GC (runtime/metrics): unlike
// HeapAlloc it leaves out the garbage the collector has not reached yet.
func hoLiveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// Six exchangePeers requests of ~3 MB, each listing made-up peers with 64
// long (250-byte) addresses, sent at once to each member in turn by an
// attacker process: the test process's heap (the members) grows by less
// than hoHeapBudget at its peak, the tracker stays within its cap, no
// made-up peer is proven, counted alive or passed on in a member's list,
// and writes go on. A second bomb of new made-up peers to the first member
// then shows what a member keeps once its tracker is full (a figure, not a
// check).
func TestHostileOpenExchangeBomb(t *testing.T) {
	const ns = "/raft/hostile-open-bomb"
	members := []int{0, 1, 2}
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	seed := uint64(time.Now().UnixNano())
	fakes, err := hoSeededPeers(seed, hoBombPeers)
	if err != nil {
		t.Fatal(err)
	}
	fakeSet := map[peer.ID]bool{}
	for _, id := range fakes {
		fakeSet[id] = true
	}
	var targets []string
	for _, i := range members {
		n := mesh.Node(i)
		targets = append(targets, fmt.Sprintf("%s/p2p/%s", n.Peer().Addrs()[0], n.ID()))
	}
	// The attacker builds its bombs while the cluster forms.
	started := time.Now()
	attacker := startHoBomb(t, ns, seed, targets)
	tc := newTestCluster(t, mesh, ns)
	if err := tc.startEach(members, forceFirst); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, members...)
	tc.set("before", []byte("v"))
	termsBefore := hoTerms(t, tc, members)
	ready := attacker.line(t, "READY", 120*time.Second)
	readyAfter := time.Since(started)

	type round struct {
		member, wave          int
		base, peak, retained  uint64
		liveBase, livePeak    uint64 // the live heap, as of the last GC
		done                  map[string]any
		tracked, faked, alive int
		listed, stored        int
		storedBytes           int
	}
	// bomb sends wave w to member k (mesh index members[k]) and measures.
	bomb := func(k, w int) round {
		i := members[k]
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rd := round{member: i, wave: w, base: ms.HeapAlloc, liveBase: hoLiveHeap()}
		var peak, livePeak atomic.Uint64
		peak.Store(ms.HeapAlloc)
		livePeak.Store(rd.liveBase)
		sampleStop := make(chan struct{})
		var sampler sync.WaitGroup
		sampler.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				var s runtime.MemStats
				runtime.ReadMemStats(&s)
				if s.HeapAlloc > peak.Load() {
					peak.Store(s.HeapAlloc)
				}
				if l := hoLiveHeap(); l > livePeak.Load() {
					livePeak.Store(l)
				}
				select {
				case <-sampleStop:
					return
				case <-tick.C:
				}
			}
		})
		if _, err := fmt.Fprintf(attacker.stdin, "GO %d %d\n", k, w); err != nil {
			t.Fatalf("tell the attacker to go: %v", err)
		}
		rd.done = attacker.line(t, "DONE", 90*time.Second)
		// Shortly after: the member's own follow-up (probing the peers it
		// learned) counts too.
		time.Sleep(500 * time.Millisecond)
		close(sampleStop)
		sampler.Wait()
		rd.peak, rd.livePeak = peak.Load(), livePeak.Load()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		rd.retained = ms.HeapAlloc

		c := tc.get(i).(*cluster)
		view := c.peers.view()
		rd.tracked = len(view)
		for _, v := range view {
			if fakeSet[v.id] {
				rd.faked++
				if v.alive {
					rd.alive++
				}
			}
		}
		for _, wp := range c.peers.wireList() {
			if fakeSet[peer.ID(wp.ID)] {
				rd.listed++
			}
		}
		ps := mesh.Node(i).Peer().Peerstore()
		for _, id := range ps.PeersWithAddrs() {
			if fakeSet[id] {
				rd.stored++
				for _, a := range ps.Addrs(id) {
					rd.storedBytes += len(a.Bytes())
				}
			}
		}
		return rd
	}
	check := func(rd round) {
		t.Helper()
		i := rd.member
		if n, _ := rd.done["answered"].(float64); int(n) != hoBombRequests {
			t.Logf("member %d answered %v of %d bomb requests: %v", i, rd.done["answered"], hoBombRequests, rd.done["failures"])
		}
		if n, _ := rd.done["listed_fakes"].(float64); n > 0 {
			t.Errorf("member %d answered the bomb with %v made-up peers in its list", i, n)
		}
		if growth := int64(rd.peak) - int64(rd.base); growth >= hoHeapBudget {
			t.Errorf("member %d (bomb %d): heap grew by %.1f MiB at its peak (budget %d MiB)", i, rd.wave+1, float64(growth)/(1<<20), hoHeapBudget>>20)
		}
		if rd.tracked > maxTrackedPeers {
			t.Errorf("member %d tracks %d peers, over the cap %d", i, rd.tracked, maxTrackedPeers)
		}
		if rd.alive > 0 || rd.listed > 0 {
			t.Errorf("member %d: %d made-up peers count as alive, %d are in its exchange list", i, rd.alive, rd.listed)
		}
	}
	var rounds []round
	for k := range members {
		rd := bomb(k, 0)
		check(rd)
		rounds = append(rounds, rd)
	}
	// The second bomb, of new made-up peers, to the first member.
	rd := bomb(0, 1)
	check(rd)
	rounds = append(rounds, rd)

	termsAfter := hoTerms(t, tc, members)
	var b strings.Builder
	for _, rd := range rounds {
		fmt.Fprintf(&b, "\n  bomb %d, member %d: %v/%d requests answered in %v ms; heap base %.1f MiB, peak %+.1f MiB (live heap at GCs: peak %+.1f MiB), retained after GC %+.1f MiB; "+
			"tracker %d peers (%d made up, %d alive, %d listed); peerstore holds addresses of %d made-up peers (%.1f KiB)",
			rd.wave+1, rd.member, rd.done["answered"], hoBombRequests, rd.done["took_ms"], float64(rd.base)/(1<<20),
			float64(int64(rd.peak)-int64(rd.base))/(1<<20), float64(int64(rd.livePeak)-int64(rd.liveBase))/(1<<20),
			float64(int64(rd.retained)-int64(rd.base))/(1<<20),
			rd.tracked, rd.faked, rd.alive, rd.listed, rd.stored, float64(rd.storedBytes)/1024)
	}
	t.Logf("FIGURES exchange bomb (attacker in a child process, ready after %v): %d requests of %v bytes each (%d made-up peers x %d addresses of %d bytes) per bomb; "+
		"terms before the bombs %v, after %v:%s",
		readyAfter.Round(time.Millisecond), hoBombRequests, ready["frame_bytes"], hoBombPeersPer, hoBombAddrs, hoBombAddrSize,
		termsBefore, termsAfter, b.String())

	// Writes go on (through whoever leads now: the bombs' load may have
	// cost an election, which the terms show), and reach every member.
	tc.set("after-bomb", []byte("v"))
	for _, i := range members {
		tc.waitValue(i, "after-bomb", []byte("v"))
	}
	tc.waitVoters(10*time.Second, members...)
}
