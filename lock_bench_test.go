package raft

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// BenchmarkCompareLock: a TryLock then Unlock round trip through a Client
// (one lock name per operation, so concurrent writers never contend)
// against Client.Set, through the same Client to the same member of the
// same cluster (in-memory datastore, PresetLocal), side by side. The
// criterion: p50-x:lock/set at most 3 (sequential). A round trip is
// two writes: TryLock grants the lease and creates the lock key in one
// entry, Unlock deletes the key and revokes the lease in one.
func BenchmarkCompareLock(b *testing.B) {
	const ns = "/raft/bench-lock"
	mesh := rafttest.NewMesh(b, benchNodes, rafttest.Connected())
	lib := benchStartCluster(b, mesh, ns)
	cn := mesh.Add()
	if err := mesh.Connect(cn, 0); err != nil {
		b.Fatal(err)
	}
	cli, err := NewClient(mesh.Node(cn), ns, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	leader := lib.leader.Load().(Cluster).(*cluster).self
	if err := mesh.Connect(cn, mesh.Index(leader)); err != nil {
		b.Fatal(err)
	}
	to := []peer.ID{leader}
	set := func(i int) error { return cli.Set(benchKey(i), benchValue, benchWriteTimeout, to...) }
	lock := func(i int) error {
		lk, err := cli.TryLock(fmt.Sprintf("bench/%d", i), 10*time.Second, benchWriteTimeout, to...)
		if err != nil {
			return err
		}
		return lk.Unlock()
	}
	for range 20 {
		if err := set(0); err != nil {
			b.Fatal(err)
		}
		if err := lock(0); err != nil {
			b.Fatal(err)
		}
	}
	sides := []benchSide{{name: "set", op: set, retries: &lib.retries}, {name: "lock", op: lock, retries: &lib.retries}}
	ratios := []benchRatio{{"lock", "set"}}
	b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, sides, ratios) })
	// A member serves 8 watch streams per peer (watchStreamsPerPeer), and
	// each held lock watches its key: 8 writers stay within that.
	b.Run("writers8", func(b *testing.B) { benchCompare(b, 8, sides, ratios) })
}
