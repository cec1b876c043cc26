package raft

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
)

func testPeerID(t *testing.T) peer.ID {
	t.Helper()
	id, err := test.RandPeerID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The protocol of sessions never equals the command or transport protocol
// of any namespace.
func TestSessionProtocol(t *testing.T) {
	for _, ns := range []string{"/raft/a", "/raft/session/1/raft/a", "/raft/a/transport"} {
		sp := sessionProtocol(ns)
		for _, other := range []string{"/raft/a", "/raft/b", ns, "/raft/session/1/raft/a"} {
			if sp == Protocol(other) || sp == TransportProtocol(other) {
				t.Errorf("sessionProtocol(%q) = %q equals a protocol of %q", ns, sp, other)
			}
		}
		if got := sessionProtocolOf(Protocol(ns)); got != sp {
			t.Errorf("sessionProtocolOf(Protocol(%q)) = %q, want %q", ns, got, sp)
		}
	}
}

func TestSessionPayloadAndHint(t *testing.T) {
	leader := testPeerID(t)
	cases := []struct {
		name   string
		self   bool
		leader peer.ID
	}{{"none", false, ""}, {"self", true, ""}, {"leader", false, leader}}
	for _, c := range cases {
		p := framePayload(frameAnswer, 300, 0)
		p = appendHint(p, c.self, c.leader)
		p = append(p, "body"...)
		kind, id, rest, err := parsePayload(p)
		if err != nil || kind != frameAnswer || id != 300 {
			t.Fatalf("%s: parsePayload = %d %d %v", c.name, kind, id, err)
		}
		l, self, rest, err := parseHint(rest)
		if err != nil || l != c.leader || self != c.self || string(rest) != "body" {
			t.Errorf("%s: parseHint = %q %v %q %v", c.name, l, self, rest, err)
		}
	}
	bad := [][]byte{nil, {frameAnswer}, {frameAnswer, 0x80}}
	for _, b := range bad {
		if _, _, _, err := parsePayload(b); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("parsePayload(%x) = %v, want ErrInvalidCommand", b, err)
		}
	}
	badHints := [][]byte{nil, {9}, {hintLeader}, {hintLeader, 200, 1}, {hintLeader, 3, 1, 2, 3}}
	for _, b := range badHints {
		if _, _, _, err := parseHint(b); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("parseHint(%x) = %v, want ErrInvalidCommand", b, err)
		}
	}
}

// Session frames open only in order, in their own direction, under the
// keys of their own session.
func TestSessionCiphers(t *testing.T) {
	k, err := newSecretKey(newSecret(t), "/raft/ciphers")
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := newSessionSalt()
	ms, _ := newSessionSalt()
	c2s, s2c, err := k.sessionCiphers(cs, ms)
	if err != nil {
		t.Fatal(err)
	}
	rc2s, rs2c, _ := k.sessionCiphers(cs, ms)
	var frames [][]byte
	for _, m := range []string{"one", "two", "three"} {
		f, err := c2s.seal(nil, []byte(m))
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	// Reflected: the other direction's key does not open it.
	if _, err := rs2c.open(bytes.Clone(frames[0])); !errors.Is(err, ErrDecrypt) {
		t.Errorf("frame opened in the wrong direction: %v", err)
	}
	// Out of order: frame 1 where frame 0 is due.
	fresh, _, _ := k.sessionCiphers(cs, ms)
	if _, err := fresh.open(bytes.Clone(frames[1])); !errors.Is(err, ErrDecrypt) {
		t.Errorf("frame 1 opened as frame 0: %v", err)
	}
	for i, want := range []string{"one", "two", "three"} {
		got, err := rc2s.open(bytes.Clone(frames[i]))
		if err != nil || string(got) != want {
			t.Fatalf("frame %d = %q, %v", i, got, err)
		}
	}
	// Another session (another member salt) has other keys.
	ms2, _ := newSessionSalt()
	other, _, _ := k.sessionCiphers(cs, ms2)
	if _, err := other.open(bytes.Clone(frames[0])); !errors.Is(err, ErrDecrypt) {
		t.Errorf("frame opened under another session's key: %v", err)
	}
	// Another namespace with the same secret too.
	k2, _ := newSecretKey(k.shared, "/raft/other")
	ons, _, _ := k2.sessionCiphers(cs, ms)
	if _, err := ons.open(bytes.Clone(frames[0])); !errors.Is(err, ErrDecrypt) {
		t.Errorf("frame opened in another namespace: %v", err)
	}
	_ = s2c
	if _, _, err := k.sessionCiphers(cs[:5], ms); !errors.Is(err, ErrDecrypt) {
		t.Errorf("short salt: %v", err)
	}
}

func TestOrderTargets(t *testing.T) {
	a, b, c, d := testPeerID(t), testPeerID(t), testPeerID(t), testPeerID(t)
	none := func(peer.ID) bool { return false }
	down := func(ids ...peer.ID) func(peer.ID) bool {
		return func(id peer.ID) bool { return slices.Contains(ids, id) }
	}
	cases := []struct {
		name        string
		ids         []peer.ID
		leader      peer.ID
		unreachable func(peer.ID) bool
		want        []peer.ID
	}{
		{"no leader", []peer.ID{a, b, c}, "", none, []peer.ID{a, b, c}},
		{"leader first", []peer.ID{a, b, c}, c, none, []peer.ID{c, a, b}},
		{"leader not given", []peer.ID{a, b}, c, none, []peer.ID{a, b}},
		{"repeats dropped", []peer.ID{a, b, a, c, b}, "", none, []peer.ID{a, b, c}},
		{"unreachable last", []peer.ID{a, b, c}, "", down(a), []peer.ID{b, c, a}},
		{"unreachable leader last", []peer.ID{a, b, c, d}, c, down(c, a), []peer.ID{b, d, a, c}},
		{"empty", nil, a, none, []peer.ID{}},
	}
	for _, tc := range cases {
		if got := orderTargets(tc.ids, tc.leader, tc.unreachable); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The window never lets one identity's writes in flight span
// seqWindowSize numbers, opens lanes past it, and waits past all lanes.
func TestSeqWindow(t *testing.T) {
	var w seqWindow
	var first [clientIDSize]byte
	first[0] = 1
	w.init(first)
	ctx := context.Background()
	far := time.Now().Add(time.Minute)
	var tickets []seqTicket
	for range maxSeqLanes * seqWindowSize {
		tk, err := w.acquire(ctx, far)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	lanes := map[*seqLane][]uint64{}
	for _, tk := range tickets {
		lanes[tk.lane] = append(lanes[tk.lane], tk.seq)
	}
	if len(lanes) != maxSeqLanes || tickets[0].lane.identity != first {
		t.Fatalf("%d lanes, first identity %x", len(lanes), tickets[0].lane.identity)
	}
	ids := map[[clientIDSize]byte]bool{}
	for l, seqs := range lanes {
		ids[l.identity] = true
		if len(seqs) != seqWindowSize || seqs[0] != 1 || seqs[len(seqs)-1] != seqWindowSize {
			t.Errorf("lane numbers %v", seqs)
		}
	}
	if len(ids) != maxSeqLanes {
		t.Errorf("lanes share identities")
	}
	// Full: the next one waits, and fails at its deadline (not sent).
	if _, err := w.acquire(ctx, time.Now().Add(20*time.Millisecond)); !errors.Is(err, errNotSent) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("acquire past every window: %v", err)
	}
	// Ending a write that is not a lane's lowest does not move its window.
	w.release(tickets[5])
	if _, err := w.acquire(ctx, time.Now().Add(20*time.Millisecond)); err == nil {
		t.Fatal("window moved past a lower write still in flight")
	}
	// Ending the lowest does, and wakes a waiting write.
	got := make(chan seqTicket, 1)
	go func() {
		tk, err := w.acquire(ctx, time.Now().Add(10*time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- tk
	}()
	time.Sleep(10 * time.Millisecond)
	w.release(tickets[0])
	select {
	case tk := <-got:
		if tk.lane != tickets[0].lane || tk.seq != seqWindowSize+1 {
			t.Errorf("woken write got lane %p seq %d", tk.lane, tk.seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write waiting for the window was not woken")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := w.acquire(cctx, far); !errors.Is(err, errNotSent) {
		t.Errorf("acquire after cancel: %v", err)
	}
}

// shortWriter accepts n bytes, then fails.
type shortWriter struct {
	n   int
	out bytes.Buffer
}

func (w *shortWriter) Write(p []byte) (int, error) {
	if len(p) <= w.n {
		w.n -= len(p)
		return w.out.Write(p)
	}
	k := w.n
	w.out.Write(p[:k])
	w.n = 0
	return k, io.ErrClosedPipe
}

// A frame writer reports which frames of a failed write went out whole,
// refuses frames after a failure, and writes frames readSessionFrame
// reads back.
func TestFrameWriter(t *testing.T) {
	sw := &shortWriter{n: 1 << 20}
	var fw frameWriter
	fw.w = sw
	var sent, lost []any
	fw.done = func(tags []any, ends []int, n int, err error) {
		for i, tag := range tags {
			if err == nil || ends[i] <= n {
				sent = append(sent, tag)
			} else {
				lost = append(lost, tag)
			}
		}
	}
	for i := range 3 {
		if _, err := fw.send(frameRequest, []byte{byte(i)}, i); err != nil {
			t.Fatal(err)
		}
	}
	br := bytes.NewReader(sw.out.Bytes())
	for i := range 3 {
		b, _, err := readSessionFrame(br, br, nil)
		if err != nil {
			t.Fatal(err)
		}
		kind, id, rest, err := parsePayload(b)
		if err != nil || kind != frameRequest || id != uint64(i+1) || !bytes.Equal(rest, []byte{byte(i)}) {
			t.Fatalf("frame %d: %d %d %x %v", i, kind, id, rest, err)
		}
	}
	if len(sent) != 3 || fw.lastID() != 3 {
		t.Fatalf("sent %v, last id %d", sent, fw.lastID())
	}
	// A write that fails half way: the frame cut short did not leave.
	sw.n = 1
	if _, err := fw.send(frameRequest, nil, "cut"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lost, []any{"cut"}) {
		t.Errorf("lost %v", lost)
	}
	if _, err := fw.send(frameRequest, nil, "late"); !errors.Is(err, errWriterClosed) {
		t.Errorf("send after a failed write: %v", err)
	}
	// Oversized and empty frames are refused when read.
	var big bytes.Buffer
	big.Write([]byte{0xff, 0xff, 0xff, 0xff, 0x7f})
	if _, _, err := readSessionFrame(&big, &big, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	zero := bytes.NewReader([]byte{0})
	if _, _, err := readSessionFrame(zero, zero, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("empty frame: %v", err)
	}
}
