package raft_test

import (
	"context"
	"fmt"
	"os"
	"time"

	raft "github.com/tauraft/raft"
	"github.com/tauraft/raft/p2pnode"
)

// startAlone starts a standalone node on 127.0.0.1 and a cluster of one on
// it, and waits for it to lead. stop closes both.
func startAlone(namespace string) (node *p2pnode.Node, cl raft.Cluster, stop func()) {
	node, err := p2pnode.New(context.Background(), p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		panic(err)
	}
	snaps, err := os.MkdirTemp("", "example-snapshots")
	if err != nil {
		panic(err)
	}
	cl, err = raft.New(node, namespace,
		raft.WithTimeoutPreset(raft.PresetLocal),
		raft.WithForceBootstrap(), // no peers here: start a cluster of one now
		raft.WithSnapshotDir(snaps),
	)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.WaitForLeader(ctx); err != nil {
		panic(err)
	}
	return node, cl, func() {
		_ = cl.Close()
		_ = node.Close()
		_ = os.RemoveAll(snaps)
	}
}

// Start a cluster of one. Without WithForceBootstrap, New would first look
// for peers of the namespace during its bootstrap window.
func ExampleNew() {
	_, cl, stop := startAlone("/raft/example")
	defer stop()
	fmt.Println("leader:", cl.IsLeader())
	// Output: leader: true
}

// Set, Get, Keys and Delete on the leader.
func ExampleCluster_kv() {
	_, cl, stop := startAlone("/raft/example-kv")
	defer stop()

	_ = cl.Set("jobs/a", []byte("scheduled"), 5*time.Second)
	_ = cl.Set("jobs/b", []byte("running"), 5*time.Second)
	_ = cl.Barrier(5 * time.Second)
	v, ok := cl.Get("jobs/a")
	fmt.Println(string(v), ok)
	fmt.Println(cl.Keys("jobs/"))
	_ = cl.Delete("jobs/a", 5*time.Second)
	_, ok = cl.Get("jobs/a")
	fmt.Println(ok)
	// Output:
	// scheduled true
	// [jobs/a jobs/b]
	// false
}

// A Client on another node writes through the member and reads with a
// barrier.
func ExampleNewClient() {
	member, _, stop := startAlone("/raft/example-client")
	defer stop()
	other, err := p2pnode.New(context.Background(), p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		panic(err)
	}
	defer other.Close()

	// The client's host must know how to reach the member.
	if err := other.Peer().Connect(context.Background(), member.AddrInfo()); err != nil {
		panic(err)
	}
	cli, err := raft.NewClient(other, "/raft/example-client", nil)
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	if err := cli.Set("greeting", []byte("hello"), 5*time.Second, member.ID()); err != nil {
		panic(err)
	}
	v, found, err := cli.Get("greeting", int64(2*time.Second), member.ID())
	fmt.Println(string(v), found, err)
	// Output: hello true <nil>
}

// A lock held by whoever created the key first: Txn with IfAbsent takes it,
// GetEntry shows its versions, and a compare-and-set on ModIndex updates it
// only if nobody wrote in between. TxnResult.Index is the fencing token.
func ExampleCluster_txn() {
	_, cl, stop := startAlone("/raft/example-txn")
	defer stop()

	take := raft.Txn{If: []raft.Cond{raft.IfAbsent("lock")}, Then: []raft.Op{raft.SetOp("lock", []byte("me"))}}
	first, _ := cl.Txn(take, 5*time.Second)
	second, _ := cl.Txn(take, 5*time.Second)
	fmt.Println("taken:", first.OK, "taken again:", second.OK)

	e, _, _ := cl.GetEntry("lock")
	fmt.Println(string(e.Value), e.CreateIndex == first.Index, e.ModIndex == first.Index)

	renew := raft.Txn{
		If:   []raft.Cond{raft.IfModIndex("lock", e.ModIndex), raft.IfCreateIndex("lock", first.Index)},
		Then: []raft.Op{raft.SetOp("lock", []byte("still me"))},
	}
	res, _ := cl.Txn(renew, 5*time.Second)
	stale, _ := cl.Txn(renew, 5*time.Second) // ModIndex moved on
	fmt.Println("renewed:", res.OK, "stale renewal:", stale.OK)
	// Output:
	// taken: true taken again: false
	// me true true
	// renewed: true stale renewal: false
}

// A cron leader: RunAsLeader runs the job on whichever member leads, and
// each slot is claimed with a transaction fenced by the leadership's epoch,
// so a deposed leader that still believes it leads can neither run a slot
// twice nor write after its successor began.
func ExampleCluster_RunAsLeader() {
	_, cl, stop := startAlone("/raft/example-cron")
	defer stop()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job := func(ctx context.Context, epoch uint64) error {
		// A real job waits for each slot's time and stops when ctx ends
		// (this member lost leadership); here it claims three slots, one
		// of them twice, and stops the example.
		for _, slot := range []string{"cron/0900", "cron/0901", "cron/0900", "cron/0902"} {
			res, err := cl.Txn(raft.Txn{
				If:   []raft.Cond{raft.IfEpoch(epoch), raft.IfAbsent(slot)},
				Then: []raft.Op{raft.SetOp(slot, []byte("done"))},
			}, 5*time.Second)
			if err != nil {
				return err // RunAsLeader returns it, unless leadership was lost meanwhile
			}
			// Not OK: the slot is taken, or this leadership is over (a
			// newer epoch began) and the job must not act on it.
			fmt.Println(slot, "claimed:", res.OK)
		}
		cancel()
		return ctx.Err()
	}
	err := cl.RunAsLeader(ctx, job)
	fmt.Println(err)
	// Output:
	// cron/0900 claimed: true
	// cron/0901 claimed: true
	// cron/0900 claimed: false
	// cron/0902 claimed: true
	// context canceled
}

// WatchLeader follows leadership without ever blocking Raft: a slow reader
// gets the newest state.
func ExampleCluster_WatchLeader() {
	_, cl, stop := startAlone("/raft/example-watch")
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ev := range cl.WatchLeader(ctx) {
		if ev.Self { // this member leads, and its epoch is established
			fmt.Println("leading, epoch > 0:", ev.Epoch > 0)
			break
		}
	}
	// Output: leading, epoch > 0: true
}
