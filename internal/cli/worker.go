package cli

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

// newSnapshotWorkerCmd is the daemon's snapshot worker process
// (snapshot.Worker): hidden, started by the daemon with its pipes.
func newSnapshotWorkerCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "snapshot-worker take|stage [flags]",
		Short:              "Take or stage a configuration snapshot for the daemon (started by tandem run)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := snapshot.RunWorker(args, os.Stdin, os.Stdout, cmd.ErrOrStderr()); code != 0 {
				return &exitError{code: code, err: errWorkerFailed}
			}
			return nil
		},
	}
}

var errWorkerFailed = errors.New("snapshot worker: the job failed (its result says why)")
