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
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
	"github.com/tauraft/raft/memdisc"
	"github.com/tauraft/raft/p2pnode"
)

const (
	demoNamespace       = "/raft/demo"
	demoBootstrapWindow = 2 * time.Second
	demoWriteTimeout    = 5 * time.Second
	// Deadlines of the demo's waits. They are generous compared with what the
	// local preset needs (about a second for an election) so that a loaded
	// machine or the race detector does not fail the demo, yet they keep the
	// whole run well under half a minute when something is really wrong.
	demoFormDeadline     = 10 * time.Second
	demoFailoverDeadline = 8 * time.Second
	demoCatchUpDeadline  = 8 * time.Second
	demoReplicaDeadline  = 5 * time.Second
	demoMaxNodes         = 7
)

func newDemoCmd(stdout, stderr io.Writer) *cobra.Command {
	var nodes int
	var logLevel string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run an in-process cluster: formation, replication, failover, restart, late join",
		Long: `Starts --nodes libp2p nodes in this process on 127.0.0.1. They find each
other through a shared in-process discovery service only (no seed list) and
form one Raft cluster. The demo then replicates writes, closes the leader and
times the failover, restarts the old leader as a follower that catches up, and
adds a late node. It prints a timeline and a summary, and cleans up after
itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 3 || nodes > demoMaxNodes {
				return usageErr("--nodes must be between 3 and %d (failover needs a majority left), got %d", demoMaxNodes, nodes)
			}
			level := hclog.LevelFromString(logLevel)
			if level == hclog.NoLevel {
				return usageErr("--log-level %q: want trace, debug, info, warn, error or off", logLevel)
			}
			if err := runDemo(cmd.Context(), stdout, stderr, nodes, level); err != nil {
				return failure(fmt.Errorf("demo: %w", err))
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&nodes, "nodes", "n", 3, "number of founding nodes (3 to 7)")
	cmd.Flags().StringVar(&logLevel, "log-level", "error", "Raft log level on stderr: trace, debug, info, warn, error or off\n(at error, the expected failures to reach the closed leader show up)")
	return cmd
}

// demoMember is one node of the demo and the cluster currently running on it.
type demoMember struct {
	name    string
	node    *p2pnode.Node
	cluster raft.Cluster // nil while stopped
}

type demo struct {
	ctx     context.Context
	out     io.Writer
	outMu   sync.Mutex
	start   time.Time
	reg     *memdisc.Registry // stands in for the DHT, see runDemo
	dir     string
	logger  hclog.Logger
	members []*demoMember
	written map[string]string // key -> value of every write made so far
	checked int               // writes confirmed on every live member
}

// runDemo runs the whole walkthrough, printing its timeline to out. Raft's
// own logs, at level and above, go to logw. Everything it starts is stopped and removed
// before it returns, whether it succeeds or not.
func runDemo(ctx context.Context, out, logw io.Writer, n int, level hclog.Level) (err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	dir, err := os.MkdirTemp("", "tauraft-demo-")
	if err != nil {
		return err
	}
	// The nodes share an in-process registry instead of the DHT, so that the
	// demo shows Raft's behaviour and not DHT convergence. Its records keep
	// the addresses a node had when it advertised, which is enough: a demo
	// node keeps its host, and so its addresses, until cleanup.
	d := &demo{
		ctx:     ctx,
		out:     out,
		start:   time.Now(),
		reg:     memdisc.NewRegistry(),
		dir:     dir,
		logger:  newLogger("tauraft", level, logw),
		written: map[string]string{},
	}
	defer func() {
		if cerr := d.cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return d.run(n)
}

func (d *demo) logf(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) println(s string) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintln(d.out, s)
}

func (d *demo) run(n int) error {
	d.logf("starting %d nodes on 127.0.0.1 (TCP), sharing an in-process discovery service, no seed list", n)
	for range n {
		if _, err := d.addNode(); err != nil {
			return err
		}
	}

	// Formation: every node runs the bootstrap protocol at once.
	d.logf("bootstrap window opened (%s): each node looks for peers under %s", demoBootstrapWindow, demoNamespace)
	windowStart := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, m := range d.members {
		wg.Go(func() {
			c, err := d.newCluster(m)
			if err != nil {
				errs[i] = fmt.Errorf("%s: raft.New: %w", m.name, err)
				return
			}
			m.cluster = c
			d.logf("%s decided after %.2fs: %s", m.name, time.Since(windowStart).Seconds(), d.describeState(c))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var leader *demoMember
	if _, err := d.waitFor("a leader", demoFormDeadline, func() (bool, string) {
		l, detail := d.agreedLeader(d.members)
		leader = l
		return l != nil, detail
	}); err != nil {
		return err
	}
	formation := time.Since(windowStart)
	d.logf("leader elected: %s (%s)", leader.name, shortID(leader.node.ID()))
	d.logf("cluster formed %.2fs after the window opened: voters %s, leader %s",
		formation.Seconds(), d.voterNames(leader.cluster), leader.name)

	// Replication.
	for i := 1; i <= 3; i++ {
		if err := d.write(leader, fmt.Sprintf("demo/key-%d", i), fmt.Sprintf("value-%d", i)); err != nil {
			return err
		}
	}

	// Failover.
	old := leader
	d.logf("closing the leader's cluster on %s (its host stays up)", old.name)
	closedAt := time.Now()
	if err := old.cluster.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", old.name, err)
	}
	old.cluster = nil
	if _, err := d.waitFor("a new leader", demoFailoverDeadline, func() (bool, string) {
		l, detail := d.agreedLeader(d.running())
		leader = l
		return l != nil, detail
	}); err != nil {
		return err
	}
	failover := time.Since(closedAt)
	d.logf("new leader elected: %s (%s), failover took %.2fs", leader.name, shortID(leader.node.ID()), failover.Seconds())
	const downKey, downValue = "demo/while-down", "written-while-" + "leader-was-down"
	if err := d.write(leader, downKey, downValue); err != nil {
		return err
	}

	// Restart of the old leader on the same node and datastore.
	d.logf("restarting %s's cluster on the same host and datastore", old.name)
	restartAt := time.Now()
	c, err := d.newCluster(old)
	if err != nil {
		return fmt.Errorf("%s: restart: %w", old.name, err)
	}
	old.cluster = c
	if _, err := d.waitFor(old.name+" to catch up", demoCatchUpDeadline, func() (bool, string) {
		return d.caughtUp(old, leader)
	}); err != nil {
		return err
	}
	d.logf("%s is back as a follower of %s and caught up after %.2fs (holds %s written while it was down)",
		old.name, leader.name, time.Since(restartAt).Seconds(), downKey)

	// A late node.
	late, err := d.addNode()
	if err != nil {
		return err
	}
	d.logf("%s starting raft after the cluster formed (no seed list either)", late.name)
	joinAt := time.Now()
	c, err = d.newCluster(late)
	if err != nil {
		return fmt.Errorf("%s: raft.New: %w", late.name, err)
	}
	late.cluster = c
	d.logf("%s decided after %.2fs: %s", late.name, time.Since(joinAt).Seconds(), d.describeState(c))
	if _, err := d.waitFor(late.name+" to join and catch up", demoCatchUpDeadline, func() (bool, string) {
		ok, detail := d.caughtUp(late, leader)
		if !ok {
			return false, detail
		}
		if !slices.Contains(d.voterIDs(leader.cluster), late.node.ID()) {
			return false, late.name + " is not a voter yet"
		}
		return true, ""
	}); err != nil {
		return err
	}
	d.logf("late node joined: %s is a voter after %.2fs and holds all %s; voters now %s",
		late.name, time.Since(joinAt).Seconds(), plural(len(d.written), "key"), d.voterNames(leader.cluster))
	if err := d.write(leader, "demo/after-join", "hello "+late.name); err != nil {
		return err
	}

	total := time.Since(d.start)
	if err := d.cleanup(); err != nil {
		return err
	}
	d.logf("all clusters and nodes closed, temporary files removed")
	d.println("summary:")
	d.println(fmt.Sprintf("  nodes           %d founders + 1 late joiner", n))
	d.println(fmt.Sprintf("  formation       %.2fs (bootstrap window %s)", formation.Seconds(), demoBootstrapWindow))
	d.println(fmt.Sprintf("  failover        %.2fs", failover.Seconds()))
	d.println(fmt.Sprintf("  writes checked  %d, each read back from every running member", d.checked))
	d.println(fmt.Sprintf("  total           %.2fs", total.Seconds()))
	d.println("demo ok")
	return nil
}

// addNode starts a new libp2p node and returns it as a stopped member.
func (d *demo) addNode() (*demoMember, error) {
	key, err := p2pnode.NewIdentity()
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The discovery view needs the node's addresses, but the node needs its
	// discovery before it exists: read them through a pointer set below.
	var self atomic.Pointer[p2pnode.Node]
	addrs := func() []multiaddr.Multiaddr {
		if n := self.Load(); n != nil {
			return n.Peer().Addrs()
		}
		return nil
	}
	node, err := p2pnode.New(d.ctx, p2pnode.Config{
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		PrivKey:     key,
		Discovery:   d.reg.Discovery(id, addrs),
	})
	if err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	self.Store(node)
	m := &demoMember{name: fmt.Sprintf("node-%d", len(d.members)+1), node: node}
	d.members = append(d.members, m)
	d.logf("%s up: %s at %s", m.name, shortID(id), firstAddr(node))
	return m, nil
}

func firstAddr(n *p2pnode.Node) string {
	if a := n.Peer().Addrs(); len(a) > 0 {
		return a[0].String()
	}
	return "(no address)"
}

func (d *demo) newCluster(m *demoMember) (raft.Cluster, error) {
	return raft.New(m.node, demoNamespace,
		raft.WithTimeoutPreset(raft.PresetLocal),
		raft.WithBootstrapTimeout(demoBootstrapWindow),
		raft.WithSnapshotDir(filepath.Join(d.dir, "snapshots")),
		raft.WithLogger(d.logger),
	)
}

// running returns the members whose cluster is up.
func (d *demo) running() []*demoMember {
	var out []*demoMember
	for _, m := range d.members {
		if m.cluster != nil {
			out = append(out, m)
		}
	}
	return out
}

func (d *demo) byID(id peer.ID) *demoMember {
	for _, m := range d.members {
		if m.node.ID() == id {
			return m
		}
	}
	return nil
}

// agreedLeader returns the leader of ms once one of them leads and every one
// of them names it as leader; otherwise nil and what is missing.
func (d *demo) agreedLeader(ms []*demoMember) (*demoMember, string) {
	var leader *demoMember
	for _, m := range ms {
		if m.cluster.IsLeader() {
			leader = m
			break
		}
	}
	if leader == nil {
		return nil, "no member is leader"
	}
	for _, m := range ms {
		id, err := m.cluster.Leader()
		if err != nil || id != leader.node.ID() {
			return nil, fmt.Sprintf("%s does not follow %s yet", m.name, leader.name)
		}
	}
	voters := d.voterIDs(leader.cluster)
	for _, m := range ms {
		if !slices.Contains(voters, m.node.ID()) {
			return nil, fmt.Sprintf("%s is not a voter yet", m.name)
		}
	}
	return leader, ""
}

// caughtUp reports whether m follows leader and holds every write so far.
func (d *demo) caughtUp(m, leader *demoMember) (bool, string) {
	if st := m.cluster.State(); st != hraft.Follower {
		return false, fmt.Sprintf("%s is %s", m.name, st)
	}
	if id, err := m.cluster.Leader(); err != nil || id != leader.node.ID() {
		return false, fmt.Sprintf("%s does not follow %s yet", m.name, leader.name)
	}
	for k, v := range d.written {
		if got, ok := m.cluster.Get(k); !ok || string(got) != v {
			return false, fmt.Sprintf("%s lacks %s", m.name, k)
		}
	}
	return true, ""
}

// write sets key on the leader, then waits until every running member holds
// it.
func (d *demo) write(leader *demoMember, key, value string) error {
	at := time.Now()
	if err := leader.cluster.Set(key, []byte(value), demoWriteTimeout); err != nil {
		return fmt.Errorf("set %s on %s: %w", key, leader.name, err)
	}
	committed := time.Since(at)
	d.written[key] = value
	live := d.running()
	if _, err := d.waitFor("replicas of "+key, demoReplicaDeadline, func() (bool, string) {
		for _, m := range live {
			if got, ok := m.cluster.Get(key); !ok || string(got) != value {
				return false, m.name + " lacks it"
			}
		}
		return true, ""
	}); err != nil {
		return err
	}
	d.checked++
	d.logf("write %s=%q committed by %s in %s, present on all %d running members after %s",
		key, value, leader.name, roundDur(committed), len(live), roundDur(time.Since(at)))
	return nil
}

// waitFor polls cond until it holds, printing a progress line every second,
// and fails after deadline with cond's last explanation.
func (d *demo) waitFor(what string, deadline time.Duration, cond func() (bool, string)) (time.Duration, error) {
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	nextReport := time.Second
	for {
		ok, detail := cond()
		if ok {
			return time.Since(start), nil
		}
		waited := time.Since(start)
		if waited >= deadline {
			return waited, fmt.Errorf("timed out after %s waiting for %s (%s)", deadline, what, detail)
		}
		if waited >= nextReport {
			d.logf("… waiting for %s (%.1fs: %s)", what, waited.Seconds(), detail)
			nextReport += time.Second
		}
		select {
		case <-d.ctx.Done():
			return waited, fmt.Errorf("interrupted while waiting for %s", what)
		case <-tick.C:
		}
	}
}

func (d *demo) voterIDs(c raft.Cluster) []peer.ID {
	ms, err := c.Members()
	if err != nil {
		return nil
	}
	var ids []peer.ID
	for _, m := range ms {
		if m.Suffrage == hraft.Voter {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

func (d *demo) voterNames(c raft.Cluster) string {
	var names []string
	for _, id := range d.voterIDs(c) {
		if m := d.byID(id); m != nil {
			names = append(names, m.name)
		} else {
			names = append(names, shortID(id))
		}
	}
	slices.Sort(names)
	return "[" + strings.Join(names, " ") + "]"
}

// cleanup closes every cluster, then every node, then removes the temporary
// directory. It is safe to call more than once.
func (d *demo) cleanup() error {
	var errs []error
	for _, m := range d.members {
		if m.cluster != nil {
			if err := m.cluster.Close(); err != nil && !errors.Is(err, raft.ErrAlreadyClosed) {
				errs = append(errs, fmt.Errorf("%s: close cluster: %w", m.name, err))
			}
			m.cluster = nil
		}
	}
	for _, m := range d.members {
		if err := m.node.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: close node: %w", m.name, err))
		}
		d.reg.Forget(m.node.ID())
	}
	d.members = nil
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
		d.dir = ""
	}
	return errors.Join(errs...)
}

func (d *demo) describeState(c raft.Cluster) string {
	st := c.State()
	if id, err := c.Leader(); err == nil {
		name := shortID(id)
		if m := d.byID(id); m != nil {
			name = m.name
		}
		return fmt.Sprintf("%s, leader %s", strings.ToLower(st.String()), name)
	}
	return fmt.Sprintf("%s, no leader yet", strings.ToLower(st.String()))
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
