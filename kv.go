package raft

import (
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Set stores value under key. Leader only.
func (c *cluster) Set(key string, value []byte, timeout time.Duration) error {
	return c.applyOps(timeout, SetOp(key, value))
}

// Delete removes key. Leader only.
func (c *cluster) Delete(key string, timeout time.Duration) error {
	return c.applyOps(timeout, DeleteOp(key))
}

// applyOps validates and encodes a write, and commits it.
func (c *cluster) applyOps(timeout time.Duration, ops ...Op) error {
	cmd, err := encodeWrite(timeout, ops...)
	if err != nil {
		return err
	}
	return c.commit(cmd, timeout)
}

// encodeWrite is the one check every write of the built-in store gets, on the
// member that first receives it: its timeout, then its operations, which
// EncodeCommand validates as it encodes them.
func encodeWrite(timeout time.Duration, ops ...Op) ([]byte, error) {
	if err := validateTimeout(timeout); err != nil {
		return nil, err
	}
	return EncodeCommand(ops...)
}

// commit replicates a validated command and returns the state machine's
// verdict on it.
func (c *cluster) commit(cmd []byte, timeout time.Duration) error {
	resp, err := c.applyEncoded(cmd, timeout)
	if err != nil {
		return err
	}
	return resp.Error
}

// Get reads key from the local replica, which may be stale.
func (c *cluster) Get(key string) ([]byte, bool) {
	if c.closed.Load() || validateKey(key) != nil {
		return nil, false
	}
	v, ok, err := c.fsm.get(key)
	if err != nil {
		c.logger.Warn("get failed", "error", err)
		return nil, false
	}
	return v, ok
}

// Keys lists the local replica's keys that start with prefix, sorted.
func (c *cluster) Keys(prefix string) []string {
	if c.closed.Load() {
		return nil
	}
	keys, err := c.fsm.keys(prefix)
	if err != nil {
		c.logger.Warn("keys failed", "error", err)
	}
	return keys
}

// Apply replicates a command made by EncodeCommand (or any valid encoding of
// one). Leader only.
func (c *cluster) Apply(cmd []byte, timeout time.Duration) (FSMResponse, error) {
	if err := validateTimeout(timeout); err != nil {
		return FSMResponse{}, err
	}
	if err := validateCommand(cmd); err != nil {
		return FSMResponse{}, err
	}
	return c.applyEncoded(cmd, timeout)
}

// applyEncoded replicates a command already validated.
func (c *cluster) applyEncoded(cmd []byte, timeout time.Duration) (FSMResponse, error) {
	r, err := c.r()
	if err != nil {
		return FSMResponse{}, err
	}
	f := r.Apply(cmd, timeout)
	if err := c.wait(f, timeout); err != nil {
		return FSMResponse{}, err
	}
	resp, _ := f.Response().(FSMResponse)
	return resp, nil
}

// wait waits for a Raft future for at most timeout beyond its enqueueing:
// hashicorp's own timeout only bounds the enqueueing.
func (c *cluster) wait(f hraft.Future, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return translateRaftError(err)
	case <-t.C:
		return fmt.Errorf("%w after %v: the outcome is unknown", ErrTimeout, timeout)
	case <-c.ctx.Done():
		// Closing: do not hold Close for the rest of the timeout.
		return fmt.Errorf("%w while waiting: the outcome is unknown", ErrShutdown)
	}
}
