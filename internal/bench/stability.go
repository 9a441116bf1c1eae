package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/version"
)

// StabilityOptions configure RunStability.
type StabilityOptions struct {
	// Lab is the lab to build; its Name must start with "bn".
	Lab lab.Options
	// Duration of each implementation's run under load (default 10m).
	Duration time.Duration
	// Burners is the number of CPU burners (default: the number of CPUs).
	Burners int
	// BurnCommand starts one burner; "{duration}" in it is replaced with
	// Duration (the burner ends by itself after it).
	BurnCommand []string
	// Keepalived, when set, runs the same test with keepalived afterwards.
	Keepalived *KeepalivedOptions
	LogsDir    string
	// ProbeCommand: see FailoverOptions.
	ProbeCommand []string
	Progress     io.Writer
}

// StabilityEvent is one state change after the initial election.
type StabilityEvent struct {
	At       time.Time `json:"at"`
	Unit     string    `json:"unit"`
	Instance string    `json:"instance,omitempty"`
	From     string    `json:"from,omitempty"`
	To       string    `json:"to"`
	Reason   string    `json:"reason,omitempty"`
}

// StabilityResult is one implementation's run under load.
type StabilityResult struct {
	Implementation string  `json:"implementation"`
	Version        string  `json:"version"`
	Profile        string  `json:"profile"`
	DurationS      float64 `json:"duration_s"`
	Burners        int     `json:"burners"`
	// CPUBusyPct is the share of all CPUs busy during the run (/proc/stat).
	CPUBusyPct float64           `json:"cpu_busy_pct"`
	Scheduling map[string]string `json:"scheduling"`
	// Transitions counts the state changes of both units after the initial
	// election: every one is a false failover (nothing failed). For
	// keepalived it counts log lines "(INSTANCE) Entering X STATE", one
	// per instance (LAN and WAN move together in the sync group).
	Transitions int `json:"transitions"`
	// Takeovers counts how often fw-b took the role (tandem ACTIVE,
	// keepalived LAN instance MASTER).
	Takeovers int              `json:"takeovers"`
	Events    []StabilityEvent `json:"events"`
	// ForeignRT is what other realtime processes used during the run.
	ForeignRT *ForeignRT `json:"foreign_realtime"`
	// MaxGapMs and Lost describe the probe traffic during the run (the
	// prober runs under the same load, so a gap may be its own delay).
	MaxGapMs        float64  `json:"max_gap_ms"`
	MaxLossWindowMs float64  `json:"max_loss_window_ms"`
	Lost            int      `json:"lost_probes"`
	Sent            int      `json:"sent_probes"`
	Errors          []string `json:"errors,omitempty"`
}

// StabilityReport is the output of `tandem bench stability`.
type StabilityReport struct {
	StabilityResult
	Lab          string           `json:"lab"`
	BinarySHA256 string           `json:"binary_sha256"`
	Machine      Machine          `json:"machine"`
	Started      time.Time        `json:"started"`
	Finished     time.Time        `json:"finished"`
	Keepalived   *StabilityResult `json:"keepalived,omitempty"`
	Notes        []string         `json:"notes"`
}

// RunStability builds a lab, saturates every CPU for the duration and counts
// the state changes of tandem, then of keepalived; it removes the lab and
// every process it started, also on error and when ctx is cancelled.
// stabilitySettle is how long each pair must be steady before the load
// starts: past its start-up (tandem's preemption delay, the first
// snapshots), so that only the load is measured.
const stabilitySettle = 5 * time.Second

func RunStability(ctx context.Context, o StabilityOptions) (rep *StabilityReport, err error) {
	if err := CheckName(o.Lab.Name); err != nil {
		return nil, err
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Burners <= 0 {
		o.Burners = runtime.NumCPU()
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	prof, ok := lab.Profiles[cmpOr(o.Lab.Profile, lab.DefaultProfile)]
	if !ok {
		return nil, fmt.Errorf("unknown profile %q", o.Lab.Profile)
	}
	o.Lab.NodeState = nil
	var argv []string
	for _, a := range o.BurnCommand {
		argv = append(argv, strings.ReplaceAll(a, "{duration}", o.Duration.String()))
	}
	rep = &StabilityReport{
		StabilityResult: StabilityResult{Implementation: "tandem", Version: version.String(), Profile: prof.Name},
		Lab:             o.Lab.Name, Machine: machine(), Started: time.Now().UTC(),
	}
	defer func() { rep.Finished, rep.Machine.LoadAvgEnd = time.Now().UTC(), loadavg() }()

	if o.Lab.Binary == "" {
		self, sum, cleanup, err := selfCopy()
		if err != nil {
			return rep, err
		}
		defer cleanup()
		o.Lab.Binary, rep.BinarySHA256 = self, sum
		o.ProbeCommand = withSelf(o.ProbeCommand, self)
		argv = withSelf(argv, self)
	}
	l, err := lab.Up(ctx, o.Lab)
	if err != nil {
		return rep, err
	}
	var kp *keepalivedPair
	defer func() { err = errors.Join(err, finishLab(l, kp, o.LogsDir)) }()
	tr, err := startProbes(ctx, l, o.ProbeCommand)
	if err != nil {
		return rep, err
	}
	defer tr.stop()

	tp := tandemPair{l}
	if err := waitSteady(ctx, tp, tr, steadyTimeout, stabilitySettle); err != nil {
		return rep, err
	}
	fmt.Fprintf(o.Progress, "lab %s up (profile %s); tandem steady; %d CPU burners for %v\n", l.Name(), prof.Name, o.Burners, o.Duration)
	if err := underLoad(ctx, &rep.StabilityResult, tp, tr, argv, o, tandemWatch(tp)); err != nil {
		return rep, err
	}
	fmt.Fprintf(o.Progress, "tandem: %d transitions after the initial election\n", rep.Transitions)
	if o.Keepalived == nil {
		return rep, nil
	}

	if err := stopTandem(ctx, l); err != nil {
		return rep, fmt.Errorf("stopping tandem before keepalived: %w", err)
	}
	kp, err = startKeepalived(ctx, l, prof, *o.Keepalived)
	if err != nil {
		return rep, err
	}
	rep.Keepalived = &StabilityResult{Implementation: "keepalived", Version: kp.version, Profile: prof.Name}
	if err := waitSteady(ctx, kp, tr, steadyTimeout, stabilitySettle); err != nil {
		return rep, err
	}
	fmt.Fprintf(o.Progress, "keepalived steady; %d CPU burners for %v\n", o.Burners, o.Duration)
	if err := underLoad(ctx, rep.Keepalived, kp, tr, argv, o, keepalivedWatch(kp)); err != nil {
		return rep, err
	}
	fmt.Fprintf(o.Progress, "keepalived: %d transitions (log lines) after the initial election\n", rep.Keepalived.Transitions)
	return rep, nil
}

// watcher follows a pair's state changes during a run: start marks the
// baseline, poll is called every quarter second, finish returns every
// change after the baseline.
type watcher struct {
	l      *lab.Lab
	start  func() error
	poll   func()
	finish func() ([]StabilityEvent, []string)
}

// underLoad runs the burners for o.Duration while w follows the pair.
func underLoad(ctx context.Context, r *StabilityResult, p pair, tr *traffic, argv []string, o StabilityOptions, w watcher) error {
	r.Burners = o.Burners
	r.Scheduling = map[string]string{}
	for n, pids := range p.pids() {
		r.Scheduling[n] = schedOf(pids...)
	}
	if err := w.start(); err != nil {
		return err
	}
	mark := tr.prober.Mark()
	busy0, total0 := cpuBusy()
	rt := startRTWatch(w.l, 2*time.Second)
	b, err := startBurners(argv, o.Burners)
	if err != nil {
		return err
	}
	defer b.stop()
	began := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastReport := began
loop:
	for time.Since(began) < o.Duration {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			w.poll()
			if time.Since(lastReport) >= time.Minute {
				lastReport = time.Now()
				fmt.Fprintf(o.Progress, "  %s: %v of %v\n", p.name(), time.Since(began).Round(time.Second), o.Duration)
			}
		}
	}
	busy1, total1 := cpuBusy()
	r.ForeignRT = rt.result()
	b.stop()
	end := tr.prober.Mark()
	r.DurationS = time.Since(began).Round(time.Millisecond).Seconds()
	if total1 > total0 {
		r.CPUBusyPct = round2(100 * float64(busy1-busy0) / float64(total1-total0))
	}
	// Let the last changes show in the status history and the logs.
	_ = sleepCtx(ctx, 300*time.Millisecond)
	w.poll()
	r.Events, r.Errors = w.finish()
	if r.Events == nil {
		r.Events = []StabilityEvent{}
	}
	r.Transitions = len(r.Events)
	for _, e := range r.Events {
		if e.Unit == lab.RoleFwB && (e.To == "ACTIVE" || e.To == "MASTER" && e.Instance == "LAN") {
			r.Takeovers++
		}
	}
	gap, _ := tr.prober.GapBetween(mark, end)
	r.MaxGapMs = millis(gap)
	r.Lost, r.Sent = tr.prober.Lost(mark, end-100*time.Millisecond)
	r.MaxLossWindowMs = millis(tr.prober.LossWindow(mark, end-100*time.Millisecond))
	return ctx.Err()
}

// tandemWatch follows tandem's transition histories (kept by each daemon,
// read over the control socket) and notices a daemon that restarted.
func tandemWatch(tp tandemPair) watcher {
	var baseline time.Time
	boot := map[string]uint64{}
	seen := map[string]StabilityEvent{}
	errs := map[string]bool{}
	poll := func() {
		for _, n := range units {
			st, err := tp.status(context.Background(), n)
			if err != nil {
				errs[err.Error()] = true
				continue
			}
			if b, ok := boot[n]; ok && b != st.BootID {
				errs[fmt.Sprintf("%s daemon restarted (boot id %d -> %d)", n, b, st.BootID)] = true
				boot[n] = st.BootID
			}
			for _, t := range st.History {
				if !t.At.After(baseline) {
					continue
				}
				key := fmt.Sprintf("%s %d %s %s", n, t.At.UnixNano(), t.From, t.To)
				seen[key] = StabilityEvent{At: t.At, Unit: n, From: t.From, To: t.To, Reason: t.Reason}
			}
		}
	}
	return watcher{
		l: tp.l,
		start: func() error {
			baseline = time.Now()
			for _, n := range units {
				st, err := tp.status(context.Background(), n)
				if err != nil {
					return err
				}
				boot[n] = st.BootID
			}
			return nil
		},
		poll: poll,
		finish: func() ([]StabilityEvent, []string) {
			return sortedEvents(seen), sortedKeys(errs)
		},
	}
}

// keepalivedWatch counts keepalived's state changes from its logs.
func keepalivedWatch(kp *keepalivedPair) watcher {
	offsets := map[string]int64{}
	return watcher{
		l: kp.l,
		start: func() error {
			for _, n := range units {
				fi, err := os.Stat(kp.units[n].file(".log"))
				if err != nil {
					return err
				}
				offsets[n] = fi.Size()
			}
			return nil
		},
		poll: func() {},
		finish: func() ([]StabilityEvent, []string) {
			var evs []StabilityEvent
			var errs []string
			for _, n := range units {
				ts, err := kp.transitionsFrom(n, offsets[n])
				if err != nil {
					errs = append(errs, err.Error())
				}
				for _, t := range ts {
					evs = append(evs, StabilityEvent{Unit: n, Instance: t.Instance, To: t.State, Reason: strings.TrimSpace(t.Line)})
				}
				if p := kp.units[n].proc; p == nil || p.exited() {
					errs = append(errs, "keepalived in "+n+" is not running")
				}
			}
			return evs, errs
		},
	}
}

func sortedEvents(m map[string]StabilityEvent) []StabilityEvent {
	out := make([]StabilityEvent, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
