package raft

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Client talks to the members of a namespace through their command service.
// It runs on any libp2p node, member or not. Every call takes optional target
// peers and tries them in order; with none it finds members itself (connected
// peers that speak Protocol(namespace), then discovery under the namespace).
//
// Writes reach the leader wherever they land: a follower forwards them. Which
// errors leave a write's outcome unknown is said in the README ("Errors").
type Client struct {
	node      Node
	namespace string
	caller    caller
	ctx       context.Context
	cancel    context.CancelFunc
	closed    atomic.Bool
	// seqs names each write (see requests.go and seqWindow) under the
	// Client's identities, which are random, so two Clients, or one
	// process run twice, never share IDs.
	seqs seqWindow
	// sessions holds one session per member called (session_pool.go)
	// and the leader the latest answer named.
	sessions *sessionPool
	// queues remembers this Client's claims and their leases (queue.go).
	queues queueMemo
}

// NewClient returns a client for namespace on node. key is the namespace's
// shared encryption key (at least MinKeySize bytes), or nil when the members
// run without encryption.
func NewClient(node Node, namespace string, key []byte) (*Client, error) {
	if node == nil {
		return nil, errors.New("raft: nil node")
	}
	if err := ValidateNamespace(namespace); err != nil {
		return nil, err
	}
	var cd codec
	if key != nil {
		k, err := newSecretKey(key, namespace)
		if err != nil {
			return nil, err
		}
		cd.key = k
	}
	c := &Client{node: node, namespace: namespace, caller: newCaller(node.Peer(), Protocol(namespace), cd)}
	var identity [clientIDSize]byte
	if _, err := rand.Read(identity[:]); err != nil {
		return nil, fmt.Errorf("raft: client identity: %w", err)
	}
	c.ctx, c.cancel = context.WithCancel(node.Context())
	c.seqs.init(identity)
	c.sessions = newSessionPool(c.ctx, &c.caller, namespace)
	return c, nil
}

// Set stores value under key through the leader.
func (c *Client) Set(key string, value []byte, timeout time.Duration, peers ...peer.ID) error {
	if err := c.checkWrite(key, timeout); err != nil {
		return err
	}
	if err := validateValue(value); err != nil {
		return err
	}
	req := getRequest()
	req.Cmd, req.Key, req.Value, req.Timeout = cmdSet, key, value, int64(timeout)
	resp, free, err := c.writeReq(req, timeout, peers)
	putResponse(resp) // the answer's fields are not kept
	if free {
		putRequest(req)
	}
	return err
}

// Get reads key. With barrier 0 a member answers from its local replica,
// which may be stale. With a barrier (nanoseconds, at most MaxBarrier) the
// read is linearizable: the leader answers after a Raft barrier, so it sees
// every write acknowledged before the call began.
func (c *Client) Get(key string, barrier int64, peers ...peer.ID) ([]byte, bool, error) {
	if err := validateKey(key); err != nil {
		return nil, false, err
	}
	if err := validateBarrier(barrier); err != nil {
		return nil, false, err
	}
	wait := defaultCallTimeout
	if d := time.Duration(barrier); d > wait {
		wait = d
	}
	resp, err := c.call(&request{Cmd: cmdGet, Key: key, Barrier: barrier}, wait, true, peers)
	if err != nil {
		return nil, false, err
	}
	return resp.Value, resp.Found, nil
}

// Delete removes key through the leader.
func (c *Client) Delete(key string, timeout time.Duration, peers ...peer.ID) error {
	if err := c.checkWrite(key, timeout); err != nil {
		return err
	}
	resp, err := c.write(&request{Cmd: cmdDelete, Key: key, Timeout: int64(timeout)}, timeout, peers)
	putResponse(resp) // the answer's fields are not kept
	return err
}

// Keys lists a member's keys that start with prefix, sorted (from its local
// replica, which may be stale).
func (c *Client) Keys(prefix string, peers ...peer.ID) ([]string, error) {
	resp, err := c.call(&request{Cmd: cmdKeys, Prefix: prefix}, defaultCallTimeout, true, peers)
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

// JoinVoter asks the cluster to add id as a voter (the member forwards the
// request to the leader). Asking for a peer that already is a voter succeeds.
func (c *Client) JoinVoter(id peer.ID, timeout time.Duration, peers ...peer.ID) error {
	if err := validateTimeout(timeout); err != nil {
		return err
	}
	if err := validatePeer(id); err != nil {
		return err
	}
	_, err := c.call(&request{Cmd: cmdJoinVoter, Peer: []byte(id), Timeout: int64(timeout)}, timeout, false, peers)
	return err
}

// PeerExchange is a member's answer to ExchangePeers.
type PeerExchange struct {
	// From is the member that answered.
	From peer.ID
	// Leader is the leader it knows; empty when it knows none.
	Leader peer.ID
	// Formed tells whether it belongs to a cluster already.
	Formed bool
	// Voters is the number of voters in its configuration.
	Voters int
	// Peers are the namespace's members it knows, with their addresses.
	Peers []peer.AddrInfo
}

// ExchangePeers sends the peers this caller knows of the namespace (they may
// be nil) to one member, and returns what that member knows: its peers, its
// leader and whether it has a cluster. The member records the peers it is
// given and will try them as members.
func (c *Client) ExchangePeers(known []peer.AddrInfo, peers ...peer.ID) (PeerExchange, error) {
	req := &request{Cmd: cmdExchangePeers}
	for _, ai := range known {
		wp := wirePeer{ID: []byte(ai.ID)}
		for _, a := range ai.Addrs {
			wp.Addrs = append(wp.Addrs, a.Bytes())
		}
		req.Peers = append(req.Peers, wp)
	}
	var from peer.ID
	resp, err := c.callFrom(req, defaultCallTimeout, true, peers, &from)
	if err != nil {
		return PeerExchange{}, err
	}
	out := PeerExchange{From: from}
	if st := resp.Status; st != nil {
		out.Formed, out.Voters = st.Formed, st.Voters
		if id, err := peer.IDFromBytes(st.Leader); err == nil {
			out.Leader = id
		}
	}
	for _, wp := range resp.Peers {
		id, err := peer.IDFromBytes(wp.ID)
		if err != nil {
			continue
		}
		ai := peer.AddrInfo{ID: id}
		for _, b := range wp.Addrs {
			if a, err := ma.NewMultiaddrBytes(b); err == nil {
				ai.Addrs = append(ai.Addrs, a)
			}
		}
		out.Peers = append(out.Peers, ai)
	}
	return out, nil
}

// Close stops the client: calls in flight are aborted and later calls fail
// with ErrShutdown. It leaves the node open.
func (c *Client) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return ErrAlreadyClosed
	}
	c.cancel()
	c.sessions.close()
	return nil
}

func (c *Client) checkWrite(key string, timeout time.Duration) error {
	if err := validateKey(key); err != nil {
		return err
	}
	return validateTimeout(timeout)
}

func (c *Client) call(req *request, timeout time.Duration, idempotent bool, peers []peer.ID) (*response, error) {
	return c.callFrom(req, timeout, idempotent, peers, nil)
}

// callFrom sends req to the first target that takes it. A target that could
// not be reached, or that refused with an error meaning "certainly not
// applied" (no leader, not the leader), is skipped for the next one. A write
// whose request left this node and got no such answer is never sent again:
// its outcome is unknown, and sending it twice could reorder it with other
// writes. Reads (idempotent) move on after any failure.
func (c *Client) callFrom(req *request, timeout time.Duration, idempotent bool, peers []peer.ID, from *peer.ID) (*response, error) {
	if c.closed.Load() {
		return nil, errAfterClose
	}
	var targets targetList
	c.targets(peers, &targets)
	deadline := time.Now().Add(timeout + callMargin)
	var lastErr error
	for i := 0; ; i++ {
		id, ok := targets.at(i)
		if !ok {
			break
		}
		if c.ctx.Err() != nil {
			return nil, ErrShutdown
		}
		if time.Now().After(deadline) {
			break
		}
		if id == c.node.ID() {
			continue // a node cannot open a stream to itself
		}
		c.ensureAddrs(id)
		resp, err := c.sessions.call(c.ctx, id, req, deadline)
		if err != nil {
			if c.ctx.Err() != nil {
				return nil, ErrShutdown
			}
			lastErr = err
			if idempotent || mayTryElsewhere(err) {
				continue
			}
			return nil, err
		}
		rerr := resp.err()
		if rerr == nil {
			if from != nil {
				*from = id
			}
			return resp, nil
		}
		lastErr = rerr
		// A member shutting down may have appended the write already: only
		// reads move on after ErrShutdown.
		if mayTryElsewhere(rerr) || (idempotent && errors.Is(rerr, ErrShutdown)) {
			continue
		}
		return nil, rerr
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%w: %s", ErrNoMembers, c.namespace)
	}
	return nil, lastErr
}

// ensureAddrs looks a target up through discovery when the host has no
// address for it.
func (c *Client) ensureAddrs(id peer.ID) {
	h := c.node.Peer()
	if h.Network().Connectedness(id) == network.Connected || len(h.Peerstore().Addrs(id)) > 0 {
		return
	}
	findAddrs(c.ctx, c.node, c.namespace, id)
}

// findMembers lists the namespace's members: connected peers that speak the
// protocol first, then what discovery returns.
func (c *Client) findMembers() []peer.ID {
	h := c.node.Peer()
	proto := Protocol(c.namespace)
	seen := map[peer.ID]bool{c.node.ID(): true}
	var out []peer.ID
	for _, p := range h.Network().Peers() {
		if ps, err := h.Peerstore().SupportsProtocols(p, proto); err == nil && len(ps) > 0 && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	d := c.node.Discovery()
	if d == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	ch, err := d.FindPeers(ctx, c.namespace)
	if err != nil {
		return out
	}
	for ai := range ch {
		if seen[ai.ID] || ai.ID == "" {
			continue
		}
		seen[ai.ID] = true
		if len(ai.Addrs) > 0 {
			h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
		}
		out = append(out, ai.ID)
	}
	return out
}

// targetList is the order in which a call tries members: the ones it was
// given, or the leader it knows, then (found only if those fail) the
// namespace's members. It lives on its caller's stack (a write looks it
// up for every attempt), so it is filled in place and never copied.
type targetList struct {
	// first, when set, goes before ids: the leader, when no targets were
	// given.
	first peer.ID
	ids   []peer.ID
	// more: the namespace's members are still to be looked up (through c)
	// after ids.
	more bool
	c    *Client
}

// targets orders a call's targets: the given peers, the known leader first
// among them; with none given, the known leader, then the members
// findMembers lists. Members whose session could not be opened a moment ago
// go last (see orderTargets).
func (c *Client) targets(peers []peer.ID, t *targetList) {
	leader := c.sessions.leaderHint()
	unreachable := c.sessions.unreachable
	t.c = c
	switch {
	case len(peers) == 1:
		// Nothing to order (and peers is not changed: no more to add).
		t.ids = peers
	case len(peers) > 0:
		t.ids = orderTargets(peers, leader, unreachable)
	case leader == "" || unreachable(leader):
		t.ids = orderTargets(c.findMembers(), "", unreachable)
	default:
		t.first, t.more = leader, true
	}
}

// at is the i-th target; false past the last.
func (t *targetList) at(i int) (peer.ID, bool) {
	if t.first != "" {
		if i == 0 {
			return t.first, true
		}
		i--
	}
	if i >= len(t.ids) && t.more {
		t.more = false
		ids := slices.Clone(t.ids)
		for _, id := range orderTargets(t.c.findMembers(), "", t.c.sessions.unreachable) {
			if id != t.first && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		t.ids = ids
	}
	if i >= len(t.ids) {
		return "", false
	}
	return t.ids[i], true
}

// orderTargets returns ids (without repeats) with leader first when it is
// among them and reachable, and the unreachable ones last, the others in
// their given order.
func orderTargets(ids []peer.ID, leader peer.ID, unreachable func(peer.ID) bool) []peer.ID {
	out := make([]peer.ID, 0, len(ids))
	var late []peer.ID
	if leader != "" && slices.Contains(ids, leader) && !unreachable(leader) {
		out = append(out, leader)
	}
	for _, id := range ids {
		if slices.Contains(out, id) || slices.Contains(late, id) {
			continue
		}
		if unreachable(id) {
			late = append(late, id)
			continue
		}
		out = append(out, id)
	}
	return append(out, late...)
}
