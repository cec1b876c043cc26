package raft_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	raft "github.com/tauraft/raft"
)

// A queue worker: items are claimed oldest first, each for a visibility
// timeout; an ack is fenced by the claim, so a lapsed claim cannot ack.
func ExampleCluster_queue() {
	_, cl, stop := startAlone("/raft/example-queue")
	defer stop()

	for _, job := range []string{"resize a.png", "resize b.png"} {
		if _, err := cl.Enqueue("jobs", []byte(job), 5*time.Second); err != nil {
			panic(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	item, err := cl.Claim(ctx, "jobs", 30*time.Second) // waits for an item until ctx ends
	if err != nil {
		panic(err)
	}
	fmt.Println(string(item.Value))
	// Record the result only while the claim still holds the item, then ack.
	res, _ := cl.Txn(raft.Txn{
		If:   []raft.Cond{raft.IfCreateIndex(raft.QueueClaimKey("jobs", item.ID), item.Token)},
		Then: []raft.Op{raft.SetOp("results/a.png", []byte("done"))},
	}, 5*time.Second)
	fmt.Println(res.OK, cl.Ack("jobs", item, 5*time.Second))
	// A second ack is refused: the claim is gone.
	fmt.Println(errors.Is(cl.Ack("jobs", item, 5*time.Second), raft.ErrLeaseNotFound))

	next, _ := cl.Claim(ctx, "jobs", 30*time.Second)
	fmt.Println(string(next.Value), next.Token > item.Token)
	// Output:
	// resize a.png
	// true <nil>
	// true
	// resize b.png true
}
