package raft_test

import (
	"errors"
	"fmt"
	"time"

	raft "github.com/tauraft/raft"
)

// A lease: a key bound to it lives while KeepAlives continue, and goes
// when the lease is revoked (or expires).
func ExampleCluster_leases() {
	_, cl, stop := startAlone("/raft/example-lease")
	defer stop()

	id, err := cl.Grant(10*time.Second, 5*time.Second)
	if err != nil {
		panic(err)
	}
	_, _ = cl.Txn(raft.Txn{Then: []raft.Op{{Key: "svc/worker-1", Value: []byte("10.0.0.7"), Lease: id}}}, 5*time.Second)
	_ = cl.KeepAlive(id, 5*time.Second) // in a loop, well within the TTL
	e, _, _ := cl.GetEntry("svc/worker-1")
	fmt.Println(e.Lease == id)
	_ = cl.Revoke(id, 5*time.Second)
	_, ok := cl.Get("svc/worker-1")
	fmt.Println(ok)
	fmt.Println(errors.Is(cl.KeepAlive(id, 5*time.Second), raft.ErrLeaseNotFound))
	// Output:
	// true
	// false
	// true
}
