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
		{"a round just under catch-up still rests", nonVoterCatchUp - 1, 4, 4 * time.Millisecond},
		{"a non-voter behind is fed without rest", nonVoterCatchUp, 4, 0},
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
	pt := newPacedTransport(trans[0], func(hraft.ServerID) (bool, int) { return nonVoter, 1 })
	pt.pause = func(sent, n int) time.Duration {
		if sent == 0 {
			t.Error("a heartbeat was asked for a pause")
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
