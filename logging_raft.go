package raft

// raftLogger is the hclog.Logger Raft gets: it applies the rules of
// logrules.go to what Raft logs, then hands the lines to the cluster's
// logger (and so to its bounded queue). It runs on Raft's goroutines, so
// it does little: a map lookup per line and, for the lines about an
// unreachable peer, a short critical section.

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
)

// raftLogState is shared by a cluster's raftLoggers (Raft derives named
// loggers from the one it gets).
type raftLogState struct {
	now func() time.Time

	mu    sync.Mutex
	reach *reachTracker

	// Raft logs nothing when a peer it failed to reach answers again; its
	// heartbeat observations say so. One observer, registered on each
	// Raft instance the cluster runs (resets start new ones).
	obsCh chan hraft.Observation
	obs   *hraft.Observer
}

func newRaftLogState(now func() time.Time) *raftLogState {
	if now == nil {
		now = time.Now
	}
	st := &raftLogState{now: now, reach: newReachTracker(), obsCh: make(chan hraft.Observation, 64)}
	// Not blocking: an observation that does not fit is dropped (the
	// outage then ends in the log at the next one, or is forgotten).
	st.obs = hraft.NewObserver(st.obsCh, false, func(o *hraft.Observation) bool {
		_, ok := o.Data.(hraft.ResumedHeartbeatObservation)
		return ok
	})
	return st
}

// reachable ends id's outage, if any: a stream to it opened. Raft's
// heartbeat observation says the same, but only to the replication that
// saw the failures: if leadership moved meanwhile, the dial is the only
// sign.
func (st *raftLogState) reachable(id string, out hclog.Logger) {
	st.mu.Lock()
	note := st.reach.resumed(id, st.now())
	st.mu.Unlock()
	if note.msg != "" {
		out.Log(note.level, note.msg)
	}
}

// followResumes logs, through out, the end of each outage it hears of
// from Raft, until ctx is done.
func (st *raftLogState) followResumes(ctx context.Context, out hclog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-st.obsCh:
			d, ok := o.Data.(hraft.ResumedHeartbeatObservation)
			if !ok {
				continue
			}
			st.mu.Lock()
			note := st.reach.resumed(string(d.PeerID), st.now())
			st.mu.Unlock()
			if note.msg != "" {
				out.Log(note.level, note.msg)
			}
		}
	}
}

// raftLogger wraps the logger Raft's lines go to.
type raftLogger struct {
	hclog.Logger
	st *raftLogState
}

var _ hclog.Logger = raftLogger{}

// newRaftLogger returns the logger to give Raft, writing to inner.
func newRaftLogger(inner hclog.Logger, st *raftLogState) hclog.Logger {
	return raftLogger{Logger: inner, st: st}
}

// Log applies the rules to one line of Raft's.
func (l raftLogger) Log(level hclog.Level, msg string, args ...interface{}) {
	class, id := classifyRaftLine(msg, args)
	var note reachNote
	switch class {
	case lineRoutine:
		level = min(level, hclog.Debug)
	case lineStartElection:
		level = min(level, hclog.Info)
	case lineAttemptFailed, lineNoContact:
		var errText string
		if err, ok := argValue(args, "error").(error); ok {
			errText = err.Error()
		}
		l.st.mu.Lock()
		note = l.st.reach.failed(id, errText, l.st.now(), class == lineAttemptFailed)
		l.st.mu.Unlock()
		level = min(level, hclog.Debug)
	case lineReplicating:
		l.st.mu.Lock()
		note = l.st.reach.resumed(id, l.st.now())
		l.st.mu.Unlock()
	case linePeerRemoved:
		l.st.mu.Lock()
		l.st.reach.removed(id)
		l.st.mu.Unlock()
	}
	if levelEnabled(l.Logger, level) {
		l.Logger.Log(level, msg, shortNameArgs(args)...)
	}
	if note.msg != "" {
		if note.err != "" {
			l.Logger.Log(note.level, note.msg, "last_error", note.err)
		} else {
			l.Logger.Log(note.level, note.msg)
		}
	}
}

// Trace logs at trace level.
func (l raftLogger) Trace(msg string, args ...interface{}) { l.Log(hclog.Trace, msg, args...) }

// Debug logs at debug level.
func (l raftLogger) Debug(msg string, args ...interface{}) { l.Log(hclog.Debug, msg, args...) }

// Info logs at info level.
func (l raftLogger) Info(msg string, args ...interface{}) { l.Log(hclog.Info, msg, args...) }

// Warn logs at warn level.
func (l raftLogger) Warn(msg string, args ...interface{}) { l.Log(hclog.Warn, msg, args...) }

// Error logs at error level.
func (l raftLogger) Error(msg string, args ...interface{}) { l.Log(hclog.Error, msg, args...) }

// With derives a logger with more implied arguments, under the same rules.
func (l raftLogger) With(args ...interface{}) hclog.Logger {
	return raftLogger{Logger: l.Logger.With(args...), st: l.st}
}

// Named derives a sub-logger under the same rules.
func (l raftLogger) Named(name string) hclog.Logger {
	return raftLogger{Logger: l.Logger.Named(name), st: l.st}
}

// ResetNamed derives a renamed logger under the same rules.
func (l raftLogger) ResetNamed(name string) hclog.Logger {
	return raftLogger{Logger: l.Logger.ResetNamed(name), st: l.st}
}

// levelEnabled reports whether l writes lines at level.
func levelEnabled(l hclog.Logger, level hclog.Level) bool {
	switch level {
	case hclog.Trace:
		return l.IsTrace()
	case hclog.Debug:
		return l.IsDebug()
	case hclog.Info:
		return l.IsInfo()
	case hclog.Warn:
		return l.IsWarn()
	case hclog.Error:
		return l.IsError()
	}
	return level != hclog.Off && level != hclog.NoLevel
}
