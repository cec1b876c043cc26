// Package addrbook is the on-disk layout of the address book a tauraft
// member keeps in its node's datastore: the last addresses each member of
// the namespace announced itself, so that a restarted node can find the
// others again without a DHT bootstrap peer.
//
// The raft package writes the book (see its README, "Address book");
// p2pnode reads it to re-seed its DHT. Both go through this package, which
// imports neither.
//
// Layout: one key per member, namespace + "/addrs/" + the member's peer ID
// (base58), whose value is the member's multiaddrs in their string form, one
// per line. At most MaxPeers keys and MaxAddrs addresses of at most
// MaxAddrSize bytes each are read back, whatever the datastore holds.
package addrbook

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

const (
	// MaxPeers caps the members one namespace's book holds: a namespace's
	// configuration (voters and non-voters) is expected well below it.
	MaxPeers = 64
	// MaxAddrs caps the addresses kept per member.
	MaxAddrs = 8
	// MaxAddrSize caps one address, in its binary form.
	MaxAddrSize = 256
	// maxValueSize caps a stored value: MaxAddrs string forms of at most a
	// few times MaxAddrSize bytes each.
	maxValueSize = MaxAddrs * 4 * MaxAddrSize
)

// Prefix is the datastore key under which namespace's book lives.
func Prefix(namespace string) datastore.Key {
	return datastore.NewKey(namespace + "/addrs")
}

// Key is the datastore key of member id's entry in namespace's book.
func Key(namespace string, id peer.ID) datastore.Key {
	return Prefix(namespace).ChildString(id.String())
}

// Bound keeps at most MaxAddrs addresses of at most MaxAddrSize bytes, in
// their order, without duplicates.
func Bound(addrs []ma.Multiaddr) []ma.Multiaddr {
	out := make([]ma.Multiaddr, 0, min(len(addrs), MaxAddrs))
	seen := map[string]bool{}
	for _, a := range addrs {
		if len(out) == MaxAddrs {
			break
		}
		if a == nil {
			continue
		}
		b := a.Bytes()
		if len(b) == 0 || len(b) > MaxAddrSize || seen[string(b)] {
			continue
		}
		seen[string(b)] = true
		out = append(out, a)
	}
	return out
}

// Encode is the stored form of addrs (bounded first, see Bound).
func Encode(addrs []ma.Multiaddr) []byte {
	var b strings.Builder
	for _, a := range Bound(addrs) {
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Decode reads a stored entry back: the addresses it can parse, bounded.
func Decode(v []byte) ([]ma.Multiaddr, error) {
	if len(v) > maxValueSize {
		return nil, fmt.Errorf("addrbook: entry of %d bytes, more than %d", len(v), maxValueSize)
	}
	var addrs []ma.Multiaddr
	for line := range strings.SplitSeq(string(v), "\n") {
		if line == "" {
			continue
		}
		a, err := ma.NewMultiaddr(line)
		if err != nil {
			continue // one bad line does not cost the others
		}
		addrs = append(addrs, a)
	}
	return Bound(addrs), nil
}

// Load reads namespace's book from store: at most MaxPeers members (the
// first by key order), each with at least one address.
func Load(ctx context.Context, store datastore.Read, namespace string) ([]peer.AddrInfo, error) {
	prefix := Prefix(namespace).String()
	res, err := store.Query(ctx, query.Query{Prefix: prefix})
	if err != nil {
		return nil, fmt.Errorf("addrbook: reading %s: %w", prefix, err)
	}
	defer res.Close()
	var out []peer.AddrInfo
	for r := range res.Next() {
		if r.Error != nil {
			return nil, fmt.Errorf("addrbook: reading %s: %w", prefix, r.Error)
		}
		rest, ok := strings.CutPrefix(r.Key, prefix+"/")
		if !ok || strings.Contains(rest, "/") {
			continue
		}
		id, err := peer.Decode(rest)
		if err != nil {
			continue
		}
		addrs, err := Decode(r.Value)
		if err != nil || len(addrs) == 0 {
			continue
		}
		out = append(out, peer.AddrInfo{ID: id, Addrs: addrs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if len(out) > MaxPeers {
		out = out[:MaxPeers]
	}
	return out, nil
}
