package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/version"
)

// FailoverOptions configure RunFailover.
type FailoverOptions struct {
	// Lab is the lab to build; its Name must start with "bn" (the bench's
	// own labs). NodeState is not used.
	Lab lab.Options
	// Trials per mode (default 5).
	Trials int
	// Modes to run, a subset of Modes (default all, in that order).
	Modes []string
	// Keepalived, when set, measures keepalived on the same lab after tandem.
	Keepalived *KeepalivedOptions
	// Observe is how long after the failure the traffic is watched before
	// the outage is read (default 1.5s); the traffic must also have been
	// flowing for FlowWindow by then.
	Observe time.Duration
	// Recover is how long traffic may take to come back before the trial
	// counts as a failure (default 10s).
	Recover time.Duration
	// Settle is how long the pair must be steady before a trial (default
	// DefaultSettle).
	Settle time.Duration
	// LogsDir, when set, receives a copy of every daemon log of the lab
	// before it is removed.
	LogsDir string
	// ProbeCommand, when set, runs the echo server and the prober in a
	// probe agent process ("{lab}" is replaced by the lab's name; see
	// RunProbeAgent); else they run in this process.
	ProbeCommand []string
	// Progress receives one line per trial; nil discards them.
	Progress io.Writer
}

// Timing of the trials.
const (
	// FlowWindow is how long traffic must flow, with no gap of FlowGap or
	// more, before a trial starts and before a failed-over pair counts as
	// serving again.
	FlowWindow = 300 * time.Millisecond
	FlowGap    = 50 * time.Millisecond
	// DefaultSettle is how long the steady state must hold, with no state
	// change of either unit, before a trial.
	DefaultSettle = 500 * time.Millisecond
	// steadyTimeout bounds the wait for the steady state (it includes the
	// preempt delay and the link hold-down).
	steadyTimeout = 60 * time.Second
)

// Sample is one trial.
type Sample struct {
	Trial int    `json:"trial"`
	Unit  string `json:"failed_unit"`
	// OK: traffic came back within the recovery limit and kept flowing.
	OK bool `json:"ok"`
	// GapMs is the outage: the longest gap between answered probes from
	// the failure to the end of the observation (for a failed trial, at
	// least the time since the last answer).
	GapMs float64 `json:"gap_ms"`
	// Lost is the number of probes sent during the observation that were
	// never answered, of Sent.
	Lost int `json:"lost_probes"`
	Sent int `json:"sent_probes"`
	// LossWindowMs is the longest run of lost probes on the sender's
	// clock (see Prober.LossWindow): the network's share of the outage.
	LossWindowMs float64 `json:"loss_window_ms"`
	// MaxRTTMs is the longest round trip of an answer, MaxSendGapMs the
	// longest pause of the prober: they tell held packets and a stalled
	// prober from lost packets.
	MaxRTTMs     float64 `json:"max_rtt_ms"`
	MaxSendGapMs float64 `json:"max_send_gap_ms"`
	// ActiveAfter is the unit that said it was ACTIVE/MASTER at the end.
	ActiveAfter string `json:"active_after"`
	// VIPsOn lists the units whose kernel held a virtual IP at the end.
	VIPsOn []string `json:"vips_on"`
	Error  string   `json:"error,omitempty"`
}

// Result is the outcome of every trial of one implementation.
type Result struct {
	Implementation string `json:"implementation"`
	Version        string `json:"version"`
	Profile        string `json:"profile"`
	Trials         int    `json:"trials"`
	// Scheduling is the scheduling policy of each unit's daemon threads.
	Scheduling map[string]string   `json:"scheduling,omitempty"`
	Crash      *Summary            `json:"crash_gap_ms"`
	Sigkill    *Summary            `json:"sigkill_gap_ms"`
	Sigterm    *Summary            `json:"sigterm_gap_ms"`
	Linkdown   *Summary            `json:"linkdown_gap_ms"`
	Samples    map[string][]Sample `json:"samples"`
	// ForeignRT is what other realtime processes used during the trials.
	ForeignRT *ForeignRT `json:"foreign_realtime"`
	Errors    []string   `json:"errors,omitempty"`
}

// Summary returns the summary of mode.
func (r *Result) Summary(mode string) *Summary {
	switch mode {
	case ModeCrash:
		return r.Crash
	case ModeSigkill:
		return r.Sigkill
	case ModeSigterm:
		return r.Sigterm
	case ModeLinkdown:
		return r.Linkdown
	}
	return nil
}

func (r *Result) finish() {
	for _, m := range Modes {
		s, ok := r.Samples[m]
		if !ok {
			continue
		}
		sum := summarize(s)
		switch m {
		case ModeCrash:
			r.Crash = sum
		case ModeSigkill:
			r.Sigkill = sum
		case ModeSigterm:
			r.Sigterm = sum
		case ModeLinkdown:
			r.Linkdown = sum
		}
	}
}

// FailoverReport is the output of `tandem bench failover`: tandem's result
// at the top level, keepalived's beside it.
type FailoverReport struct {
	Result
	Lab string `json:"lab"`
	// BinarySHA256 identifies the tandem binary every process of the run was.
	BinarySHA256 string    `json:"binary_sha256"`
	Machine      Machine   `json:"machine"`
	Modes        []string  `json:"modes"`
	Settle       Duration  `json:"settle"`
	Observe      Duration  `json:"observe"`
	Started      time.Time `json:"started"`
	Finished     time.Time `json:"finished"`
	Keepalived   *Result   `json:"keepalived,omitempty"`
	Notes        []string  `json:"notes"`
}

// CheckName refuses lab names that are not the bench's own ("bn...").
func CheckName(name string) error {
	if !strings.HasPrefix(name, "bn") {
		return fmt.Errorf("bench lab names start with \"bn\" (got %q), so a benchmark never touches another lab", name)
	}
	return nil
}

// RunFailover builds a lab, measures the outage of every mode over the
// trials for tandem and then (if asked) keepalived, and removes the lab —
// also on error and when ctx is cancelled. The report holds whatever was
// measured, even when an error is returned.
func RunFailover(ctx context.Context, o FailoverOptions) (rep *FailoverReport, err error) {
	if err := CheckName(o.Lab.Name); err != nil {
		return nil, err
	}
	if o.Trials <= 0 {
		o.Trials = 5
	}
	if len(o.Modes) == 0 {
		o.Modes = Modes
	}
	for _, m := range o.Modes {
		if !slices.Contains(Modes, m) {
			return nil, fmt.Errorf("unknown mode %q (have: %s)", m, strings.Join(Modes, ", "))
		}
	}
	if o.Observe <= 0 {
		o.Observe = 1500 * time.Millisecond
	}
	if o.Recover <= 0 {
		o.Recover = 10 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	prof, ok := lab.Profiles[cmpOr(o.Lab.Profile, lab.DefaultProfile)]
	if !ok {
		return nil, fmt.Errorf("unknown profile %q", o.Lab.Profile)
	}
	o.Lab.NodeState = nil

	rep = &FailoverReport{
		Result:  Result{Implementation: "tandem", Version: version.String(), Profile: prof.Name, Trials: o.Trials},
		Lab:     o.Lab.Name,
		Machine: machine(),
		Modes:   o.Modes,
		Settle:  Duration(o.Settle),
		Observe: Duration(o.Observe),
		Started: time.Now().UTC(),
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

	fmt.Fprintf(o.Progress, "lab %s up (profile %s); tandem: %d trials of %s\n", l.Name(), prof.Name, o.Trials, strings.Join(o.Modes, ", "))
	runTrials(ctx, &rep.Result, tandemPair{l}, l, tr, o)
	if err := ctx.Err(); err != nil {
		return rep, err
	}
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
	rep.Keepalived = &Result{Implementation: "keepalived", Version: kp.version, Profile: prof.Name, Trials: o.Trials}
	fmt.Fprintf(o.Progress, "keepalived (%s, advert_int %s): %d trials of %s\n", kp.version, advertInt(prof.Heartbeat), o.Trials, strings.Join(o.Modes, ", "))
	runTrials(ctx, rep.Keepalived, kp, l, tr, o)
	return rep, ctx.Err()
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// runTrials runs every trial of every mode against p and fills r. A pair
// that does not come back to its steady state ends the run of p (recorded
// in r.Errors); a single failed trial does not.
func runTrials(ctx context.Context, r *Result, p pair, l *lab.Lab, tr *traffic, o FailoverOptions) {
	r.Samples = map[string][]Sample{}
	rt := startRTWatch(l, 2*time.Second)
	defer func() { r.ForeignRT = rt.result() }()
	defer r.finish()
	for _, mode := range o.Modes {
		r.Samples[mode] = []Sample{}
		for i := 1; i <= o.Trials; i++ {
			if err := waitSteady(ctx, p, tr, steadyTimeout, o.Settle); err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("%s trial %d: %v", mode, i, err))
				return
			}
			if r.Scheduling == nil {
				r.Scheduling = map[string]string{}
				for n, pids := range p.pids() {
					r.Scheduling[n] = schedOf(pids...)
				}
			}
			s := trial(ctx, p, l, tr, mode, lab.RoleFwA, o)
			s.Trial = i
			r.Samples[mode] = append(r.Samples[mode], s)
			status := fmt.Sprintf("%8.2f ms", s.GapMs)
			if !s.OK {
				status = "FAILED: " + s.Error
			}
			fmt.Fprintf(o.Progress, "  %-10s %-8s %2d/%d  %s  (lost %d of %d, loss window %.1f ms, max rtt %.1f ms, max send gap %.1f ms; then ACTIVE: %s, VIPs on %v)\n",
				p.name(), mode, i, o.Trials, status, s.Lost, s.Sent, s.LossWindowMs, s.MaxRTTMs, s.MaxSendGapMs, cmpOr(s.ActiveAfter, "none"), s.VIPsOn)
			if ctx.Err() != nil {
				return
			}
			if err := p.reset(ctx, mode, lab.RoleFwA); err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("%s trial %d: repair: %v", mode, i, err))
				return
			}
		}
	}
	// The last repair must bring the pair back too (keepalived follows).
	if err := waitSteady(ctx, p, tr, steadyTimeout, o.Settle); err != nil {
		r.Errors = append(r.Errors, fmt.Sprintf("after the last trial: %v", err))
	}
}

// waitSteady waits until p has been in its steady state, with traffic
// flowing, for settle.
func waitSteady(ctx context.Context, p pair, tr *traffic, timeout, settle time.Duration) error {
	deadline := time.Now().Add(timeout)
	var since time.Time
	why, lastGen := "", ""
	for {
		ok, w, gen := p.steady(ctx)
		if ok && !tr.prober.Flowing(FlowWindow, FlowGap) {
			ok, w = false, "traffic not flowing"
		}
		why = w
		changed := gen != lastGen
		lastGen = gen
		switch {
		case !ok || changed:
			since = time.Time{}
			if ok {
				since = time.Now()
			}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= settle:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s pair not steady after %v: %s", p.name(), timeout, why)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// trial fails node in mode and measures the outage.
func trial(ctx context.Context, p pair, l *lab.Lab, tr *traffic, mode, node string, o FailoverOptions) Sample {
	s := Sample{Unit: node}
	pr := tr.prober
	mark := pr.Mark()
	if err := p.fail(ctx, mode, node); err != nil {
		s.Error = fmt.Sprintf("failing %s: %v", node, err)
	}
	var end time.Duration
	for {
		end = pr.Mark()
		since := end - mark
		if _, back := pr.GapBetween(mark, end); back && since >= o.Observe && pr.Flowing(FlowWindow, FlowGap) {
			s.OK = s.Error == ""
			break
		}
		if since >= o.Recover {
			if s.Error == "" {
				s.Error = fmt.Sprintf("traffic did not come back within %v", o.Recover)
			}
			break
		}
		if sleepCtx(ctx, 5*time.Millisecond) != nil {
			s.Error = "interrupted"
			break
		}
	}
	gap, _ := pr.GapBetween(mark, end)
	if !s.OK {
		// The outage still open at the end counts too.
		last, ok := pr.LastAnswer()
		if !ok || last < mark {
			last = mark
		}
		gap = max(gap, end-last)
	}
	s.GapMs = millis(gap)
	s.Lost, s.Sent = pr.Lost(mark, end-100*time.Millisecond)
	s.LossWindowMs = millis(pr.LossWindow(mark, end-100*time.Millisecond))
	s.MaxRTTMs = millis(pr.MaxRTT(mark, end))
	s.MaxSendGapMs = millis(pr.MaxSendGap(mark, end))
	s.ActiveAfter = p.active(ctx)
	s.VIPsOn, _, _ = vipHolders(l, node)
	if s.VIPsOn == nil {
		s.VIPsOn = []string{}
	}
	return s
}

// copyLogs copies every *.log of the lab's run directory (and of its
// keepalived directory) to dst.
func copyLogs(labDir, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, pat := range []string{"*.log", "*.yaml", "keepalived/*.log", "keepalived/*.conf"} {
		files, _ := filepath.Glob(filepath.Join(labDir, pat))
		for _, f := range files {
			name := filepath.Base(f)
			if filepath.Base(filepath.Dir(f)) == "keepalived" {
				name = "keepalived-" + name
			}
			b, err := os.ReadFile(f)
			if err == nil {
				err = os.WriteFile(filepath.Join(dst, name), b, 0o644)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Duration is a time.Duration that reads "1.5s" in JSON and text.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText renders d like time.Duration.String.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses what MarshalText wrote.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// finishLab ends a benchmark's lab: keepalived first (a process left in a
// namespace keeps it alive), then the logs are copied out if asked, then the
// lab is removed. kp may be nil.
func finishLab(l *lab.Lab, kp *keepalivedPair, logsDir string) error {
	err := kp.close()
	if logsDir != "" {
		err = errors.Join(err, copyLogs(l.Dir(), logsDir))
	}
	return errors.Join(err, l.Down())
}
