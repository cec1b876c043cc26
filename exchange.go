package raft

// Peer exchange: what the tracker does with a peer's answers and
// failures, the list it sends, and the exchange round with its bounded
// probes of strangers.

import (
	"context"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// answered records a successful exchange with a peer (either direction) and
// what it said of itself.
func (t *peerTracker) answered(from peer.ID, st *status) {
	t.mu.Lock()
	delete(t.dropped, from) // it answered after all: a member, not a stranger
	t.mu.Unlock()
	t.learn(from, nil, 0, true)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[from]; ok {
		if st != nil && st.Formed && (p.status == nil || !p.status.Formed) {
			select { // a new place to ask to join (see joinTargets)
			case t.joinable <- struct{}{}:
			default:
			}
		}
		p.lastAnswer = time.Now()
		p.status = st
		p.failures, p.nextTry = 0, time.Time{}
	}
	if st != nil && (st.Formed || len(st.Leader) > 0) {
		t.sawCluster.Store(time.Now().UnixNano())
	} else if st != nil {
		t.heardOfCluster(st.SawCluster)
	}
}

// joinAccepted notes that via, a tracked peer, just accepted this node's
// join request on behalf of leader: via answered, and it has a cluster led
// by leader. The leader's AppendEntries follows at once, and a node without
// a configuration takes it only from a leader that a live peer reports
// (admitRPC); via's last exchange may predate that leader's election, and
// the next may be a second away, every refused append meanwhile a warning
// and a retry. Nothing else via said of itself changes.
func (t *peerTracker) joinAccepted(via, leader peer.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[via]
	if !ok {
		return
	}
	var st status
	if p.status != nil {
		st = *p.status // a copy: views hold the old one
	}
	st.Formed, st.Leader = true, []byte(leader)
	p.status = &st
	p.lastAnswer = time.Now()
}

// askingToJoin notes that this node is asking via to add it, until the
// request's deadline; done ends it. Asked directly, the leader adds the node
// and starts replicating to it before its answer is back, so its first
// AppendEntries tends to arrive first: while the request is out, a node
// with no configuration takes appends from the peer it chose to ask
// (asking), as it will from the leader its answer names (joinAccepted).
func (t *peerTracker) askingToJoin(via peer.ID, until time.Time) (done func()) {
	t.mu.Lock()
	t.asking, t.askingUntil = via, until
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.asking == via {
			t.asking, t.askingUntil = "", time.Time{}
		}
	}
}

// askingPeer is the peer this node's join request is with right now, ""
// when none is out.
func (t *peerTracker) askingPeer() peer.ID {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !time.Now().Before(t.askingUntil) {
		return ""
	}
	return t.asking
}

// heardOfCluster takes a peer's word that it heard of a cluster age
// milliseconds ago (status.SawCluster). Joining members pass it on, so a
// late node whose exchanges reach only other joiners (the cluster's own
// few members being among the peers it does not see) still learns that a
// cluster exists and joins it rather than founding another. The sighting
// keeps its age as it travels, so one that nobody renews first-hand dies
// out everywhere within clusterMemory.
func (t *peerTracker) heardOfCluster(age *int64) {
	if age == nil || *age < 0 || *age >= t.clusterMemory().Milliseconds() {
		return // also keeps a made-up age from overflowing below
	}
	at := time.Now().Add(-time.Duration(*age) * time.Millisecond).UnixNano()
	for {
		cur := t.sawCluster.Load()
		if at <= cur || t.sawCluster.CompareAndSwap(cur, at) {
			return
		}
	}
}

// clusterAge is what this member says in an exchange of its last sighting
// of a cluster (status.SawCluster): nil when not within clusterMemory.
func (t *peerTracker) clusterAge() *int64 {
	at := t.sawCluster.Load()
	if at == 0 {
		return nil
	}
	age := time.Since(time.Unix(0, at))
	if age >= t.clusterMemory() {
		return nil
	}
	ms := max(age.Milliseconds(), 0)
	return &ms
}

// answeredWithin tells whether id completed an exchange with us (either
// direction) within d.
func (t *peerTracker) answeredWithin(id peer.ID, d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[id]
	return ok && p.proven() && time.Since(p.lastAnswer) <= d
}

// failed records a failed exchange with a peer: it backs off (more for a
// peer that never answered), and a peer that never answered is dropped after
// maxProbeFailures.
func (t *peerTracker) failed(id peer.ID) {
	t.mu.Lock()
	p, ok := t.peers[id]
	if !ok {
		t.mu.Unlock()
		return
	}
	p.failures++
	drop := !p.proven() && p.failures >= maxProbeFailures
	if drop {
		delete(t.peers, id)
		if len(t.dropped) >= maxTrackedPeers {
			clear(t.dropped)
		}
		t.dropped[id] = time.Now()
	} else {
		p.nextTry = time.Now().Add(exchangeBackoff(t.fastInterval(), p.failures, p.proven()))
	}
	t.mu.Unlock()
	if drop {
		t.forgetAddrs(id)
	}
}

// exchangeBackoff is the pause after failures failed exchanges in a row:
// doubling from base, capped at maxMemberBackoff for a proven peer and
// maxProbeBackoff for one that never answered.
func exchangeBackoff(base time.Duration, failures int, proven bool) time.Duration {
	limit := maxProbeBackoff
	if proven {
		limit = maxMemberBackoff
	}
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// merge takes what a peer sent in an exchange (either direction): its state,
// which proves it, and at most maxExchangePeers entries of its list.
func (t *peerTracker) merge(from peer.ID, list []wirePeer, st *status) {
	// Only members send a status; a plain client is not a peer to track.
	if from != t.self && st != nil {
		t.answered(from, st)
	}
	if len(list) > maxExchangePeers {
		list = list[:maxExchangePeers]
	}
	for _, wp := range list {
		id, err := peer.IDFromBytes(wp.ID)
		if err != nil || id == t.self {
			continue
		}
		var addrs []ma.Multiaddr
		for _, b := range wp.Addrs {
			if len(addrs) == maxPeerAddrs {
				break
			}
			if len(b) > maxAddrSize {
				continue
			}
			if a, err := ma.NewMultiaddrBytes(b); err == nil {
				addrs = append(addrs, a)
			}
		}
		age := time.Duration(wp.Age) * time.Millisecond
		if age < 0 {
			age = 0
		}
		if max := time.Since(t.started) + time.Hour; age > max {
			age = max
		}
		t.learn(id, addrs, age, true)
	}
}

// exchange is the answering side of a peer exchange: it takes what the
// peer sent and returns our list and state.
func (t *peerTracker) exchange(from peer.ID, list []wirePeer, st *status, kinds []uint8) ([]wirePeer, *status, []uint8) {
	t.merge(from, list, st)
	if st != nil {
		t.recordKinds(from, kinds)
	}
	return t.answerList(), t.status.status(), t.advertised()
}

// answerListTTL is how long the answering side of an exchange reuses the
// peer list it built: dozens of joining members each asking several times
// a second would otherwise have it rebuilt (a connectedness check and an
// address lookup per peer) for every answer. A list that old is still
// current enough: ages grow by at most this much, and a peer proven
// meanwhile is listed in the next one.
const answerListTTL = 100 * time.Millisecond

// answerList is wireList, rebuilt at most once per answerListTTL.
func (t *peerTracker) answerList() []wirePeer {
	t.listMu.Lock()
	defer t.listMu.Unlock()
	if now := time.Now(); t.listAt.IsZero() || now.Sub(t.listAt) >= answerListTTL {
		t.list, t.listAt = t.wireList(), now
	}
	return t.list
}

// wireList is the peer list this member sends in an exchange: the proven
// peers, at most maxExchangePeers of them, with the addresses of those it is
// connected to. Only those are first-hand (what the peer announced itself,
// through identify); passing on what others said would keep a dead peer's
// old addresses alive for ever, each member refreshing the others' copy.
func (t *peerTracker) wireList() []wirePeer {
	h := t.node.Peer()
	ps := h.Peerstore()
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]wirePeer, 0, min(len(t.peers), maxExchangePeers))
	for id, p := range t.peers {
		if !p.proven() {
			continue
		}
		if len(out) == maxExchangePeers {
			break
		}
		wp := wirePeer{ID: []byte(id), Age: now.Sub(p.firstSeen).Milliseconds()}
		if h.Network().Connectedness(id) == network.Connected {
			for _, a := range boundedAddrs(ps.Addrs(id)) {
				wp.Addrs = append(wp.Addrs, a.Bytes())
			}
		}
		out = append(out, wp)
	}
	return out
}

// exchangeAll starts an exchange with the tracked peers that are due (none
// in flight, not backing off; at most exchangeFanout members, see
// pickMembers), and drops peers silent for peerEvictAfter. A proven peer
// gets our peer list; an unproven one only a probe with our
// state, so a stranger learns nothing and costs little, and at most
// maxProbesInFlight probes run at once, peers that discovery or a member
// named first (see pickProbes). It does not wait: one slow or dead peer must
// not delay the others, or every view would go stale together.
func (t *peerTracker) exchangeAll(ctx context.Context) {
	now := time.Now()
	type due struct {
		id     peer.ID
		probe  bool
		noDial bool // a stranger we only know as a connection
	}
	var dues []due
	var candidates []probeCandidate
	var members []memberDue
	t.mu.Lock()
	for id, p := range t.peers {
		if p.proven() && now.Sub(p.lastAnswer) > peerEvictAfter && !p.inflight {
			delete(t.peers, id)
			continue
		}
		if p.inflight || now.Before(p.nextTry) {
			continue
		}
		if p.proven() {
			members = append(members, memberDue{id: id, lastAnswer: p.lastAnswer})
		} else {
			candidates = append(candidates, probeCandidate{id: id, heardOf: p.heardOf, failures: p.failures})
		}
	}
	for _, id := range pickMembers(members, exchangeFanout) {
		t.peers[id].inflight = true
		dues = append(dues, due{id: id})
	}
	for _, id := range pickProbes(candidates, maxProbesInFlight-t.probing) {
		p := t.peers[id]
		p.inflight = true
		t.probing++
		dues = append(dues, due{id: id, probe: true, noDial: !p.heardOf})
	}
	t.mu.Unlock()
	if len(dues) == 0 {
		return
	}
	t.metrics.exchangeRound()
	mine := t.wireList()
	st := t.status.status()
	for _, d := range dues {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() {
				t.mu.Lock()
				if p, ok := t.peers[d.id]; ok {
					p.inflight = false
				}
				if d.probe {
					t.probing--
				}
				t.mu.Unlock()
			}()
			req := &request{Cmd: cmdExchangePeers, Peers: mine, Kinds: t.advertised()}
			req.setStatus(st)
			if d.probe {
				req.Peers = nil
			}
			actx := ctx
			if d.noDial {
				// Its addresses are whatever it announced: a stranger
				// that disconnects must not make us dial where it says.
				actx = network.WithNoDial(ctx, "probe of a connected peer")
			}
			resp, err := t.caller.ask(actx, d.id, req, time.Now().Add(exchangeTimeout))
			if err != nil {
				t.logger.Debug("exchange failed", "peer", d.id, "error", err)
				t.failed(d.id)
				return
			}
			if resp.Status == nil {
				t.failed(d.id) // a client, not a member
				return
			}
			t.merge(d.id, resp.Peers, resp.status())
			t.recordKinds(d.id, resp.Kinds)
		}()
	}
}

// memberDue is a proven peer due for an exchange.
type memberDue struct {
	id         peer.ID
	lastAnswer time.Time
}

// pickMembers chooses at most n of the due members to exchange with this
// round: those heard from least recently first (so every member comes round
// within members/n rounds), then by peer ID so the choice is stable.
func pickMembers(due []memberDue, n int) []peer.ID {
	sort.Slice(due, func(i, j int) bool {
		a, b := due[i], due[j]
		if !a.lastAnswer.Equal(b.lastAnswer) {
			return a.lastAnswer.Before(b.lastAnswer)
		}
		return a.id < b.id
	})
	out := make([]peer.ID, 0, min(n, len(due)))
	for _, d := range due[:min(n, len(due))] {
		out = append(out, d.id)
	}
	return out
}

// probeCandidate is an unproven peer due for a probe.
type probeCandidate struct {
	id       peer.ID
	heardOf  bool
	failures int
}

// pickProbes chooses at most n of the candidates to probe now: peers that
// discovery or a member named before peers that are only connected (anyone
// can connect; a name from discovery or a member is likelier a member), then
// those that failed least, then by peer ID so the choice is stable.
func pickProbes(candidates []probeCandidate, n int) []peer.ID {
	if n <= 0 || len(candidates) == 0 {
		return nil
	}
	sort.Slice(candidates, func(i, j int) bool {
		a, b := candidates[i], candidates[j]
		if a.heardOf != b.heardOf {
			return a.heardOf
		}
		if a.failures != b.failures {
			return a.failures < b.failures
		}
		return a.id < b.id
	})
	out := make([]peer.ID, 0, min(n, len(candidates)))
	for _, c := range candidates[:min(n, len(candidates))] {
		out = append(out, c.id)
	}
	return out
}
