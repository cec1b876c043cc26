package raft

// Rolling upgrades: every member advertises the operation kinds its build
// knows (in peer exchange), and the leader proposes a kind only once every
// voter advertises it, so an entry that a replica could not apply (which
// would stop it) is never committed while members run older builds.

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxAdvertisedKinds bounds the kinds a peer's advertisement may list.
const maxAdvertisedKinds = 64

// knownKinds lists the operation kinds this build applies.
func knownKinds() []uint8 {
	var out []uint8
	for i, k := range opKinds {
		if k != nil {
			out = append(out, uint8(i))
		}
	}
	return out
}

// advertised is what this member advertises: knownKinds, unless a test
// plays an older build.
func (t *peerTracker) advertised() []uint8 {
	if t.kinds != nil {
		return t.kinds
	}
	return knownKinds()
}

// recordKinds keeps what a peer advertised. An empty list (a member from
// before advertisements, or a plain client) records nothing.
func (t *peerTracker) recordKinds(from peer.ID, kinds []uint8) {
	if len(kinds) == 0 || from == t.self {
		return
	}
	if len(kinds) > maxAdvertisedKinds {
		kinds = kinds[:maxAdvertisedKinds]
	}
	t.mu.Lock()
	p, ok := t.peers[from]
	if ok {
		p.kinds = slices.Clone(kinds)
	}
	t.mu.Unlock()
	if ok && t.onKinds != nil {
		t.onKinds(from, kinds)
	}
}

// kindsOf returns the kinds a peer advertised, if it did.
func (t *peerTracker) kindsOf(id peer.ID) ([]uint8, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok && p.kinds != nil {
		return p.kinds, true
	}
	return nil, false
}

// kindsCheckInterval is how long the leader trusts its last finding that
// every server knows every kind of this build, while its configuration
// and term stay as they were: the common case then costs nothing per write.
const kindsCheckInterval = time.Second

// kindsFinding is what the leader last found: which kinds which servers
// lack, for which configuration. It is never changed once published.
type kindsFinding struct {
	missing map[uint8][]string // kind -> servers that lack it
	// servers are the servers the finding is for, in their configuration's
	// order. Not the configuration's index: hashicorp's GetConfiguration
	// leaves Index() at 0, so a server that joined within
	// kindsCheckInterval would go unnoticed and could be sent a kind it
	// cannot apply.
	servers []hraft.ServerID
	// gen and term are upgradeState.gen and the Raft term when the
	// configuration was read: a change of either means it may be stale.
	gen, term uint64
	checked   time.Time
}

// upgradeState caches the finding.
type upgradeState struct {
	// compute is held while one write asks the servers, so that concurrent
	// writes wait for the answer instead of asking again.
	compute sync.Mutex
	finding atomic.Pointer[kindsFinding]
	// gen counts the configuration changes this member started and ended,
	// and changing is how many are under way: only a leader changes the
	// configuration, and only through changeConfiguration, so while gen
	// stands and nothing is under way the configuration need not be read
	// on every write (reading it allocates a future and a copy).
	gen      atomic.Uint64
	changing atomic.Int32
}

// changeConfiguration runs one configuration change (AddVoter,
// RemoveServer, ...) so that kindsAllowed reads the configuration on every
// write while it is under way and once after it.
func (c *cluster) changeConfiguration(change func() hraft.IndexFuture, timeout time.Duration) error {
	u := &c.upgrade
	u.changing.Add(1)
	u.gen.Add(1)
	defer func() {
		u.gen.Add(1)
		u.changing.Add(-1)
	}()
	return c.wait(change(), timeout)
}

// kindsAllowed checks, on the leader, that every server of the
// configuration knows each kind of ops (non-voters apply the log too), and
// reports whether it may add the meta operation (stamp, request ID). A
// server whose advertisement is unknown is asked once, briefly; one that
// still has not advertised counts as knowing only legacyKinds.
func (c *cluster) kindsAllowed(r *hraft.Raft, ops []cmdOp) (meta bool, err error) {
	u := &c.upgrade
	term := r.CurrentTerm()
	f := u.finding.Load()
	if f == nil || u.changing.Load() > 0 || f.gen != u.gen.Load() || f.term != term ||
		time.Since(f.checked) >= kindsCheckInterval {
		if f, err = c.refreshKinds(r, term); err != nil {
			return false, err
		}
	}
	return f.allowed(ops)
}

// kindsKnown is kindsAllowed when the finding at hand is current, without
// reading the configuration or asking anyone; known false when it would.
func (c *cluster) kindsKnown(r *hraft.Raft, ops []cmdOp) (meta, known bool, err error) {
	u := &c.upgrade
	f := u.finding.Load()
	if f == nil || u.changing.Load() > 0 || f.gen != u.gen.Load() || f.term != r.CurrentTerm() ||
		time.Since(f.checked) >= kindsCheckInterval {
		return false, false, nil
	}
	meta, err = f.allowed(ops)
	return meta, true, err
}

// allowed tells whether every member of the finding knows the kinds of
// ops, and meta operations.
func (f *kindsFinding) allowed(ops []cmdOp) (meta bool, err error) {
	for _, op := range ops {
		if servers, ok := f.missing[op.kind]; ok {
			k, _ := lookupOp(op.kind)
			return false, fmt.Errorf("%w: operation %q is not known by member(s) %v yet (upgrade them first)", ErrInvalidCommand, k.name, servers)
		}
	}
	_, noMeta := f.missing[opMeta]
	return !noMeta, nil
}

// refreshKinds reads the configuration and publishes a finding for it:
// the last one again when its servers are the same and it is recent, else
// a new one from what the servers advertise.
func (c *cluster) refreshKinds(r *hraft.Raft, term uint64) (*kindsFinding, error) {
	u := &c.upgrade
	gen := u.gen.Load() // before the read: a change after it is seen next time
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, translateRaftError(err)
	}
	conf := cf.Configuration()
	reuse := func() *kindsFinding {
		old := u.finding.Load()
		if old == nil || !sameServers(conf, old.servers) || time.Since(old.checked) >= kindsCheckInterval {
			return nil
		}
		if old.gen == gen && old.term == term {
			return old
		}
		f := *old
		f.gen, f.term = gen, term
		u.finding.Store(&f)
		return &f
	}
	if f := reuse(); f != nil {
		return f, nil
	}
	u.compute.Lock()
	defer u.compute.Unlock()
	if f := reuse(); f != nil {
		return f, nil
	}
	f := &kindsFinding{missing: c.missingKinds(conf), servers: serverIDs(conf), gen: gen, term: term, checked: time.Now()}
	u.finding.Store(f)
	return f, nil
}

// serverIDs lists a configuration's servers, in its order.
func serverIDs(conf hraft.Configuration) []hraft.ServerID {
	ids := make([]hraft.ServerID, len(conf.Servers))
	for i, s := range conf.Servers {
		ids[i] = s.ID
	}
	return ids
}

// sameServers reports whether conf's servers are ids, in order. It runs
// on every write while a configuration change is under way, so it
// allocates nothing.
func sameServers(conf hraft.Configuration, ids []hraft.ServerID) bool {
	if len(conf.Servers) != len(ids) {
		return false
	}
	for i, s := range conf.Servers {
		if s.ID != ids[i] {
			return false
		}
	}
	return true
}

// missingKinds lists, for each kind of this build, the servers of conf
// (voters and non-voters: both apply the log) that do not advertise it.
func (c *cluster) missingKinds(conf hraft.Configuration) map[uint8][]string {
	var voters []peer.ID
	for _, s := range conf.Servers {
		if s.ID == hraft.ServerID(c.self.String()) {
			continue
		}
		if id, err := peer.Decode(string(s.ID)); err == nil {
			voters = append(voters, id)
		}
	}
	// The voters whose kinds are unknown are asked at once, not in turn.
	kinds := make([][]uint8, len(voters))
	var wg sync.WaitGroup
	for i, id := range voters {
		wg.Go(func() { kinds[i] = c.voterKinds(id) })
	}
	wg.Wait()
	missing := map[uint8][]string{}
	for i, id := range voters {
		for _, k := range knownKinds() {
			if !slices.Contains(kinds[i], k) {
				missing[k] = append(missing[k], shortPeer(id))
			}
		}
	}
	return missing
}

// voterKinds is what a voter advertised: what it said lately, else what it
// said last as this member's kinds book remembers it (a voter that is down,
// or this member restarted), else it asks the voter (one peer exchange)
// before falling back to legacyKinds.
func (c *cluster) voterKinds(id peer.ID) []uint8 {
	if k, ok := c.peers.kindsOf(id); ok {
		return k
	}
	if k, ok := c.kindsBook.get(id); ok {
		return k
	}
	req := &request{Cmd: cmdExchangePeers, Status: c.status(), Kinds: c.peers.advertised()}
	resp, err := c.caller.ask(c.ctx, id, req, time.Now().Add(kindsAskTimeout))
	if err == nil && resp.Status != nil {
		c.peers.merge(id, nil, resp.Status)
		c.peers.recordKinds(id, resp.Kinds)
		if k, ok := c.peers.kindsOf(id); ok {
			return k
		}
	}
	return legacyKinds
}

// kindsAskTimeout bounds the leader's question to a voter whose kinds it
// does not know.
const kindsAskTimeout = time.Second

// shortPeer is a peer ID short enough for an error message.
func shortPeer(id peer.ID) string {
	s := id.String()
	if len(s) > 12 {
		return s[len(s)-12:]
	}
	return s
}

// kindsBook remembers the operation kinds each voter of the configuration
// last advertised, in the node's datastore, so that a voter that is down
// (for longer than the peer tracker keeps silent peers), or a leader that
// restarted, does not hold every new kind back until it answers: a voter
// keeps the kinds it last advertised. (Downgrading a voter while it is down
// is the one case this trusts wrongly; that replica then stops, loudly, at
// the first entry it cannot apply.) Only configuration members are written,
// at most maxKindsBook of them.
type kindsBook struct {
	ds     datastore.Batching
	prefix string // namespace + "/kinds"

	mu    sync.Mutex
	kinds map[peer.ID][]uint8
}

// maxKindsBook bounds the kinds book.
const maxKindsBook = 1024

// openKindsBook reads the book kept under prefix.
func openKindsBook(ds datastore.Batching, prefix string) (*kindsBook, error) {
	b := &kindsBook{ds: ds, prefix: prefix, kinds: map[peer.ID][]uint8{}}
	res, err := ds.Query(context.Background(), query.Query{Prefix: prefix})
	if err != nil {
		return nil, fmt.Errorf("raft: reading the kinds book: %w", err)
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return nil, fmt.Errorf("raft: reading the kinds book: %w", r.Error)
		}
		rest, ok := strings.CutPrefix(r.Key, prefix+"/")
		if !ok || strings.Contains(rest, "/") {
			continue
		}
		id, err := peer.Decode(rest)
		if err != nil || len(r.Value) == 0 || len(r.Value) > maxAdvertisedKinds || len(b.kinds) >= maxKindsBook {
			continue
		}
		b.kinds[id] = slices.Clone(r.Value)
	}
	return b, nil
}

// get returns the kinds the book holds for id.
func (b *kindsBook) get(id peer.ID) ([]uint8, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k, ok := b.kinds[id]
	return k, ok
}

// record keeps kinds for id (a configuration member), writing only when
// they changed. When the book is full, another entry makes room.
func (b *kindsBook) record(id peer.ID, kinds []uint8) error {
	if len(kinds) == 0 || len(kinds) > maxAdvertisedKinds {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.kinds[id]
	if ok && bytes.Equal(old, kinds) {
		return nil
	}
	ctx := context.Background()
	if !ok && len(b.kinds) >= maxKindsBook {
		for victim := range b.kinds {
			if err := b.ds.Delete(ctx, b.key(victim)); err != nil {
				return err
			}
			delete(b.kinds, victim)
			break
		}
	}
	if err := b.ds.Put(ctx, b.key(id), slices.Clone(kinds)); err != nil {
		return err
	}
	b.kinds[id] = slices.Clone(kinds)
	return nil
}

func (b *kindsBook) key(id peer.ID) datastore.Key {
	return datastore.RawKey(b.prefix + "/" + id.String())
}

// rememberKinds books what a configuration member advertised (the tracker
// calls it for every advertisement it takes).
func (c *cluster) rememberKinds(id peer.ID, kinds []uint8) {
	if !c.inConfiguration(id) {
		return
	}
	if err := c.kindsBook.record(id, kinds); err != nil {
		c.logger.Warn("could not keep a voter's operation kinds", "peer", id, "error", err)
	}
}
