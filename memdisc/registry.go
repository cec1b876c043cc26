// Package memdisc provides in-process implementations of libp2p's
// discovery.Discovery.
//
// Registry is shared by the nodes of one process: what one node advertises,
// the others find at once, instead of after the seconds to minutes a DHT
// needs to converge. That keeps tests and demonstrations about the behaviour
// built on discovery rather than about DHT timing. On top of that it can hide
// chosen nodes from chosen seekers, to reproduce partial discovery on purpose.
//
// Nop advertises nowhere and finds nobody, for a node that is told its peers
// explicitly but still has to be given a discovery service.
//
// The package does not import "testing", so that programs (the tauraft demo)
// can use it as well as test helpers (package rafttest).
package memdisc

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

// DefaultTTL is how long an advertisement stays in a Registry when Advertise
// is called without a discovery.TTL option (see Registry.SetDefaultTTL). It is
// short compared with the DHT's hours, so that a test relying on expiry or on
// re-advertising does not wait long, yet far longer than a typical test.
const DefaultTTL = time.Minute

// Registry is an in-memory discovery service shared by the nodes of one
// process: what one node advertises, the others find immediately. Each node
// talks to it through its own view (Discovery, DiscoveryFor), which tells the
// registry who is advertising and who is looking, so that visibility rules
// (Hide, ShowOnlyTo, Reveal, RevealAll) can hide chosen providers from chosen
// seekers. Records expire after their TTL like DHT provider records do.
//
// The zero value is not usable; call NewRegistry. A Registry is safe for
// concurrent use.
type Registry struct {
	mu         sync.Mutex
	defaultTTL time.Duration
	records    map[string]map[peer.ID]record // namespace -> provider -> record
	hidden     map[peer.ID]map[peer.ID]bool  // provider -> seekers it is hidden from
	onlyTo     map[peer.ID]map[peer.ID]bool  // provider -> the only seekers that see it
}

// record is one provider's advertisement under one namespace. The addresses
// are a copy taken when it advertised, so that they go stale exactly like a
// provider record in a DHT does.
type record struct {
	addrs   []multiaddr.Multiaddr
	expires time.Time
}

// NewRegistry returns an empty registry using DefaultTTL.
func NewRegistry() *Registry {
	return &Registry{
		defaultTTL: DefaultTTL,
		records:    map[string]map[peer.ID]record{},
		hidden:     map[peer.ID]map[peer.ID]bool{},
		onlyTo:     map[peer.ID]map[peer.ID]bool{},
	}
}

// SetDefaultTTL changes the TTL given to advertisements made without a
// discovery.TTL option from now on.
func (r *Registry) SetDefaultTTL(ttl time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.defaultTTL = ttl
}

// Discovery returns the registry as seen by the node self. Advertise records
// self under the namespace with the addresses addrs returns at that moment
// (like a DHT provider record, they go stale if the node moves, until it
// advertises again or UpdateAddrs is called). FindPeers returns the current,
// unexpired records that are visible to self, self included: as with a real
// discovery service, callers filter themselves out.
func (r *Registry) Discovery(self peer.ID, addrs func() []multiaddr.Multiaddr) discovery.Discovery {
	return &view{r: r, self: self, addrs: addrs}
}

// DiscoveryFor is Discovery for an existing host.
func (r *Registry) DiscoveryFor(h host.Host) discovery.Discovery {
	return r.Discovery(h.ID(), h.Addrs)
}

// UpdateAddrs replaces the addresses of every record of id, as if the node
// had re-advertised everything right after changing addresses (a restart on a
// new port). Expiry times are left alone.
func (r *Registry) UpdateAddrs(id peer.ID, addrs []multiaddr.Multiaddr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, recs := range r.records {
		if rec, ok := recs[id]; ok {
			rec.addrs = slices.Clone(addrs)
			recs[id] = rec
		}
	}
}

// Forget removes every record of id, as if they had all expired.
func (r *Registry) Forget(id peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, recs := range r.records {
		delete(recs, id)
	}
}

// Providers returns the unexpired records of namespace ns, sorted by peer
// ID, ignoring visibility rules. It is meant for inspection (test assertions,
// diagnostics), not for nodes, which should go through their view.
func (r *Registry) Providers(ns string) []peer.AddrInfo {
	return r.find(ns, "", false, 0)
}

// Hide makes FindPeers stop returning provider to seeker, and takes seeker
// off provider's ShowOnlyTo list if it has one. A node is never hidden from
// itself.
func (r *Registry) Hide(provider, seeker peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inner(r.hidden, provider)[seeker] = true
	if only := r.onlyTo[provider]; only != nil {
		delete(only, seeker)
	}
}

// ShowOnlyTo makes FindPeers return provider to the given seekers only
// (and to provider itself): every other node, including one that does not
// exist yet, stops seeing it. It replaces earlier rules about provider.
func (r *Registry) ShowOnlyTo(provider peer.ID, seekers ...peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.hidden, provider)
	only := map[peer.ID]bool{}
	for _, s := range seekers {
		only[s] = true
	}
	r.onlyTo[provider] = only
}

// Reveal makes provider visible to the given seekers again, undoing Hide and
// extending a ShowOnlyTo list. With no seekers it drops every rule about
// provider, making it visible to everyone.
func (r *Registry) Reveal(provider peer.ID, seekers ...peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(seekers) == 0 {
		delete(r.hidden, provider)
		delete(r.onlyTo, provider)
		return
	}
	for _, s := range seekers {
		delete(r.hidden[provider], s)
		if only := r.onlyTo[provider]; only != nil {
			only[s] = true
		}
	}
}

// RevealAll drops every visibility rule.
func (r *Registry) RevealAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.hidden)
	clear(r.onlyTo)
}

// Visible reports whether FindPeers called by seeker may return provider.
// A node always sees itself.
func (r *Registry) Visible(provider, seeker peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.visibleLocked(provider, seeker)
}

func (r *Registry) visibleLocked(provider, seeker peer.ID) bool {
	if provider == seeker {
		return true
	}
	if r.hidden[provider][seeker] {
		return false
	}
	if only := r.onlyTo[provider]; only != nil && !only[seeker] {
		return false
	}
	return true
}

func (r *Registry) advertise(ns string, id peer.ID, addrs []multiaddr.Multiaddr, ttl time.Duration) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ttl <= 0 {
		ttl = r.defaultTTL
	}
	inner(r.records, ns)[id] = record{addrs: slices.Clone(addrs), expires: time.Now().Add(ttl)}
	return ttl
}

// find returns the unexpired records of ns in peer ID order; with filter set,
// only those visible to seeker. limit <= 0 means no limit.
func (r *Registry) find(ns string, seeker peer.ID, filter bool, limit int) []peer.AddrInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	var out []peer.AddrInfo
	for id, rec := range r.records[ns] {
		if now.After(rec.expires) {
			delete(r.records[ns], id) // expired records are never needed again
			continue
		}
		if filter && !r.visibleLocked(id, seeker) {
			continue
		}
		out = append(out, peer.AddrInfo{ID: id, Addrs: slices.Clone(rec.addrs)})
	}
	// Sorted so that a test run is reproducible; map order would shuffle
	// which peer a caller tries first.
	slices.SortFunc(out, func(a, b peer.AddrInfo) int { return cmp.Compare(a.ID, b.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// view is one node's handle on a Registry: the registry plus who the node is,
// which Advertise records and FindPeers filters by.
type view struct {
	r     *Registry
	self  peer.ID
	addrs func() []multiaddr.Multiaddr
}

// The compiler checks that a view is a complete discovery service.
var _ discovery.Discovery = (*view)(nil)

// errNoAddrs is returned by Advertise for a node without listen addresses
// (typically one that is shutting down): a record nobody can dial is useless.
var errNoAddrs = errors.New("memdisc: advertising node has no addresses")

// Advertise implements discovery.Advertiser.
func (v *view) Advertise(ctx context.Context, ns string, opts ...discovery.Option) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var o discovery.Options
	if err := o.Apply(opts...); err != nil {
		return 0, err
	}
	addrs := v.addrs()
	if len(addrs) == 0 {
		return 0, errNoAddrs
	}
	return v.r.advertise(ns, v.self, addrs, o.Ttl), nil
}

// FindPeers implements discovery.Discoverer. The returned channel is already
// filled and closed.
func (v *view) FindPeers(ctx context.Context, ns string, opts ...discovery.Option) (<-chan peer.AddrInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o discovery.Options
	if err := o.Apply(opts...); err != nil {
		return nil, err
	}
	found := v.r.find(ns, v.self, true, o.Limit)
	ch := make(chan peer.AddrInfo, len(found))
	for _, ai := range found {
		ch <- ai
	}
	close(ch)
	return ch, nil
}

// inner returns m[k], creating it if needed.
func inner[K, K2 comparable, V any](m map[K]map[K2]V, k K) map[K2]V {
	s := m[k]
	if s == nil {
		s = map[K2]V{}
		m[k] = s
	}
	return s
}
