package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Members lists the servers of the latest configuration.
func (c *cluster) Members() ([]Member, error) {
	r, err := c.r()
	if err != nil {
		return nil, err
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, translateRaftError(err)
	}
	servers := f.Configuration().Servers
	out := make([]Member, 0, len(servers))
	for _, s := range servers {
		id, err := peer.Decode(string(s.ID))
		if err != nil {
			return nil, fmt.Errorf("raft: member id %q: %w", s.ID, err)
		}
		out = append(out, Member{ID: id, Address: s.Address, Suffrage: s.Suffrage})
	}
	return out, nil
}

// isVoter tells whether id is a voter of the latest configuration.
func (c *cluster) isVoter(id peer.ID) bool {
	members, err := c.Members()
	if err != nil {
		return false
	}
	for _, m := range members {
		if m.ID == id && m.Suffrage == hraft.Voter {
			return true
		}
	}
	return false
}

// AddVoter adds id as a voter. Leader only.
func (c *cluster) AddVoter(id peer.ID, timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	if err := validatePeer(id); err != nil {
		return err
	}
	return c.addVoter(id, timeout)
}

// validatePeer checks a peer ID given to a membership call.
func validatePeer(id peer.ID) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("%w: peer ID: %v", ErrInvalidCommand, err)
	}
	return nil
}

// addVoter adds a validated peer as a voter, on the leader.
func (c *cluster) addVoter(id peer.ID, timeout time.Duration) error {
	return c.addServer(id, hraft.Voter, timeout)
}

// addNonvoter adds a validated peer as a non-voter, on the leader.
func (c *cluster) addNonvoter(id peer.ID, timeout time.Duration) error {
	return c.addServer(id, hraft.Nonvoter, timeout)
}

// addServer adds a validated peer with the given suffrage, on the leader,
// once it has tried to learn the peer's addresses.
func (c *cluster) addServer(id peer.ID, suffrage hraft.ServerSuffrage, timeout time.Duration) error {
	r, err := c.r()
	if err != nil {
		return err
	}
	if r.State() != hraft.Leader {
		return ErrNotLeader
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	c.peers.ensureAddrs(ctx, id)
	cancel()
	sid, addr := hraft.ServerID(id.String()), hraft.ServerAddress(id.String())
	return c.changeConfiguration(func() hraft.IndexFuture {
		if suffrage == hraft.Voter {
			return r.AddVoter(sid, addr, 0, timeout)
		}
		return r.AddNonvoter(sid, addr, 0, timeout)
	}, timeout)
}

// joinVoter is the leader's side of a join request: a peer that already is a
// server (voter or non-voter) is left as it is; any other is added, as a
// voter while the voter set is under the cap and as a non-voter after
// (joinSuffrage), once the leader has reached it (a voter that does not
// answer would cost the cluster its quorum): by asking it, or for a
// non-voter (which counts for no quorum) by its having exchanged with the
// leader lately. A request
// forwarded by via is taken only if via is a server of the configuration:
// an outsider cannot pose as a forwarding member.
//
// Each decision is made on the configuration the changes before it left
// (two joins decided together would both take the last voter seat), under
// confMu. A voter's change holds confMu until it commits; a non-voter's
// only until Raft has taken it, which it does once the change before it
// has committed (so the next decision sees it). With dozens of members
// starting together the non-voters then go in back to back, one commit
// each, instead of one full join (a reach check, a commit, and the
// joiner's retry timer) after another.
func (c *cluster) joinVoter(id, via peer.ID, timeout time.Duration) error {
	if via != "" && !c.inConfiguration(via) {
		return fmt.Errorf("%w: %s forwarded a join but is not a member", ErrInvalidCommand, via)
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	sid := hraft.ServerID(id.String())
	pre := joinSuffrage(r.GetConfiguration().Configuration().Servers, sid, c.cfg.maxVoters)
	if pre == joinNothing {
		return nil
	}
	c.logger.Debug("join request", "peer", id, "via", via, "as", pre)
	// A non-voter must answer exchanges too (a peer that does not would
	// only cost the leader its replication), but one that exchanged with
	// us lately has shown it does: no need to ask it again.
	if pre == joinAsVoter || !c.peers.answeredWithin(id, c.peers.clusterMemory()) {
		if _, ok := c.askStatus(id); !ok {
			return fmt.Errorf("raft: could not reach %s to add it", id)
		}
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	c.peers.ensureAddrs(ctx, id)
	cancel()
	c.confMu.Lock()
	locked := true
	defer func() {
		if locked {
			c.confMu.Unlock()
		}
	}()
	if r.State() != hraft.Leader {
		return ErrNotLeader
	}
	// Decided again now: the configuration may have changed meanwhile.
	action := joinSuffrage(r.GetConfiguration().Configuration().Servers, sid, c.cfg.maxVoters)
	switch action {
	case joinNothing:
		return nil
	case joinAsVoter:
		if pre != joinAsVoter {
			// A voter seat opened meanwhile: a voter must be reached.
			if _, ok := c.askStatus(id); !ok {
				return fmt.Errorf("raft: could not reach %s to add it", id)
			}
		}
		err = c.addVoter(id, timeout)
	case joinAsNonvoter:
		addr := hraft.ServerAddress(id.String())
		err = c.changeConfiguration(func() hraft.IndexFuture {
			f := r.AddNonvoter(sid, addr, 0, timeout)
			c.confMu.Unlock() // taken by Raft: the next decision sees it
			locked = false
			return f
		}, timeout)
	}
	if err != nil {
		return err
	}
	c.logger.Info("added a member", "peer", id, "as", action)
	return nil
}

// RemoveServer removes id from the configuration. Leader only.
func (c *cluster) RemoveServer(id peer.ID, timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	return c.changeConfiguration(func() hraft.IndexFuture {
		return r.RemoveServer(hraft.ServerID(id.String()), 0, timeout)
	}, timeout)
}

// status reports this member's state for peer exchange.
func (c *cluster) status() *status {
	st := &status{Deciding: c.peers.deciding.Load(), SawCluster: c.peers.clusterAge()}
	r, err := c.r()
	if err != nil {
		return st
	}
	if _, id := r.LeaderWithID(); id != "" {
		if p, err := peer.Decode(string(id)); err == nil {
			st.Leader = []byte(p)
		}
	}
	st.LastIndex = r.LastIndex()
	st.Formed = st.LastIndex > 0
	if !c.cfg.noClaims {
		st.Lowest = c.peers.claim(!st.Formed && len(st.Leader) == 0)
	}
	if st.Formed {
		if f := r.GetConfiguration(); f.Error() == nil {
			st.NonVoters = nonVoterListOf(f.Configuration().Servers)
			for _, s := range f.Configuration().Servers {
				if s.Suffrage == hraft.Voter {
					st.Voters++
					if s.ID == hraft.ServerID(c.self.String()) {
						st.Member = true
					}
					if id, err := peer.Decode(string(s.ID)); err == nil && len(st.VoterIDs) < maxStatusVoters {
						st.VoterIDs = append(st.VoterIDs, []byte(id))
					}
				}
			}
		}
	}
	return st
}

// requestJoin asks the cluster to add this node as a voter, through the
// targets joinTargets picks. It reports whether one of them accepted.
func (c *cluster) requestJoin(view []peerView, timeout time.Duration) bool {
	// The whole attempt, every target included, fits in timeout: during the
	// bootstrap window New must not overrun by much.
	deadline := time.Now().Add(timeout)
	for _, id := range joinTargets(c.self, view) {
		left := time.Until(deadline)
		if c.ctx.Err() != nil || left <= 0 {
			return false
		}
		// The member gets most of the time; the rest carries its answer.
		req := &request{Cmd: cmdJoinVoter, Peer: []byte(c.self), Timeout: int64(left * 4 / 5)}
		c.logger.Debug("asking to join", "via", id)
		done := c.peers.askingToJoin(id, deadline)
		resp, err := c.caller.ask(c.ctx, id, req, deadline)
		done()
		if err == nil {
			c.logger.Debug("join request accepted", "via", id)
			if resp.Status != nil {
				if leader, err := peer.IDFromBytes(resp.Status.Leader); err == nil {
					c.peers.joinAccepted(id, leader)
				}
			}
			return true
		}
		c.logger.Debug("join request failed", "via", id, "error", err)
	}
	return false
}

// joinTargets is whom a node asks to join, in order: the leader that a live
// member reports (unless that is the node itself), then every live member
// that has a cluster (it forwards to its leader).
func joinTargets(self peer.ID, view []peerView) []peer.ID {
	var targets []peer.ID
	leader := leaderOf(view)
	if leader != "" && leader != self {
		targets = append(targets, leader)
	}
	for _, v := range view {
		if v.alive && v.status.Formed && v.id != self && v.id != leader {
			targets = append(targets, v.id)
		}
	}
	return targets
}

// leaderOf returns the leader that a live, formed peer reports, if any.
func leaderOf(view []peerView) peer.ID {
	for _, v := range view {
		if v.alive && v.status.Formed && len(v.status.Leader) > 0 {
			if id, err := peer.IDFromBytes(v.status.Leader); err == nil {
				return id
			}
		}
	}
	return ""
}

// waitMember waits until this node's configuration holds it (as a voter or
// a non-voter), or the deadline passes.
func (c *cluster) waitMember(deadline time.Time) {
	for !c.inConfiguration(c.self) && time.Now().Before(deadline) {
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// startMembership starts the membership loop once.
func (c *cluster) startMembership() {
	c.membershipOnce.Do(func() {
		c.wg.Add(1)
		go c.membershipLoop()
	})
}

// membershipLoop keeps this node in the cluster. Until it is a member (a
// voter or a non-voter) it asks to join, with backoff (cut short when a
// peer first answers that it has a cluster), through every live member it
// knows (and, when no cluster exists anywhere it can see and it has the
// smallest ID, it bootstraps the waiting nodes). Once a member it
// watches for a second cluster in the namespace (see mergeIfSplit). A
// member removed while running stays out until restarted.
func (c *cluster) membershipLoop() {
	defer c.wg.Done()
	t := c.peers
	wasVoter := false
	warnedRemoved := false
	backoff := t.fastInterval()
	for {
		if c.failure.Load() != nil {
			return // the member has stopped; its calls say why
		}
		wait := backoff
		var joinable <-chan struct{} // set while waiting to be added
		switch {
		case c.inConfiguration(c.self):
			if !wasVoter {
				c.logger.Info("member of the cluster")
				c.outcome.note(c.membershipEvent())
				wasVoter, warnedRemoved = true, false
				t.fast.Store(false)
				backoff = t.fastInterval()
			}
			if c.mergeIfSplit() {
				wasVoter = false
				t.fast.Store(true)
				wait = 0
				break
			}
			wait = steadyExchangeInterval
		case c.votedIn.Load():
			if !warnedRemoved {
				c.logger.Warn("removed from the configuration; not rejoining until restarted")
				warnedRemoved = true
			}
			wait = steadyExchangeInterval
		default:
			t.fast.Store(true)
			joinable = t.joinable
			view := t.view()
			if c.requestJoin(view, 5*time.Second) {
				wait = 20 * time.Millisecond // becoming a voter takes one replication
				break
			}
			// Past the window every live peer counts as a founder.
			if c.peers.sawClusterRecently() {
				// A cluster was seen just now: keep asking to join it.
			} else if voters, ok := founderRule(c.self, view, time.Now(), c.cfg.maxVoters, c.claimedLower(c.windowEnd)); ok && !c.formed() &&
				!(c.patient(c.windowEnd) && aloneWhileUnreached(voters, view)) {
				if err := c.bootstrapWith(voters); err != nil {
					c.logger.Error("bootstrap failed", "error", err)
				} else {
					c.metrics.bootstrapDecision(decisionLate)
					c.logger.Info("bootstrapped the waiting nodes", "voters", len(voters))
				}
				wait = 20 * time.Millisecond
				break
			}
			backoff *= 2
			if backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-joinable:
			backoff = t.fastInterval()
		case <-time.After(wait):
		}
	}
}

// rejoinIfRemoved handles a voter that was removed while it was down: its
// own configuration still lists it, so it waits for a leader that will never
// call. When a live member of its configuration follows a leader of that same
// configuration, and that leader confirms that its configuration no longer
// holds this node, it asks to join again. Joining is harmless if wrong: the
// leader only adds a voter.
func (c *cluster) rejoinIfRemoved(mine map[peer.ID]bool) {
	for _, leader := range removedBy(c.self, mine, c.peers.view()) {
		if !c.confirmLeaderWithout(leader) {
			continue
		}
		c.logger.Info("removed from the configuration while away; asking to join again", "leader", leader)
		if c.requestJoin(c.peers.view(), 5*time.Second) {
			c.waitMember(time.Now().Add(time.Second))
		}
		return
	}
}

// removedBy lists the leaders that, by what live voters of this member's own
// configuration (mine) report, now lead that configuration without this
// member: each report names a leader inside mine and lists every voter, and
// this member is not among them. Each leader is listed once, in view order;
// it must still confirm before the member asks back in.
func removedBy(self peer.ID, mine map[peer.ID]bool, view []peerView) []peer.ID {
	var out []peer.ID
	for _, v := range view {
		st := v.status
		if !v.alive || !mine[v.id] || !st.Formed || !st.listsEveryServer() || st.holds(self) {
			continue
		}
		leader, err := peer.IDFromBytes(st.Leader)
		if err != nil || !mine[leader] || leader == self || slices.Contains(out, leader) {
			continue
		}
		out = append(out, leader)
	}
	return out
}

// configViewTTL is how long the hot paths (the guard of every inbound Raft
// RPC, the pacing of every outbound append) reuse one read of the latest
// configuration: hashicorp's GetConfiguration copies it through a future,
// several allocations, which at thousands of RPCs a second was a measurable
// part of a write. A membership change reaches them at most this late.
const configViewTTL = 25 * time.Millisecond

// configView is one read of the latest configuration (recentServers).
type configView struct {
	raft    *hraft.Raft
	at      time.Time
	servers []hraft.Server // shared: never modified
	// ids are the servers' peer IDs (shared: never modified), for
	// hasServer: the guard of every inbound RPC asks whether its peer is a
	// server, and encoding that peer's ID to compare it with the servers'
	// ID strings (base58) cost more than a microsecond each time.
	ids []peer.ID
}

// newConfigView is the view of servers read from r at now. The servers'
// peer IDs are those of prev when its servers have the same IDs, as they
// almost always do: decoding them again for every view cost 5 % of the CPU
// of a 48-member namespace in one process (each member reads a view
// every configViewTTL while RPCs flow, each view 48 base58 decodes).
func newConfigView(r *hraft.Raft, now time.Time, servers []hraft.Server, prev *configView) *configView {
	v := &configView{raft: r, at: now, servers: servers}
	if prev != nil && sameServerIDs(prev.servers, servers) {
		v.ids = prev.ids
		return v
	}
	v.ids = make([]peer.ID, 0, len(servers))
	for _, s := range servers {
		if p, err := peer.Decode(string(s.ID)); err == nil {
			v.ids = append(v.ids, p)
		}
	}
	return v
}

// sameServerIDs tells whether a and b list the same server IDs in the same
// order.
func sameServerIDs(a, b []hraft.Server) bool {
	return slices.EqualFunc(a, b, func(x, y hraft.Server) bool { return x.ID == y.ID })
}

// hasServer tells whether id is one of the view's servers.
func (v *configView) hasServer(id peer.ID) bool {
	return slices.Contains(v.ids, id)
}

// recentServers returns the servers of the latest configuration as read at
// most configViewTTL ago, or read now when fresh is set (a caller about to
// refuse on what a recent read says reads again first). The slice is
// shared: callers only read it.
func (c *cluster) recentServers(fresh bool) ([]hraft.Server, error) {
	v, err := c.recentView(fresh)
	if err != nil {
		return nil, err
	}
	return v.servers, nil
}

// recentView is recentServers returning the whole view.
func (c *cluster) recentView(fresh bool) (*configView, error) {
	r, err := c.r()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if v := c.confView.Load(); !fresh && v != nil && v.raft == r && now.Sub(v.at) < configViewTTL {
		return v, nil
	}
	v := newConfigView(r, now, r.GetConfiguration().Configuration().Servers, c.confView.Load())
	c.confView.Store(v)
	return v, nil
}

// inConfiguration tells whether id is a server (of any suffrage) of this
// member's latest configuration.
func (c *cluster) inConfiguration(id peer.ID) bool {
	for _, fresh := range []bool{false, true} {
		v, err := c.recentView(fresh)
		if err != nil {
			return false
		}
		if v.hasServer(id) {
			return true
		}
	}
	return false
}

// admitRPC decides, for the transport's guard, whether an inbound Raft RPC
// from a peer (whose header already names that very peer) may reach Raft.
func (c *cluster) admitRPC(rpcType byte, from peer.ID) error {
	// The common case, a server of the configuration, without building a
	// view of every tracked peer on each heartbeat, and on a recent read of
	// the configuration; a refusal is decided on a fresh one.
	v, err := c.recentView(false)
	if err != nil {
		return err
	}
	if len(v.servers) > 0 && v.hasServer(from) {
		return nil // what admitRPC says of any RPC from a server
	}
	if err := admitRPC(rpcType, c.self, from, v.servers, nil, ""); err == nil {
		return nil
	}
	if v, err = c.recentView(true); err != nil {
		return err
	}
	return admitRPC(rpcType, c.self, from, v.servers, c.peers.view(), c.peers.askingPeer())
}

// foundedWith tells whether from, a recent peer in view (not only a live
// one: on a busy network the founder's exchanges may time out for a few
// rounds while its election needs our vote), reported a configuration
// that lists self as a voter.
func foundedWith(self, from peer.ID, view []peerView) bool {
	for _, v := range view {
		if v.id == from && v.recent && v.status.Formed && containsPeer(v.status.VoterIDs, self) {
			return true
		}
	}
	return false
}

// reportedLeader tells whether a live, formed peer in view reports id as its
// leader.
func reportedLeader(id peer.ID, view []peerView) bool {
	for _, v := range view {
		if v.alive && v.status.Formed && peer.ID(v.status.Leader) == id {
			return true
		}
	}
	return false
}

// errNotMember refuses a leader's RPC from a peer outside the configuration.
var errNotMember = errors.New("not a member of this configuration")

// admitRPC is the rule for inbound Raft RPCs. Votes and pre-votes go to
// Raft, which refuses candidates outside its configuration by itself (the
// guard has made sure the candidate's ID cannot be left empty or borrowed),
// except on a member with no configuration yet: Raft would take any
// candidate's term there, so such a member (a founder waiting for the
// configuration another founder bootstrapped, or a node joining) takes
// votes only from a peer that told it, in an exchange, that it has a
// configuration listing this member as a voter. An RPC only a leader sends
// (AppendEntries, InstallSnapshot, TimeoutNow) could raise this member's
// term or make it follow someone, so it is taken only from:
//   - a server of this member's latest configuration (servers);
//   - for AppendEntries and InstallSnapshot to a member with no
//     configuration yet: such a founder, the leader that a live peer it
//     tracks reports (or that the peer it asked to join named in its
//     answer, joinAccepted), or the peer its join request is with while it
//     is out (asking: asked directly, the leader replicates to the joiner
//     before its answer is back);
//   - a peer that a majority of the configuration's voters report as their
//     leader (view): a leader added after this member's configuration was
//     last replicated to it, which only that leader can bring up to date.
//     Outsiders cannot fake it: each report comes from the voter itself.
func admitRPC(rpcType byte, self, from peer.ID, servers []hraft.Server, view []peerView, asking peer.ID) error {
	if len(servers) == 0 {
		appends := rpcType == rpcTypeAppendEntries || rpcType == rpcTypeInstallSnapshot
		switch {
		case rpcType == rpcTypeTimeoutNow:
			return errNotMember
		case foundedWith(self, from, view):
			return nil
		case appends && (reportedLeader(from, view) || (asking != "" && from == asking)):
			return nil
		}
		return errNotMember
	}
	if rpcType == rpcTypeRequestVote || rpcType == rpcTypeRequestPreVote {
		return nil
	}
	id := hraft.ServerID(from.String()) // once: this runs for every inbound RPC
	for _, s := range servers {
		if s.ID == id {
			return nil
		}
	}
	if rpcType == rpcTypeTimeoutNow || len(view) == 0 {
		return errNotMember
	}
	voters := map[peer.ID]bool{}
	for _, s := range servers {
		if s.Suffrage == hraft.Voter {
			if v, err := peer.Decode(string(s.ID)); err == nil {
				voters[v] = true
			}
		}
	}
	following := 0
	for _, v := range view {
		if v.alive && voters[v.id] && peer.ID(v.status.Leader) == from {
			following++
		}
	}
	if following*2 > len(voters) {
		return nil
	}
	return errNotMember
}
