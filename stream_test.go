package raft

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// ---- raw streams ----

// rawOutcome is what a member did with a raw stream: it answered (resp), or
// closed or reset the stream without an answer.
type rawOutcome struct {
	resp   *response
	closed bool
	detail string
}

func (o rawOutcome) String() string {
	if o.resp != nil {
		return fmt.Sprintf("answer code %d %q", o.resp.Code, o.resp.Message)
	}
	return "closed without answer: " + o.detail
}

// sendRaw opens a stream on proto from h to id, writes payload, closes the
// write side and reads everything the member sends back. A member that does
// neither answer nor close within 5s fails the test (a hang). An answer must
// be a well-formed response frame.
func sendRaw(t testing.TB, h host.Host, id peer.ID, proto protocol.ID, payload []byte) rawOutcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, id, proto)
	if err != nil {
		t.Fatalf("open stream to %s: %v", id, err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	var werr error
	if len(payload) > 0 {
		_, werr = s.Write(payload)
	}
	_ = s.CloseWrite()
	data, rerr := io.ReadAll(s)
	if isTimeout(rerr) {
		t.Fatalf("member %s neither answered nor closed the stream within 5s (write error %v)", id, werr)
	}
	if len(data) == 0 {
		return rawOutcome{closed: true, detail: fmt.Sprintf("read %v, write %v", rerr, werr)}
	}
	frame, err := readFrame(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("malformed answer frame (%d bytes): %v", len(data), err)
	}
	plain, err := codec{}.open(frame)
	if err != nil {
		t.Fatalf("answer envelope: %v", err)
	}
	var resp response
	if err := wireDec.Unmarshal(plain, &resp); err != nil {
		t.Fatalf("answer body: %v", err)
	}
	return rawOutcome{resp: &resp}
}

// openStalled opens a stream that completes protocol negotiation, writes
// prefix (possibly nothing) and then neither writes nor closes. It returns
// once the member's handler has the stream.
func openStalled(t *testing.T, from, to host.Host, proto protocol.ID, prefix []byte) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := inboundStreams(to, from.ID(), proto)
	s, err := from.NewStream(ctx, to.ID(), proto)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { _ = s.Reset() })
	// A zero-length write flushes the lazy multistream handshake, so the
	// member sees the stream without receiving a byte of request.
	if _, err := s.Write(prefix); err != nil {
		t.Fatalf("write: %v", err)
	}
	rafttest.WaitFor(t, 5*time.Second, "the member to accept the stalled stream", func() bool {
		return inboundStreams(to, from.ID(), proto) > before
	})
	return s
}

// hostileCase is one malformed input and what the member must do with it:
// answer with the sentinel want, or (want nil) close the stream unanswered
// when closed is set, or else either answer with an error or close.
type hostileCase struct {
	name    string
	payload []byte
	want    error
	closed  bool
}

func hostileCases(t testing.TB) []hostileCase {
	sec := int64(time.Second)
	rnd := make([]byte, 4096)
	_, _ = rand.Read(rnd)
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	big[0] = envelopePlain
	big[1] = 0xff // a CBOR "break" where an item must start
	sealedJunk := make([]byte, 64)
	_, _ = rand.Read(sealedJunk)
	validSet := cborOf(t, map[int]any{1: cmdSet, 2: "hostile/trailing", 3: []byte("x"), 5: sec})
	deep := any("x")
	for range 20 {
		deep = []any{deep}
	}
	return []hostileCase{
		// Framing.
		{name: "nothing, write side closed", closed: true},
		{name: "truncated varint", payload: []byte{0x80}, closed: true},
		{name: "truncated frame", payload: append(uvarint(100), make([]byte, 10)...), closed: true},
		{name: "varint overflow", payload: bytes.Repeat([]byte{0xff}, 11), closed: true},
		{name: "length prefix over MaxMessageSize", payload: uvarint(MaxMessageSize + 1), want: ErrTooLarge},
		{name: "length prefix of 2^62", payload: uvarint(1 << 62), want: ErrTooLarge},
		{name: "http request", payload: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{name: "random bytes", payload: rnd},
		// Envelope.
		{name: "empty frame", payload: framed(nil), want: ErrInvalidCommand},
		{name: "unknown envelope", payload: framed([]byte{7, 0xa0}), want: ErrInvalidCommand},
		{name: "sealed frame to a keyless member", payload: framed(append([]byte{envelopeSealed}, sealedJunk...)), want: ErrUnexpectedEncryption},
		{name: "sealed frame, too short", payload: framed([]byte{envelopeSealed}), want: ErrUnexpectedEncryption},
		// CBOR.
		{name: "garbage CBOR", payload: plainFrame([]byte{0xff, 0xfe, 0xfd}), want: ErrInvalidCommand},
		{name: "empty CBOR", payload: plainFrame(nil), want: ErrInvalidCommand},
		{name: "1 MiB of garbage CBOR", payload: framed(big), want: ErrInvalidCommand},
		{name: "array instead of map", payload: plainFrame(cborOf(t, []any{cmdSet, "k"})), want: ErrInvalidCommand},
		{name: "integer instead of map", payload: plainFrame(cborOf(t, 42)), want: ErrInvalidCommand},
		{name: "map count lie", payload: plainFrame([]byte{0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), want: ErrInvalidCommand},
		{name: "byte string length lie", payload: plainFrame([]byte{0xa2, 0x01, 0x63, 's', 'e', 't', 0x03, 0x5b, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff}), want: ErrInvalidCommand},
		{name: "duplicate map key", payload: plainFrame([]byte{0xa2, 0x01, 0x63, 's', 'e', 't', 0x01, 0x63, 'g', 'e', 't'}), want: ErrInvalidCommand},
		{name: "indefinite-length map", payload: plainFrame([]byte{0xbf, 0x01, 0x64, 'k', 'e', 'y', 's', 0xff}), want: ErrInvalidCommand},
		{name: "tagged value", payload: plainFrame([]byte{0xa1, 0x01, 0xc0, 0x64, 'k', 'e', 'y', 's'}), want: ErrInvalidCommand},
		{name: "invalid UTF-8 command name", payload: plainFrame([]byte{0xa3, 0x01, 0x63, 's', 0xff, 't', 0x02, 0x62, 'k', 'k', 0x05, 0x1a, 0x3b, 0x9a, 0xca, 0x00}), want: ErrInvalidCommand},
		{name: "valid set followed by trailing bytes", payload: plainFrame(append(append([]byte{}, validSet...), 0x00)), want: ErrInvalidCommand},
		{name: "two requests in one frame", payload: plainFrame(append(append([]byte{}, validSet...), validSet...)), want: ErrInvalidCommand},
		{name: "deep nesting", payload: plainFrame(cborOf(t, map[int]any{1: cmdExchangePeers, 8: deep})), want: ErrInvalidCommand},
		// Wrong field types.
		{name: "Key as integer", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: 42, 3: []byte("v"), 5: sec})), want: ErrInvalidCommand},
		{name: "Key as map", payload: plainFrame(cborOf(t, map[int]any{1: cmdGet, 2: map[int]any{1: 2}})), want: ErrInvalidCommand},
		{name: "Cmd as integer", payload: plainFrame(cborOf(t, map[int]any{1: 1})), want: ErrInvalidCommand},
		{name: "Cmd as bytes", payload: plainFrame(cborOf(t, map[int]any{1: []byte(cmdKeys)})), want: ErrInvalidCommand},
		{name: "Value as text", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/v", 3: "text", 5: sec})), want: ErrInvalidCommand},
		{name: "Timeout as string", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/t", 5: "1s"})), want: ErrInvalidCommand},
		{name: "Timeout as float", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/t", 5: 1.5e9})), want: ErrInvalidCommand},
		{name: "Timeout over int64", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/t", 5: uint64(math.MaxUint64)})), want: ErrInvalidCommand},
		{name: "Barrier as string", payload: plainFrame(cborOf(t, map[int]any{1: cmdGet, 2: "k", 6: "soon"})), want: ErrInvalidCommand},
		{name: "Forwarded as integer", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/f", 5: sec, 9: 1})), want: ErrInvalidCommand},
		{name: "Peers as string", payload: plainFrame(cborOf(t, map[int]any{1: cmdExchangePeers, 8: "peers"})), want: ErrInvalidCommand},
		{name: "peer of wrong arity", payload: plainFrame(cborOf(t, map[int]any{1: cmdExchangePeers, 8: []any{[]any{[]byte("id")}}})), want: ErrInvalidCommand},
		{name: "Status as integer", payload: plainFrame(cborOf(t, map[int]any{1: cmdExchangePeers, 10: 5})), want: ErrInvalidCommand},
		{name: "Peer as string", payload: plainFrame(cborOf(t, map[int]any{1: cmdJoinVoter, 5: sec, 7: "peer"})), want: ErrInvalidCommand},
		// Well-formed but wrong.
		{name: "unknown command", payload: plainFrame(cborOf(t, map[int]any{1: "dropAll"})), want: ErrInvalidCommand},
		{name: "empty map", payload: plainFrame(cborOf(t, map[int]any{})), want: ErrInvalidCommand},
		{name: "string keys", payload: plainFrame(cborOf(t, map[string]any{"cmd": cmdSet, "key": "hostile/s"})), want: ErrInvalidCommand},
		{name: "set without timeout", payload: plainFrame(cborOf(t, map[int]any{1: cmdSet, 2: "hostile/nt", 3: []byte("v")})), want: ErrInvalidTimeout},
		{name: "joinVoter of garbage peer", payload: plainFrame(cborOf(t, map[int]any{1: cmdJoinVoter, 5: sec, 7: []byte("junk")})), want: ErrInvalidCommand},
	}
}

// 5. Malformed input to the command service from a non-member host gets an
// error answer or a closed stream, never a panic or a hang; idle and stalled
// streams are closed by the member's read deadline while it keeps serving;
// and afterwards the cluster works with its state unchanged.
func TestStreamHostileInput(t *testing.T) {
	f := newCSFixture(t, "/raft/stream-hostile")
	h := f.mesh.Node(f.cn).Peer()
	proto := Protocol(f.ns)
	if err := f.client.Set("base", []byte("line"), 5*time.Second, f.mesh.ID(0)); err != nil {
		t.Fatalf("baseline Set: %v", err)
	}
	before := f.state(0)

	// Streams that send nothing, or half a frame, and never finish: opened
	// first, so the member's read deadline runs out while the rest goes on.
	type stalled struct {
		s      network.Stream
		member int
		what   string
		opened time.Time
	}
	var stalls []stalled
	for i := range 3 {
		mh := f.mesh.Node(i).Peer()
		for _, p := range []struct {
			what   string
			prefix []byte
		}{{"idle", nil}, {"half a frame", append(uvarint(50), envelopePlain, 2, 3, 4, 5)}} {
			stalls = append(stalls, stalled{openStalled(t, h, mh, proto, p.prefix), i, p.what, time.Now()})
		}
	}

	for _, c := range hostileCases(t) {
		for i := range 3 {
			out := sendRaw(t, h, f.mesh.ID(i), proto, c.payload)
			switch {
			case c.want != nil:
				if out.resp == nil || !errors.Is(out.resp.err(), c.want) {
					t.Errorf("%s to member %d (%s): %v; want an answer matching %v", c.name, i, f.role(i), out, c.want)
				}
			case c.closed:
				if out.resp != nil {
					t.Errorf("%s to member %d (%s): %v; want the stream closed", c.name, i, f.role(i), out)
				}
			default:
				if out.resp != nil && out.resp.Code == codeOK {
					t.Errorf("%s to member %d (%s): success answer", c.name, i, f.role(i))
				}
			}
		}
	}

	// Peer exchange with junk peers and a junk status is accepted, ignored
	// where it does not parse, and harms nothing.
	junk, err := cborEnc.Marshal(&request{
		Cmd: cmdExchangePeers,
		Peers: []wirePeer{
			{ID: []byte("not a peer"), Addrs: [][]byte{{0xff, 0x00}}, Age: math.MaxInt64},
			{ID: []byte(f.mesh.ID(0)), Addrs: [][]byte{[]byte("/garbage")}, Age: math.MinInt64},
			{ID: nil, Age: -1},
		},
		Status: &status{Leader: []byte("no leader"), Deciding: true, Voters: -3},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		out := sendRaw(t, h, f.mesh.ID(i), proto, plainFrame(junk))
		if out.resp == nil || out.resp.Code != codeOK {
			t.Errorf("exchangePeers with junk to member %d: %v", i, out)
		}
	}

	// A flood of junk on many streams at once while a client writes.
	var wg sync.WaitGroup
	cases := hostileCases(t)
	for k := range 48 {
		wg.Go(func() {
			c := cases[k%len(cases)]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := h.NewStream(ctx, f.mesh.ID(k%3), proto)
			if err != nil {
				return
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = s.Write(c.payload)
			_ = s.CloseWrite()
			_, _ = io.Copy(io.Discard, s)
		})
	}
	for i := range 3 {
		if err := f.client.Set(fmt.Sprintf("during/%d", i), []byte("ok"), 5*time.Second, f.mesh.ID(i)); err != nil {
			t.Errorf("Set through member %d during the flood: %v", i, err)
		}
	}
	wg.Wait()

	// Nothing hostile was applied; the state is what the client wrote.
	want := fmt.Sprint(before)
	for i := range 3 {
		after := f.state(i)
		for k := range after {
			if strings.HasPrefix(k, "during/") {
				delete(after, k)
			}
		}
		if fmt.Sprint(after) != want {
			t.Errorf("member %d state after hostile input: %v, want %v", i, after, want)
		}
	}
	for i := range 3 {
		key := fmt.Sprintf("after/%d", i)
		if err := f.client.Set(key, []byte("ok"), 5*time.Second, f.mesh.ID(i)); err != nil {
			t.Fatalf("Set through member %d after hostile input: %v", i, err)
		}
		if v, ok, err := f.client.Get(key, csBarrier, f.mesh.ID((i+1)%3)); err != nil || !ok || string(v) != "ok" {
			t.Fatalf("Get %s = %q, %v, %v", key, v, ok, err)
		}
	}

	// The stalled streams: the member answered other streams all along
	// (above); now each must end by the member's read deadline.
	if testing.Short() {
		t.Logf("-short: not waiting %v for the member's read deadline on stalled streams", requestReadTimeout)
		return
	}
	for _, st := range stalls {
		_ = st.s.SetReadDeadline(st.opened.Add(requestReadTimeout + 3*time.Second))
		n, err := io.Copy(io.Discard, st.s)
		switch {
		case isTimeout(err):
			t.Errorf("%s stream to member %d still open %v after it was opened", st.what, st.member, time.Since(st.opened))
		case n > 0:
			t.Errorf("%s stream to member %d got %d bytes of answer", st.what, st.member, n)
		default:
			t.Logf("%s stream to member %d ended after %v: %v", st.what, st.member, time.Since(st.opened).Round(10*time.Millisecond), err)
		}
	}
}

// Close of a member must not wait for a peer that opened a command stream
// and sends nothing: a silent (or hostile) peer would otherwise hold every
// Close for requestReadTimeout.
func TestStreamCloseNotHeldByStalledStreams(t *testing.T) {
	const ns = "/raft/stream-close"
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	tc := newTestCluster(t, mesh, ns)
	tc.mustStart(0, WithForceBootstrap())
	tc.leader(10 * time.Second)
	from, to := mesh.Node(1).Peer(), mesh.Node(0).Peer()
	openStalled(t, from, to, Protocol(ns), nil)
	openStalled(t, from, to, Protocol(ns), append(uvarint(50), envelopePlain, 2, 3))
	start := time.Now()
	tc.stop(0)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with two stalled command streams open (read timeout %v)", d.Round(time.Millisecond), requestReadTimeout)
	}
}

// A forged peer-exchange status, sent by a non-member that does not even
// serve the namespace, claims that a bigger cluster exists. Members must not
// drop their data on such an unverified claim: neither a lone member nor the
// members of a larger cluster.
func TestStreamForgedStatusKeepsData(t *testing.T) {
	t.Parallel() // long and timing-free: it runs beside the other such tests
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d members", n), func(t *testing.T) {
			ns := fmt.Sprintf("/raft/stream-forged-%d", n)
			mesh := rafttest.NewMesh(t, n+1, rafttest.Connected())
			tc := newTestCluster(t, mesh, ns)
			if n == 1 {
				tc.mustStart(0, WithForceBootstrap())
			} else {
				tc.form(15*time.Second, 0, 1, 2)
			}
			tc.set("precious", []byte("data"))
			for i := range n {
				tc.waitValue(i, "precious", []byte("data"))
			}
			forged := forgedClaim(t, 2*n+1)
			h := mesh.Node(n).Peer()
			// Keep the claim fresh on every member for longer than the
			// steady exchange interval, so each membership loop sees it.
			intact := func() bool {
				for i := range n {
					if v, ok := tc.get(i).Get("precious"); !ok || string(v) != "data" {
						return false
					}
				}
				return true
			}
			deadline := time.Now().Add(steadyExchangeInterval + 2*time.Second)
			for time.Now().Before(deadline) && intact() {
				for i := range n {
					if out := sendRaw(t, h, mesh.ID(i), Protocol(ns), forged); out.resp == nil || out.resp.Code != codeOK {
						t.Fatalf("forged exchange to member %d not accepted: %v", i, out)
					}
				}
				time.Sleep(200 * time.Millisecond) // the pace of the forged claims
			}
			for i := range n {
				if v, ok := tc.get(i).Get("precious"); !ok || string(v) != "data" {
					t.Errorf("a forged status from a non-member wiped member %d's data (Get = %q, %v)", i, v, ok)
				}
			}
			if n > 1 {
				tc.waitVoters(10*time.Second, 0, 1, 2)
			}
			tc.leader(10 * time.Second)
		})
	}
}

// forgedClaim is an exchangePeers frame whose status claims a formed cluster
// of voters peers that nobody runs.
func forgedClaim(t *testing.T, voters int) []byte {
	t.Helper()
	var fakes [][]byte
	for range voters {
		k, err := p2pnode.NewIdentity()
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		fakes = append(fakes, []byte(id))
	}
	st := &status{Leader: fakes[0], Formed: true, Voters: len(fakes), Member: true}
	// Newer versions of status may list the voters (by this name); fill
	// the field when it exists, without depending on it at compile time.
	if fv := reflect.ValueOf(st).Elem().FieldByName("VoterIDs"); fv.IsValid() && fv.Type() == reflect.TypeOf(fakes) {
		fv.Set(reflect.ValueOf(fakes))
	}
	body, err := cborEnc.Marshal(&request{Cmd: cmdExchangePeers, Status: st})
	if err != nil {
		t.Fatal(err)
	}
	return plainFrame(body)
}
