package bench

// conntrackd (conntrack-tools) on the lab's two firewall units, as its
// documentation sets up a two-node active-backup pair: FTFW over the
// dedicated HA link, the example configuration's values everywhere else.
// The benchmark starts it and ends it itself, by PID; its configuration,
// lock file, UNIX socket and logs live in the lab's run directory.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// ConntrackdOptions configure conntrackd in the sync benchmark.
type ConntrackdOptions struct {
	// Binary is the conntrackd executable (default "conntrackd").
	Binary string
	// HashSize is General/HashSize; default 32768, the value of the
	// FTFW example configuration shipped with conntrack-tools.
	HashSize int
	// RepairWait is how long to wait, when entries are missing on the
	// backup, for conntrackd to repair them by itself (its netlink
	// overrun resync runs 30 s after an overrun). Default 60s.
	RepairWait time.Duration
	// PollInterval is how often the backup's cache is counted during the
	// burst (default 20ms; each count runs `conntrackd -s`).
	PollInterval time.Duration
}

func (o *ConntrackdOptions) defaults() {
	if o.Binary == "" {
		o.Binary = "conntrackd"
	}
	if o.HashSize <= 0 {
		o.HashSize = 32768
	}
	if o.RepairWait <= 0 {
		o.RepairWait = 60 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 20 * time.Millisecond
	}
}

// ConntrackdVersion returns what `conntrackd -v` says.
func ConntrackdVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s -v: %w: %s", bin, err, out)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if f := strings.Fields(line); len(f) > 0 {
		for _, w := range f {
			if strings.HasPrefix(w, "v") && strings.Contains(w, ".") {
				return "conntrackd " + strings.TrimSuffix(w, "."), nil
			}
		}
	}
	return strings.TrimSpace(line), nil
}

// conntrackdPort is the UDP port of conntrackd's sync messages.
const conntrackdPort = 3780

// conntrackdConfig renders a unit's configuration: the FTFW example
// shipped with conntrack-tools (doc/sync/ftfw/conntrackd.conf) with its
// Multicast section replaced by the UDP transport between the two HA
// addresses (a two-node pair on a dedicated link), the unit's own
// addresses in the filter, the files in dir, and HashLimit at twice
// nf_conntrack_max as conntrackd.conf(5) says (the example's 131072 would
// cap the cache below N).
func conntrackdConfig(node, dir string, hashSize, hashLimit int) string {
	me, peer := lab.Units[node], lab.Units[peerOf(node)]
	var ignore []string
	for _, a := range []string{"127.0.0.1", lab.LANVIP.Addr().String(), lab.WANVIP.Addr().String(),
		me.LAN.Addr().String(), me.WAN.Addr().String(), me.HA.Addr().String(),
		peer.LAN.Addr().String(), peer.WAN.Addr().String(), peer.HA.Addr().String()} {
		ignore = append(ignore, "\t\t\tIPv4_address "+a)
	}
	for _, a := range []string{"::1", lab.LANVIP6.Addr().String(), me.LAN6.Addr().String(), peer.LAN6.Addr().String()} {
		ignore = append(ignore, "\t\t\tIPv6_address "+a)
	}
	return fmt.Sprintf(`# conntrackd for %[1]s, written by tandem bench sync: the FTFW example of
# conntrack-tools over UDP on the HA link.
Sync {
	Mode FTFW {
	}
	UDP {
		IPv4_address %[2]s
		IPv4_Destination_Address %[3]s
		Port %[4]d
		Interface %[5]s
		SndSocketBuffer 1249280
		RcvSocketBuffer 1249280
		Checksum on
	}
}
General {
	HashSize %[6]d
	HashLimit %[7]d
	LogFile %[8]s
	LockFile %[9]s
	UNIX {
		Path %[10]s
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	Filter From Userspace {
		Protocol Accept {
			TCP
			SCTP
			DCCP
		}
		Address Ignore {
%[11]s
		}
	}
}
`, node, me.HA.Addr(), peer.HA.Addr(), conntrackdPort, lab.IfHA, hashSize, hashLimit,
		filepath.Join(dir, node+".log"), filepath.Join(dir, node+".lock"), filepath.Join(dir, node+".ctl"),
		strings.Join(ignore, "\n"))
}

// ctdUnit is one conntrackd process.
type ctdUnit struct {
	node, conf, dir string
	cmd             *exec.Cmd
	done            chan struct{}
}

func (u *ctdUnit) running() bool {
	if u == nil || u.cmd == nil {
		return false
	}
	select {
	case <-u.done:
		return false
	default:
		return true
	}
}

func (u *ctdUnit) pid() int {
	if !u.running() {
		return 0
	}
	return u.cmd.Process.Pid
}

// ctdPair is conntrackd on both firewall units of a lab.
type ctdPair struct {
	l     *lab.Lab
	o     ConntrackdOptions
	pin   bool
	dir   string
	units map[string]*ctdUnit
}

func newConntrackd(l *lab.Lab, o ConntrackdOptions, hashLimit int) (*ctdPair, error) {
	dir := filepath.Join(l.Dir(), "conntrackd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &ctdPair{l: l, o: o, dir: dir, units: map[string]*ctdUnit{}}
	for _, n := range units {
		conf := filepath.Join(dir, n+".conf")
		if err := os.WriteFile(conf, []byte(conntrackdConfig(n, dir, o.HashSize, hashLimit)), 0o600); err != nil {
			return nil, err
		}
		p.units[n] = &ctdUnit{node: n, conf: conf, dir: dir}
	}
	return p, nil
}

// start runs conntrackd in the foreground inside the unit's namespace
// (ip netns exec execs it, so the PID is conntrackd's) and waits until it
// answers on its UNIX socket.
func (p *ctdPair) start(ctx context.Context, node string) error {
	u := p.units[node]
	if u.running() {
		return fmt.Errorf("conntrackd on %s already runs (pid %d)", node, u.pid())
	}
	// A lock file left by a killed conntrackd stops the next one.
	_ = os.Remove(filepath.Join(u.dir, node+".lock"))
	ns, err := p.l.Netns(node)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(u.dir, node+".out"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", ns, p.o.Binary, "-C", u.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = u.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no NOTIFY_SOCKET: not a systemd service
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start conntrackd on %s: %w", node, err)
	}
	u.cmd, u.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(u.done) }()
	if p.pin {
		for range 2 {
			if err := pinProcess(cmd.Process.Pid, unitCPU(node)); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !u.running() {
			out, _ := os.ReadFile(filepath.Join(u.dir, node+".out"))
			return fmt.Errorf("conntrackd on %s exited at start: %s", node, tail(string(out), 400))
		}
		if _, _, err := p.counts(ctx, node); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("conntrackd on %s does not answer on its socket after 10s", node)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// signal sends sig to the unit's conntrackd (only the process this
// benchmark started) and, for SIGKILL and SIGTERM, waits until it is gone.
func (p *ctdPair) signal(node string, sig syscall.Signal, wait time.Duration) error {
	u := p.units[node]
	if !u.running() {
		return nil
	}
	_ = u.cmd.Process.Signal(sig)
	select {
	case <-u.done:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("conntrackd on %s (pid %d) still runs %v after %v", node, u.cmd.Process.Pid, wait, sig)
	}
}

// close stops both conntrackd processes: SIGTERM, then SIGKILL.
func (p *ctdPair) close() error {
	if p == nil {
		return nil
	}
	var errs []error
	for _, n := range units {
		if err := p.signal(n, syscall.SIGTERM, 5*time.Second); err != nil {
			errs = append(errs, p.signal(n, syscall.SIGKILL, 5*time.Second))
		}
	}
	return errors.Join(errs...)
}

// ctl runs `conntrackd -C <conf> args...` inside the unit's namespace.
func (p *ctdPair) ctl(ctx context.Context, node string, args ...string) ([]byte, error) {
	return p.l.Exec(ctx, node, append([]string{p.o.Binary, "-C", p.units[node].conf}, args...)...)
}

// counts returns the "current active connections" of the internal and
// external caches (`conntrackd -s`).
func (p *ctdPair) counts(ctx context.Context, node string) (internal, external int, err error) {
	out, err := p.ctl(ctx, node, "-s")
	if err != nil {
		return 0, 0, err
	}
	return parseConntrackdStats(string(out))
}

func parseConntrackdStats(s string) (internal, external int, err error) {
	section := ""
	got := 0
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "cache internal"):
			section = "internal"
		case strings.HasPrefix(line, "cache external"):
			section = "external"
		case strings.HasPrefix(line, "current active connections:"):
			v, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "current active connections:")))
			if err != nil {
				return 0, 0, fmt.Errorf("conntrackd -s: %q: %w", line, err)
			}
			switch section {
			case "internal":
				internal = v
				got |= 1
			case "external":
				external = v
				got |= 2
			}
		case line == "":
			section = ""
		}
	}
	if got != 3 {
		return 0, 0, fmt.Errorf("conntrackd -s: no cache counts in %q", tail(s, 300))
	}
	return internal, external, nil
}

// runConntrackdSync is conntrackd's phase, on a lab whose tandem daemons
// run without state sync (they move the virtual IPs, as keepalived does
// beside conntrackd).
func runConntrackdSync(ctx context.Context, l *lab.Lab, o SyncOptions, r *SyncResult) (err error) {
	co := *o.Conntrackd
	co.defaults()
	n := o.Entries
	r.Version, _ = ConntrackdVersion(co.Binary)
	r.Standby = "fw-b conntrackd's external cache (`conntrackd -s`, cache external, current active connections); FTFW does not inject until commit"
	if err := waitTandemSynced(ctx, l, 30*time.Second, false); err != nil {
		return err
	}
	flaps := &flapLog{since: time.Now()}
	defer func() { r.Transitions = flaps.list }()
	ctMax, err := readInt("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		return err
	}
	p, err := newConntrackd(l, co, 2*ctMax)
	if err != nil {
		return err
	}
	p.pin = o.PinUnits
	if err := pinTandem(l, o, units...); err != nil {
		return err
	}
	defer func() {
		if cerr := p.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	for _, u := range units {
		if err := p.start(ctx, u); err != nil {
			return err
		}
	}
	r.Notes = append(r.Notes, fmt.Sprintf("configuration: the FTFW example of conntrack-tools with UDP between the HA addresses on %s instead of multicast, HashSize %d, HashLimit %d (2 x nf_conntrack_max, as conntrackd.conf(5) says; the example's 131072 is below N), every other setting at the example's value or the default (NetlinkBufferSize 2097152, NetlinkBufferSizeMaxGrowth 8388608, ResendQueueSize 131072, ACKWindowSize 300, SCHED_RR 99); tandem runs with state sync off and moves the virtual IPs",
		lab.IfHA, co.HashSize, 2*ctMax))
	_, base, err := p.counts(ctx, lab.RoleFwB)
	if err != nil {
		return err
	}
	pid := p.units[lab.RoleFwB].pid()
	r.Process = fmt.Sprintf("conntrackd (fw-b, pid %d)", pid)
	rss0, err := vmRSS(pid)
	if err != nil {
		return err
	}
	read := func() (int, error) {
		_, e, err := p.counts(ctx, lab.RoleFwB)
		return e - base, err
	}
	meter := startCPU(p.units[lab.RoleFwA].pid(), pid)
	fmt.Fprintf(o.Progress, "conntrackd: creating %d connections on fw-a (%d workers, batches of %d), counting fw-b's external cache\n", n, o.Workers, o.Batch)
	b, err := runBurst(ctx, l, o, r, co.PollInterval, read, nil)
	if err != nil {
		return err
	}
	// With no per-entry event on the backup, the count-based estimate is
	// the lag.
	r.Lag, r.LagByCount = r.LagByCount, nil
	fmt.Fprintf(o.Progress, "conntrackd: created in %.2fs (%.0f/s); on fw-b: %d of %d after %s\n", r.Created.Seconds, r.Created.PerS, b.last, n, fmtSecs(r.AllOnStandbyS))
	got, err := settle(ctx, o.Settle, read)
	if err != nil {
		return err
	}
	r.CPUS = meter.done()
	r.OnStandby, r.Lost = got, ptr(n-got)
	rss1, err := vmRSS(pid)
	if err != nil {
		return err
	}
	r.RSSKB = [2]int64{rss0, rss1}
	r.BytesPerEntry = ptr(round2(float64(rss1-rss0) * 1024 / float64(n)))
	if got < n {
		fmt.Fprintf(o.Progress, "conntrackd: %d missing on fw-b; waiting %v for conntrackd to repair them\n", n-got, co.RepairWait)
		start := time.Now()
		for time.Since(start) < co.RepairWait {
			if err := sleepCtx(ctx, time.Second); err != nil {
				return err
			}
			if v, err := read(); err == nil {
				got = v
				if got >= n {
					break
				}
			}
		}
		r.LostAfterRepair, r.RepairWaitS = ptr(n-got), ptr(secs(time.Since(start)))
		if in, _, err := p.counts(ctx, lab.RoleFwA); err == nil {
			r.Notes = append(r.Notes, fmt.Sprintf("fw-a's internal cache held %d connections after the repair wait", in))
		}
	}
	fmt.Fprintf(o.Progress, "conntrackd: lost %d (after repair wait: %s); lag p50 %s p99 %s ms; fw-b RSS %d -> %d kB (%.0f B/entry)\n", n-r.OnStandby,
		fmtInt(r.LostAfterRepair), fmtF(r.Lag.P50), fmtF(r.Lag.P99), rss0, rss1, *r.BytesPerEntry)
	if log, err := os.ReadFile(filepath.Join(p.dir, lab.RoleFwA+".log")); err == nil {
		if c := strings.Count(string(log), "netlink event socket buffer"); c > 1 {
			r.Notes = append(r.Notes, fmt.Sprintf("fw-a's conntrackd log mentions its netlink event buffer %d times (overruns: it grows the buffer, then resyncs)", c))
		}
	}

	if err := conntrackdResync(ctx, p, o, r, base); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	flaps.collect(ctx, l, units...)
	if err := waitTandemSynced(ctx, l, 30*time.Second, false); err != nil {
		return fmt.Errorf("before the promotion: %w", err)
	}
	if err := conntrackdPromote(ctx, l, p, o, r); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	return nil
}

func fmtInt(p *int) string {
	if p == nil {
		return "-"
	}
	return strconv.Itoa(*p)
}

// conntrackdResync: the backup's conntrackd is killed (SIGKILL: its
// external cache is gone), started again and asked to resync (`-n`);
// timed from its start until its external cache holds what it held
// before.
func conntrackdResync(ctx context.Context, p *ctdPair, o SyncOptions, r *SyncResult, base int) error {
	n := o.Entries
	_, had, err := p.counts(ctx, lab.RoleFwB)
	if err != nil {
		return err
	}
	had -= base
	if err := p.signal(lab.RoleFwB, syscall.SIGKILL, 5*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(o.Progress, "conntrackd: fw-b's conntrackd killed (it held %d); starting it again and requesting a resync (-n)\n", had)
	t0 := time.Now()
	if err := p.start(ctx, lab.RoleFwB); err != nil {
		return err
	}
	if _, err := p.ctl(ctx, lab.RoleFwB, "-n"); err != nil {
		return err
	}
	// A fresh conntrackd's external cache is empty: what it holds now
	// came from the resync (which may already be complete).
	const b0 = 0
	line, reached, last, err := waitCount(ctx, t0, p.o.PollInterval, o.Stall, had+b0, func() (int, error) {
		_, e, err := p.counts(ctx, lab.RoleFwB)
		return e, err
	})
	if err != nil {
		return err
	}
	d := &ResyncDetail{How: "SIGKILL fw-b's conntrackd, start it again, conntrackd -n (request resync); timed from the start until its external cache holds what it held before", Entries: last - b0}
	r.Resync = d
	if reached >= 0 {
		d.EntriesS = ptr(secs(reached))
		if had == n {
			r.ResyncS = d.EntriesS
		}
	} else if len(line) > 0 {
		r.Errors = append(r.Errors, fmt.Sprintf("resync: the external cache stopped at %d of %d", last-b0, had))
	}
	if pid := p.units[lab.RoleFwB].pid(); pid > 0 {
		if rss, err := vmRSS(pid); err == nil {
			d.StandbyBytes = ptr(round2(float64(rss) * 1024 / float64(n)))
		}
	}
	for _, n := range units {
		if out, err := p.ctl(ctx, n, "-s"); err == nil {
			r.Notes = append(r.Notes, fmt.Sprintf("after the resync, %s's conntrackd -s: %s", n, netStats(string(out))))
		}
	}
	fmt.Fprintf(o.Progress, "conntrackd: resync: %d of %d in fw-b's external cache after %s\n", last-b0, had, fmtSecs(d.EntriesS))
	return nil
}

// conntrackdPromote: power failure of fw-a (its conntrackd killed, then
// the lab's crash); when tandem makes fw-b ACTIVE, `conntrackd -c`
// commits the external cache, as the documented primary-backup.sh does on
// the new primary. Timed from fw-b's decision to ACTIVE (tandem's status
// history) until every committed entry is in fw-b's kernel table.
func conntrackdPromote(ctx context.Context, l *lab.Lab, p *ctdPair, o SyncOptions, r *SyncResult) error {
	n := o.Entries
	_, ext, err := p.counts(ctx, lab.RoleFwB)
	if err != nil {
		return err
	}
	// The lab's HA traffic keeps a few entries in the table; the commit
	// is timed on the count above them.
	cnt, err := openSysctl(l, lab.RoleFwB, "net/netfilter/nf_conntrack_count")
	if err != nil {
		return err
	}
	defer cnt.close()
	before, _, err := countBench(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	k0, err := cnt.read()
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Progress, "conntrackd: fw-b's external cache holds %d; crashing fw-a (its conntrackd killed)\n", ext)
	crashed, decided, err := crashAndWaitActive(ctx, l, func() error {
		return p.signal(lab.RoleFwA, syscall.SIGKILL, 5*time.Second)
	})
	if err != nil {
		return err
	}
	if decided.Before(crashed) {
		r.Notes = append(r.Notes, "fw-b had declared fw-a dead (a false failover) just before the crash: the promotion is timed from that decision")
	}
	if took := decided.Sub(crashed); took > time.Second {
		r.Notes = append(r.Notes, fmt.Sprintf("tandem (state sync off) on fw-b took %.1fs from the crash to decide ACTIVE (dead interval %v): its threads (SCHED_RR 50) were starved", took.Seconds(), lab.Profiles[cmpOr(o.Lab.Profile, lab.DefaultProfile)].Dead))
	}
	cstart := time.Now()
	out, cerr := p.ctl(ctx, lab.RoleFwB, "-c")
	cmdTook := time.Since(cstart)
	d := &PromoteDetail{How: "conntrackd SIGKILLed and lab crash of fw-a; on fw-b becoming ACTIVE (tandem, sync off), conntrackd -c; timed until the kernel table holds every entry of the external cache",
		DecidedAt: decided, Before: before, CommandS: ptr(secs(cmdTook))}
	r.Promote = d
	if cerr != nil {
		r.Errors = append(r.Errors, fmt.Sprintf("conntrackd -c: %v", cerr))
	} else if s := strings.TrimSpace(string(out)); s != "" {
		r.Notes = append(r.Notes, "conntrackd -c said: "+tail(s, 200))
	}
	_, reached, _, err := waitCount(ctx, decided, 5*time.Millisecond, 10*time.Second, ext, func() (int, error) {
		v, err := cnt.read()
		return v - k0, err
	})
	if err != nil {
		return err
	}
	found, _, err := countBench(l, lab.RoleFwB, n)
	if err != nil {
		return err
	}
	d.Entries = found
	if reached >= 0 {
		r.PromoteS = ptr(secs(reached))
	}
	if found < n {
		r.Errors = append(r.Errors, fmt.Sprintf("promotion: %d of %d benchmark entries in fw-b's kernel table (the external cache held %d)", found, n, ext))
	}
	fmt.Fprintf(o.Progress, "conntrackd: promote: conntrackd -c took %.3fs; %d of %d in fw-b's kernel, all committed after %s from the decision\n",
		cmdTook.Seconds(), found, n, fmtSecs(r.PromoteS))
	return nil
}

// netStats keeps the network and message-tracking lines of `conntrackd -s`.
func netStats(s string) string {
	var keep []string
	on := false
	for line := range strings.Lines(s) {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "UDP traffic"), strings.HasPrefix(t, "message tracking"), strings.HasPrefix(t, "network statistics"):
			on = true
		case t == "":
			on = false
		}
		if on && t != "" {
			keep = append(keep, strings.Join(strings.Fields(t), " "))
		}
	}
	return strings.Join(keep, "; ")
}
