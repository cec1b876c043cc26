package raft

import (
	"sync"
	"time"
)

// logLimiter lets one line per key through each interval and counts the
// lines it holds back, so a misbehaving or misconfigured peer shows up as one
// clear line a minute with a count, not as a flood that drowns the rest.
type logLimiter struct {
	interval time.Duration

	mu    sync.Mutex
	lines map[string]limitedLine
}

// limitedLine is when a key last got through, and what was held back since.
type limitedLine struct {
	at         time.Time
	suppressed int
}

// maxLimitedKeys bounds the limiter's memory: past it, it forgets them all
// (and so lets each through once more) rather than grow.
const maxLimitedKeys = 1024

func newLogLimiter(interval time.Duration) *logLimiter {
	return &logLimiter{interval: interval, lines: map[string]limitedLine{}}
}

// allow reports whether a line for key may be logged now and, if so, how
// many were held back since the last one.
func (l *logLimiter) allow(key string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	last, seen := l.lines[key]
	if seen && now.Sub(last.at) < l.interval {
		last.suppressed++
		l.lines[key] = last
		return false, 0
	}
	if !seen && len(l.lines) >= maxLimitedKeys {
		clear(l.lines)
	}
	l.lines[key] = limitedLine{at: now}
	return true, last.suppressed
}

// repeatLogInterval is how often the same error about the same peer is
// logged: once, then at most once a minute with the count of the repeats
// held back in between.
const repeatLogInterval = time.Minute

// peerArgKeys are the argument names that name the peer a line is about,
// in this package's lines and in Raft's.
var peerArgKeys = []string{"peer", "server-id", "target", "from", "via", "candidate"}

// repeatKey is what makes two warnings "the same error about the same
// peer": the logger, the message, the peer named, and the error's text.
// Only lines that carry an error are rate-limited (ok false for the
// others): a warning without one reports an event, not a failure that may
// repeat.
func repeatKey(name, msg string, args []interface{}) (key string, ok bool) {
	errv, isErr := argValue(args, "error").(error)
	if !isErr || errv == nil {
		return "", false
	}
	var who string
	for _, k := range peerArgKeys {
		if who = peerString(argValue(args, k)); who != "" {
			break
		}
	}
	return name + "\x00" + msg + "\x00" + who + "\x00" + errv.Error(), true
}
