package raft

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

const (
	// advertiseTTL is the lifetime asked for our discovery record; it is
	// renewed at half of what the discovery service grants.
	advertiseTTL = 2 * time.Minute
	// steadyExchangeInterval is the pace of peer exchange once this member is
	// a voter: slow, but it still lets a lone early node or a second cluster
	// notice the others and converge into one.
	steadyExchangeInterval = 3 * time.Second
	// steadyDiscoveryInterval is the pace of discovery queries once formed.
	steadyDiscoveryInterval = 5 * time.Second
	// exchangeTimeout bounds one peer exchange.
	exchangeTimeout = 2 * time.Second
	// maxTrackedPeers caps the tracker, so a flood of exchanged peer lists
	// cannot grow it without bound. When it is full an unproven peer makes
	// room for a new one; proven peers are never pushed out by newcomers.
	maxTrackedPeers = 1024
	// maxExchangePeers, maxPeerAddrs and maxAddrSize bound what one
	// exchange may add: entries of a list past them are ignored, so a
	// list of made-up peers with long addresses cannot grow a member.
	maxExchangePeers = 256
	maxPeerAddrs     = 8
	maxAddrSize      = 256
	// maxProbeBackoff and maxMemberBackoff cap the pause after failed
	// exchanges with a peer that never answered (a stranger, perhaps one
	// without the key) and with one that did (a member that went away).
	maxProbeBackoff  = 5 * time.Minute
	maxMemberBackoff = 30 * time.Second
	// maxProbeFailures is how many failed exchanges in a row drop a peer
	// that never answered; discovery may bring it back later.
	maxProbeFailures = 8
	// peerEvictAfter drops a peer that has not answered for this long.
	peerEvictAfter = 10 * time.Minute
	// maxProbesInFlight caps the probes of unproven peers running at once.
	// Anyone can connect with many identities; probing each of them as
	// fast as members are exchanged with would spend this member's CPU on
	// strangers. A real member proves itself anyway by exchanging with us
	// (its own tracker probes us), so slow probing delays nobody for long.
	maxProbesInFlight = 4
	// exchangeFanout caps the members this member exchanges with per
	// round, the least recently heard from first: with dozens of members,
	// exchanging with every one each round costs each member O(members)
	// exchanges per round and the namespace O(members²), which on a small
	// machine starves Raft itself. Members hear from each other both ways,
	// so a member hears from each peer about every members/(2×fanout)
	// rounds; aliveWindow stretches to match.
	exchangeFanout = 6
)

// trackedPeer is what this member knows of another member of the namespace.
// A peer is proven once an exchange with it succeeded in either direction
// (in a keyed namespace exchanges are sealed, so it holds the key): only
// proven peers are sent the full peer list, and appear in it.
type trackedPeer struct {
	firstSeen  time.Time // earliest sighting by anyone, on our clock
	lastAnswer time.Time // last exchange with it in either direction; zero: unproven
	status     *status   // its state at lastAnswer
	inflight   bool      // an exchange with it is running
	heardOf    bool      // discovery or a member named it (not only a connection)
	failures   int       // failed exchanges in a row
	nextTry    time.Time // no exchange before this, after failures
	kinds      []uint8   // operation kinds it advertised (see upgrade.go)
}

// proven tells whether the peer ever completed an exchange with us.
func (p *trackedPeer) proven() bool { return !p.lastAnswer.IsZero() }

// statusSource gives this member's own state for peer exchange (the
// cluster).
type statusSource interface {
	status() *status
}

// trackerConfig is what a peer tracker works with.
type trackerConfig struct {
	node      Node
	namespace string
	window    time.Duration // the bootstrap window, which sets the fast pace
	logger    hclog.Logger
	caller    caller       // exchanges go out through it
	status    statusSource // what this member says of itself
	kinds     []uint8      // advertised operation kinds; nil: knownKinds()
	// onKinds, when set, is told every advertisement the tracker takes
	// from a tracked peer (outside the tracker's lock).
	onKinds func(id peer.ID, kinds []uint8)
	// book, when set, is the member's address book (addrbook.go): the
	// last addresses members announced, tried when nothing else knows.
	book *addrBook
	// metrics counts exchange rounds (nil: not counted).
	metrics *clusterMetrics
}

// peerTracker finds the namespace's members (discovery, connected peers that
// speak the protocol, and peer exchange) and keeps what each last said of
// itself. The bootstrap decision and the membership loop read it.
type peerTracker struct {
	trackerConfig
	self    peer.ID
	started time.Time
	ctx     context.Context // set by start; ends the loops and exchanges
	wg      sync.WaitGroup

	mu    sync.Mutex
	peers map[peer.ID]*trackedPeer
	// dropped remembers strangers dropped after failed probes, so that a
	// stranger that stays connected is not picked up and probed again at
	// once (at most maxTrackedPeers of them, each for peerEvictAfter).
	dropped map[peer.ID]time.Time

	// probing counts the probes of unproven peers in flight (at most
	// maxProbesInFlight).
	probing int

	// asking is the peer this node's join request is with, until
	// askingUntil (see askingToJoin).
	asking      peer.ID
	askingUntil time.Time

	// listMu guards the peer list answers reuse (answerList).
	listMu sync.Mutex
	list   []wirePeer
	listAt time.Time

	// fast is set while this member is not a voter yet: it exchanges and
	// discovers at the bootstrap pace instead of the steady one.
	fast atomic.Bool
	// deciding is set during the bootstrap window.
	deciding atomic.Bool
	// wake makes the loop run a round at once.
	wake chan struct{}
	// joinable is signalled when a peer first answers that it has a
	// cluster: a node waiting to be added asks at once rather than at the
	// next turn of its backoff (up to 2 s), which at dozens of members was
	// most of the time between a cluster forming and the last one joining.
	joinable chan struct{}
	// sawCluster is when (unix nanoseconds) a peer last answered that it
	// has a cluster (Raft state or a leader); see sawClusterRecently.
	sawCluster atomic.Int64
}

// sawClusterRecently tells whether a peer answered, within
// clusterMemory, that it has a cluster. A node that saw one joins it and
// does not bootstrap another, even when that cluster's members drop out of
// its live view for a while (a busy network, exchanges timing out): a
// second cluster would only be merged back, at the cost of a reset. The
// memory is short, so a cluster that is really gone (or was only claimed,
// by a stranger in an open namespace) holds nobody back for long.
func (t *peerTracker) sawClusterRecently() bool {
	at := t.sawCluster.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < t.clusterMemory()
}

// clusterMemory is how long a sighting of a cluster holds a clusterless
// node back from bootstrapping: three bootstrap windows, at least 5 s.
func (t *peerTracker) clusterMemory() time.Duration {
	return max(3*t.window, 5*time.Second)
}

func newPeerTracker(cfg trackerConfig) *peerTracker {
	t := &peerTracker{
		trackerConfig: cfg,
		self:          cfg.node.ID(),
		started:       time.Now(),
		ctx:           context.Background(),
		peers:         map[peer.ID]*trackedPeer{},
		dropped:       map[peer.ID]time.Time{},
		wake:          make(chan struct{}, 1),
		joinable:      make(chan struct{}, 1),
	}
	t.fast.Store(true)
	return t
}

// fastInterval is the exchange pace while bootstrapping: a tenth of the
// window, between 50ms and 500ms.
func (t *peerTracker) fastInterval() time.Duration {
	d := t.window / 10
	if d < 50*time.Millisecond {
		d = 50 * time.Millisecond
	}
	if d > 500*time.Millisecond {
		d = 500 * time.Millisecond
	}
	return d
}

// fastRoundInterval is the pause between exchange rounds while joining,
// with proven peers tracked: base (fastInterval) while they are few, and
// stretched in proportion beyond 2×exchangeFanout of them, so that a
// member starts about as many exchanges a second however many peers it
// has. Each exchange carries the whole peer list, so with dozens of
// joining members a fixed pace costs the namespace O(members²) list
// entries a second: at 48 members on two cores that storm alone made the
// exchanges time out and starved the founders' first election. A list
// still reaches everyone within a few rounds (each round a member hears
// from about 2×exchangeFanout peers, each passing on what it heard). It
// never exceeds the steady pace.
func fastRoundInterval(base time.Duration, proven int) time.Duration {
	if proven <= 2*exchangeFanout {
		return base
	}
	return min(base*time.Duration(proven)/(2*exchangeFanout), steadyExchangeInterval)
}

// joiningExchangeInterval is the slowest joining pace of a member that
// knows a cluster exists and only waits to be added: it needs to hear of
// the leader, not to gossip at the bootstrap pace, and dozens of joiners
// exchanging fast steal the CPU the new leader needs to keep its lease.
const joiningExchangeInterval = time.Second

// roundInterval is the current pause between exchange rounds.
func (t *peerTracker) roundInterval(proven int) time.Duration {
	if !t.fast.Load() {
		return steadyExchangeInterval
	}
	d := fastRoundInterval(t.fastInterval(), proven)
	if !t.deciding.Load() && t.sawClusterRecently() {
		d = max(d, min(joiningExchangeInterval, steadyExchangeInterval))
	}
	return d
}

// provenCount is how many tracked peers are proven.
func (t *peerTracker) provenCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.provenLocked()
}

func (t *peerTracker) provenLocked() int {
	proven := 0
	for _, p := range t.peers {
		if p.proven() {
			proven++
		}
	}
	return proven
}

// aliveWindow is how recent an answer must be for a peer to count as
// alive, with proven peers tracked: the rounds it takes to go round them
// all (exchangeFanout per round), plus two rounds and the exchange timeout,
// so one slow answer does not hide a peer, and a peer that stopped
// answering drops out within a few rounds.
func (t *peerTracker) aliveWindow(proven int) time.Duration {
	interval := t.roundInterval(proven)
	cycle := (proven + exchangeFanout - 1) / exchangeFanout
	return time.Duration(2+cycle)*interval + exchangeTimeout
}

// start runs the advertise and exchange loops until ctx ends.
func (t *peerTracker) start(ctx context.Context) {
	t.ctx = ctx
	t.wg.Add(2)
	go t.advertiseLoop()
	go t.loop()
}

// wait waits for the loops and every exchange in flight, once ctx has ended.
func (t *peerTracker) wait() { t.wg.Wait() }

func (t *peerTracker) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// advertiseLoop keeps this member's discovery record alive.
func (t *peerTracker) advertiseLoop() {
	defer t.wg.Done()
	ctx := t.ctx
	d := t.node.Discovery()
	if d == nil {
		return
	}
	for {
		ttl, err := d.Advertise(ctx, t.namespace, discovery.TTL(advertiseTTL))
		wait := ttl / 2
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.logger.Debug("advertise failed", "error", err)
			wait = time.Second
		}
		if wait < time.Second {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// loop discovers peers and exchanges peer lists with them, fast while this
// member is joining and slowly once it is a voter.
func (t *peerTracker) loop() {
	defer t.wg.Done()
	ctx := t.ctx
	var lastDiscovery time.Time
	for {
		interval := t.roundInterval(t.provenCount())
		discoveryEvery := steadyDiscoveryInterval
		if t.fast.Load() {
			discoveryEvery = 2 * interval
		}
		if time.Since(lastDiscovery) >= discoveryEvery {
			lastDiscovery = time.Now()
			t.discover(ctx, interval)
		}
		t.addConnected()
		t.exchangeAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-time.After(interval):
		}
	}
}

// discover asks the discovery service for the namespace's members.
func (t *peerTracker) discover(ctx context.Context, budget time.Duration) {
	d := t.node.Discovery()
	if d == nil {
		return
	}
	if budget < time.Second {
		budget = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	ch, err := d.FindPeers(ctx, t.namespace)
	if err != nil {
		t.logger.Debug("find peers failed", "error", err)
		return
	}
	for ai := range ch {
		if ai.ID == t.self || ai.ID == "" {
			continue
		}
		t.learn(ai.ID, ai.Addrs, 0, true)
	}
}

// addConnected takes connected peers that speak the command protocol.
func (t *peerTracker) addConnected() {
	h := t.node.Peer()
	proto := Protocol(t.namespace)
	for _, p := range h.Network().Peers() {
		if p == t.self {
			continue
		}
		if ps, err := h.Peerstore().SupportsProtocols(p, proto); err == nil && len(ps) > 0 {
			t.learn(p, nil, 0, false)
		}
	}
}

// learn records a peer and its addresses. age is how long ago someone first
// saw it; the earliest sighting wins. heardOf says that discovery or a member
// named it, rather than it only being connected: such peers are probed
// first. Addresses are kept (at most
// maxPeerAddrs, each at most maxAddrSize bytes) only for a peer the tracker
// holds.
func (t *peerTracker) learn(id peer.ID, addrs []ma.Multiaddr, age time.Duration, heardOf bool) {
	if id == t.self {
		return
	}
	now := time.Now()
	seen := now.Add(-age)
	var evicted peer.ID
	t.mu.Lock()
	if at, ok := t.dropped[id]; ok {
		if now.Sub(at) < peerEvictAfter {
			t.mu.Unlock()
			return
		}
		delete(t.dropped, id)
	}
	p, ok := t.peers[id]
	switch {
	case ok:
		if seen.Before(p.firstSeen) {
			p.firstSeen = seen
		}
		p.heardOf = p.heardOf || heardOf
		if p.proven() && now.Sub(p.lastAnswer) < exchangeTimeout {
			// It answered just now, so we can reach it: what others say
			// of its addresses adds nothing, and checking that for every
			// entry of every list was a good part of an exchange's cost.
			addrs = nil
		}
	case len(t.peers) >= maxTrackedPeers:
		if evicted = t.evictUnprovenLocked(); evicted == "" {
			t.mu.Unlock()
			return
		}
		fallthrough
	default:
		t.peers[id] = &trackedPeer{firstSeen: seen, heardOf: heardOf}
	}
	t.mu.Unlock()
	if evicted != "" {
		t.forgetAddrs(evicted)
	}
	t.addHeardAddrs(id, addrs)
}

// addHeardAddrs records addresses of id that someone else told us (a peer's
// list, discovery, the address book): bounded, for TempAddrTTL only, and not
// at all while we are connected to id, since then the host holds what id
// announced itself (identify). Identify also drops them once id connects, so
// an address that id no longer announces is never dialled again after that;
// and since members pass on only the addresses of peers they are connected
// to (see wireList), an address outlives its owner's announcement by at most
// TempAddrTTL.
func (t *peerTracker) addHeardAddrs(id peer.ID, addrs []ma.Multiaddr) {
	h := t.node.Peer()
	if addrs = boundedAddrs(addrs); len(addrs) == 0 || h.Network().Connectedness(id) == network.Connected {
		return
	}
	h.Peerstore().AddAddrs(id, addrs, peerstore.TempAddrTTL)
}

// forgetAddrs drops the addresses of a peer that never answered and is no
// longer tracked, unless the host is connected to it: whatever a list said
// of a stranger must not outlive the stranger in the tracker.
func (t *peerTracker) forgetAddrs(id peer.ID) {
	h := t.node.Peer()
	if h.Network().Connectedness(id) != network.Connected {
		h.Peerstore().ClearAddrs(id)
	}
}

// evictUnprovenLocked drops the unproven peer seen last, to make room, and
// returns it ("" when there is none).
func (t *peerTracker) evictUnprovenLocked() peer.ID {
	var victim peer.ID
	var newest time.Time
	for id, p := range t.peers {
		if !p.proven() && !p.inflight && (victim == "" || p.firstSeen.After(newest)) {
			victim, newest = id, p.firstSeen
		}
	}
	if victim != "" {
		delete(t.peers, victim)
	}
	return victim
}

// boundedAddrs keeps at most maxPeerAddrs addresses of at most maxAddrSize
// bytes.
func boundedAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	out := addrs[:0:0]
	for _, a := range addrs {
		if len(out) == maxPeerAddrs {
			break
		}
		if len(a.Bytes()) <= maxAddrSize {
			out = append(out, a)
		}
	}
	return out
}

// peerView is a snapshot of one tracked peer for the decision logic.
// status is what the peer last said of itself when recent; most rules
// take it only from an alive peer.
type peerView struct {
	id        peer.ID
	firstSeen time.Time
	alive     bool // answered within aliveWindow
	// recent: answered within clusterMemory (alive implies recent). A
	// founder's word that its configuration lists us stays good this long,
	// even while a busy network makes its exchanges time out.
	recent bool
	// heardOf: discovery or a member named it (see trackedPeer).
	heardOf bool
	status  status
}

// view returns the tracked peers, sorted by peer ID.
func (t *peerTracker) view() []peerView {
	now := time.Now()
	t.mu.Lock()
	alive := t.aliveWindow(t.provenLocked())
	recent := max(alive, t.clusterMemory())
	out := make([]peerView, 0, len(t.peers))
	for id, p := range t.peers {
		v := peerView{id: id, firstSeen: p.firstSeen, heardOf: p.heardOf}
		if since := now.Sub(p.lastAnswer); p.status != nil && since <= recent {
			v.recent = true
			v.alive = since <= alive
			v.status = *p.status
		}
		out = append(out, v)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// ensureAddrs makes sure the host can dial id: when it is not connected and
// the peerstore has no address for it (a new member, or one whose addresses
// expired or changed), it asks discovery under the namespace.
func (t *peerTracker) ensureAddrs(ctx context.Context, id peer.ID) {
	h := t.node.Peer()
	if h.Network().Connectedness(id) == network.Connected || len(h.Peerstore().Addrs(id)) > 0 {
		return
	}
	if !t.lookup(ctx, id) && t.book != nil {
		// Discovery knows nothing (its bootstrap peer may be gone): try
		// the last addresses the member announced, from the book.
		t.addHeardAddrs(id, t.book.addrs(id))
	}
}

// lookup searches discovery for id and records its addresses.
func (t *peerTracker) lookup(ctx context.Context, id peer.ID) bool {
	return findAddrs(ctx, t.node, t.namespace, id)
}

// findAddrs searches the node's discovery under namespace for id, adds the
// addresses it finds to the peerstore, and reports whether any of them was
// new: a lookup that only brings back the addresses that just failed (a
// dead peer's old provider record) is no reason to dial again.
func findAddrs(ctx context.Context, node Node, namespace string, id peer.ID) bool {
	d := node.Discovery()
	if d == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ch, err := d.FindPeers(ctx, namespace)
	if err != nil {
		return false
	}
	ps := node.Peer().Peerstore()
	found := false
	for ai := range ch {
		if ai.ID != id || len(ai.Addrs) == 0 || found {
			continue
		}
		known := map[string]bool{}
		for _, a := range ps.Addrs(id) {
			known[string(a.Bytes())] = true
		}
		addrs := boundedAddrs(ai.Addrs)
		for _, a := range addrs {
			found = found || !known[string(a.Bytes())]
		}
		// Third-party addresses (a DHT provider record may be old):
		// short-lived, see addHeardAddrs.
		ps.AddAddrs(id, addrs, peerstore.TempAddrTTL)
		if found {
			cancel()
		}
	}
	return found
}
