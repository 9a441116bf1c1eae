package bench

// The state-sync benchmark: N connections are created on the ACTIVE unit
// as fast as the kernel takes them, and the standby's copy is watched —
// throughput, lag, losses, the standby's memory, a full resync after a
// standby restart and the promotion after a power failure of the ACTIVE —
// for tandem, then for conntrackd (FTFW) on a lab of the same build.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/statesync"
	"github.com/tandem-ha/tandem/internal/version"
)

// SyncOptions configure RunSync.
type SyncOptions struct {
	// Lab is the lab to build; its Name must start with "bs". The tandem
	// phase runs on it with state sync on; the conntrackd phase on a lab
	// of the same name and build afterwards, with tandem's state sync off.
	Lab lab.Options
	// Entries is N, the connections created on the ACTIVE unit.
	Entries int
	// Workers is the number of goroutines (one netlink socket each)
	// creating connections (default 2); Batch the creates per system call
	// (default 256).
	Workers, Batch int
	// AvoidNATPorts are NAT ports the connections never get (by default
	// every port of 1024-65535 is used, as a busy firewall's masquerading
	// does).
	AvoidNATPorts []uint16
	// PinUnits confines each unit's daemons (tandem, conntrackd) to a CPU
	// of its own — fw-a's to CPU 0, fw-b's to CPU 1 — as if the units were
	// two machines; by default they share every CPU of this one.
	PinUnits bool
	// Conntrackd, when set, also measures conntrackd.
	Conntrackd *ConntrackdOptions
	// Settle is how long the standby's count must stay put after every
	// entry arrived before the losses are counted (default 3s).
	Settle time.Duration
	// Stall ends a wait when the awaited count has not moved for this long
	// (default 60s).
	Stall time.Duration
	// LogsDir, when set, receives the daemons' logs and configurations
	// before each lab is removed.
	LogsDir string
	// Progress receives one line per step (nil: discarded).
	Progress io.Writer

	scheme connScheme
}

// SyncReport is the result of RunSync: tandem's figures at the top level,
// conntrackd's under "conntrackd".
type SyncReport struct {
	SyncResult
	Conntrackd *SyncResult  `json:"conntrackd,omitempty"`
	Lab        string       `json:"lab"`
	Profile    string       `json:"profile"`
	Workers    int          `json:"workers"`
	Batch      int          `json:"batch"`
	AvoidPorts []uint16     `json:"avoided_nat_ports,omitempty"`
	PinUnits   bool         `json:"pin_units"`
	Machine    Machine      `json:"machine"`
	Limits     SyncLimits   `json:"limits"`
	Targets    *SyncTargets `json:"targets"`
	Started    time.Time    `json:"started"`
	Finished   time.Time    `json:"finished"`
	// Notes say how the figures were measured (the results' own notes
	// are under "notes").
	Notes []string `json:"method_notes"`
}

// SyncTargets are the figures tandem aims at (reported beside the
// results, never asserted).
type SyncTargets struct {
	Lost          int     `json:"lost"`
	LagMs         float64 `json:"lag_ms"`
	ResyncS       float64 `json:"resync_s"`
	PromoteS      float64 `json:"promote_s"`
	BytesPerEntry float64 `json:"bytes_per_entry"`
}

// DefaultSyncTargets are tandem's targets for state sync.
var DefaultSyncTargets = SyncTargets{Lost: 0, LagMs: 20, ResyncS: 1, PromoteS: 0.5, BytesPerEntry: 200}

// SyncLimits records the global conntrack limits raised for the run and
// restored after it.
type SyncLimits struct {
	ConntrackMax  [2]int `json:"nf_conntrack_max"` // before, during
	HashSize      [2]int `json:"hashsize"`         // before, during
	Restored      bool   `json:"restored"`
	RestoreErrors string `json:"restore_errors,omitempty"`
}

// SyncResult is one implementation's figures. A figure that could not be
// measured is null, never made up.
type SyncResult struct {
	Implementation string `json:"implementation"`
	Version        string `json:"version"`
	Entries        int    `json:"entries"`
	// EntriesPerS is N divided by the time from the first create until all
	// N were on the standby; null if they never all arrived.
	EntriesPerS *float64 `json:"entries_per_s"`
	// AllOnStandbyS is that time.
	AllOnStandbyS *float64 `json:"all_on_standby_s"`
	// Standby is where "on the standby" was counted.
	Standby string `json:"standby"`
	// Created is the creation on the ACTIVE.
	Created CreateStats `json:"created"`
	Lag     *LagStats   `json:"lag_ms"`
	// LagByCount is the lag estimated from the counts on both sides
	// (the k-th entry created against the standby's count reaching k).
	LagByCount *LagStats `json:"lag_by_count_ms,omitempty"`
	// OnStandby is the benchmark's entries on the standby after settling.
	OnStandby int  `json:"on_standby"`
	Lost      *int `json:"lost"`
	// LostExamples name some of the lost connections.
	LostExamples []string `json:"lost_examples,omitempty"`
	// Transitions are HA state changes nobody asked for during the
	// measurement (false failovers), which void the figures after them.
	Transitions []string `json:"unexpected_transitions,omitempty"`
	// LostAfterRepair (conntrackd) is what is still missing after waiting
	// RepairWait for its periodic resynchronisation.
	LostAfterRepair *int     `json:"lost_after_repair,omitempty"`
	RepairWaitS     *float64 `json:"repair_wait_s,omitempty"`
	BytesPerEntry   *float64 `json:"bytes_per_entry"`
	// RSSKB is the standby process's VmRSS before and after (kB); the
	// kernel's own memory for the entries is not counted.
	RSSKB [2]int64 `json:"standby_rss_kb"`
	// CPUS is the CPU time (user + system) the ACTIVE's and the standby's
	// processes used from the start of the burst until the standby settled.
	CPUS    *[2]float64 `json:"daemon_cpu_s,omitempty"`
	Process string      `json:"standby_process"`
	// ResyncS is a full resync after the standby's daemon restarts;
	// tandem: its kernel table stays (a daemon restart), conntrackd: its
	// cache refilled (conntrackd -n), its kernel table untouched.
	ResyncS *float64      `json:"resync_s"`
	Resync  *ResyncDetail `json:"resync,omitempty"`
	// ResyncFlushedS is the same with the standby's kernel table flushed
	// first, as after a reboot: bound by the kernel's insertion rate.
	ResyncFlushedS *float64      `json:"resync_flushed_s,omitempty"`
	ResyncFlushed  *ResyncDetail `json:"resync_flushed,omitempty"`
	// PromoteS is from the standby's decision to become ACTIVE until all
	// its entries are in its kernel table with their final state.
	PromoteS *float64       `json:"promote_s"`
	Promote  *PromoteDetail `json:"promote,omitempty"`
	Errors   []string       `json:"errors,omitempty"`
	Notes    []string       `json:"notes,omitempty"`
}

// CreateStats describe the creation of the N connections on the ACTIVE.
type CreateStats struct {
	Seconds float64 `json:"s"`
	PerS    float64 `json:"per_s"`
	Failed  int     `json:"failed"`
}

// LagStats are percentiles of the replication lag in milliseconds.
type LagStats struct {
	P50     *float64 `json:"p50"`
	P99     *float64 `json:"p99"`
	Max     *float64 `json:"max"`
	Samples int      `json:"samples"` // sampled entries
	Seen    int      `json:"seen"`    // of which seen on the standby
	Method  string   `json:"method"`
}

// ResyncDetail breaks a resynchronisation down.
type ResyncDetail struct {
	How          string   `json:"how"`
	EntriesS     *float64 `json:"all_entries_s"`
	InSyncS      *float64 `json:"in_sync_s,omitempty"`
	Entries      int      `json:"entries"`
	StandbyBytes *float64 `json:"bytes_per_entry_after,omitempty"`
}

// PromoteDetail breaks a promotion down.
type PromoteDetail struct {
	How       string    `json:"how"`
	DecidedAt time.Time `json:"decided_at"`
	Before    int       `json:"entries_in_kernel_before"` // benchmark entries in the kernel before the failure
	Entries   int       `json:"entries_in_kernel"`        // benchmark entries in the kernel afterwards
	CommandS  *float64  `json:"command_s,omitempty"`
	Flows     int       `json:"flows,omitempty"`
	Failed    int       `json:"failed,omitempty"`
	Refreshed string    `json:"refreshed,omitempty"`
}

// CheckSyncName refuses lab names that are not the sync benchmark's own.
func CheckSyncName(name string) error {
	if !strings.HasPrefix(name, "bs") {
		return fmt.Errorf("sync bench lab names start with \"bs\" (got %q), so the benchmark never touches another lab", name)
	}
	return nil
}

func (o *SyncOptions) defaults() error {
	if err := CheckSyncName(o.Lab.Name); err != nil {
		return err
	}
	if o.Entries <= 0 || o.Entries > MaxSyncEntries {
		return fmt.Errorf("entries must be between 1 and %d", MaxSyncEntries)
	}
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.Batch <= 0 {
		o.Batch = benchPerClient
	}
	if o.Settle <= 0 {
		o.Settle = 3 * time.Second
	}
	if o.Stall <= 0 {
		o.Stall = 60 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.PinUnits && runtime.NumCPU() < 2 {
		return errors.New("pinning the units needs two CPUs")
	}
	o.Lab.NodeState = nil
	var err error
	o.scheme, err = newConnScheme(o.AvoidNATPorts)
	return err
}

// RunSync measures tandem's state sync (and conntrackd's, if asked) with
// o.Entries connections. It raises the global conntrack limits for the run
// and restores them, builds each lab and removes it — also on error and
// when ctx is cancelled. The report holds whatever was measured, even when
// an error is returned.
func RunSync(ctx context.Context, o SyncOptions) (rep *SyncReport, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	prof, ok := lab.Profiles[cmpOr(o.Lab.Profile, lab.DefaultProfile)]
	if !ok {
		return nil, fmt.Errorf("unknown profile %q", o.Lab.Profile)
	}
	t := DefaultSyncTargets
	rep = &SyncReport{
		SyncResult: SyncResult{Implementation: "tandem", Version: version.String(), Entries: o.Entries},
		Lab:        o.Lab.Name, Profile: prof.Name, Workers: o.Workers, Batch: o.Batch, AvoidPorts: o.AvoidNATPorts, PinUnits: o.PinUnits,
		Machine: machine(), Targets: &t, Started: time.Now().UTC(),
	}
	defer func() { rep.Finished, rep.Machine.LoadAvgEnd = time.Now().UTC(), loadavg() }()

	restore, err := raiseConntrackLimits(o.Entries, &rep.Limits)
	if err != nil {
		return rep, err
	}
	defer func() {
		if rerr := restore(); rerr != nil {
			rep.Limits.RestoreErrors = rerr.Error()
			err = errors.Join(err, rerr)
		} else {
			rep.Limits.Restored = true
		}
	}()
	fmt.Fprintf(o.Progress, "nf_conntrack_max %d -> %d, hashsize %d -> %d for the run\n",
		rep.Limits.ConntrackMax[0], rep.Limits.ConntrackMax[1], rep.Limits.HashSize[0], rep.Limits.HashSize[1])

	// A failed phase is recorded and the next one still runs: the
	// comparison is the point.
	var errs []error
	if err := withLab(ctx, o, "", "tandem", func(l *lab.Lab) error {
		return runTandemSync(ctx, l, o, &rep.SyncResult)
	}); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		errs = append(errs, fmt.Errorf("tandem: %w", err))
	}
	if o.Conntrackd == nil || ctx.Err() != nil {
		return rep, errors.Join(append(errs, ctx.Err())...)
	}
	rep.Conntrackd = &SyncResult{Implementation: "conntrackd", Entries: o.Entries}
	if err := withLab(ctx, o, "sync: {enabled: false}\n", "conntrackd", func(l *lab.Lab) error {
		return runConntrackdSync(ctx, l, o, rep.Conntrackd)
	}); err != nil {
		rep.Conntrackd.Errors = append(rep.Conntrackd.Errors, err.Error())
		errs = append(errs, fmt.Errorf("conntrackd: %w", err))
	}
	return rep, errors.Join(append(errs, ctx.Err())...)
}

// withLab builds the lab (with extra configuration), runs fn and removes
// the lab, whatever happens.
func withLab(ctx context.Context, o SyncOptions, extra, phase string, fn func(l *lab.Lab) error) (err error) {
	lo := o.Lab
	lo.ExtraConfig += extra
	l, err := lab.Up(ctx, lo)
	if err != nil {
		return fmt.Errorf("%s: lab up: %w", phase, err)
	}
	fmt.Fprintf(o.Progress, "%s: lab %s up\n", phase, l.Name())
	var cleanup []func() error
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			if cerr := cleanup[i](); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		if o.LogsDir != "" {
			dst := filepath.Join(o.LogsDir, phase)
			if cerr := copyLogs(l.Dir(), dst); cerr != nil {
				err = errors.Join(err, cerr)
			}
			files, _ := filepath.Glob(filepath.Join(l.Dir(), "conntrackd", "*"))
			for _, f := range files {
				if b, rerr := os.ReadFile(f); rerr == nil {
					if werr := os.WriteFile(filepath.Join(dst, "conntrackd-"+filepath.Base(f)), b, 0o644); werr != nil {
						err = errors.Join(err, werr)
					}
				}
			}
		}
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, derr)
		}
		fmt.Fprintf(o.Progress, "%s: lab %s down\n", phase, l.Name())
	}()
	return fn(l)
}

// raiseConntrackLimits raises nf_conntrack_max (global, read-only inside a
// namespace) and the hash size for n entries in each of two namespaces
// plus room for others, and returns the function that restores them —
// only where the value is still the one set here (someone else may have
// changed it meanwhile).
func raiseConntrackLimits(n int, lim *SyncLimits) (func() error, error) {
	type knob struct {
		path      string
		old, want int
		raw       []byte
		set       bool
	}
	knobs := []*knob{
		{path: "/proc/sys/net/netfilter/nf_conntrack_max", want: 2*n + 262144},
		{path: "/sys/module/nf_conntrack/parameters/hashsize", want: min(max(n, 65536), 4<<20)},
	}
	restore := func() error {
		var errs []error
		for _, k := range slices.Backward(knobs) {
			if !k.set {
				continue
			}
			cur, err := readInt(k.path)
			if err == nil && cur != k.want {
				errs = append(errs, fmt.Errorf("%s is %d, not the %d set for the run: someone else changed it; left alone (was %d)", k.path, cur, k.want, k.old))
				continue
			}
			if err := os.WriteFile(k.path, k.raw, 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore %s to %d: %w", k.path, k.old, err))
			}
		}
		return errors.Join(errs...)
	}
	for i, k := range knobs {
		b, err := os.ReadFile(k.path)
		if err != nil {
			return restore, errors.Join(fmt.Errorf("read %s: %w", k.path, err), restore())
		}
		k.raw = b
		k.old, err = strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return restore, errors.Join(fmt.Errorf("read %s: %w", k.path, err), restore())
		}
		cur := k.old
		if k.old < k.want {
			if err := os.WriteFile(k.path, []byte(strconv.Itoa(k.want)), 0o644); err != nil {
				return restore, errors.Join(fmt.Errorf("raise %s to %d: %w", k.path, k.want, err), restore())
			}
			k.set = true
			// The kernel rounds the hash size (to whole pages of buckets):
			// what it reads back now is what restore expects to find.
			if got, err := readInt(k.path); err == nil {
				k.want = got
			}
			cur = k.want
		}
		if i == 0 {
			lim.ConntrackMax = [2]int{k.old, cur}
		} else {
			lim.HashSize = [2]int{k.old, cur}
		}
	}
	return restore, nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// vmRSS returns a process's VmRSS in kB.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func ptr[T any](v T) *T { return &v }

func secs(d time.Duration) float64 { return round3(d.Seconds()) }

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// point is a count at a time since the start of a measurement.
type point struct {
	at time.Duration
	n  int
}

// creation is the result of creating the benchmark's connections.
type creation struct {
	took     time.Duration
	failed   int
	firstErr error
	// sampleAt[i/benchPerClient] is when sample i was sent (since t0).
	sampleAt []time.Duration
	// timeline is the cumulative count of created connections.
	timeline []point
}

// createConns creates connections 0..n-1 in the namespace of the ACTIVE
// (fw-a), from workers goroutines with batch creates per system call.
// Batch b goes to worker b % workers, so creation advances in order. The
// first connection of a batch is sent first, so its send time is its
// creation time (to the microsecond).
func createConns(ctx context.Context, l *lab.Lab, cs connScheme, t0 time.Time, n, workers, batch int, timeout uint32) (*creation, error) {
	socks := make([]*ctSock, workers)
	for w := range socks {
		s, err := openCT(l, lab.RoleFwA, 4<<20)
		if err != nil {
			for _, s := range socks[:w] {
				s.close()
			}
			return nil, err
		}
		socks[w] = s
	}
	defer func() {
		for _, s := range socks {
			s.close()
		}
	}()
	c := &creation{sampleAt: make([]time.Duration, (n+benchPerClient-1)/benchPerClient)}
	lines := make([][]point, workers)
	var failed atomic.Int64
	var mu sync.Mutex
	var errs []error
	start := time.Now()
	var wg sync.WaitGroup
	batches := (n + batch - 1) / batch
	for w := range workers {
		wg.Go(func() {
			var m msg
			done := 0
			for b := w; b < batches; b += workers {
				if ctx.Err() != nil {
					return
				}
				first := b * batch
				cnt := min(batch, n-first)
				sent := time.Since(t0)
				for i := first; i < first+cnt; i++ {
					if isSample(i) {
						c.sampleAt[i/benchPerClient] = sent
					}
				}
				f, ferr, err := socks[w].createBatch(cs, &m, first, cnt, timeout)
				failed.Add(int64(f))
				done += cnt - f
				lines[w] = append(lines[w], point{time.Since(t0), cnt - f})
				if ferr != nil || err != nil {
					mu.Lock()
					if ferr != nil && c.firstErr == nil {
						c.firstErr = ferr
					}
					if err != nil {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	c.took = time.Since(start)
	c.failed = int(failed.Load())
	var all []point
	for _, ln := range lines {
		all = append(all, ln...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at < all[j].at })
	sum := 0
	for _, p := range all {
		sum += p.n
		c.timeline = append(c.timeline, point{p.at, sum})
	}
	if err := ctx.Err(); err != nil {
		return c, err
	}
	return c, errors.Join(errs...)
}

// sampleWatch records when each lag sample appears in a namespace's
// kernel table, from its conntrack "new" events (a socket filter passes
// only the samples).
type sampleWatch struct {
	s       *ctSock
	t0      time.Time
	seen    []atomic.Int64 // ns since t0; 0: not seen
	stop    atomic.Bool
	done    chan struct{}
	enobufs atomic.Int64
	events  atomic.Int64
}

func watchSamples(l *lab.Lab, role string, t0 time.Time, n int) (*sampleWatch, error) {
	s, err := openCT(l, role, 64<<20, grpCTNew)
	if err != nil {
		return nil, err
	}
	f, err := sampleFilter()
	if err == nil {
		err = s.attachFilter(f)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("sample filter: %w", err)
	}
	w := &sampleWatch{s: s, t0: t0, seen: make([]atomic.Int64, (n+benchPerClient-1)/benchPerClient), done: make(chan struct{})}
	go w.run(n)
	return w, nil
}

func (w *sampleWatch) run(n int) {
	defer close(w.done)
	for !w.stop.Load() {
		b, err := w.s.recv()
		at := time.Since(w.t0)
		switch {
		case errors.Is(err, syscall.EAGAIN):
			continue
		case errors.Is(err, syscall.ENOBUFS):
			w.enobufs.Add(1)
			continue
		case err != nil:
			return
		}
		eachNlMsg(b, func(typ uint16, _ uint32, data []byte) {
			if typ>>8 != ctSubsys {
				return
			}
			src, dst, sp, dp, ok := origTuple(data)
			if !ok {
				return
			}
			i, ok := benchIndex(src, dst, sp, dp)
			if !ok || i >= n || !isSample(i) {
				return
			}
			w.events.Add(1)
			w.seen[i/benchPerClient].CompareAndSwap(0, int64(max(at, 1)))
		})
	}
}

func (w *sampleWatch) close() {
	w.stop.Store(true)
	<-w.done
	w.s.close()
}

// lagFromSamples pairs the samples' creation and arrival times.
func lagFromSamples(c *creation, w *sampleWatch) *LagStats {
	var lags []float64
	total := 0
	for k, sent := range c.sampleAt {
		if sent == 0 {
			continue
		}
		total++
		if at := time.Duration(w.seen[k].Load()); at > 0 {
			lags = append(lags, float64(at-sent)/1e6)
		}
	}
	st := percentiles(lags)
	st.Samples, st.Method = total, fmt.Sprintf("every %dth entry (the first of its batch, timed at its send) watched on the standby with conntrack new events", benchPerClient)
	return st
}

// lagFromCounts estimates the lag from the creation timeline and the
// standby's count timeline: the k-th entry is taken to arrive when the
// standby's count first reaches k (every step entries). Entries that never
// arrive are left out (they are the lost ones).
func lagFromCounts(created, standby []point, n int, method string) *LagStats {
	step := max(n/1000, 1)
	var lags []float64
	total := 0
	ci, si := 0, 0
	for k := step; k <= n; k += step {
		for ci < len(created) && created[ci].n < k {
			ci++
		}
		if ci == len(created) {
			break
		}
		total++
		for si < len(standby) && standby[si].n < k {
			si++
		}
		if si == len(standby) {
			continue
		}
		lags = append(lags, float64(standby[si].at-created[ci].at)/1e6)
	}
	st := percentiles(lags)
	st.Samples, st.Method = total, method
	return st
}

func percentiles(v []float64) *LagStats {
	st := &LagStats{Seen: len(v)}
	if len(v) == 0 {
		return st
	}
	slices.Sort(v)
	q := func(p float64) *float64 {
		i := int(p*float64(len(v))+0.999999) - 1
		return ptr(round2(v[min(max(i, 0), len(v)-1)]))
	}
	st.P50, st.P99, st.Max = q(0.50), q(0.99), ptr(round2(v[len(v)-1]))
	return st
}

// waitCount polls read every interval until it reaches target, or has not
// moved for stall, or ctx ends. It returns the timeline (since t0), when
// the target was reached (-1: never) and the last value.
func waitCount(ctx context.Context, t0 time.Time, interval, stall time.Duration, target int, read func() (int, error)) (line []point, reached time.Duration, last int, err error) {
	reached = -1
	lastMove := time.Now()
	last = -1
	for {
		v, rerr := read()
		at := time.Since(t0)
		if rerr != nil {
			return line, reached, last, rerr
		}
		if v != last {
			line = append(line, point{at, v})
			last, lastMove = v, time.Now()
		}
		if v >= target {
			return line, at, v, nil
		}
		if time.Since(lastMove) > stall {
			return line, reached, last, nil
		}
		if err := sleepCtx(ctx, interval); err != nil {
			return line, reached, last, err
		}
	}
}

// countBench dumps a namespace's table and counts the benchmark's entries.
func countBench(l *lab.Lab, role string, n int) (found, others int, err error) {
	found, others, _, err = dumpBenchIn(l, role, n)
	return found, others, err
}

// dumpBenchIn dumps a namespace's table and marks the benchmark's entries
// present in seen.
func dumpBenchIn(l *lab.Lab, role string, n int) (found, others int, seen []bool, err error) {
	s, err := openCT(l, role, 16<<20)
	if err != nil {
		return 0, 0, nil, err
	}
	defer s.close()
	seen = make([]bool, n)
	for try := 0; ; try++ {
		clear(seen)
		found, others, err = s.dumpBench(seen)
		// A dump racing with a resize of the table may end early (EINTR,
		// ENOBUFS): dump again.
		if err == nil || try == 3 {
			return found, others, seen, err
		}
	}
}

// missing names up to max connections not marked in seen, and counts those
// whose translated port is in ports.
func missing(cs connScheme, seen []bool, max int, ports ...uint16) (ex []string, onPorts int) {
	for i, ok := range seen {
		if ok {
			continue
		}
		if slices.Contains(ports, cs.natPort(i)) {
			onPorts++
		}
		if len(ex) < max {
			ex = append(ex, cs.describe(i))
		}
	}
	return ex, onPorts
}

// tandemStats is the daemon's answer to "stats".
type tandemStats struct {
	State string           `json:"state"`
	Local statesync.Status `json:"local"`
}

func tandemCall(ctx context.Context, l *lab.Lab, node, op string, out any) error {
	socket := ""
	for _, n := range l.Status(ctx).Nodes {
		if n.Name == node {
			socket = n.ControlSocket
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return control.Call(ctx, socket, control.Request{Op: op}, out)
}

func daemonPID(l *lab.Lab, node string) int {
	for _, n := range l.Status(context.Background()).Nodes {
		if n.Name == node && n.Running {
			return n.PID
		}
	}
	return 0
}

// waitTandemSynced waits until fw-a is ACTIVE, fw-b STANDBY and both IN_SYNC.
func waitTandemSynced(ctx context.Context, l *lab.Lab, timeout time.Duration, wantSync bool) error {
	p := tandemPair{l}
	deadline := time.Now().Add(timeout)
	why := ""
	for time.Now().Before(deadline) {
		a, errA := p.status(ctx, lab.RoleFwA)
		b, errB := p.status(ctx, lab.RoleFwB)
		switch {
		case errA != nil:
			why = errA.Error()
		case errB != nil:
			why = errB.Error()
		case a.State != "ACTIVE" || b.State != "STANDBY":
			why = fmt.Sprintf("fw-a %s, fw-b %s", a.State, b.State)
		case wantSync && (a.Sync != "IN_SYNC" || b.Sync != "IN_SYNC"):
			why = fmt.Sprintf("sync: fw-a %s, fw-b %s", a.Sync, b.Sync)
		default:
			return nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("the pair did not settle in %v: %s", timeout, why)
}

// establishedTimeout is the kernel's timeout of an established TCP
// connection in the ACTIVE's namespace: what a live connection's entry
// carries.
func establishedTimeout(l *lab.Lab) uint32 {
	f, err := openSysctl(l, lab.RoleFwA, "net/netfilter/nf_conntrack_tcp_timeout_established")
	if err != nil {
		return 432000
	}
	defer f.close()
	v, err := f.read()
	if err != nil || v <= 0 {
		return 432000
	}
	return uint32(v)
}

// burst creates the N connections on fw-a and waits for them on the
// standby; read counts the standby's entries (its baseline subtracted).
// It fills throughput, creation and count-based lag.
type burst struct {
	t0      time.Time
	c       *creation
	line    []point
	reached time.Duration
	last    int
}

func runBurst(ctx context.Context, l *lab.Lab, o SyncOptions, r *SyncResult, interval time.Duration, read func() (int, error), before func(t0 time.Time) error) (*burst, error) {
	timeout := establishedTimeout(l)
	b := &burst{t0: time.Now()}
	if before != nil {
		if err := before(b.t0); err != nil {
			return b, err
		}
	}
	type res struct {
		c   *creation
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := createConns(ctx, l, o.scheme, b.t0, o.Entries, o.Workers, o.Batch, timeout)
		done <- res{c, err}
	}()
	var werr error
	b.line, b.reached, b.last, werr = waitCount(ctx, b.t0, interval, o.Stall, o.Entries, read)
	cr := <-done
	b.c = cr.c
	if b.c != nil {
		r.Created = CreateStats{Seconds: secs(b.c.took), PerS: round2(float64(o.Entries-b.c.failed) / b.c.took.Seconds()), Failed: b.c.failed}
		if b.c.firstErr != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("%d creates failed on the ACTIVE, first: %v", b.c.failed, b.c.firstErr))
		}
	}
	if cr.err != nil {
		return b, fmt.Errorf("create connections on fw-a: %w", cr.err)
	}
	if werr != nil {
		return b, werr
	}
	if b.reached >= 0 {
		r.AllOnStandbyS = ptr(secs(b.reached))
		r.EntriesPerS = ptr(round2(float64(o.Entries) / b.reached.Seconds()))
	}
	r.LagByCount = lagFromCounts(b.c.timeline, b.line, o.Entries,
		fmt.Sprintf("the k-th entry created against the standby's count reaching k, every %d entries, polled every %v", max(o.Entries/1000, 1), interval))
	return b, nil
}

// settle waits until read has not changed for d (at most a minute more).
func settle(ctx context.Context, d time.Duration, read func() (int, error)) (int, error) {
	last, err := read()
	if err != nil {
		return 0, err
	}
	still := time.Now()
	deadline := time.Now().Add(d + time.Minute)
	for time.Since(still) < d && time.Now().Before(deadline) {
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return last, err
		}
		v, err := read()
		if err != nil {
			return last, err
		}
		if v != last {
			last, still = v, time.Now()
		}
	}
	return last, nil
}

func fmtF(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', -1, 64)
}

func fmtSecs(p *float64) string {
	if p == nil {
		return "never"
	}
	return fmt.Sprintf("%.3fs", *p)
}

// SyncNotes explains how the figures of rep were measured.
func SyncNotes(rep *SyncReport) []string {
	notes := []string{
		"connections: established TCP/IPv4, client 172.16.0.0/12 -> server 203.0.113.10+:80, source-NATed to the WAN virtual IP 203.0.113.1 (CTA_NAT_SRC, as the lab's firewall translates), with the kernel's established timeout; created by ctnetlink requests from the benchmark in fw-a's namespace",
		"entries/s: N divided by the time from the first create until all N are on the standby (polled every 2 ms for tandem, every conntrackd-poll for conntrackd); null when they never all arrived",
		"bytes/entry: VmRSS of the standby's process after minus before, divided by N; the kernel's own memory for the entries (tandem injects them into fw-b's table) is not counted",
		"tandem's lag is exact per sample (send time on fw-a to the conntrack event on fw-b); conntrackd's backup keeps its copy in user space with no per-entry event, so its lag is estimated from the counts on both sides",
		"promotion: tandem's is its own report (promotion start plus duration) measured from the decision in its status history; conntrackd's runs from tandem's decision (sync off, tandem only moves the VIPs) through `conntrackd -c` until the kernel table holds the external cache",
		fmt.Sprintf("nf_conntrack_max %d -> %d and hashsize %d -> %d for the run; restored: %v", rep.Limits.ConntrackMax[0], rep.Limits.ConntrackMax[1], rep.Limits.HashSize[0], rep.Limits.HashSize[1], rep.Limits.Restored),
		fmt.Sprintf("load average at start %q, at end %q: other work on the machine shares its %d CPUs with the lab", rep.Machine.LoadAvg, rep.Machine.LoadAvgEnd, rep.Machine.CPUs),
	}
	return notes
}

// unitCPU is the CPU a unit's daemons are confined to with PinUnits.
func unitCPU(node string) int {
	if node == lab.RoleFwA {
		return 0
	}
	return 1
}

// pinProcess confines every thread of pid to cpu (threads started later
// inherit it).
func pinProcess(pid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin thread %d of %d to CPU %d: %w", tid, pid, cpu, err)
		}
	}
	return nil
}

// pinTandem pins the running tandem daemons of nodes, when asked.
func pinTandem(l *lab.Lab, o SyncOptions, nodes ...string) error {
	if !o.PinUnits {
		return nil
	}
	for _, n := range nodes {
		if pid := daemonPID(l, n); pid > 0 {
			// Twice: a thread started during the first pass by a thread
			// not yet pinned is caught by the second.
			for range 2 {
				if err := pinProcess(pid, unitCPU(n)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// cpuSeconds returns a process's user + system CPU time.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseFloat(f[11], 64) // field 14, clock ticks
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100, nil // USER_HZ
}

// cpuMeter measures the CPU time of the two units' processes.
type cpuMeter struct {
	pids [2]int
	t0   [2]float64
}

func startCPU(active, standby int) *cpuMeter {
	m := &cpuMeter{pids: [2]int{active, standby}}
	for i, p := range m.pids {
		m.t0[i], _ = cpuSeconds(p)
	}
	return m
}

func (m *cpuMeter) done() *[2]float64 {
	var out [2]float64
	for i, p := range m.pids {
		t, err := cpuSeconds(p)
		if err != nil {
			return nil
		}
		out[i] = round2(t - m.t0[i])
	}
	return &out
}
