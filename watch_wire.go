package raft

// Watch on the wire. A watch is one command-service stream that stays open:
// the Client sends one request (cmdWatch: Prefix, After and a random
// WatchID), the member answers with a sequence of frames, each a response:
//
//	frame 0   the verdict: Code 0 (watching, Through = After) or an error
//	          (ErrCompacted when After is older than the member's history)
//	frame n   Events (the next matching changes, whole or, for a log index
//	          with more changes than one frame holds, in parts) and Through:
//	          every matching change up to Through has been sent. A frame
//	          without events moves Through on (changes under other prefixes
//	          went by) or just shows the member is alive (every
//	          watchProgressInterval).
//	last      Code ErrCompacted when the watcher fell behind the history;
//	          otherwise the stream just ends (the member closed or replaced
//	          its state) and the Client resumes elsewhere.
//
// Under a key every frame is sealed on its own (fresh salt, as any answer)
// with the aad watchAAD(WatchID, n): a frame replayed, dropped, reordered or
// taken from another stream fails to open, and the Client moves on without
// gap or repeat. A peer without the key never gets here: its request must
// authenticate before a watch slot is taken.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

const (
	// watchIDSize is the size of a watch stream's random ID.
	watchIDSize = 16
	// watchLabel starts every watch frame's aad, so it can never equal the
	// aad of another use of sealAAD.
	watchLabel = "tauraft/v1/watch\x00"
	// watchProgressInterval is how often a member sends a frame on a quiet
	// watch stream, so the Client knows it is alive; watchIdleTimeout is
	// how long a Client waits for any frame before it moves on.
	watchProgressInterval = 5 * time.Second
	watchIdleTimeout      = 3 * watchProgressInterval
	// watchProgressMin spaces the frames that only move Through on, so a
	// watcher of a rarely written prefix costs little under heavy writes.
	watchProgressMin = time.Second
	// watchWriteTimeout bounds one frame's write: a watcher that stops
	// reading holds its stream at most this long once the history has
	// moved past it.
	watchWriteTimeout = 30 * time.Second
)

// wireEvent is an Event on the wire.
type wireEvent struct {
	_           struct{} `cbor:",toarray"`
	Kind        uint8
	Key         string
	Value       []byte
	CreateIndex uint64
	ModIndex    uint64
	Lease       uint64
	Index       uint64
}

// watchAAD is the aad of frame n of the watch stream id.
func watchAAD(id []byte, n uint64) []byte {
	aad := make([]byte, 0, len(watchLabel)+len(id)+8)
	aad = append(aad, watchLabel...)
	aad = append(aad, id...)
	return binary.BigEndian.AppendUint64(aad, n)
}

func toWireEvents(events []Event) []wireEvent {
	out := make([]wireEvent, len(events))
	for i, e := range events {
		out[i] = wireEvent{Kind: uint8(e.Kind), Key: e.Key, Value: e.Entry.Value, CreateIndex: e.Entry.CreateIndex,
			ModIndex: e.Entry.ModIndex, Lease: uint64(e.Entry.Lease), Index: e.Index}
	}
	return out
}

// decodeWatchFrame decodes one watch frame and checks what a member may
// send: known kinds, valid keys and values, and indexes above 0 that never
// go down, within the frame and from after on (a frame's events may run
// past its Through: a log index sent in parts).
func decodeWatchFrame(payload []byte, after uint64) (*response, []Event, error) {
	var resp response
	if err := wireDec.Unmarshal(payload, &resp); err != nil {
		return nil, nil, fmt.Errorf("%w: watch frame: %v", ErrInvalidCommand, err)
	}
	if len(resp.Events) > watchFrameEvents {
		return nil, nil, fmt.Errorf("%w: watch frame of %d events", ErrInvalidCommand, len(resp.Events))
	}
	events := make([]Event, 0, len(resp.Events))
	prev := after
	for _, w := range resp.Events {
		kind := EventKind(w.Kind)
		if kind != EventSet && kind != EventDelete {
			return nil, nil, fmt.Errorf("%w: watch event of kind %d", ErrInvalidCommand, w.Kind)
		}
		if err := validateKey(w.Key); err != nil {
			return nil, nil, fmt.Errorf("%w: watch event: %v", ErrInvalidCommand, err)
		}
		if err := validateValue(w.Value); err != nil {
			return nil, nil, fmt.Errorf("%w: watch event: %v", ErrInvalidCommand, err)
		}
		if w.Index == 0 || w.Index < prev {
			return nil, nil, fmt.Errorf("%w: watch event index %d after %d", ErrInvalidCommand, w.Index, prev)
		}
		prev = w.Index
		events = append(events, Event{Kind: kind, Key: w.Key, Index: w.Index, Entry: Entry{
			Value: w.Value, CreateIndex: w.CreateIndex, ModIndex: w.ModIndex, Lease: LeaseID(w.Lease)}})
	}
	resp.Events = nil
	return &resp, events, nil
}

// takeWatchSlot counts a watch stream against its caps (and registers it to
// be reset by close); false when a cap is reached or the service is closing.
func (s *commandService) takeWatchSlot(st network.Stream, from peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.watchPerPeer[from] >= watchStreamsPerPeer || s.watchTotal >= watchStreamsTotal {
		return false
	}
	s.watchPerPeer[from]++
	s.watchTotal++
	s.streams[st] = struct{}{}
	return true
}

func (s *commandService) releaseWatchSlot(st network.Stream, from peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, st)
	if s.watchPerPeer[from]--; s.watchPerPeer[from] <= 0 {
		delete(s.watchPerPeer, from)
	}
	s.watchTotal--
}

// watchStreams is the number of watch streams being served.
func (s *commandService) watchStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watchTotal
}

// watchSender writes the frames of one watch stream, numbering them.
type watchSender struct {
	st network.Stream
	cd codec
	id []byte
	n  uint64
}

func (w *watchSender) send(resp *response) error {
	body, err := w.cd.encodeAAD(resp, watchAAD(w.id, w.n))
	if err != nil {
		return err
	}
	w.n++
	_ = w.st.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	return writeFrame(w.st, body)
}

// serveWatch serves one watch stream (its request read and authenticated)
// until the watcher goes, the member closes, or the watcher falls behind.
func (s *commandService) serveWatch(st network.Stream, from peer.ID, req *request) {
	if !s.takeWatchSlot(st, from) {
		_ = st.ResetWithError(network.StreamResourceLimitExceeded) // never handled: try another member
		return
	}
	defer s.releaseWatchSlot(st, from)
	w := &watchSender{st: st, cd: s.codec, id: req.WatchID}
	fail := func(err error) {
		if w.send(errorResponse(err)) != nil {
			_ = st.Reset()
			return
		}
		_ = st.Close()
	}
	if len(req.WatchID) != watchIDSize {
		fail(fmt.Errorf("%w: watch ID of %d bytes, want %d", ErrInvalidCommand, len(req.WatchID), watchIDSize))
		return
	}
	if err := checkSize("watch prefix", len(req.Prefix), MaxKeySize); err != nil {
		fail(err)
		return
	}
	cur, err := s.hub.subscribe(req.Prefix, req.After)
	if err != nil {
		fail(err)
		return
	}
	// The Client sends nothing after its request: a read ends when it
	// resets the stream (it went away) or close resets it (the member
	// closes), and either ends the watch at once, not at the next write.
	ctx, cancel := context.WithCancel(context.Background())
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var one [1]byte
		_, _ = st.Read(one[:]) // data here breaks the protocol: end too
		cancel()
	}()
	defer func() {
		cancel()
		_ = st.SetReadDeadline(time.Now()) // unblock the reader
		<-readerDone
	}()
	if w.send(&response{Through: req.After}) != nil {
		_ = st.Reset()
		return
	}
	sent, lastSend := req.After, time.Now()
	for {
		wait, waitCancel := context.WithTimeout(ctx, watchProgressInterval)
		events, through, err := cur.next(wait, watchFrameEvents, watchFrameBytes)
		waitCancel()
		switch {
		case err == nil:
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			// Quiet: send a keep-alive with the latest Through.
		case errors.Is(err, errFellBehind):
			fail(err)
			return
		default:
			// Closing, or the member's state was replaced: end the stream,
			// the Client resumes from the last index it got.
			_ = st.Reset()
			return
		}
		if len(events) == 0 && err == nil && (through == sent || time.Since(lastSend) < watchProgressMin) {
			continue
		}
		if w.send(&response{Events: toWireEvents(events), Through: through}) != nil {
			_ = st.Reset()
			return
		}
		sent, lastSend = through, time.Now()
	}
}
