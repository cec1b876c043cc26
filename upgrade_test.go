package raft

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"

	"github.com/tauraft/raft/rafttest"
)

// Why the kinds travel beside status, not in it: status is a CBOR array,
// and a build decoding one element more than it knows fails, while an
// unknown request or response field is ignored.
func TestKindsAdvertisementDecodesOnOlderMembers(t *testing.T) {
	type statusWithKinds struct {
		_        struct{} `cbor:",toarray"`
		Leader   []byte
		Formed   bool
		Deciding bool
		Voters   int
		Member   bool
		VoterIDs [][]byte
		Kinds    []uint8
	}
	b, err := cborEnc.Marshal(&statusWithKinds{Formed: true, Voters: 3, Kinds: knownKinds()})
	if err != nil {
		t.Fatal(err)
	}
	var st status
	if err := wireDec.Unmarshal(b, &st); err == nil {
		t.Fatal("a status array with an extra element decoded: kinds could have gone into status")
	}
	// Today's request and response, read by a build that knows fields 1-10
	// (request) and 1-8 (response) only.
	type oldRequest struct {
		Cmd    string  `cbor:"1,keyasint"`
		Status *status `cbor:"10,keyasint,omitempty"`
	}
	type oldResponse struct {
		Code   uint16  `cbor:"1,keyasint,omitempty"`
		Status *status `cbor:"8,keyasint,omitempty"`
	}
	rb, _ := cborEnc.Marshal(&request{Cmd: cmdExchangePeers, Status: &status{Voters: 3}, Kinds: knownKinds(), Client: make([]byte, 16), Seq: 1, Command: []byte{1}})
	var oldReq oldRequest
	if err := wireDec.Unmarshal(rb, &oldReq); err != nil || oldReq.Status == nil || oldReq.Status.Voters != 3 {
		t.Fatalf("an older member reading today's request: %+v %v", oldReq, err)
	}
	pb, _ := cborEnc.Marshal(&response{Status: &status{Voters: 3}, Kinds: knownKinds(), OK: true, CreateIndex: 1, ModIndex: 2, Lease: 3})
	var oldResp oldResponse
	if err := wireDec.Unmarshal(pb, &oldResp); err != nil || oldResp.Status == nil {
		t.Fatalf("an older member reading today's response: %+v %v", oldResp, err)
	}
}

// withKinds makes a member advertise kinds (an empty list: nothing, as a
// build from before advertisements), though it applies every kind it knows.
func withKinds(kinds []uint8) Option {
	return func(c *config) error { c.kinds = kinds; return nil }
}

// A leader refuses an operation kind that one voter does not advertise (a
// voter advertising nothing counts as knowing set and delete only), keeps
// serving plain writes (without its stamp or request IDs, which that voter
// could not apply), and takes the kind once the voter advertises it.
func TestLeaderRefusesKindAVoterDoesNotAdvertise(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/upgrade")
	if err := tc.startEach([]int{0, 1, 2}, func(i int) []Option {
		if i == 2 {
			return []Option{withKinds([]uint8{})}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(20*time.Second, 0, 1, 2)
	// Node 2 must not lead: a leader trusts its own build.
	l := tc.leaderAmong(10*time.Second, 0, 1, 2)
	for l == 2 {
		if err := tc.get(2).TransferLeadership(); err != nil {
			t.Logf("transfer: %v", err)
		}
		l = tc.leaderAmong(10*time.Second, 0, 1, 2)
	}
	old := mesh.ID(2)
	txn := Txn{If: []Cond{IfAbsent("k")}, Then: []Op{SetOp("k", []byte("v"))}}
	_, err := tc.get(l).Txn(txn, 5*time.Second)
	if !errors.Is(err, ErrInvalidCommand) || !strings.Contains(err.Error(), shortPeer(old)) || !strings.Contains(err.Error(), "not known by member") {
		t.Fatalf("Txn with a voter that does not advertise conditions: %v", err)
	}
	// Through a Client too, on the other side of the wire.
	cl, err := NewClient(mesh.Node(2), "/raft/upgrade", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Txn(txn, 5*time.Second, mesh.ID(l)); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("Client Txn: %v", err)
	}
	// Plain writes go on, unstamped: the old voter could not apply a meta
	// operation.
	if err := tc.get(l).Set("plain", []byte("v"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cl.Set("plain2", []byte("v"), 5*time.Second, mesh.ID(l)); err != nil {
		t.Fatal(err)
	}
	if c := tc.get(l).(*cluster).fsm.clock(); c != 0 {
		t.Fatalf("the leader stamped a command (clock %d) while a voter does not know stamps", c)
	}
	// Node 2 is upgraded: restarted with this build's kinds.
	tc.stop(2)
	mesh.Restart(2)
	tc.mustStart(2)
	tc.waitFor(20*time.Second, "the Txn to be taken once every voter advertises conditions", func() bool {
		res, err := tc.get(l).Txn(txn, 5*time.Second)
		return err == nil && res.OK
	})
	if c := tc.get(l).(*cluster).fsm.clock(); c == 0 {
		t.Fatal("the clock did not move once stamps were allowed")
	}
}

// A replica fed a committed entry of an operation kind it does not know
// stops with a clear error instead of skipping it: here every member, since
// the entry is proposed below the leader's checks.
func TestUnknownKindInLogStopsMembers(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/unknown-kind")
	tc.form(15*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	tc.set("before", []byte("v"), 0, 1, 2)
	r, err := tc.get(l).(*cluster).r()
	if err != nil {
		t.Fatal(err)
	}
	future := encodeOps([]cmdOp{{kind: 200, key: []byte("k"), value: []byte("from a newer build")}})
	f := r.Apply(future, 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("raw apply: %v", err)
	}
	resp, _ := f.Response().(*FSMResponse)
	if !errors.Is(resp.Error, ErrShutdown) || !strings.Contains(resp.Error.Error(), "operation kind 200") {
		t.Fatalf("leader's answer: %v", resp.Error)
	}
	// Every member that learns the entry is committed stops: a majority at
	// least (the last one may never hear of the commit, once the others
	// stopped).
	stopped := func() (n int) {
		for _, i := range []int{0, 1, 2} {
			if tc.get(i).(*cluster).failure.Load() != nil {
				n++
			}
		}
		return n
	}
	tc.waitFor(20*time.Second, "a majority of members to stop", func() bool { return stopped() >= 2 })
	for _, i := range []int{0, 1, 2} {
		c := tc.get(i).(*cluster)
		if _, ok := c.Get("k"); ok {
			t.Errorf("member %d applied the unknown entry", i)
		}
		if c.failure.Load() == nil {
			continue
		}
		err := c.Set("after", []byte("v"), time.Second)
		if !errors.Is(err, ErrShutdown) || !strings.Contains(err.Error(), "operation kind 200 is unknown") || !strings.Contains(err.Error(), "cannot apply log entry") {
			t.Errorf("member %d after the unknown entry: %v", i, err)
		}
	}
	t.Logf("%d of 3 members stopped on the unknown entry", stopped())
}

// The leader's finding that every server knows every kind is for one set of
// servers: a server that joins right after (within kindsCheckInterval) is
// asked before a kind it may lack is proposed. hashicorp's
// GetConfiguration reports index 0 whatever the configuration, so the
// finding cannot be keyed by the index.
func TestKindsFindingFollowsTheServers(t *testing.T) {
	a := hraft.Configuration{Servers: []hraft.Server{{ID: "a", Suffrage: hraft.Voter}}}
	ab := hraft.Configuration{Servers: []hraft.Server{{ID: "a", Suffrage: hraft.Voter}, {ID: "b", Suffrage: hraft.Voter}}}
	abNon := hraft.Configuration{Servers: []hraft.Server{{ID: "a", Suffrage: hraft.Voter}, {ID: "b", Suffrage: hraft.Nonvoter}}}
	ba := hraft.Configuration{Servers: []hraft.Server{{ID: "b", Suffrage: hraft.Voter}, {ID: "a", Suffrage: hraft.Voter}}}
	for _, tc := range []struct {
		name string
		conf hraft.Configuration
		of   hraft.Configuration
		same bool
	}{
		{"same voters", ab, ab, true},
		{"a voter joined", ab, a, false},
		{"a voter left", a, ab, false},
		{"a non-voter counts: it applies the log too", abNon, a, false},
		{"promoted: the same servers", ab, abNon, true},
		{"another order", ba, ab, false},
		{"no voters", hraft.Configuration{}, hraft.Configuration{}, true},
	} {
		if got := sameServers(tc.conf, serverIDs(tc.of)); got != tc.same {
			t.Errorf("%s: sameServers = %v, want %v", tc.name, got, tc.same)
		}
	}
}

// A leader that restarted while a voter is down still knows that voter's
// operation kinds (the kinds book keeps what it last advertised), so
// transactions and epochs do not wait for the voter to come back.
func TestKindsOfADownVoterAreRemembered(t *testing.T) {
	mesh := rafttest.NewMesh(t, 3, rafttest.Connected())
	tc := newTestCluster(t, mesh, "/raft/upgrade-book")
	tc.form(20*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	f := tc.follower(l, 0)
	down := mesh.ID(f)
	tc.waitFor(10*time.Second, "every member to book the follower's kinds", func() bool {
		for _, i := range tc.running() {
			if i == f {
				continue
			}
			if k, ok := tc.get(i).(*cluster).kindsBook.get(down); !ok || !slices.Equal(k, knownKinds()) {
				return false
			}
		}
		return true
	})
	tc.stop(f)
	tc.stop(l)
	tc.mustStart(l)
	// The restarted member must lead: its tracker has never heard from the
	// voter that is down.
	deadline := time.Now().Add(30 * time.Second)
	for {
		nl := tc.leaderAmong(15*time.Second, tc.running()...)
		if nl == l {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d never took leadership back", l)
		}
		if err := tc.get(nl).TransferLeadership(); err != nil {
			t.Logf("transfer: %v", err)
		}
	}
	if _, ok := tc.get(l).(*cluster).peers.kindsOf(down); ok {
		t.Fatal("the restarted leader's tracker knows the down voter's kinds: the test proves nothing")
	}
	res, err := tc.get(l).Txn(Txn{If: []Cond{IfAbsent("k")}, Then: []Op{SetOp("k", []byte("v"))}}, 5*time.Second)
	if err != nil || !res.OK {
		t.Fatalf("Txn on a restarted leader with a voter down: %+v, %v", res, err)
	}
}

func TestKindsBook(t *testing.T) {
	ds := dssync.MutexWrap(datastore.NewMapDatastore())
	b, err := openKindsBook(ds, "/raft/x/kinds")
	if err != nil {
		t.Fatal(err)
	}
	ids := hoMadeUpPeers(t, maxKindsBook+1)
	if err := b.record(ids[0], []uint8{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if err := b.record(ids[1], nil); err != nil { // nothing advertised: nothing kept
		t.Fatal(err)
	}
	// Keys of a nested namespace under the same prefix are not entries.
	if err := ds.Put(context.Background(), datastore.NewKey("/raft/x/kinds/log/1"), []byte{1}); err != nil {
		t.Fatal(err)
	}
	b2, err := openKindsBook(ds, "/raft/x/kinds")
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := b2.get(ids[0]); !ok || !slices.Equal(k, []uint8{1, 2, 3}) {
		t.Fatalf("reopened book: %v %v", k, ok)
	}
	if _, ok := b2.get(ids[1]); ok || len(b2.kinds) != 1 {
		t.Fatalf("reopened book holds %d entries, want 1", len(b2.kinds))
	}
	for _, id := range ids[1:] {
		if err := b2.record(id, []uint8{1, 2}); err != nil {
			t.Fatal(err)
		}
	}
	if len(b2.kinds) != maxKindsBook {
		t.Fatalf("book holds %d entries, want at most %d", len(b2.kinds), maxKindsBook)
	}
	b3, err := openKindsBook(ds, "/raft/x/kinds")
	if err != nil {
		t.Fatal(err)
	}
	if len(b3.kinds) != maxKindsBook {
		t.Fatalf("reopened book holds %d entries, want %d", len(b3.kinds), maxKindsBook)
	}
}
