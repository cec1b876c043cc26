package raft

// Tests of the command encoding (command.go): EncodeCommand, the fast parser
// walkCommand and the reflection decoder decodeCommand.

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// randomOps builds a command's operations: mixed kinds, nil, empty
// and large values, keys up to MaxKeySize including non-UTF-8 bytes.
func randomOps(rng *rand.Rand, n int) []Op {
	ops := make([]Op, 0, n)
	for range n {
		klen := 1 + rng.IntN(40)
		if rng.IntN(20) == 0 {
			klen = 1 + rng.IntN(MaxKeySize)
		}
		key := strings.Repeat(string(rune('a'+rng.IntN(26))), klen)
		switch rng.IntN(6) {
		case 0:
			key = "é☃" + key
		case 1:
			key = "\xff\x00" + key
		}
		if len(key) > MaxKeySize {
			key = key[:MaxKeySize]
		}
		switch rng.IntN(4) {
		case 0:
			ops = append(ops, DeleteOp(key))
		case 1:
			ops = append(ops, SetOp(key, nil))
		case 2:
			ops = append(ops, SetOp(key, []byte{}))
		default:
			vlen := rng.IntN(300)
			if rng.IntN(50) == 0 {
				vlen = rng.IntN(70000)
			}
			v := make([]byte, vlen)
			for i := range v {
				v[i] = byte(rng.Uint32())
			}
			ops = append(ops, SetOp(key, v))
		}
	}
	return ops
}

// checkWalk asserts that the fast parser never disagrees with the
// reflection decoder: whatever walkCommand accepts, decodeCommand accepts
// with the same operations. (What it refuses falls back to decodeCommand.)
func checkWalk(t *testing.T, b []byte) {
	t.Helper()
	cmd, derr := decodeCommand(b)
	if !walkCommand(b, nil) {
		return
	}
	if derr != nil {
		t.Fatalf("walkCommand accepted what decodeCommand rejects (%v): % x", derr, b)
	}
	var ops []commandOp
	walkCommand(b, func(kind uint8, key, value []byte) {
		ops = append(ops, commandOp{Kind: kind, Key: string(key), Value: bytes.Clone(value)})
	})
	norm := func(in []commandOp) []commandOp {
		out := make([]commandOp, len(in))
		for i, op := range in {
			out[i] = commandOp{Kind: op.Kind, Key: op.Key, Value: op.Value}
			if len(op.Value) == 0 {
				out[i].Value = nil // nil and empty values are both "set to empty"
			}
		}
		return out
	}
	if !reflect.DeepEqual(norm(ops), norm(cmd.Ops)) {
		t.Fatalf("walkCommand and decodeCommand read different operations from % x", b)
	}
}

func TestEncodeCommandMatchesCBOR(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for it := range 3000 {
		n := 1 + rng.IntN(3)
		if it%100 == 0 {
			n = 1 + rng.IntN(300)
		}
		ops := randomOps(rng, n)
		got, err := EncodeCommand(ops...)
		if err != nil {
			t.Fatal(err)
		}
		cops := make([]commandOp, len(ops))
		for i, op := range ops {
			kind := opSet
			if op.Delete {
				kind = opDelete
			}
			cops[i] = commandOp{Kind: kind, Key: op.Key, Value: op.Value}
		}
		want, err := cborEnc.Marshal(&command{Version: commandVersion, Ops: cops})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("run %d: EncodeCommand differs from the canonical CBOR encoding for %d ops", it, n)
		}
		if !walkCommand(got, nil) {
			t.Fatalf("run %d: walkCommand refuses what EncodeCommand wrote", it)
		}
		checkWalk(t, got)
		for range 20 {
			m := bytes.Clone(got)
			switch rng.IntN(3) {
			case 0:
				m[rng.IntN(len(m))] ^= byte(1 << rng.IntN(8))
			case 1:
				m = m[:rng.IntN(len(m))]
			default:
				m = append(m, byte(rng.Uint32()))
			}
			checkWalk(t, m)
		}
	}
}

func TestWalkCommandRefusesNonCanonical(t *testing.T) {
	valid, err := EncodeCommand(SetOp("k", []byte("v")))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":                   nil,
		"long-form array head":    append([]byte{0x98, 0x02}, valid[1:]...),
		"wrong version":           append([]byte{0x82, 0x02}, valid[2:]...),
		"no operations":           {0x82, 0x01, 0x80},
		"indefinite array":        {0x82, 0x01, 0x9f, 0x83, 0x01, 0x61, 'k', 0x41, 'v', 0xff},
		"unknown kind":            {0x82, 0x01, 0x81, 0x83, 0x18, 0xc8, 0x61, 'k', 0x41, 'v'},
		"empty key":               {0x82, 0x01, 0x81, 0x83, 0x01, 0x60, 0x41, 'v'},
		"delete with value":       {0x82, 0x01, 0x81, 0x83, 0x02, 0x61, 'k', 0x41, 'v'},
		"key as bytes":            {0x82, 0x01, 0x81, 0x83, 0x01, 0x41, 'k', 0x41, 'v'},
		"trailing byte":           append(bytes.Clone(valid), 0),
		"length past the end":     {0x82, 0x01, 0x81, 0x83, 0x01, 0x61, 'k', 0x45, 'v'},
		"huge count":              {0x82, 0x01, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"non-shortest key length": {0x82, 0x01, 0x81, 0x83, 0x01, 0x78, 0x01, 'k', 0x41, 'v'},
	}
	for name, b := range cases {
		if walkCommand(b, nil) {
			t.Errorf("%s: walkCommand accepted % x", name, b)
		}
		checkWalk(t, b)
	}
}

func FuzzWalkCommand(f *testing.F) {
	for _, ops := range [][]Op{
		{SetOp("k", []byte("v"))},
		{SetOp("a", nil), DeleteOp("b"), SetOp("\xff", []byte{})},
		{SetOp(strings.Repeat("k", 300), make([]byte, 300))},
	} {
		b, err := EncodeCommand(ops...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkWalk(t, b) })
}

// BenchmarkCommandValidate is the leader's check of a command before it is
// replicated, on the fast parser and on the reflection decoder it replaced.
func BenchmarkCommandValidate(b *testing.B) {
	cmd, err := EncodeCommand(SetOp("bench/12345", make([]byte, 100)))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("walk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !walkCommand(cmd, nil) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("reflect", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeCommand(cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// mustCommand encodes ops with EncodeCommand, failing the test on error.
func mustCommand(t testing.TB, ops ...Op) []byte {
	t.Helper()
	b, err := EncodeCommand(ops...)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}
