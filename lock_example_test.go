package raft_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	raft "github.com/tauraft/raft"
)

// A lock with a fencing token: the holder's writes are conditioned on its
// lock still standing, and a second caller finds it held.
func ExampleCluster_lock() {
	_, cl, stop := startAlone("/raft/example-lock")
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lk, err := cl.Lock(ctx, "reindex", 5*time.Second) // waits in line if held
	if err != nil {
		panic(err)
	}
	// A write fenced by the token: applied only while this lock stands.
	res, err := cl.Txn(raft.Txn{
		If:   []raft.Cond{raft.IfCreateIndex(raft.LockKey("reindex"), lk.Token())},
		Then: []raft.Op{raft.SetOp("index/state", []byte("done"))},
	}, 5*time.Second)
	fmt.Println(res.OK, err)

	_, err = cl.TryLock("reindex", 5*time.Second, 5*time.Second)
	fmt.Println(errors.Is(err, raft.ErrLocked))

	fmt.Println(lk.Unlock())
	<-lk.Done() // closed: the lock is no longer held

	// The next holder's token is higher; the old one fences nothing now.
	next, err := cl.TryLock("reindex", 5*time.Second, 5*time.Second)
	if err != nil {
		panic(err)
	}
	defer next.Unlock()
	res, _ = cl.Txn(raft.Txn{
		If:   []raft.Cond{raft.IfCreateIndex(raft.LockKey("reindex"), lk.Token())},
		Then: []raft.Op{raft.SetOp("index/state", []byte("stale"))},
	}, 5*time.Second)
	fmt.Println(next.Token() > lk.Token(), res.OK)
	// Output:
	// true <nil>
	// true
	// <nil>
	// true false
}
