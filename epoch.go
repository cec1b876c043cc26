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

	hraft "github.com/hashicorp/raft"
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
// The marker goes without the leader's stamp: it is not a write of anyone's,
// and a leadership change alone then leaves the state machine's clock as
// it was.
func (c *cluster) commitEpochMarker(timeout time.Duration) (uint64, error) {
	r, err := c.r()
	if err != nil {
		return 0, err
	}
	if r.State() != hraft.Leader {
		return 0, ErrNotLeader
	}
	ops := []cmdOp{{kind: opEpoch}}
	if _, err := c.kindsAllowed(r, ops); err != nil {
		return 0, err
	}
	resp, err := c.applyEncoded(encodeOps(ops), timeout)
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		return 0, err
	}
	res, ok := parseResult(resp.Data)
	if !ok || !res.OK || res.Index == 0 {
		return 0, fmt.Errorf("raft: epoch marker not applied (answer of %d bytes)", len(resp.Data))
	}
	return res.Index, nil
}
