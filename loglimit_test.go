package raft

import (
	"fmt"
	"testing"
	"time"
)

func TestLogLimiter(t *testing.T) {
	l := newLogLimiter(time.Minute)
	t0 := time.Unix(1000, 0)
	steps := []struct {
		key        string
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"a", 30 * time.Second, false, 0},
		{"b", 30 * time.Second, true, 0}, // keys are independent
		{"a", time.Minute, true, 2},      // the next line counts what was held back
		{"a", time.Minute + time.Second, false, 0},
		{"a", 3 * time.Minute, true, 1},
	}
	for i, s := range steps {
		ok, suppressed := l.allow(s.key, t0.Add(s.at))
		if ok != s.ok || suppressed != s.suppressed {
			t.Fatalf("step %d (%s at %v): allow = %v, %d; want %v, %d", i, s.key, s.at, ok, suppressed, s.ok, s.suppressed)
		}
	}
	// Bounded: a flood of keys never grows it past maxLimitedKeys.
	for i := range 5 * maxLimitedKeys {
		l.allow(fmt.Sprint(i), t0)
	}
	if n := len(l.lines); n > maxLimitedKeys {
		t.Fatalf("limiter holds %d keys; want at most %d", n, maxLimitedKeys)
	}
}
