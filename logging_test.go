package raft

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// lockedBuf is a log sink safe for the writer goroutine and the test.
type lockedBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestAsyncLoggerWritesFiltersAndNames: lines reach the sink in order, with
// the wrapped logger's level, names and implied arguments.
func TestAsyncLoggerWritesFiltersAndNames(t *testing.T) {
	sink := &lockedBuf{}
	inner := hclog.New(&hclog.LoggerOptions{Name: "root", Level: hclog.Info, Output: sink})
	q := newLogQueue(inner)
	l := newAsyncLogger(inner, q).Named("sub").With("k", "v")
	l.Debug("filtered out")
	l.Info("first")
	l.Warn("second", "n", 2)
	if l.IsDebug() || !l.IsInfo() || l.Name() != "root.sub" {
		t.Fatalf("level or name not the wrapped logger's: debug %v info %v name %q", l.IsDebug(), l.IsInfo(), l.Name())
	}
	q.close()
	out := sink.String()
	if strings.Contains(out, "filtered out") {
		t.Fatalf("a debug line passed an info logger:\n%s", out)
	}
	first, second := strings.Index(out, "first"), strings.Index(out, "second")
	if first < 0 || second < first || !strings.Contains(out, "root.sub") || !strings.Contains(out, "k=v") || !strings.Contains(out, "n=2") {
		t.Fatalf("lines missing, out of order, or without name and arguments:\n%s", out)
	}
	// After close, lines are written inline.
	l.Error("after close")
	if !strings.Contains(sink.String(), "after close") {
		t.Fatal("a line logged after close was lost")
	}
}

// TestAsyncLoggerNeverBlocks: with the sink stuck, logging returns at once,
// lines past the queue are dropped and counted, the count is reported once
// the sink moves again, and close gives up on a sink that stays stuck.
func TestAsyncLoggerNeverBlocks(t *testing.T) {
	g := newGate()
	g.shut()
	sink := &stallWriter{g: g}
	inner := hclog.New(&hclog.LoggerOptions{Name: "root", Level: hclog.Info, Output: sink})
	q := newLogQueue(inner)
	l := newAsyncLogger(inner, q)
	start := time.Now()
	const lines = logQueueSize + 500
	for i := range lines {
		l.Error("line", "i", i)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("logging %d lines to a stuck sink took %v", lines, d)
	}
	// One line is in the writer's hands, logQueueSize queued, the rest dropped.
	if got, want := q.dropped.Load(), uint64(lines-logQueueSize-1); got < want {
		t.Fatalf("dropped %d lines, want at least %d", got, want)
	}
	g.reopen()
	deadline := time.Now().Add(10 * time.Second)
	for q.dropped.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if q.dropped.Load() != 0 {
		t.Fatal("the drop count was never reported")
	}

	// A sink stuck at close: close returns after logDrainTimeout.
	g.shut()
	for range 10 {
		l.Error("stuck")
	}
	start = time.Now()
	q.close()
	if d := time.Since(start); d > logDrainTimeout+time.Second {
		t.Fatalf("close waited %v on a stuck sink", d)
	}
	g.reopen()
	select {
	case <-q.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not end once the sink moved")
	}
}

// TestAsyncLoggerLimitsRepeatedErrors: the same error about the same peer
// logs once (a minute); another peer's, or a warning without an error,
// still logs.
func TestAsyncLoggerLimitsRepeatedErrors(t *testing.T) {
	sink := &lockedBuf{}
	inner := hclog.New(&hclog.LoggerOptions{Name: "root", Level: hclog.Info, Output: sink})
	q := newLogQueue(inner)
	l := newAsyncLogger(inner, q)
	dial := errors.New("dial failed")
	for range 5 {
		l.Error("send failed", "peer", "p1", "error", dial)
		l.Warn("member joined", "peer", "p1")
	}
	l.Error("send failed", "peer", "p2", "error", dial)
	q.close()
	out := sink.String()
	if n := strings.Count(out, "send failed: peer=p1"); n != 1 {
		t.Fatalf("the repeated error logged %d times, want 1:\n%s", n, out)
	}
	if strings.Count(out, "member joined") != 5 || !strings.Contains(out, "peer=p2") {
		t.Fatalf("lines that are not repeats of one error were held back:\n%s", out)
	}
}
