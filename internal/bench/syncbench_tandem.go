package bench

// tandem's phase of the state-sync benchmark.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// runTandemSync is tandem's phase.
func runTandemSync(ctx context.Context, l *lab.Lab, o SyncOptions, r *SyncResult) error {
	n := o.Entries
	r.Standby = "fw-b's kernel conntrack table (tandem injects as it receives)"
	if err := waitTandemSynced(ctx, l, 30*time.Second, true); err != nil {
		return err
	}
	flaps := &flapLog{since: time.Now()}
	defer func() { r.Transitions = flaps.list }()
	if err := pinTandem(l, o, units...); err != nil {
		return err
	}
	cnt, err := openSysctl(l, lab.RoleFwB, "net/netfilter/nf_conntrack_count")
	if err != nil {
		return err
	}
	defer cnt.close()
	base, err := cnt.read()
	if err != nil {
		return err
	}
	pid := daemonPID(l, lab.RoleFwB)
	r.Process = fmt.Sprintf("tandem run (fw-b, pid %d)", pid)
	rss0, err := vmRSS(pid)
	if err != nil {
		return err
	}
	read := func() (int, error) { v, err := cnt.read(); return v - base, err }

	var watch *sampleWatch
	defer func() {
		if watch != nil {
			watch.close()
		}
	}()
	meter := startCPU(daemonPID(l, lab.RoleFwA), pid)
	fmt.Fprintf(o.Progress, "tandem: creating %d connections on fw-a (%d workers, batches of %d), watching fw-b\n", n, o.Workers, o.Batch)
	b, err := runBurst(ctx, l, o, r, 2*time.Millisecond, read, func(t0 time.Time) error {
		var err error
		watch, err = watchSamples(l, lab.RoleFwB, t0, n)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Progress, "tandem: created in %.2fs (%.0f/s); on fw-b: %d of %d after %s\n", r.Created.Seconds, r.Created.PerS, b.last, n, fmtSecs(r.AllOnStandbyS))
	if _, err := settle(ctx, o.Settle, read); err != nil {
		return err
	}
	r.CPUS = meter.done()
	watch.close()
	r.Lag = lagFromSamples(b.c, watch)
	if e := watch.enobufs.Load(); e > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("the lag watcher's event socket overflowed %d times: samples may be missing", e))
	}
	watch = nil
	found, _, seen, err := dumpBenchIn(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	r.OnStandby, r.Lost = found, ptr(n-found)
	if found < n {
		ex, on := missing(o.scheme, seen, 10, tandemPorts...)
		r.LostExamples = ex
		if on > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%d of the %d lost connections are NATed to port %v of the VIP: tandem's heartbeat and sync ports, which its conntrack source ignores on either side of any connection (internal/ctsync Source.ignoreTuple with the daemon's IgnorePorts)", on, n-found, tandemPorts))
		}
	}
	rss1, err := vmRSS(pid)
	if err != nil {
		return err
	}
	r.RSSKB = [2]int64{rss0, rss1}
	r.BytesPerEntry = ptr(round2(float64(rss1-rss0) * 1024 / float64(n)))
	flaps.collect(ctx, l, units...)
	if len(flaps.list) > 0 {
		fmt.Fprintf(o.Progress, "tandem: %d unexpected HA transitions so far (false failovers), first: %s\n", len(flaps.list), flaps.list[0])
	}
	fmt.Fprintf(o.Progress, "tandem: lost %d; lag p50 %s p99 %s ms; fw-b RSS %d -> %d kB (%.0f B/entry)\n", n-found,
		fmtF(r.Lag.P50), fmtF(r.Lag.P99), rss0, rss1, *r.BytesPerEntry)

	flaps.collect(ctx, l, units...)
	if err := waitTandemSynced(ctx, l, 30*time.Second, true); err != nil {
		return fmt.Errorf("before the resync: %w", err)
	}
	// A daemon restart (the kernel's table stays), then a reboot-like
	// restart (the table flushed too).
	for _, flush := range []bool{false, true} {
		if err := tandemResync(ctx, l, o, r, cnt, found, flush); err != nil {
			return fmt.Errorf("resync: %w", err)
		}
		flaps.collect(ctx, l, units...)
		if err := waitTandemSynced(ctx, l, 30*time.Second, true); err != nil {
			return fmt.Errorf("after the resync: %w", err)
		}
	}
	flaps.collect(ctx, l, units...)
	if err := waitTandemSynced(ctx, l, 30*time.Second, true); err != nil {
		return fmt.Errorf("before the promotion: %w", err)
	}
	if err := tandemPromote(ctx, l, o, r, flaps); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	return nil
}

// tandemPorts are the lab's heartbeat port (ha_link.port) and sync port
// (sync.port, the heartbeat port + 1 by default).
var tandemPorts = []uint16{7480, 7481}

// flapLog collects HA transitions nobody asked for (false failovers)
// during a measurement.
type flapLog struct {
	since time.Time
	seen  map[string]bool
	list  []string
}

// collect reads the transition history of the running daemons of nodes;
// a daemon's start (from INIT) is not a flap.
func (f *flapLog) collect(ctx context.Context, l *lab.Lab, nodes ...string) {
	if f.seen == nil {
		f.seen = map[string]bool{}
	}
	for _, n := range nodes {
		st, err := tandemPair{l}.status(ctx, n)
		if err != nil {
			continue
		}
		for _, h := range st.History {
			if h.At.Before(f.since) || h.From == "INIT" {
				continue
			}
			line := fmt.Sprintf("%s %s %s -> %s: %s", h.At.Format("15:04:05.000"), n, h.From, h.To, h.Reason)
			if !f.seen[line] {
				f.seen[line] = true
				f.list = append(f.list, line)
			}
		}
	}
}

// tandemResync: the standby's daemon is killed (SIGKILL) and started
// again — with its kernel table as it was (a daemon restart: upgrade,
// crash), or flushed first (flush: as after a reboot); timed until the
// standby's kernel holds the had entries it held and the standby says
// IN_SYNC with the ACTIVE's count (which it says only once its kernel
// holds what it received).
func tandemResync(ctx context.Context, l *lab.Lab, o SyncOptions, r *SyncResult, cnt *sysctlFile, had int, flush bool) error {
	n := o.Entries
	if err := l.KillDaemon(lab.RoleFwB, syscall.SIGKILL); err != nil {
		return err
	}
	base := 0
	if flush {
		if _, err := l.Exec(ctx, lab.RoleFwB, "conntrack", "-F"); err != nil {
			return fmt.Errorf("flush fw-b's table: %w", err)
		}
		// The flush returns before every entry is freed; the HA traffic
		// arriving meanwhile makes a few new ones.
		if _, _, _, err := waitCount(ctx, time.Now(), 10*time.Millisecond, 30*time.Second, -1024, func() (int, error) {
			v, err := cnt.read()
			return -v, err
		}); err != nil {
			return err
		}
		var err error
		if base, err = cnt.read(); err != nil {
			return err
		}
		fmt.Fprintf(o.Progress, "tandem: fw-b daemon killed, its table flushed (%d entries left); starting it again\n", base)
	} else {
		fmt.Fprintf(o.Progress, "tandem: fw-b daemon killed, its kernel table kept; starting it again\n")
	}
	t0 := time.Now()
	if err := l.StartDaemon(lab.RoleFwB); err != nil {
		return err
	}
	if err := pinTandem(l, o, lab.RoleFwB); err != nil {
		return err
	}
	d := &ResyncDetail{How: "SIGKILL fw-b's daemon, start it again (its kernel table stays, as on a daemon restart); timed from the start until fw-b's kernel holds every entry and its status says IN_SYNC with the ACTIVE's count"}
	if flush {
		d.How = "SIGKILL fw-b's daemon, flush fw-b's kernel table (conntrack -F, as after a reboot), start the daemon; timed from the start until fw-b's kernel holds every entry again and its status says IN_SYNC with the ACTIVE's count"
		r.ResyncFlushed = d
	} else {
		r.Resync = d
	}
	var inSync, all time.Duration = -1, -1
	stall, lastAsk := time.Now(), time.Time{}
	last := 0
	for inSync < 0 || all < 0 {
		v, err := cnt.read()
		if err != nil {
			return err
		}
		v -= base
		if v != last {
			last, stall = v, time.Now()
		}
		if all < 0 && v >= had {
			all = time.Since(t0)
		}
		if inSync < 0 && time.Since(lastAsk) >= 20*time.Millisecond {
			lastAsk = time.Now()
			var st tandemStats
			if tandemCall(ctx, l, lab.RoleFwB, "stats", &st) == nil && st.Local.SyncText == "IN_SYNC" && st.Local.Connections >= had {
				inSync = time.Since(t0)
			}
		}
		if time.Since(stall) > o.Stall {
			break
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
	found, _, err := countBench(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	d.Entries = found
	if all >= 0 {
		d.EntriesS = ptr(secs(all))
	}
	if inSync >= 0 {
		d.InSyncS = ptr(secs(inSync))
	}
	switch {
	case all < 0 || inSync < 0 || found < had:
		r.Errors = append(r.Errors, fmt.Sprintf("resync (table flushed: %v): fw-b holds %d of the %d entries it held", flush, found, had))
	case flush:
		r.ResyncFlushedS = ptr(secs(max(all, inSync)))
	default:
		r.ResyncS = ptr(secs(max(all, inSync)))
	}
	if pid := daemonPID(l, lab.RoleFwB); pid > 0 {
		if rss, err := vmRSS(pid); err == nil {
			d.StandbyBytes = ptr(round2(float64(rss) * 1024 / float64(n)))
		}
	}
	fmt.Fprintf(o.Progress, "tandem: resync (table flushed: %v): %d of %d on fw-b after %s, IN_SYNC after %s\n", flush, found, had, fmtSecs(d.EntriesS), fmtSecs(d.InSyncS))
	return nil
}

// tandemPromote: power failure of fw-a; timed from fw-b's decision to
// become ACTIVE (its status history) until its promotion has given every
// entry its final state (its own promotion report: start plus duration)
// and every entry is in its kernel table.
func tandemPromote(ctx context.Context, l *lab.Lab, o SyncOptions, r *SyncResult, flaps *flapLog) error {
	n := o.Entries
	before, _, err := countBench(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	var st0 tandemStats
	if err := tandemCall(ctx, l, lab.RoleFwB, "stats", &st0); err != nil {
		return err
	}
	flaps.collect(ctx, l, units...)
	fmt.Fprintf(o.Progress, "tandem: %d of %d in fw-b's kernel table; crashing fw-a\n", before, n)
	crashed, decided, err := crashAndWaitActive(ctx, l, nil)
	if err != nil {
		return err
	}
	flaps.since = time.Now().Add(time.Hour) // what follows is asked for
	if decided.Before(crashed) {
		r.Notes = append(r.Notes, "fw-b had declared fw-a dead (a false failover) just before the crash: the promotion is timed from that decision")
	}
	if took := decided.Sub(crashed); took > time.Second {
		r.Notes = append(r.Notes, fmt.Sprintf("fw-b took %.1fs from the crash to decide ACTIVE (dead interval %v)", took.Seconds(), lab.Profiles[cmpOr(o.Lab.Profile, lab.DefaultProfile)].Dead))
	}
	var st tandemStats
	for {
		if err := tandemCall(ctx, l, lab.RoleFwB, "stats", &st); err == nil && st.Local.Promotions > st0.Local.Promotions && st.Local.LastPromote != nil {
			break
		}
		if time.Since(crashed) > o.Stall {
			return errors.New("fw-b reported no promotion")
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	lp := st.Local.LastPromote
	end := lp.At.Add(time.Duration(lp.Duration * 1e6))
	found, _, err := countBench(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	d := &PromoteDetail{How: "lab crash of fw-a (power failure); from fw-b's transition to ACTIVE to the end of its promotion (its report: start plus duration)",
		DecidedAt: decided, Before: before, Entries: found, Flows: lp.Flows, Failed: lp.Failed,
		Refreshed: fmt.Sprintf("%d flows written or given their replicated timeout at promotion (%d failed), %.1f ms", lp.Flows, lp.Failed, lp.Duration)}
	r.Promote = d
	r.PromoteS = ptr(secs(end.Sub(decided)))
	if found < before || lp.Failed > 0 {
		r.Errors = append(r.Errors, fmt.Sprintf("after promotion %d of %d entries in fw-b's kernel (%d before), %d failed", found, n, before, lp.Failed))
	}
	fmt.Fprintf(o.Progress, "tandem: promote: decided %s, promotion %.1f ms (%d flows), %d of %d in the kernel\n",
		decided.Format("15:04:05.000"), lp.Duration, lp.Flows, found, n)
	return nil
}

// crashAndWaitActive crashes fw-a (after before, if set) right after
// seeing fw-b STANDBY, and waits until fw-b is ACTIVE. decided is fw-b's
// transition to ACTIVE from its status history: the latest one after fw-b
// was last seen STANDBY (it can precede the crash when fw-b was already
// declaring fw-a dead).
func crashAndWaitActive(ctx context.Context, l *lab.Lab, before func() error) (crashed, decided time.Time, err error) {
	p := tandemPair{l}
	var standbyAt time.Time
	for try := 0; ; try++ {
		standbyAt = time.Now()
		if st, err := p.status(ctx, lab.RoleFwB); err == nil && st.State == "STANDBY" {
			break
		}
		if try == 200 {
			return crashed, decided, errors.New("fw-b is not STANDBY before the crash")
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return crashed, decided, err
		}
	}
	if before != nil {
		if err := before(); err != nil {
			return crashed, decided, err
		}
	}
	crashed = time.Now()
	if err := l.Crash(lab.RoleFwA); err != nil {
		return crashed, decided, err
	}
	for decided.IsZero() {
		if time.Since(crashed) > time.Minute {
			return crashed, decided, errors.New("fw-b did not become ACTIVE within a minute of fw-a's crash")
		}
		if st, err := p.status(ctx, lab.RoleFwB); err == nil && st.State == "ACTIVE" {
			for _, h := range slices.Backward(st.History) {
				if h.To == "ACTIVE" && h.At.After(standbyAt) {
					decided = h.At
					break
				}
			}
		}
		if decided.IsZero() {
			if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
				return crashed, decided, err
			}
		}
	}
	return crashed, decided, nil
}
