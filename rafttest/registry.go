package rafttest

import "github.com/tauraft/raft/memdisc"

// The discovery registry lives in package memdisc, which does not import
// "testing" and so also serves programs such as the tauraft demo. These
// names forward to it so that tests written against rafttest keep working.

// Registry is the in-memory discovery service shared by a Mesh's nodes
// (Mesh.Registry). It is memdisc.Registry; see there for its rules.
type Registry = memdisc.Registry

// DefaultTTL is memdisc.DefaultTTL: how long an advertisement made without a
// discovery.TTL option stays in a Registry, unless WithDiscoveryTTL says
// otherwise.
const DefaultTTL = memdisc.DefaultTTL

// NewRegistry returns an empty registry using DefaultTTL, as
// memdisc.NewRegistry does.
func NewRegistry() *Registry { return memdisc.NewRegistry() }
