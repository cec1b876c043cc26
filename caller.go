package raft

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// caller sends requests to members on one protocol with one codec: the
// client, forwarding, peer exchange and the merge checks all use it.
type caller struct {
	host  host.Host
	proto protocol.ID
	codec codec
	// afterWrite, when set (tests only), is called once a request is
	// written, before the answer is read: a test cuts the link there to
	// lose the answer of a request that was delivered.
	afterWrite func(id peer.ID, req *request)
}

func newCaller(h host.Host, proto protocol.ID, cd codec) caller {
	return caller{host: h, proto: proto, codec: cd}
}

// call sends one request to one peer on its own stream and reads the answer.
// Errors that happen before the request is written wrap errNotSent. An answer
// that carries an error code is returned as a response (see response.err).
func (c caller) call(ctx context.Context, id peer.ID, req *request, deadline time.Time) (*response, error) {
	body, err := c.codec.encode(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	s, err := c.host.NewStream(network.WithAllowLimitedConn(ctx, "raft"), id, c.proto)
	if err != nil {
		return nil, fmt.Errorf("%w: open stream to %s: %w", errNotSent, id, err)
	}
	defer s.Close()
	_ = s.SetDeadline(deadline)
	// Abort the stream if the context ends first (Close of the cluster).
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if err := writeFrame(s, body); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("%w: write to %s: %w", errNotSent, id, err)
	}
	_ = s.CloseWrite()
	if c.afterWrite != nil {
		c.afterWrite(id, req)
	}
	payload, plain, _, err := c.codec.readMessage(s, true, nil)
	if err != nil {
		_ = s.Reset()
		if refusedBeforeHandling(err) {
			// The member does not serve the namespace (any more), or had
			// no room for the stream: it never saw the request.
			return nil, fmt.Errorf("%w: %s refused the stream: %w", errNotSent, id, err)
		}
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: no answer from %s", ErrTimeout, id)
		}
		return nil, fmt.Errorf("raft: read answer from %s: %w", id, err)
	}
	var resp response
	if err := wireDec.Unmarshal(payload, &resp); err != nil {
		return nil, fmt.Errorf("%w: answer from %s: %v", ErrInvalidCommand, id, err)
	}
	if plain && c.codec.key != nil && resp.Code == codeOK {
		// Only a refusal may come back in plaintext under a key: the
		// member refused our envelope and said why.
		return nil, fmt.Errorf("%w: %s answered in plaintext", ErrEncryptionRequired, id)
	}
	return &resp, nil
}

// refusedBeforeHandling tells whether a stream error means the remote side
// rejected the stream itself (libp2p negotiates protocols lazily, so "not
// supported" only shows on the first read), before any handler ran.
func refusedBeforeHandling(err error) bool {
	var ns msmux.ErrNotSupported[protocol.ID]
	if errors.As(err, &ns) {
		return true
	}
	var se *network.StreamError
	if errors.As(err, &se) && se.Remote {
		switch se.ErrorCode {
		case network.StreamProtocolNegotiationFailed, network.StreamResourceLimitExceeded, network.StreamRateLimited:
			return true
		}
	}
	return false
}

// ask sends one request and folds an error answer into the error, for
// callers that only need a successful answer.
func (c caller) ask(ctx context.Context, id peer.ID, req *request, deadline time.Time) (*response, error) {
	resp, err := c.call(ctx, id, req, deadline)
	if err != nil {
		return nil, err
	}
	if err := resp.err(); err != nil {
		return nil, err
	}
	return resp, nil
}
