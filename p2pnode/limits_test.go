package p2pnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft/memdisc"
)

// waitFor polls cond every 20ms until it holds, failing the test after
// timeout (rafttest.WaitFor, which this package cannot import).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDefaultResourceLimits(t *testing.T) {
	got := DefaultResourceLimits().ToPartialLimitConfig()
	for _, c := range []struct {
		name      string
		got, want rcmgr.LimitVal
	}{
		{"peer conns", got.PeerDefault.Conns, PeerMaxConns},
		{"peer inbound conns", got.PeerDefault.ConnsInbound, PeerMaxConns},
		{"peer outbound conns", got.PeerDefault.ConnsOutbound, PeerMaxConns},
		{"peer inbound streams", got.PeerDefault.StreamsInbound, PeerMaxStreamsInbound},
		{"peer outbound streams", got.PeerDefault.StreamsOutbound, PeerMaxStreamsOutbound},
		{"peer streams", got.PeerDefault.Streams, PeerMaxStreams},
		{"protocol/peer inbound streams", got.ProtocolPeerDefault.StreamsInbound, ProtocolPeerMaxStreamsInbound},
		{"protocol/peer outbound streams", got.ProtocolPeerDefault.StreamsOutbound, ProtocolPeerMaxStreamsOutbound},
		{"protocol/peer streams", got.ProtocolPeerDefault.Streams, ProtocolPeerMaxStreams},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if got.PeerDefault.Memory != PeerMaxMemory {
		t.Errorf("peer memory = %d, want %d", got.PeerDefault.Memory, PeerMaxMemory)
	}
	// The node-wide limits are libp2p's own, scaled to this machine.
	ref := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&ref)
	want := ref.AutoScale().ToPartialLimitConfig()
	if got.System != want.System || got.Transient != want.Transient || got.Conn != want.Conn || got.Stream != want.Stream {
		t.Errorf("system/transient/conn/stream limits differ from libp2p's autoscaled defaults:\n got %+v %+v\nwant %+v %+v",
			got.System, got.Transient, want.System, want.Transient)
	}
	if len(got.Protocol) == 0 || len(got.Service) == 0 {
		t.Error("libp2p's service limits (identify, ping, ...) are missing")
	}
	// The raising recipe of the doc comment works.
	partial := DefaultResourceLimits().ToPartialLimitConfig()
	partial.PeerDefault.StreamsInbound = 1024
	raised := partial.Build(DefaultResourceLimits()).ToPartialLimitConfig()
	if raised.PeerDefault.StreamsInbound != 1024 || raised.PeerDefault.Streams != PeerMaxStreams {
		t.Errorf("raised peer limits = %+v", raised.PeerDefault)
	}
}

// holdHandler acknowledges one byte and then keeps the stream open until
// the other side closes or resets it.
func holdHandler(s network.Stream) {
	defer s.Close()
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		_ = s.Reset()
		return
	}
	if _, err := s.Write(b[:]); err != nil {
		_ = s.Reset()
		return
	}
	_, _ = io.Copy(io.Discard, s)
}

// openHeld opens a stream of proto from h to id and completes one round
// trip with holdHandler, so that a nil error means the remote resource
// manager admitted the stream (and its protocol) and the handler runs. It
// gives up after 10s unless ctx has a deadline of its own.
func openHeld(ctx context.Context, from *Node, to peer.ID, proto protocol.ID) (network.Stream, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	s, err := from.Peer().NewStream(ctx, to, proto)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = s.SetDeadline(deadline)
	if _, err := s.Write([]byte{1}); err != nil {
		_ = s.Reset()
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.SetDeadline(time.Time{})
	return s, nil
}

// inboundStreams returns how many inbound streams n's resource manager
// counts for peer id.
func inboundStreams(t *testing.T, n *Node, id peer.ID) int {
	t.Helper()
	var count int
	err := n.Peer().Network().ResourceManager().ViewPeer(id, func(ps network.PeerScope) error {
		count = ps.Stat().NumStreamsInbound
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return count
}

// TestPeerStreamCaps plays a hostile peer that opens streams and never
// closes them, against a node with the default limits: past
// ProtocolPeerMaxStreamsInbound streams on one protocol, and past
// PeerMaxStreamsInbound on all protocols together, its streams are refused,
// while another peer carries on normally. The attacker itself runs without
// limits, so every refusal comes from the node under attack.
func TestPeerStreamCaps(t *testing.T) {
	const (
		p1    = protocol.ID("/p2pnode-test/hold/1")
		p2    = protocol.ID("/p2pnode-test/hold/2")
		p3    = protocol.ID("/p2pnode-test/hold/3")
		extra = 16 // streams tried beyond a cap
	)
	target := newTestNode(t, Config{Discovery: memdisc.Nop{}})
	for _, p := range []protocol.ID{p1, p2, p3} {
		target.Peer().SetStreamHandler(p, holdHandler)
	}
	// Over TCP: QUIC grants a peer at most 256 concurrent streams per
	// connection by itself (libp2p's quic-go setting), and an opener beyond
	// that blocks instead of being refused.
	attacker := newTestNode(t, Config{Discovery: memdisc.Nop{}, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		ResourceLimits: &rcmgr.InfiniteLimits})
	honest := newTestNode(t, Config{Discovery: memdisc.Nop{}})
	ctx := context.Background()
	var tcpAddrs []multiaddr.Multiaddr
	for _, a := range target.Peer().Addrs() {
		if _, err := a.ValueForProtocol(multiaddr.P_TCP); err == nil {
			tcpAddrs = append(tcpAddrs, a)
		}
	}
	for _, n := range []*Node{attacker, honest} {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.Peer().Connect(cctx, peer.AddrInfo{ID: target.ID(), Addrs: tcpAddrs})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	var held []network.Stream
	t.Cleanup(func() {
		for _, s := range held {
			_ = s.Reset()
		}
	})
	// open tries n streams of proto and returns how many were admitted.
	open := func(proto protocol.ID, n int) (ok int) {
		t.Helper()
		for range n {
			s, err := openHeld(ctx, attacker, target.ID(), proto)
			if err != nil {
				var se *network.StreamError
				if errors.As(err, &se) && se.ErrorCode != network.StreamResourceLimitExceeded {
					t.Fatalf("stream refused with %v, want a resource limit error", err)
				}
				continue
			}
			held = append(held, s)
			ok++
		}
		return ok
	}

	// One protocol: the per-protocol cap.
	ok1 := open(p1, ProtocolPeerMaxStreamsInbound+extra)
	if ok1 != ProtocolPeerMaxStreamsInbound {
		t.Fatalf("%d streams of one protocol admitted, want the cap %d", ok1, ProtocolPeerMaxStreamsInbound)
	}
	// A second protocol fits within the per-peer cap ...
	room := PeerMaxStreamsInbound - ProtocolPeerMaxStreamsInbound
	ok2 := open(p2, room-extra)
	if ok2 != room-extra {
		t.Fatalf("%d of %d streams of a second protocol admitted", ok2, room-extra)
	}
	// ... and a third one runs into it.
	ok3 := open(p3, 2*extra)
	if ok3 > extra || ok3 < extra-2 {
		t.Fatalf("%d streams of a third protocol admitted, want about %d before the per-peer cap", ok3, extra)
	}
	if n := inboundStreams(t, target, attacker.ID()); n > PeerMaxStreamsInbound {
		t.Fatalf("the target counts %d inbound streams from the attacker, more than the cap %d", n, PeerMaxStreamsInbound)
	}
	t.Logf("attacker: %d of %d streams admitted", ok1+ok2+ok3, ProtocolPeerMaxStreamsInbound+room+2*extra)

	// Meanwhile another peer is served as usual.
	for _, p := range []protocol.ID{p1, p2, p3} {
		s, err := openHeld(ctx, honest, target.ID(), p)
		if err != nil {
			t.Fatalf("an honest peer cannot open a stream of %s: %v", p, err)
		}
		_ = s.Close()
	}

	// Streams the attacker closes give room back.
	for _, s := range held {
		_ = s.Close()
	}
	held = nil
	waitFor(t, 10*time.Second, "the attacker's streams to be released", func() bool {
		return inboundStreams(t, target, attacker.ID()) == 0
	})
	if ok := open(p1, 4); ok != 4 {
		t.Fatalf("after the release, %d of 4 streams admitted", ok)
	}
}

// TestLimitsAllowRaftTraffic opens, between two nodes with the default
// limits, what a busy Raft member needs on one peer: the transport's pooled
// streams in both directions, held, plus 64 concurrent request streams.
func TestLimitsAllowRaftTraffic(t *testing.T) {
	const (
		transport = protocol.ID("/p2pnode-test/transport")
		command   = protocol.ID("/p2pnode-test/command")
		pool      = 4 + 4 // pooled plus in flight
		requests  = 64
	)
	a := newTestNode(t, Config{Discovery: memdisc.Nop{}})
	b := newTestNode(t, Config{Discovery: memdisc.Nop{}})
	for _, n := range []*Node{a, b} {
		n.Peer().SetStreamHandler(transport, holdHandler)
		n.Peer().SetStreamHandler(command, holdHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Peer().Connect(ctx, b.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		held []network.Stream
		errs []error
		wg   sync.WaitGroup
	)
	defer func() {
		for _, s := range held {
			_ = s.Close()
		}
	}()
	start := func(from, to *Node, proto protocol.ID) {
		wg.Go(func() {
			s, err := openHeld(ctx, from, to.ID(), proto)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", proto, err))
				return
			}
			held = append(held, s)
		})
	}
	for range pool {
		start(a, b, transport)
		start(b, a, transport)
	}
	for range requests {
		start(a, b, command)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%d of %d streams failed: %v", len(errs), 2*pool+requests, err)
	}
}

// TestLimitsAllowMeshOf50 connects 50 nodes with the default limits in one
// process, each dialling all the earlier ones at once, and then has every
// node open a stream to every other, all at once, as a test mesh and a
// cluster forming in it would.
func TestLimitsAllowMeshOf50(t *testing.T) {
	if testing.Short() {
		t.Skip("50 libp2p hosts")
	}
	const (
		size  = 50
		proto = protocol.ID("/p2pnode-test/mesh")
	)
	nodes := make([]*Node, size)
	for i := range nodes {
		// TCP only, as rafttest meshes are by default.
		nodes[i] = newTestNode(t, Config{Discovery: memdisc.Nop{}, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
		nodes[i].Peer().SetStreamHandler(proto, holdHandler)
	}
	// Generous per-operation timeouts: 50 hosts in one process are slow to
	// connect under the race detector on a small machine, with or without
	// limits (rafttest allows 10s per dial; a dial here has many more running
	// at once).
	const timeout = 30 * time.Second
	var (
		mu   sync.Mutex
		errs []error
		held []network.Stream
		wg   sync.WaitGroup
	)
	defer func() {
		for _, s := range held {
			_ = s.Close()
		}
	}()
	// As rafttest.Mesh with Connected does: each node, once started, dials
	// all the nodes before it at once.
	for i := range nodes {
		for j := range i {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				err := nodes[i].Peer().Connect(ctx, nodes[j].AddrInfo())
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("connect %d to %d: %w", i, j, err))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%d of %d dials failed: %v", len(errs), size*(size-1)/2, err)
	}
	for i := range nodes {
		for j := range nodes {
			if i == j {
				continue
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				s, err := openHeld(ctx, nodes[i], nodes[j].ID(), proto)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("stream %d to %d: %w", i, j, err))
					return
				}
				held = append(held, s)
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%d of %d streams failed: %v", len(errs), size*(size-1), err)
	}
}
