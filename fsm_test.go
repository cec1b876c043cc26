package raft

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// ApplyBatch must give the same state whichever parser reads a command.
func TestApplyBatchFastAndSlowPathsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	fast, err := newKVStore(dssync.MutexWrap(datastore.NewMapDatastore()), "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	slow, err := newKVStore(dssync.MutexWrap(datastore.NewMapDatastore()), "/raft/t/data")
	if err != nil {
		t.Fatal(err)
	}
	var fastLogs, slowLogs []*hraft.Log
	for i := range 200 {
		ops := randomOps(rng, 1+rng.IntN(4))
		for j := range ops {
			ops[j].Key = ops[j].Key[:min(len(ops[j].Key), 3)] // collide
		}
		b, err := EncodeCommand(ops...)
		if err != nil {
			t.Fatal(err)
		}
		fastLogs = append(fastLogs, &hraft.Log{Index: uint64(i + 1), Type: hraft.LogCommand, Data: b})
		// The same command with a non-shortest array head: valid CBOR that
		// only decodeCommand reads.
		slowB := append([]byte{0x98, 0x02}, b[1:]...)
		if walkCommand(slowB, nil) {
			t.Fatal("walkCommand read a non-canonical head")
		}
		slowLogs = append(slowLogs, &hraft.Log{Index: uint64(i + 1), Type: hraft.LogCommand, Data: slowB})
	}
	for _, r := range fast.ApplyBatch(fastLogs) {
		if resp, ok := r.(*FSMResponse); ok && resp.Error != nil {
			t.Fatal(resp.Error)
		}
	}
	for _, r := range slow.ApplyBatch(slowLogs) {
		if resp, ok := r.(*FSMResponse); ok && resp.Error != nil {
			t.Fatal(resp.Error)
		}
	}
	fk, err := fast.keys("")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := slow.keys("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fk, sk) || len(fk) == 0 {
		t.Fatalf("keys differ: %q vs %q", fk, sk)
	}
	for _, k := range fk {
		fv, fok, ferr := fast.get(k)
		sv, sok, serr := slow.get(k)
		if ferr != nil || serr != nil || fok != sok || !bytes.Equal(fv, sv) {
			t.Fatalf("%q: %q vs %q", k, fv, sv)
		}
	}
}

// BenchmarkApplyBatch is one member's state machine applying batches of 64
// single-key writes of 100 bytes.
func BenchmarkApplyBatch(b *testing.B) {
	f, err := newKVStore(dssync.MutexWrap(datastore.NewMapDatastore()), "/raft/bench/data")
	if err != nil {
		b.Fatal(err)
	}
	val := make([]byte, 100)
	logs := make([]*hraft.Log, 64)
	idx := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		for i := range logs {
			idx++
			cmd, _ := EncodeCommand(SetOp("bench/"+strconv.Itoa(int(idx%100000)), val))
			logs[i] = &hraft.Log{Index: idx, Type: hraft.LogCommand, Data: cmd}
		}
		f.ApplyBatch(logs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(logs)), "ns/write")
}
