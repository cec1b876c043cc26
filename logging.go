package raft

// Logging that never blocks Raft: every line the cluster (and Raft inside
// it) logs goes through a bounded queue that one goroutine writes out. A
// slow or stuck sink (a terminal nobody reads, a full pipe, a busy stderr)
// then costs dropped lines, counted and reported once the sink catches up,
// instead of Raft goroutines parked in a write while heartbeats and votes
// wait behind them.

import (
	"io"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// logQueueSize is how many lines may wait for a slow sink before new ones
// are dropped: enough for a burst of errors during an election storm, small
// enough that the queue holds little memory (each line is a message and its
// arguments, a few hundred bytes).
const logQueueSize = 1024

// logDrainTimeout bounds how long Close waits for the queued lines to be
// written: a sink that is stuck must not hold Close. What is still queued
// then is dropped, and the writer ends once its current write returns.
const logDrainTimeout = time.Second

// logLine is one queued line and the logger (with its name and implied
// arguments) that writes it.
type logLine struct {
	to    hclog.Logger
	level hclog.Level
	msg   string
	args  []interface{}
}

// logQueue is the queue and writer shared by a cluster's loggers.
type logQueue struct {
	root    hclog.Logger // says how many lines a closed queue dropped
	lines   chan logLine
	dropped atomic.Uint64
	// repeats holds back a warning or error that repeats one logged
	// less than repeatLogInterval ago (see repeatKey).
	repeats *logLimiter
	stop    chan struct{}
	done    chan struct{}
	// abandoned is set when Close gave up waiting: the rest is dropped.
	abandoned atomic.Bool

	// mu orders sends against close: after close, lines are written
	// inline (Raft has stopped; only a straggler logs then).
	mu     sync.RWMutex
	closed bool
}

// newLogQueue starts the writer; root is the wrapped root logger.
func newLogQueue(root hclog.Logger) *logQueue {
	q := &logQueue{
		root:    root,
		lines:   make(chan logLine, logQueueSize),
		repeats: newLogLimiter(repeatLogInterval),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go q.run()
	return q
}

// run writes the queued lines until close, then what is left.
func (q *logQueue) run() {
	defer close(q.done)
	for {
		select {
		case l := <-q.lines:
			if q.abandoned.Load() {
				return
			}
			q.write(l)
		case <-q.stop:
			for {
				select {
				case l := <-q.lines:
					if q.abandoned.Load() {
						return
					}
					q.write(l)
				default:
					return
				}
			}
		}
	}
}

// write writes one line and then, if lines were dropped meanwhile, says
// how many.
func (q *logQueue) write(l logLine) {
	l.to.Log(l.level, l.msg, l.args...)
	if n := q.dropped.Swap(0); n > 0 {
		l.to.Warn("log lines dropped: the log output is too slow to keep up", "dropped", n)
	}
}

// put queues a line, or drops and counts it when the queue is full.
func (q *logQueue) put(l logLine) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		l.to.Log(l.level, l.msg, l.args...)
		return
	}
	select {
	case q.lines <- l:
	default:
		q.dropped.Add(1)
	}
}

// close writes out the queued lines and stops the writer; later lines are
// written inline.
func (q *logQueue) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	q.mu.Unlock()
	close(q.stop)
	t := time.NewTimer(logDrainTimeout)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
		q.abandoned.Store(true)
		return
	}
	if n := q.dropped.Swap(0); n > 0 {
		q.root.Warn("log lines dropped: the log output was too slow to keep up", "dropped", n)
	}
}

// asyncLogger is an hclog.Logger that queues its lines on a logQueue. Level
// checks and derived loggers go to the wrapped logger, so filtering and
// naming behave exactly as the caller configured them.
type asyncLogger struct {
	inner hclog.Logger
	q     *logQueue
}

var _ hclog.Logger = asyncLogger{}

// newAsyncLogger wraps l so that logging through it never blocks.
func newAsyncLogger(l hclog.Logger, q *logQueue) hclog.Logger {
	return asyncLogger{inner: l, q: q}
}

// Log queues a line at level, unless the wrapped logger filters it or the
// same error about the same peer was logged less than repeatLogInterval ago.
func (a asyncLogger) Log(level hclog.Level, msg string, args ...interface{}) {
	if !levelEnabled(a.inner, level) {
		return
	}
	if level >= hclog.Warn {
		if key, ok := repeatKey(a.inner.Name(), msg, args); ok {
			ok, dropped := a.q.repeats.allow(key, time.Now())
			if !ok {
				return
			}
			if dropped > 0 {
				args = append(append([]interface{}(nil), args...), "repeats_dropped", dropped)
			}
		}
	}
	a.q.put(logLine{to: a.inner, level: level, msg: msg, args: args})
}

// Trace logs at trace level.
func (a asyncLogger) Trace(msg string, args ...interface{}) { a.Log(hclog.Trace, msg, args...) }

// Debug logs at debug level.
func (a asyncLogger) Debug(msg string, args ...interface{}) { a.Log(hclog.Debug, msg, args...) }

// Info logs at info level.
func (a asyncLogger) Info(msg string, args ...interface{}) { a.Log(hclog.Info, msg, args...) }

// Warn logs at warn level.
func (a asyncLogger) Warn(msg string, args ...interface{}) { a.Log(hclog.Warn, msg, args...) }

// Error logs at error level.
func (a asyncLogger) Error(msg string, args ...interface{}) { a.Log(hclog.Error, msg, args...) }

// IsTrace is the wrapped logger's.
func (a asyncLogger) IsTrace() bool { return a.inner.IsTrace() }

// IsDebug is the wrapped logger's.
func (a asyncLogger) IsDebug() bool { return a.inner.IsDebug() }

// IsInfo is the wrapped logger's.
func (a asyncLogger) IsInfo() bool { return a.inner.IsInfo() }

// IsWarn is the wrapped logger's.
func (a asyncLogger) IsWarn() bool { return a.inner.IsWarn() }

// IsError is the wrapped logger's.
func (a asyncLogger) IsError() bool { return a.inner.IsError() }

// ImpliedArgs is the wrapped logger's.
func (a asyncLogger) ImpliedArgs() []interface{} { return a.inner.ImpliedArgs() }

// With derives a logger with more implied arguments, on the same queue.
func (a asyncLogger) With(args ...interface{}) hclog.Logger {
	return asyncLogger{inner: a.inner.With(args...), q: a.q}
}

// Name is the wrapped logger's.
func (a asyncLogger) Name() string { return a.inner.Name() }

// Named derives a sub-logger, on the same queue.
func (a asyncLogger) Named(name string) hclog.Logger {
	return asyncLogger{inner: a.inner.Named(name), q: a.q}
}

// ResetNamed derives a renamed logger, on the same queue.
func (a asyncLogger) ResetNamed(name string) hclog.Logger {
	return asyncLogger{inner: a.inner.ResetNamed(name), q: a.q}
}

// SetLevel sets the wrapped logger's level.
func (a asyncLogger) SetLevel(level hclog.Level) { a.inner.SetLevel(level) }

// GetLevel is the wrapped logger's.
func (a asyncLogger) GetLevel() hclog.Level { return a.inner.GetLevel() }

// StandardLogger is the wrapped logger's: neither the library nor Raft
// logs through it.
func (a asyncLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return a.inner.StandardLogger(opts)
}

// StandardWriter is the wrapped logger's (see StandardLogger).
func (a asyncLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return a.inner.StandardWriter(opts)
}
