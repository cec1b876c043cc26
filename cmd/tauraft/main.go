// Command tauraft runs and exercises tauraft clusters from the command line.
//
//	tauraft demo [--nodes N]          an in-process cluster walkthrough
//	tauraft node --data DIR ...       one long-running cluster member
//	tauraft kv set|get|delete|keys|cas talk to a running cluster
//	tauraft lock NAME -- CMD [ARGS]    run CMD while holding a cluster lock
//	tauraft swarm-key [--output FILE] a new private-network swarm key
//
// Exit codes: 0 success, 1 failure, 2 usage error, 3 key not found (kv get),
// 4 condition did not hold (kv cas) or lock held (lock --try); tauraft lock
// exits with CMD's status when CMD ran to its end.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes shared by every subcommand.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
	exitNotOK    = 4
)

// exitError carries the exit code chosen by a command. Errors that are not
// exitErrors come from cobra itself (unknown flags or commands, wrong argument
// counts) and are usage errors.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// failure marks err as a runtime failure (exit 1).
func failure(err error) error { return &exitError{code: exitFailure, err: err} }

// usageErr marks a bad argument value that cobra cannot detect itself.
func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the process exit code. It
// never panics on bad input and prints at most one error line to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitUsage
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	msg := oneLine(err.Error())
	if code == exitUsage {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stderr, "tauraft: %s (see '%s --help')\n", msg, cmd.CommandPath())
	} else {
		fmt.Fprintf(stderr, "tauraft: %s\n", msg)
	}
	return code
}

// oneLine folds a possibly multi-line error (errors.Join) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "tauraft",
		Short:         "Raft over libp2p: demo, cluster member and key-value client",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without Args, cobra accepts "tauraft bogus" and prints help; an
		// unknown command should be a usage error instead.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newDemoCmd(stdout, stderr), newNodeCmd(stdout, stderr), newKVCmd(stdout, stderr), newLockCmd(stdout, stderr), newQueueCmd(stdout, stderr), newSwarmKeyCmd(stdout), newStatusCmd(stdout))
	return root
}
