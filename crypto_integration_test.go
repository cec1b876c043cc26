package raft

// Integration tests of WithEncryptionKey: real clusters on real libp2p hosts
// (rafttest meshes), the real transport (streamLayer + hashicorp's
// NetworkTransport) and the real command service. The unit tests of the
// cipher itself are in crypto_test.go.
//
// The helpers of this file are prefixed with "ei" (encryption integration);
// the cluster fixture they build on is in helpers_test.go.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/gostream"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/tauraft/raft/p2pnode"
	"github.com/tauraft/raft/rafttest"
)

// eiMarker returns label followed by 24 random hex digits: a string that can
// only appear on the wire if somebody sent it in the clear.
func eiMarker(t testing.TB, label string) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random marker: %v", err)
	}
	return label + "-" + hex.EncodeToString(b)
}

// eiLogBuf collects one member's log lines; safe for concurrent use.
type eiLogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *eiLogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *eiLogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logger returns an hclog logger writing warnings and errors into l.
func (l *eiLogBuf) logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "tauraft", Level: hclog.Warn, Output: l})
}

// hasLine reports whether one log line contains every one of subs.
func (l *eiLogBuf) hasLine(subs ...string) bool {
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// Three keyed nodes that know each other only through discovery form one
// cluster by themselves and replicate; a keyed client on a fourth node, which
// is no member, writes and reads through followers. A follower forwards both
// to the leader with its own keyed codec; since the leader refuses anything
// not sealed with the namespace key (ErrEncryptionRequired / ErrDecrypt),
// success proves the forwarded hop was encrypted too.
func TestEncryptedClusterForms(t *testing.T) {
	const ns = "/raft/enc-forms"
	secret := newSecret(t)
	mesh := rafttest.NewMesh(t, 4) // not connected: discovery only
	tc := newTestCluster(t, mesh, ns, WithEncryptionKey(secret))
	members := []int{0, 1, 2}

	start := time.Now()
	tc.form(15*time.Second, members...)
	tc.leader(15 * time.Second)
	t.Logf("3 keyed nodes formed one cluster in %v", time.Since(start))
	for _, i := range members {
		if tc.get(i).(*cluster).key == nil {
			t.Fatalf("node %d runs without an encryption key", i)
		}
	}

	tc.set("replicated", []byte("sealed on the wire"))
	for _, i := range members {
		tc.waitValue(i, "replicated", []byte("sealed on the wire"))
	}

	cl, err := NewClient(mesh.Node(3), ns, secret)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cl.Close() })

	value := []byte("written by a non-member through a follower")
	var via int
	tc.mustRetry("keyed client Set through a follower", 20*time.Second, notAppliedOrLost, func() error {
		via = tc.follower(tc.leader(15*time.Second), 0)
		return cl.Set("from-client", value, 5*time.Second, mesh.ID(via))
	})
	t.Logf("Set went through follower %d", via)
	for _, i := range members {
		tc.waitValue(i, "from-client", value)
	}

	var got []byte
	tc.mustRetry("keyed client barrier Get through a follower", 20*time.Second, notAppliedOrLost, func() error {
		via = tc.follower(tc.leader(15*time.Second), 1)
		v, ok, err := cl.Get("from-client", int64(3*time.Second), mesh.ID(via))
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("barrier read did not find the key")
		}
		got = v
		return nil
	})
	t.Logf("barrier Get went through follower %d", via)
	if !bytes.Equal(got, value) {
		t.Fatalf("barrier Get returned %q, want %q", got, value)
	}

	// The client's node is not a member.
	want := sortedIDs(mesh, members...)
	for _, i := range members {
		if got := voters(tc.get(i)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("node %d voters %v, want %v", i, got, want)
		}
	}
}

// eiHugeTerm is the term of forged Raft RPCs: if a member ever accepted one,
// its own term would jump to it.
const eiHugeTerm = uint64(1) << 40

// eiIdleListener is the listener of a dial-only stream layer: Accept blocks
// until Close. It lets a test drive a real NetworkTransport from a host that
// already serves the transport protocol (gostream.Listen would replace that
// host's handler).
type eiIdleListener struct {
	addr eiAddr
	done chan struct{}
	once sync.Once
}

func (l *eiIdleListener) Accept() (net.Conn, error) {
	<-l.done
	return nil, net.ErrClosed
}

func (l *eiIdleListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *eiIdleListener) Addr() net.Addr { return l.addr }

type eiAddr string

func (a eiAddr) Network() string { return "libp2p" }
func (a eiAddr) String() string  { return string(a) }

// eiDialOnlyTransport returns a NetworkTransport that dials TransportProtocol(ns)
// from h, through the real streamLayer.Dial, sealing with key (nil: plaintext).
func eiDialOnlyTransport(t testing.TB, h host.Host, ns string, key *secretKey) *hraft.NetworkTransport {
	t.Helper()
	layer := &streamLayer{
		host:     h,
		protocol: TransportProtocol(ns),
		listener: &eiIdleListener{addr: eiAddr(h.ID().String()), done: make(chan struct{})},
	}
	if key != nil {
		layer.secure = key.secureConn
	}
	trans := newNetworkTransport(layer, 3*time.Second, hclog.NewNullLogger())
	t.Cleanup(func() { _ = trans.Close() })
	return trans
}

// A node with another key and a node with no key, started in the namespace of
// a running keyed cluster: neither becomes a member nor makes the members
// count it as a live peer, neither can read, write, join or exchange peers
// through the command service (with the sentinel that names the cause), forged
// Raft RPCs from them are dropped, the members log the refusals, and the
// cluster keeps working.
func TestEncryptedRefusesOutsiders(t *testing.T) {
	const ns = "/raft/enc-outsiders"
	const wrongIdx, plainIdx = 3, 4
	secret, wrong := newSecret(t), newSecret(t)
	mesh := rafttest.NewMesh(t, 5)
	members := []int{0, 1, 2}
	want := sortedIDs(mesh, members...)
	logs := []*eiLogBuf{{}, {}, {}}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("member %d log:\n%s", i, l.String())
			}
		}
	})

	tc := newTestCluster(t, mesh, ns, WithEncryptionKey(secret))
	// Formation is TestEncryptedClusterForms' subject; here node 0 founds
	// the cluster at once and the others join it, which sidesteps the
	// overlapping-founders race (see TestBootstrapOverlappingFoundersConverge).
	if err := tc.startEach(members, func(i int) []Option {
		return append(forceFirst(i), WithLogger(logs[i].logger()))
	}); err != nil {
		t.Fatal(err)
	}
	tc.waitVoters(15*time.Second, members...)
	tc.set("before", []byte("v1"))

	wrongTC := newTestCluster(t, mesh, ns, WithEncryptionKey(wrong))
	plainTC := newTestCluster(t, mesh, ns)
	outsiders := []struct {
		name string
		tc   *testCluster
		idx  int
	}{{"wrong key", wrongTC, wrongIdx}, {"no key", plainTC, plainIdx}}
	startErrs := make([]error, len(outsiders))
	var started sync.WaitGroup
	for k, o := range outsiders {
		started.Add(1)
		go func() {
			defer started.Done()
			_, startErrs[k] = o.tc.start(o.idx)
		}()
	}
	// Even if the test fails early, let the starts finish before the
	// cleanups close the clusters.
	defer started.Wait()

	// check is the invariant: the members' configuration is exactly the
	// three, no member counts an outsider as a live peer (its status never
	// got through), and no outsider's configuration holds a member.
	check := func() {
		t.Helper()
		for _, i := range members {
			c := tc.get(i).(*cluster)
			if got := voters(c); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("member %d voters %v, want %v", i, shortIDs(got), shortIDs(want))
			}
			for _, v := range c.peers.view() {
				if (v.id == mesh.ID(wrongIdx) || v.id == mesh.ID(plainIdx)) && v.alive {
					t.Fatalf("member %d counts outsider %s as a live peer (status %+v)", i, shortID(v.id), v.status)
				}
			}
		}
		for _, o := range outsiders {
			if c := o.tc.get(o.idx); c != nil {
				for _, id := range voters(c) {
					if slices.Contains(want, id) {
						t.Fatalf("%s outsider's configuration holds member %s", o.name, shortID(id))
					}
				}
			}
		}
	}
	// Sample it through the outsiders' bootstrap window (their fastest
	// exchange pace) and a few exchange rounds after.
	until := time.Now().Add(testWindow + 3*time.Second)
	for time.Now().Before(until) {
		check()
		time.Sleep(rafttest.PollInterval)
	}
	started.Wait()
	for k, err := range startErrs {
		if err != nil {
			t.Fatalf("start %s outsider: %v", outsiders[k].name, err)
		}
	}
	check()

	// Every member refused both outsiders' exchanges, and said why.
	for _, i := range members {
		rafttest.WaitFor(t, 10*time.Second, fmt.Sprintf("member %d to log refusing the wrong-key outsider", i), func() bool {
			return logs[i].hasLine("refused", mesh.ID(wrongIdx).String(), ErrDecrypt.Error())
		})
		rafttest.WaitFor(t, 10*time.Second, fmt.Sprintf("member %d to log refusing the keyless outsider", i), func() bool {
			return logs[i].hasLine("refused", mesh.ID(plainIdx).String(), ErrEncryptionRequired.Error())
		})
	}

	// The command service refuses them whatever they ask, on every member,
	// follower or leader, with the sentinel naming the cause.
	wrongCl, err := NewClient(mesh.Node(wrongIdx), ns, wrong)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = wrongCl.Close() })
	plainCl, err := NewClient(mesh.Node(plainIdx), ns, nil)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = plainCl.Close() })
	clients := []struct {
		name string
		cl   *Client
		self peer.ID
		want error
	}{
		{"wrong key", wrongCl, mesh.ID(wrongIdx), ErrDecrypt},
		{"no key", plainCl, mesh.ID(plainIdx), ErrEncryptionRequired},
	}
	for _, cs := range clients {
		for _, i := range members {
			target := mesh.ID(i)
			calls := []struct {
				op  string
				err error
			}{
				{"Set", cs.cl.Set("outsider-write", []byte("x"), 2*time.Second, target)},
				{"Delete", cs.cl.Delete("before", 2*time.Second, target)},
				{"Get", thirdErr(cs.cl.Get("before", 0, target))},
				{"barrier Get", thirdErr(cs.cl.Get("before", int64(time.Second), target))},
				{"Keys", secondErr(cs.cl.Keys("", target))},
				{"JoinVoter", cs.cl.JoinVoter(cs.self, 2*time.Second, target)},
				{"ExchangePeers", secondErr(cs.cl.ExchangePeers(nil, target))},
			}
			for _, c := range calls {
				if !errors.Is(c.err, cs.want) {
					t.Errorf("%s client %s on member %d: got %v, want %v", cs.name, c.op, i, c.err, cs.want)
				}
			}
		}
		// Without targets (members found through discovery) too.
		if err := cs.cl.Set("outsider-write", []byte("x"), 2*time.Second); err == nil {
			t.Errorf("%s client Set without targets succeeded", cs.name)
		}
		if v, ok, err := cs.cl.Get("before", 0); err == nil || ok || v != nil {
			t.Errorf("%s client Get without targets: %q %v %v, want an error", cs.name, v, ok, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Forged Raft RPCs with a huge term, through the real transport, sealed
	// with the wrong key or not at all: every member drops the connection
	// and its term does not move.
	wrongKey, err := newSecretKey(wrong, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name string
		idx  int
		key  *secretKey
	}{{"wrong key", wrongIdx, wrongKey}, {"no key", plainIdx, nil}} {
		trans := eiDialOnlyTransport(t, mesh.Node(o.idx).Peer(), ns, o.key)
		self := []byte(mesh.ID(o.idx).String())
		hdr := hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: self, Addr: self}
		for _, i := range members {
			target := mesh.ID(i).String()
			var vr hraft.RequestVoteResponse
			err := trans.RequestVote(hraft.ServerID(target), hraft.ServerAddress(target),
				&hraft.RequestVoteRequest{RPCHeader: hdr, Term: eiHugeTerm, LastLogIndex: eiHugeTerm, LastLogTerm: eiHugeTerm, LeadershipTransfer: true}, &vr)
			if err == nil {
				t.Fatalf("member %d answered a RequestVote from the %s outsider: %+v", i, o.name, vr)
			}
			var ar hraft.AppendEntriesResponse
			err = trans.AppendEntries(hraft.ServerID(target), hraft.ServerAddress(target),
				&hraft.AppendEntriesRequest{RPCHeader: hdr, Term: eiHugeTerm}, &ar)
			if err == nil {
				t.Fatalf("member %d answered an AppendEntries from the %s outsider: %+v", i, o.name, ar)
			}
		}
	}
	for _, i := range members {
		r, err := tc.get(i).(*cluster).r()
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		if term := r.CurrentTerm(); term >= eiHugeTerm {
			t.Fatalf("member %d took the forged term: %d", i, term)
		}
		// The transport refusal is logged as an authentication failure.
		rafttest.WaitFor(t, 10*time.Second, fmt.Sprintf("member %d to log the refused transport connections", i), func() bool {
			return logs[i].hasLine("transport", ErrDecrypt.Error())
		})
	}
	check()

	// The cluster is unaffected: nothing the outsiders sent was applied, and
	// writes and linearizable reads by a keyed client still work (from the
	// wrong-key outsider's own host: the key decides, not the host).
	for _, i := range members {
		if v, ok := tc.get(i).Get("outsider-write"); ok {
			t.Fatalf("member %d holds the outsiders' write: %q", i, v)
		}
		tc.waitValue(i, "before", []byte("v1"))
	}
	tc.set("after", []byte("v2"))
	for _, i := range members {
		tc.waitValue(i, "after", []byte("v2"))
	}
	keyed, err := NewClient(mesh.Node(wrongIdx), ns, secret)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = keyed.Close() })
	tc.mustRetry("keyed client barrier Get", 20*time.Second, notAppliedOrLost, func() error {
		v, ok, err := keyed.Get("after", int64(3*time.Second), mesh.ID(tc.follower(tc.leader(15*time.Second), 0)))
		if err != nil {
			return err
		}
		if !ok || string(v) != "v2" {
			return fmt.Errorf("barrier Get returned %q %v, want v2", v, ok)
		}
		return nil
	})
	check()
}

// eiTap is a TCP proxy in front of one libp2p host that records every byte
// crossing it, each direction of each connection separately (so a string
// never straddles two recordings).
type eiTap struct {
	ln     net.Listener
	maddr  ma.Multiaddr
	target atomic.Pointer[string]

	mu     sync.Mutex
	recs   []*eiTapRec
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// eiTapRec is one direction of one proxied connection.
type eiTapRec struct {
	mu  sync.Mutex
	buf []byte
}

func (r *eiTapRec) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.buf = append(r.buf, p...)
	r.mu.Unlock()
	return len(p), nil
}

func newEiTap(t testing.TB) *eiTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tap listen: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	p := &eiTap{ln: ln, maddr: ma.StringCast("/ip4/127.0.0.1/tcp/" + strconv.Itoa(port))}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

func (p *eiTap) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		target := p.target.Load()
		if target == nil {
			_ = in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", *target, 5*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		up, down := &eiTapRec{}, &eiTapRec{}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.recs = append(p.recs, up, down)
		p.conns = append(p.conns, in, out)
		p.wg.Add(2)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn, rec *eiTapRec) {
			defer p.wg.Done()
			_, _ = io.Copy(io.MultiWriter(dst, rec), src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(out, in, up)
		go pipe(in, out, down)
	}
}

func (p *eiTap) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// count returns how many recordings contain s, and the bytes recorded.
func (p *eiTap) count(s []byte) (hits, total int) {
	p.mu.Lock()
	recs := slices.Clone(p.recs)
	p.mu.Unlock()
	for _, r := range recs {
		r.mu.Lock()
		if bytes.Contains(r.buf, s) {
			hits++
		}
		total += len(r.buf)
		r.mu.Unlock()
	}
	return hits, total
}

// eiTapCount sums count over every tap.
func eiTapCount(taps []*eiTap, s string) (hits, total int) {
	for _, p := range taps {
		h, n := p.count([]byte(s))
		hits += h
		total += n
	}
	return hits, total
}

// Nothing a user writes ever crosses the network in the clear.
//
// The mesh runs libp2p without channel security (libp2p.NoSecurity) and every
// host advertises only the address of a recording TCP proxy, so the proxies
// see exactly the bytes our two protocols put on the wire, around libp2p's
// plaintext framing. Two namespaces run on the same three hosts: a keyed one,
// whose key and value markers must never appear, and a plaintext control,
// whose markers must appear (proof that the recording sees Raft replication
// and command-service traffic). Each namespace gets one write that travels
// only through Raft replication and one that a client on a fourth node sends
// through a follower (command service, then forwarding, then replication).
func TestEncryptedNoPlaintextOnWire(t *testing.T) {
	const encNS, plainNS = "/raft/enc-wire", "/raft/enc-wire-control"
	secret := newSecret(t)

	// Codec level first: a sealed set request hides its key and value,
	// which the plaintext encoding does carry (sanity).
	t.Run("codec", func(t *testing.T) {
		k, err := newSecretKey(secret, encNS)
		if err != nil {
			t.Fatal(err)
		}
		key, val := eiMarker(t, "codec-key"), eiMarker(t, "codec-value")
		req := &request{Cmd: cmdSet, Key: key, Value: []byte(val), Timeout: int64(time.Second)}
		plain, err := codec{}.encode(req)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(plain, []byte(key)) || !bytes.Contains(plain, []byte(val)) {
			t.Fatalf("sanity: plaintext encoding lacks the markers")
		}
		sealed, err := codec{key: k}.encode(req)
		if err != nil {
			t.Fatal(err)
		}
		if sealed[0] != envelopeSealed {
			t.Fatalf("sealed envelope byte %d", sealed[0])
		}
		for _, m := range []string{key, val, key[len(key)-24:], val[len(val)-24:]} {
			if bytes.Contains(sealed, []byte(m)) {
				t.Fatalf("sealed request contains %q", m)
			}
		}
		if back, err := (codec{key: k}).open(sealed); err != nil || !bytes.Equal(back, plain[1:]) {
			t.Fatalf("sealed request does not open back: %v", err)
		}
	})

	const n = 4 // three members and a client node
	taps := make([]*eiTap, n)
	for i := range taps {
		taps[i] = newEiTap(t)
	}
	mesh := rafttest.NewMesh(t, n, rafttest.WithNodeConfig(func(i int, cfg *p2pnode.Config) {
		tap := taps[i].maddr
		cfg.Libp2pOptions = append(cfg.Libp2pOptions,
			libp2p.NoSecurity,
			libp2p.AddrsFactory(func([]ma.Multiaddr) []ma.Multiaddr { return []ma.Multiaddr{tap} }))
	}))
	for i := range n {
		var target string
		for _, a := range mesh.Node(i).Peer().Network().ListenAddresses() {
			if port, err := a.ValueForProtocol(ma.P_TCP); err == nil {
				target = "127.0.0.1:" + port
			}
		}
		if target == "" {
			t.Fatalf("node %d has no TCP listen address", i)
		}
		taps[i].target.Store(&target)
		if got := mesh.Node(i).Peer().Addrs(); len(got) != 1 || !got[0].Equal(taps[i].maddr) {
			t.Fatalf("node %d advertises %v, want only its tap %v", i, got, taps[i].maddr)
		}
	}

	members := []int{0, 1, 2}
	enc := newTestCluster(t, mesh, encNS, WithEncryptionKey(secret))
	ctl := newTestCluster(t, mesh, plainNS)
	// Node 0 founds both clusters at once and the others join, as in
	// TestEncryptedRefusesOutsiders.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for k, tc := range []*testCluster{enc, ctl} {
		wg.Go(func() { errs[k] = tc.startEach(members, forceFirst) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	enc.waitVoters(15*time.Second, members...)
	ctl.waitVoters(15*time.Second, members...)

	type marked struct{ key, value string }
	write := func(tc *testCluster, ns string, secret []byte, label string) (replicated, forwarded marked) {
		replicated = marked{eiMarker(t, label+"-raft-key"), eiMarker(t, label+"-raft-value")}
		forwarded = marked{eiMarker(t, label+"-client-key"), eiMarker(t, label+"-client-value")}
		tc.set(replicated.key, []byte(replicated.value))
		cl, err := NewClient(mesh.Node(3), ns, secret)
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		defer cl.Close()
		tc.mustRetry(label+" client Set through a follower", 20*time.Second, notAppliedOrLost, func() error {
			return cl.Set(forwarded.key, []byte(forwarded.value), 5*time.Second, mesh.ID(tc.follower(tc.leader(15*time.Second), 0)))
		})
		tc.mustRetry(label+" client barrier Get through a follower", 20*time.Second, notAppliedOrLost, func() error {
			v, ok, err := cl.Get(forwarded.key, int64(3*time.Second), mesh.ID(tc.follower(tc.leader(15*time.Second), 1)))
			if err == nil && (!ok || string(v) != forwarded.value) {
				err = fmt.Errorf("barrier Get returned %q %v", v, ok)
			}
			return err
		})
		for _, i := range members {
			tc.waitValue(i, replicated.key, []byte(replicated.value))
			tc.waitValue(i, forwarded.key, []byte(forwarded.value))
		}
		return replicated, forwarded
	}
	encR, encF := write(enc, encNS, secret, "secret")
	ctlR, ctlF := write(ctl, plainNS, nil, "control")

	// Sanity: the taps carry both protocols of the keyed namespace (their
	// names travel in multistream-select, outside our encryption), and the
	// control namespace's data in the clear.
	for _, s := range []string{string(TransportProtocol(encNS)), string(Protocol(encNS)) + "\n"} {
		rafttest.WaitFor(t, 5*time.Second, fmt.Sprintf("the taps to see protocol %q", s), func() bool {
			hits, _ := eiTapCount(taps, s)
			return hits > 0
		})
	}
	for _, m := range []string{ctlR.key, ctlR.value, ctlF.key, ctlF.value} {
		rafttest.WaitFor(t, 5*time.Second, fmt.Sprintf("the taps to see control marker %q", m), func() bool {
			hits, _ := eiTapCount(taps, m)
			return hits > 0
		})
	}

	// The keyed namespace's markers, or even their random parts, never.
	_, total := eiTapCount(taps, "")
	for _, m := range []string{encR.key, encR.value, encF.key, encF.value} {
		for _, s := range []string{m, m[len(m)-24:]} {
			if hits, _ := eiTapCount(taps, s); hits > 0 {
				t.Errorf("%q crossed the wire in the clear (%d recordings)", s, hits)
			}
		}
	}
	t.Logf("taps recorded %d bytes", total)
}

// A recorded transport stream (three frames) is replayed over a real libp2p
// stream between two hosts, altered in one way per case. The receiving
// secureConn delivers exactly the frames before the damage, then fails with
// ErrDecrypt, keeps failing, and drops the connection: the sender sees its
// stream closed.
func TestEncryptedTamperDropsConnection(t *testing.T) {
	const ns = "/raft/enc-tamper"
	proto := protocol.ID("/tauraft-test/enc-tamper")
	k, err := newSecretKey(newSecret(t), ns)
	if err != nil {
		t.Fatal(err)
	}
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	sender, receiver := mesh.Node(0).Peer(), mesh.Node(1).Peer()
	ln, err := gostream.Listen(receiver, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })

	// Record three frames of 100 plaintext bytes each.
	msgs := make([][]byte, 3)
	for i := range msgs {
		msgs[i] = bytes.Repeat([]byte{byte('a' + i)}, 100)
	}
	rec := captureSecureStream(t, k, msgs...)
	const fsize = frameHeaderSize + 100 + gcmTagSize
	if want := transportSaltSize + 3*fsize; len(rec) != want {
		t.Fatalf("recorded %d bytes, want %d", len(rec), want)
	}
	frame := func(i int) (start, end int) { // i from 1
		start = transportSaltSize + (i-1)*fsize
		return start, start + fsize
	}
	flip := func(off int, bit byte) func([]byte) []byte {
		return func(b []byte) []byte { b[off] ^= bit; return b }
	}
	f1s, f1e := frame(1)
	f2s, f2e := frame(2)
	f3s, f3e := frame(3)

	cases := []struct {
		name      string
		mutate    func([]byte) []byte
		delivered int // intact messages before the failure
		intact    bool
	}{
		{"intact", func(b []byte) []byte { return b }, 3, true},
		{"salt bit", flip(7, 0x01), 0, false},
		{"frame 2 length high bit", flip(f2s, 0x80), 1, false},
		{"frame 2 length low bit", flip(f2s+3, 0x01), 1, false},
		{"frame 2 ciphertext bit", flip(f2s+frameHeaderSize+50, 0x10), 1, false},
		{"frame 2 tag bit", flip(f2e-1, 0x01), 1, false},
		{"frame 3 tag bit", flip(f3e-1, 0x80), 2, false},
		{"frame 2 dropped", func(b []byte) []byte { return slices.Delete(b, f2s, f2e) }, 1, false},
		{"frame 1 replayed", func(b []byte) []byte { return slices.Insert(b, f1e, b[f1s:f1e]...) }, 1, false},
		{"frames 2 and 3 swapped", func(b []byte) []byte {
			return slices.Concat(b[:f2s], b[f3s:f3e], b[f2s:f2e])
		}, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wire := tc.mutate(slices.Clone(rec))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw, err := gostream.Dial(ctx, sender, receiver.ID(), proto)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer raw.Close()
			if _, err := raw.Write(wire); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.intact {
				_ = raw.Close()
			}
			accepted, err := ln.Accept()
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			defer accepted.Close()
			conn, err := k.secureConn(accepted)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			var got []byte
			var rerr error
			buf := make([]byte, 4096)
			for rerr == nil {
				var n int
				n, rerr = conn.Read(buf)
				got = append(got, buf[:n]...)
			}
			if want := slices.Concat(msgs[:tc.delivered]...); !bytes.Equal(got, want) {
				t.Fatalf("delivered %d bytes (%.20q...), want exactly the %d intact messages (%d bytes)", len(got), got, tc.delivered, len(want))
			}
			if tc.intact {
				if !errors.Is(rerr, io.EOF) {
					t.Fatalf("intact stream ended with %v, want io.EOF", rerr)
				}
				return
			}
			if !errors.Is(rerr, ErrDecrypt) {
				t.Fatalf("tampered stream ended with %v, want ErrDecrypt", rerr)
			}
			// Sticky: the stream cannot be trusted past a bad frame.
			if n, err := conn.Read(buf); n != 0 || !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Read after the failure: %d, %v; want 0, ErrDecrypt", n, err)
			}
			// Dropped: the sender's stream is closed under it (EOF or
			// reset, not a timeout).
			_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := raw.Read(buf)
			if err == nil || isTimeout(err) {
				t.Fatalf("sender's stream still open after the failure: read %d, %v", n, err)
			}
		})
	}
}

// eiBenchTransport measures AppendEntries RPCs of 64 entries of 100 bytes
// through hashicorp's NetworkTransport over our streamLayer between two
// libp2p hosts on 127.0.0.1, with or without the secure hook.
func eiBenchTransport(b *testing.B, encrypted bool) {
	const ns = "/raft/enc-bench"
	const entries, entrySize = 64, 100
	mesh := rafttest.NewMesh(b, 2, rafttest.Connected())
	proto := TransportProtocol(ns)
	var key *secretKey
	if encrypted {
		var err error
		if key, err = newSecretKey(newSecret(b), ns); err != nil {
			b.Fatal(err)
		}
	}
	trans := make([]*hraft.NetworkTransport, 2)
	for i := range trans {
		var lc layerConfig
		if key != nil {
			lc.secure = key.secureConn
		}
		layer := newStreamLayer(mesh.Node(i).Peer(), proto, lc)
		trans[i] = newNetworkTransport(layer, 10*time.Second, hclog.NewNullLogger())
		tr := trans[i]
		b.Cleanup(func() { _ = tr.Close() })
	}
	done := make(chan struct{})
	var served sync.WaitGroup
	served.Add(1)
	go func() {
		defer served.Done()
		for {
			select {
			case rpc := <-trans[1].Consumer():
				req, ok := rpc.Command.(*hraft.AppendEntriesRequest)
				if !ok {
					rpc.Respond(nil, fmt.Errorf("unexpected %T", rpc.Command))
					continue
				}
				rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, LastLog: uint64(len(req.Entries)), Success: true}, nil)
			case <-done:
				return
			}
		}
	}()
	b.Cleanup(func() { close(done); served.Wait() })

	logs := make([]*hraft.Log, entries)
	for i := range logs {
		data := make([]byte, entrySize)
		_, _ = rand.Read(data)
		logs[i] = &hraft.Log{Index: uint64(i + 1), Term: 1, Type: hraft.LogCommand, Data: data}
	}
	self := []byte(mesh.ID(0).String())
	req := &hraft.AppendEntriesRequest{
		RPCHeader: hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: self, Addr: self},
		Term:      1,
		Entries:   logs,
	}
	target := mesh.ID(1).String()
	send := func() {
		var resp hraft.AppendEntriesResponse
		if err := trans[0].AppendEntries(hraft.ServerID(target), hraft.ServerAddress(target), req, &resp); err != nil {
			b.Fatalf("AppendEntries: %v", err)
		}
		if !resp.Success || resp.LastLog != entries {
			b.Fatalf("AppendEntries answered %+v", resp)
		}
	}
	send() // open and pool the connection outside the measurement

	b.SetBytes(entries * entrySize)
	b.ReportAllocs()
	for b.Loop() {
		send()
	}
}

func BenchmarkTransportEncrypted(b *testing.B) { eiBenchTransport(b, true) }
func BenchmarkTransportPlain(b *testing.B)     { eiBenchTransport(b, false) }
