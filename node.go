package raft

import (
	"context"

	"github.com/ipfs/go-datastore"
	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Node is the part of a peer-to-peer node that a cluster runs on. A Taubyte
// p2p node satisfies it as it is; the p2pnode package provides a standalone one.
//
// The cluster borrows the node: Close on a cluster never closes the node, its
// host or its datastore. Cancelling Context stops every cluster on the node.
type Node interface {
	// Context lives as long as the node.
	Context() context.Context
	// ID is the node's peer ID, which is also its Raft server ID and address.
	ID() peer.ID
	// Peer is the libp2p host that carries Raft RPC and the command service.
	Peer() host.Host
	// Store holds the Raft log, the stable state and the key-value data, each
	// under the namespace's prefix.
	Store() datastore.Batching
	// Discovery finds the other members: the namespace is the rendezvous.
	Discovery() discovery.Discovery
}

// UnsyncedStore is an optional interface of the datastore a Node's Store
// returns: Unsynced gives the same data through writes that are not fsynced.
// When the store has it, the built-in key-value state machine writes through
// it, because everything the state machine holds can be rebuilt from the
// fsynced Raft log and snapshots: after a machine crash it re-applies the
// entries past the last applied index it finds (the index is written in the
// same batch as the data). The log and the stable state always go through
// Store itself. p2pnode's pebble store implements it.
type UnsyncedStore interface {
	Unsynced() datastore.Batching
}
