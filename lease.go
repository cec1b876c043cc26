package raft

// Leases: Grant, KeepAlive and Revoke on Cluster and Client, and the
// leader's expiry loop. The state machine's side (the table, its storage,
// applying) is lease_table.go.
//
// Expiry is decided by the leader's monotonic clock, never by a wall clock
// and never inside Apply: the leader times each lease from the moment it
// sees the lease's grant or last keep-alive applied (or from becoming
// leader: a new leader restarts every lease's full TTL), and when the TTL
// has passed it proposes an expiry naming the renewal it timed. A
// keep-alive is a log entry, so renewals survive leader changes, and a new
// leader restarting the TTL can only delay an expiry.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// leaseTick is how often the leader looks for renewed and expired
	// leases: the delay it adds to an expiry, and to the start of a
	// renewal's TTL (both only ever later).
	leaseTick = 100 * time.Millisecond
	// maxExpiriesPerEntry bounds the leases one expiry entry ends, so a
	// burst of expiries is a few entries, none of them huge.
	maxExpiriesPerEntry = 64
	// leaseExpireTimeout bounds the leader's wait for an expiry to commit.
	leaseExpireTimeout = 5 * time.Second
	// leaseRetryPause is how long the leader waits before proposing again
	// after an expiry failed (a voter that lacks the kind, say): a late
	// expiry is safe, a log line every tick is not useful.
	leaseRetryPause = time.Second
)

// Grant creates a lease of ttl (MinLeaseTTL to MaxLeaseTTL) and returns its
// ID, the log index of its grant. Keys bound to it (Op.Lease) are deleted
// when it expires: ttl after its grant or last KeepAlive, or more (see
// the README, "Leases"). Any member: a follower forwards it to the leader.
func (c *cluster) Grant(ttl time.Duration, timeout time.Duration) (LeaseID, error) {
	if err := validateLeaseTTL(ttl); err != nil {
		return 0, err
	}
	res, err := c.leaseWrite(grantOps(ttl), timeout)
	return LeaseID(res.Index), err
}

// KeepAlive renews a lease for its full TTL; ErrLeaseNotFound once it
// expired or was revoked. Any member.
func (c *cluster) KeepAlive(id LeaseID, timeout time.Duration) error {
	res, err := c.leaseWrite(leaseIDOps(opLeaseKeepAlive, id), timeout)
	return leaseOutcome(id, res, err)
}

// Revoke ends a lease now, deleting the keys bound to it (one EventDelete
// each); ErrLeaseNotFound when it does not exist. Any member.
func (c *cluster) Revoke(id LeaseID, timeout time.Duration) error {
	res, err := c.leaseWrite(leaseIDOps(opLeaseRevoke, id), timeout)
	return leaseOutcome(id, res, err)
}

// leaseWrite proposes lease operations as Txn does: on the leader, or
// forwarded to it.
func (c *cluster) leaseWrite(ops []cmdOp, timeout time.Duration) (TxnResult, error) {
	if err := validateTimeout(timeout); err != nil {
		return TxnResult{}, err
	}
	if c.IsLeader() {
		return c.propose(ops, nil, timeout)
	}
	return c.writeAnywhere(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)}, timeout)
}

// Grant creates a lease through a member, as Cluster.Grant. A retry after a
// lost answer gets the same lease (exactly-once Client writes).
func (c *Client) Grant(ttl time.Duration, timeout time.Duration, peers ...peer.ID) (LeaseID, error) {
	if err := validateLeaseTTL(ttl); err != nil {
		return 0, err
	}
	resp, err := c.leaseWrite(grantOps(ttl), timeout, peers)
	if err != nil {
		return 0, err
	}
	return LeaseID(resp.Index), nil
}

// KeepAlive renews a lease through a member, as Cluster.KeepAlive.
func (c *Client) KeepAlive(id LeaseID, timeout time.Duration, peers ...peer.ID) error {
	resp, err := c.leaseWrite(leaseIDOps(opLeaseKeepAlive, id), timeout, peers)
	if err != nil {
		return leaseOutcome(id, TxnResult{}, err)
	}
	return leaseOutcome(id, TxnResult{OK: resp.OK, Index: resp.Index}, nil)
}

// Revoke ends a lease through a member, as Cluster.Revoke.
func (c *Client) Revoke(id LeaseID, timeout time.Duration, peers ...peer.ID) error {
	resp, err := c.leaseWrite(leaseIDOps(opLeaseRevoke, id), timeout, peers)
	if err != nil {
		return leaseOutcome(id, TxnResult{}, err)
	}
	return leaseOutcome(id, TxnResult{OK: resp.OK, Index: resp.Index}, nil)
}

func (c *Client) leaseWrite(ops []cmdOp, timeout time.Duration, peers []peer.ID) (*response, error) {
	if err := validateTimeout(timeout); err != nil {
		return nil, err
	}
	return c.write(&request{Cmd: cmdTxn, Command: encodeOps(ops), Timeout: int64(timeout)}, timeout, peers)
}

// grantOps is a grant's command.
func grantOps(ttl time.Duration) []cmdOp {
	return []cmdOp{{kind: opLeaseGrant, value: binary.BigEndian.AppendUint64(nil, uint64(ttl))}}
}

// leaseIDOps is a keep-alive's or revocation's command: conditional on the
// lease existing, so the answer tells whether it did.
func leaseIDOps(kind uint8, id LeaseID) []cmdOp {
	v := binary.BigEndian.AppendUint64(nil, uint64(id))
	return []cmdOp{{kind: opIfLease, value: v}, {kind: kind, value: v}}
}

// leaseOutcome turns a keep-alive's or revocation's result into its error.
func leaseOutcome(id LeaseID, res TxnResult, err error) error {
	if err != nil {
		return err
	}
	if !res.OK {
		return fmt.Errorf("%w: lease %d", ErrLeaseNotFound, id)
	}
	return nil
}

// now is the leader's wall clock, for the stamps it puts on commands (the
// state machine's clock); tests skew it. Lease timing never reads it.
func (c *cluster) now() time.Time {
	if c.cfg.clock != nil {
		return c.cfg.clock()
	}
	return time.Now()
}

// withClock replaces the wall clock a member stamps its commands with
// (tests: members whose clocks disagree).
func withClock(now func() time.Time) Option {
	return func(c *config) error {
		c.clock = now
		return nil
	}
}

// leaseTimer is the leader's view of one lease: the renewal it saw last,
// and when (monotonic) the lease runs out unless renewed again.
type leaseTimer struct {
	touch    uint64
	deadline time.Time
}

// leaseLoop times the leases while this member leads and proposes their
// expiry. Its state lives only in memory and only while leading: a member
// that becomes leader (again) starts every lease's TTL afresh.
func (c *cluster) leaseLoop() {
	defer c.wg.Done()
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	timers := map[LeaseID]leaseTimer{}
	var term uint64 // of the leadership the timers belong to; 0: none
	var retryAt time.Time
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		r, err := c.r()
		if err != nil || r.State() != hraft.Leader {
			term = 0
			clear(timers)
			continue
		}
		if cur := r.CurrentTerm(); cur != term {
			// A new leadership, even of this member again: the renewals
			// another leader committed meanwhile may not be applied here
			// yet, so every lease gets its full TTL from now.
			term = cur
			clear(timers)
		}
		now := time.Now()
		expired := expiredLeases(timers, c.fsm.leaseList(), now)
		if len(expired) > 0 && !now.Before(retryAt) {
			if err := c.expire(expired); err != nil {
				c.logger.Warn("lease expiry not committed; retrying", "leases", len(expired), "error", err)
				retryAt = time.Now().Add(leaseRetryPause)
			}
		}
	}
}

// expiredLeases updates the timers from the current leases at now and
// returns the expiry operations due, in lease order. A lease seen for the
// first time, or renewed since last seen, runs out TTL from now; one that
// is gone is forgotten.
func expiredLeases(timers map[LeaseID]leaseTimer, leases []leaseInfo, now time.Time) []cmdOp {
	seen := make(map[LeaseID]struct{}, len(leases))
	var due []cmdOp
	for _, l := range leases {
		seen[l.id] = struct{}{}
		tm, ok := timers[l.id]
		if !ok || tm.touch != l.touch {
			timers[l.id] = leaseTimer{touch: l.touch, deadline: now.Add(l.ttl)}
			continue
		}
		if !now.Before(tm.deadline) {
			v := binary.BigEndian.AppendUint64(nil, uint64(l.id))
			due = append(due, cmdOp{kind: opLeaseExpire, value: binary.BigEndian.AppendUint64(v, l.touch)})
		}
	}
	for id := range timers {
		if _, ok := seen[id]; !ok {
			delete(timers, id)
		}
	}
	slices.SortFunc(due, func(a, b cmdOp) int { return bytes.Compare(a.value, b.value) })
	return due
}

// expire proposes the due expiries, maxExpiriesPerEntry per entry. After
// a failure the leases are still due (their timers are unchanged), so a
// later tick proposes them again; an expiry applied twice does nothing the
// second time.
func (c *cluster) expire(due []cmdOp) error {
	for len(due) > 0 && c.ctx.Err() == nil {
		n := min(len(due), maxExpiriesPerEntry)
		if _, err := c.propose(due[:n], nil, leaseExpireTimeout); err != nil {
			return err
		}
		due = due[n:]
	}
	return nil
}
