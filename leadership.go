package raft

import (
	"context"
	"errors"
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// IsLeader tells whether this member is the leader now.
func (c *cluster) IsLeader() bool {
	r, err := c.r()
	return err == nil && r.State() == hraft.Leader
}

// Leader is the current leader's peer ID, or ErrNoLeader.
func (c *cluster) Leader() (peer.ID, error) {
	r, err := c.r()
	if err != nil {
		return "", err
	}
	_, id := r.LeaderWithID()
	if id == "" {
		return "", ErrNoLeader
	}
	p, err := peer.Decode(string(id))
	if err != nil {
		return "", fmt.Errorf("raft: leader id %q: %w", id, err)
	}
	return p, nil
}

// State is the local Raft state (Shutdown after Close).
func (c *cluster) State() hraft.RaftState {
	r, err := c.r()
	if err != nil {
		return hraft.Shutdown
	}
	return r.State()
}

// WaitForLeader returns once a leader is known, or with ctx's error.
func (c *cluster) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := c.Leader(); err == nil {
			return nil
		} else if !errors.Is(err, ErrNoLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrShutdown
		case <-t.C:
		}
	}
}

// TransferLeadership hands leadership to the most up-to-date voter. Leader
// only.
func (c *cluster) TransferLeadership() error {
	r, err := c.r()
	if err != nil {
		return err
	}
	return translateRaftError(r.LeadershipTransfer().Error())
}

// leadership tells the forwarder where leader-only requests go: here
// (self), to leader, or nowhere yet (no leader known). err is ErrShutdown
// once the member is closed.
func (c *cluster) leadership() (self bool, leader peer.ID, err error) {
	r, err := c.r()
	if err != nil {
		return false, "", err
	}
	if r.State() == hraft.Leader {
		return true, c.self, nil
	}
	leader, err = c.Leader()
	if err != nil {
		return false, "", nil
	}
	return false, leader, nil
}
