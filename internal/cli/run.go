package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/daemon"
	"github.com/tandem-ha/tandem/internal/sched"
)

func newRunCmd() *cobra.Command {
	var path, level, format, cpuProfile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run this unit's HA daemon",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, key, err := config.Load(path)
			if err != nil {
				var probs *config.Problems
				if errors.As(err, &probs) {
					return &exitError{2, fmt.Errorf("%s is not valid (see `tandem config check %s`):\n%s", path, path, probs.Error())}
				}
				return &exitError{2, err}
			}
			logger, err := newLogger(c.ErrOrStderr(), level, format)
			if err != nil {
				return &exitError{2, err}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return &exitError{2, fmt.Errorf("--cpuprofile: %w", err)}
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return &exitError{2, fmt.Errorf("--cpuprofile: %w", err)}
				}
				defer pprof.StopCPUProfile()
			}
			return runDaemon(ctx, cfg, key, logger)
		},
	}
	cmd.Flags().StringVar(&path, "config", config.DefaultPath, "configuration file")
	cmd.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&format, "log-format", "text", "text or json")
	// For whoever chases a latency: written until the daemon stops on
	// SIGTERM or SIGINT (not on SIGKILL).
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	_ = cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

func newLogger(w interface{ Write([]byte) (int, error) }, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// runDaemon wires the daemon to its OS adapters and the control socket and
// runs it until ctx ends.
func runDaemon(ctx context.Context, cfg *config.Config, key []byte, logger *slog.Logger) error {
	sched.ReserveHeap()
	if err := sched.SetRealtime(cfg.Node.RealtimePriority); err != nil {
		logger.Warn("running without realtime priority", "err", err)
	}
	if p := cfg.Node.RealtimePriority; p > 0 && cfg.Node.RealtimeSoftirq {
		// Below the daemon's own threads, above every normal process.
		n, err := sched.BoostSoftirq(max(p-1, 1))
		if err != nil {
			logger.Warn("softirq threads left at their priority", "err", err)
		} else if n > 0 {
			logger.Info("softirq threads (ksoftirqd) now run SCHED_FIFO, system-wide; node.realtime_softirq: false leaves them", "threads", n, "priority", max(p-1, 1))
		}
	}
	// Threads the runtime starts while SetRealtime walks the list may be
	// missed (BENCHMARKS.md, finding 3): apply it again now and then.
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = sched.SetRealtime(cfg.Node.RealtimePriority)
			}
		}
	}()
	opts, cleanup, err := daemon.Adapters(ctx, cfg, key, logger)
	if err != nil {
		return err
	}
	defer cleanup()
	d, err := daemon.New(cfg, key, opts)
	if err != nil {
		return err
	}
	ln, err := control.Listen(cfg.Control.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Control.Socket)
	srvCtx, stopSrv := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { control.Serve(srvCtx, ln, d.Control, logger) })
	err = d.Run(ctx)
	stopSrv()
	wg.Wait()
	return err
}
