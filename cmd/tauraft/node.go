package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
	"github.com/tauraft/raft/p2pnode"
)

// nodeStatusInterval is how often a running member looks at its Raft state
// to report changes.
const nodeStatusInterval = 500 * time.Millisecond

type nodeFlags struct {
	namespace        string
	data             string
	listen           []string
	bootstrap        []string
	keyFile          string
	swarmKeyFile     string
	preset           string
	bootstrapTimeout time.Duration
	logLevel         string
	name             string
	metrics          string // --metrics: listen address of /metrics, /healthz, /readyz
}

func newNodeCmd(stdout, stderr io.Writer) *cobra.Command {
	var f nodeFlags
	cmd := &cobra.Command{
		Use:   "node --data DIR [flags]",
		Short: "Run one long-lived cluster member",
		Long: `Runs one member of the Raft cluster of --namespace until SIGINT or SIGTERM.

DIR holds everything the member must keep across restarts: its identity
(DIR/identity.key, which fixes its peer ID), its pebble datastore
(DIR/datastore) and its Raft snapshots (DIR/snapshots). Peers are found
through a Kademlia DHT seeded with --bootstrap addresses; there is no seed
list for Raft itself. The member prints its peer ID and addresses, then every
change of its state, leader and membership.

With --swarm-key-file (a key made by 'tauraft swarm-key'), the member joins
the libp2p private network of that key: peers without the same key, nodes
and kv clients alike, cannot even connect to it. Private networks run over
TCP only, so --listen must then name TCP addresses.

With --metrics HOST:PORT the member serves Prometheus series on /metrics,
200 on /healthz while the process runs, and on /readyz 200 once it has a
leader and has applied what it knows to be committed (503 otherwise).`,
		Example: `  tauraft node --data ./n1 --listen /ip4/127.0.0.1/tcp/4001
  tauraft node --data ./n2 --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
  tauraft node --data ./n1 --swarm-key-file swarm.key --listen /ip4/0.0.0.0/tcp/4001
  tauraft node --data ./n1 --metrics 127.0.0.1:9100`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNode(cmd.Context(), stdout, stderr, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.namespace, "namespace", "/raft/tauraft", "cluster namespace (must start with /raft/)")
	fl.StringVar(&f.data, "data", "", "data directory (identity, datastore, snapshots); required")
	fl.StringArrayVar(&f.listen, "listen", []string{"/ip4/127.0.0.1/tcp/0"}, "listen multiaddr (repeatable)")
	fl.StringArrayVar(&f.bootstrap, "bootstrap", nil, "full /p2p/ multiaddr of a DHT bootstrap peer (repeatable)")
	fl.StringVar(&f.keyFile, "key-file", "", "file holding the shared encryption key (at least 32 bytes, used as is)")
	fl.StringVar(&f.swarmKeyFile, "swarm-key-file", "", "libp2p private-network swarm key file (see 'tauraft swarm-key'); TCP only")
	fl.StringVar(&f.preset, "preset", "regional", "timeout preset: local, regional or global")
	fl.DurationVar(&f.bootstrapTimeout, "bootstrap-timeout", 10*time.Second, "bootstrap window: how long to look for peers before forming a cluster")
	fl.StringVar(&f.logLevel, "log-level", "warn", "Raft log level on stderr: trace, debug, info, warn, error or off")
	fl.StringVar(&f.name, "name", "", "a name for this member, shown in its log lines (letters, digits, '-', '_', '.')")
	fl.StringVar(&f.metrics, "metrics", "", "serve /metrics (Prometheus), /healthz and /readyz on this host:port (off when empty)")
	return cmd
}

func runNode(ctx context.Context, stdout, stderr io.Writer, f nodeFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	// Everything the user can get wrong is checked before anything starts.
	if strings.TrimSpace(f.data) == "" {
		return usageErr("--data is required")
	}
	if err := raft.ValidateNamespace(f.namespace); err != nil {
		return usageErr("--namespace %q: must start with /raft/ and be a clean path", f.namespace)
	}
	preset, err := parsePresetFlag(f.preset)
	if err != nil {
		return err
	}
	if f.bootstrapTimeout <= 0 {
		return usageErr("--bootstrap-timeout must be positive, got %s", f.bootstrapTimeout)
	}
	if len(f.listen) == 0 {
		return usageErr("--listen needs at least one address")
	}
	level := hclog.LevelFromString(f.logLevel)
	if level == hclog.NoLevel {
		return usageErr("--log-level %q: want trace, debug, info, warn, error or off", f.logLevel)
	}
	if err := checkNodeName(f.name); err != nil {
		return err
	}
	bootstrap, err := parsePeerAddrs("bootstrap", f.bootstrap)
	if err != nil {
		return err
	}
	key, err := readKeyFile(f.keyFile)
	if err != nil {
		return err
	}
	swarmKey, err := readSwarmKeyFile(f.swarmKeyFile)
	if err != nil {
		return err
	}

	var metrics *metricsServer
	if f.metrics != "" {
		if metrics, err = listenMetrics(f.metrics, f.namespace); err != nil {
			return err
		}
		// /healthz answers from here on, /readyz once the member is ready.
		metrics.serve(stderr)
		defer metrics.shutdown()
	}

	if err := os.MkdirAll(f.data, 0o700); err != nil {
		return failure(err)
	}
	priv, err := p2pnode.LoadOrCreateIdentity(filepath.Join(f.data, "identity.key"))
	if err != nil {
		return failure(err)
	}
	// The node's context is not the signal context: on a signal the cluster
	// is closed first, then the node, instead of both at once.
	node, err := p2pnode.New(context.Background(), p2pnode.Config{
		ListenAddrs:    f.listen,
		PrivKey:        priv,
		DataDir:        filepath.Join(f.data, "datastore"),
		BootstrapPeers: bootstrap,
		SwarmKey:       swarmKey,
		// The namespace's address book re-seeds the DHT when the
		// bootstrap peers are gone.
		SeedNamespaces: []string{f.namespace},
	})
	if err != nil {
		return failure(err)
	}
	defer node.Close()

	fmt.Fprintf(stdout, "peer ID: %s\n", node.ID())
	for _, a := range node.Addrs() {
		fmt.Fprintf(stdout, "address: %s\n", a)
	}
	network := "public network"
	if swarmKey != nil {
		network = "private network (swarm key)"
	}
	fmt.Fprintf(stdout, "namespace %s, preset %s, bootstrap window %s, %s, %s\n",
		f.namespace, preset, f.bootstrapTimeout, plural(len(bootstrap), "bootstrap peer"), network)

	opts := []raft.Option{
		raft.WithTimeoutPreset(preset),
		raft.WithBootstrapTimeout(f.bootstrapTimeout),
		raft.WithSnapshotDir(filepath.Join(f.data, "snapshots")),
		raft.WithLogger(newLogger(loggerName(f.name), level, stderr)),
		raft.WithBootstrapProgress(bootstrapProgressPrinter(stderr)),
	}
	if key != nil {
		opts = append(opts, raft.WithEncryptionKey(key))
	}
	if metrics != nil {
		opts = append(opts, raft.WithMetrics(metrics.raftReg))
		fmt.Fprintf(stdout, "metrics: %s\n", metrics.url())
	}

	// raft.New blocks for up to the bootstrap window; a signal meanwhile
	// closes the node, which makes New give up.
	type result struct {
		c   raft.Cluster
		err error
	}
	started := make(chan result, 1)
	go func() {
		c, err := raft.New(node, f.namespace, opts...)
		started <- result{c, err}
	}()
	var cluster raft.Cluster
	select {
	case r := <-started:
		if r.err != nil {
			return failure(fmt.Errorf("start raft: %w", r.err))
		}
		cluster = r.c
	case <-ctx.Done():
		fmt.Fprintln(stdout, "interrupted while starting; shutting down")
		_ = node.Close()
		if r := <-started; r.c != nil {
			_ = r.c.Close()
		}
		return nil
	}
	fmt.Fprintln(stdout, "raft started")

	stopped := watchNode(ctx, stdout, cluster, node)

	fmt.Fprintln(stdout, "shutting down")
	var errs []error
	if stopped != nil {
		// The member stopped by itself (its state machine could not apply
		// an entry): exit non-zero with the reason.
		errs = append(errs, stopped)
	}
	if err := cluster.Close(); err != nil && !errors.Is(err, raft.ErrAlreadyClosed) {
		errs = append(errs, fmt.Errorf("close cluster: %w", err))
	}
	if err := node.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close node: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return failure(err)
	}
	fmt.Fprintln(stdout, "stopped")
	return nil
}

func parsePresetFlag(s string) (raft.Preset, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "local", "regional", "global":
		p, err := raft.ParsePreset(s)
		if err != nil {
			return 0, usageErr("--preset: %v", err)
		}
		return p, nil
	}
	return 0, usageErr("--preset %q: want local, regional or global", s)
}

// watchNode prints the member's state, leader and membership whenever one
// of them changes, until ctx is done. It returns early, with the reason, if
// the member stops by itself.
func watchNode(ctx context.Context, out io.Writer, c raft.Cluster, node *p2pnode.Node) error {
	self := node.ID()
	var lastState, lastLeader, lastMembers, lastBook string
	tick := time.NewTicker(nodeStatusInterval)
	defer tick.Stop()
	for {
		now := stamp(time.Now())
		if st := strings.ToLower(c.State().String()); st != lastState {
			fmt.Fprintf(out, "%s state: %s\n", now, st)
			lastState = st
		}
		if c.State() == hraft.Shutdown && ctx.Err() == nil {
			// Every call now fails with the reason the member stopped.
			err := c.Barrier(time.Second)
			if err == nil {
				err = errors.New("raft stopped")
			}
			return fmt.Errorf("member stopped: %w", err)
		}
		leader := "none"
		if id, err := c.Leader(); err == nil {
			leader = id.String()
			if id == self {
				leader += " (self)"
			}
		}
		if leader != lastLeader {
			fmt.Fprintf(out, "%s leader: %s\n", now, leader)
			lastLeader = leader
		}
		if ms, err := c.Members(); err == nil {
			var parts []string
			for _, m := range ms {
				p := m.ID.String()
				if m.Suffrage != hraft.Voter {
					p += " (" + strings.ToLower(m.Suffrage.String()) + ")"
				}
				if m.ID == self {
					p += " (self)"
				}
				parts = append(parts, p)
			}
			slices.Sort(parts)
			members := "none"
			if len(parts) > 0 {
				members = fmt.Sprintf("%d: %s", len(parts), strings.Join(parts, ", "))
			}
			// "none" before the first configuration is routine, not news.
			if members != lastMembers && (lastMembers != "" || len(parts) > 0) {
				fmt.Fprintf(out, "%s members: %s\n", now, members)
				lastMembers = members
			}
		}
		if infos, err := raft.SavedPeers(ctx, node.Store(), c.Namespace()); err == nil {
			if book := bookLine(infos); book != lastBook {
				fmt.Fprintf(out, "%s address book: %s\n", now, book)
				lastBook = book
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-node.Context().Done():
			return nil
		case <-tick.C:
		}
	}
}

// bookLine describes the member's address book: how many members it holds
// and each one's saved addresses.
func bookLine(infos []peer.AddrInfo) string {
	if len(infos) == 0 {
		return "empty"
	}
	parts := make([]string, 0, len(infos))
	for _, ai := range infos {
		addrs := make([]string, 0, len(ai.Addrs))
		for _, a := range ai.Addrs {
			addrs = append(addrs, a.String())
		}
		parts = append(parts, fmt.Sprintf("%s [%s]", ai.ID, strings.Join(addrs, " ")))
	}
	return fmt.Sprintf("%d: %s", len(infos), strings.Join(parts, ", "))
}

// loggerName is the name on the member's log lines: "tauraft", or
// "tauraft.NAME" with --name.
func loggerName(name string) string {
	if name == "" {
		return "tauraft"
	}
	return "tauraft." + name
}

// bootstrapProgressPrinter prints the bootstrap window's progress as it
// is reported (about once a second) on w: one line each, stamped like the
// log lines next to it.
func bootstrapProgressPrinter(w io.Writer) func(raft.BootstrapProgress) {
	return func(p raft.BootstrapProgress) {
		fmt.Fprintf(w, "%s looking for peers: %d found, %d s left\n",
			time.Now().Format(raft.LogTimeFormat), p.Found, int((p.Left+time.Second/2)/time.Second))
	}
}
