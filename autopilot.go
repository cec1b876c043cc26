package raft

// Autopilot: the leader's care of the configuration, in the spirit of
// Consul's. A voter out of contact for longer than DeadAfter is replaced by
// a healthy, caught-up non-voter (promoted) and then demoted; a member gone
// for longer than RemoveAfter is removed; a voter seat left empty is filled
// by promoting a healthy non-voter. Neither a demotion nor a removal ever
// takes the voter count below MinQuorum. Only the leader acts, on what its
// own Raft saw (failed heartbeats) and what the member itself answers: what
// a peer says of another never counts, so no stranger can change the
// membership.

import (
	"fmt"
	"slices"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Autopilot defaults (see WithAutopilot).
const (
	// DefaultDeadAfterElections is DeadAfter's default in election
	// timeouts: long enough that a slow election or a loaded machine does
	// not cost a voter its seat, short enough that a dead voter is
	// replaced before a second failure can take the quorum.
	DefaultDeadAfterElections = 3
	// DefaultRemoveAfter is how long a member may be gone before it is
	// removed: a restart, a reboot or a move to another port come back
	// well within it; a member that does not is not coming back.
	DefaultRemoveAfter = time.Hour
	// DefaultMinQuorum is the least voter count autopilot leaves (capped
	// at WithMaxVoters): three voters still survive one failure.
	DefaultMinQuorum = 3
	// autopilotMaxLag is how many log entries a non-voter may be behind
	// the leader and still count as caught up.
	autopilotMaxLag = 256
)

// AutopilotConfig sets autopilot (WithAutopilot).
type AutopilotConfig struct {
	// DeadAfter: a voter out of contact with the leader for longer is
	// replaced by a non-voter and demoted. Zero: DefaultDeadAfterElections
	// election timeouts.
	DeadAfter time.Duration
	// RemoveAfter: a member out of contact for longer is removed. Zero:
	// DefaultRemoveAfter. At least DeadAfter.
	RemoveAfter time.Duration
	// MinQuorum: autopilot never takes the voters below this many. Zero:
	// DefaultMinQuorum (at most the voter cap).
	MinQuorum int
	// Disabled turns autopilot off: membership changes only by joins and
	// the explicit calls.
	Disabled bool
}

// resolve fills the defaults in and checks the set.
func (a AutopilotConfig) resolve(election time.Duration, maxVoters int) (AutopilotConfig, error) {
	if a.DeadAfter == 0 {
		a.DeadAfter = DefaultDeadAfterElections * election
	}
	if a.RemoveAfter == 0 {
		a.RemoveAfter = max(DefaultRemoveAfter, a.DeadAfter)
	}
	if a.MinQuorum == 0 {
		a.MinQuorum = min(DefaultMinQuorum, maxVoters)
	}
	switch {
	case a.DeadAfter < election:
		return a, fmt.Errorf("raft: WithAutopilot: DeadAfter %v is under one election timeout (%v)", a.DeadAfter, election)
	case a.RemoveAfter < a.DeadAfter:
		return a, fmt.Errorf("raft: WithAutopilot: RemoveAfter %v is under DeadAfter %v", a.RemoveAfter, a.DeadAfter)
	case a.MinQuorum < 1 || a.MinQuorum > maxVoters:
		return a, fmt.Errorf("raft: WithAutopilot: MinQuorum %d is outside [1, %d] (the voter cap)", a.MinQuorum, maxVoters)
	}
	return a, nil
}

// apServer is one server as autopilot's plan sees it.
type apServer struct {
	id     peer.ID
	voter  bool
	leader bool // the leader itself: always healthy
	// lost is when the leader last heard from it, if heartbeats to it are
	// failing now; zero while they succeed.
	lost time.Time
	// caughtUp: it answered the leader just now and its log is within
	// autopilotMaxLag of the leader's (asked only of non-voters).
	caughtUp bool
}

// apKind is what an autopilot action does.
type apKind int

const (
	apPromote apKind = iota + 1
	apDemote
	apRemove
)

func (k apKind) String() string {
	switch k {
	case apPromote:
		return "promote"
	case apDemote:
		return "demote"
	case apRemove:
		return "remove"
	}
	return fmt.Sprintf("apKind(%d)", int(k))
}

// apAction is one configuration change.
type apAction struct {
	kind apKind
	id   peer.ID
}

// autopilotPlan is autopilot's rule: the changes to make now, in order
// (the leader makes the first and plans again). For servers (the leader
// among them), at now:
//  1. a voter gone longer than deadAfter, while a healthy caught-up
//     non-voter is available: promote that non-voter, then demote the
//     voter (the voter count never drops); with more voters than
//     maxVoters (its replacement is in), just demote it;
//  2. a member gone longer than removeAfter: remove it, unless it is a
//     voter and the voters would drop below minQuorum;
//  3. fewer voters than maxVoters: promote a healthy caught-up non-voter.
//
// Dead voters are taken longest gone first; non-voters are promoted in ID
// order, so every leader would pick the same.
func autopilotPlan(servers []apServer, now time.Time, cfg AutopilotConfig, maxVoters int) []apAction {
	gone := func(s apServer, d time.Duration) bool {
		return !s.leader && !s.lost.IsZero() && now.Sub(s.lost) > d
	}
	healthy := func(s apServer) bool { return s.leader || s.lost.IsZero() }
	var spares []peer.ID // healthy, caught-up non-voters, in ID order
	voters := 0
	for _, s := range servers {
		if s.voter {
			voters++
		} else if healthy(s) && s.caughtUp {
			spares = append(spares, s.id)
		}
	}
	slices.Sort(spares)
	dead := slices.Clone(servers)
	dead = slices.DeleteFunc(dead, func(s apServer) bool { return !gone(s, cfg.DeadAfter) })
	slices.SortFunc(dead, func(a, b apServer) int {
		if c := a.lost.Compare(b.lost); c != 0 {
			return c
		}
		return compareIDs(a.id, b.id)
	})
	var out []apAction
	for _, s := range dead {
		switch {
		case !s.voter:
		case voters > maxVoters:
			// Its replacement is in already (or the cap was exceeded).
			out = append(out, apAction{apDemote, s.id})
			voters--
		case len(spares) > 0:
			out = append(out, apAction{apPromote, spares[0]}, apAction{apDemote, s.id})
			spares = spares[1:]
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, s := range dead {
		if !gone(s, cfg.RemoveAfter) {
			continue
		}
		if s.voter {
			if voters-1 < cfg.MinQuorum {
				continue
			}
			voters--
		}
		out = append(out, apAction{apRemove, s.id})
	}
	for voters < maxVoters && len(spares) > 0 {
		out = append(out, apAction{apPromote, spares[0]})
		spares = spares[1:]
		voters++
	}
	return out
}

func compareIDs(a, b peer.ID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// autopilotInterval is how often the leader plans: half an election
// timeout, so a dead voter is replaced soon after DeadAfter.
func (c *cluster) autopilotInterval() time.Duration {
	return max(c.cfg.timeouts.ElectionTimeout/2, 50*time.Millisecond)
}

// autopilotLoop runs autopilot on this member while it leads, until the
// cluster closes. It follows the Raft instance across resets and keeps,
// from the heartbeat observations of its Raft, when each failing server
// was last heard from.
func (c *cluster) autopilotLoop() {
	defer c.wg.Done()
	if c.cfg.autopilot.Disabled {
		return
	}
	obsCh := make(chan hraft.Observation, 256)
	obs := observeRaft(obsCh, func(o *hraft.Observation) bool {
		switch o.Data.(type) {
		case hraft.FailedHeartbeatObservation, hraft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	defer obs.stop()
	lost := map[peer.ID]time.Time{}
	tick := time.NewTicker(c.autopilotInterval())
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case o := <-obsCh:
			switch d := o.Data.(type) {
			case hraft.FailedHeartbeatObservation:
				if id, err := peer.Decode(string(d.PeerID)); err == nil {
					if _, ok := lost[id]; !ok {
						lost[id] = d.LastContact
					}
				}
			case hraft.ResumedHeartbeatObservation:
				if id, err := peer.Decode(string(d.PeerID)); err == nil {
					delete(lost, id)
				}
			}
			continue
		case <-tick.C:
		}
		r, err := c.r()
		if err != nil {
			return
		}
		if obs.follow(r) {
			clear(lost)
		}
		if r.State() != hraft.Leader {
			clear(lost) // a new leadership starts from its own heartbeats
			continue
		}
		// One change per step, planned again after each: a dead voter's
		// replacement and demotion go through in one round.
		for range maxAutopilotSteps {
			if !c.autopilotStep(r, lost) {
				break
			}
		}
	}
}

// maxAutopilotSteps bounds the changes of one round.
const maxAutopilotSteps = 8

// autopilotStep plans on the leader and makes the first change; it reports
// whether it made one.
func (c *cluster) autopilotStep(r *hraft.Raft, lost map[peer.ID]time.Time) bool {
	servers := r.GetConfiguration().Configuration().Servers
	// Forget servers no longer in the configuration.
	for id := range lost {
		if !slices.ContainsFunc(servers, func(s hraft.Server) bool { return s.ID == hraft.ServerID(id.String()) }) {
			delete(lost, id)
		}
	}
	last := r.LastIndex()
	view := make([]apServer, 0, len(servers))
	for _, s := range servers {
		id, err := peer.Decode(string(s.ID))
		if err != nil {
			continue
		}
		// Non-voters count as caught up until one is to be promoted:
		// only that one is asked (asking every non-voter each round
		// would cost the leader an exchange per member per round).
		as := apServer{id: id, voter: s.Suffrage == hraft.Voter, leader: id == c.self, lost: lost[id], caughtUp: true}
		view = append(view, as)
	}
	var a apAction
	for range 3 {
		plan := autopilotPlan(view, time.Now(), c.cfg.autopilot, c.cfg.maxVoters)
		if len(plan) == 0 {
			return false
		}
		a = plan[0]
		if a.kind != apPromote || c.caughtUp(a.id, last) {
			// Believe a voter dead only if it does not answer the leader
			// itself either: one dropped observation must not cost a
			// voter its seat.
			for _, b := range plan[:min(2, len(plan))] {
				if b.kind == apPromote {
					continue
				}
				if _, ok := c.askStatus(b.id); ok {
					delete(lost, b.id)
					return false
				}
			}
			break
		}
		i := slices.IndexFunc(view, func(s apServer) bool { return s.id == a.id })
		view[i].caughtUp = false
		a = apAction{}
	}
	if a.kind == 0 {
		return false
	}
	c.confMu.Lock()
	defer c.confMu.Unlock()
	if r.State() != hraft.Leader {
		return false
	}
	timeout := 4 * c.cfg.timeouts.ElectionTimeout
	sid, addr := hraft.ServerID(a.id.String()), hraft.ServerAddress(a.id.String())
	err := c.changeConfiguration(func() hraft.IndexFuture {
		switch a.kind {
		case apPromote:
			return r.AddVoter(sid, addr, 0, timeout)
		case apDemote:
			return r.DemoteVoter(sid, 0, timeout)
		}
		return r.RemoveServer(sid, 0, timeout)
	}, timeout)
	if err != nil {
		c.logger.Warn("autopilot change failed", "change", a.kind, "peer", a.id, "error", err)
		return false
	}
	c.logger.Info("autopilot", "change", a.kind, "peer", a.id)
	return true
}

// caughtUp asks a non-voter for its state and reports whether it answered
// with a log within autopilotMaxLag of last.
func (c *cluster) caughtUp(id peer.ID, last uint64) bool {
	st, ok := c.askStatus(id)
	return ok && st.Formed && st.LastIndex+autopilotMaxLag >= last
}
