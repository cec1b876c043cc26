package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
)

// queueFlags are the queue commands' flags: the connection flags they share
// with kv, and claim's own.
type queueFlags struct {
	kvFlags
	ttl  time.Duration
	wait time.Duration
}

func newQueueCmd(stdout, stderr io.Writer) *cobra.Command {
	f := &queueFlags{}
	q := &cobra.Command{
		Use:   "queue",
		Short: "Push to, claim from and ack a running cluster's queues",
		Long: `An at-least-once queue (see the README, "Recipes: queue worker"): push adds
an item, claim takes the oldest item nobody holds for --ttl (unless acked by
then, the item can be claimed again), ack removes a claimed item.

Exit codes: 0 success, 1 failure, 2 usage error, 3 no item to claim within
--wait (claim), 4 the claim lapsed and cannot be acked any more (ack).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErr("missing subcommand: push, claim or ack")
		},
	}
	pf := q.PersistentFlags()
	pf.StringVar(&f.namespace, "namespace", "/raft/tauraft", "cluster namespace")
	pf.StringArrayVar(&f.peers, "peer", nil, "full /p2p/ multiaddr of a member (repeatable, at least one)")
	pf.StringVar(&f.keyFile, "key-file", "", "file holding the shared encryption key (at least 32 bytes, used as is)")
	pf.StringVar(&f.swarmKeyFile, "swarm-key-file", "", "swarm key file of the members' libp2p private network")
	pf.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for connections and writes")

	push := &cobra.Command{
		Use:   "push QUEUE VALUE",
		Short: `Add VALUE (- reads standard input) to QUEUE; prints "id N"`,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := []byte(args[1])
			if args[1] == "-" {
				var err error
				if value, err = io.ReadAll(cmd.InOrStdin()); err != nil {
					return failure(fmt.Errorf("read value from stdin: %w", err))
				}
			}
			return withClient(cmd.Context(), &f.kvFlags, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				id, err := c.Enqueue(args[0], value, f.timeout, targets...)
				if err != nil {
					return writeOutcome(err)
				}
				_, err = fmt.Fprintf(stdout, "id %d\n", id)
				return err
			})
		},
	}
	claim := &cobra.Command{
		Use:   "claim QUEUE",
		Short: `Claim QUEUE's oldest unclaimed item for --ttl; prints "ID TOKEN", then the value`,
		Long: `Claims QUEUE's oldest item that nobody holds, waiting up to --wait for one
(exit 3 if none comes). Prints a first line "ID TOKEN" (what ack needs), then
the item's value as is (a newline is added only if it does not end with one).
Unless acked within --ttl, the item can be claimed again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.ttl < raft.MinLeaseTTL || f.ttl > raft.MaxLeaseTTL {
				return usageErr("--ttl must be between %s and %s, got %s", raft.MinLeaseTTL, raft.MaxLeaseTTL, f.ttl)
			}
			if f.wait <= 0 {
				return usageErr("--wait must be positive, got %s", f.wait)
			}
			return withClient(cmd.Context(), &f.kvFlags, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				parent := cmd.Context()
				if parent == nil {
					parent = context.Background()
				}
				ctx, cancel := context.WithTimeout(parent, f.wait)
				defer cancel()
				item, err := c.Claim(ctx, args[0], f.ttl, targets...)
				switch {
				case errors.Is(err, context.DeadlineExceeded):
					return &exitError{code: exitNotFound, err: fmt.Errorf("no item to claim in %s within %s", args[0], f.wait)}
				case err != nil:
					return err
				}
				out := fmt.Appendf(nil, "%d %d\n", item.ID, item.Token)
				out = append(out, item.Value...)
				if len(item.Value) == 0 || !bytes.HasSuffix(item.Value, []byte("\n")) {
					out = append(out, '\n')
				}
				_, err = stdout.Write(out)
				return err
			})
		},
	}
	claim.Flags().DurationVar(&f.ttl, "ttl", 30*time.Second, "how long the claim holds the item (its visibility timeout)")
	claim.Flags().DurationVar(&f.wait, "wait", 10*time.Second, "how long to wait for an item")
	ack := &cobra.Command{
		Use:   "ack QUEUE ID TOKEN",
		Short: "Remove the item ID claimed with TOKEN (exit 4 if the claim lapsed)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil || id == 0 {
				return usageErr("ID %q is not a positive number", args[1])
			}
			token, err := strconv.ParseUint(args[2], 10, 64)
			if err != nil || token == 0 {
				return usageErr("TOKEN %q is not a positive number", args[2])
			}
			return withClient(cmd.Context(), &f.kvFlags, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				err := c.Ack(args[0], raft.Item{ID: id, Token: token}, f.timeout, targets...)
				if errors.Is(err, raft.ErrLeaseNotFound) {
					return &exitError{code: exitNotOK, err: err}
				}
				return writeOutcome(err)
			})
		},
	}
	q.AddCommand(push, claim, ack)
	return q
}
