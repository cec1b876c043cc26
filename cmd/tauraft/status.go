package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
	"github.com/tauraft/raft/p2pnode"
)

// statusParallel bounds the members asked at once for their own status.
const statusParallel = 8

func newStatusCmd(stdout io.Writer) *cobra.Command {
	f := &kvFlags{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a table of a running cluster's members: suffrage, leader, term, indexes, lag",
		Long: `Asks the first --peer that answers for its view of the cluster, then every
member of its configuration for its own (addresses come from that member's
peer list), and prints one row per member:

  MEMBER    the member's peer ID
  SUFFRAGE  voter, nonvoter or staging
  LEADER    * on the leader
  STATE     the member's own Raft state, or "unreachable"
  TERM, COMMIT, APPLIED  the member's own term, commit and applied index
  LAG       entries behind the leader's log, as the leader last heard
            from the member ("?" when no leader answered or it has no
            report yet)

Exit codes: 0 the table was printed (even with members unreachable),
1 no --peer answered, 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withNodeClient(cmd.Context(), f, false, "", func(node *p2pnode.Node, c *raft.Client, targets []peer.ID) error {
				return printStatus(cmd.Context(), c, node.Peer().Peerstore(), targets, f.timeout, stdout)
			})
		},
	}
	pf := cmd.Flags()
	pf.StringVar(&f.namespace, "namespace", "/raft/tauraft", "cluster namespace")
	pf.StringArrayVar(&f.peers, "peer", nil, "full /p2p/ multiaddr of a member (repeatable, at least one)")
	pf.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for connections and for each member's answer")
	pf.StringVar(&f.keyFile, "key-file", "", "file holding the shared encryption key (at least 32 bytes, used as is)")
	pf.StringVar(&f.swarmKeyFile, "swarm-key-file", "", "swarm key file of the members' libp2p private network")
	return cmd
}

// memberView is one member's own answer, or why there is none.
type memberView struct {
	st  raft.Stats
	err error
}

// printStatus gathers the views and prints the table.
func printStatus(ctx context.Context, c *raft.Client, book peerstore.Peerstore, targets []peer.ID, timeout time.Duration, out io.Writer) error {
	first, err := c.Status(timeout, targets...)
	if err != nil {
		return err
	}
	// The answering member's peer list has the others' addresses (a
	// plain Client's exchange is not recorded by the member).
	if ex, err := c.ExchangePeers(nil, first.ID); err == nil {
		for _, ai := range ex.Peers {
			book.AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		}
	}
	views := map[peer.ID]memberView{first.ID: {st: first}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, statusParallel)
	for _, m := range first.Members {
		if m.ID == first.ID {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, err := c.Status(timeout, m.ID)
			mu.Lock()
			views[m.ID] = memberView{st: st, err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if ctx != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	leader := leaderView(views)
	// A leader's reports are refreshed in the background when a Stats finds
	// them old: ask once more, shortly, for current ones.
	if leader != nil && !lagsFresh(*leader) {
		time.Sleep(700 * time.Millisecond)
		if st, err := c.Status(timeout, leader.ID); err == nil && st.State == hraft.Leader {
			leader = &st
		}
	}
	return writeStatusTable(out, first, views, leader)
}

// leaderView is the view of the member that says it leads (the highest
// term when, during a change, two do), or nil.
func leaderView(views map[peer.ID]memberView) *raft.Stats {
	var best *raft.Stats
	for _, v := range views {
		if v.err == nil && v.st.State == hraft.Leader && (best == nil || v.st.Term > best.Term) {
			st := v.st
			best = &st
		}
	}
	return best
}

// lagsFresh tells whether the leader's view has a report of every member,
// none older than a second.
func lagsFresh(st raft.Stats) bool {
	for _, m := range st.Members {
		if !m.LagKnown || m.LagAge > time.Second {
			return false
		}
	}
	return true
}

// writeStatusTable prints the table: the members of first's configuration,
// each with its own view and the leader's report of its lag.
func writeStatusTable(out io.Writer, first raft.Stats, views map[peer.ID]memberView, leader *raft.Stats) error {
	lags := map[peer.ID]raft.MemberStats{}
	leaderID := first.Leader
	if leader != nil {
		leaderID = leader.ID
		for _, m := range leader.Members {
			lags[m.ID] = m
		}
	}
	head := fmt.Sprintf("asked %s (%s); leader %s", first.ID, strings.ToLower(first.State.String()), nameOr(leaderID, "none"))
	if leader != nil {
		head += fmt.Sprintf(", term %d, commit %d", leader.Term, leader.CommitIndex)
	}
	if _, err := fmt.Fprintln(out, head); err != nil {
		return failure(err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSUFFRAGE\tLEADER\tSTATE\tTERM\tCOMMIT\tAPPLIED\tLAG")
	for _, m := range first.Members {
		mark := ""
		if m.ID == leaderID {
			mark = "*"
		}
		state, term, commit, applied := "unreachable", "-", "-", "-"
		if v, ok := views[m.ID]; ok && v.err == nil {
			state = strings.ToLower(v.st.State.String())
			term, commit, applied = fmt.Sprint(v.st.Term), fmt.Sprint(v.st.CommitIndex), fmt.Sprint(v.st.AppliedIndex)
		}
		lag := "?"
		if l, ok := lags[m.ID]; ok && l.LagKnown {
			lag = fmt.Sprint(l.Lag)
			if l.LagAge > 2*time.Second {
				lag += fmt.Sprintf(" (%s ago)", l.LagAge.Round(time.Second))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, strings.ToLower(m.Suffrage.String()), mark, state, term, commit, applied, lag)
	}
	if err := tw.Flush(); err != nil {
		return failure(err)
	}
	return nil
}

// nameOr is id in full, or alt when empty.
func nameOr(id peer.ID, alt string) string {
	if id == "" {
		return alt
	}
	return id.String()
}
