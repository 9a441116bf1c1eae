// Package cli holds tandem's subcommands and their output formats (human
// tables and JSON). Every subcommand is a function of its arguments and
// writers, so it is tested without a process.
//
// It must never talk to the kernel directly: `run` hands over to
// internal/daemon, the client subcommands talk to the daemon over the
// control socket, and `lab` and `bench` go through their packages.
package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/version"
)

// exitError carries a specific exit code (2 for bad input) with its message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs tandem with args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "tandem:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "tandem",
		Short:         "High-availability pairs for Linux network gateways",
		Long:          "tandem makes two Linux gateways one HA pair: virtual IPs that move in milliseconds, authenticated heartbeats on every path, and a state machine that never goes split-brain while any path still delivers.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newRunCmd(),
		newStatusCmd(),
		newConfigCmd(),
		newFailoverCmd(),
		newPromoteCmd(),
		newStatsCmd(),
		newSyncCmd(),
		newVersionCmd(),
		newSnapshotWorkerCmd(),
	)
	for _, extra := range extraCommands {
		root.AddCommand(extra())
	}
	return root
}

// extraCommands are registered by files that are built only where they work
// (the lab and benchmarks need Linux).
var extraCommands []func() *cobra.Command

// socketFlag adds --socket to a client subcommand.
func socketFlag(c *cobra.Command, p *string) {
	c.Flags().StringVar(p, "socket", control.DefaultSocket, "control socket of the daemon")
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the tandem version and configuration schema",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintf(c.OutOrStdout(), "tandem %s (config schema %d)\n", version.String(), version.Schema)
			return nil
		},
	}
}
