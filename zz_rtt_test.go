package raft

import (
	"bufio"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/tauraft/raft/rafttest"
)

func TestZZRTT(t *testing.T) {
	mesh := rafttest.NewMesh(t, 2, rafttest.Connected())
	a, b := mesh.Node(0).Peer(), mesh.Node(1).Peer()
	b.SetStreamHandler("/zz", func(s network.Stream) {
		br := bufio.NewReader(s)
		buf := make([]byte, 100)
		for {
			if _, err := io.ReadFull(br, buf); err != nil {
				s.Close()
				return
			}
			s.Write(buf)
		}
	})
	s, err := a.NewStream(t.Context(), b.ID(), "/zz")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	var d []time.Duration
	for i := 0; i < 20000; i++ {
		st := time.Now()
		s.Write(buf)
		io.ReadFull(s, buf)
		d = append(d, time.Since(st))
	}
	s.Close()
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	t.Logf("p50 %v p10 %v p90 %v", d[len(d)/2], d[len(d)/10], d[len(d)*9/10])
}
