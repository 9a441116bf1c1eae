package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/lab"
)

// newBenchSyncCmd is `tandem bench sync`: state-sync throughput, lag,
// losses, memory, resync and promotion, tandem beside conntrackd.
func newBenchSyncCmd() *cobra.Command {
	var (
		name, profile, logs string
		jsonOut, verbose    bool
		entries             int
		workers, batch      int
		settle, stall       time.Duration
		ctd                 bool
		ctdBinary           string
		ctdHashSize         int
		ctdRepair, ctdPoll  time.Duration
		avoid               string
		pin                 bool
	)
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Measure state sync with N connections: throughput, lag, losses, standby memory, resync and promotion, tandem beside conntrackd",
		Long: "tandem bench sync builds a lab, creates N established, source-NATed TCP connections in the ACTIVE unit's kernel as fast as it\n" +
			"takes them (batched ctnetlink creates from several sockets) and measures how they reach the standby: entries/s until all N are\n" +
			"there, the lag of every 256th entry (conntrack events on the standby), lost entries, the standby process's memory per entry, a\n" +
			"full resync after a standby restart and the promotion after a power failure of the ACTIVE. Then it builds the lab again with\n" +
			"tandem's state sync off and measures conntrackd (FTFW over the HA link) the same way. nf_conntrack_max and the conntrack hash\n" +
			"size are raised for the run and restored; the labs are removed at the end, also on error or Ctrl-C.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if err := bench.CheckSyncName(name); err != nil {
				return &exitError{2, err}
			}
			if _, ok := lab.Profiles[profile]; !ok {
				return &exitError{2, fmt.Errorf("--profile %q: use one of %s", profile, strings.Join(profileNames(), ", "))}
			}
			if entries <= 0 || entries > bench.MaxSyncEntries {
				return &exitError{2, fmt.Errorf("--entries must be between 1 and %d", bench.MaxSyncEntries)}
			}
			if _, err := exec.LookPath("conntrack"); err != nil {
				return &exitError{2, fmt.Errorf("the benchmark flushes the standby's table with conntrack: %w (apt-get install conntrack)", err)}
			}
			var avoidPorts []uint16
			for _, f := range strings.Split(avoid, ",") {
				if f = strings.TrimSpace(f); f == "" {
					continue
				}
				p, err := strconv.ParseUint(f, 10, 16)
				if err != nil || p < 1024 {
					return &exitError{2, fmt.Errorf("--avoid-nat-ports: %q is not a port of 1024-65535", f)}
				}
				avoidPorts = append(avoidPorts, uint16(p))
			}
			var notes []string
			var co *bench.ConntrackdOptions
			if ctd {
				if _, err := exec.LookPath(ctdBinary); err != nil {
					if c.Flags().Changed("conntrackd") {
						return &exitError{2, fmt.Errorf("--conntrackd: %w (apt-get install conntrackd)", err)}
					}
					notes = append(notes, fmt.Sprintf("conntrackd not measured: %v", err))
				} else {
					co = &bench.ConntrackdOptions{Binary: ctdBinary, HashSize: ctdHashSize, RepairWait: ctdRepair, PollInterval: ctdPoll}
				}
			}
			ctx, stop := signalContext(c.Context())
			defer stop()
			rep, err := bench.RunSync(ctx, bench.SyncOptions{
				Lab: labOptions(name, profile, c.ErrOrStderr(), verbose), Entries: entries, Workers: workers, Batch: batch, AvoidNATPorts: avoidPorts, PinUnits: pin,
				Conntrackd: co, Settle: settle, Stall: stall, LogsDir: logs, Progress: c.ErrOrStderr(),
			})
			if rep != nil {
				rep.Notes = append(bench.SyncNotes(rep), notes...)
				if perr := printSync(c.OutOrStdout(), jsonOut, rep); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "bssync", "lab name (must start with \"bs\"); the lab is built at the start and removed at the end")
	f.StringVar(&profile, "profile", lab.DefaultProfile, "timing profile: "+strings.Join(profileNames(), ", "))
	f.IntVar(&entries, "entries", 100000, "connections created on the ACTIVE unit (N)")
	f.BoolVar(&jsonOut, "json", false, "print the report as JSON")
	f.BoolVarP(&verbose, "verbose", "v", false, "log what the lab does")
	f.StringVar(&logs, "logs", "", "copy the daemons' logs and configs to this directory before each lab is removed")
	f.IntVar(&workers, "workers", 2, "goroutines (one netlink socket each) creating the connections")
	f.IntVar(&batch, "batch", 256, "creates per system call")
	f.BoolVar(&pin, "pin-units", false, "confine each unit's daemons (tandem, conntrackd) to a CPU of its own (fw-a CPU 0, fw-b CPU 1), as if the units were two machines; by default both share every CPU")
	f.StringVar(&avoid, "avoid-nat-ports", "", "comma-separated NAT ports the connections never get (default: every port of 1024-65535, as masquerading uses them), e.g. 7480,7481")
	f.DurationVar(&settle, "settle", 3*time.Second, "how long the standby's count must stay put before losses are counted")
	f.DurationVar(&stall, "stall", time.Minute, "stop waiting when the standby's count has not moved for this long")
	f.BoolVar(&ctd, "conntrackd", true, "also measure conntrackd (FTFW) on a lab of the same build (skipped with a note if it is not installed, unless set explicitly)")
	f.StringVar(&ctdBinary, "conntrackd-binary", "conntrackd", "conntrackd executable")
	f.IntVar(&ctdHashSize, "conntrackd-hashsize", 32768, "conntrackd General/HashSize (the FTFW example's value by default)")
	f.DurationVar(&ctdRepair, "conntrackd-repair-wait", time.Minute, "when entries are missing on conntrackd's backup, how long to wait for conntrackd to repair them")
	f.DurationVar(&ctdPoll, "conntrackd-poll", 20*time.Millisecond, "how often conntrackd's backup cache is counted (conntrackd -s) during the burst")
	return cmd
}

func syncCell(p *float64, unit string) string {
	if p == nil {
		return "-"
	}
	return strings.TrimSpace(fmt.Sprintf("%.*f %s", decimals(*p), *p, unit))
}

func decimals(v float64) int {
	switch {
	case v >= 1000:
		return 0
	case v >= 10:
		return 1
	case v >= 1:
		return 2
	}
	return 3
}

func intCell(p *int) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func printSync(w io.Writer, jsonOut bool, rep *bench.SyncReport) error {
	if jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(rep)
	}
	fmt.Fprintf(w, "state sync, N = %d connections created on fw-a (%d workers, batches of %d), lab %s (profile %s)\n",
		rep.Entries, rep.Workers, rep.Batch, rep.Lab, rep.Profile)
	if rep.PinUnits {
		fmt.Fprintln(w, "each unit's daemons confined to a CPU of their own (fw-a CPU 0, fw-b CPU 1)")
	}
	if len(rep.AvoidPorts) > 0 {
		fmt.Fprintf(w, "NAT ports never used: %v\n", rep.AvoidPorts)
	}
	fmt.Fprintf(w, "machine: %d CPUs (%s), kernel %s, load %s -> %s\n", rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.Kernel, rep.Machine.LoadAvg, rep.Machine.LoadAvgEnd)
	results := []*bench.SyncResult{&rep.SyncResult}
	head := "\ttandem " + rep.Version
	if rep.Conntrackd != nil {
		results = append(results, rep.Conntrackd)
		head += "\t" + rep.Conntrackd.Version
	}
	t := rep.Targets
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, head+"\ttarget")
	row := func(label string, f func(r *bench.SyncResult) string, target string) {
		line := label
		for _, r := range results {
			line += "\t" + f(r)
		}
		fmt.Fprintln(tw, line+"\t"+target)
	}
	row("created on fw-a", func(r *bench.SyncResult) string {
		return fmt.Sprintf("%.2f s (%.0f/s)", r.Created.Seconds, r.Created.PerS)
	}, "")
	row("all N on the standby after", func(r *bench.SyncResult) string { return syncCell(r.AllOnStandbyS, "s") }, "")
	row("entries/s", func(r *bench.SyncResult) string { return syncCell(r.EntriesPerS, "") }, "")
	row("lag p50", func(r *bench.SyncResult) string {
		return lagCell(r.Lag, func(l *bench.LagStats) *float64 { return l.P50 })
	}, "")
	row("lag p99", func(r *bench.SyncResult) string {
		return lagCell(r.Lag, func(l *bench.LagStats) *float64 { return l.P99 })
	},
		fmt.Sprintf("every entry < %.0f ms", t.LagMs))
	row("lag max", func(r *bench.SyncResult) string {
		return lagCell(r.Lag, func(l *bench.LagStats) *float64 { return l.Max })
	}, "")
	row("lost (after settling)", func(r *bench.SyncResult) string { return intCell(r.Lost) }, fmt.Sprint(t.Lost))
	if rep.Conntrackd != nil && rep.Conntrackd.LostAfterRepair != nil {
		row("lost after repair wait", func(r *bench.SyncResult) string {
			if r.LostAfterRepair == nil {
				return "-"
			}
			return fmt.Sprintf("%d (%.0f s)", *r.LostAfterRepair, *r.RepairWaitS)
		}, "")
	}
	row("standby bytes/entry", func(r *bench.SyncResult) string { return syncCell(r.BytesPerEntry, "B") }, fmt.Sprintf("< %.0f B", t.BytesPerEntry))
	row("full resync (standby daemon restart)", func(r *bench.SyncResult) string { return syncCell(r.ResyncS, "s") }, fmt.Sprintf("< %g s", t.ResyncS))
	row("full resync, standby's table flushed (reboot)", func(r *bench.SyncResult) string { return syncCell(r.ResyncFlushedS, "s") }, "")
	row("promotion", func(r *bench.SyncResult) string { return syncCell(r.PromoteS, "s") }, fmt.Sprintf("< %g s", t.PromoteS))
	row("false failovers (HA transitions nobody asked for)", func(r *bench.SyncResult) string { return fmt.Sprint(len(r.Transitions)) }, "0")
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		fmt.Fprintf(w, "\n%s: standby = %s; memory = %s RSS %d -> %d kB\n", r.Implementation, r.Standby, r.Process, r.RSSKB[0], r.RSSKB[1])
		if r.CPUS != nil {
			fmt.Fprintf(w, "  CPU time during the burst: ACTIVE's process %.1f s, standby's %.1f s\n", r.CPUS[0], r.CPUS[1])
		}
		if r.Lag != nil {
			fmt.Fprintf(w, "  lag: %d of %d samples seen; %s\n", r.Lag.Seen, r.Lag.Samples, r.Lag.Method)
		}
		if r.LagByCount != nil {
			fmt.Fprintf(w, "  lag by count: p50 %s p99 %s ms\n", fmtMs(r.LagByCount.P50), fmtMs(r.LagByCount.P99))
		}
		for _, d := range []*bench.ResyncDetail{r.Resync, r.ResyncFlushed} {
			if d == nil {
				continue
			}
			fmt.Fprintf(w, "  resync: %s; all entries after %s", d.How, syncCell(d.EntriesS, "s"))
			if d.InSyncS != nil {
				fmt.Fprintf(w, ", IN_SYNC after %s", syncCell(d.InSyncS, "s"))
			}
			fmt.Fprintf(w, " (%d entries)\n", d.Entries)
		}
		if d := r.Promote; d != nil {
			fmt.Fprintf(w, "  promotion: %s; %d entries in the kernel before, %d after", d.How, d.Before, d.Entries)
			if d.CommandS != nil {
				fmt.Fprintf(w, "; the command took %.3f s", *d.CommandS)
			}
			if d.Refreshed != "" {
				fmt.Fprintf(w, "; %s", d.Refreshed)
			}
			fmt.Fprintln(w)
		}
		if len(r.LostExamples) > 0 {
			fmt.Fprintf(w, "  lost, e.g.: %s\n", strings.Join(r.LostExamples, "; "))
		}
		for i, t := range r.Transitions {
			if i == 6 {
				fmt.Fprintf(w, "  ... %d more (see the JSON report)\n", len(r.Transitions)-i)
				break
			}
			fmt.Fprintf(w, "  UNEXPECTED TRANSITION (false failover): %s\n", t)
		}
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  ERROR: %s\n", e)
		}
	}
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	return nil
}

func lagCell(l *bench.LagStats, f func(*bench.LagStats) *float64) string {
	if l == nil {
		return "-"
	}
	return syncCell(f(l), "ms")
}
