package raft

// Tests of the wire format (wire.go): frames, the envelope of the codec, and
// the decoding of requests and answers, with no member behind them. What a
// member does with hostile input is in stream_test.go.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ---- frame builders ----

// uvarint is the msgio length prefix of n.
func uvarint(n uint64) []byte { return binary.AppendUvarint(nil, n) }

// framed is a complete frame: length prefix and body.
func framed(body []byte) []byte { return append(uvarint(uint64(len(body))), body...) }

// plainFrame frames a plaintext CBOR payload.
func plainFrame(payload []byte) []byte { return framed(append([]byte{envelopePlain}, payload...)) }

// cborOf encodes v with the default encoder (map[int]any gives integer keys,
// like the wire's keyasint fields).
func cborOf(t testing.TB, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatalf("cbor: %v", err)
	}
	return b
}

// fuzzSeeds are valid frames of every command plus some garbage.
func fuzzSeeds(tb testing.TB) [][]byte {
	id := []byte(peer.ID("12D3KooWGRUVh7ZpDQcjb6ygFVsGszDkN5dWvpnhTtE6hn5QjB7f"))
	reqs := []*request{
		{Cmd: cmdSet, Key: "k", Value: []byte("v"), Timeout: int64(time.Second)},
		{Cmd: cmdSet, Key: "a/b/../c", Value: bytes.Repeat([]byte{0}, 300), Timeout: 1, Forwarded: true},
		{Cmd: cmdGet, Key: "k"},
		{Cmd: cmdGet, Key: "ключ", Barrier: int64(2 * time.Second)},
		{Cmd: cmdDelete, Key: "k", Timeout: int64(time.Minute)},
		{Cmd: cmdKeys, Prefix: "a/"},
		{Cmd: cmdKeys},
		{Cmd: cmdJoinVoter, Peer: id, Timeout: int64(5 * time.Second)},
		{Cmd: cmdReadIndex, Timeout: int64(time.Second)},
		{Cmd: cmdExchangePeers, Peers: []wirePeer{{ID: id, Addrs: [][]byte{{4, 127, 0, 0, 1, 6, 0x10, 0x00}}, Age: 1500}}, Status: &status{Leader: id, Formed: true, Voters: 3, Member: true}},
		{Cmd: cmdExchangePeers},
		{Cmd: "unknown", Key: "k", Prefix: "p", Barrier: -1, Timeout: -1},
	}
	var seeds [][]byte
	for _, r := range reqs {
		body, err := codec{}.encode(r)
		if err != nil {
			tb.Fatalf("encode %+v: %v", r, err)
		}
		seeds = append(seeds, body)
	}
	return append(seeds,
		nil,
		[]byte{envelopePlain},
		[]byte{envelopeSealed},
		[]byte{envelopeSealed, 1, 2, 3},
		[]byte{7, 0xa0},
		[]byte{envelopePlain, 0xa0},
		[]byte{envelopePlain, 0xff},
		[]byte{envelopePlain, 0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		[]byte{envelopePlain, 0xa1, 0x01, 0xc0, 0x64, 'k', 'e', 'y', 's'},
		[]byte{envelopePlain, 0xa2, 0x01, 0x63, 's', 'e', 't', 0x01, 0x63, 'g', 'e', 't'},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	)
}

// FuzzDecodeRequest feeds arbitrary frame bodies to the member's decoding
// path (codec.open with and without a key, then decodeRequest), and to the
// client's answer decoding. Nothing may panic; a failure must be
// ErrInvalidCommand; and a request that decodes must re-encode to a stable
// form that decodes again (so a forwarded request means what it meant).
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	key, err := newSecretKey(bytes.Repeat([]byte{0x42}, MinKeySize), "/raft/fuzz")
	if err != nil {
		f.Fatal(err)
	}
	keyed := codec{key: key}
	// Sealed seeds: a real sealed request, so the keyed path gets past
	// authentication at least once.
	if b, err := keyed.encode(&request{Cmd: cmdGet, Key: "k"}); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		orig := bytes.Clone(frame)
		if plain, err := (codec{}).open(frame); err == nil {
			checkDecodeRequest(t, plain)
		}
		if plain, err := keyed.open(frame); err == nil {
			checkDecodeRequest(t, plain)
		}
		checkDecodeRequest(t, frame)
		// The client's side: a hostile member's answer.
		var resp response
		if wireDec.Unmarshal(frame, &resp) == nil {
			_ = resp.err()
		}
		if !bytes.Equal(frame, orig) {
			t.Fatalf("decoding modified its input")
		}
	})
}

func checkDecodeRequest(t *testing.T, b []byte) {
	req, err := decodeRequest(b)
	if err != nil {
		if !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("decode error %v is not ErrInvalidCommand", err)
		}
		if req != nil {
			t.Fatalf("decode error with a request")
		}
		return
	}
	// What a follower does when it forwards: copy and re-encode.
	fwd := *req
	fwd.Forwarded = true
	enc1, err := cborEnc.Marshal(&fwd)
	if err != nil {
		t.Fatalf("re-encode a decoded request: %v", err)
	}
	again, err := decodeRequest(enc1)
	if err != nil {
		t.Fatalf("a re-encoded request does not decode: %v\n%x", err, enc1)
	}
	enc2, err := cborEnc.Marshal(again)
	if err != nil {
		t.Fatalf("second re-encode: %v", err)
	}
	if !bytes.Equal(enc1, enc2) {
		t.Fatalf("re-encoding is not stable:\n%x\n%x", enc1, enc2)
	}
	// The checks the member runs on decoded fields must not panic either.
	_ = validateKey(req.Key)
	_ = validateBarrier(req.Barrier)
	_ = validateTimeout(time.Duration(req.Timeout))
	_, _ = peer.IDFromBytes(req.Peer)
}

// The seeds themselves decode to what was encoded.
func TestStreamCodecRoundTrip(t *testing.T) {
	for _, seed := range fuzzSeeds(t)[:12] {
		plain, err := codec{}.open(seed)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		req, err := decodeRequest(plain)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		body, err := codec{}.encode(req)
		if err != nil || !bytes.Equal(body, seed) {
			t.Fatalf("round trip of %+v changed the frame: %x vs %x (%v)", req, body, seed, err)
		}
	}
	// A keyed codec reads its own frames and refuses the others'.
	k1, _ := newSecretKey(bytes.Repeat([]byte{1}, MinKeySize), "/raft/a")
	k2, _ := newSecretKey(bytes.Repeat([]byte{2}, MinKeySize), "/raft/a")
	sealed, err := codec{key: k1}.encode(&request{Cmd: cmdKeys, Prefix: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := (codec{key: k1}).open(sealed); err != nil {
		t.Fatalf("open own frame: %v", err)
	} else if req, err := decodeRequest(plain); err != nil || req.Prefix != "p" {
		t.Fatalf("decode own frame: %+v %v", req, err)
	}
	if _, err := (codec{key: k2}).open(sealed); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("open with another key: %v, want ErrDecrypt", err)
	}
	if _, err := (codec{}).open(sealed); !errors.Is(err, ErrUnexpectedEncryption) {
		t.Fatalf("keyless open of a sealed frame: %v", err)
	}
	if _, err := (codec{key: k1}).open(fuzzSeeds(t)[0]); !errors.Is(err, ErrEncryptionRequired) {
		t.Fatalf("keyed open of a plain frame: %v", err)
	}
}
