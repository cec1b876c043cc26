package addrbook

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

func newID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func addrs(t *testing.T, n int) []ma.Multiaddr {
	t.Helper()
	out := make([]ma.Multiaddr, n)
	for i := range out {
		out[i] = ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i))
	}
	return out
}

func TestEncodeDecode(t *testing.T) {
	long := ma.StringCast("/dns4/" + strings.Repeat("x", MaxAddrSize) + ".example/tcp/1")
	in := append([]ma.Multiaddr{long}, addrs(t, 3)...)
	in = append(in, in[1]) // a duplicate
	in = append(in, addrs(t, 20)...)
	got, err := Decode(Encode(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxAddrs {
		t.Fatalf("decoded %d addresses, want %d", len(got), MaxAddrs)
	}
	for i, a := range got {
		if want := addrs(t, MaxAddrs)[i]; !a.Equal(want) {
			t.Fatalf("address %d is %s, want %s (the long one and the duplicate dropped)", i, a, want)
		}
	}
	// Bad lines are skipped, an oversized value refused.
	got, err = Decode([]byte("not an address\n/ip4/10.0.0.1/tcp/1\n\n"))
	if err != nil || len(got) != 1 || got[0].String() != "/ip4/10.0.0.1/tcp/1" {
		t.Fatalf("Decode with a bad line: %v, %v", got, err)
	}
	if _, err := Decode(make([]byte, maxValueSize+1)); err == nil {
		t.Fatal("an oversized entry decoded")
	}
}

func TestLoadBounds(t *testing.T) {
	ctx := context.Background()
	ds := datastore.NewMapDatastore()
	const ns = "/raft/book"
	for range MaxPeers + 10 {
		if err := ds.Put(ctx, Key(ns, newID(t)), Encode(addrs(t, 2))); err != nil {
			t.Fatal(err)
		}
	}
	// Not entries of the book: another namespace, a nested key, a bad
	// peer ID, an entry without addresses.
	other := newID(t)
	_ = ds.Put(ctx, Key("/raft/other", other), Encode(addrs(t, 1)))
	_ = ds.Put(ctx, Key(ns, other).ChildString("x"), Encode(addrs(t, 1)))
	_ = ds.Put(ctx, Prefix(ns).ChildString("notapeer"), Encode(addrs(t, 1)))
	_ = ds.Put(ctx, Key(ns+"/sub", newID(t)), Encode(addrs(t, 1)))
	infos, err := Load(ctx, ds, ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != MaxPeers {
		t.Fatalf("loaded %d members, want the cap %d", len(infos), MaxPeers)
	}
	for _, ai := range infos {
		if ai.ID == other || len(ai.Addrs) != 2 {
			t.Fatalf("loaded %s with %d addresses", ai.ID, len(ai.Addrs))
		}
	}
}
