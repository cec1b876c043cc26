package rafttest

import (
	"testing"
	"time"
)

// PollInterval is how often WaitFor evaluates its condition.
const PollInterval = 20 * time.Millisecond

// WaitFor polls cond every PollInterval until it returns true, and fails the
// test with "timed out after <timeout> waiting for <what>" if it has not
// within timeout. cond is always evaluated at least once. It must be called
// from the test goroutine.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("rafttest: timed out after %v waiting for %s", timeout, what)
			return // only reached with a testing.TB whose Fatalf returns
		}
		time.Sleep(PollInterval)
	}
}
