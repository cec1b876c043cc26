package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
	"github.com/tauraft/raft/memdisc"
	"github.com/tauraft/raft/p2pnode"
)

type kvFlags struct {
	namespace    string
	peers        []string
	timeout      time.Duration
	keyFile      string
	swarmKeyFile string
	barrier      time.Duration
	entry        bool
	modIndex     uint64
	after        uint64
}

func newKVCmd(stdout, stderr io.Writer) *cobra.Command {
	f := &kvFlags{}
	kv := &cobra.Command{
		Use:   "kv",
		Short: "Read and write a running cluster's key-value store",
		Long: `Talks to the members given with --peer through a throwaway libp2p host.

Values go to stdout as they are (a newline is added only if the value does not
end with one); errors go to stderr. Exit codes: 0 success, 1 failure,
2 usage error, 3 key not found (get), 4 condition did not hold (cas).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErr("missing subcommand: set, get, delete, keys, cas, watch or restore")
		},
	}
	pf := kv.PersistentFlags()
	pf.StringVar(&f.namespace, "namespace", "/raft/tauraft", "cluster namespace")
	pf.StringArrayVar(&f.peers, "peer", nil, "full /p2p/ multiaddr of a member (repeatable, at least one)")
	pf.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for connections and writes")
	pf.StringVar(&f.keyFile, "key-file", "", "file holding the shared encryption key (at least 32 bytes, used as is)")
	pf.StringVar(&f.swarmKeyFile, "swarm-key-file", "", "swarm key file of the members' libp2p private network")

	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Store VALUE under KEY (VALUE - reads standard input)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := []byte(args[1])
			if args[1] == "-" {
				var err error
				if value, err = io.ReadAll(cmd.InOrStdin()); err != nil {
					return failure(fmt.Errorf("read value from stdin: %w", err))
				}
			}
			return withClient(cmd.Context(), f, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				return writeOutcome(c.Set(args[0], value, f.timeout, targets...))
			})
		},
	}
	get := &cobra.Command{
		Use:   "get KEY",
		Short: "Print the value of KEY (exit 3 if it does not exist)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.barrier < 0 || f.barrier > raft.MaxBarrier {
				return usageErr("--barrier must be between 0 and %s, got %s", time.Duration(raft.MaxBarrier), f.barrier)
			}
			return withClient(cmd.Context(), f, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				var value []byte
				var found bool
				var e raft.Entry
				var err error
				if f.entry {
					e, found, err = c.GetEntry(args[0], int64(f.barrier), targets...)
					value = e.Value
				} else {
					value, found, err = c.Get(args[0], int64(f.barrier), targets...)
				}
				if err != nil {
					return err
				}
				if !found {
					return &exitError{code: exitNotFound, err: fmt.Errorf("key not found: %s", args[0])}
				}
				if len(value) == 0 || !bytes.HasSuffix(value, []byte("\n")) {
					value = append(value, '\n')
				}
				if f.entry {
					value = fmt.Appendf(value, "create-index %d\nmod-index %d\nlease %d\n", e.CreateIndex, e.ModIndex, e.Lease)
				}
				_, err = stdout.Write(value)
				return err
			})
		},
	}
	get.Flags().DurationVar(&f.barrier, "barrier", 0, "linearizable read: wait up to this long for the leader's barrier (0: local, possibly stale read)")
	get.Flags().BoolVar(&f.entry, "entry", false, `also print the key's versions, one per line after the value: "create-index N", "mod-index N", "lease N"`)
	cas := &cobra.Command{
		Use:   "cas KEY VALUE --mod-index N",
		Short: "Store VALUE under KEY only if KEY was last written at index N (0: only if absent)",
		Long: `Compare-and-set: one transaction that sets KEY to VALUE if its mod-index (see
"get --entry") is still N, N 0 meaning that KEY must not exist. Prints
"applied index I" (I: the transaction's log index, KEY's new mod-index) or
"not applied index I" and exits 4 when the condition did not hold.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("mod-index") {
				return usageErr("cas needs --mod-index (0: only if the key is absent)")
			}
			return withClient(cmd.Context(), f, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				res, err := c.Txn(raft.Txn{
					If:   []raft.Cond{raft.IfModIndex(args[0], f.modIndex)},
					Then: []raft.Op{raft.SetOp(args[0], []byte(args[1]))},
				}, f.timeout, targets...)
				if err != nil {
					return writeOutcome(err)
				}
				if !res.OK {
					fmt.Fprintf(stdout, "not applied index %d\n", res.Index)
					return &exitError{code: exitNotOK, err: fmt.Errorf("%s was not at mod-index %d", args[0], f.modIndex)}
				}
				_, err = fmt.Fprintf(stdout, "applied index %d\n", res.Index)
				return err
			})
		},
	}
	cas.Flags().Uint64Var(&f.modIndex, "mod-index", 0, "the mod-index KEY must have (0: KEY must be absent)")
	del := &cobra.Command{
		Use:   "delete KEY",
		Short: "Remove KEY (succeeds if it does not exist)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd.Context(), f, true, args[0], func(c *raft.Client, targets []peer.ID) error {
				return writeOutcome(c.Delete(args[0], f.timeout, targets...))
			})
		},
	}
	keys := &cobra.Command{
		Use:   "keys [PREFIX]",
		Short: "List keys starting with PREFIX, one per line, sorted",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			return withClient(cmd.Context(), f, false, "", func(c *raft.Client, targets []peer.ID) error {
				ks, err := c.Keys(prefix, targets...)
				if err != nil {
					return err
				}
				var b strings.Builder
				for _, k := range ks {
					b.WriteString(k)
					b.WriteByte('\n')
				}
				_, err = io.WriteString(stdout, b.String())
				return err
			})
		},
	}
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Write every key of a dropped-data file back into the cluster",
		Long: `Reads a file that a member wrote before it dropped its data to join another
cluster (its path is in the member's WARN line "kept this member's data") and
sets every key in it, in key order. Keys rewritten in the cluster since are
overwritten: read the file first (it is the snapshot format; see
raft.ReadBackup) if that matters.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := os.Open(args[0])
			if err != nil {
				return usageErr("%v", err)
			}
			defer file.Close()
			return withClient(cmd.Context(), f, false, "", func(c *raft.Client, targets []peer.ID) error {
				n := 0
				err := raft.ReadBackup(file, func(key string, value []byte) error {
					if err := writeOutcome(c.Set(key, value, f.timeout, targets...)); err != nil {
						return fmt.Errorf("set %q: %w", key, err)
					}
					n++
					return nil
				})
				fmt.Fprintf(stdout, "restored %d keys\n", n)
				return err
			})
		},
	}
	watch := &cobra.Command{
		Use:   "watch PREFIX",
		Short: "Print every change under PREFIX, one line each, until interrupted",
		Long: `Prints one line per change under PREFIX ("" for every key) with a log index
above --after, in index order, until interrupted (exit 0):

  INDEX set KEY VALUE
  INDEX delete KEY

KEY and VALUE are Go-quoted strings. The watch moves to another --peer when
its member goes away. If the members no longer keep the history from the
last index printed, it exits 1 saying so: read the current state (kv keys,
kv get) and watch again from a later index.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return withClient(ctx, f, false, "", func(c *raft.Client, targets []peer.ID) error {
				return watchLines(ctx, c, targets, args[0], f.after, stdout)
			})
		},
	}
	watch.Flags().Uint64Var(&f.after, "after", 0, "print only changes with a log index above this one")
	kv.AddCommand(set, get, del, keys, cas, watch, restore)
	return kv
}

// withClient checks the common flags, starts a throwaway in-memory host,
// connects it to the --peer members and runs fn with a client on it. When
// needKey is set, key must not be empty; that is checked before anything
// starts.
// Errors fn returns are failures, except the raft errors that mean bad input.
func withClient(ctx context.Context, f *kvFlags, needKey bool, key string, fn func(*raft.Client, []peer.ID) error) error {
	return withNodeClient(ctx, f, needKey, key, func(_ *p2pnode.Node, c *raft.Client, targets []peer.ID) error {
		return fn(c, targets)
	})
}

// withNodeClient is withClient that also hands fn the throwaway host's node.
func withNodeClient(ctx context.Context, f *kvFlags, needKey bool, key string, fn func(*p2pnode.Node, *raft.Client, []peer.ID) error) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := raft.ValidateNamespace(f.namespace); err != nil {
		return usageErr("--namespace %q: must start with /raft/ and be a clean path", f.namespace)
	}
	if len(f.peers) == 0 {
		return usageErr("at least one --peer is required")
	}
	if f.timeout <= 0 {
		return usageErr("--timeout must be positive, got %s", f.timeout)
	}
	if needKey && key == "" {
		return usageErr("the key must not be empty")
	}
	members, err := parsePeerAddrs("peer", f.peers)
	if err != nil {
		return err
	}
	secret, err := readKeyFile(f.keyFile)
	if err != nil {
		return err
	}
	swarmKey, err := readSwarmKeyFile(f.swarmKeyFile)
	if err != nil {
		return err
	}

	// No DHT: the client is told whom to talk to. With a swarm key the
	// throwaway host joins the members' private network (over TCP, the
	// only transport a private network has).
	node, err := p2pnode.New(ctx, p2pnode.Config{
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		Discovery:   memdisc.Nop{},
		SwarmKey:    swarmKey,
	})
	if err != nil {
		return failure(err)
	}
	defer node.Close()

	var targets []peer.ID
	var connErrs []error
	for _, ai := range members {
		cctx, cancel := context.WithTimeout(ctx, f.timeout)
		err := node.Peer().Connect(cctx, ai)
		cancel()
		if err != nil {
			connErrs = append(connErrs, fmt.Errorf("%s: %v", shortID(ai.ID), err))
			continue
		}
		targets = append(targets, ai.ID)
	}
	if len(targets) == 0 {
		return failure(fmt.Errorf("cannot reach any --peer: %w", errors.Join(connErrs...)))
	}

	client, err := raft.NewClient(node, f.namespace, secret)
	if err != nil {
		return classify(err)
	}
	defer client.Close()
	return classify(fn(node, client, targets))
}

// watchLines prints the changes of a watch until ctx ends. A Client's watch
// channel closes by itself only when the members no longer keep the history
// it needs (ErrCompacted).
func watchLines(ctx context.Context, c *raft.Client, targets []peer.ID, prefix string, after uint64, out io.Writer) error {
	ch, err := c.Watch(ctx, prefix, after, targets...)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	last := after
	for e := range ch {
		line := fmt.Sprintf("%d %s %q", e.Index, e.Kind, e.Key)
		if e.Kind == raft.EventSet {
			line += fmt.Sprintf(" %q", e.Entry.Value)
		}
		if _, err := fmt.Fprintln(out, line); err != nil {
			return failure(err)
		}
		last = e.Index
	}
	if ctx.Err() != nil {
		return nil // interrupted
	}
	return failure(fmt.Errorf("%w: the watch fell behind the members' history after index %d; read the current state (kv keys, kv get) and watch again from a later index", raft.ErrCompacted, last))
}

// writeOutcome says in a failed write's message which of the README's two
// classes it is in: certainly not applied, or outcome unknown.
func writeOutcome(err error) error {
	switch {
	case err == nil:
		return nil
	case raft.IsNotApplied(err):
		return fmt.Errorf("%w (not applied)", err)
	default:
		return fmt.Errorf("%w (outcome unknown: the write may still be applied; read it back before retrying)", err)
	}
}

// classify turns an error from package raft into an exit code: bad input is
// a usage error, anything else a failure. Errors already classified pass.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	for _, bad := range []error{raft.ErrInvalidKey, raft.ErrTooLarge, raft.ErrInvalidBarrier,
		raft.ErrInvalidTimeout, raft.ErrInvalidNamespace} {
		if errors.Is(err, bad) {
			return &exitError{code: exitUsage, err: err}
		}
	}
	return failure(err)
}
