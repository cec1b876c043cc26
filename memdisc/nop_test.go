package memdisc_test

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/discovery"

	"github.com/tauraft/raft/memdisc"
)

func TestNop(t *testing.T) {
	ctx := context.Background()
	var d discovery.Discovery = memdisc.Nop{}
	if ttl, err := d.Advertise(ctx, ns); err != nil || ttl != time.Hour {
		t.Fatalf("Advertise = %v, %v; want 1h, nil", ttl, err)
	}
	ch, err := d.FindPeers(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for ai := range ch {
		t.Errorf("Nop found %v", ai)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if ttl, err := d.Advertise(cctx, ns); err == nil || ttl != time.Hour {
		t.Errorf("Advertise with a cancelled context = %v, %v; want 1h and the context's error", ttl, err)
	}
	if ch, err := d.FindPeers(cctx, ns); err == nil || ch != nil {
		t.Errorf("FindPeers with a cancelled context = %v, %v; want nil and the context's error", ch, err)
	}
	if d != (memdisc.Nop{}) {
		t.Error("a Nop in an interface is not equal to Nop{}")
	}
}
