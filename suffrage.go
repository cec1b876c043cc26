package raft

// The voter cap: a namespace may have dozens of members, but only
// WithMaxVoters of them vote (a quorum of 50 would make every write wait
// for 26 members, and every election for as many votes). The others join
// as non-voters: they replicate every entry, forward writes and serve
// barrier reads like any member, and autopilot (autopilot.go) promotes
// one when a voter goes away. This file holds the rule that decides how a
// member joins, and the non-voter list that peer exchange carries so that
// a non-voter can tell whether a configuration still holds it.

import (
	"fmt"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxStatusNonVoters caps the non-voter list an exchange carries.
const maxStatusNonVoters = 256

// nonVoterList is the non-voters of a member's configuration, as peer
// exchange carries them. Count is how many there are; IDs lists at most
// maxStatusNonVoters of them.
type nonVoterList struct {
	_     struct{} `cbor:",toarray"`
	Count int
	IDs   [][]byte
}

// setStatus puts st in the request, with what travels beside it (the
// non-voter list and the founder claim).
func (r *request) setStatus(st *status) {
	r.Status = st
	if st != nil {
		r.NonVoters, r.Lowest, r.SawCluster = st.NonVoters, st.Lowest, st.SawCluster
	}
}

// setStatus puts st in the response, with what travels beside it.
func (r *response) setStatus(st *status) {
	r.Status = st
	if st != nil {
		r.NonVoters, r.Lowest, r.SawCluster, r.Index = st.NonVoters, st.Lowest, st.SawCluster, st.LastIndex
	}
}

// status is the sender's status with what it sent beside it.
func (r *request) status() *status {
	return withBeside(r.Status, r.NonVoters, r.Lowest, r.SawCluster)
}

// status is the answering member's status with what it sent beside it.
func (r *response) status() *status {
	st := withBeside(r.Status, r.NonVoters, r.Lowest, r.SawCluster)
	if st != nil && r.Index != 0 {
		out := *st
		out.LastIndex = r.Index
		st = &out
	}
	return st
}

func withBeside(st *status, nv *nonVoterList, low *lowestClaim, saw *int64) *status {
	if st == nil || (nv == nil && low == nil && saw == nil) {
		return st
	}
	out := *st
	out.NonVoters, out.Lowest, out.SawCluster = nv, low, saw
	return &out
}

// listsEveryServer reports whether the status names a leader and lists
// every server of its configuration, voters and non-voters: only then does
// a peer's absence from both lists mean it is not a server. A status
// without a non-voter list comes from a build that has no non-voters to
// list.
func (st *status) listsEveryServer() bool {
	if !st.listsEveryVoter() {
		return false
	}
	nv := st.NonVoters
	return nv == nil || (nv.Count >= 0 && len(nv.IDs) >= nv.Count)
}

// holds reports whether the status lists id as a voter or a non-voter.
func (st *status) holds(id peer.ID) bool {
	return containsPeer(st.VoterIDs, id) || (st.NonVoters != nil && containsPeer(st.NonVoters.IDs, id))
}

// joinAction is how the leader takes a peer that asks to join.
type joinAction int

const (
	// joinNothing: the peer already is a server (of either suffrage).
	joinNothing joinAction = iota
	// joinAsVoter: the voter set has room.
	joinAsVoter
	// joinAsNonvoter: the voter set is full.
	joinAsNonvoter
)

func (a joinAction) String() string {
	switch a {
	case joinNothing:
		return "nothing"
	case joinAsVoter:
		return "voter"
	case joinAsNonvoter:
		return "non-voter"
	}
	return fmt.Sprintf("joinAction(%d)", int(a))
}

// joinSuffrage decides how a peer that asks to join is added to the
// configuration servers: not at all when it already is a server (a voter
// stays a voter, a non-voter waits for autopilot to promote it), as a
// voter while there are fewer than maxVoters voters, and otherwise as a
// non-voter.
func joinSuffrage(servers []hraft.Server, id hraft.ServerID, maxVoters int) joinAction {
	voters := 0
	for _, s := range servers {
		if s.ID == id {
			return joinNothing
		}
		if s.Suffrage == hraft.Voter {
			voters++
		}
	}
	if voters < maxVoters {
		return joinAsVoter
	}
	return joinAsNonvoter
}

// capFounders keeps the first maxVoters of the founders (self first, then
// the smallest IDs): a founder group larger than the cap bootstraps only
// the cap's worth of voters, and the others join afterwards as
// non-voters.
func capFounders(founders []peer.ID, maxVoters int) []peer.ID {
	if len(founders) > maxVoters {
		return founders[:maxVoters]
	}
	return founders
}

// nonVoterListOf lists the non-voters of servers for an exchange.
func nonVoterListOf(servers []hraft.Server) *nonVoterList {
	nv := &nonVoterList{}
	for _, s := range servers {
		if s.Suffrage == hraft.Voter {
			continue
		}
		nv.Count++
		if len(nv.IDs) < maxStatusNonVoters {
			if id, err := peer.Decode(string(s.ID)); err == nil {
				nv.IDs = append(nv.IDs, []byte(id))
			}
		}
	}
	return nv
}
