package memdisc

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Nop is a discovery service that advertises nowhere and finds nobody. It
// suits a node that is told explicitly which peers to talk to (a client
// given the addresses of cluster members, a unit test) but whose
// configuration wants a discovery service: supplying Nop keeps the node from
// starting a DHT it has no use for.
//
// The zero value is ready to use, and all Nop values are equal, so a Nop
// stored in an interface compares equal to Nop{}.
type Nop struct{}

// The compiler checks that Nop is a complete discovery service.
var _ discovery.Discovery = Nop{}

// Advertise implements discovery.Advertiser. It records nothing but still
// grants an hour: callers renew an advertisement at a fraction of the TTL they
// get back, and a long one keeps them from calling again for nothing. It
// returns ctx's error if ctx is already done (with the same TTL), like a real
// service that was asked too late.
func (Nop) Advertise(ctx context.Context, _ string, _ ...discovery.Option) (time.Duration, error) {
	return time.Hour, ctx.Err()
}

// FindPeers implements discovery.Discoverer. It returns an empty, already
// closed channel, so that a caller ranging over it finishes at once, or
// ctx's error if ctx is already done.
func (Nop) FindPeers(ctx context.Context, _ string, _ ...discovery.Option) (<-chan peer.AddrInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan peer.AddrInfo)
	close(ch)
	return ch, nil
}
