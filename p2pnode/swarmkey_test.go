package p2pnode

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/tauraft/raft/memdisc"
)

const testHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func TestNewSwarmKey(t *testing.T) {
	k1, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(k1), "\n")
	if len(lines) != 4 || lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/" || len(lines[2]) != 64 || lines[3] != "" {
		t.Fatalf("NewSwarmKey() = %q, want the three-line base16 format", k1)
	}
	psk, err := ParseSwarmKey(k1)
	if err != nil {
		t.Fatalf("ParseSwarmKey(NewSwarmKey()): %v", err)
	}
	// The same bytes as go-libp2p's own decoder reads.
	want, err := pnet.DecodeV1PSK(bytes.NewReader(k1))
	if err != nil || !bytes.Equal(psk, want) || len(psk) != 32 {
		t.Fatalf("parsed %x, pnet.DecodeV1PSK %x (%v)", psk, want, err)
	}
	k2, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k1, k2) {
		t.Fatal("two generated swarm keys are equal")
	}
}

func TestParseSwarmKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	for _, tc := range []struct {
		name, data string
	}{
		{"base16, no final newline (ipfs-swarm-key-gen)", "/key/swarm/psk/1.0.0/\n/base16/\n" + testHex},
		{"base16, final newline", "/key/swarm/psk/1.0.0/\n/base16/\n" + testHex + "\n"},
		{"base16, CRLF", "/key/swarm/psk/1.0.0/\r\n/base16/\r\n" + testHex + "\r\n"},
		{"base64", "/key/swarm/psk/1.0.0/\n/base64/\n" + base64.StdEncoding.EncodeToString(raw) + "\n"},
		{"bin", "/key/swarm/psk/1.0.0/\n/bin/\n" + string(raw)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			psk, err := ParseSwarmKey([]byte(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if len(psk) != 32 {
				t.Fatalf("key of %d bytes", len(psk))
			}
		})
	}

	for _, tc := range []struct {
		name, data, want string
	}{
		{"empty", "", "the first line is not"},
		{"an identity file", "\x08\x01\x12\x40garbage", "the first line is not"},
		{"wrong header", "/key/swarm/psk/2.0.0/\n/base16/\n" + testHex, "the first line is not"},
		{"unknown encoding", "/key/swarm/psk/1.0.0/\n/base32/\n" + testHex, "unknown encoding"},
		{"header only", "/key/swarm/psk/1.0.0/\n", "32-byte key"},
		{"short", "/key/swarm/psk/1.0.0/\n/base16/\n" + testHex[:40] + "\n", "32-byte key"},
		{"long", "/key/swarm/psk/1.0.0/\n/base16/\n" + testHex + "00\n", "got 66 characters"},
		{"trailing junk", "/key/swarm/psk/1.0.0/\n/base16/\n" + testHex + "\nmore\n", "64 hex digits"},
		{"not hex", "/key/swarm/psk/1.0.0/\n/base16/\n" + strings.Repeat("zz", 32) + "\n", "invalid byte"},
		{"short base64", "/key/swarm/psk/1.0.0/\n/base64/\n" + base64.StdEncoding.EncodeToString(raw[:16]) + "\n", "32-byte key"},
		{"long base64", "/key/swarm/psk/1.0.0/\n/base64/\n" + base64.StdEncoding.EncodeToString(append(raw, raw...)) + "\n", "base64 encoding of 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSwarmKey([]byte(tc.data))
			if !errors.Is(err, ErrInvalidSwarmKey) {
				t.Fatalf("error %v, want ErrInvalidSwarmKey", err)
			}
			if !strings.HasPrefix(err.Error(), "p2pnode: invalid swarm key: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to start with p2pnode: invalid swarm key: and mention %q", err, tc.want)
			}
			// A file given by mistake may hold another secret.
			if strings.Contains(err.Error(), "garbage") || strings.Contains(err.Error(), "2.0.0") {
				t.Fatalf("error %q quotes the file", err)
			}
		})
	}
}

func TestReadSwarmKeyFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "swarm.key")
	data, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if psk, err := ReadSwarmKeyFile(good); err != nil || len(psk) != 32 {
		t.Fatalf("ReadSwarmKeyFile = %x, %v", psk, err)
	}

	missing := filepath.Join(dir, "missing.key")
	if _, err := ReadSwarmKeyFile(missing); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalidSwarmKey) {
		t.Fatalf("missing file: %v, want a not-exist error", err)
	}

	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("/key/swarm/psk/1.0.0/\n/base16/\nabc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ReadSwarmKeyFile(bad)
	if !errors.Is(err, ErrInvalidSwarmKey) || !strings.Contains(err.Error(), bad) || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("bad file: %q, want one line wrapping ErrInvalidSwarmKey that names the file", err)
	}
}

func TestNewRejectsBadSwarmConfig(t *testing.T) {
	psk := mustPSK(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"short key", Config{SwarmKey: pnet.PSK("too short")}, "32 bytes"},
		{"QUIC listen address", Config{SwarmKey: psk, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}}, "QUIC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Discovery = memdisc.Nop{}
			n, err := New(context.Background(), tc.cfg)
			if err == nil {
				_ = n.Close()
				t.Fatal("New accepted the configuration")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// TestPrivateNetwork checks that only nodes with the same swarm key connect:
// a node without one and a node with another key can neither dial a member
// of the private network nor be dialled by it.
func TestPrivateNetwork(t *testing.T) {
	const proto = protocol.ID("/p2pnode-test/pnet-echo/1.0.0")
	key := mustPSK(t)
	a := newTestNode(t, Config{SwarmKey: key, Discovery: memdisc.Nop{}})
	b := newTestNode(t, Config{SwarmKey: key, Discovery: memdisc.Nop{}})
	public := newTestNode(t, Config{Discovery: memdisc.Nop{}})
	other := newTestNode(t, Config{SwarmKey: mustPSK(t), Discovery: memdisc.Nop{}})

	// With a swarm key, the default listen addresses are TCP only.
	for _, n := range []*Node{a, b, other} {
		if len(n.Addrs()) == 0 {
			t.Fatalf("%s listens nowhere", n.ID())
		}
		for _, addr := range n.Addrs() {
			if s := addr.String(); !strings.HasPrefix(s, "/ip4/127.0.0.1/tcp/") {
				t.Errorf("private node listens on %s, want loopback TCP only", s)
			}
		}
	}

	b.Peer().SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		_, _ = io.Copy(s, s)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Peer().Connect(ctx, b.AddrInfo()); err != nil {
		t.Fatalf("two nodes with the same swarm key: connect: %v", err)
	}
	s, err := a.Peer().NewStream(ctx, b.ID(), proto)
	if err != nil {
		t.Fatalf("new stream: %v", err)
	}
	msg := []byte("inside the private network")
	if _, err := s.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}

	for _, pair := range []struct {
		name     string
		from, to *Node
	}{
		{"public to private", public, a},
		{"private to public", a, public},
		{"other key to private", other, a},
		{"private to other key", a, other},
	} {
		t.Run(pair.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := pair.from.Peer().Connect(ctx, pair.to.AddrInfo()); err == nil {
				t.Fatal("connected across private network boundaries")
			}
			if c := pair.from.Peer().Network().Connectedness(pair.to.ID()); c == network.Connected {
				t.Error("the dialling side is connected after the failed dial")
			}
			if c := pair.to.Peer().Network().Connectedness(pair.from.ID()); c == network.Connected {
				t.Error("the dialled side is connected after the failed dial")
			}
		})
	}
	if ps := public.Peer().Network().Peers(); len(ps) != 0 {
		t.Errorf("the public node is connected to %v", ps)
	}
}

func mustPSK(t *testing.T) pnet.PSK {
	t.Helper()
	data, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	psk, err := ParseSwarmKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return psk
}
