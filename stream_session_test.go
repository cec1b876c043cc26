package raft

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

// rawSession speaks the session wire by hand, as a hostile or a future
// peer might.
type rawSession struct {
	t          *testing.T
	st         network.Stream
	br         *bufio.Reader
	send, recv *frameCipher
	next       uint64
}

// openRawSession opens a session from h to member to, with key (nil: none)
// and the hello version given; a refusal comes back as the hello's error.
func openRawSession(t *testing.T, h host.Host, to peer.ID, ns string, key *secretKey, version uint64) (*rawSession, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, to, sessionProtocol(ns))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = st.Reset() })
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	cd := codec{key: key}
	salt, _ := newSessionSalt()
	body, err := cd.encode(&sessionHello{Version: version, Salt: salt})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(st, body); err != nil {
		return nil, err
	}
	payload, _, _, err := cd.readMessageAAD(st, true, nil, sessionHelloAAD(salt))
	if err != nil {
		return nil, err
	}
	var reply sessionHello
	if err := wireDec.Unmarshal(payload, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Code != codeOK {
		return nil, errorFromWire(reply.Code, reply.Message)
	}
	_ = st.SetDeadline(time.Time{})
	rs := &rawSession{t: t, st: st, br: bufio.NewReader(st)}
	if key != nil {
		rs.send, rs.recv, err = key.sessionCiphers(salt, reply.Salt)
		if err != nil {
			t.Fatal(err)
		}
	}
	return rs, nil
}

// write sends one frame of kind with id and body.
func (r *rawSession) write(kind byte, id uint64, body []byte) {
	r.t.Helper()
	p := append(framePayload(kind, id, len(body)), body...)
	if r.send != nil {
		var err error
		if p, err = r.send.seal(nil, p); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := writeFrame(r.st, p); err != nil {
		r.t.Fatalf("write frame: %v", err)
	}
}

// request sends req under the next id and returns the id.
func (r *rawSession) request(req *request) uint64 {
	r.t.Helper()
	body, err := cborEnc.Marshal(req)
	if err != nil {
		r.t.Fatal(err)
	}
	r.next++
	r.write(frameRequest, r.next, body)
	return r.next
}

// read reads one frame: its kind, id, and the response of an answer.
func (r *rawSession) read(timeout time.Duration) (byte, uint64, *response, error) {
	_ = r.st.SetReadDeadline(time.Now().Add(timeout))
	body, _, err := readSessionFrame(r.br, r.br, nil)
	if err != nil {
		return 0, 0, nil, err
	}
	if r.recv != nil {
		if body, err = r.recv.open(body); err != nil {
			return 0, 0, nil, err
		}
	}
	kind, id, rest, err := parsePayload(body)
	if err != nil || kind != frameAnswer {
		return kind, id, nil, err
	}
	_, _, rest, err = parseHint(rest)
	if err != nil {
		return kind, id, nil, err
	}
	var resp response
	if err := wireDec.Unmarshal(rest, &resp); err != nil {
		return kind, id, nil, err
	}
	return kind, id, &resp, nil
}

// oneMember forms a one-member cluster on node 0 of a 2-node mesh (node 1
// is the peer under test), with extra options.
func oneMember(t *testing.T, ns string, extra ...Option) (*rafttest.Mesh, *cluster) {
	t.Helper()
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	c := tc.mustStart(0, append([]Option{WithForceBootstrap()}, extra...)...)
	tc.leader(10 * time.Second)
	return mesh, c.(*cluster)
}

// A keyed member refuses a session whose hello does not carry the key, as
// it refuses a request, and holds nothing for it afterwards; with the key,
// requests and answers are sealed per frame.
func TestSessionKeyedHello(t *testing.T) {
	const ns = "/raft/session-keyed"
	secret := newSecret(t)
	mesh, c := oneMember(t, ns, WithEncryptionKey(secret))
	h, member := mesh.Node(1).Peer(), mesh.ID(0)
	good, _ := newSecretKey(secret, ns)
	wrong, _ := newSecretKey(newSecret(t), ns)
	for _, tc := range []struct {
		name string
		key  *secretKey
		want error
	}{{"no key", nil, ErrEncryptionRequired}, {"wrong key", wrong, ErrDecrypt}} {
		_, err := openRawSession(t, h, member, ns, tc.key, sessionVersion)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: hello answered %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := openRawSession(t, h, member, ns, good, sessionVersion+1); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("unknown session version: %v, want ErrInvalidCommand", err)
	}
	rafttest.WaitFor(t, 5*time.Second, "the refused sessions to be let go", func() bool {
		return c.svc.sessionsFrom(h.ID()) == 0 && c.svc.inFlightFrom(h.ID()) == 0
	})
	rs, err := openRawSession(t, h, member, ns, good, sessionVersion)
	if err != nil {
		t.Fatalf("hello with the key: %v", err)
	}
	ids := map[uint64]bool{rs.request(&request{Cmd: cmdKeys}): true, rs.request(&request{Cmd: cmdGet, Key: "k"}): true}
	for range ids {
		// Answers come as requests end, in any order.
		kind, got, resp, err := rs.read(10 * time.Second)
		if err != nil || kind != frameAnswer || !ids[got] || resp.err() != nil {
			t.Fatalf("answer: kind %d id %d %v %v", kind, got, resp, err)
		}
		delete(ids, got)
	}
	if n := c.svc.sessionsFrom(h.ID()); n != 1 {
		t.Errorf("member holds %d sessions of the peer, want 1", n)
	}
}

// A peer holds at most sessionsPerPeer sessions at a member; past it a
// session is refused as a stream over its cap is.
func TestSessionCapPerPeer(t *testing.T) {
	const ns = "/raft/session-cap"
	mesh, c := oneMember(t, ns)
	h, member := mesh.Node(1).Peer(), mesh.ID(0)
	for i := range sessionsPerPeer {
		if _, err := openRawSession(t, h, member, ns, nil, sessionVersion); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	_, err := openRawSession(t, h, member, ns, nil, sessionVersion)
	if !resourceLimited(err) {
		t.Fatalf("session past the cap: %v, want a resource-limit reset", err)
	}
	if n := c.svc.sessionsFrom(h.ID()); n != sessionsPerPeer {
		t.Errorf("member holds %d sessions, want %d", n, sessionsPerPeer)
	}
}

// Frames a member cannot take end the session (an oversized length, ids
// that do not increase, a frame kind a caller may not send); a request that
// does not decode, or a watch, is answered with an error and the session
// goes on.
func TestSessionBadFrames(t *testing.T) {
	const ns = "/raft/session-frames"
	mesh, c := oneMember(t, ns)
	h, member := mesh.Node(1).Peer(), mesh.ID(0)

	rs, err := openRawSession(t, h, member, ns, nil, sessionVersion)
	if err != nil {
		t.Fatal(err)
	}
	rs.write(frameRequest, 1, []byte{0xff, 0x00})
	watch, _ := cborEnc.Marshal(&request{Cmd: cmdWatch, Prefix: ""})
	rs.write(frameRequest, 2, watch)
	for range 2 {
		kind, id, resp, err := rs.read(10 * time.Second)
		if err != nil || kind != frameAnswer || (id != 1 && id != 2) || !errors.Is(resp.err(), ErrInvalidCommand) {
			t.Fatalf("answer: kind %d id %d %v %v, want ErrInvalidCommand", kind, id, resp, err)
		}
	}
	rs.next = 2
	rs.request(&request{Cmd: cmdKeys})
	if kind, _, resp, err := rs.read(10 * time.Second); err != nil || kind != frameAnswer || resp.err() != nil {
		t.Fatalf("the session did not go on: %d %v %v", kind, resp, err)
	}

	cases := []struct {
		name string
		send func(rs *rawSession)
	}{
		{"repeated id", func(rs *rawSession) {
			body, _ := cborEnc.Marshal(&request{Cmd: cmdKeys})
			rs.write(frameRequest, 5, body)
			rs.write(frameRequest, 5, body)
		}},
		{"answer from a caller", func(rs *rawSession) { rs.write(frameAnswer, 1, []byte{hintNone}) }},
		{"oversized", func(rs *rawSession) {
			_, _ = rs.st.Write([]byte{0xff, 0xff, 0xff, 0x7f}) // 268 MB announced
		}},
	}
	for _, tc := range cases {
		rs, err := openRawSession(t, h, member, ns, nil, sessionVersion)
		if err != nil {
			t.Fatal(err)
		}
		tc.send(rs)
		var lastErr error
		for range 3 {
			if _, _, _, lastErr = rs.read(10 * time.Second); lastErr != nil {
				break
			}
		}
		if lastErr == nil || isTimeout(lastErr) {
			t.Errorf("%s: the member kept the session (%v)", tc.name, lastErr)
		}
	}
	rafttest.WaitFor(t, 10*time.Second, "the broken sessions to be let go", func() bool {
		return c.svc.sessionsFrom(h.ID()) == 1
	})
}

// An idle session ends with a goaway naming the last request read, and the
// member lets it go.
func TestSessionIdleGoaway(t *testing.T) {
	const ns = "/raft/session-idle"
	mesh, c := oneMember(t, ns)
	c.svc.sessIdle.Store(int64(300 * time.Millisecond))
	h, member := mesh.Node(1).Peer(), mesh.ID(0)
	rs, err := openRawSession(t, h, member, ns, nil, sessionVersion)
	if err != nil {
		t.Fatal(err)
	}
	rs.request(&request{Cmd: cmdKeys})
	id := rs.request(&request{Cmd: cmdKeys})
	for range 2 {
		if kind, _, _, err := rs.read(10 * time.Second); err != nil || kind != frameAnswer {
			t.Fatalf("answer: %d %v", kind, err)
		}
	}
	kind, last, _, err := rs.read(10 * time.Second)
	if err != nil || kind != frameGoaway || last != id {
		t.Fatalf("after idling: kind %d id %d %v, want a goaway for %d", kind, last, err, id)
	}
	rafttest.WaitFor(t, 5*time.Second, "the idle session to be let go", func() bool {
		return c.svc.sessionsFrom(h.ID()) == 0
	})
}

// Requests in flight on sessions hold the peer's session request slots:
// past sessionRequestsPerPeer the member answers "busy" (not handled)
// instead of serving more, every admitted request gets its answer, and the
// peer's command stream slots stay free for its streams.
func TestSessionBusy(t *testing.T) {
	const ns = "/raft/session-busy"
	mesh := rafttest.NewMesh(t, 4, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	tc.form(15*time.Second, 0, 1, 2)
	l := tc.leader(10 * time.Second)
	// The last member alone: writes wait in it for a leader.
	alone := (l + 1) % 3
	for _, i := range []int{0, 1, 2} {
		if i != alone {
			tc.stop(i)
		}
	}
	c := tc.get(alone).(*cluster)
	rafttest.WaitFor(t, 10*time.Second, "the lone member to lose its leader", func() bool {
		_, err := c.Leader()
		return err != nil
	})
	h := mesh.Node(3).Peer()
	var sessions []*rawSession
	for range 2 {
		rs, err := openRawSession(t, h, mesh.ID(alone), ns, nil, sessionVersion)
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, rs)
	}
	const each = sessionRequestsPerPeer/2 + 5
	for _, rs := range sessions {
		for i := range each {
			rs.request(&request{Cmd: cmdSet, Key: fmt.Sprintf("busy/%d", i), Value: []byte("v"), Timeout: int64(3 * time.Second)})
		}
	}
	peak, streams := 0, 0
	answers, busy := 0, 0
	for _, rs := range sessions {
		for range each {
			peak = max(peak, c.svc.sessionRequestsFrom(h.ID()))
			streams = max(streams, c.svc.streamSlotsFrom(h.ID()))
			kind, _, resp, err := rs.read(15 * time.Second)
			switch {
			case err != nil:
				t.Fatalf("read: %v", err)
			case kind == frameBusy:
				busy++
			case kind == frameAnswer && errors.Is(resp.err(), ErrNoLeader):
				answers++
			case kind == frameAnswer && (errors.Is(resp.err(), ErrLeadershipLost) || errors.Is(resp.err(), ErrTimeout)):
				// "No leader" above may have been a leadership transfer's
				// election (a stopping leader hands over), which the lone
				// member can still win with the vote cast before the
				// others stopped: it then leads without a quorum until
				// its lease runs out, and its writes end unknown.
				answers++
			default:
				t.Fatalf("unexpected frame %d %v", kind, resp)
			}
		}
	}
	if answers != sessionRequestsPerPeer || busy != 2*each-sessionRequestsPerPeer {
		t.Errorf("%d answered, %d busy; want %d and %d", answers, busy, sessionRequestsPerPeer, 2*each-sessionRequestsPerPeer)
	}
	if peak > sessionRequestsPerPeer {
		t.Errorf("the peer held %d session request slots, cap %d", peak, sessionRequestsPerPeer)
	}
	if streams > 0 {
		t.Errorf("the peer's session requests held %d of its command stream slots", streams)
	}
}
