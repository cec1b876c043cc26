package raft

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// Limits of the built-in key-value store and of the wire. Past them a call
// fails with ErrTooLarge (or ErrInvalidTimeout, ErrInvalidBarrier) and
// nothing is applied.
const (
	// MaxKeySize is the longest key, in bytes.
	MaxKeySize = 1024
	// MaxValueSize is the largest value, in bytes.
	MaxValueSize = 1 << 20
	// MaxCommandSize is the largest encoded command Apply takes (a batch of
	// operations included).
	MaxCommandSize = 4 << 20
	// MaxMessageSize is the largest frame the command service reads or writes.
	MaxMessageSize = MaxCommandSize + 64<<10
	// MaxTimeout is the longest timeout a write or membership call takes.
	MaxTimeout = 60 * time.Second
	// MaxBarrier is the longest read barrier a Client.Get takes.
	MaxBarrier = 30 * time.Second
	// MaxLeases bounds the leases that exist at once: every member keeps
	// the table in memory and the leader times each lease. A Grant past it
	// fails with ErrTooLarge.
	MaxLeases = 10000
	// MaxLeaseKeys bounds the keys bound to one lease: its expiry or Revoke
	// deletes them all in one log entry. A write binding one more fails with
	// ErrTooLarge.
	MaxLeaseKeys = 10000
	// MinLeaseTTL is the shortest lease TTL: a lease must outlive the
	// round trip of its KeepAlive through the leader with room to spare.
	MinLeaseTTL = time.Second
	// MaxLeaseTTL is the longest lease TTL.
	MaxLeaseTTL = 24 * time.Hour
)

// validateLeaseTTL checks a lease's TTL.
func validateLeaseTTL(ttl time.Duration) error {
	if ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return fmt.Errorf("%w: lease TTL %v is outside [%v, %v]", ErrInvalidTimeout, ttl, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// ValidateNamespace checks that namespace starts with "/raft/", names
// something after it, and is a clean path: no empty, "." or ".." segment, no
// trailing slash, no control characters.
func ValidateNamespace(namespace string) error {
	rest, ok := strings.CutPrefix(namespace, "/raft/")
	if !ok || rest == "" {
		return fmt.Errorf("%w: %q must start with /raft/ and name a cluster", ErrInvalidNamespace, namespace)
	}
	if path.Clean(namespace) != namespace {
		return fmt.Errorf("%w: %q is not a clean path", ErrInvalidNamespace, namespace)
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q has an empty, . or .. segment", ErrInvalidNamespace, namespace)
		}
	}
	for _, r := range namespace {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %q has a control character", ErrInvalidNamespace, namespace)
		}
	}
	return nil
}

// validateKey enforces the key rules: any non-empty string up to MaxKeySize
// bytes. Keys are opaque: no byte has a meaning.
func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return checkSize("key", len(key), MaxKeySize)
}

// validateValue enforces MaxValueSize.
func validateValue(value []byte) error {
	return checkSize("value", len(value), MaxValueSize)
}

// validateTimeout checks a write or membership timeout.
func validateTimeout(d time.Duration) error {
	if d <= 0 || d > MaxTimeout {
		return fmt.Errorf("%w: %v is outside (0, %v]", ErrInvalidTimeout, d, MaxTimeout)
	}
	return nil
}

// validateBarrier checks a read barrier in nanoseconds.
func validateBarrier(ns int64) error {
	if ns < 0 || time.Duration(ns) > MaxBarrier {
		return fmt.Errorf("%w: %v is outside [0, %v]", ErrInvalidBarrier, time.Duration(ns), MaxBarrier)
	}
	return nil
}

// checkSize fails with ErrTooLarge when n bytes of what exceed max.
func checkSize(what string, n, max int) error {
	if n > max {
		return fmt.Errorf("%w: %s of %d bytes (max %d)", ErrTooLarge, what, n, max)
	}
	return nil
}

// Watch limits (see watch.go, watch_wire.go and the README's "Watch").
const (
	// DefaultWatchHistoryEvents is how many recent change events a member
	// keeps for Watch unless WithWatchHistory says otherwise.
	DefaultWatchHistoryEvents = 10000
	// DefaultWatchHistoryBytes bounds the keys and values of those events
	// (each counts its key, its value and 64 bytes), so large values cannot
	// make the history hold more than this.
	DefaultWatchHistoryBytes = 32 << 20

	// watchStreamsPerPeer and watchStreamsTotal cap the watch streams a
	// member serves: each holds a goroutine and up to one frame of events
	// for as long as it lives, so they are capped apart from (and far below)
	// the short-lived command streams, whose slots a watch gives back once
	// its request is read. A watch over a cap is reset as a resource-limit
	// refusal (a Client tries the next member). In a keyed namespace only a
	// peer holding the key gets that far: its request must authenticate.
	watchStreamsPerPeer = 8
	watchStreamsTotal   = 64
	// watchFrameBytes is about the most keys and values one watch frame
	// (and one read of Cluster.Watch's history) carries; a single larger
	// event gets a frame of its own (it still fits MaxMessageSize).
	watchFrameBytes = 256 << 10
	// watchFrameEvents caps the events of one frame.
	watchFrameEvents = 1024
)

// MaxLockNameSize is the longest lock name, in bytes: a lock's waiter keys
// (see lock.go) must fit MaxKeySize.
const MaxLockNameSize = MaxKeySize - len(lockWaiterSpace) - 1 - lockIDDigits
