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
