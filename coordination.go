package raft

// The types of the coordination API (DESIGN.md "Coordination API") that
// several of its files share: a key's versioned entry, leases and change
// events.

// LeaseID names a lease. 0 means no lease.
type LeaseID uint64

// Entry is a key's value with its versions. Indexes are Raft log indexes, so
// they order every change of the namespace, across keys.
type Entry struct {
	Value []byte
	// CreateIndex is the log index of the write that created the key (since
	// its last delete).
	CreateIndex uint64
	// ModIndex is the log index of the last write to the key.
	ModIndex uint64
	// Lease is the lease the key is bound to; 0 when it is not bound.
	Lease LeaseID
}

// EventKind says what happened to a key.
type EventKind uint8

const (
	// EventSet: the key was created or overwritten.
	EventSet EventKind = iota + 1
	// EventDelete: the key was deleted (a lease expiry or revocation is a
	// delete too).
	EventDelete
)

// String names the kind.
func (k EventKind) String() string {
	switch k {
	case EventSet:
		return "set"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one change of one key, as Watch delivers it. Entry is the key's
// entry after the change (for a delete: empty Value, the indexes of the
// deleted entry's creation and of the delete). Index is the log index of the
// entry that made the change; several events can share one index (a
// transaction or batch that changed several keys).
type Event struct {
	Kind  EventKind
	Key   string
	Entry Entry
	Index uint64
}
