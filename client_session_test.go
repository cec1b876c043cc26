package raft

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tauraft/raft/rafttest"
)

// fakeMember serves the session protocol on node 0 of a 2-node mesh by
// hand: it answers the hello, then hands each session's requests to serve,
// so a test decides what the caller on node 1 sees and when.
type fakeMember struct {
	t    *testing.T
	mesh *rafttest.Mesh
	pool *sessionPool
}

// memberConn is one session as the fake member sees it.
type memberConn struct {
	t  *testing.T
	st network.Stream
	br *bufio.Reader
}

// next reads the next request frame and returns its id.
func (c *memberConn) next() (uint64, error) {
	body, _, err := readSessionFrame(c.br, c.br, nil)
	if err != nil {
		return 0, err
	}
	kind, id, _, err := parsePayload(body)
	if err == nil && kind != frameRequest {
		c.t.Errorf("frame kind %d, want a request", kind)
	}
	return id, err
}

// frame writes one frame of kind for id, with body after a leader hint for
// an answer.
func (c *memberConn) frame(kind byte, id uint64, resp *response) {
	p := binary.AppendUvarint([]byte{kind}, id)
	if kind == frameAnswer {
		var err error
		if p, err = appendResponse(append(p, hintNone), resp); err != nil {
			c.t.Error(err)
			return
		}
	}
	if _, err := c.st.Write(append(binary.AppendUvarint(nil, uint64(len(p))), p...)); err != nil {
		c.t.Logf("fake member write: %v", err)
	}
}

// newFakeMember starts the fake member; serve runs once per session.
func newFakeMember(t *testing.T, serve func(c *memberConn)) *fakeMember {
	t.Helper()
	const ns = "/raft/fake-member"
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	mesh.Node(0).Peer().SetStreamHandler(sessionProtocol(ns), func(st network.Stream) {
		defer func() { _ = st.Reset() }()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		if _, _, _, err := (codec{}).readMessage(st, false, nil); err != nil {
			t.Errorf("hello: %v", err)
			return
		}
		body, err := (codec{}).encode(&sessionHello{Version: sessionVersion})
		if err != nil || writeFrame(st, body) != nil {
			t.Errorf("hello answer: %v", err)
			return
		}
		serve(&memberConn{t: t, st: st, br: bufio.NewReader(st)})
	})
	cl := newCaller(mesh.Node(1).Peer(), Protocol(ns), codec{})
	pool := newSessionPool(context.Background(), &cl, ns)
	t.Cleanup(pool.close)
	return &fakeMember{t: t, mesh: mesh, pool: pool}
}

// call makes one call to the fake member with timeout, and how long it took.
func (f *fakeMember) call(timeout time.Duration) (*response, time.Duration, error) {
	start := time.Now()
	resp, err := f.pool.call(context.Background(), f.mesh.ID(0), &request{Cmd: cmdKeys}, start.Add(timeout))
	return resp, time.Since(start), err
}

// A lone caller reads its own answer; the session then idles with the read
// loop back on it, which learns at once of a goaway and a broken session.
func TestClientSessionLoneCaller(t *testing.T) {
	for _, end := range []string{"goaway", "reset"} {
		t.Run(end, func(t *testing.T) {
			quit := make(chan struct{})
			f := newFakeMember(t, func(c *memberConn) {
				for range 3 {
					id, err := c.next()
					if err != nil {
						t.Errorf("request: %v", err)
						return
					}
					c.frame(frameAnswer, id, &response{Index: id})
				}
				<-quit
				if end == "goaway" {
					c.frame(frameGoaway, 3, nil)
					_ = c.st.Close()
				}
			})
			for i := range 3 {
				resp, _, err := f.call(10 * time.Second)
				if err != nil || resp.Index != uint64(i+1) {
					t.Fatalf("call %d: %+v %v", i, resp, err)
				}
			}
			if f.pool.count() != 1 || f.pool.opened.Load() != 1 {
				t.Fatalf("%d sessions, %d opened, want one", f.pool.count(), f.pool.opened.Load())
			}
			// Past readerLinger, the loop reads the idle session.
			time.Sleep(2 * readerLinger)
			close(quit)
			rafttest.WaitFor(t, 5*time.Second, "the idle session to end", func() bool { return f.pool.count() == 0 })
		})
	}
}

// A member that goes away while a lone caller reads its own answer fails
// the call at once with the outcome unknown (the request had left), and
// the next call opens a new session.
func TestClientSessionLoneCallerBroken(t *testing.T) {
	var sessions atomic.Int32
	f := newFakeMember(t, func(c *memberConn) {
		id, err := c.next()
		if err != nil {
			return
		}
		if sessions.Add(1) == 1 {
			c.frame(frameAnswer, id, &response{})
			if _, err := c.next(); err != nil {
				t.Errorf("second request: %v", err)
			}
			return // reset
		}
		c.frame(frameAnswer, id, &response{Index: 7})
		_, _ = c.next() // until the caller closes
	})
	if _, _, err := f.call(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, took, err := f.call(10 * time.Second)
	if err == nil || errors.Is(err, errNotSent) || took > 5*time.Second {
		t.Fatalf("call on a session reset mid-call: %v after %v, want the outcome unknown at once", err, took)
	}
	resp, _, err := f.call(10 * time.Second)
	if err != nil || resp.Index != 7 || f.pool.opened.Load() != 2 {
		t.Fatalf("after the reset: %+v %v, %d sessions opened", resp, err, f.pool.opened.Load())
	}
}

// A lone caller whose answer does not come in time gets ErrTimeout at its
// deadline; the session stays, and a late answer is dropped.
func TestClientSessionLoneCallerTimeout(t *testing.T) {
	f := newFakeMember(t, func(c *memberConn) {
		if id, err := c.next(); err == nil { // a first call, answered
			c.frame(frameAnswer, id, &response{Index: id})
		}
		id, err := c.next()
		if err != nil {
			t.Errorf("request: %v", err)
			return
		}
		id2, err := c.next() // the first one's answer comes late
		if err != nil {
			t.Errorf("request: %v", err)
			return
		}
		c.frame(frameAnswer, id, &response{Index: id})
		c.frame(frameAnswer, id2, &response{Index: id2})
		_, _ = c.next() // until the caller closes
	})
	if _, _, err := f.call(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, took, err := f.call(300 * time.Millisecond)
	if !errors.Is(err, ErrTimeout) || took < 300*time.Millisecond || took > 5*time.Second {
		t.Fatalf("unanswered call: %v after %v, want ErrTimeout after 300ms", err, took)
	}
	resp, _, err := f.call(10 * time.Second)
	if err != nil || resp.Index != 3 || f.pool.opened.Load() != 1 {
		t.Fatalf("next call: %+v %v, %d sessions opened, want the answer to 3 on the same session", resp, err, f.pool.opened.Load())
	}
}

// Closing the pool (Client.Close, a member's close) ends a lone caller's
// wait at once.
func TestClientSessionLoneCallerClosed(t *testing.T) {
	f := newFakeMember(t, func(c *memberConn) {
		if id, err := c.next(); err == nil { // a first call, answered
			c.frame(frameAnswer, id, &response{})
		}
		_, _ = c.next()
		_, _ = c.next() // until the session ends
	})
	if _, _, err := f.call(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := f.call(20 * time.Second)
		done <- err
	}()
	rafttest.WaitFor(t, 5*time.Second, "the call to be in flight", func() bool {
		f.pool.mu.Lock()
		s := f.pool.sessions[f.mesh.ID(0)]
		f.pool.mu.Unlock()
		if s == nil {
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.pending) == 1 && s.reader == readerCaller
	})
	f.pool.close()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, errNotSent) {
			t.Fatalf("call cut by close: %v, want the outcome unknown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call still waits after the pool closed")
	}
}

// An answer cut off in the middle of its frame at the caller's deadline
// fails the call with ErrTimeout and ends the session (its frames can no
// longer be told apart); the next call opens another.
func TestClientSessionLoneCallerTimeoutMidFrame(t *testing.T) {
	var sessions atomic.Int32
	f := newFakeMember(t, func(c *memberConn) {
		id, err := c.next()
		if err != nil {
			t.Errorf("request: %v", err)
			return
		}
		c.frame(frameAnswer, id, &response{Index: 9})
		if sessions.Add(1) > 1 {
			_, _ = c.next() // until the caller closes
			return
		}
		// The second request (its caller alone, reading for itself)
		// gets a frame's length and half of it, and no more.
		if id, err = c.next(); err != nil {
			t.Errorf("request: %v", err)
			return
		}
		_, _ = c.st.Write([]byte{20, frameAnswer, byte(id), hintNone})
		_, _ = c.next() // until the caller ends the session
	})
	if _, _, err := f.call(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, took, err := f.call(300 * time.Millisecond)
	if !errors.Is(err, ErrTimeout) || took < 300*time.Millisecond || took > 5*time.Second {
		t.Fatalf("call answered by half a frame: %v after %v, want ErrTimeout after 300ms", err, took)
	}
	resp, _, err := f.call(10 * time.Second)
	if err != nil || resp.Index != 9 || f.pool.opened.Load() != 2 {
		t.Fatalf("next call: %+v %v, %d sessions opened, want the answer on a second session", resp, err, f.pool.opened.Load())
	}
}

// Calls that find nobody reading and are not alone (the read loop lingering
// after the last lone call) get the loop to read: none waits for the
// linger to end.
func TestClientSessionLoopWokenForConcurrentCalls(t *testing.T) {
	f := newFakeMember(t, func(c *memberConn) {
		if id, err := c.next(); err == nil { // a first call, answered
			c.frame(frameAnswer, id, &response{Index: id})
		}
		for {
			// The rest in pairs: both requests in, then both answers.
			a, err := c.next()
			if err != nil {
				return
			}
			b, err := c.next()
			if err != nil {
				return
			}
			c.frame(frameAnswer, a, &response{Index: a})
			c.frame(frameAnswer, b, &response{Index: b})
		}
	})
	f.pool.linger = time.Hour
	if _, _, err := f.call(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				_, _, err := f.call(5 * time.Second)
				errs <- err
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("concurrent call: %v", err)
			}
		}
	}
}
