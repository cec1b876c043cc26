package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tauraft/raft"
	"github.com/tauraft/raft/rafttest"
)

// runQueue runs "tauraft queue ARGS..." in process.
func runQueue(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"queue"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestQueueCommands drives a one-member cluster through "tauraft queue":
// push, claim (oldest first, waiting, exit 3 when nothing comes), a claim
// that lapses and is claimed again with a larger token, ack refusing the
// lapsed token (exit 4) and taking the current one, and usage errors.
func TestQueueCommands(t *testing.T) {
	const ns = "/raft/queuecli"
	mesh := rafttest.NewMesh(t, 1)
	c, err := raft.New(mesh.Node(0), ns, raft.WithForceBootstrap(), raft.WithTimeoutPreset(raft.PresetLocal),
		raft.WithSnapshotDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	n := mesh.Node(0)
	member := fmt.Sprintf("%s/p2p/%s", n.Peer().Addrs()[0], n.ID())
	common := []string{"--namespace", ns, "--peer", member}

	var ids [2]uint64
	for i, v := range []string{"first", "second\n"} {
		code, out, stderr := runQueue(t, append([]string{"push", "jobs", v}, common...)...)
		if k, _ := fmt.Sscanf(out, "id %d\n", &ids[i]); code != 0 || k != 1 {
			t.Fatalf("push %q: exit %d, stdout %q, stderr %q", v, code, out, stderr)
		}
	}
	claim := func(want uint64, value string, args ...string) uint64 {
		t.Helper()
		code, out, stderr := runQueue(t, append(append([]string{"claim", "jobs"}, args...), common...)...)
		var id, token uint64
		head, rest, _ := strings.Cut(out, "\n")
		if k, _ := fmt.Sscanf(head, "%d %d", &id, &token); code != 0 || k != 2 || id != want || rest != value {
			t.Fatalf("claim: exit %d, stdout %q, stderr %q; want item %d with %q", code, out, stderr, want, value)
		}
		return token
	}
	first := claim(ids[0], "first\n", "--ttl", "1s")
	second := claim(ids[1], "second\n", "--ttl", "1m")
	// Nothing to claim until the first claim lapses.
	if code, out, stderr := runQueue(t, append([]string{"claim", "jobs", "--wait", "200ms"}, common...)...); code != exitNotFound || out != "" {
		t.Fatalf("claim of a queue with nothing free: exit %d, stdout %q, stderr %q; want exit 3", code, out, stderr)
	}
	again := claim(ids[0], "first\n", "--wait", "20s")
	if again <= second || second <= first {
		t.Fatalf("tokens %d, %d, %d do not increase", first, second, again)
	}
	ack := func(id, token uint64) (int, string) {
		code, _, stderr := runQueue(t, append([]string{"ack", "jobs", fmt.Sprint(id), fmt.Sprint(token)}, common...)...)
		return code, stderr
	}
	if code, stderr := ack(ids[0], first); code != exitNotOK || !strings.Contains(stderr, "lapsed") {
		t.Fatalf("ack of a lapsed claim: exit %d, stderr %q; want exit 4", code, stderr)
	}
	for _, a := range [][2]uint64{{ids[0], again}, {ids[1], second}} {
		if code, stderr := ack(a[0], a[1]); code != 0 {
			t.Fatalf("ack %v: exit %d, stderr %q", a, code, stderr)
		}
	}
	if keys := c.Keys(""); len(keys) != 0 {
		t.Fatalf("keys left after every item was acked: %q", keys)
	}

	for _, args := range [][]string{
		{"ack", "jobs", "x", "1"},
		{"ack", "jobs", "1", "0"},
		{"ack", "jobs", "1"},
		{"claim", "jobs", "--ttl", "10ms"},
		{"claim", "jobs", "--wait", "0s"},
		{"push", "jobs"},
		{"push", "", "v"},
		{},
	} {
		code, out, stderr := runQueue(t, append(args, common...)...)
		if code != exitUsage || out != "" || strings.Count(stderr, "\n") != 1 {
			t.Errorf("queue %q: exit %d, stdout %q, stderr %q; want exit 2 and one line", args, code, out, stderr)
		}
	}
}
