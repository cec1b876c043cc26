package raft

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	p, err := c.decodeLeaderID(id)
	if err != nil {
		return "", fmt.Errorf("raft: leader id %q: %w", id, err)
	}
	return p, nil
}

// decodedLeader is the last leader ID a cluster decoded (cluster.lastLeader).
type decodedLeader struct {
	raw hraft.ServerID
	id  peer.ID
}

// decodeLeaderID is peer.Decode of a Raft server ID, remembering the last
// one: a follower looks up its leader for every request it forwards and
// every answer's leader hint, and decoding the text form costs a base58
// decode and several allocations each time, for the same leader nearly
// always.
func (c *cluster) decodeLeaderID(raw hraft.ServerID) (peer.ID, error) {
	if d := c.lastLeader.Load(); d != nil && d.raw == raw {
		return d.id, nil
	}
	id, err := peer.Decode(string(raw))
	if err != nil {
		return "", err
	}
	c.lastLeader.Store(&decodedLeader{raw: raw, id: id})
	return id, nil
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

// LeaderEvent is the leadership as this member sees it, as WatchLeader
// delivers it.
type LeaderEvent struct {
	// Leader is the current leader's peer ID, empty when none is known.
	// It may be this member's own ID while Self is still false: the
	// leadership's epoch is not established yet.
	Leader peer.ID
	// Self is true once this member leads and has applied its leadership's
	// epoch marker: Epoch is then this leadership's epoch, the one to fence
	// leader-only writes with (IfEpoch).
	Self bool
	// Epoch is the epoch of the current leadership as this member knows it:
	// the log index of the last epoch marker it applied, 0 when none. It
	// strictly increases from one leadership to the next (it is a log
	// index), and never goes back while the member runs, except to 0 when
	// the member drops its state to join another cluster.
	Epoch uint64
}

// leaderPollInterval is how often the leadership monitor reads Raft's
// state even without an observation: hashicorp's observer drops
// observations when its channel is full, and this poll bounds how late a
// dropped one can be noticed.
const leaderPollInterval = 20 * time.Millisecond

// epochRetryInterval is how long a leader waits before it retries an epoch
// marker that failed (a timeout, or voters that do not know markers yet).
const epochRetryInterval = 250 * time.Millisecond

// leaderMonitor follows this member's leadership for WatchLeader and
// RunAsLeader. One goroutine (run) owns every change; readers take the
// state under mu, and wait for the next change on changed, which is closed
// and replaced at every change (a broadcast that never blocks the monitor,
// let alone Raft).
type leaderMonitor struct {
	c *cluster
	// wake is a one-slot doorbell: Raft's observer and the state machine's
	// epoch hook ring it, the monitor reads the state anew.
	wake chan struct{}

	mu sync.Mutex
	// state is the latest event.
	state LeaderEvent
	// lead is this member's current leadership, once established (its
	// epoch marker applied); nil otherwise.
	lead *leadership
	// fenceErr is why the current leadership could not be established (a
	// voter does not know epoch markers); nil otherwise.
	fenceErr error
	// done is set once the monitor stopped: the cluster closed (or its
	// state machine failed, with why in doneErr).
	done    bool
	doneErr error
	changed chan struct{}
	// watchers are WatchLeader's channels, with the stop of the func that
	// closes each when its ctx ends.
	watchers map[chan LeaderEvent]func() bool
}

// leadership is one established leadership of this member.
type leadership struct {
	epoch uint64
	term  uint64
	// lost is closed the moment the monitor sees this leadership end.
	lost chan struct{}
}

func newLeaderMonitor(c *cluster) *leaderMonitor {
	return &leaderMonitor{
		c:        c,
		wake:     make(chan struct{}, 1),
		changed:  make(chan struct{}),
		watchers: map[chan LeaderEvent]func() bool{},
	}
}

// ring wakes the monitor; it never blocks.
func (m *leaderMonitor) ring() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// epochResult is the outcome of one epoch marker proposal.
type epochResult struct {
	term  uint64
	epoch uint64
	err   error
}

// run follows leadership until the cluster closes. It proposes the epoch
// marker of each new leadership of this member on a goroutine of its own,
// so that a slow proposal never delays noticing a change.
func (m *leaderMonitor) run() {
	c := m.c
	obsCh := make(chan hraft.Observation, 1)
	obs := observeRaft(obsCh, func(o *hraft.Observation) bool {
		switch o.Data.(type) {
		case hraft.RaftState, hraft.LeaderObservation:
			return true
		}
		return false
	})
	defer obs.stop()
	tick := time.NewTicker(leaderPollInterval)
	defer tick.Stop()

	results := make(chan epochResult, 1)
	var proposing bool                            // a marker proposal is in flight
	var retryAt time.Time                         // no new proposal before
	var wg sync.WaitGroup                         // the proposal goroutine
	defer wg.Wait()                               // after Close stopped Raft, it returns soon
	timeout := 4 * c.cfg.timeouts.ElectionTimeout // a marker's commit wait

	for {
		r, err := c.r()
		if err != nil {
			m.finish(err)
			return
		}
		obs.follow(r) // a reset may have replaced Raft (merge.go)
		term := r.CurrentTerm()
		leading := r.State() == hraft.Leader
		m.endLostLeadership(leading, term)
		if leading && !proposing && !m.established(term) && time.Now().After(retryAt) {
			proposing = true
			wg.Go(func() {
				epoch, err := c.commitEpochMarker(timeout)
				results <- epochResult{term: term, epoch: epoch, err: err}
				m.ring()
			})
		}
		ev := m.observe(r)
		c.metrics.observeLeader(ev.Leader, term)
		m.publish(ev)

		select {
		case <-c.ctx.Done():
			m.finish(ErrShutdown)
			return
		case res := <-results:
			proposing = false
			if !m.establish(r, res) {
				retryAt = time.Now().Add(epochRetryInterval)
			}
		case <-m.wake:
		case <-obsCh:
		case <-tick.C:
		}
	}
}

// established reports whether this member's leadership of term is
// established.
func (m *leaderMonitor) established(term uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lead != nil && m.lead.term == term
}

// endLostLeadership ends the established leadership once Raft says this
// member no longer leads in its term, and forgets why a leadership could
// not be fenced once it is over.
func (m *leaderMonitor) endLostLeadership(leading bool, term uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lead != nil && (!leading || m.lead.term != term) {
		close(m.lead.lost)
		m.lead = nil
		m.signalLocked()
	}
	if !leading && m.fenceErr != nil {
		m.fenceErr = nil
		m.signalLocked()
	}
}

// establish takes a marker proposal's result: the leadership is
// established when the marker committed and this member still leads in the
// term it proposed it in. It reports whether it need not retry soon.
func (m *leaderMonitor) establish(r *hraft.Raft, res epochResult) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if res.err != nil {
		if errors.Is(res.err, ErrInvalidCommand) {
			// A voter does not know markers: running leader-only work
			// unfenced would be unsafe, so RunAsLeader says so.
			m.fenceErr = fmt.Errorf("raft: this member leads but cannot establish a leadership epoch: %w", res.err)
			m.signalLocked()
		} else {
			m.c.logger.Debug("epoch marker failed", "error", res.err)
		}
		return false
	}
	if r.State() != hraft.Leader || r.CurrentTerm() != res.term || m.lead != nil {
		// Leadership moved while the marker was in flight: the next
		// round proposes anew if this member leads again.
		return true
	}
	m.lead = &leadership{epoch: res.epoch, term: res.term, lost: make(chan struct{})}
	m.fenceErr = nil
	m.signalLocked()
	return true
}

// observe computes the current event.
func (m *leaderMonitor) observe(r *hraft.Raft) LeaderEvent {
	ev := LeaderEvent{Epoch: m.c.fsm.currentEpoch()}
	if _, id := r.LeaderWithID(); id != "" {
		if p, err := peer.Decode(string(id)); err == nil {
			ev.Leader = p
		}
	}
	m.mu.Lock()
	lead := m.lead
	m.mu.Unlock()
	ev.Self = lead != nil && ev.Leader == m.c.self && ev.Epoch == lead.epoch
	return ev
}

// publish makes ev the state, when it changed, and hands it to every
// watcher, replacing an event the watcher has not read yet.
func (m *leaderMonitor) publish(ev LeaderEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev == m.state {
		return
	}
	m.state = ev
	m.signalLocked()
	for ch := range m.watchers {
		offerLatest(ch, ev)
	}
}

// offerLatest puts ev in the one-slot ch, replacing what is there. Only
// the monitor sends on ch (under mu), so after draining the slot the send
// cannot block; the select keeps that true by construction.
func offerLatest(ch chan LeaderEvent, ev LeaderEvent) {
	select {
	case <-ch:
	default:
	}
	select {
	case ch <- ev:
	default:
	}
}

// signalLocked wakes every waiter of changed.
func (m *leaderMonitor) signalLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// finish stops the monitor: the leadership ends, and every watcher's
// channel closes.
func (m *leaderMonitor) finish(why error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return
	}
	if m.lead != nil {
		close(m.lead.lost)
		m.lead = nil
	}
	m.done, m.doneErr = true, why
	for ch, stop := range m.watchers {
		stop()
		close(ch)
	}
	clear(m.watchers)
	m.signalLocked()
}

// WatchLeader returns a channel of this member's view of leadership. It
// first carries the current state, then every change; a reader that is
// slow sees the newest state (the channel holds one event, replaced by
// each newer one), and never slows Raft down. The channel is closed when
// ctx ends or the cluster closes.
func (c *cluster) WatchLeader(ctx context.Context) <-chan LeaderEvent {
	m := c.leaderMon
	ch := make(chan LeaderEvent, 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done || ctx.Err() != nil {
		close(ch)
		return ch
	}
	ch <- m.state
	m.watchers[ch] = context.AfterFunc(ctx, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.watchers[ch]; ok {
			delete(m.watchers, ch)
			close(ch)
		}
	})
	return ch
}

// raftObserver keeps one hashicorp observer registered on the member's
// current Raft instance, which a reset replaces (merge.go). Only the loop
// that made it uses it.
type raftObserver struct {
	obs *hraft.Observer
	on  *hraft.Raft // the instance it is registered on; nil: none
}

// observeRaft makes an observer that delivers the observations want keeps
// to ch without blocking Raft (a full ch drops them).
func observeRaft(ch chan hraft.Observation, want hraft.FilterFn) *raftObserver {
	return &raftObserver{obs: hraft.NewObserver(ch, false, want)}
}

// follow registers the observer on r unless it is on r already, and
// tells whether it moved.
func (o *raftObserver) follow(r *hraft.Raft) bool {
	if r == o.on {
		return false
	}
	if o.on != nil {
		o.on.DeregisterObserver(o.obs)
	}
	r.RegisterObserver(o.obs)
	o.on = r
	return true
}

// stop deregisters the observer.
func (o *raftObserver) stop() {
	if o.on != nil {
		o.on.DeregisterObserver(o.obs)
		o.on = nil
	}
}
