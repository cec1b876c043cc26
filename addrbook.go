package raft

// The address book: the last addresses each member of the configuration
// announced itself, kept in the datastore (layout in package addrbook), so
// that a restarted member finds the others again when its discovery has
// nobody to ask (its DHT bootstrap peer gone for good).

import (
	"context"
	"slices"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft/addrbook"
)

// bookInterval is how often a member brings its address book up to date
// (it writes only what changed).
const bookInterval = 2 * time.Second

// SavedPeers reads the address book namespace's member keeps in store: the
// last addresses each member of the configuration announced (at most
// addrbook.MaxPeers members, addrbook.MaxAddrs addresses each). A node can
// use them to find the namespace again without its bootstrap peers (p2pnode
// does, see Config.SeedNamespaces).
func SavedPeers(ctx context.Context, store datastore.Read, namespace string) ([]peer.AddrInfo, error) {
	return addrbook.Load(ctx, store, namespace)
}

// addrBook is a member's address book: what is saved, by member.
type addrBook struct {
	ds        datastore.Batching
	namespace string
	mu        sync.Mutex
	saved     map[peer.ID]string // the stored value, see addrbook.Encode
}

// openAddrBook reads namespace's book from ds.
func openAddrBook(ctx context.Context, ds datastore.Batching, namespace string) (*addrBook, []peer.AddrInfo, error) {
	infos, err := addrbook.Load(ctx, ds, namespace)
	if err != nil {
		return nil, nil, err
	}
	b := &addrBook{ds: ds, namespace: namespace, saved: map[peer.ID]string{}}
	for _, ai := range infos {
		b.saved[ai.ID] = string(addrbook.Encode(ai.Addrs))
	}
	return b, infos, nil
}

// addrs returns the saved addresses of id.
func (b *addrBook) addrs(id peer.ID) []ma.Multiaddr {
	b.mu.Lock()
	v, ok := b.saved[id]
	b.mu.Unlock()
	if !ok {
		return nil
	}
	addrs, _ := addrbook.Decode([]byte(v))
	return addrs
}

// bookPlan decides what the book writes: an entry for each member (at most
// addrbook.MaxPeers, the smallest IDs) whose first-hand addresses (current:
// what a member we are connected to announced) differ from its saved entry,
// and the removal of the entries of peers that are no longer members. A
// member we are not connected to keeps its saved entry: it is the last thing
// it announced. Without members (no configuration known) nothing changes.
// Only members are ever written: what a stranger says never reaches the disk.
func bookPlan(saved map[peer.ID]string, members []peer.ID, current map[peer.ID][]ma.Multiaddr) (put map[peer.ID]string, del []peer.ID) {
	if len(members) == 0 {
		return nil, nil
	}
	members = slices.Clone(members)
	slices.Sort(members)
	members = slices.Compact(members)
	if len(members) > addrbook.MaxPeers {
		members = members[:addrbook.MaxPeers]
	}
	for _, id := range members {
		addrs, ok := current[id]
		if !ok {
			continue
		}
		v := string(addrbook.Encode(addrs))
		if v == "" || saved[id] == v {
			continue
		}
		if put == nil {
			put = map[peer.ID]string{}
		}
		put[id] = v
	}
	for id := range saved {
		if _, ok := slices.BinarySearch(members, id); !ok {
			del = append(del, id)
		}
	}
	slices.Sort(del)
	return put, del
}

// update writes what bookPlan decides for members, with the addresses of
// those the host is connected to as the first-hand ones.
func (b *addrBook) update(ctx context.Context, h bookHost, members []peer.ID) error {
	current := map[peer.ID][]ma.Multiaddr{}
	for _, id := range members {
		if h.Connectedness(id) == network.Connected {
			if addrs := h.Addrs(id); len(addrs) > 0 {
				current[id] = addrs
			}
		}
	}
	b.mu.Lock()
	put, del := bookPlan(b.saved, members, current)
	b.mu.Unlock()
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	batch, err := b.ds.Batch(ctx)
	if err != nil {
		return err
	}
	for id, v := range put {
		if err := batch.Put(ctx, addrbook.Key(b.namespace, id), []byte(v)); err != nil {
			return err
		}
	}
	for _, id := range del {
		if err := batch.Delete(ctx, addrbook.Key(b.namespace, id)); err != nil {
			return err
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, v := range put {
		b.saved[id] = v
	}
	for _, id := range del {
		delete(b.saved, id)
	}
	return nil
}

// bookHost is what the book reads of the host: whether it is connected to
// a peer, and the peer's addresses.
type bookHost interface {
	Connectedness(peer.ID) network.Connectedness
	Addrs(peer.ID) []ma.Multiaddr
}

// hostView is a node's host as a bookHost.
type hostView struct{ n Node }

func (v hostView) Connectedness(id peer.ID) network.Connectedness {
	return v.n.Peer().Network().Connectedness(id)
}
func (v hostView) Addrs(id peer.ID) []ma.Multiaddr { return v.n.Peer().Peerstore().Addrs(id) }

// seedFromBook makes the tracker try the members of the book at start: their
// saved addresses go to the peerstore (short-lived, like anything not heard
// from the peer itself) and the tracker probes them, which dials them and,
// once one answers, asks it for the others.
func (c *cluster) seedFromBook(infos []peer.AddrInfo) {
	for _, ai := range infos {
		if ai.ID == c.self {
			continue
		}
		c.peers.learn(ai.ID, ai.Addrs, 0, true)
	}
}

// bookLoop keeps the address book up to date with the configuration's
// members, until the cluster closes.
func (c *cluster) bookLoop() {
	defer c.wg.Done()
	t := time.NewTicker(bookInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		r, err := c.r()
		if err != nil {
			continue
		}
		f := r.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		members := serverPeers(f.Configuration().Servers, c.self)
		if err := c.book.update(c.ctx, hostView{c.node}, members); err != nil && c.ctx.Err() == nil {
			c.logger.Warn("address book not saved", "error", err)
		}
	}
}

// serverPeers returns the peer IDs of servers, self left out.
func serverPeers(servers []hraft.Server, self peer.ID) []peer.ID {
	out := make([]peer.ID, 0, len(servers))
	for _, s := range servers {
		id, err := peer.Decode(string(s.ID))
		if err != nil || id == self {
			continue
		}
		out = append(out, id)
	}
	return out
}
