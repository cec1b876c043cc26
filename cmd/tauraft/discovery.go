package main

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

// memRegistry is a discovery service shared by the nodes of one process (the
// demo): what one node advertises, the others find at once. It stands in for
// the DHT so that the demo shows Raft's behaviour, not DHT convergence.
type memRegistry struct {
	mu      sync.Mutex
	records map[string]map[peer.ID]func() []multiaddr.Multiaddr
}

func newMemRegistry() *memRegistry {
	return &memRegistry{records: map[string]map[peer.ID]func() []multiaddr.Multiaddr{}}
}

// view returns the registry as seen by the node self; addrs is read on every
// FindPeers, so a record never goes stale while the node runs.
func (r *memRegistry) view(self peer.ID, addrs func() []multiaddr.Multiaddr) discovery.Discovery {
	return &memView{r: r, self: self, addrs: addrs}
}

// forget drops every record of id (a node that has left for good).
func (r *memRegistry) forget(id peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, recs := range r.records {
		delete(recs, id)
	}
}

type memView struct {
	r     *memRegistry
	self  peer.ID
	addrs func() []multiaddr.Multiaddr
}

func (v *memView) Advertise(ctx context.Context, ns string, _ ...discovery.Option) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	v.r.mu.Lock()
	defer v.r.mu.Unlock()
	recs := v.r.records[ns]
	if recs == nil {
		recs = map[peer.ID]func() []multiaddr.Multiaddr{}
		v.r.records[ns] = recs
	}
	recs[v.self] = v.addrs
	return time.Hour, nil
}

func (v *memView) FindPeers(ctx context.Context, ns string, opts ...discovery.Option) (<-chan peer.AddrInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o discovery.Options
	if err := o.Apply(opts...); err != nil {
		return nil, err
	}
	v.r.mu.Lock()
	var found []peer.AddrInfo
	for id, addrs := range v.r.records[ns] {
		if a := addrs(); len(a) > 0 {
			found = append(found, peer.AddrInfo{ID: id, Addrs: slices.Clone(a)})
		}
	}
	v.r.mu.Unlock()
	slices.SortFunc(found, func(a, b peer.AddrInfo) int { return cmp.Compare(a.ID, b.ID) })
	if o.Limit > 0 && len(found) > o.Limit {
		found = found[:o.Limit]
	}
	ch := make(chan peer.AddrInfo, len(found))
	for _, ai := range found {
		ch <- ai
	}
	close(ch)
	return ch, nil
}

// nopDiscovery advertises nowhere and finds nobody. The kv client uses it:
// it is told which members to talk to, so it needs no DHT.
type nopDiscovery struct{}

func (nopDiscovery) Advertise(ctx context.Context, _ string, _ ...discovery.Option) (time.Duration, error) {
	return time.Hour, ctx.Err()
}

func (nopDiscovery) FindPeers(ctx context.Context, _ string, _ ...discovery.Option) (<-chan peer.AddrInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan peer.AddrInfo)
	close(ch)
	return ch, nil
}
