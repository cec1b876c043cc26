package raft

// Client.Watch: a watch stream to one member (watch_wire.go) that moves to
// another member when its member goes away, resuming from the last change
// it delivered, so the caller sees no gap and no repeat.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// watchResume is where a Client watch stands, so that it can resume on
// another member: every matching change up to last has been delivered, and
// of log index cur (above last) the first curN changes. Several changes can
// share one index (a batch, a transaction) and a frame may end inside them,
// so resuming "after last" replays index cur, whose first curN changes are
// dropped (every replica applies an entry the same way, so they are the same
// changes in the same order).
type watchResume struct {
	last uint64
	cur  uint64
	curN int
	skip int // after a restart: changes of cur still to drop
}

// restart prepares a resume on a new stream and returns the index to watch
// after.
func (r *watchResume) restart() uint64 {
	r.skip = r.curN
	return r.last
}

// accept tells whether e is new (deliver it) or was delivered already, and
// records it.
func (r *watchResume) accept(e Event) bool {
	switch {
	case e.Index <= r.last || e.Index < r.cur:
		return false
	case e.Index == r.cur:
		if r.skip > 0 {
			r.skip--
			return false
		}
		r.curN++
		return true
	}
	if r.cur != 0 {
		r.last = r.cur // a later index: cur is complete
	}
	r.cur, r.curN, r.skip = e.Index, 1, 0
	return true
}

// complete records that every matching change up to through was sent.
func (r *watchResume) complete(through uint64) {
	if r.cur != 0 && through >= r.cur {
		r.cur, r.curN, r.skip = 0, 0, 0
	}
	r.last = max(r.last, through)
}

// Watch delivers every change under prefix with an index above after, in
// index order, without gaps or repeats, as Cluster.Watch does, from a member
// of peers (tried in order; with none, members the Client finds). When its
// member goes away (closes, restarts, is cut off: no frame for
// watchIdleTimeout) the watch moves to another member and resumes from the
// last change it delivered; a member that has not applied that far yet just
// sends nothing until it has. The channel closes when ctx ends or the
// Client closes, and when the member says the watcher fell behind its
// history or no member it can reach still keeps the history from the last
// delivered index (ErrCompacted): a new Watch from the last index delivered
// then returns ErrCompacted, and the caller resyncs with GetEntry/Keys and
// watches from the index read.
//
// Watch itself returns once a member has taken the watch, or with the error
// of the last member tried (ErrCompacted if one said so and none took it).
func (c *Client) Watch(ctx context.Context, prefix string, after uint64, peers ...peer.ID) (<-chan Event, error) {
	if c.closed.Load() {
		return nil, errAfterClose
	}
	if ctx == nil {
		return nil, errors.New("raft: Watch: nil context")
	}
	if err := checkSize("watch prefix", len(prefix), MaxKeySize); err != nil {
		return nil, err
	}
	w := &clientWatch{c: c, prefix: prefix, peers: peers, pos: watchResume{last: after}}
	ws, err := w.connect(ctx, "")
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, watchChanBuffer)
	go w.run(ctx, ws, ch)
	return ch, nil
}

// clientWatch is one Client.Watch.
type clientWatch struct {
	c      *Client
	prefix string
	peers  []peer.ID
	pos    watchResume
}

// run delivers from ws, and from the members it moves to, until the watch
// ends.
func (w *clientWatch) run(ctx context.Context, ws *watchStream, ch chan<- Event) {
	defer close(ch)
	backoff := 20 * time.Millisecond
	for {
		err := w.pump(ctx, ws, ch)
		ws.close()
		if ctx.Err() != nil || w.c.ctx.Err() != nil || errors.Is(err, ErrCompacted) {
			return
		}
		from := ws.peer
		for {
			ws, err = w.connect(ctx, from)
			if err == nil {
				backoff = 20 * time.Millisecond
				break
			}
			if errors.Is(err, ErrCompacted) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-w.c.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// pump reads frames from ws and delivers their new events until the stream
// ends; it returns why.
func (w *clientWatch) pump(ctx context.Context, ws *watchStream, ch chan<- Event) error {
	for {
		resp, events, err := ws.read(w.pos.last)
		if err != nil {
			return err
		}
		if err := resp.err(); err != nil {
			return err
		}
		for _, e := range events {
			if !w.pos.accept(e) {
				continue
			}
			select {
			case ch <- e:
			case <-ctx.Done():
				return ctx.Err()
			case <-w.c.ctx.Done():
				return ErrShutdown
			}
		}
		w.pos.complete(resp.Through)
	}
}

// connect opens a watch from the resume point on the first member that
// takes it; the member avoid (the one just lost) is tried last.
func (w *clientWatch) connect(ctx context.Context, avoid peer.ID) (*watchStream, error) {
	targets := w.peers
	if len(targets) == 0 {
		targets = w.c.findMembers()
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoMembers, w.c.namespace)
	}
	if i := slices.Index(targets, avoid); i >= 0 {
		targets = append(append(slices.Clone(targets[:i]), targets[i+1:]...), avoid)
	}
	after := w.pos.restart()
	var lastErr, compacted error
	for _, id := range targets {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if w.c.ctx.Err() != nil {
			return nil, ErrShutdown
		}
		if id == w.c.node.ID() {
			continue
		}
		w.c.ensureAddrs(id)
		ws, err := w.c.openWatch(ctx, id, w.prefix, after)
		if err == nil {
			return ws, nil
		}
		if errors.Is(err, ErrCompacted) {
			compacted = err
		}
		lastErr = err
	}
	if compacted != nil {
		return nil, compacted
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%w: %s", ErrNoMembers, w.c.namespace)
	}
	return nil, lastErr
}

// watchStream is an open watch stream to one member.
type watchStream struct {
	peer peer.ID
	st   network.Stream
	cd   codec
	id   []byte
	n    uint64 // number of the next frame
	stop func()
}

// openWatch sends a watch request to id and reads its verdict.
func (c *Client) openWatch(ctx context.Context, id peer.ID, prefix string, after uint64) (*watchStream, error) {
	wid := make([]byte, watchIDSize)
	if _, err := rand.Read(wid); err != nil {
		return nil, err
	}
	body, err := c.caller.codec.encode(&request{Cmd: cmdWatch, Prefix: prefix, After: after, WatchID: wid})
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, defaultCallTimeout)
	st, err := c.node.Peer().NewStream(network.WithAllowLimitedConn(octx, "raft"), id, c.caller.proto)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: open stream to %s: %w", errNotSent, id, err)
	}
	ws := &watchStream{peer: id, st: st, cd: c.caller.codec, id: wid}
	// Abort the stream when the watch or the Client ends.
	stopCtx := context.AfterFunc(ctx, func() { _ = st.Reset() })
	stopClient := context.AfterFunc(c.ctx, func() { _ = st.Reset() })
	ws.stop = func() { stopCtx(); stopClient() }
	_ = st.SetWriteDeadline(time.Now().Add(defaultCallTimeout))
	if err := writeFrame(st, body); err != nil {
		ws.close()
		return nil, fmt.Errorf("%w: write to %s: %w", errNotSent, id, err)
	}
	// No CloseWrite: the member reads the stream's end (our Reset) as the
	// watcher going away.
	resp, _, err := ws.read(after)
	if err == nil {
		err = resp.err()
	}
	if err != nil {
		ws.close()
		return nil, err
	}
	return ws, nil
}

// read reads and checks the next frame.
func (ws *watchStream) read(after uint64) (*response, []Event, error) {
	_ = ws.st.SetReadDeadline(time.Now().Add(watchIdleTimeout))
	payload, plain, _, err := ws.cd.readMessageAAD(ws.st, true, nil, watchAAD(ws.id, ws.n))
	if err != nil {
		return nil, nil, fmt.Errorf("raft: watch stream from %s: %w", ws.peer, err)
	}
	ws.n++
	resp, events, err := decodeWatchFrame(payload, after)
	if err != nil {
		return nil, nil, err
	}
	if plain && ws.cd.key != nil && resp.Code == codeOK {
		// Only a refusal may come back in plaintext under a key.
		return nil, nil, fmt.Errorf("%w: %s answered in plaintext", ErrEncryptionRequired, ws.peer)
	}
	return resp, events, nil
}

func (ws *watchStream) close() {
	ws.stop()
	_ = ws.st.Reset()
}
