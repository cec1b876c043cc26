package raft

import (
	"errors"
	"strings"
	"testing"
)

// TestErrorsSayTheOutcome: an error's message says whether the write it
// ended is known not to have been applied, or has an unknown outcome, the
// same way IsNotApplied decides, locally and after the wire.
func TestErrorsSayTheOutcome(t *testing.T) {
	cases := []struct {
		err        error
		notApplied bool
	}{
		{ErrNotLeader, true},
		{ErrNoLeader, true},
		{ErrNoMembers, true},
		{errNotSent, true},    // local only: never sent as such
		{errAfterClose, true}, // local only
		{ErrTimeout, false},
		{ErrLeadershipLost, false},
		{&unknownOutcome{err: ErrLeadershipLost}, false},
		{&unknownOutcome{err: errors.New("raft: read answer: stream reset")}, false},
	}
	for _, c := range cases {
		seen := []error{c.err}
		if c.err != errNotSent && c.err != errAfterClose {
			seen = append(seen, errorFromWire(errorCode(c.err), c.err.Error()))
		}
		for _, err := range seen {
			msg := err.Error()
			says := strings.Contains(msg, "not applied")
			unknown := strings.Contains(msg, "outcome is unknown") || strings.Contains(msg, "outcome unknown")
			if IsNotApplied(err) != c.notApplied || says != c.notApplied || unknown == c.notApplied {
				t.Errorf("%q: IsNotApplied %v, says not applied %v, says unknown %v; want not applied %v",
					msg, IsNotApplied(err), says, unknown, c.notApplied)
			}
			if strings.Count(msg, "unknown") > 1 {
				t.Errorf("%q says it twice", msg)
			}
		}
	}
}
