package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft"
)

// Environment variables "tauraft lock" gives the command it runs.
const (
	// envFence carries the lock's fencing token (decimal).
	envFence = "TAURAFT_FENCE"
	// envLockKey carries the key that holds the lock, for
	// IfCreateIndex(key, token) fencing.
	envLockKey = "TAURAFT_LOCK_KEY"
)

func newLockCmd(stdout, stderr io.Writer) *cobra.Command {
	f := &kvFlags{}
	var (
		ttl   time.Duration
		grace time.Duration
		try   bool
	)
	cmd := &cobra.Command{
		Use:   "lock NAME -- CMD [ARGS...]",
		Short: "Run CMD while holding the lock NAME",
		Long: `Takes the cluster-wide lock NAME (waiting in line for it, or with --try
failing at once with exit 4 if it is held), runs CMD with the lock's fencing
token in $` + envFence + ` and the lock's key in $` + envLockKey + `, and
releases the lock when CMD exits, exiting with CMD's exit status.

If the lock is lost while CMD runs (its lease could not be renewed for --ttl,
or its key was deleted), CMD gets SIGTERM, then SIGKILL after --grace, and
tauraft lock exits 1. So does an interrupt of tauraft lock itself. The token
strictly increases from one holder to the next: pass it to what CMD writes,
so that a write from a holder whose lock was lost can be refused.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash != 1 {
				return usageErr("want NAME -- CMD [ARGS...]")
			}
			if ttl < raft.MinLeaseTTL || ttl > raft.MaxLeaseTTL {
				return usageErr("--ttl must be between %s and %s, got %s", raft.MinLeaseTTL, raft.MaxLeaseTTL, ttl)
			}
			if grace <= 0 {
				return usageErr("--grace must be positive, got %s", grace)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			name, argv := args[0], args[1:]
			return withClient(ctx, f, true, name, func(c *raft.Client, targets []peer.ID) error {
				var lk raft.Lock
				var err error
				if try {
					lk, err = c.TryLock(name, ttl, f.timeout, targets...)
				} else {
					lk, err = c.Lock(ctx, name, ttl, targets...)
				}
				switch {
				case errors.Is(err, raft.ErrLocked):
					return &exitError{code: exitNotOK, err: fmt.Errorf("lock %q is held", name)}
				case err != nil && ctx.Err() != nil:
					return failure(fmt.Errorf("interrupted while waiting for lock %q", name))
				case err != nil:
					return err
				}
				return runLocked(ctx, lk, name, argv, grace, cmd.InOrStdin(), stdout, stderr)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.namespace, "namespace", "/raft/tauraft", "cluster namespace")
	fl.StringArrayVar(&f.peers, "peer", nil, "full /p2p/ multiaddr of a member (repeatable, at least one)")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for connections and writes")
	fl.StringVar(&f.keyFile, "key-file", "", "file holding the shared encryption key (at least 32 bytes, used as is)")
	fl.StringVar(&f.swarmKeyFile, "swarm-key-file", "", "swarm key file of the members' libp2p private network")
	fl.DurationVar(&ttl, "ttl", 10*time.Second, "TTL of the lock's lease: how long the lock outlives a holder that stops renewing it")
	fl.DurationVar(&grace, "grace", 10*time.Second, "how long CMD has to exit after SIGTERM when the lock is lost, before SIGKILL")
	fl.BoolVar(&try, "try", false, "fail at once (exit 4) if the lock is held, instead of waiting")
	return cmd
}

// runLocked runs argv while lk is held and releases lk when it exits.
func runLocked(ctx context.Context, lk raft.Lock, name string, argv []string, grace time.Duration, stdin io.Reader, stdout, stderr io.Writer) error {
	child := exec.Command(argv[0], argv[1:]...)
	child.Env = append(os.Environ(), envFence+"="+strconv.FormatUint(lk.Token(), 10), envLockKey+"="+raft.LockKey(name))
	child.Stdin, child.Stdout, child.Stderr = stdin, stdout, stderr
	if err := child.Start(); err != nil {
		_ = lk.Unlock()
		return usageErr("run %s: %v", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	var why error
	select {
	case err := <-exited:
		if uerr := lk.Unlock(); uerr != nil && err == nil {
			// CMD finished, but maybe after the lock was lost.
			return failure(fmt.Errorf("%s exited, but unlocking %q failed: %w", argv[0], name, uerr))
		}
		return exitStatus(argv[0], err)
	case <-lk.Done():
		why = fmt.Errorf("lock %q lost while %s ran: stopped it", name, argv[0])
	case <-ctx.Done():
		why = fmt.Errorf("interrupted: stopped %s and released lock %q", argv[0], name)
	}
	stopChild(child, exited, grace)
	_ = lk.Unlock() // releases the lock if it still stands
	return failure(why)
}

// stopChild sends SIGTERM, then SIGKILL if the child has not exited after
// grace, and waits for it.
func stopChild(child *exec.Cmd, exited <-chan error, grace time.Duration) {
	_ = child.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
		return
	case <-t.C:
	}
	_ = child.Process.Kill()
	<-exited
}

// exitStatus turns CMD's end into tauraft's: its exit code as is.
func exitStatus(name string, err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return &exitError{code: ee.ExitCode(), err: fmt.Errorf("%s exited with status %d", name, ee.ExitCode())}
	}
	return failure(fmt.Errorf("%s: %w", name, err))
}
