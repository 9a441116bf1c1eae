package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/lab"
)

func init() { extraCommands = append(extraCommands, newBenchCmd) }

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks in a lab of their own: failover outage and stability under load, tandem beside keepalived (root)",
	}
	cmd.AddCommand(newBenchFailoverCmd(), newBenchStabilityCmd(), newBenchSyncCmd(), newBenchBurnCmd(), newBenchProbeAgentCmd())
	return cmd
}

// benchFlags are the flags both benchmarks share.
type benchFlags struct {
	name, profile, logs string
	jsonOut, verbose    bool
	keepalived          bool
	kaBinary            string
	kaRT                int
	probeRT             int
}

// probeCommand runs the probe agent: the benchmark's own copy of this
// binary, hidden subcommand.
func (f *benchFlags) probeCommand() ([]string, error) {
	return []string{bench.SelfArg, "bench", "probe-agent", "--lab", "{lab}", "--rt-priority", fmt.Sprint(f.probeRT)}, nil
}

func (f *benchFlags) add(c *cobra.Command, name, profile string) {
	c.Flags().StringVar(&f.name, "name", name, "lab name (must start with \"bn\"); the lab is built at the start and removed at the end")
	c.Flags().StringVar(&f.profile, "profile", profile, "timing profile: "+strings.Join(profileNames(), ", "))
	c.Flags().BoolVar(&f.jsonOut, "json", false, "print the report as JSON")
	c.Flags().BoolVarP(&f.verbose, "verbose", "v", false, "log what the lab does")
	c.Flags().BoolVar(&f.keepalived, "keepalived", true, "also measure keepalived on the same lab (skipped with a note if it is not installed, unless set explicitly)")
	c.Flags().StringVar(&f.kaBinary, "keepalived-binary", "keepalived", "keepalived executable")
	c.Flags().IntVar(&f.kaRT, "keepalived-rt-priority", 0, "set keepalived's vrrp_rt_priority (SCHED_RR); 0 keeps its default scheduling")
	c.Flags().StringVar(&f.logs, "logs", "", "copy the daemons' logs and configs to this directory before the lab is removed")
	c.Flags().IntVar(&f.probeRT, "probe-rt-priority", 10, "SCHED_RR priority of the probe agent (the prober and echo server), below the daemons' 50 so it never delays them; 0: normal scheduling")
}

// keepalivedOptions returns nil when keepalived is not to run; notes says why.
func (f *benchFlags) keepalivedOptions(c *cobra.Command) (*bench.KeepalivedOptions, string, error) {
	if !f.keepalived {
		return nil, "", nil
	}
	if _, err := exec.LookPath(f.kaBinary); err != nil {
		if c.Flags().Changed("keepalived") {
			return nil, "", &exitError{2, fmt.Errorf("--keepalived: %w (apt-get install keepalived)", err)}
		}
		return nil, fmt.Sprintf("keepalived not measured: %v", err), nil
	}
	return &bench.KeepalivedOptions{Binary: f.kaBinary, RTPriority: f.kaRT}, "", nil
}

func (f *benchFlags) labOptions(c *cobra.Command) (lab.Options, error) {
	if err := bench.CheckName(f.name); err != nil {
		return lab.Options{}, &exitError{2, err}
	}
	if _, ok := lab.Profiles[f.profile]; !ok {
		return lab.Options{}, &exitError{2, fmt.Errorf("--profile %q: use one of %s", f.profile, strings.Join(profileNames(), ", "))}
	}
	return labOptions(f.name, f.profile, c.ErrOrStderr(), f.verbose), nil
}

// signalContext ends on SIGINT or SIGTERM, so the benchmark tears down its
// lab and processes before exiting.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
}

func newBenchFailoverCmd() *cobra.Command {
	var f benchFlags
	var trials int
	var modes string
	var observe, settle time.Duration
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Measure the outage seen by a client when the ACTIVE unit fails (power failure, SIGKILL, SIGTERM, link down), tandem beside keepalived",
		Long: "tandem bench failover builds a lab, probes the server from the client through the virtual IPs every millisecond, fails the ACTIVE unit\n" +
			"in each mode K times and reports the outage (the longest gap between answered probes): min, median and max per mode. Then it stops\n" +
			"tandem and runs the same trials with keepalived (VRRPv3) configured with the same timers on the same lab. The lab is removed at the end,\n" +
			"also on error or Ctrl-C.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			lo, err := f.labOptions(c)
			if err != nil {
				return err
			}
			ka, skipped, err := f.keepalivedOptions(c)
			if err != nil {
				return err
			}
			var ms []string
			for _, m := range strings.Split(modes, ",") {
				if m = strings.TrimSpace(m); m != "" {
					ms = append(ms, m)
				}
			}
			probe, err := f.probeCommand()
			if err != nil {
				return err
			}
			ctx, stop := signalContext(c.Context())
			defer stop()
			rep, err := bench.RunFailover(ctx, bench.FailoverOptions{
				Lab: lo, Trials: trials, Modes: ms, Keepalived: ka, Observe: observe, Settle: settle,
				LogsDir: f.logs, ProbeCommand: probe, Progress: c.ErrOrStderr(),
			})
			if rep != nil {
				rep.Notes = bench.FailoverNotes(rep)
				if skipped != "" {
					rep.Notes = append(rep.Notes, skipped)
				}
				if perr := printFailover(c.OutOrStdout(), f.jsonOut, rep); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	f.add(cmd, "bnfo", lab.DefaultProfile)
	cmd.Flags().IntVar(&trials, "trials", 5, "trials per mode")
	cmd.Flags().StringVar(&modes, "modes", strings.Join(bench.Modes, ","), "modes to run, comma-separated: "+strings.Join(bench.Modes, ", "))
	cmd.Flags().DurationVar(&observe, "observe", 1500*time.Millisecond, "how long the traffic is watched after each failure before the outage is read")
	cmd.Flags().DurationVar(&settle, "settle", bench.DefaultSettle, "how long the pair must be steady (no state change, traffic through fw-a) before each failure")
	return cmd
}

func newBenchStabilityCmd() *cobra.Command {
	var f benchFlags
	var duration time.Duration
	var burners int
	cmd := &cobra.Command{
		Use:   "stability",
		Short: "Count false failovers while every CPU is saturated, tandem beside keepalived",
		Long: "tandem bench stability builds a lab, starts one busy-loop process per CPU for the duration and counts the state changes of both\n" +
			"units after the initial election (each one is a false failover: nothing failed); then the same with keepalived.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			lo, err := f.labOptions(c)
			if err != nil {
				return err
			}
			ka, skipped, err := f.keepalivedOptions(c)
			if err != nil {
				return err
			}
			if duration <= 0 {
				return &exitError{2, fmt.Errorf("--duration must be positive")}
			}
			probe, err := f.probeCommand()
			if err != nil {
				return err
			}
			ctx, stop := signalContext(c.Context())
			defer stop()
			rep, err := bench.RunStability(ctx, bench.StabilityOptions{
				Lab: lo, Duration: duration, Burners: burners, Keepalived: ka,
				BurnCommand:  []string{bench.SelfArg, "bench", "burn", "--duration", "{duration}"},
				ProbeCommand: probe, LogsDir: f.logs, Progress: c.ErrOrStderr(),
			})
			if rep != nil {
				rep.Notes = bench.StabilityNotes(rep)
				if skipped != "" {
					rep.Notes = append(rep.Notes, skipped)
				}
				if perr := printStability(c.OutOrStdout(), f.jsonOut, rep); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	f.add(cmd, "bnst", "fast")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Minute, "how long each implementation runs under load")
	cmd.Flags().IntVar(&burners, "burners", 0, "CPU burners (default: one per CPU)")
	return cmd
}

// newBenchBurnCmd is the hidden CPU burner the stability benchmark starts.
func newBenchBurnCmd() *cobra.Command {
	var duration time.Duration
	cmd := &cobra.Command{
		Use:    "burn",
		Short:  "Keep one CPU busy for the duration (started by bench stability)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signalContext(c.Context())
			defer stop()
			bench.Burn(ctx, duration)
			return nil
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", time.Minute, "how long to burn")
	return cmd
}

// newBenchProbeAgentCmd is the hidden measuring instrument the benchmarks
// start: the echo server and prober of a lab under SCHED_RR, queried over
// stdin/stdout.
func newBenchProbeAgentCmd() *cobra.Command {
	var name string
	var prio int
	cmd := &cobra.Command{
		Use:    "probe-agent",
		Short:  "Run a lab's probe traffic and answer queries on stdin (started by bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			// A Ctrl-C on the terminal is for the benchmark, which ends
			// the agent by closing its stdin.
			signal.Ignore(syscall.SIGINT)
			return bench.RunProbeAgent(name, prio, c.InOrStdin(), c.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&name, "lab", "", "lab name")
	cmd.Flags().IntVar(&prio, "rt-priority", 10, "SCHED_RR priority; 0: normal scheduling")
	return cmd
}

// printForeignRT warns about realtime processes of others that ran beside
// the benchmark's daemons.
func printForeignRT(w io.Writer, impl string, f *bench.ForeignRT) {
	if f == nil || f.CPUSeconds == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s: WARNING other realtime processes used %.1f CPU-seconds during the run: %s", impl, f.CPUSeconds, strings.Join(f.Top, "; "))
}

func fmtMs(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f", *p)
}

func summaryCells(s *bench.Summary) string {
	if s == nil {
		return "-\t-\t-\t-"
	}
	fails := fmt.Sprint(s.Failures)
	return fmt.Sprintf("%s\t%s\t%s\t%s", fmtMs(s.Min), fmtMs(s.Median), fmtMs(s.Max), fails)
}

func printFailover(w io.Writer, jsonOut bool, rep *bench.FailoverReport) error {
	if jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(rep)
	}
	fmt.Fprintf(w, "failover outage in ms (longest gap between answered 1 ms probes), profile %s, %d trials per mode, lab %s\n", rep.Profile, rep.Trials, rep.Lab)
	fmt.Fprintf(w, "machine: %d CPUs (%s), kernel %s; tandem binary sha256 %s\n", rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.Kernel, rep.BinarySHA256)
	ka := rep.Keepalived
	if ka != nil {
		fmt.Fprintf(w, "tandem %s vs %s\n\n", rep.Version, ka.Version)
	} else {
		fmt.Fprintf(w, "tandem %s\n\n", rep.Version)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	if ka != nil {
		fmt.Fprintln(tw, "mode\ttandem min\tmedian\tmax\tfailed\t\tkeepalived min\tmedian\tmax\tfailed\t")
	} else {
		fmt.Fprintln(tw, "mode\ttandem min\tmedian\tmax\tfailed\t")
	}
	for _, m := range rep.Modes {
		line := m + "\t" + summaryCells(rep.Summary(m))
		if ka != nil {
			line += "\t\t" + summaryCells(ka.Summary(m))
		}
		fmt.Fprintln(tw, line+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range []*bench.Result{&rep.Result, ka} {
		if r == nil {
			continue
		}
		if len(r.Scheduling) > 0 {
			fmt.Fprintf(w, "\n%s scheduling: fw-a %s; fw-b %s", r.Implementation, r.Scheduling["fw-a"], r.Scheduling["fw-b"])
		}
		printForeignRT(w, r.Implementation, r.ForeignRT)
		for _, e := range r.Errors {
			fmt.Fprintf(w, "\n%s: ERROR %s", r.Implementation, e)
		}
		for _, m := range rep.Modes {
			for _, s := range r.Samples[m] {
				if !s.OK {
					fmt.Fprintf(w, "\n%s %s trial %d FAILED: %s", r.Implementation, m, s.Trial, s.Error)
				}
			}
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	return nil
}

func printStability(w io.Writer, jsonOut bool, rep *bench.StabilityReport) error {
	if jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(rep)
	}
	fmt.Fprintf(w, "stability under CPU saturation, profile %s, lab %s\n", rep.Profile, rep.Lab)
	fmt.Fprintf(w, "machine: %d CPUs (%s), kernel %s; tandem binary sha256 %s\n\n", rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.Kernel, rep.BinarySHA256)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tduration\tburners\tCPU busy\ttransitions\tfw-b takeovers\tmax probe gap\tlost probes\tscheduling (fw-a)")
	for _, r := range []*bench.StabilityResult{&rep.StabilityResult, rep.Keepalived} {
		if r == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0fs\t%d\t%.1f%%\t%d\t%d\t%.1f ms\t%d of %d\t%s\n", r.Implementation, r.DurationS, r.Burners, r.CPUBusyPct,
			r.Transitions, r.Takeovers, r.MaxGapMs, r.Lost, r.Sent, r.Scheduling["fw-a"])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range []*bench.StabilityResult{&rep.StabilityResult, rep.Keepalived} {
		if r == nil {
			continue
		}
		fmt.Fprintf(w, "%s scheduling: fw-a %s; fw-b %s", r.Implementation, r.Scheduling["fw-a"], r.Scheduling["fw-b"])
		printForeignRT(w, r.Implementation, r.ForeignRT)
		fmt.Fprintln(w)
		for _, e := range r.Events {
			if r.Implementation == "tandem" {
				fmt.Fprintf(w, "%s: %s %s %s -> %s: %s\n", r.Implementation, e.At.Format("15:04:05.000"), e.Unit, e.From, e.To, e.Reason)
			} else {
				fmt.Fprintf(w, "%s: %s: %s\n", r.Implementation, e.Unit, e.Reason)
			}
		}
		for _, e := range r.Errors {
			fmt.Fprintf(w, "%s: ERROR %s\n", r.Implementation, e)
		}
	}
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	return nil
}
