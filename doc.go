// Package raft runs HashiCorp Raft inside a libp2p mesh.
//
// New starts or joins the cluster of one namespace on a Node: the namespace
// is the discovery rendezvous, names the command protocol and the Raft RPC
// protocol, and prefixes everything the cluster keeps in the node's
// datastore. Nodes of a namespace find each other, exchange what they know
// and agree on founders without a seed list; a Client talks to any member,
// which forwards writes (and linearizable reads) to the leader.
//
// Where things live (the README's "Layout" has the full table):
// cluster.go (the Cluster interface and its lifecycle), bootstrap.go (the
// bootstrap window and the founder rule), membership.go (joining and
// staying in), merge.go (split clusters), discovery.go and exchange.go (the
// peer tracker and peer exchange), kv.go and readindex.go (the key-value
// calls and barrier reads), wire.go, caller.go, stream.go and forward.go
// (the command service and its client side), session_wire.go,
// session_pool.go, client_session.go and stream_session.go (pipelined
// sessions), command.go, opkinds.go, fsm.go, apply.go and snapshot.go (the
// state machine), txn.go, watch.go, lease.go, lock.go and queue.go (the
// coordination API), leadership.go, leader_run.go and epoch.go
// (WatchLeader, RunAsLeader and the epochs IfEpoch checks), store_log.go
// and store_stable.go (Raft's storage in the datastore), transport.go and
// crypto.go (Raft RPC over libp2p, encryption), addrbook.go and dialgate.go
// (the address book, the pace of dials to a peer that stays down),
// suffrage.go, autopilot.go and replication_pace.go (voters and
// non-voters, and how the leader feeds non-voters), stats.go, lag.go
// and status_wire.go (Stats and the status command), metrics.go
// (WithMetrics), logging.go, logging_raft.go and logrules.go (the log
// queue, and what of Raft's output an operator sees), limits.go and
// errors.go (every limit and every sentinel).
package raft
