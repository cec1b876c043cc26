//go:build unix

package raft

import (
	"context"
	"testing"

	"github.com/tauraft/raft/rafttest"
)

// benchQueueWorkers is the concurrency of BenchmarkQueue.
const benchQueueWorkers = 16

// BenchmarkQueue: a queue worker's round trip through a Client on a node
// outside the cluster, 16 workers at once: Enqueue, Claim (the oldest
// unclaimed item) and Ack, three log entries, against Client.Set by 16
// writers, one log entry, in the same run (benchCompare: sides take turns
// chunk by chunk). Three members on pebble, as a production node runs (the
// claims' ordered reads are range reads there). Reported: each side's
// throughput and latency, and ops-x:queue/set, the worker round trips per
// Set; ops-x:enqueue/set is Enqueue alone.
//
//	go test -run '^$' -bench 'BenchmarkQueue' -benchtime 2000x -count 3 .
func BenchmarkQueue(b *testing.B) {
	mesh := rafttest.NewMesh(b, benchNodes, rafttest.Connected(), rafttest.WithPebble())
	lib := benchStartCluster(b, mesh, "/raft/bench-queue")
	cl, err := NewClient(mesh.Node(mesh.Add()), "/raft/bench-queue", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Close() })
	const q = "bench"
	set := func(i int) error { return cl.Set(benchKey(i), benchValue, benchWriteTimeout) }
	enqueue := func(i int) error {
		_, err := cl.Enqueue("bench-only", benchValue, benchWriteTimeout)
		return err
	}
	worker := func(i int) error {
		if _, err := cl.Enqueue(q, benchValue, benchWriteTimeout); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), benchWriteTimeout)
		defer cancel()
		item, err := cl.Claim(ctx, q, 30*benchWriteTimeout/10)
		if err != nil {
			return err
		}
		return cl.Ack(q, item, benchWriteTimeout)
	}
	benchWarmUp(b, set)
	benchWarmUp(b, worker)
	sides := []benchSide{
		{name: "set", op: set, retries: &lib.retries},
		{name: "enqueue", op: enqueue, retries: &lib.retries},
		{name: "queue", op: worker, retries: &lib.retries},
	}
	b.Run("workers16", func(b *testing.B) {
		benchCompare(b, benchQueueWorkers, sides, []benchRatio{{"queue", "set"}, {"enqueue", "set"}})
	})
}
