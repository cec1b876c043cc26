package p2pnode

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/tauraft/raft/memdisc"
)

// TestMain fails the package if any test leaves a goroutine behind, which
// would mean Close (or New's error path) does not release everything.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newTestNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func TestNewClose(t *testing.T) {
	// Earlier tests' DHT queries wind down asynchronously after Close; only
	// goroutines started by this test count here.
	ignore := goleak.IgnoreCurrent()
	n, err := New(context.Background(), Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if n.ID() == "" || n.ID() != n.Peer().ID() {
		t.Fatalf("ID() = %q, host ID = %q", n.ID(), n.Peer().ID())
	}
	if n.Store() == nil || n.Discovery() == nil || n.DHT() == nil {
		t.Fatalf("missing component: store=%v discovery=%v dht=%v", n.Store(), n.Discovery(), n.DHT())
	}

	var sawTCP, sawQUIC bool
	for _, a := range n.Addrs() {
		s := a.String()
		if !strings.HasPrefix(s, "/ip4/127.0.0.1/") {
			t.Errorf("address %s is not on loopback", s)
		}
		if id, err := peer.IDFromP2PAddr(a); err != nil || id != n.ID() {
			t.Errorf("address %s does not end in /p2p/%s", s, n.ID())
		}
		sawTCP = sawTCP || strings.Contains(s, "/tcp/")
		sawQUIC = sawQUIC || strings.Contains(s, "/quic-v1")
	}
	if !sawTCP || !sawQUIC {
		t.Errorf("want TCP and QUIC addresses, got %v", n.Addrs())
	}
	if ai := n.AddrInfo(); ai.ID != n.ID() || len(ai.Addrs) != len(n.Addrs()) {
		t.Errorf("AddrInfo() = %v, inconsistent with Addrs() = %v", ai, n.Addrs())
	}

	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := n.Context().Err(); err == nil {
		t.Error("Context() not cancelled by Close")
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Checked here too, not only in TestMain, so that a leak is reported
	// against the test that caused it.
	goleak.VerifyNone(t, ignore)
}

func TestNewFailsCleanly(t *testing.T) {
	_, err := New(context.Background(), Config{ListenAddrs: []string{"/not/a/multiaddr"}})
	if err == nil {
		t.Fatal("New accepted an invalid listen address")
	}
	dir := t.TempDir()
	// Pebble takes a file lock, so a second open of the same directory fails
	// after the datastore was opened; New must release the first one's
	// resources, i.e. the directory must be openable again afterwards.
	first := newTestNode(t, Config{DataDir: dir})
	if _, err := New(context.Background(), Config{DataDir: dir}); err == nil {
		t.Fatal("second node opened a locked pebble directory")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	reopened, err := New(context.Background(), Config{DataDir: dir})
	if err != nil {
		t.Fatalf("reopen after failed New: %v", err)
	}
	if err := reopened.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStreamOverTCPAndQUIC(t *testing.T) {
	const proto = protocol.ID("/p2pnode-test/echo/1.0.0")
	for _, transport := range []string{"tcp", "quic-v1"} {
		t.Run(transport, func(t *testing.T) {
			a := newTestNode(t, Config{})
			b := newTestNode(t, Config{})
			b.Peer().SetStreamHandler(proto, func(s network.Stream) {
				defer s.Close()
				_, _ = io.Copy(s, s)
			})
			var addrs []multiaddr.Multiaddr
			for _, addr := range b.AddrInfo().Addrs {
				if strings.Contains(addr.String(), "/"+transport) {
					addrs = append(addrs, addr)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.Peer().Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: addrs}); err != nil {
				t.Fatalf("connect: %v", err)
			}
			s, err := a.Peer().NewStream(ctx, b.ID(), proto)
			if err != nil {
				t.Fatalf("new stream: %v", err)
			}
			defer s.Close()
			if got := s.Conn().RemoteMultiaddr().String(); !strings.Contains(got, "/"+transport) {
				t.Fatalf("stream runs over %s, want %s", got, transport)
			}
			msg := []byte("hello raft")
			if _, err := s.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := s.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo = %q, want %q", got, msg)
			}
		})
	}
}

func TestLoadOrCreateIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "identity.key")
	k1, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %v, want 0600", perm)
	}
	k2, err := LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equals(k2) {
		t.Fatal("reloaded key differs from the created one")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A corrupt key must be an error, never silently replaced: a new key
	// would be a new peer ID, i.e. a stranger to the raft cluster.
	if _, err := LoadOrCreateIdentity(path); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func TestPebbleRestartKeepsIdentityAndData(t *testing.T) {
	base := t.TempDir()
	keyPath := filepath.Join(base, "identity.key")
	dataDir := filepath.Join(base, "data")
	key := datastore.NewKey("/raft/term")
	ctx := context.Background()

	start := func() *Node {
		t.Helper()
		priv, err := LoadOrCreateIdentity(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		n, err := New(ctx, Config{PrivKey: priv, DataDir: dataDir})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	n := start()
	firstID := n.ID()
	if err := n.Store().Put(ctx, key, []byte("42")); err != nil {
		t.Fatal(err)
	}
	b, err := n.Store().Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, datastore.NewKey("/raft/log/1"), []byte("entry")); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = start()
	defer n.Close()
	if n.ID() != firstID {
		t.Fatalf("peer ID changed across restart: %s -> %s", firstID, n.ID())
	}
	for k, want := range map[datastore.Key]string{key: "42", datastore.NewKey("/raft/log/1"): "entry"} {
		got, err := n.Store().Get(ctx, k)
		if err != nil {
			t.Fatalf("Get(%s) after restart: %v", k, err)
		}
		if string(got) != want {
			t.Fatalf("Get(%s) = %q, want %q", k, got, want)
		}
	}
}

func TestSuppliedDatastoreAndDiscovery(t *testing.T) {
	ctx := context.Background()
	store := dssync.MutexWrap(datastore.NewMapDatastore())
	disc := memdisc.Nop{}
	n, err := New(ctx, Config{Datastore: store, Discovery: disc})
	if err != nil {
		t.Fatal(err)
	}
	if n.DHT() != nil {
		t.Error("a DHT was started although a Discovery was supplied")
	}
	if n.Discovery() != disc {
		t.Error("Discovery() is not the supplied one")
	}
	if err := n.Store().Put(ctx, datastore.NewKey("/k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	// The caller owns a supplied datastore, so it must outlive the node.
	if v, err := store.Get(ctx, datastore.NewKey("/k")); err != nil || string(v) != "v" {
		t.Fatalf("supplied datastore unusable after Close: %q, %v", v, err)
	}
}

// TestPebbleWritesAreSynced guards the durability setting, which no
// functional test can observe without pulling the plug on the machine.
// It reads go-ds-pebble's unexported write options by reflection; if a
// dependency upgrade renames the field, update this test, do not drop it.
func TestPebbleWritesAreSynced(t *testing.T) {
	n := newTestNode(t, Config{DataDir: t.TempDir(), Discovery: memdisc.Nop{}})
	ps, ok := n.Store().(*pebbleStore)
	if !ok {
		t.Fatalf("Store() is %T, want *pebbleStore", n.Store())
	}
	f := reflect.ValueOf(ps.Datastore).Elem().FieldByName("writeOptions")
	if !f.IsValid() {
		t.Fatal("go-ds-pebble Datastore has no writeOptions field any more")
	}
	if f.Pointer() != reflect.ValueOf(pebble.Sync).Pointer() {
		t.Fatal("pebble datastore does not write with pebble.Sync")
	}
}

// The unsynced handle (raft.UnsyncedStore) is the same database, written
// without fsync, and stays usable for as long as the store is open.
func TestPebbleUnsyncedHandle(t *testing.T) {
	n := newTestNode(t, Config{DataDir: t.TempDir(), Discovery: memdisc.Nop{}})
	u, ok := n.Store().(interface{ Unsynced() datastore.Batching })
	if !ok {
		t.Fatalf("Store() is %T, which has no Unsynced method", n.Store())
	}
	ctx := context.Background()
	uds := u.Unsynced()
	if err := uds.Put(ctx, datastore.NewKey("/via/unsynced"), []byte("u")); err != nil {
		t.Fatal(err)
	}
	if v, err := n.Store().Get(ctx, datastore.NewKey("/via/unsynced")); err != nil || string(v) != "u" {
		t.Fatalf("the store reads %q, %v for a key written through Unsynced", v, err)
	}
	if err := n.Store().Put(ctx, datastore.NewKey("/via/store"), []byte("s")); err != nil {
		t.Fatal(err)
	}
	if v, err := uds.Get(ctx, datastore.NewKey("/via/store")); err != nil || string(v) != "s" {
		t.Fatalf("Unsynced reads %q, %v for a key written through the store", v, err)
	}
	f := reflect.ValueOf(uds.(*pebbleds.Datastore)).Elem().FieldByName("writeOptions")
	if !f.IsValid() {
		t.Fatal("go-ds-pebble Datastore has no writeOptions field any more")
	}
	if f.Pointer() != reflect.ValueOf(pebble.NoSync).Pointer() {
		t.Fatal("the unsynced handle does not write with pebble.NoSync")
	}
}

// raftNode mirrors the Node interface of package raft, which this package
// must not import (raft's tests import p2pnode through rafttest).
type raftNode interface {
	Context() context.Context
	ID() peer.ID
	Peer() host.Host
	Store() datastore.Batching
	Discovery() discovery.Discovery
}

var _ raftNode = (*Node)(nil)
