package raft

// Rolling upgrades: every member advertises the operation kinds its build
// knows (in peer exchange), and the leader proposes a kind only once every
// voter advertises it, so an entry that a replica could not apply (which
// would stop it) is never committed while members run older builds.

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
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
	defer t.mu.Unlock()
	if p, ok := t.peers[from]; ok {
		p.kinds = slices.Clone(kinds)
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
	// confKey names the configuration the finding is for (its voters).
	// Not the configuration's index: hashicorp's GetConfiguration leaves
	// Index() at 0, so a voter that joined within kindsCheckInterval would
	// go unnoticed and could be sent a kind it cannot apply.
	confKey string
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
	key := votersKey(conf)
	u := &c.upgrade
	cached := func() map[uint8][]string {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.missing == nil || u.confKey != key || time.Since(u.checked) >= kindsCheckInterval {
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
			u.missing, u.confKey, u.checked = missing, key, time.Now()
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

// votersKey names a configuration's voters, in its order.
func votersKey(conf hraft.Configuration) string {
	var b strings.Builder
	for _, s := range conf.Servers {
		if s.Suffrage == hraft.Voter {
			b.WriteString(string(s.ID))
			b.WriteByte(0)
		}
	}
	return b.String()
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

// voterKinds is what a voter advertised; when nothing is known it asks the
// voter (one peer exchange) before falling back to legacyKinds.
func (c *cluster) voterKinds(id peer.ID) []uint8 {
	if k, ok := c.peers.kindsOf(id); ok {
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
