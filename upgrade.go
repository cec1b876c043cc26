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
// every voter knows every kind of this build: the common case then costs
// nothing per write.
const kindsCheckInterval = time.Second

// upgradeState caches that finding.
type upgradeState struct {
	// compute is held while one write recomputes the finding, so that
	// concurrent writes wait for it instead of asking the voters again.
	compute sync.Mutex
	mu      sync.Mutex
	missing map[uint8][]string // kind -> voters that lack it
	// voters are the voters the finding is for, in their configuration's
	// order. Not the configuration's index: hashicorp's GetConfiguration leaves
	// Index() at 0, so a voter that joined within kindsCheckInterval would
	// go unnoticed and could be sent a kind it cannot apply.
	voters  []hraft.ServerID
	checked time.Time
}

// kindsAllowed checks, on the leader, that every voter knows each kind of
// ops, and reports whether it may add the meta operation (stamp, request
// ID). A voter whose advertisement is unknown is asked once, briefly; one
// that still has not advertised counts as knowing only legacyKinds.
func (c *cluster) kindsAllowed(r *hraft.Raft, ops []cmdOp) (meta bool, err error) {
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, translateRaftError(err)
	}
	conf := f.Configuration()
	u := &c.upgrade
	cached := func() map[uint8][]string {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.missing == nil || !sameVoters(conf, u.voters) || time.Since(u.checked) >= kindsCheckInterval {
			return nil
		}
		return u.missing
	}
	missing := cached()
	if missing == nil {
		u.compute.Lock()
		if missing = cached(); missing == nil {
			missing = c.missingKinds(conf)
			u.mu.Lock()
			u.missing, u.voters, u.checked = missing, voterIDs(conf), time.Now()
			u.mu.Unlock()
		}
		u.compute.Unlock()
	}
	for _, op := range ops {
		if voters, ok := missing[op.kind]; ok {
			k, _ := lookupOp(op.kind)
			return false, fmt.Errorf("%w: operation %q is not known by voter(s) %v yet (upgrade them first)", ErrInvalidCommand, k.name, voters)
		}
	}
	_, noMeta := missing[opMeta]
	return !noMeta, nil
}

// voterIDs lists a configuration's voters, in its order.
func voterIDs(conf hraft.Configuration) []hraft.ServerID {
	var ids []hraft.ServerID
	for _, s := range conf.Servers {
		if s.Suffrage == hraft.Voter {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

// sameVoters reports whether conf's voters are ids, in order. It runs on
// every write, so it allocates nothing.
func sameVoters(conf hraft.Configuration, ids []hraft.ServerID) bool {
	i := 0
	for _, s := range conf.Servers {
		if s.Suffrage != hraft.Voter {
			continue
		}
		if i == len(ids) || ids[i] != s.ID {
			return false
		}
		i++
	}
	return i == len(ids)
}

// missingKinds lists, for each kind of this build, the voters of conf that
// do not advertise it.
func (c *cluster) missingKinds(conf hraft.Configuration) map[uint8][]string {
	var voters []peer.ID
	for _, s := range conf.Servers {
		if s.Suffrage != hraft.Voter || s.ID == hraft.ServerID(c.self.String()) {
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
