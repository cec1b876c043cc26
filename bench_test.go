//go:build unix

package raft

// The comparison suite of BENCHMARKS.md: this library against plain
// hashicorp/raft (TCP transport, raft-boltdb), each pair measured side by
// side in one run. Three members in one process on 127.0.0.1, 100-byte
// values. Nothing here runs without -bench. The figures of BENCHMARKS.md
// come from (about 2 minutes on 2 cores):
//
//	go test -run '^$' -bench 'Compare|Formation|Failover' -benchtime 20000x -count 3 .
//
// -benchtime 2000x runs too (and -bench . adds the package's micro
// benchmarks), but 2000 writes at tens of thousands per second last tens of
// milliseconds, which a loaded machine turns into noise.
//
// Each comparison is one parent benchmark that builds every side's cluster
// once; its leaves (writers64: b.N writes per side over 64 concurrent
// writers; sequential: b.N writes per side one after the other) run the
// sides in turn, chunk by chunk, and report per side throughput, p50 and p99
// latency, CPU time and allocations per write, and the ratios of the pairs,
// all from the same run (see benchCompare). Cluster setup is never measured.
// Formation and failover are fixed small loops of rounds, independent of
// b.N.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/tauraft/raft/rafttest"
)

const (
	// benchNodes is the size of every cluster that is written to.
	benchNodes = 3
	// benchValueSize is the size of every written value.
	benchValueSize = 100
	// benchWriters is the concurrency of the throughput benchmarks.
	benchWriters = 64
	// benchWriteTimeout bounds one write.
	benchWriteTimeout = 10 * time.Second
	// benchSetupTimeout bounds the formation of a cluster under test.
	benchSetupTimeout = 30 * time.Second
	// benchWindow is the bootstrap window of the formation benchmark.
	benchWindow = 2 * time.Second
	// benchFormationRounds and benchFailoverRounds are the fixed number of
	// clusters formed, and leaders closed, per benchmark run.
	benchFormationRounds = 2
	benchFailoverRounds  = 4
	// benchPoll is how often formation and failover check for their end.
	benchPoll = 2 * time.Millisecond
)

// benchValue is the value of every write (shared, never modified).
var benchValue = func() []byte {
	v := make([]byte, benchValueSize)
	_, _ = rand.Read(v)
	return v
}()

// benchRaftConfig is the Raft configuration of every raw hashicorp cluster
// here: the one cluster.start gives the library's own clusters on
// PresetLocal, so both sides of a pair differ only in what is compared.
func benchRaftConfig(id hraft.ServerID) *hraft.Config {
	rc := hraft.DefaultConfig()
	rc.LocalID = id
	t := PresetLocal.Timeouts()
	t.apply(rc)
	rc.TrailingLogs = t.SnapshotThreshold
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	rc.Logger = hclog.NewNullLogger()
	return rc
}

// ---- Measurement ----

// benchSide is one side of a comparison: a name and one write.
type benchSide struct {
	name string
	op   func(i int) error
	// retries counts writes retried on another leader (leadership moved).
	retries *atomic.Int64
}

// benchRatio names a pair of sides: ours / theirs.
type benchRatio struct{ ours, theirs string }

// benchChunk is how many writes each side runs in a turn. The sides take
// turns chunk by chunk (in alternating order: A B, B A, ...) until each has
// run b.N writes, so changes of load on the machine (other processes) weigh
// on all of them alike.
const benchChunk = 1000

// benchSideStats accumulates one side's chunks.
type benchSideStats struct {
	lat     []time.Duration
	elapsed time.Duration
	cpu     time.Duration
	mallocs uint64
	bytes   uint64
}

// benchCompare runs b.N writes on every side, writers at a time (1 =
// sequential), the sides interleaved in chunks, and reports per side
// NAME-ops/s (throughput), NAME-p50-us and NAME-p99-us (per-write latency),
// NAME-cpu-us/op (process CPU time per write, user + system), NAME-allocs/op
// and NAME-B/op (allocations per write); the last three count the whole
// process: all three members, both ends of every RPC, and the idle other
// sides' heartbeats. For every pair it reports ops-x:OURS/THEIRS (throughput
// ratio, higher is better) and p50-x:, p99-x:, cpu-x: (latency and CPU
// ratios, lower is better). ns/op would mix the sides and is suppressed.
//
// TAURAFT_BENCH_SIDES=a,b (a comma-separated list of side names) runs only
// those sides, for profiling one of them; ratios with a missing side are
// left out.
func benchCompare(b *testing.B, writers int, sides []benchSide, ratios []benchRatio) {
	b.Helper()
	if only := os.Getenv("TAURAFT_BENCH_SIDES"); only != "" {
		keep := strings.Split(only, ",")
		sides = slices.DeleteFunc(slices.Clone(sides), func(s benchSide) bool { return !slices.Contains(keep, s.name) })
		if len(sides) == 0 {
			b.Skipf("TAURAFT_BENCH_SIDES=%s selects no side", only)
		}
	}
	stats := make([]benchSideStats, len(sides))
	retries0 := make([]int64, len(sides))
	for i, s := range sides {
		retries0[i] = s.retries.Load()
	}
	var m0, m1 runtime.MemStats
	for chunk, done := 0, 0; done < b.N; chunk++ {
		n := min(benchChunk, b.N-done)
		for k := range sides {
			si := k
			if chunk%2 == 1 {
				si = len(sides) - 1 - k
			}
			// Start every turn on a collected heap, so that no side pays
			// for the garbage of the one before it.
			runtime.GC()
			var ru0, ru1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			runtime.ReadMemStats(&m0)
			lat, elapsed, err := benchRun(writers, done, n, sides[si].op)
			runtime.ReadMemStats(&m1)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			if err != nil {
				b.Fatalf("%s: %v", sides[si].name, err)
			}
			st := &stats[si]
			st.lat = append(st.lat, lat...)
			st.elapsed += elapsed
			st.cpu += cpu
			st.mallocs += m1.Mallocs - m0.Mallocs
			st.bytes += m1.TotalAlloc - m0.TotalAlloc
		}
		done += n
	}
	b.StopTimer()
	res := map[string]benchResult{}
	for i, s := range sides {
		st := &stats[i]
		slices.Sort(st.lat)
		r := benchResult{
			opsPerSec: float64(len(st.lat)) / st.elapsed.Seconds(),
			p50:       benchPercentile(st.lat, 0.50),
			p99:       benchPercentile(st.lat, 0.99),
			cpuPerOp:  st.cpu.Seconds() / float64(b.N),
		}
		res[s.name] = r
		b.ReportMetric(r.opsPerSec, s.name+"-ops/s")
		b.ReportMetric(float64(r.p50)/1e3, s.name+"-p50-us")
		b.ReportMetric(float64(r.p99)/1e3, s.name+"-p99-us")
		b.ReportMetric(float64(st.cpu)/float64(b.N)/1e3, s.name+"-cpu-us/op")
		b.ReportMetric(float64(st.mallocs)/float64(b.N), s.name+"-allocs/op")
		if n := s.retries.Load() - retries0[i]; n > 0 {
			// Leadership moved during the run: the figures include an election.
			b.ReportMetric(float64(n), s.name+"-retries")
		}
		b.ReportMetric(float64(st.bytes)/float64(b.N), s.name+"-B/op")
	}
	b.ReportMetric(0, "ns/op")
	for _, p := range ratios {
		o, ok1 := res[p.ours]
		t, ok2 := res[p.theirs]
		if !ok1 || !ok2 {
			continue
		}
		tag := ":" + p.ours + "/" + p.theirs
		b.ReportMetric(o.opsPerSec/t.opsPerSec, "ops-x"+tag)
		b.ReportMetric(float64(o.p50)/float64(t.p50), "p50-x"+tag)
		b.ReportMetric(float64(o.p99)/float64(t.p99), "p99-x"+tag)
		b.ReportMetric(o.cpuPerOp/t.cpuPerOp, "cpu-x"+tag)
	}
}

// benchResult is what one side measured.
type benchResult struct {
	opsPerSec float64
	p50, p99  time.Duration
	cpuPerOp  float64 // seconds
}

// benchRun runs writes first..first+n-1 of op over writers goroutines and
// returns their latencies and the wall time they took.
func benchRun(writers, first, n int, op func(i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	var (
		next     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range min(writers, n) {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(first + i); err != nil {
					err = fmt.Errorf("write %d: %w", first+i, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if p := firstErr.Load(); p != nil {
		return nil, 0, *p
	}
	return lat, elapsed, nil
}

// benchPercentile is the nearest-rank percentile of sorted durations.
func benchPercentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// ---- Raw hashicorp/raft clusters ----

// benchFSM is the trivial state machine of the raw clusters.
type benchFSM struct{ applied atomic.Uint64 }

func (f *benchFSM) Apply(*hraft.Log) any                 { f.applied.Add(1); return nil }
func (f *benchFSM) Snapshot() (hraft.FSMSnapshot, error) { return benchSnapshot{}, nil }
func (f *benchFSM) Restore(rc io.ReadCloser) error       { return rc.Close() }

// benchKVFSM is the state machine a user of plain hashicorp/raft would
// write for the library's key-value store: each entry is a key and a value
// (benchKVEntry), and every batch of entries is one datastore Batch under a
// prefix of the same datastore the stores use. No command format, no key
// encoding, no applied index: the library's layer without the library.
type benchKVFSM struct{ ds datastore.Batching }

func (f *benchKVFSM) Apply(l *hraft.Log) any { return f.ApplyBatch([]*hraft.Log{l})[0] }

func (f *benchKVFSM) ApplyBatch(logs []*hraft.Log) []any {
	ctx := context.Background()
	out := make([]any, len(logs))
	batch, err := f.ds.Batch(ctx)
	if err != nil {
		panic(err)
	}
	for _, l := range logs {
		if l.Type != hraft.LogCommand {
			continue
		}
		n := int(l.Data[0])
		key, value := l.Data[1:1+n], l.Data[1+n:]
		if err := batch.Put(ctx, datastore.RawKey("/raft/bench/kv/"+string(key)), bytes.Clone(value)); err != nil {
			panic(err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		panic(err)
	}
	return out
}

func (f *benchKVFSM) Snapshot() (hraft.FSMSnapshot, error) { return benchSnapshot{}, nil }
func (f *benchKVFSM) Restore(rc io.ReadCloser) error       { return rc.Close() }

// benchKVEntry is the log entry benchKVFSM reads: key length, key, value.
func benchKVEntry(i int) []byte {
	key := benchKey(i)
	return append(append([]byte{byte(len(key))}, key...), benchValue...)
}

type benchSnapshot struct{}

func (benchSnapshot) Persist(sink hraft.SnapshotSink) error { return sink.Close() }
func (benchSnapshot) Release()                              {}

// benchTransport is one member's transport and identity.
type benchTransport struct {
	trans *hraft.NetworkTransport
	id    hraft.ServerID
	addr  hraft.ServerAddress
}

// benchTCPTransports makes n hashicorp TCP transports on 127.0.0.1, pooled
// like ours.
func benchTCPTransports(b *testing.B, n int) []benchTransport {
	out := make([]benchTransport, n)
	for i := range out {
		tr, err := hraft.NewTCPTransportWithLogger("127.0.0.1:0", nil, transportPoolSize, 10*time.Second, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		out[i] = benchTransport{trans: tr, id: hraft.ServerID(fmt.Sprintf("node-%d", i)), addr: tr.LocalAddr()}
	}
	return out
}

// benchLibp2pTransports makes the library's transport (NetworkTransport on
// our streamLayer) on n connected libp2p hosts on 127.0.0.1 (TCP, with
// libp2p's own security and yamux), as cluster.start does.
func benchLibp2pTransports(b *testing.B, n int, ns string) []benchTransport {
	mesh := rafttest.NewMesh(b, n, rafttest.Connected())
	out := make([]benchTransport, n)
	for i := range out {
		layer := newStreamLayer(mesh.Node(i).Peer(), TransportProtocol(ns), layerConfig{})
		tr := newNetworkTransport(layer, transportTimeout(PresetLocal.Timeouts()), hclog.NewNullLogger())
		id := mesh.ID(i).String()
		out[i] = benchTransport{trans: tr, id: hraft.ServerID(id), addr: hraft.ServerAddress(id)}
	}
	return out
}

// benchStores are one member's Raft stores and how to close them.
type benchStores struct {
	ds     datastore.Batching // the datastore under logs and stable, if any
	logs   hraft.LogStore
	stable hraft.StableStore
	snaps  hraft.SnapshotStore
	close  func() error
}

func benchInmemStores(*testing.B, string) benchStores {
	s := hraft.NewInmemStore()
	return benchStores{logs: s, stable: s, snaps: hraft.NewInmemSnapshotStore(), close: func() error { return nil }}
}

// benchDatastoreStores puts our LogStore and StableStore on ds, as the
// library does (benchLibraryStores).
func benchDatastoreStores(b *testing.B, dir string, ds datastore.Batching, closeDS func() error) benchStores {
	logs, err := NewLogStore(ds, "/raft/bench/log")
	if err != nil {
		b.Fatal(err)
	}
	s := benchLibraryStores(b, dir, logs, NewStableStore(ds, "/raft/bench/stable"), closeDS)
	s.ds = ds
	return s
}

// benchLibraryStores puts logs behind the LogCache cluster.start uses, with a
// file snapshot store in dir as in the library.
func benchLibraryStores(b *testing.B, dir string, logs hraft.LogStore, stable hraft.StableStore, closeStores func() error) benchStores {
	cache, err := hraft.NewLogCache(512, logs)
	if err != nil {
		b.Fatal(err)
	}
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(dir, SnapshotRetain, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	return benchStores{logs: cache, stable: stable, snaps: snaps, close: closeStores}
}

// benchMapStores: our stores on the in-memory datastore p2pnode gives a node
// without DataDir.
func benchMapStores(b *testing.B, dir string) benchStores {
	return benchDatastoreStores(b, dir, dssync.MutexWrap(datastore.NewMapDatastore()), func() error { return nil })
}

// benchPebbleStores: our stores on pebble with every write synced, as
// p2pnode opens it for a DataDir.
func benchPebbleStores(b *testing.B, dir string) benchStores {
	ds, err := pebbleds.NewDatastore(filepath.Join(dir, "pebble"), pebbleds.WithPebbleWriteOptions(pebble.Sync))
	if err != nil {
		b.Fatal(err)
	}
	return benchDatastoreStores(b, dir, ds, ds.Close)
}

// benchBoltStores: raft-boltdb/v2 (fsync on every commit, its default) as
// log and stable store, behind the same LogCache.
func benchBoltStores(b *testing.B, dir string) benchStores {
	bs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		b.Fatal(err)
	}
	return benchLibraryStores(b, dir, bs, bs, bs.Close)
}

// benchRaw is a running raw hashicorp/raft cluster.
type benchRaw struct {
	// entry is the data of write i.
	entry func(i int) []byte
	rafts []*hraft.Raft
	trans []benchTransport
	// prefilled is set once prefill ran.
	prefilled bool
	stores    []benchStores
	leader    atomic.Pointer[hraft.Raft]
	retries   atomic.Int64
}

// benchStartRaw starts a raw cluster with the trivial FSM on the given
// transports and stores, bootstraps it, waits for a leader and warms it up.
// It is shut down when b ends. Each member's stores get a directory of their
// own. Every write is the same benchValue.
func benchStartRaw(b *testing.B, trans []benchTransport, stores func(b *testing.B, dir string) benchStores) *benchRaw {
	return benchStartRawFSM(b, trans, stores, func(benchStores) hraft.FSM { return &benchFSM{} }, func(int) []byte { return benchValue })
}

// benchStartRawFSM is benchStartRaw with a state machine per member (made
// from that member's stores) and the data of write i.
func benchStartRawFSM(b *testing.B, trans []benchTransport, stores func(b *testing.B, dir string) benchStores, fsm func(benchStores) hraft.FSM, entry func(i int) []byte) *benchRaw {
	// Made before the shutdown cleanup is registered, so that it is removed
	// after the stores are closed (cleanups run last in, first out).
	base := b.TempDir()
	c := &benchRaw{trans: trans, entry: entry}
	b.Cleanup(c.shutdown)
	var conf hraft.Configuration
	for _, t := range trans {
		conf.Servers = append(conf.Servers, hraft.Server{Suffrage: hraft.Voter, ID: t.id, Address: t.addr})
	}
	for i, t := range trans {
		dir := filepath.Join(base, strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		s := stores(b, dir)
		c.stores = append(c.stores, s)
		r, err := hraft.NewRaft(benchRaftConfig(t.id), fsm(s), s.logs, s.stable, s.snaps, t.trans)
		if err != nil {
			b.Fatal(err)
		}
		c.rafts = append(c.rafts, r)
		if err := r.BootstrapCluster(conf).Error(); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.findLeader(); err != nil {
		b.Fatal(err)
	}
	// Warm up: open the pooled connections and fill the log cache.
	benchWarmUp(b, c.apply)
	return c
}

// findLeader waits for a leader that has committed an entry of its term.
func (c *benchRaw) findLeader() error {
	deadline := time.Now().Add(benchSetupTimeout)
	for {
		for _, r := range c.rafts {
			if r.State() == hraft.Leader && r.Barrier(benchSetupTimeout).Error() == nil {
				c.leader.Store(r)
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("no leader elected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// apply writes entry i through the leader, following leadership if it
// moves (which a loaded machine can cause; the retry is counted).
func (c *benchRaw) apply(i int) error {
	data := c.entry(i)
	for attempt := 0; ; attempt++ {
		err := c.leader.Load().Apply(data, benchWriteTimeout).Error()
		if err == nil || attempt == 10 || !(errors.Is(err, hraft.ErrNotLeader) || errors.Is(err, hraft.ErrLeadershipLost)) {
			return err
		}
		c.retries.Add(1)
		if err := c.findLeader(); err != nil {
			return err
		}
	}
}

func (c *benchRaw) side(name string) benchSide {
	return benchSide{name: name, op: c.apply, retries: &c.retries}
}

// shutdown stops every member at once (so the followers do not hold
// elections while the others stop), closes the pooled connections that
// Shutdown leaves open, then the stores.
func (c *benchRaw) shutdown() {
	var wg sync.WaitGroup
	for _, r := range c.rafts {
		wg.Go(func() { _ = r.Shutdown().Error() })
	}
	wg.Wait()
	for _, t := range c.trans {
		t.trans.CloseStreams()
		_ = t.trans.Close()
	}
	for _, s := range c.stores {
		_ = s.close()
	}
}

// benchWarmUp runs a few concurrent writes before measuring.
func benchWarmUp(b *testing.B, op func(i int) error) {
	var wg sync.WaitGroup
	errs := make([]error, benchWriters)
	for w := range benchWriters {
		wg.Go(func() {
			for range 4 {
				if err := op(w); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal("warm-up: ", err)
	}
}

// ---- 1. Transport ----

// BenchmarkCompareTransport: our libp2p transport (NetworkTransport over
// streamLayer) against raft.NewTCPTransport, both on raft.InmemStore, in a
// 3-member raw hashicorp cluster with a trivial FSM. A second, identical TCP
// cluster (tcp2) is a control: tcp2/tcp shows the noise floor of the ratios
// on this machine in this run.
func BenchmarkCompareTransport(b *testing.B) {
	tcp := benchStartRaw(b, benchTCPTransports(b, benchNodes), benchInmemStores)
	p2p := benchStartRaw(b, benchLibp2pTransports(b, benchNodes, "/raft/bench-transport"), benchInmemStores)
	tcp2 := benchStartRaw(b, benchTCPTransports(b, benchNodes), benchInmemStores)
	sides := []benchSide{
		tcp.side("tcp"), p2p.side("libp2p"), tcp2.side("tcp2"),
	}
	ratios := []benchRatio{{"libp2p", "tcp"}, {"tcp2", "tcp"}}
	b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, sides, ratios) })
	b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, sides, ratios) })
}

// ---- 2. Log store ----

// BenchmarkCompareLogStore: our LogStore (and StableStore) on pebble with
// synced writes against raft-boltdb/v2, both on the TCP transport. The
// writers64 leaf measures freshly created stores; writers64-warm measures
// them again after benchPrefill has written benchPrefillBytes through each
// cluster, the state of a store that has been running for a while (pebble
// has rotated its write-ahead log and reuses the old files, bolt has grown
// its file and reuses freed pages).
func BenchmarkCompareLogStore(b *testing.B) {
	bolt := benchStartRaw(b, benchTCPTransports(b, benchNodes), benchBoltStores)
	peb := benchStartRaw(b, benchTCPTransports(b, benchNodes), benchPebbleStores)
	sides := []benchSide{
		bolt.side("boltdb"), peb.side("pebble"),
	}
	ratios := []benchRatio{{"pebble", "boltdb"}}
	b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, sides, ratios) })
	b.Run("writers64-warm", func(b *testing.B) {
		b.StopTimer()
		for _, c := range []*benchRaw{bolt, peb} {
			if err := c.prefill(); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		benchCompare(b, benchWriters, sides, ratios)
	})
}

// benchPrefillBytes is what prefill writes: past two of pebble's default
// 4 MiB memtables, so that its write-ahead log has been rotated twice and the
// file of the first one is reused (overwriting a file needs no metadata
// update on fdatasync, appending to a new one does).
const benchPrefillBytes = 12 << 20

// prefill writes benchPrefillBytes in 4 KiB entries from 64 writers, once
// per cluster (later calls do nothing).
func (c *benchRaw) prefill() error {
	if c.prefilled {
		return nil
	}
	c.prefilled = true
	value := make([]byte, 4<<10)
	_, _ = rand.Read(value)
	_, _, err := benchRun(benchWriters, 0, benchPrefillBytes/len(value), func(int) error {
		return c.leader.Load().Apply(value, benchWriteTimeout).Error()
	})
	return err
}

// ---- 3. End to end ----

// benchClusterOpts are the options of every library cluster here.
func benchClusterOpts(b *testing.B, extra ...Option) []Option {
	opts := []Option{
		WithTimeoutPreset(PresetLocal),
		WithBootstrapTimeout(benchWindow),
		WithSnapshotDir(b.TempDir()),
		WithLogger(hclog.NewNullLogger()),
	}
	return append(opts, extra...)
}

// benchAgreed reports the leader that every cluster in cs names, when they
// all name the same one and it says it leads, with want voters each.
func benchAgreed(cs []Cluster, want int) (Cluster, bool) {
	var agreed peer.ID
	var leader Cluster
	for _, c := range cs {
		l, err := c.Leader()
		if err != nil || (agreed != "" && l != agreed) {
			return nil, false
		}
		agreed = l
		ms, err := c.Members()
		if err != nil {
			return nil, false
		}
		voters := 0
		for _, m := range ms {
			if m.Suffrage == hraft.Voter {
				voters++
			}
		}
		if voters != want {
			return nil, false
		}
	}
	for _, c := range cs {
		if cl, ok := c.(*cluster); ok && cl.self == agreed && c.IsLeader() {
			leader = c
		}
	}
	return leader, leader != nil
}

// benchWaitAgreed polls benchAgreed until it holds or timeout passes.
func benchWaitAgreed(cs []Cluster, want int, timeout time.Duration) (Cluster, error) {
	deadline := time.Now().Add(timeout)
	for {
		if l, ok := benchAgreed(cs, want); ok {
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no agreed leader with %d voters after %v", want, timeout)
		}
		time.Sleep(benchPoll)
	}
}

// benchLib is a running library cluster: its members and current leader.
type benchLib struct {
	all     []Cluster
	leader  atomic.Value // Cluster
	retries atomic.Int64
}

// set writes value i through the leader with Cluster.Set, following
// leadership if it moves (the retry is counted).
func (c *benchLib) set(i int) error {
	for attempt := 0; ; attempt++ {
		err := c.leader.Load().(Cluster).Set(benchKey(i), benchValue, benchWriteTimeout)
		if err == nil || attempt == 10 || !(errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost)) {
			return err
		}
		c.retries.Add(1)
		l, err := benchWaitAgreed(c.all, len(c.all), benchSetupTimeout)
		if err != nil {
			return err
		}
		c.leader.Store(l)
	}
}

func (c *benchLib) side(name string) benchSide {
	return benchSide{name: name, op: c.set, retries: &c.retries}
}

// txn writes value i through the leader with a Cluster.Txn that sets a key
// of its own if its ModIndex is 0 (absent): the cost of a condition and of
// the result over Set.
func (c *benchLib) txn(i int) error {
	key := "txn/" + benchKey(i)
	for attempt := 0; ; attempt++ {
		_, err := c.leader.Load().(Cluster).Txn(Txn{If: []Cond{IfModIndex(key, 0)}, Then: []Op{SetOp(key, benchValue)}}, benchWriteTimeout)
		if err == nil || attempt == 10 || !(errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost)) {
			return err
		}
		c.retries.Add(1)
		l, err := benchWaitAgreed(c.all, len(c.all), benchSetupTimeout)
		if err != nil {
			return err
		}
		c.leader.Store(l)
	}
}

func (c *benchLib) txnSide(name string) benchSide {
	return benchSide{name: name, op: c.txn, retries: &c.retries}
}

// benchStartCluster forms a 3-member library cluster on in-memory datastores:
// node 0 with WithForceBootstrap, the others joining it through the
// bootstrap protocol. The clusters are closed when b ends, before the mesh.
func benchStartCluster(b *testing.B, mesh *rafttest.Mesh, ns string, extra ...Option) *benchLib {
	var (
		mu sync.Mutex
		cs []Cluster
	)
	b.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			_ = c.Close()
		}
	})
	add := func(c Cluster) {
		mu.Lock()
		cs = append(cs, c)
		mu.Unlock()
	}
	first, err := New(mesh.Node(0), ns, benchClusterOpts(b, append([]Option{WithForceBootstrap()}, extra...)...)...)
	if err != nil {
		b.Fatal(err)
	}
	add(first)
	ctx, cancel := context.WithTimeout(context.Background(), benchSetupTimeout)
	defer cancel()
	if err := first.WaitForLeader(ctx); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, mesh.Len())
	for i := 1; i < mesh.Len(); i++ {
		wg.Go(func() {
			c, err := New(mesh.Node(i), ns, benchClusterOpts(b, extra...)...)
			if err != nil {
				errs[i] = err
				return
			}
			add(c)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	mu.Lock()
	all := slices.Clone(cs)
	mu.Unlock()
	leader, err := benchWaitAgreed(all, mesh.Len(), benchSetupTimeout)
	if err != nil {
		b.Fatal(err)
	}
	if err := leader.Barrier(benchSetupTimeout); err != nil {
		b.Fatal(err)
	}
	lib := &benchLib{all: all}
	lib.leader.Store(leader)
	return lib
}

// benchKey is the key of write i.
func benchKey(i int) string { return "bench/" + strconv.Itoa(i) }

// BenchmarkCompareEndToEnd: Cluster.Set on the leader of a library cluster
// (in-memory datastore, PresetLocal) against raw hashicorp/raft with the same
// stores (our LogStore and StableStore on the same in-memory datastore, the
// same LogCache and file snapshot store), the same transport and the same
// Raft configuration, but a trivial FSM and no library layer; and Cluster.Set
// with encryption on against off; and Cluster.Txn (one condition, one set)
// against Cluster.Set on the same cluster.
func BenchmarkCompareEndToEnd(b *testing.B) {
	raw := benchStartRaw(b, benchLibp2pTransports(b, benchNodes, "/raft/bench-raw"), benchMapStores)
	rawKV := benchStartRawFSM(b, benchLibp2pTransports(b, benchNodes, "/raft/bench-raw-kv"), benchMapStores,
		func(s benchStores) hraft.FSM { return &benchKVFSM{ds: s.ds} }, benchKVEntry)
	plain := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-e2e")
	enc := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-e2e", WithEncryptionKey(newSecret(b)))
	benchWarmUp(b, plain.set)
	benchWarmUp(b, enc.set)
	sides := []benchSide{raw.side("raw"), rawKV.side("rawkv"), plain.side("cluster"), enc.side("encrypted"), plain.txnSide("txn")}
	ratios := []benchRatio{{"cluster", "raw"}, {"cluster", "rawkv"}, {"encrypted", "cluster"}, {"txn", "cluster"}}
	b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, sides, ratios) })
	b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, sides, ratios) })
}

// BenchmarkCompareEndToEndPebble: the same on disk, as a production node
// runs: Cluster.Set on p2pnode nodes with a DataDir (pebble, synced log and
// stable store; the key-value data through UnsyncedStore) against raw
// hashicorp/raft with our LogStore and StableStore on pebble with synced
// writes, the same libp2p transport and benchKVFSM on that same datastore
// (every write synced, as go-ds-pebble is told for a Raft log).
func BenchmarkCompareEndToEndPebble(b *testing.B) {
	rawKV := benchStartRawFSM(b, benchLibp2pTransports(b, benchNodes, "/raft/bench-raw-kv"), benchPebbleStores,
		func(s benchStores) hraft.FSM { return &benchKVFSM{ds: s.ds} }, benchKVEntry)
	lib := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected(), rafttest.WithPebble()), "/raft/bench-e2e")
	benchWarmUp(b, lib.set)
	sides := []benchSide{rawKV.side("rawkv"), lib.side("cluster")}
	b.Run("writers64", func(b *testing.B) {
		benchCompare(b, benchWriters, sides, []benchRatio{{"cluster", "rawkv"}})
	})
}

// ---- 4. Formation and failover ----

// benchReportRounds reports fixed rounds of a measurement (not b.N-driven):
// the rounds ran before, and b.Loop with an empty body makes testing call
// the benchmark function once only. ns/op is suppressed as meaningless.
func benchReportRounds(b *testing.B, unit string, scale time.Duration, ds []time.Duration) {
	for b.Loop() {
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(sum)/float64(len(ds))/float64(scale), "mean-"+unit)
	b.ReportMetric(float64(sorted[len(sorted)-1])/float64(scale), "max-"+unit)
	b.ReportMetric(float64(sorted[0])/float64(scale), "min-"+unit)
	var each []string
	for _, d := range ds {
		each = append(each, d.Round(time.Millisecond).String())
	}
	b.Logf("rounds: %s", strings.Join(each, " "))
}

// BenchmarkFormation: n nodes started at once with auto bootstrap
// (PresetLocal, 2s window, discovery through the shared in-process registry,
// hosts not connected beforehand). Formation ends when every New has
// returned and every member names the same leader with n voters. Target: the
// window plus 2 seconds.
func BenchmarkFormation(b *testing.B) {
	for _, n := range []int{3, 5} {
		b.Run("nodes="+strconv.Itoa(n), func(b *testing.B) {
			var times []time.Duration
			for r := range benchFormationRounds {
				times = append(times, benchFormOnce(b, n, fmt.Sprintf("/raft/bench-form-%d-%d", n, r)))
			}
			benchReportRounds(b, "s", time.Second, times)
			b.ReportMetric(benchWindow.Seconds(), "window-s")
		})
	}
}

func benchFormOnce(b *testing.B, n int, ns string) time.Duration {
	mesh := rafttest.NewMesh(b, n)
	defer mesh.Close() //nolint:errcheck // closed again, with a check, by its cleanup
	cs := make([]Cluster, n)
	errs := make([]error, n)
	defer func() {
		for _, c := range cs {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() { cs[i], errs[i] = New(mesh.Node(i), ns, benchClusterOpts(b)...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	if _, err := benchWaitAgreed(cs, n, benchSetupTimeout); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkFailover: a formed 3-member cluster (PresetLocal) loses its
// leader; failover ends when both remaining members name the same new leader
// and it says it leads. Reported in milliseconds and in election timeouts
// (target: at most 3). Two ways to lose it:
//
//   - close: the leader's cluster is closed (a planned shutdown or rolling
//     restart); Close hands leadership over first.
//   - isolated: every link to the leader's node is cut at once (a crash or a
//     partition, as the others see it): they must notice the silence.
func BenchmarkFailover(b *testing.B) {
	et := PresetLocal.Timeouts().ElectionTimeout
	for _, mode := range []string{"close", "isolated"} {
		b.Run(mode, func(b *testing.B) {
			var times []time.Duration
			for r := range benchFailoverRounds {
				times = append(times, benchFailOnce(b, fmt.Sprintf("/raft/bench-failover-%s-%d", mode, r), mode == "isolated"))
			}
			benchReportRounds(b, "ms", time.Millisecond, times)
			b.ReportMetric(float64(slices.Max(times))/float64(et), "max-election-timeouts")
		})
	}
}

func benchFailOnce(b *testing.B, ns string, isolate bool) time.Duration {
	mesh := rafttest.NewMesh(b, benchNodes, rafttest.Connected())
	defer mesh.Close() //nolint:errcheck // closed again, with a check, by its cleanup
	// benchStartCluster also closes the clusters at the end of b; closing
	// them at the end of the round as well only returns ErrAlreadyClosed.
	lib := benchStartCluster(b, mesh, ns)
	leader, all := lib.leader.Load().(Cluster), lib.all
	defer func() {
		for _, c := range all {
			_ = c.Close()
		}
	}()
	var rest []Cluster
	for _, c := range all {
		if c != leader {
			rest = append(rest, c)
		}
	}
	leaderID, err := leader.Leader()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if isolate {
		mesh.Isolate(slices.Index(mesh.IDs(), leaderID))
	} else if err := leader.Close(); err != nil {
		b.Fatal(err)
	}
	deadline := start.Add(benchSetupTimeout)
	for {
		if l, ok := benchAgreed(rest, benchNodes); ok {
			if id, err := l.Leader(); err == nil && id != leaderID {
				return time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("no new leader after the leader was lost")
		}
		time.Sleep(benchPoll)
	}
}

// ---- 5. Watch ----

// BenchmarkWatchStalled: Cluster.Set on a cluster where every member has
// watchers that never read (4 local ones and one of a Client on a fourth
// node), and on a cluster where one watcher per member reads everything,
// against the same on a cluster without watchers, side by side: a watcher
// that stops reading must not slow writes (ops-x:stalled/nowatch near 1).
// The stalled watchers fall behind the history at once and cost nothing
// after; the reading ones cost their copies.
func BenchmarkWatchStalled(b *testing.B) {
	plain := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-watch")
	stalledMesh := rafttest.NewMesh(b, benchNodes, rafttest.Connected())
	stalled := benchStartCluster(b, stalledMesh, "/raft/bench-watch")
	reading := benchStartCluster(b, rafttest.NewMesh(b, benchNodes, rafttest.Connected()), "/raft/bench-watch")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// A Client on a fourth node (added after formation, so not a member).
	cn := stalledMesh.Add()
	if err := stalledMesh.Connect(cn, 0); err != nil {
		b.Fatal(err)
	}
	cli, err := NewClient(stalledMesh.Node(cn), "/raft/bench-watch", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	for _, c := range stalled.all {
		for range 4 {
			if _, err := c.Watch(ctx, "", 0); err != nil {
				b.Fatal(err)
			}
		}
		// And one over the wire, never read either.
		if _, err := cli.Watch(ctx, "", 0, c.(*cluster).self); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range reading.all {
		wg.Go(func() {
			for after := uint64(0); ctx.Err() == nil; {
				ch, err := c.Watch(ctx, "bench/", after)
				if err != nil { // overtaken: start again from now
					after = c.(*cluster).fsm.appliedIndex()
					continue
				}
				for e := range ch {
					after = e.Index
				}
			}
		})
	}
	benchWarmUp(b, plain.set)
	benchWarmUp(b, stalled.set)
	benchWarmUp(b, reading.set)
	sides := []benchSide{plain.side("nowatch"), stalled.side("stalled"), reading.side("reading")}
	ratios := []benchRatio{{"stalled", "nowatch"}, {"reading", "nowatch"}}
	b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, sides, ratios) })
	b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, sides, ratios) })
}

// ---- 6. Client ----

// benchClientSide is a Client on a fourth node of a library cluster's mesh,
// writing and reading through chosen members.
type benchClientSide struct {
	lib    *benchLib
	cli    *Client
	leader peer.ID
	// follower is a member that does not lead when the benchmark starts.
	follower peer.ID
}

// benchStartClient adds a node to mesh, connects it to every member and
// opens a Client on it.
func benchStartClient(b *testing.B, mesh *rafttest.Mesh, lib *benchLib, ns string, key []byte) *benchClientSide {
	cn := mesh.Add()
	for i := range mesh.Len() - 1 {
		if err := mesh.Connect(cn, i); err != nil {
			b.Fatal(err)
		}
	}
	cli, err := NewClient(mesh.Node(cn), ns, key)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cli.Close() })
	s := &benchClientSide{lib: lib, cli: cli}
	s.leader = lib.leader.Load().(Cluster).(*cluster).self
	for _, c := range lib.all {
		if id := c.(*cluster).self; id != s.leader {
			s.follower = id
			break
		}
	}
	return s
}

// set writes value i with Client.Set through target ("" for none: the
// Client finds the members itself).
func (s *benchClientSide) set(target peer.ID) func(i int) error {
	return func(i int) error {
		if target == "" {
			return s.cli.Set(benchKey(i), benchValue, benchWriteTimeout)
		}
		return s.cli.Set(benchKey(i), benchValue, benchWriteTimeout, target)
	}
}

// txnSet writes value i with an unconditional Cluster.Txn on the member
// on (a follower forwards it to the leader): the forwarding hop alone,
// without the Client's.
func (s *benchClientSide) txnSet(on peer.ID) func(i int) error {
	var m Cluster
	for _, c := range s.lib.all {
		if c.(*cluster).self == on {
			m = c
		}
	}
	return func(i int) error {
		_, err := m.Txn(Txn{Then: []Op{SetOp(benchKey(i), benchValue)}}, benchWriteTimeout)
		return err
	}
}

// benchEchoProto is the protocol of benchEcho's streams.
const benchEchoProto = "/tauraft-bench/echo/1.0.0"

// benchEcho opens a stream from node from to the member to whose handler
// sends back every 100 bytes it reads; the op sends 100 bytes and reads
// them back (callers take turns on the one stream).
func benchEcho(b *testing.B, mesh *rafttest.Mesh, from int, to peer.ID) func(int) error {
	var target int
	for i := range mesh.Len() {
		if mesh.ID(i) == to {
			target = i
		}
	}
	mesh.Node(target).Peer().SetStreamHandler(benchEchoProto, func(s network.Stream) {
		defer s.Close()
		buf := make([]byte, 100)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	})
	st, err := mesh.Node(from).Peer().NewStream(b.Context(), to, benchEchoProto)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Reset() })
	var mu sync.Mutex
	buf := make([]byte, 100)
	return func(int) error {
		mu.Lock()
		defer mu.Unlock()
		if _, err := st.Write(buf); err != nil {
			return err
		}
		_, err := io.ReadFull(st, buf)
		return err
	}
}

// barrierGet reads key i with a barrier through target.
func (s *benchClientSide) barrierGet(target peer.ID) func(i int) error {
	return func(i int) error {
		var err error
		if target == "" {
			_, _, err = s.cli.Get(benchKey(i), int64(benchWriteTimeout))
		} else {
			_, _, err = s.cli.Get(benchKey(i), int64(benchWriteTimeout), target)
		}
		return err
	}
}

// localBarrierGet is the local equivalent on the leader: Barrier, then Get.
func (c *benchLib) localBarrierGet(i int) error {
	l := c.leader.Load().(Cluster)
	if err := l.Barrier(benchWriteTimeout); err != nil {
		return err
	}
	l.Get(benchKey(i))
	return nil
}

// BenchmarkCompareClient: a Client on a fourth node of a 3-member cluster
// (in-memory datastores, PresetLocal), against Cluster.Set on the leader of
// the same cluster, in the same run. Sides: cluster (Cluster.Set on the
// leader), client (Client.Set without targets: it finds the members and the
// leader itself), client-leader (Client.Set with the leader as target),
// client-follower (Client.Set through a follower, which forwards),
// txn-leader and txn-follower (an unconditional Cluster.Txn on the leader,
// and on a follower, which forwards it: the forwarding hop without the
// Client's), and in the sequential leaf echo (a bare libp2p stream round
// trip from the Client's node to the leader: the floor of one hop); and
// for reads, local-bget (Barrier then Get on the leader) against client-bget
// (Client.Get with a barrier, through the leader) and client-bget-follower.
// The keyed leaves run the same with WithEncryptionKey on every member and
// the Client.
func BenchmarkCompareClient(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		name := "plain"
		var key []byte
		var extra []Option
		if keyed {
			name = "keyed"
			key = newSecret(b)
			extra = append(extra, WithEncryptionKey(key))
		}
		b.Run(name, func(b *testing.B) {
			mesh := rafttest.NewMesh(b, benchNodes, rafttest.Connected())
			lib := benchStartCluster(b, mesh, "/raft/bench-client", extra...)
			cs := benchStartClient(b, mesh, lib, "/raft/bench-client", key)
			benchWarmUp(b, lib.set)
			benchWarmUp(b, cs.set(cs.leader))
			benchWarmUp(b, cs.set(cs.follower))

			writes := []benchSide{
				lib.side("cluster"),
				{name: "client", op: cs.set(""), retries: &lib.retries},
				{name: "client-leader", op: cs.set(cs.leader), retries: &lib.retries},
				{name: "client-follower", op: cs.set(cs.follower), retries: &lib.retries},
				{name: "txn-leader", op: cs.txnSet(cs.leader), retries: &lib.retries},
				{name: "txn-follower", op: cs.txnSet(cs.follower), retries: &lib.retries},
			}
			wratios := []benchRatio{{"client", "cluster"}, {"client-leader", "cluster"}, {"client-follower", "cluster"}, {"txn-leader", "cluster"}, {"txn-follower", "cluster"}}
			reads := []benchSide{
				{name: "local-bget", op: lib.localBarrierGet, retries: &lib.retries},
				{name: "client-bget", op: cs.barrierGet(cs.leader), retries: &lib.retries},
				{name: "client-bget-follower", op: cs.barrierGet(cs.follower), retries: &lib.retries},
			}
			rratios := []benchRatio{{"client-bget", "local-bget"}, {"client-bget-follower", "local-bget"}}
			b.Run("writers64", func(b *testing.B) { benchCompare(b, benchWriters, writes, wratios) })
			b.Run("writers16", func(b *testing.B) { benchCompare(b, 16, writes, wratios) })
			// echo: a bare libp2p stream round trip between the Client's
			// node and the leader (100 bytes each way), the floor of what
			// one hop adds to a write.
			seq := append(slices.Clone(writes), benchSide{name: "echo", op: benchEcho(b, mesh, mesh.Len()-1, cs.leader), retries: &lib.retries})
			seqRatios := append(slices.Clone(wratios), benchRatio{"echo", "cluster"})
			b.Run("sequential", func(b *testing.B) { benchCompare(b, 1, seq, seqRatios) })
			b.Run("barrier-get", func(b *testing.B) { benchCompare(b, 1, reads, rratios) })
		})
	}
}
