package raft

import (
	"errors"
	"fmt"

	hraft "github.com/hashicorp/raft"
)

// Sentinel errors. Their messages say what a write that failed with them
// became, where that is known: "(not applied)" for the refusals that
// IsNotApplied matches, "outcome unknown" for those that leave it open.
// Every error returned by a Cluster or a Client that has one of
// these causes matches it with errors.Is, on both sides of the wire: the command
// service sends the sentinel as a numeric code and the client maps it back.
var (
	// ErrNotLeader is returned by leader-only calls on a member that is not the
	// leader. The call certainly was not applied.
	ErrNotLeader = errors.New("raft: not the leader (not applied)")
	// ErrNoLeader means no leader is known (an election is running, or the
	// member is cut off from the majority). The call certainly was not applied.
	ErrNoLeader = errors.New("raft: no leader (not applied)")
	// ErrShutdown is returned by calls on a closed cluster or client, and by a
	// member that shuts down while serving a request.
	ErrShutdown = errors.New("raft: shut down")
	// ErrAlreadyClosed is returned by a second Close.
	ErrAlreadyClosed = errors.New("raft: already closed")
	// ErrInvalidNamespace: a namespace must start with "/raft/" and be a clean
	// path (no empty, "." or ".." segment, no trailing slash).
	ErrInvalidNamespace = errors.New("raft: invalid namespace")
	// ErrInvalidTimeout: a timeout must be in (0, MaxTimeout].
	ErrInvalidTimeout = errors.New("raft: invalid timeout")
	// ErrInvalidBarrier: a read barrier must be in [0, MaxBarrier].
	ErrInvalidBarrier = errors.New("raft: invalid barrier")
	// ErrInvalidCommand: a command that does not decode, or an unknown request.
	ErrInvalidCommand = errors.New("raft: invalid command")
	// ErrInvalidKey: the empty key, or a key that is not valid where it is used.
	ErrInvalidKey = errors.New("raft: invalid key")
	// ErrTooLarge: a key, value, command or message over its documented limit
	// (MaxKeySize, MaxValueSize, MaxCommandSize, MaxMessageSize).
	ErrTooLarge = errors.New("raft: too large")
	// ErrTimeout: the call did not finish within its timeout. For a write the
	// outcome is unknown: it may still be applied later.
	ErrTimeout = errors.New("raft: timed out (for a write, the outcome is unknown: it may still be applied)")
	// ErrLeadershipLost: the leader lost leadership while the write was in
	// flight. The outcome is unknown: the entry may still commit.
	ErrLeadershipLost = errors.New("raft: leadership lost while committing (outcome unknown: the write may still be applied)")
	// ErrEncryptionRequired: a member configured with an encryption key got a
	// plaintext request, or a keyless client talked to such a member.
	ErrEncryptionRequired = errors.New("raft: encryption required")
	// ErrUnexpectedEncryption: a member without a key got an encrypted request.
	ErrUnexpectedEncryption = errors.New("raft: peer sent an encrypted request but has no key configured")
	// ErrNoMembers: a Client found no member of the namespace to talk to.
	// Nothing was sent.
	ErrNoMembers = errors.New("raft: no member of the namespace found (nothing sent, not applied)")
	// ErrCompacted: a Watch asked for changes older than the history the
	// member keeps. Resync with GetEntry/Keys, then watch from that index.
	ErrCompacted = errors.New("raft: watch history compacted")
	// ErrLeaseNotFound: the lease expired or was revoked (or never existed).
	ErrLeaseNotFound = errors.New("raft: lease not found")
	// ErrLocked: TryLock found the lock held by someone else.
	ErrLocked = errors.New("raft: locked")
)

// errAfterClose is ErrShutdown for a call made after Close (of a Cluster or
// a Client): nothing was sent or proposed, so unlike a shutdown in the middle
// of a write it certainly was not applied.
var errAfterClose = fmt.Errorf("%w: called after Close (not applied)", ErrShutdown)

// errNotSent marks a call that failed before its request left this node, so
// it is safe to try another member.
var errNotSent = errors.New("raft: request not sent (not applied)")

// notApplied lists the causes that mean a write certainly was not applied:
// refusals before Raft saw the write, and bad input. The README's "Errors"
// section is this list.
var notApplied = []error{
	ErrNotLeader, ErrNoLeader, ErrNoMembers, errNotSent, errAfterClose,
	ErrInvalidNamespace, ErrInvalidTimeout, ErrInvalidBarrier, ErrInvalidCommand, ErrInvalidKey, ErrTooLarge,
	ErrEncryptionRequired, ErrUnexpectedEncryption, ErrDecrypt, ErrKeyTooShort,
}

// IsNotApplied reports whether err means that the write it came from was
// certainly not applied, so the caller may retry it without risk of applying
// it twice. For any other error of a write (ErrTimeout, ErrLeadershipLost,
// ErrShutdown from a member shutting down mid-write, a stream that broke after
// the request was sent) the outcome is unknown: the write may still be
// applied. IsNotApplied(nil) is false.
func IsNotApplied(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range notApplied {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// mayTryElsewhere reports whether another member may take a request that
// failed with err: it certainly was not applied, and the failure was about
// where it was sent (no leader there, not the leader, not delivered), not
// about the request itself.
func mayTryElsewhere(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) || errors.Is(err, errNotSent)
}

// wireErrors lists the sentinels that travel as codes. The code of a sentinel
// is its index + 2; 0 means success and 1 an error without a sentinel. Append
// only: the order is the wire format.
var wireErrors = []error{
	ErrNotLeader,
	ErrNoLeader,
	ErrShutdown,
	ErrAlreadyClosed,
	ErrInvalidNamespace,
	ErrInvalidTimeout,
	ErrInvalidBarrier,
	ErrInvalidCommand,
	ErrInvalidKey,
	ErrTooLarge,
	ErrTimeout,
	ErrLeadershipLost,
	ErrEncryptionRequired,
	ErrUnexpectedEncryption,
	ErrDecrypt,
	ErrKeyTooShort,
	ErrNoMembers,
	ErrCompacted,
	ErrLeaseNotFound,
	ErrLocked,
}

const (
	codeOK    uint16 = 0
	codeOther uint16 = 1
)

// errorCode returns the wire code of err: the code of the first sentinel it
// matches, codeOther for any other error, codeOK for nil.
func errorCode(err error) uint16 {
	if err == nil {
		return codeOK
	}
	for i, s := range wireErrors {
		if errors.Is(err, s) {
			return uint16(i + 2)
		}
	}
	return codeOther
}

// remoteError is an error received from another member: it keeps the remote
// message and matches the sentinel its code named.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// errorFromWire rebuilds an error from its code and message.
func errorFromWire(code uint16, msg string) error {
	if code == codeOK {
		return nil
	}
	var sentinel error
	if i := int(code) - 2; i >= 0 && i < len(wireErrors) {
		sentinel = wireErrors[i]
	}
	if msg == "" {
		if sentinel != nil {
			msg = sentinel.Error()
		} else {
			msg = fmt.Sprintf("raft: remote error (code %d)", code)
		}
	}
	return &remoteError{sentinel: sentinel, msg: msg}
}

// translateRaftError maps hashicorp/raft's errors onto this package's sentinels
// so callers need only one set of errors.
func translateRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, hraft.ErrNotLeader), errors.Is(err, hraft.ErrNotVoter):
		return ErrNotLeader
	case errors.Is(err, hraft.ErrLeadershipLost), errors.Is(err, hraft.ErrAbortedByRestore):
		return ErrLeadershipLost
	case errors.Is(err, hraft.ErrRaftShutdown), errors.Is(err, hraft.ErrPipelineShutdown):
		return ErrShutdown
	case errors.Is(err, hraft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: not enqueued in time", ErrTimeout)
	case errors.Is(err, hraft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: leadership transfer in progress", ErrNotLeader)
	}
	return err
}
