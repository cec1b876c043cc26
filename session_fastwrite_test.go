package raft

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/tauraft/raft/rafttest"
)

// Writes that reach the leader in one burst on a session are handed to
// Raft by the session's reader, in the order read, grouped into entries,
// and answered as a worker would answer them: applied in that order, a bad
// request refused as before, other requests served among them.
func TestSessionBurstWrites(t *testing.T) {
	const ns = "/raft/session-burst"
	mesh, c := oneMember(t, ns)
	// One write first, so the leader knows the voters' operation kinds
	// (a burst write that would have to ask goes to a worker).
	if err := c.Set("burst/first", []byte("v"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	rs, err := openRawSession(t, mesh.Node(1).Peer(), mesh.ID(0), ns, nil, sessionVersion)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	bad := uint64(n/2 + 1) // the request id of a Set without a key
	dup := uint64(10)      // a Set of the key request 9 sets
	var burst bytes.Buffer
	client := bytes.Repeat([]byte{7}, clientIDSize)
	for i := 1; i <= n+2; i++ {
		req := &request{Cmd: cmdSet, Key: fmt.Sprintf("burst/%02d", i), Value: []byte("v"), Timeout: int64(5 * time.Second),
			Client: client, Seq: uint64(i)}
		switch {
		case uint64(i) == bad:
			req.Key = ""
		case uint64(i) == dup:
			req.Key = fmt.Sprintf("burst/%02d", i-1)
		case i == n+1:
			req = &request{Cmd: cmdGet, Key: "burst/first"}
		case i == n+2:
			req = &request{Cmd: cmdDelete, Key: "burst/01", Timeout: int64(5 * time.Second)}
		}
		body, err := cborEnc.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFrame(&burst, append(framePayload(frameRequest, uint64(i), len(body)), body...)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rs.st.Write(burst.Bytes()); err != nil { // one write: one burst
		t.Fatal(err)
	}
	index := map[uint64]uint64{}
	for range n + 2 {
		kind, id, resp, err := rs.read(10 * time.Second)
		if err != nil || kind != frameAnswer {
			t.Fatalf("frame %d %d: %v", kind, id, err)
		}
		switch {
		case id == bad:
			if !errors.Is(resp.err(), ErrInvalidKey) {
				t.Errorf("the Set without a key: %v, want ErrInvalidKey", resp.err())
			}
		case id == n+1:
			if resp.err() != nil || !resp.Found || string(resp.Value) != "v" {
				t.Errorf("the Get among the writes: %+v", resp)
			}
		case resp.err() != nil || !resp.OK || resp.Index == 0:
			t.Errorf("request %d: %+v", id, resp)
		default:
			index[id] = resp.Index
		}
	}
	// Applied in the order read; writes read together share an entry
	// (session_group.go), except two of one key.
	shared := 0
	for id := uint64(2); id <= n; id++ {
		switch {
		case id == bad || id-1 == bad:
		case index[id] < index[id-1]:
			t.Errorf("request %d applied at %d, before request %d (%d)", id, index[id], id-1, index[id-1])
		case id == dup && index[id] == index[id-1]:
			t.Errorf("two Sets of one key applied in one entry, at %d", index[id])
		case index[id] == index[id-1]:
			shared++
		}
	}
	if shared == 0 {
		t.Error("no two writes of the burst shared an entry")
	}
	if v, ok := c.Get("burst/02"); !ok || string(v) != "v" {
		t.Errorf("burst/02 = %q %v", v, ok)
	}
	if _, ok := c.Get("burst/01"); ok {
		t.Error("burst/01 still there after the Delete")
	}
	if c.svc.startedWrites.Load() == 0 {
		t.Error("no write of the burst was started by the session's reader")
	}
	_ = rs.st.Close()
	rafttest.WaitFor(t, 5*time.Second, "the session's places to be given back", func() bool {
		return c.svc.inFlightFrom(mesh.Node(1).Peer().ID()) == 0
	})
}

// fakeFuture is a Raft future that ends when told.
type fakeFuture struct {
	end  chan error
	once sync.Once
	err  error
}

func (f *fakeFuture) Error() error {
	f.once.Do(func() { f.err = <-f.end })
	return f.err
}
func (f *fakeFuture) Index() uint64         { return 0 }
func (f *fakeFuture) Response() interface{} { return nil }

// fakeProposer is a leader whose closing the test controls.
type fakeProposer struct{ close chan struct{} }

func (p fakeProposer) proposeStart([]cmdOp, *requestID, time.Duration, bool) (hraft.ApplyFuture, time.Time, error) {
	return nil, time.Time{}, errors.New("not used")
}
func (p fakeProposer) proposeGroupStart([]*fastWrite) (hraft.ApplyFuture, time.Time, error) {
	return nil, time.Time{}, errors.New("not used")
}
func (p fakeProposer) applied(hraft.ApplyFuture, time.Time) FSMResponse { return FSMResponse{} }
func (p fakeProposer) closing() <-chan struct{}                         { return p.close }
func (p fakeProposer) leading() bool                                    { return true }

// startedFixture is a session's two goroutines for started writes (the
// waiter and the watcher) over fake futures, writing into out.
type startedFixture struct {
	svc     *commandService
	ss      *serverSession
	p       fakeProposer
	mu      sync.Mutex
	out     bytes.Buffer
	started chan *startedWrite
	answers chan *startedWrite
	waited  chan struct{}
}

// newStartedFixture makes the fixture for up to n started writes; run
// starts its goroutines.
func newStartedFixture(n int) *startedFixture {
	x := &startedFixture{svc: &commandService{sessReqPerPeer: map[peer.ID]int{}}, p: fakeProposer{close: make(chan struct{})},
		started: make(chan *startedWrite, n), answers: make(chan *startedWrite, n), waited: make(chan struct{})}
	x.ss = &serverSession{svc: x.svc, fast: x.p, fastDone: make(chan struct{})}
	x.ss.w.w = writerFunc(func(b []byte) (int, error) { x.mu.Lock(); defer x.mu.Unlock(); return x.out.Write(b) })
	return x
}

// run starts the watcher and the waiter.
func (x *startedFixture) run() {
	go x.ss.watchStarted(x.answers, x.p.close)
	go func() { defer close(x.waited); x.ss.waitStarted(x.started) }()
}

// start queues a started write with request id, as begin does, and
// returns its future.
func (x *startedFixture) start(id uint64, timeout time.Duration) *fakeFuture {
	f := &fakeFuture{end: make(chan error, 1)}
	w := &startedWrite{id: id, cmd: cmdSet, f: f, part: -1, timeout: timeout, deadline: time.Now().Add(timeout), done: make(chan struct{})}
	x.svc.mu.Lock()
	x.svc.sessReqPerPeer[""]++
	x.svc.total++
	x.ss.inflight++
	x.svc.mu.Unlock()
	x.ss.handlers.Add(1)
	x.started <- w
	x.answers <- w
	return f
}

// A started write is answered as a worker's wait answers: its Raft error
// when its future fails, "timeout, outcome unknown" when it outlasts its
// timeout, "shutdown, outcome unknown" once the member closes; the writes
// behind a stuck one are answered at their own deadlines, in order.
func TestSessionStartedWriteAnswers(t *testing.T) {
	x := newStartedFixture(4)
	x.run()
	svc, ss, p, started, answers, waited := x.svc, x.ss, x.p, x.started, x.answers, x.waited
	start := x.start
	mu, out := &x.mu, &x.out
	lost := start(1, 10*time.Second)
	stuck := []*fakeFuture{
		start(2, 100*time.Millisecond), // its timeout answers it
		start(3, 200*time.Millisecond), // behind it, the same
		start(4, time.Hour),            // the member's closing answers it
	}
	lost.end <- hraft.ErrLeadershipLost
	rafttest.WaitFor(t, 5*time.Second, "three answers", func() bool {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		return ss.inflight == 1
	})
	close(p.close)
	close(answers)
	<-ss.fastDone
	ss.handlers.Wait()
	// The futures that end after their writes were answered answer
	// nothing more.
	for _, f := range stuck {
		f.end <- hraft.ErrRaftShutdown
	}
	close(started)
	<-waited
	mu.Lock()
	defer mu.Unlock()
	br := bufio.NewReader(bytes.NewReader(out.Bytes()))
	want := []error{ErrLeadershipLost, ErrTimeout, ErrTimeout, ErrShutdown}
	for i, w := range want {
		body, _, err := readSessionFrame(br, br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		kind, id, rest, err := parsePayload(body)
		if err != nil || kind != frameAnswer || id != uint64(i+1) {
			t.Fatalf("answer %d: kind %d id %d %v", i+1, kind, id, err)
		}
		_, _, rest, _ = parseHint(rest)
		var resp response
		if err := wireDec.Unmarshal(rest, &resp); err != nil {
			t.Fatal(err)
		}
		if err := resp.err(); !errors.Is(err, w) || IsNotApplied(err) {
			t.Errorf("answer %d: %v, want %v with the outcome unknown", i+1, err, w)
		}
	}
	if br.Buffered() > 0 {
		t.Errorf("%d bytes after the four answers", br.Buffered())
	}
	if svc.total != 0 || ss.inflight != 0 || len(svc.sessReqPerPeer) != 0 {
		t.Errorf("places left: total %d, inflight %d, per peer %v", svc.total, ss.inflight, svc.sessReqPerPeer)
	}
}

// writerFunc is an io.Writer from a function.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// Answers that waitStarted holds (more started writes were queued behind
// them) leave while the session is open, once the watcher sees each write
// done, including when the watcher's timer fires as the write is being
// answered: no answer waits for a later write or for the session's end.
func TestSessionStartedWriteHeldAnswersLeave(t *testing.T) {
	for _, timeout := range []time.Duration{time.Hour, time.Millisecond} {
		const n = 3
		x := newStartedFixture(n)
		futures := make([]*fakeFuture, n)
		for i := range futures {
			futures[i] = x.start(uint64(i+1), timeout)
		}
		x.run()
		ss, started, answers, waited, mu, out := x.ss, x.started, x.answers, x.waited, &x.mu, &x.out
		// The first two end together, as a Raft batch does; the third
		// stays in flight, so nothing else writes for them.
		futures[0].end <- hraft.ErrLeadershipLost
		futures[1].end <- hraft.ErrLeadershipLost
		frames := func() int {
			mu.Lock()
			defer mu.Unlock()
			br := bufio.NewReader(bytes.NewReader(out.Bytes()))
			k := 0
			for {
				if _, _, err := readSessionFrame(br, br, nil); err != nil {
					return k
				}
				k++
			}
		}
		rafttest.WaitFor(t, 5*time.Second, "the answers of the two writes that ended", func() bool { return frames() >= 2 })
		futures[2].end <- hraft.ErrLeadershipLost
		rafttest.WaitFor(t, 5*time.Second, "all three answers", func() bool { return frames() == n })
		close(started)
		close(answers)
		<-ss.fastDone
		<-waited
		ss.handlers.Wait()
		if got := frames(); got != n {
			t.Errorf("timeout %v: %d answers, want %d (each once)", timeout, got, n)
		}
	}
}
