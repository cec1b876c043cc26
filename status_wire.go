package raft

// The status command: any member answers with its own Stats (stats.go). It
// travels like every other command (sealed under the namespace key, so a
// peer without the key gets only a refusal), in response.Stats. The
// decoding side checks every field, so a hostile member's answer becomes
// ErrInvalidCommand, never a Stats with made-up values out of range.

import (
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxStatusMembers is the most members a status answer carries (the first
// ones of the configuration); Stats.Members of a larger configuration is
// cut to it over the wire.
const MaxStatusMembers = 256

// wireStats is Stats on the wire. Durations are nanoseconds ago, so the
// members' clocks need not agree.
type wireStats struct {
	ID          []byte            `cbor:"1,keyasint"`
	State       uint8             `cbor:"2,keyasint,omitempty"`
	Term        uint64            `cbor:"3,keyasint,omitempty"`
	Leader      []byte            `cbor:"4,keyasint,omitempty"`
	Commit      uint64            `cbor:"5,keyasint,omitempty"`
	Applied     uint64            `cbor:"6,keyasint,omitempty"`
	Last        uint64            `cbor:"7,keyasint,omitempty"`
	LastContact int64             `cbor:"8,keyasint,omitempty"`
	Snapshot    uint64            `cbor:"9,keyasint,omitempty"`
	Bootstrap   uint8             `cbor:"10,keyasint,omitempty"`
	Tracked     int64             `cbor:"11,keyasint,omitempty"`
	Answered    int64             `cbor:"12,keyasint,omitempty"`
	Members     []wireMemberStats `cbor:"13,keyasint,omitempty"`
}

// wireMemberStats is MemberStats on the wire.
type wireMemberStats struct {
	_        struct{} `cbor:",toarray"`
	ID       []byte
	Suffrage uint8
	Leader   bool
	Known    bool
	Match    uint64
	Lag      uint64
	Age      int64 // nanoseconds
}

// toWire encodes st, cut to MaxStatusMembers members.
func (st Stats) toWire() *wireStats {
	w := &wireStats{
		ID: []byte(st.ID), State: uint8(st.State), Term: st.Term, Leader: []byte(st.Leader),
		Commit: st.CommitIndex, Applied: st.AppliedIndex, Last: st.LastIndex,
		LastContact: int64(st.LastContact), Snapshot: st.LastSnapshotIndex,
		Bootstrap: uint8(st.Bootstrap), Tracked: int64(st.PeersTracked), Answered: int64(st.PeersAnswered),
	}
	members := st.Members
	if len(members) > MaxStatusMembers {
		members = members[:MaxStatusMembers]
	}
	for _, m := range members {
		w.Members = append(w.Members, wireMemberStats{
			ID: []byte(m.ID), Suffrage: uint8(m.Suffrage), Leader: m.Leader, Known: m.LagKnown,
			Match: m.MatchIndex, Lag: m.Lag, Age: int64(m.LagAge),
		})
	}
	return w
}

// statsFromWire checks and decodes a status answer: valid peer IDs, known
// states, suffrages and outcomes, non-negative counts and ages, at most
// MaxStatusMembers members. Anything else is ErrInvalidCommand.
func statsFromWire(w *wireStats) (Stats, error) {
	bad := func(format string, args ...any) (Stats, error) {
		return Stats{}, fmt.Errorf("%w: status answer: %s", ErrInvalidCommand, fmt.Sprintf(format, args...))
	}
	if w == nil {
		return bad("no stats")
	}
	id, err := peer.IDFromBytes(w.ID)
	if err != nil {
		return bad("member ID: %v", err)
	}
	st := Stats{
		ID: id, State: hraft.RaftState(w.State), Term: w.Term,
		CommitIndex: w.Commit, AppliedIndex: w.Applied, LastIndex: w.Last,
		LastContact: time.Duration(w.LastContact), LastSnapshotIndex: w.Snapshot,
		Bootstrap: BootstrapOutcome(w.Bootstrap), PeersTracked: int(w.Tracked), PeersAnswered: int(w.Answered),
	}
	if st.State > hraft.Shutdown {
		return bad("state %d", w.State)
	}
	if st.Bootstrap > maxBootstrapOutcome {
		return bad("bootstrap outcome %d", w.Bootstrap)
	}
	if w.LastContact < -1 || w.Tracked < 0 || w.Answered < 0 || w.Answered > w.Tracked || w.Tracked > maxTrackedPeers {
		return bad("last contact %d, peers %d/%d", w.LastContact, w.Answered, w.Tracked)
	}
	if len(w.Leader) > 0 {
		if st.Leader, err = peer.IDFromBytes(w.Leader); err != nil {
			return bad("leader ID: %v", err)
		}
	}
	if len(w.Members) > MaxStatusMembers {
		return bad("%d members", len(w.Members))
	}
	st.Members = make([]MemberStats, 0, len(w.Members))
	for _, wm := range w.Members {
		mid, err := peer.IDFromBytes(wm.ID)
		if err != nil {
			return bad("member ID: %v", err)
		}
		if wm.Suffrage > uint8(hraft.Staging) || wm.Age < 0 {
			return bad("member %s: suffrage %d, age %d", mid, wm.Suffrage, wm.Age)
		}
		if !wm.Known && (wm.Match != 0 || wm.Lag != 0 || wm.Age != 0) {
			return bad("member %s: lag without a report", mid)
		}
		st.Members = append(st.Members, MemberStats{
			ID: mid, Suffrage: hraft.ServerSuffrage(wm.Suffrage), Leader: wm.Leader, LagKnown: wm.Known,
			MatchIndex: wm.Match, Lag: wm.Lag, LagAge: time.Duration(wm.Age),
		})
	}
	return st, nil
}

// status answers the status command with this member's own Stats. It
// never forwards: the caller asked this member for its view.
func (s *commandService) status() *response {
	if s.stats == nil {
		return errorResponse(fmt.Errorf("%w: this member does not serve status", ErrInvalidCommand))
	}
	return &response{Stats: s.stats().toWire()}
}

// Status asks one member (the first of peers that answers; with none, the
// leader the Client knows or a member it finds) for its own Stats: its
// view of the cluster, with every member's lag when the member asked is
// the leader. timeout bounds the call (at most MaxTimeout). In a keyed
// namespace a Client without the key is refused (ErrEncryptionRequired).
func (c *Client) Status(timeout time.Duration, peers ...peer.ID) (Stats, error) {
	if err := validateTimeout(timeout); err != nil {
		return Stats{}, err
	}
	resp, err := c.call(&request{Cmd: cmdStatus}, timeout, true, peers)
	if err != nil {
		return Stats{}, err
	}
	return statsFromWire(resp.Stats)
}
