package raft

import (
	"errors"
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// bootstrap runs the bootstrap window: it discovers and exchanges peers, joins
// a leader as soon as one is reachable, and at the deadline decides (see
// decide). It returns once this node has decided.
func (c *cluster) bootstrap() error {
	t := c.peers
	t.deciding.Store(true)
	defer t.deciding.Store(false)
	window := c.cfg.bootstrapTimeout
	start := time.Now()
	deadline := start.Add(window)
	cutoff := start.Add(time.Duration(float64(window) * c.cfg.bootstrapThreshold))
	t.kick()
	tick := time.NewTicker(t.fastInterval() / 2)
	defer tick.Stop()
	progress := newProgressReporter(c.cfg.bootstrapProgress)
	for time.Now().Before(deadline) {
		select {
		case <-c.ctx.Done():
			return ErrShutdown
		case <-tick.C:
		}
		progress.report(t, deadline)
		if c.formed() && c.inConfiguration(c.self) {
			// A founder bootstrapped a configuration that includes us.
			c.logger.Info("joined as a founder", "after", time.Since(start))
			c.outcome.note(evFounder)
			c.metrics.bootstrapDecision(decisionJoinedFounder)
			c.startMembership()
			return nil
		}
		view := t.view()
		// Two exchange rounds in, its first answers and the founder claims
		// they carry are in: peers that waited out their whole windows and
		// wait for this node make it decide now, rather than hold them all
		// back for what is left of its window.
		if now := time.Now(); now.Sub(start) >= 2*t.fastInterval() && c.awaited(view) {
			c.logger.Debug("peers past their windows wait for this node to found the cluster: deciding now",
				"after", now.Sub(start))
			if now.Before(cutoff) {
				cutoff = now
			}
			break
		}
		if leaderOf(view) == "" {
			continue
		}
		budget := time.Until(deadline)
		if budget < time.Second {
			budget = time.Second
		}
		if c.requestJoin(view, budget) {
			// The leader committed us; return once our own replica knows it,
			// so a caller's first Members or Barrier already sees it.
			c.waitMember(time.Now().Add(time.Second))
			c.logger.Info("joined an existing cluster", "after", time.Since(start))
			c.outcome.note(evJoined)
			c.metrics.bootstrapDecision(decisionJoinedLeader)
			c.startMembership()
			return nil
		}
	}
	t.deciding.Store(false)
	c.decide(cutoff)
	return nil
}

// awaitedFounder tells whether a node still in its bootstrap window is the
// founder that peers past their own windows wait for, and should decide
// now rather than at its window's end: a live peer with no cluster, whose
// window is over, claims self as the smallest clusterless node it knows of
// (after a whole window of exchanges, so it defers to self), and the
// founder rule, with lower the smallest node claimed or heard of
// (claimedLower), would have self bootstrap. With starts spread over one
// window, a smallest ID that started last would otherwise hold every other
// node back for up to a second window.
func awaitedFounder(self peer.ID, view []peerView, lower peer.ID) bool {
	awaited := false
	for _, v := range view {
		st := &v.status
		if !v.alive || st.Formed || len(st.Leader) > 0 || st.Deciding || st.Lowest == nil {
			continue
		}
		if id, err := peer.IDFromBytes(st.Lowest.ID); err == nil && id == self {
			awaited = true
			break
		}
	}
	if !awaited {
		return false
	}
	// Whom it would bootstrap with does not matter here, only whether.
	_, ok := founderRule(self, view, time.Time{}, 1, lower)
	return ok
}

// awaited is awaitedFounder for this node; never without founder claims.
func (c *cluster) awaited(view []peerView) bool {
	return !c.cfg.noClaims && awaitedFounder(c.self, view, c.claimedLower(time.Now()))
}

// claimPatience is how long past its own window a clusterless node defers
// to a smaller founder that others claim but it cannot see itself. The
// claimed node's own window ends within it, and then it bootstraps (or it
// is gone, and the claims age out); a claim made up by a stranger in an
// open namespace delays formation by at most this much.
func claimPatience(window time.Duration) time.Duration { return 2 * window }

// lowestClaim is a founder claim, carried in peer exchange: the smallest
// ID of a live node without a cluster that the sender knows of (itself
// included), and how long ago that node was last heard from first-hand.
// Passing claims on lets a namespace with partial discovery agree on one
// founder: every node defers to the smallest ID that anyone it hears from
// has heard of, not only to the ones it sees itself. Ages only grow as a
// claim travels (each hop adds the time since it heard it), so a claim
// about a node that went away dies out everywhere within aliveWindow.
type lowestClaim struct {
	_   struct{} `cbor:",toarray"`
	ID  []byte
	Age int64 // milliseconds
}

// lowestKnown is the smallest ID among the live peers without a cluster
// and the founder claims live peers made, not older than aliveWindow, with
// its age; self counts (age 0) when selfClusterless. With unreached, peers
// that discovery or a member named but that have not answered yet count
// too (age: since first seen): on a busy network a node that could not
// reach a smaller one yet must not conclude that it is the smallest. ""
// when none.
func (t *peerTracker) lowestKnown(selfClusterless, unreached bool) (peer.ID, time.Duration) {
	now := time.Now()
	var best peer.ID
	var bestAge time.Duration
	consider := func(id peer.ID, age time.Duration) {
		if best == "" || id < best || (id == best && age < bestAge) {
			best, bestAge = id, age
		}
	}
	if selfClusterless {
		consider(t.self, 0)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	alive := t.aliveWindow(t.provenLocked())
	for id, p := range t.peers {
		if unreached && !p.proven() && p.heardOf {
			consider(id, now.Sub(p.firstSeen))
		}
		since := now.Sub(p.lastAnswer)
		if p.status == nil || since > alive {
			continue
		}
		if !p.status.Formed && len(p.status.Leader) == 0 {
			consider(id, since)
		}
		if c := p.status.Lowest; c != nil && c.Age >= 0 {
			age := time.Duration(c.Age)*time.Millisecond + since
			if cid, err := peer.IDFromBytes(c.ID); err == nil && cid != t.self && age <= alive {
				consider(cid, age)
			}
		}
	}
	return best, bestAge
}

// claim is this member's founder claim for an exchange, nil when it knows
// of no clusterless node.
func (t *peerTracker) claim(selfClusterless bool) *lowestClaim {
	id, age := t.lowestKnown(selfClusterless, false)
	if id == "" {
		return nil
	}
	return &lowestClaim{ID: []byte(id), Age: age.Milliseconds()}
}

// patient tells whether a clusterless node whose window ended at
// windowEnd still defers to what it cannot see for itself: founder claims
// and peers heard of but not reached (see claimPatience).
func (c *cluster) patient(windowEnd time.Time) bool {
	return !c.cfg.noClaims && time.Since(windowEnd) <= claimPatience(c.cfg.bootstrapTimeout)
}

// aloneWhileUnreached tells whether founderRule's voters are this node
// alone while view holds a peer that discovery or a member named but that
// never answered (or not lately): then the node has not seen nobody, it
// has failed to reach anybody, which on a busy network (dozens of members
// dialling each other at once) is the common case, and those peers may
// well have formed a cluster already. Bootstrapping alone then only makes
// a second cluster to merge back later, so the node waits (at most
// claimPatience: a stranger's name must not hold formation back for
// longer).
func aloneWhileUnreached(voters []peer.ID, view []peerView) bool {
	if len(voters) != 1 {
		return false
	}
	for _, v := range view {
		if v.heardOf && !v.recent && v.id != voters[0] {
			return true
		}
	}
	return false
}

// claimedLower is the smallest founder claim smaller than self that live
// peers make, or smaller peer not reached yet ("" when none), which
// founderRule defers to while windowEnd + claimPatience has not passed.
func (c *cluster) claimedLower(windowEnd time.Time) peer.ID {
	if !c.patient(windowEnd) {
		return ""
	}
	id, _ := c.peers.lowestKnown(false, true)
	if id != "" && id < c.self {
		return id
	}
	return ""
}

// decide is the bootstrap decision at the end of the window: a node that
// already has Raft state (a founder included it, or a leader replicated to
// it) has nothing to decide; otherwise it applies the founder rule with the
// peers first seen before cutoff as founders. A node that does not bootstrap
// is joined by the membership loop, which starts here either way.
func (c *cluster) decide(cutoff time.Time) {
	c.windowEnd = time.Now()
	defer c.startMembership()
	if c.formed() || c.peers.sawClusterRecently() {
		c.logger.Debug("window over: a cluster exists, joining it", "formed", c.formed())
		c.metrics.bootstrapDecision(decisionDeferred)
		return // a cluster exists: the membership loop joins it
	}
	lower := c.claimedLower(time.Now())
	view := c.peers.view()
	voters, ok := founderRule(c.self, view, cutoff, c.cfg.maxVoters, lower)
	if !ok {
		c.logger.Debug("window over: deferring to a smaller founder or a cluster", "lower", lower)
		c.metrics.bootstrapDecision(decisionDeferred)
		return // a cluster exists or a smaller founder bootstraps: join it
	}
	if c.patient(c.windowEnd) && aloneWhileUnreached(voters, view) {
		// The membership loop bootstraps later if it still reaches nobody.
		c.logger.Debug("window over: reached none of the peers heard of; waiting for them")
		c.metrics.bootstrapDecision(decisionDeferred)
		return
	}
	if err := c.bootstrapWith(voters); err != nil {
		c.logger.Error("bootstrap failed", "error", err)
		return
	}
	c.metrics.bootstrapDecision(decisionBootstrapped)
	c.logger.Info("bootstrapped as founder", "voters", len(voters))
}

// founderRule is the one rule by which a node without a cluster decides to
// start one, at the end of its window and whenever it is still clusterless
// later on:
//   - if a live peer has a cluster (it has Raft state or knows a leader), it
//     does not bootstrap: it joins that cluster;
//   - if a live peer has a smaller peer ID, or a live peer claims one
//     (lower, see lowestClaim), it does not bootstrap: that peer (or a
//     smaller one still) does, and this node joins;
//   - if a recent peer (alive or not) reported a configuration that lists
//     this node as a voter, it does not bootstrap: it is a founder of that
//     cluster, whose leader reaches it (or it asks to join);
//   - otherwise it bootstraps, with itself and the live peers first seen no
//     later than cutoff as voters, at most maxVoters of them (the smallest
//     IDs). Peers seen later, and founders past the cap, join afterwards.
//
// Only the smallest ID among nodes that see each other bootstraps, so two of
// them can never both start a cluster. Peers that are not alive (no recent
// answer) count for nothing: a dead or silent peer must not block formation.
// view must be sorted by peer ID (peerTracker.view is); the voters come back
// as self first, then in view order.
func founderRule(self peer.ID, view []peerView, cutoff time.Time, maxVoters int, lower peer.ID) (voters []peer.ID, ok bool) {
	if lower != "" && lower < self {
		return nil, false
	}
	voters = []peer.ID{self}
	for _, v := range view {
		if v.recent && v.status.Formed && containsPeer(v.status.VoterIDs, self) {
			return nil, false // a founder listed us: its cluster is ours
		}
		if !v.alive || v.id == self {
			continue
		}
		if v.status.Formed || len(v.status.Leader) > 0 || v.id < self {
			return nil, false
		}
		if !v.firstSeen.After(cutoff) {
			voters = append(voters, v.id)
		}
	}
	return capFounders(voters, maxVoters), true
}

// formed tells whether this member has Raft state: it bootstrapped, or a
// leader has replicated to it.
func (c *cluster) formed() bool {
	r, err := c.r()
	return err == nil && r.LastIndex() > 0
}

// bootstrapAlone makes this node a cluster of one.
func (c *cluster) bootstrapAlone() error {
	return c.bootstrapWith([]peer.ID{c.self})
}

// bootstrapWith bootstraps a configuration of the given voters.
func (c *cluster) bootstrapWith(ids []peer.ID) error {
	r, err := c.r()
	if err != nil {
		return err
	}
	conf := hraft.Configuration{}
	for _, id := range ids {
		conf.Servers = append(conf.Servers, hraft.Server{
			Suffrage: hraft.Voter,
			ID:       hraft.ServerID(id.String()),
			Address:  hraft.ServerAddress(id.String()),
		})
	}
	err = r.BootstrapCluster(conf).Error()
	if errors.Is(err, hraft.ErrCantBootstrap) {
		return nil // state appeared meanwhile: nothing to do
	}
	if err != nil {
		return fmt.Errorf("raft: bootstrap: %w", translateRaftError(err))
	}
	c.bootstraps.Add(1)
	c.outcome.note(evBootstrapped)
	c.logger.Info("bootstrapped", "voters", len(ids))
	c.tellFounders(ids)
	return nil
}

// tellFounders exchanges with every other founder at once: a founder
// without Raft state takes votes and entries only from a peer that told it,
// in an exchange, that its configuration lists it (admitRPC), and with
// dozens of members the regular rounds may not come round to it for a
// while.
func (c *cluster) tellFounders(ids []peer.ID) {
	for _, id := range ids {
		if id == c.self {
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if st, ok := c.askStatus(id); ok {
				c.peers.answered(id, st)
			}
		}()
	}
}
