package raft_test

import (
	"context"
	"fmt"
	"os"
	"time"

	raft "github.com/tauraft/raft"
	"github.com/tauraft/raft/p2pnode"
)

// Start a cluster of one and use the key-value store.
func ExampleNew() {
	node, err := p2pnode.New(context.Background(), p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		panic(err)
	}
	defer node.Close()
	snaps, _ := os.MkdirTemp("", "example-snapshots")
	defer os.RemoveAll(snaps)

	cl, err := raft.New(node, "/raft/example",
		raft.WithTimeoutPreset(raft.PresetLocal),
		raft.WithForceBootstrap(), // no peers here: start a cluster of one now
		raft.WithSnapshotDir(snaps),
	)
	if err != nil {
		panic(err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.WaitForLeader(ctx); err != nil {
		panic(err)
	}
	fmt.Println("leader:", cl.IsLeader())
	// Output: leader: true
}

// Set, Get, Keys and Delete on the leader.
func ExampleCluster_kv() {
	node, err := p2pnode.New(context.Background(), p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		panic(err)
	}
	defer node.Close()
	snaps, _ := os.MkdirTemp("", "example-snapshots")
	defer os.RemoveAll(snaps)
	cl, err := raft.New(node, "/raft/example-kv", raft.WithTimeoutPreset(raft.PresetLocal), raft.WithForceBootstrap(), raft.WithSnapshotDir(snaps))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = cl.WaitForLeader(ctx)

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
	ctx := context.Background()
	member, _ := p2pnode.New(ctx, p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	defer member.Close()
	other, _ := p2pnode.New(ctx, p2pnode.Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	defer other.Close()
	snaps, _ := os.MkdirTemp("", "example-snapshots")
	defer os.RemoveAll(snaps)

	cl, err := raft.New(member, "/raft/example-client", raft.WithTimeoutPreset(raft.PresetLocal), raft.WithForceBootstrap(), raft.WithSnapshotDir(snaps))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = cl.WaitForLeader(wctx)

	// The client's host must know how to reach the member.
	if err := other.Peer().Connect(ctx, member.AddrInfo()); err != nil {
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
