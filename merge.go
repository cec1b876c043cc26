package raft

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
)

// mergeIfSplit handles a second cluster in the namespace, which the
// bootstrap protocol avoids but cannot rule out when discovery was slow or
// the network split during formation (for example a node that bootstrapped
// alone). A voter that sees a live member of a cluster whose voters share
// none with its own, and that cluster is larger (or as large, with a smaller
// leader ID), drops its state and joins it. Every member of the smaller
// cluster does the same, so the namespace ends as one cluster. Writes that
// only the smaller cluster accepted are kept in a file (see backup.go); the
// README says so. It reports whether it dropped its state.
func (c *cluster) mergeIfSplit() bool {
	if !c.mayReset() {
		return false
	}
	members, err := c.Members()
	if err != nil || len(members) == 0 {
		return false
	}
	mine := map[peer.ID]bool{}
	for _, m := range members {
		if m.Suffrage == hraft.Voter {
			mine[m.ID] = true
		}
	}
	myLeader, err := c.Leader()
	if err != nil {
		c.rejoinIfRemoved(mine)
		return c.leaveOrphanedConfig(mine)
	}
	c.orphanRounds = 0
	for _, m := range mergeCandidates(mine, myLeader, c.peers.view()) {
		// Believe no single peer: a majority of the other cluster's voters
		// must confirm it before this member drops its data.
		if !c.confirmCluster(m.leader, m.voters, mine) {
			c.logger.Warn("a peer reported another cluster that its voters do not confirm", "peer", m.via, "leader", m.leader)
			continue
		}
		return c.giveWay("found another cluster in the namespace; dropping this one to join it", m, len(mine))
	}
	for _, m := range overlapCandidates(mine, myLeader, c.peers.view()) {
		if !c.confirmOverlap(m.leader, m.voters, myLeader) {
			continue
		}
		return c.giveWay("found another cluster that shares voters with ours; dropping this one to join it", m, len(mine))
	}
	return false
}

// giveWay drops this member's cluster (reset) to join the confirmed
// candidate m, saying why; ours is our voter count. It reports whether the
// state was dropped.
func (c *cluster) giveWay(why string, m mergeCandidate, ours int) bool {
	c.logger.Warn(why, "leader", m.leader, "their_voters", len(m.voters), "our_voters", ours)
	c.lastReset = time.Now()
	if err := c.reset(); err != nil {
		c.logger.Error("reset failed", "error", err)
		return false
	}
	c.metrics.merged(mergeOtherCluster)
	return true
}

// overlapCandidates lists the other clusters that share voters with ours
// (voters mine, led by myLeader) and that ours must give way to. Two founder
// groups that each saw some of the same nodes can both bootstrap with them;
// each keeps a quorum when it holds enough of its own voters (say {a, b, c,
// d} with a, b, c following a, and {c, d, e} with d, e following e), so
// neither is orphaned and the disjoint rule does not see them. A live peer
// reports such a cluster when it names a leader outside mine whose
// configuration, listed in full, does not hold myLeader (so it is not our
// own cluster seen during a change) and shares a voter with mine. The size
// rule is mergeCandidates': the larger cluster stays, ties go to the
// smaller leader ID, the same on both sides.
func overlapCandidates(mine map[peer.ID]bool, myLeader peer.ID, view []peerView) []mergeCandidate {
	var out []mergeCandidate
	for _, v := range view {
		st := v.status
		if !v.alive || !st.Formed || !st.Member || !st.listsEveryVoter() || !sharesVoter(st.VoterIDs, mine) {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || mine[leader] || leader == myLeader || containsPeer(st.VoterIDs, myLeader) {
			continue
		}
		theirs, ours := len(st.VoterIDs), len(mine)
		if theirs > ours || (theirs == ours && leader < myLeader) {
			out = append(out, mergeCandidate{via: v.id, leader: leader, voters: st.VoterIDs})
		}
	}
	return out
}

// confirmOverlap asks each claimed voter of an overlapping cluster (those
// in ours too, but not this member) for its state, and reports whether a
// majority of them confirm it (confirmsOverlap).
func (c *cluster) confirmOverlap(leader peer.ID, voterIDs [][]byte, myLeader peer.ID) bool {
	confirmed := 0
	for _, b := range voterIDs {
		id, err := peer.IDFromBytes(b)
		if err != nil || id == c.self {
			continue
		}
		if st, ok := c.askStatus(id); ok && confirmsOverlap(st, leader, myLeader) {
			confirmed++
		}
	}
	return confirmed*2 > len(voterIDs)
}

// confirmsOverlap reports whether st, the state a claimed voter gave of
// itself, confirms an overlapping cluster: it is a voter following leader,
// in a configuration listed in full that does not hold myLeader.
func confirmsOverlap(st *status, leader, myLeader peer.ID) bool {
	l, err := peer.IDFromBytes(st.Leader)
	return err == nil && l == leader && st.Formed && st.Member && st.listsEveryVoter() && !containsPeer(st.VoterIDs, myLeader)
}

// leaveOrphanedConfig handles overlapping configurations, which the disjoint
// rule of mergeIfSplit cannot see: two founders that never saw each other
// during their windows, but both saw a third node c with a larger ID, both
// bootstrap with it ({a, c} and {b, c}). c follows only one of them; the
// other is left a leaderless candidate forever. This member, having no
// leader, drops its state and joins the other cluster when a live voter of
// its own configuration follows a leader outside that configuration, in a
// configuration without this member; the sighting must hold on two
// consecutive rounds (an election in progress is not an orphaned
// configuration) and the leader itself must confirm it. mine is this
// member's voter set.
func (c *cluster) leaveOrphanedConfig(mine map[peer.ID]bool) bool {
	leader, ok := orphanedBy(c.self, mine, c.peers.view())
	if !ok {
		c.orphanRounds = 0
		return false
	}
	if c.orphanRounds++; c.orphanRounds < 2 {
		return false
	}
	if !c.confirmLeaderWithout(leader) {
		return false
	}
	c.orphanRounds = 0
	c.logger.Warn("a voter of our configuration follows another cluster and we have no leader; dropping this configuration to join it",
		"leader", leader)
	c.lastReset = time.Now()
	if err := c.reset(); err != nil {
		c.logger.Error("reset failed", "error", err)
		return false
	}
	c.metrics.merged(mergeOrphaned)
	return true
}

// mergeCandidate is another cluster of the namespace, as one peer reports it.
type mergeCandidate struct {
	via    peer.ID  // the peer that reported it
	leader peer.ID  // its leader
	voters [][]byte // its voters, as the peer listed them
}

// mergeCandidates lists, in view order, the other clusters that live peers
// report and that this member's cluster (voters mine, led by myLeader) must
// give way to: the reporting peer and its leader are outside mine, the
// reported voters share none with mine, and that cluster is larger, or as
// large with a smaller leader ID. The rule is the same on both sides, so of
// two clusters exactly one gives way. A candidate is only a claim: the
// caller has a majority of its voters confirm it (confirmsCluster).
func mergeCandidates(mine map[peer.ID]bool, myLeader peer.ID, view []peerView) []mergeCandidate {
	var out []mergeCandidate
	for _, v := range view {
		st := v.status
		if !v.alive || !st.Formed || mine[v.id] || len(st.VoterIDs) == 0 {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || mine[leader] || sharesVoter(st.VoterIDs, mine) {
			continue
		}
		theirs, ours := len(st.VoterIDs), len(mine)
		if theirs > ours || (theirs == ours && leader < myLeader) {
			out = append(out, mergeCandidate{via: v.id, leader: leader, voters: st.VoterIDs})
		}
	}
	return out
}

// sharesVoter reports whether any of ids (peer IDs as bytes) is in mine.
func sharesVoter(ids [][]byte, mine map[peer.ID]bool) bool {
	for _, b := range ids {
		if id, err := peer.IDFromBytes(b); err == nil && mine[id] {
			return true
		}
	}
	return false
}

// orphanedBy returns the leader that a live voter of our configuration (mine)
// follows, when that leader is not in mine and that voter's configuration,
// reported in full, does not hold this member (self).
func orphanedBy(self peer.ID, mine map[peer.ID]bool, view []peerView) (peer.ID, bool) {
	for _, v := range view {
		st := v.status
		if !v.alive || v.id == self || !mine[v.id] || !st.Formed || !st.Member || !st.listsEveryServer() {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || mine[leader] || leader == self {
			continue
		}
		if !st.holds(self) {
			return leader, true
		}
	}
	return "", false
}

// confirmLeaderWithout asks leader itself whether it leads a configuration,
// given in full, that does not hold this member.
func (c *cluster) confirmLeaderWithout(leader peer.ID) bool {
	st, ok := c.askStatus(leader)
	return ok && leadsWithout(st, leader, c.self)
}

// leadsWithout reports whether st, the state that leader gave of itself,
// shows a voter that leads (it names itself leader) a configuration, listed
// in full, without self.
func leadsWithout(st *status, leader, self peer.ID) bool {
	l, err := peer.IDFromBytes(st.Leader)
	return err == nil && l == leader && st.Formed && st.Member && st.listsEveryServer() && !st.holds(self)
}

// askStatus asks a peer, in a peer exchange, for its own state.
func (c *cluster) askStatus(id peer.ID) (*status, bool) {
	st := c.status()
	req := &request{Cmd: cmdExchangePeers}
	req.setStatus(st)
	resp, err := c.caller.ask(c.ctx, id, req, time.Now().Add(exchangeTimeout))
	if err != nil || resp.Status == nil {
		return nil, false
	}
	return resp.status(), true
}

// containsPeer reports whether ids (peer IDs as bytes) holds id.
func containsPeer(ids [][]byte, id peer.ID) bool {
	for _, b := range ids {
		if peer.ID(b) == id {
			return true
		}
	}
	return false
}

// confirmCluster asks each claimed voter of another cluster for its state,
// and reports whether a majority of them confirm it (confirmsCluster).
func (c *cluster) confirmCluster(leader peer.ID, voterIDs [][]byte, mine map[peer.ID]bool) bool {
	confirmed := 0
	for _, b := range voterIDs {
		id, err := peer.IDFromBytes(b)
		if err != nil || mine[id] || id == c.self {
			continue
		}
		if st, ok := c.askStatus(id); ok && confirmsCluster(st, leader, mine) {
			confirmed++
		}
	}
	return confirmed*2 > len(voterIDs)
}

// confirmsCluster reports whether st, the state a claimed voter gave of
// itself, confirms the claim: it is a voter of a cluster led by leader whose
// voters share none with ours (mine).
func confirmsCluster(st *status, leader peer.ID, mine map[peer.ID]bool) bool {
	l, err := peer.IDFromBytes(st.Leader)
	return err == nil && l == leader && st.Formed && st.Member && !sharesVoter(st.VoterIDs, mine)
}

// resetCooldown is the least time between two resets of a member: a member
// that just dropped its state may still hear from the cluster it left (or,
// in an open namespace, from peers claiming clusters that do not exist), and
// must not drop, and back up, its state again and again.
const resetCooldown = 10 * time.Second

// mayReset tells whether the cooldown since the last reset has passed.
func (c *cluster) mayReset() bool {
	return c.lastReset.IsZero() || time.Since(c.lastReset) >= resetCooldown
}

// reset drops this member's Raft state and key-value data and starts Raft
// afresh, ready to join another cluster (the caller sets lastReset). The
// data is first written to a backup file (see backup.go): if that fails,
// nothing is dropped.
func (c *cluster) reset() error {
	// Only Close waits on this lock. Accessors keep reading the old Raft
	// (stopped: no leader, the last configuration) until the new one is
	// published.
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed.Load() {
		return ErrShutdown
	}
	old := c.run.Load()
	if err := c.stopRaft(old); err != nil {
		return err
	}
	// Raft is stopped, so the state machine holds still while it is copied.
	path, err := c.fsm.backupData(c.backupDir(), time.Now())
	if err != nil {
		if _, r, layer, serr := c.start(); serr == nil {
			c.run.Store(newRaftRun(r, layer))
		}
		return fmt.Errorf("raft: not dropping this member's data, keeping a copy failed: %w", err)
	}
	c.logger.Warn("kept this member's data before dropping it to join another cluster; `tauraft kv restore` reads it back", "file", path)
	// The state machine goes first: a crash part way must never leave it
	// with data and an applied index but no log, or it would skip the
	// entries of the cluster it joins. (The log's synced delete below also
	// makes the wipe durable when the wipe itself was not synced.)
	if err := c.fsm.wipe(); err != nil {
		return err
	}
	if first, err := c.logs.FirstIndex(); err == nil {
		if last, err := c.logs.LastIndex(); err == nil && last > 0 {
			if err := c.logs.DeleteRange(first, last); err != nil {
				return err
			}
		}
	}
	if err := deleteChildren(c.node.Store(), c.namespace+"/stable"); err != nil {
		return err
	}
	c.votedIn.Store(false)
	c.outcome.note(evReset)
	if err := os.RemoveAll(c.snapDir); err != nil {
		return err
	}
	_, r, layer, err := c.start()
	if err != nil {
		return err
	}
	c.run.Store(newRaftRun(r, layer))
	return nil
}

// deleteChildren deletes the keys exactly one segment below prefix.
func deleteChildren(ds datastore.Batching, prefix string) error {
	ctx := context.Background()
	res, err := ds.Query(ctx, query.Query{Prefix: prefix, KeysOnly: true})
	if err != nil {
		return err
	}
	entries, err := res.Rest()
	if err != nil {
		return err
	}
	b, err := ds.Batch(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Key, prefix+"/")
		if ok && rest != "" && !strings.Contains(rest, "/") {
			if err := b.Delete(ctx, datastore.RawKey(e.Key)); err != nil {
				return err
			}
		}
	}
	return b.Commit(ctx)
}
