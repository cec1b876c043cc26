package raft

import (
	"errors"
	"time"
)

// BootstrapProgress is where a starting member's bootstrap window stands
// (WithBootstrapProgress).
type BootstrapProgress struct {
	// Found is how many peers of the namespace answered lately.
	Found int
	// Left is the time left in the window.
	Left time.Duration
}

// bootstrapProgressInterval is how often WithBootstrapProgress's function
// is called: once a second reads as a countdown without flooding.
const bootstrapProgressInterval = time.Second

// WithBootstrapProgress calls f about once a second while New waits in its
// bootstrap window (not at all when the member resumes from its own state
// or forms at once), so a program can show that it is looking for peers.
// f runs on the bootstrap's goroutine: it must return quickly.
func WithBootstrapProgress(f func(BootstrapProgress)) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("raft: WithBootstrapProgress: nil function")
		}
		c.bootstrapProgress = f
		return nil
	}
}

// progressReporter calls the progress function at most once an interval.
type progressReporter struct {
	f    func(BootstrapProgress)
	last time.Time
}

func newProgressReporter(f func(BootstrapProgress)) *progressReporter {
	return &progressReporter{f: f}
}

// report calls the function with the live peers of t, if one is wanted
// and the last call was an interval ago.
func (p *progressReporter) report(t *peerTracker, deadline time.Time) {
	now := time.Now()
	if p.f == nil || (!p.last.IsZero() && now.Sub(p.last) < bootstrapProgressInterval) {
		return
	}
	p.last = now
	found := 0
	for _, v := range t.view() {
		if v.alive {
			found++
		}
	}
	p.f(BootstrapProgress{Found: found, Left: max(deadline.Sub(now), 0)})
}
