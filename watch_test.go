package raft

// Tests of the pure parts of Watch: the history ring, prefix matching, the
// cursor's batches and Through, a Client's resume position, the watch
// frame decoder (and its fuzz target) and the sealing of frame sequences.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ev is a set event of key at index, with a value naming both.
func ev(key string, index uint64) Event {
	return Event{Kind: EventSet, Key: key, Index: index, Entry: Entry{Value: []byte(fmt.Sprint(key, "@", index)), ModIndex: index}}
}

func evKeys(events []Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, fmt.Sprint(e.Key, "@", e.Index))
	}
	return out
}

func TestMatchPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix, key string
		want        bool
	}{
		{"", "anything", true},
		{"a/", "a/b", true},
		{"a/", "a", false},
		{"a/", "a//b", true},
		{"a", "ab", true}, // a plain string prefix, not a path segment
		{"a/b", "a/", false},
		{"\xff", "\xff\x00", true},
		{"é", "\xc3", false},
	} {
		if got := matchPrefix(tc.prefix, tc.key); got != tc.want {
			t.Errorf("matchPrefix(%q, %q) = %v, want %v", tc.prefix, tc.key, got, tc.want)
		}
	}
}

func TestEventRing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lim       historyLimits
		floor     uint64
		push      []Event
		wantKeys  []string
		wantFloor uint64
		seek      map[uint64]any // after -> index of the first event returned, or error
	}{
		{
			name: "empty", lim: historyLimits{4, 1 << 20}, floor: 7,
			wantFloor: 7,
			seek:      map[uint64]any{7: 0, 100: 0, 6: ErrCompacted, 0: ErrCompacted},
		},
		{
			name: "fits", lim: historyLimits{4, 1 << 20},
			push:     []Event{ev("a", 1), ev("b", 2), ev("c", 2), ev("d", 5)},
			wantKeys: []string{"a@1", "b@2", "c@2", "d@5"},
			seek:     map[uint64]any{0: 0, 1: 1, 2: 3, 3: 3, 5: 4, 9: 4},
		},
		{
			name: "count limit drops oldest, floor at dropped index", lim: historyLimits{3, 1 << 20},
			push:     []Event{ev("a", 1), ev("b", 2), ev("c", 2), ev("d", 5), ev("e", 6)},
			wantKeys: []string{"c@2", "d@5", "e@6"}, wantFloor: 2,
			// after=2 is allowed: every change above 2 is held. after=1
			// would need b@2, which is gone.
			seek: map[uint64]any{1: ErrCompacted, 2: 1, 5: 2, 6: 3},
		},
		{
			name: "byte limit", lim: historyLimits{100, 3 * (64 + 3 + 5)},
			push:     []Event{ev("k1", 1), ev("k2", 2), ev("k3", 3), ev("k4", 4)},
			wantKeys: []string{"k2@2", "k3@3", "k4@4"}, wantFloor: 1,
		},
		{
			name: "one event over the byte budget drops itself", lim: historyLimits{100, 10},
			push:      []Event{ev("a", 1), ev("b", 3)},
			wantFloor: 3,
			seek:      map[uint64]any{2: ErrCompacted, 3: 0},
		},
		{
			name: "wraps around many times", lim: historyLimits{5, 1 << 20},
			push: func() []Event {
				var out []Event
				for i := uint64(1); i <= 203; i++ {
					out = append(out, ev("k", i))
				}
				return out
			}(),
			wantKeys:  []string{"k@199", "k@200", "k@201", "k@202", "k@203"},
			wantFloor: 198,
			seek:      map[uint64]any{197: ErrCompacted, 198: 0, 200: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newEventRing(tc.lim, tc.floor)
			for _, e := range tc.push {
				r.push(e)
			}
			var got []Event
			for s := r.firstSeq; s < r.nextSeq(); s++ {
				got = append(got, *r.at(s))
			}
			if !slices.Equal(evKeys(got), tc.wantKeys) {
				t.Fatalf("held %v, want %v", evKeys(got), tc.wantKeys)
			}
			if r.floor != tc.wantFloor {
				t.Fatalf("floor %d, want %d", r.floor, tc.wantFloor)
			}
			if r.n > tc.lim.events || r.bytes > tc.lim.bytes || len(r.buf) > tc.lim.events+1 {
				t.Fatalf("over limits: %d events, %d bytes, %d slots (limits %+v)", r.n, r.bytes, len(r.buf), tc.lim)
			}
			if r.firstSeq+uint64(r.n) != uint64(len(tc.push)) {
				t.Fatalf("seq numbering: first %d + %d held != %d pushed", r.firstSeq, r.n, len(tc.push))
			}
			for after, want := range tc.seek {
				seq, err := r.seek(after)
				if werr, ok := want.(error); ok {
					if !errors.Is(err, werr) {
						t.Errorf("seek(%d) = %d, %v; want %v", after, seq, err, werr)
					}
					continue
				}
				if err != nil || seq-r.firstSeq != uint64(want.(int)) {
					t.Errorf("seek(%d) = position %d, %v; want %d", after, seq-r.firstSeq, err, want)
				}
			}
			r.reset(40)
			if r.n != 0 || r.bytes != 0 || r.floor != 40 || r.nextSeq() != uint64(len(tc.push)) {
				t.Fatalf("after reset: %d events, %d bytes, floor %d, next seq %d", r.n, r.bytes, r.floor, r.nextSeq())
			}
		})
	}
}

// TestWatchCursor: batches respect the limits, Through only claims complete
// indexes, filtered events still move Through, and a cursor overtaken by
// the history or a reset ends with ErrCompacted.
func TestWatchCursor(t *testing.T) {
	ctx := t.Context()
	h := newWatchHub(historyLimits{8, 1 << 20}, 0)
	h.publish([]Event{ev("a/1", 1), ev("b/1", 1), ev("a/2", 1)}) // one batch entry, three changes
	h.publish([]Event{ev("b/2", 2)})
	h.publish([]Event{ev("a/3", 4)})

	all, err := h.subscribe("", 0)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		keys    []string
		through uint64
	}{
		{[]string{"a/1@1", "b/1@1"}, 0}, // cut inside index 1: not complete
		{[]string{"a/2@1", "b/2@2"}, 2},
		{[]string{"a/3@4"}, 4},
	}
	for i, s := range steps {
		got, through, err := all.next(ctx, 2, 1<<20)
		if err != nil || !slices.Equal(evKeys(got), s.keys) || through != s.through {
			t.Fatalf("step %d: %v through %d, %v; want %v through %d", i, evKeys(got), through, err, s.keys, s.through)
		}
	}

	onlyA, _ := h.subscribe("a/", 1) // after 1: index 1 is done
	got, through, err := onlyA.next(ctx, 10, 1<<20)
	if err != nil || !slices.Equal(evKeys(got), []string{"a/3@4"}) || through != 4 {
		t.Fatalf("prefix a/ after 1: %v through %d, %v", evKeys(got), through, err)
	}
	onlyB, _ := h.subscribe("b/", 2)
	if got, through, err := onlyB.next(ctx, 10, 1<<20); err != nil || len(got) != 0 || through != 4 {
		t.Fatalf("prefix b/ after 2: %v through %d, %v; want nothing through 4", evKeys(got), through, err)
	}

	// The next call waits for a change.
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := all.next(waitCtx, 10, 1<<20); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("next with nothing new = %v, want the context's deadline", err)
	}
	go h.publish([]Event{ev("c", 5)})
	if got, _, err := all.next(ctx, 10, 1<<20); err != nil || !slices.Equal(evKeys(got), []string{"c@5"}) {
		t.Fatalf("next after a publish = %v, %v", evKeys(got), err)
	}

	// A slow cursor: the history moves past it.
	slow, _ := h.subscribe("", 4)
	for i := uint64(6); i < 20; i++ {
		h.publish([]Event{ev("x", i)})
	}
	if _, _, err := slow.next(ctx, 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("overtaken cursor: %v, want ErrCompacted", err)
	}
	if _, err := h.subscribe("", 4); !errors.Is(err, ErrCompacted) {
		t.Fatalf("subscribe below the floor: %v, want ErrCompacted", err)
	}
	// A reset ends every cursor; the history starts after the new index.
	live, _ := h.subscribe("", 19)
	h.reset(30)
	if _, _, err := live.next(ctx, 10, 1<<20); !errors.Is(err, ErrCompacted) {
		t.Fatalf("cursor across a reset: %v, want ErrCompacted", err)
	}
	if _, err := h.subscribe("", 29); !errors.Is(err, ErrCompacted) {
		t.Fatalf("subscribe below a reset: %v", err)
	}
	if _, err := h.subscribe("", 30); err != nil {
		t.Fatalf("subscribe at a reset's index: %v", err)
	}
	h.close()
	if _, _, err := live.next(ctx, 10, 1<<20); !errors.Is(err, ErrShutdown) {
		t.Fatalf("cursor after close: %v, want ErrShutdown", err)
	}
}

// TestWatchResume: what a Client delivers and where it resumes, through
// frames cut inside one log index and a reconnect that replays them.
func TestWatchResume(t *testing.T) {
	type step struct {
		restart   bool     // reconnect: want after
		frame     []Event  // events of a frame
		through   uint64   // its Through
		delivered []string // what accept lets through
		after     uint64   // restart's answer
	}
	for _, tc := range []struct {
		name  string
		start uint64
		steps []step
	}{
		{"plain", 3, []step{
			{frame: []Event{ev("a", 4), ev("b", 6)}, through: 6, delivered: []string{"a@4", "b@6"}},
			{restart: true, after: 6},
			{frame: []Event{ev("b", 6), ev("c", 7)}, through: 7, delivered: []string{"c@7"}},
		}},
		{"cut inside an index, resumed elsewhere", 0, []step{
			{frame: []Event{ev("a", 5), ev("b", 5)}, through: 4, delivered: []string{"a@5", "b@5"}},
			{restart: true, after: 4},
			{frame: []Event{ev("a", 5), ev("b", 5), ev("c", 5), ev("d", 8)}, through: 8, delivered: []string{"c@5", "d@8"}},
			{restart: true, after: 8},
		}},
		{"restart twice before the replay arrives", 0, []step{
			{frame: []Event{ev("a", 5)}, through: 4, delivered: []string{"a@5"}},
			{restart: true, after: 4},
			{restart: true, after: 4},
			{frame: []Event{ev("a", 5), ev("b", 5)}, through: 5, delivered: []string{"b@5"}},
		}},
		{"progress frames move the resume point", 10, []step{
			{frame: nil, through: 50, delivered: nil},
			{restart: true, after: 50},
			{frame: []Event{ev("a", 50), ev("b", 51)}, through: 51, delivered: []string{"b@51"}},
		}},
		{"a later index completes the one before", 0, []step{
			{frame: []Event{ev("a", 2), ev("b", 3)}, through: 2, delivered: []string{"a@2", "b@3"}},
			{restart: true, after: 2},
			{frame: []Event{ev("b", 3), ev("c", 3)}, through: 3, delivered: []string{"c@3"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := watchResume{last: tc.start}
			for i, s := range tc.steps {
				if s.restart {
					if got := r.restart(); got != s.after {
						t.Fatalf("step %d: restart after %d, want %d (state %+v)", i, got, s.after, r)
					}
					continue
				}
				var got []string
				for _, e := range s.frame {
					if r.accept(e) {
						got = append(got, fmt.Sprint(e.Key, "@", e.Index))
					}
				}
				r.complete(s.through)
				if !slices.Equal(got, s.delivered) {
					t.Fatalf("step %d: delivered %v, want %v", i, got, s.delivered)
				}
			}
		})
	}
}

func TestDecodeWatchFrame(t *testing.T) {
	enc := func(r *response) []byte {
		b, err := cborEnc.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := &response{Through: 9, Events: toWireEvents([]Event{ev("a", 5), ev("b", 5), {Kind: EventDelete, Key: "c", Index: 9}})}
	resp, events, err := decodeWatchFrame(enc(good), 4)
	if err != nil || resp.Through != 9 || len(events) != 3 || string(events[0].Entry.Value) != "a@5" || events[2].Kind != EventDelete {
		t.Fatalf("good frame: %+v %v %v", resp, events, err)
	}
	for name, r := range map[string]*response{
		"unknown kind":    {Events: []wireEvent{{Kind: 9, Key: "a", Index: 5}}},
		"empty key":       {Events: []wireEvent{{Kind: 1, Index: 5}}},
		"index zero":      {Events: []wireEvent{{Kind: 1, Key: "a"}}},
		"index goes down": {Events: []wireEvent{{Kind: 1, Key: "a", Index: 6}, {Kind: 1, Key: "b", Index: 5}}},
		"below after":     {Events: []wireEvent{{Kind: 1, Key: "a", Index: 3}}},
		"value too large": {Events: []wireEvent{{Kind: 1, Key: "a", Index: 5, Value: make([]byte, MaxValueSize+1)}}},
	} {
		if _, _, err := decodeWatchFrame(enc(r), 4); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: %v, want ErrInvalidCommand", name, err)
		}
	}
	if _, _, err := decodeWatchFrame([]byte{0xff, 0x00}, 0); !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("garbage: %v", err)
	}
}

// FuzzWatchFrame: the watch frame decoder never panics, and what it accepts
// keeps its promises.
func FuzzWatchFrame(f *testing.F) {
	seed, _ := cborEnc.Marshal(&response{Through: 3, Events: toWireEvents([]Event{ev("a", 2), ev("b", 3)})})
	f.Add(seed, uint64(1))
	f.Add([]byte{0xa1, 0x14, 0x80}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, after uint64) {
		_, events, err := decodeWatchFrame(b, after)
		if err != nil {
			return
		}
		prev := after
		for _, e := range events {
			if e.Index < prev || e.Index == 0 || validateKey(e.Key) != nil || (e.Kind != EventSet && e.Kind != EventDelete) {
				t.Fatalf("accepted a bad event %+v after %d", e, prev)
			}
			prev = e.Index
		}
	})
}

// TestWatchFrameSealing: under a key each frame of a watch stream opens
// only at its own place in its own stream.
func TestWatchFrameSealing(t *testing.T) {
	k, err := newSecretKey(newSecret(t), "/raft/seal")
	if err != nil {
		t.Fatal(err)
	}
	cd := codec{key: k}
	id1, id2 := bytes.Repeat([]byte{1}, watchIDSize), bytes.Repeat([]byte{2}, watchIDSize)
	var stream bytes.Buffer
	var frames [][]byte
	for n := range uint64(3) {
		body, err := cd.encodeAAD(&response{Through: n}, watchAAD(id1, n))
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, body)
		if err := writeFrame(&stream, body); err != nil {
			t.Fatal(err)
		}
	}
	// In order, in the right stream: every frame opens.
	for n := range uint64(3) {
		payload, _, _, err := cd.readMessageAAD(&stream, true, nil, watchAAD(id1, n))
		if err != nil {
			t.Fatalf("frame %d: %v", n, err)
		}
		if resp, _, err := decodeWatchFrame(payload, 0); err != nil || resp.Through != n {
			t.Fatalf("frame %d: %+v, %v", n, resp, err)
		}
	}
	for name, tc := range map[string]struct {
		frame []byte
		aad   []byte
	}{
		"replayed":          {frames[0], watchAAD(id1, 1)},
		"reordered":         {frames[2], watchAAD(id1, 1)},
		"other stream":      {frames[1], watchAAD(id2, 1)},
		"as a single reply": {frames[0], nil},
	} {
		var b bytes.Buffer
		_ = writeFrame(&b, tc.frame)
		if _, _, _, err := cd.readMessageAAD(&b, true, nil, tc.aad); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: %v, want ErrDecrypt", name, err)
		}
	}
	// A single (request-style) message does not open as a watch frame.
	single, _ := cd.encode(&response{})
	var b bytes.Buffer
	_ = writeFrame(&b, single)
	if _, _, _, err := cd.readMessageAAD(&b, true, nil, watchAAD(id1, 0)); !errors.Is(err, ErrDecrypt) {
		t.Errorf("single message read as a frame: %v, want ErrDecrypt", err)
	}
	// Each frame has its own salt (and so its own key).
	if bytes.Equal(frames[0][1:1+commandSaltSize], frames[1][1:1+commandSaltSize]) {
		t.Error("two frames share a salt")
	}
}

func TestWithWatchHistory(t *testing.T) {
	for _, bad := range [][2]int{{0, 10}, {10, 0}, {-1, -1}} {
		if err := WithWatchHistory(bad[0], bad[1])(defaultConfig()); err == nil {
			t.Errorf("WithWatchHistory(%d, %d) accepted", bad[0], bad[1])
		}
	}
	c := defaultConfig()
	if err := WithWatchHistory(5, 100)(c); err != nil || c.watchHistory != (historyLimits{5, 100}) {
		t.Fatalf("WithWatchHistory(5, 100): %v %+v", err, c.watchHistory)
	}
	if d := (historyLimits{}).orDefault(); d.events != DefaultWatchHistoryEvents || d.bytes != DefaultWatchHistoryBytes {
		t.Fatalf("defaults: %+v", d)
	}
}

// slotStream stands for a distinct stream in the slot accounting (no I/O).
type slotStream struct {
	network.Stream
	n int
}

// TestWatchSlots: the watch stream caps, per peer and in total, and their
// release.
func TestWatchSlots(t *testing.T) {
	s := &commandService{streams: map[network.Stream]struct{}{}, watchPerPeer: map[peer.ID]int{}}
	var held []*slotStream
	peers := 0
	for s.watchTotal < watchStreamsTotal {
		p := peer.ID(fmt.Sprint("peer-", peers))
		peers++
		for i := range watchStreamsPerPeer {
			st := &slotStream{n: len(held)}
			if !s.takeWatchSlot(st, p) {
				t.Fatalf("slot %d of %s refused with %d in all", i, p, s.watchTotal)
			}
			held = append(held, st)
		}
		if s.takeWatchSlot(&slotStream{}, p) {
			t.Fatalf("%s got more than %d slots", p, watchStreamsPerPeer)
		}
	}
	if s.takeWatchSlot(&slotStream{}, "newcomer") {
		t.Fatalf("a slot past the total of %d", watchStreamsTotal)
	}
	s.releaseWatchSlot(held[0], "peer-0")
	if !s.takeWatchSlot(&slotStream{}, "newcomer") {
		t.Fatal("no slot after one was released")
	}
	if len(s.streams) != watchStreamsTotal || s.watchStreams() != watchStreamsTotal {
		t.Fatalf("%d streams registered, %d counted, want %d", len(s.streams), s.watchStreams(), watchStreamsTotal)
	}
	s.done = true
	s.releaseWatchSlot(held[1], "peer-0")
	if s.takeWatchSlot(&slotStream{}, "late") {
		t.Fatal("a slot on a closing service")
	}
}

// BenchmarkWatchApplyHook: what feeding the history costs the state
// machine's apply path (batches of 64 sets of 100-byte values on an
// in-memory datastore), without and with the hook, in one run:
//
//	go test -run '^$' -bench WatchApplyHook -count 5 .
func BenchmarkWatchApplyHook(b *testing.B) {
	for _, hooked := range []bool{false, true} {
		b.Run(fmt.Sprint("hook=", hooked), func(b *testing.B) {
			kv, err := newKVStore(dssync.MutexWrap(datastore.NewMapDatastore()), "/raft/bench-hook/data")
			if err != nil {
				b.Fatal(err)
			}
			if hooked {
				hub := newWatchHub(historyLimits{}, 0)
				kv.onChange, kv.onReset = hub.publish, hub.reset
			}
			value := bytes.Repeat([]byte("v"), 100)
			cmds := make([][]byte, 1000)
			for i := range cmds {
				cmds[i], _ = EncodeCommand(SetOp(fmt.Sprint("k/", i), value))
			}
			index := uint64(0)
			logs := make([]*hraft.Log, 64)
			for i := range logs {
				logs[i] = &hraft.Log{Type: hraft.LogCommand}
			}
			for b.Loop() {
				for _, l := range logs {
					index++
					l.Index, l.Data = index, cmds[index%1000]
				}
				kv.ApplyBatch(logs)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(logs)), "ns/entry")
		})
	}
}
