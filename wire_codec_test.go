package raft

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// randomRequest fills the fields the hand-written codec handles, each
// present or not, with edge values among the random ones.
func randomRequest(rng *rand.Rand) *request {
	pick := func() bool { return rng.IntN(2) == 0 }
	bs := func() []byte {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		b := make([]byte, rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	str := func() string { return string(bs()) }
	i64 := func() int64 {
		switch rng.IntN(6) {
		case 0:
			return 0
		case 1:
			return math.MinInt64
		case 2:
			return math.MaxInt64
		case 3:
			return -int64(rng.IntN(300))
		}
		return rng.Int64() >> rng.IntN(64)
	}
	u64 := func() uint64 {
		if pick() {
			return 0
		}
		return rng.Uint64() >> rng.IntN(64)
	}
	req := &request{Cmd: []string{cmdSet, cmdGet, "", "x"}[rng.IntN(4)]}
	if pick() {
		req.Key = str()
	}
	req.Value, req.Peer, req.Client, req.Command, req.WatchID = bs(), bs(), bs(), bs(), bs()
	if pick() {
		req.Prefix = str()
	}
	req.Timeout, req.Barrier = i64(), i64()
	req.Forwarded = pick()
	req.Seq, req.After, req.Lease = u64(), u64(), u64()
	return req
}

func randomResponse(rng *rand.Rand) *response {
	req := randomRequest(rng)
	resp := &response{
		Code: uint16(rng.IntN(3) * rng.IntN(70000)), Message: req.Key, Value: req.Value,
		Found: rng.IntN(2) == 0, Index: req.Seq, OK: req.Forwarded, CreateIndex: req.After,
		ModIndex: req.Lease, Lease: req.Seq >> 3, Through: req.After >> 5, Item: req.Lease >> 7,
		Claimed: rng.IntN(2) == 0,
	}
	for range rng.IntN(4) {
		resp.Keys = append(resp.Keys, string(req.Peer))
	}
	return resp
}

// The encoders write exactly the bytes cborEnc does, and the decoders read
// them back as wireDec does.
func TestWireCodecMatchesCBOR(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		req := randomRequest(rng)
		want, err := cborEnc.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendRequest(nil, req)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("request %d %+v:\n got %x %v\nwant %x", i, req, got, err, want)
		}
		checkRequestDecode(t, got)
		var fast request
		if !parseRequest(got, &fast) {
			t.Fatalf("request %d: canonical form not taken by the fast path: %x", i, got)
		}

		resp := randomResponse(rng)
		want, err = cborEnc.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got, err = appendResponse(nil, resp)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("response %d %+v:\n got %x %v\nwant %x", i, resp, got, err, want)
		}
		checkResponseDecode(t, got)
		var fastResp response
		if !parseResponse(got, &fastResp) {
			t.Fatalf("response %d: canonical form not taken by the fast path: %x", i, got)
		}
	}
	// Messages with nested fields go to cborEnc, whole.
	for _, v := range []any{
		&request{Cmd: cmdExchangePeers, Peers: []wirePeer{{ID: []byte("p"), Age: 3}}, Kinds: []uint8{1, 2}},
		&response{Peers: []wirePeer{{ID: []byte("p")}}, Status: &status{Voters: 3}, Index: 9},
		&response{Events: []wireEvent{{}}, Through: 4},
		&request{Cmd: cmdExchangePeers, SawCluster: new(int64(1500))},
		&response{SawCluster: new(int64(0)), Index: 2},
	} {
		want, _ := cborEnc.Marshal(v)
		var got []byte
		switch m := v.(type) {
		case *request:
			got, err := appendRequest([]byte{7}, m)
			if err != nil || !bytes.Equal(got, append([]byte{7}, want...)) {
				t.Errorf("%+v: %x %v, want %x", m, got, err, want)
			}
			continue
		case *response:
			got, _ = appendResponse(nil, m)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%+v: %x, want %x", v, got, want)
		}
	}
}

// Forms the fast path does not take are decoded by wireDec: the values and
// the errors are wireDec's.
func TestWireCodecFallback(t *testing.T) {
	for _, hex := range [][]byte{
		{0xa2, 0x02, 0x61, 'k', 0x01, 0x63, 's', 'e', 't'},                       // keys out of order
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x18, 0x63, 0x01},                      // an unknown field
		{0xa1, 0x01, 0x78, 0x03, 's', 'e', 't'},                                  // a head longer than needed
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x03, 0x40},                            // an empty Value
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x03, 0xf6},                            // a null Value
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x02, 0x41, 'k'},                       // Key as a byte string
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x01, 0x61, 'x'},                       // a duplicate key
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x0d, 0x20},                            // a negative Seq
		{0xa2, 0x01, 0x63, 's', 'e', 't', 0x05, 0x3b, 0xff, 0, 0, 0, 0, 0, 0, 0}, // Timeout overflows
		{0xa1, 0x01, 0x63, 's', 'e', 't', 0x00},                                  // trailing bytes
		{0xbf, 0x01, 0x63, 's', 'e', 't', 0xff},                                  // indefinite length
		{0xa1, 0x01, 0x63, 's', 'e'},                                             // cut short
		{0xa1, 0x01, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},       // a length past the end
		{},
	} {
		checkRequestDecode(t, hex)
		checkResponseDecode(t, hex)
	}
}

// checkRequestDecode compares decodeRequest with wireDec on b.
func checkRequestDecode(t testing.TB, b []byte) {
	t.Helper()
	var want request
	werr := wireDec.Unmarshal(b, &want)
	got, err := decodeRequest(bytes.Clone(b))
	if (err != nil) != (werr != nil) {
		t.Fatalf("%x: decodeRequest %v, wireDec %v", b, err, werr)
	}
	if err == nil && !reflect.DeepEqual(*got, want) {
		t.Fatalf("%x: decodeRequest %+v, wireDec %+v", b, *got, want)
	}
}

// checkResponseDecode compares decodeResponse with wireDec on b.
func checkResponseDecode(t testing.TB, b []byte) {
	t.Helper()
	var want, got response
	werr := wireDec.Unmarshal(b, &want)
	err := decodeResponse(bytes.Clone(b), &got)
	if (err != nil) != (werr != nil) {
		t.Fatalf("%x: decodeResponse %v, wireDec %v", b, err, werr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%x: decodeResponse %+v, wireDec %+v", b, got, want)
	}
}

// The hand-written decoders accept, decode and refuse exactly what
// wireDec does, whatever the bytes.
func FuzzFastDecodeRequest(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 16 {
		b, _ := appendRequest(nil, randomRequest(rng))
		f.Add(b)
	}
	f.Add([]byte{0xa2, 0x01, 0x63, 's', 'e', 't', 0x03, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRequestDecode(t, b)
	})
}

func FuzzFastDecodeResponse(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 16 {
		b, _ := appendResponse(nil, randomResponse(rng))
		f.Add(b)
	}
	f.Add([]byte{0xa1, 0x05, 0x82, 0x61, 'a', 0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkResponseDecode(t, b)
	})
}

// The encoders write cborEnc's bytes for any values of the fields they
// handle.
func FuzzFastEncode(f *testing.F) {
	f.Add("set", "k", []byte("v"), int64(5), int64(-1), uint64(7), true, []byte("client"))
	f.Fuzz(func(t *testing.T, cmd, key string, value []byte, timeout, barrier int64, seq uint64, fwd bool, client []byte) {
		req := &request{Cmd: cmd, Key: key, Value: value, Prefix: key, Timeout: timeout, Barrier: barrier,
			Peer: client, Forwarded: fwd, Client: client, Seq: seq, Command: value, After: seq / 3, WatchID: value, Lease: seq / 5}
		want, err := cborEnc.Marshal(req)
		if err != nil {
			t.Skip()
		}
		got, err := appendRequest(nil, req)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%+v: %x %v, want %x", req, got, err, want)
		}
		resp := &response{Code: uint16(seq), Message: cmd, Value: value, Found: fwd, Keys: []string{key},
			Index: seq, OK: !fwd, CreateIndex: uint64(timeout), ModIndex: uint64(barrier), Lease: seq >> 1,
			Through: seq >> 2, Item: seq >> 3, Claimed: fwd}
		want, _ = cborEnc.Marshal(resp)
		got, err = appendResponse(nil, resp)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%+v: %x %v, want %x", resp, got, err, want)
		}
	})
}
