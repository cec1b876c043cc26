package raft

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/tauraft/raft/rafttest"
)

func TestNonVoterPause(t *testing.T) {
	for _, tc := range []struct {
		name            string
		sent, nonVoters int
		want            time.Duration
	}{
		{"a heartbeat (nothing sent) never rests", 0, 10, 0},
		{"no non-voters", 5, 0, 0},
		{"one non-voter: a millisecond", 1, 1, time.Millisecond},
		{"the pause grows with the non-voters", 10, 8, 8 * time.Millisecond},
		{"and is bounded", 10, 60, nonVoterMaxPause},
		{"48 members, 43 non-voters", 10, 43, 43 * time.Millisecond},
		{"a round just under catch-up still rests", catchUpRound - 1, 4, 4 * time.Millisecond},
		{"a non-voter behind is fed without rest", catchUpRound, 4, 0},
		{"a full round", 256, 43, 0},
	} {
		if got := nonVoterPause(tc.sent, tc.nonVoters); got != tc.want {
			t.Errorf("%s: nonVoterPause(%d, %d) = %v, want %v", tc.name, tc.sent, tc.nonVoters, got, tc.want)
		}
	}
}

// TestPacedTransport sends AppendEntries over the library's transport on two
// real hosts: rounds to a voter, and heartbeats to anyone, return at once; a
// round that carried entries to a non-voter rests; closing the transport ends
// a rest at once.
func TestReplicaPause(t *testing.T) {
	const self = hraft.ServerID("L")
	server := func(id string, s hraft.ServerSuffrage) hraft.Server {
		return hraft.Server{ID: hraft.ServerID(id), Suffrage: s}
	}
	five := []hraft.Server{server("L", hraft.Voter), server("a", hraft.Voter), server("b", hraft.Voter),
		server("c", hraft.Voter), server("d", hraft.Voter), server("n1", hraft.Nonvoter), server("n2", hraft.Nonvoter)}
	three := []hraft.Server{server("L", hraft.Voter), server("a", hraft.Voter), server("b", hraft.Voter)}
	for _, tc := range []struct {
		name    string
		servers []hraft.Server
		target  string
		sent    int
		reached uint64
		acked   map[string]uint64
		want    time.Duration
	}{
		{"a heartbeat never rests", five, "c", 0, 10, map[string]uint64{"a": 10, "b": 10}, 0},
		{"a non-voter rests its share", five, "n1", 3, 10, nil, 2 * time.Millisecond},
		{"a non-voter behind is fed at once", five, "n1", catchUpRound, 200, nil, 0},
		{"the first voters to answer are what the commit waits for", five, "a", 1, 10, map[string]uint64{"b": 9, "c": 9}, 0},
		{"the second one too", five, "b", 1, 10, map[string]uint64{"a": 10}, 0},
		{"a voter the commit did not need rests", five, "c", 1, 10, map[string]uint64{"a": 10, "b": 10}, spareVoterPause},
		{"and the last one", five, "d", 1, 10, map[string]uint64{"a": 10, "b": 12, "c": 10}, spareVoterPause},
		{"others behind the entries sent do not count", five, "c", 1, 10, map[string]uint64{"a": 10, "b": 9}, 0},
		{"non-voters never count toward a quorum", five, "c", 1, 10, map[string]uint64{"a": 10, "n1": 10, "n2": 10}, 0},
		{"a voter behind is fed at once", five, "c", catchUpRound, 300, map[string]uint64{"a": 300, "b": 300}, 0},
		{"three voters: none rests, not even the slower", three, "b", 5, 20, map[string]uint64{"a": 20}, 0},
		{"a server not in the configuration never rests", three, "x", 5, 20, map[string]uint64{"a": 20, "b": 20}, 0},
		{"no configuration: no rest", nil, "a", 5, 20, nil, 0},
	} {
		acked := func(id hraft.ServerID) uint64 { return tc.acked[string(id)] }
		if got := replicaPause(self, hraft.ServerID(tc.target), tc.servers, tc.sent, tc.reached, acked); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPacedTransport(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	ns := "/raft/paced"
	trans := make([]*hraft.NetworkTransport, 2)
	for i := range trans {
		layer := newStreamLayer(mesh.Node(i).Peer(), TransportProtocol(ns), layerConfig{})
		trans[i] = newNetworkTransport(layer, 5*time.Second, hclog.NewNullLogger())
	}
	defer func() { _ = trans[1].Close() }()
	// The far end answers every append with success.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case rpc := <-trans[1].Consumer():
				rpc.Respond(&hraft.AppendEntriesResponse{Success: true}, nil)
			case <-done:
				return
			}
		}
	}()
	far := mesh.ID(1).String()
	nonVoter := true
	pt := newPacedTransport(trans[0], func() []hraft.Server { return nil })
	var ackedBefore uint64 // what Raft was known to have of far at the last pause
	pt.pause = func(_, _ hraft.ServerID, _ []hraft.Server, sent int, _ uint64, acked func(hraft.ServerID) uint64) time.Duration {
		ackedBefore = acked(hraft.ServerID(far))
		if sent == 0 {
			t.Error("a heartbeat was asked for a pause")
		}
		if !nonVoter {
			return 0
		}
		return time.Hour
	}
	send := func(entries int) <-chan error {
		out := make(chan error, 1)
		go func() {
			args := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte(mesh.ID(0).String()), Addr: []byte(mesh.ID(0).String())}, Term: 1}
			for i := range entries {
				args.Entries = append(args.Entries, &hraft.Log{Index: uint64(i + 1), Term: 1, Type: hraft.LogCommand, Data: []byte("x")})
			}
			var resp hraft.AppendEntriesResponse
			out <- pt.AppendEntries(hraft.ServerID(far), hraft.ServerAddress(far), args, &resp)
		}()
		return out
	}
	wait := func(what string, ch <-chan error) {
		t.Helper()
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still waiting after 10 s", what)
		}
	}
	wait("heartbeat to a non-voter", send(0))
	nonVoter = false
	wait("entries to a voter", send(3))
	if ackedBefore != 0 {
		t.Fatalf("before any answer, far counted as holding index %d", ackedBefore)
	}
	wait("more entries to a voter", send(2))
	if ackedBefore != 3 {
		t.Fatalf("after an answer up to index 3, far counted as holding index %d", ackedBefore)
	}
	nonVoter = true
	paused := send(3)
	select {
	case err := <-paused:
		t.Fatalf("entries to a non-voter returned without resting (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := pt.Close(); err != nil {
		t.Fatal(err)
	}
	wait("the rest after Close", paused)
}
