package raft

// Leadership epochs in the state machine: a new leader commits an epoch
// marker (opEpoch) before it runs leader-only work, the marker's log index
// becomes the state machine's epoch, and IfEpoch(e) holds only while e is
// still the last epoch applied. Every replica applies the same markers at
// the same indexes, so they all agree on the epoch at every index: a
// deposed leader's late write conditioned on its epoch is refused by the
// log itself, not by the deposed leader's belief about its own state.

import (
	"encoding/binary"
	"fmt"
	"time"
)

// epochSegment names the record of the state machine's epoch (lower case
// with an underscore, so never the encoding of a key).
const epochSegment = "_epoch"

// applyEpochMarker makes the entry being applied the current epoch. The
// log index is unique and increasing, so epochs strictly increase from one
// leadership to the next.
func applyEpochMarker(a *applyCtx, _, _ []byte) error {
	a.f.epoch = a.index
	return nil
}

// holdsEpoch is IfEpoch's condition: the last marker applied is epoch's.
func holdsEpoch(a *applyCtx, _, value []byte) (bool, error) {
	return a.f.epoch == binary.BigEndian.Uint64(value), nil
}

// currentEpoch is the index of the last epoch marker this replica applied,
// 0 when none.
func (f *kvStore) currentEpoch() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.epoch
}

// commitEpochMarker proposes an epoch marker as the leader and returns its
// index, the new epoch, once it is applied here. An error wrapping
// ErrInvalidCommand means a voter does not know markers yet (a rolling
// upgrade in progress), see upgrade.go: the leadership cannot be fenced.
func (c *cluster) commitEpochMarker(timeout time.Duration) (uint64, error) {
	res, err := c.propose([]cmdOp{{kind: opEpoch}}, nil, timeout)
	if err != nil {
		return 0, err
	}
	if !res.OK || res.Index == 0 {
		return 0, fmt.Errorf("raft: epoch marker not applied (result %+v)", res)
	}
	return res.Index, nil
}
