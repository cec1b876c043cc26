package raft

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// sampleStats is a leader's Stats with every field set.
func sampleStats(t testing.TB) Stats {
	a, b := seededPeerID(t, 1), seededPeerID(t, 2)
	return Stats{
		ID: a, State: hraft.Leader, Term: 7, Leader: a, CommitIndex: 40, AppliedIndex: 39, LastIndex: 41,
		LastContact: 0, LastSnapshotIndex: 32, Bootstrap: BootstrapFounder, PeersTracked: 5, PeersAnswered: 3,
		Members: []MemberStats{
			{ID: a, Suffrage: hraft.Voter, Leader: true, LagKnown: true, MatchIndex: 41},
			{ID: b, Suffrage: hraft.Nonvoter, LagKnown: true, MatchIndex: 30, Lag: 11, LagAge: 1500 * time.Millisecond},
			{ID: seededPeerID(t, 3), Suffrage: hraft.Staging},
		},
	}
}

func TestStatsWireRoundTrip(t *testing.T) {
	for _, st := range []Stats{
		sampleStats(t),
		{ID: seededPeerID(t, 9), State: hraft.Shutdown, LastContact: -1, Members: []MemberStats{}},
	} {
		b, err := cborEnc.Marshal(&response{Stats: st.toWire()})
		if err != nil {
			t.Fatal(err)
		}
		var resp response
		if err := wireDec.Unmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
		got, err := statsFromWire(resp.Stats)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !reflect.DeepEqual(got, st) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, st)
		}
	}
	// A configuration past MaxStatusMembers is cut to it.
	st := sampleStats(t)
	st.Members = make([]MemberStats, MaxStatusMembers+5)
	for i := range st.Members {
		st.Members[i] = MemberStats{ID: seededPeerID(t, 10+i)}
	}
	if n := len(st.toWire().Members); n != MaxStatusMembers {
		t.Errorf("%d members on the wire, want %d", n, MaxStatusMembers)
	}
}

// A hostile or broken member's status answer is ErrInvalidCommand, never
// a Stats with values out of range.
func TestStatsFromWireRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(w *wireStats)
	}{
		{"no member ID", func(w *wireStats) { w.ID = nil }},
		{"bad member ID", func(w *wireStats) { w.ID = []byte{1, 2, 3} }},
		{"bad leader ID", func(w *wireStats) { w.Leader = []byte{0xff} }},
		{"unknown state", func(w *wireStats) { w.State = uint8(hraft.Shutdown) + 1 }},
		{"unknown outcome", func(w *wireStats) { w.Bootstrap = uint8(maxBootstrapOutcome) + 1 }},
		{"negative contact", func(w *wireStats) { w.LastContact = -2 }},
		{"negative peers", func(w *wireStats) { w.Tracked = -1 }},
		{"more answered than tracked", func(w *wireStats) { w.Answered = w.Tracked + 1 }},
		{"more tracked than a tracker holds", func(w *wireStats) { w.Tracked = maxTrackedPeers + 1 }},
		{"unknown suffrage", func(w *wireStats) { w.Members[0].Suffrage = uint8(hraft.Staging) + 1 }},
		{"negative age", func(w *wireStats) { w.Members[1].Age = -1 }},
		{"lag without a report", func(w *wireStats) { w.Members[2].Lag = 3 }},
		{"bad member in list", func(w *wireStats) { w.Members[1].ID = []byte("x") }},
		{"too many members", func(w *wireStats) {
			w.Members = make([]wireMemberStats, MaxStatusMembers+1)
			for i := range w.Members {
				w.Members[i].ID = []byte(seededPeerID(t, i))
			}
		}},
	} {
		w := sampleStats(t).toWire()
		tc.break_(w)
		if _, err := statsFromWire(w); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: %v, want ErrInvalidCommand", tc.name, err)
		}
	}
	if _, err := statsFromWire(nil); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("no stats: %v", err)
	}
}

// FuzzStatusAnswer decodes arbitrary bytes as a member's status answer, as
// a Client does: it never panics, and a Stats it accepts encodes back to
// an answer that decodes to the same Stats.
func FuzzStatusAnswer(f *testing.F) {
	if b, err := cborEnc.Marshal(&response{Stats: sampleStats(f).toWire()}); err == nil {
		f.Add(b)
	}
	f.Add([]byte{0xa1, 0x18, 0x28, 0xa1, 0x01, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		var resp response
		if wireDec.Unmarshal(b, &resp) != nil {
			return
		}
		st, err := statsFromWire(resp.Stats)
		if !bytes.Equal(b, orig) {
			t.Fatal("decoding modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("error %v is not ErrInvalidCommand", err)
			}
			return
		}
		if len(st.Members) > MaxStatusMembers {
			t.Fatalf("%d members accepted", len(st.Members))
		}
		again, err := statsFromWire(st.toWire())
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("re-encoded Stats: %v\n got %+v\nwant %+v", err, again, st)
		}
	})
}

// In a keyed namespace the status command is sealed like every other: a
// Client without the key is refused with the sentinel, and one with the
// key gets the member's Stats.
func TestStatusKeyedNamespace(t *testing.T) {
	const ns = "/raft/status-keyed"
	secret := newSecret(t)
	mesh, c := oneMember(t, ns, WithEncryptionKey(secret))
	keyless, err := NewClient(mesh.Node(1), ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = keyless.Close() })
	if _, err := keyless.Status(5*time.Second, mesh.ID(0)); !errors.Is(err, ErrEncryptionRequired) {
		t.Errorf("Status without the key: %v, want ErrEncryptionRequired", err)
	}
	keyed, err := NewClient(mesh.Node(1), ns, secret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = keyed.Close() })
	st, err := keyed.Status(5*time.Second, mesh.ID(0))
	if err != nil {
		t.Fatalf("Status with the key: %v", err)
	}
	if st.ID != c.self || st.State != hraft.Leader || st.Bootstrap != BootstrapBootstrapped || len(st.Members) != 1 || !st.Members[0].Leader {
		t.Errorf("Status with the key: %+v", st)
	}
}
