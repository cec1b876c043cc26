package raft

import (
	"errors"
	"fmt"
	"sync"
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

// applyOps validates a write and proposes it.
func (c *cluster) applyOps(timeout time.Duration, ops ...Op) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	if len(ops) == 1 {
		// Set and Delete: the operation on the stack, its key too when
		// short (the command is encoded from it; nothing keeps it).
		if err := checkUserOp(ops[0]); err != nil {
			return err
		}
		var one [1]cmdOp
		one[0] = userOp(ops[0])
		_, err := c.propose(one[:], nil, timeout)
		return err
	}
	list := make([]cmdOp, len(ops))
	for i, op := range ops {
		if err := checkUserOp(op); err != nil {
			return err
		}
		list[i] = userOp(op)
	}
	_, err := c.propose(list, nil, timeout)
	return err
}

// propose replicates validated operations and returns the state machine's
// verdict. The leader adds the meta operation: its clock's stamp and the
// request ID of a Client write, once every voter knows meta operations (see
// upgrade.go); before that, or when the command would not fit, it proposes
// the operations as they are.
func (c *cluster) propose(ops []cmdOp, id *requestID, timeout time.Duration) (TxnResult, error) {
	res, _, err := c.proposeAnswer(ops, id, timeout)
	return res, err
}

// proposeAnswer is propose returning what a queue claim among the
// operations found too (nil: none, or a retried Client write's answer).
func (c *cluster) proposeAnswer(ops []cmdOp, id *requestID, timeout time.Duration) (TxnResult, *claimedItem, error) {
	resp, err := c.proposeRaw(ops, id, timeout)
	if err != nil {
		return TxnResult{}, nil, err
	}
	return answerOf(resp)
}

// proposeRaw is propose returning the state machine's answer as it is.
func (c *cluster) proposeRaw(ops []cmdOp, id *requestID, timeout time.Duration) (FSMResponse, error) {
	run, cmd, err := c.proposal(ops, id, false)
	if err != nil {
		return FSMResponse{}, err
	}
	start := c.metrics.start()
	f, err := c.applyWait(run, cmd, timeout)
	if err != nil {
		return FSMResponse{}, err
	}
	return c.applied(f, start), nil
}

// errKindsUnknown: proposeStart without waiting would have had to read the
// configuration first.
var errKindsUnknown = errors.New("raft: operation kinds to check first")

// proposeStart is proposeRaw up to handing the command to Raft: the future
// and when it was handed. With quick, it fails with errKindsUnknown
// rather than wait for the voters' operation kinds to be read.
func (c *cluster) proposeStart(ops []cmdOp, id *requestID, timeout time.Duration, quick bool) (hraft.ApplyFuture, time.Time, error) {
	run, cmd, err := c.proposal(ops, id, quick)
	if err != nil {
		return nil, time.Time{}, err
	}
	start := c.metrics.start()
	return run.apply(cmd, timeout), start, nil
}

// proposal is the leading run and the command that proposes ops, with the
// leader's stamp and id when every voter knows them (quick: see
// proposeStart).
func (c *cluster) proposal(ops []cmdOp, id *requestID, quick bool) (*raftRun, []byte, error) {
	// Leading checked before kindsAllowed, which may ask voters: a
	// follower refuses at once, as Raft would.
	run, err := c.leaderRun()
	if err != nil {
		return nil, nil, err
	}
	r := run.raft
	var meta bool
	if quick {
		var known bool
		if meta, known, err = c.kindsKnown(r, ops); err == nil && !known {
			err = errKindsUnknown
		}
	} else {
		meta, err = c.kindsAllowed(r, ops)
	}
	if err != nil {
		return nil, nil, err
	}
	var cmd []byte
	if meta {
		var buf [metaSize]byte
		cmd = encodeOpsAfter(&cmdOp{kind: opMeta, value: appendMeta(buf[:0], c.now().UnixNano(), id)}, ops)
	}
	if cmd == nil || len(cmd) > MaxCommandSize {
		cmd = encodeOps(ops)
	}
	if err := checkSize("command", len(cmd), MaxCommandSize); err != nil {
		return nil, nil, err
	}
	return run, cmd, nil
}

// leaderRun is the running Raft when it leads; ErrNotLeader otherwise.
func (c *cluster) leaderRun() (*raftRun, error) {
	run, err := c.current()
	if err != nil {
		return nil, err
	}
	if run.raft.State() != hraft.Leader {
		return nil, ErrNotLeader
	}
	return run, nil
}

// applied is the state machine's answer to a command whose future ended
// without an error.
func (c *cluster) applied(f hraft.ApplyFuture, start time.Time) FSMResponse {
	c.metrics.observeCommit(start)
	var resp FSMResponse
	if r, ok := f.Response().(*FSMResponse); ok { // see kvStore.ApplyBatch
		resp = *r
	}
	return resp
}

// answerOf reads a proposal's answer as proposeAnswer returns it.
func answerOf(resp FSMResponse) (TxnResult, *claimedItem, error) {
	if resp.Error != nil {
		return TxnResult{}, nil, resp.Error
	}
	res, claimed, ok := parseClaimResult(resp.Data)
	if !ok {
		return TxnResult{}, nil, fmt.Errorf("raft: unexpected state machine answer of %d bytes", len(resp.Data))
	}
	return res, claimed, nil
}

// writeAnywhere runs a write request as the command service would for a
// remote caller: on this member when it leads, else forwarded to the leader.
func (c *cluster) writeAnywhere(req *request, timeout time.Duration) (TxnResult, error) {
	if _, err := c.r(); err != nil {
		return TxnResult{}, err
	}
	resp := c.svc.txn(req)
	if err := resp.err(); err != nil {
		return TxnResult{}, err
	}
	return TxnResult{OK: resp.OK, Index: resp.Index}, nil
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
	ops, err := parseCommand(cmd)
	if err != nil {
		return FSMResponse{}, err
	}
	if err := refuseInternal(ops); err != nil {
		return FSMResponse{}, err
	}
	resp, err := c.proposeRaw(ops, nil, timeout)
	if err == nil && resp.Error == nil {
		resp.Data = nil // the result bytes are internal
	}
	return resp, err
}

// applyEncoded replicates a command already validated.
func (c *cluster) applyEncoded(cmd []byte, timeout time.Duration) (FSMResponse, error) {
	run, err := c.current()
	if err != nil {
		return FSMResponse{}, err
	}
	start := c.metrics.start()
	f, err := c.applyWait(run, cmd, timeout)
	if err != nil {
		return FSMResponse{}, err
	}
	return c.applied(f, start), nil
}

// wait waits for a Raft future for at most timeout beyond its enqueueing:
// hashicorp's own timeout only bounds the enqueueing.
func (c *cluster) wait(f hraft.Future, timeout time.Duration) error {
	w := getWaiter(timeout)
	go w.take(f)
	return c.waitFor(w, timeout)
}

// waitFor waits for the outcome w is to receive, its timer or the
// cluster's closing.
func (c *cluster) waitFor(w *waiter, timeout time.Duration) error {
	select {
	case err := <-w.done:
		w.release()
		return translateRaftError(err)
	case <-w.timer.C:
		// The goroutine still owns w (it sends once f ends): w is left
		// to the collector.
		return waitTimedOut(timeout)
	case <-c.ctx.Done():
		// Closing: do not hold Close for the rest of the timeout.
		w.timer.Stop()
		return errWaitShutdown()
	}
}

// waitTimedOut is the error of a wait for a future that outlasted timeout.
func waitTimedOut(timeout time.Duration) error {
	return fmt.Errorf("%w after %v: the outcome is unknown", ErrTimeout, timeout)
}

// errWaitShutdown is the error of a wait the cluster's closing ended.
func errWaitShutdown() error {
	return fmt.Errorf("%w while waiting: the outcome is unknown", ErrShutdown)
}

// waiter is what wait needs besides the future: a timer and the channel
// the future's outcome comes back on. Every write waits once, so they are
// reused (a pool) when the outcome came back before the timer fired.
type waiter struct {
	done  chan error
	timer *time.Timer
}

var waiters sync.Pool

func getWaiter(timeout time.Duration) *waiter {
	if w, ok := waiters.Get().(*waiter); ok {
		w.timer.Reset(timeout)
		return w
	}
	return &waiter{done: make(chan error, 1), timer: time.NewTimer(timeout)}
}

// take waits for f and hands its outcome to whoever waits on w.
func (w *waiter) take(f hraft.Future) { w.done <- f.Error() }

// release returns w, its outcome taken, to the pool. Stop before reuse:
// since Go 1.23 a stopped timer's channel holds no stale tick.
func (w *waiter) release() {
	w.timer.Stop()
	waiters.Put(w)
}
