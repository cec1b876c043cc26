package raft

import (
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Barrier waits until the local replica has applied every write the leader
// had acknowledged when it was called. On the leader that is a Raft barrier;
// a follower asks the leader for a read index and waits to reach it.
func (c *cluster) Barrier(timeout time.Duration) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	r, err := c.r()
	if err != nil {
		return err
	}
	if r.State() == hraft.Leader {
		_, err := c.readIndex(timeout)
		return err
	}
	deadline := time.Now().Add(timeout)
	resp := c.svc.readIndex(&request{Cmd: cmdReadIndex, Timeout: int64(timeout)})
	if err := resp.err(); err != nil {
		return err
	}
	return c.waitApplied(resp.Index, deadline)
}

// readIndex, on the leader, returns an index that covers every write
// acknowledged before the call: after a Raft barrier, the state machine's own
// applied index. Raft's AppliedIndex would not do: it counts an entry applied
// when it hands it to the state machine, before the data is written.
func (c *cluster) readIndex(timeout time.Duration) (uint64, error) {
	run, err := c.current()
	if err != nil {
		return 0, err
	}
	if err := c.await(run, run.raft.Barrier(timeout), timeout); err != nil {
		return 0, err
	}
	return c.fsm.appliedIndex(), nil
}

// waitApplied waits until the local replica has applied index idx.
func (c *cluster) waitApplied(idx uint64, deadline time.Time) error {
	for {
		if c.closed.Load() {
			return ErrShutdown
		}
		if err := c.failure.Load(); err != nil {
			return *err
		}
		applied := c.fsm.appliedIndex()
		if applied >= idx {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: applied index %d, waiting for %d", ErrTimeout, applied, idx)
		}
		select {
		case <-c.ctx.Done():
			return ErrShutdown
		case <-time.After(2 * time.Millisecond):
		}
	}
}
