package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// DefaultName is the lab name used when Options.Name is empty.
const DefaultName = "tandem"

// DefaultRunDir is the parent of every lab's run directory.
const DefaultRunDir = "/run/tandem/lab"

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// Options configure a lab. The zero value is usable: lab "tandem", profile
// "default", the running executable as the tandem binary, /run/tandem/lab.
type Options struct {
	// Name of the lab: 1 to 8 characters from a-z and 0-9.
	Name string
	// ExtraConfig is YAML appended to both units' generated configuration
	// (top-level sections the lab does not write, e.g. "sync: {enabled:
	// false}" for a negative control).
	ExtraConfig string
	// Profile is a key of Profiles.
	Profile string
	// Binary is the tandem executable, run in each firewall namespace as
	// `<Binary> run --config <dir>/<node>.yaml`. Default: os.Executable().
	Binary string
	// RunDir is the parent of the lab's run directory <RunDir>/<Name>.
	RunDir string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
	// NodeState asks the daemon listening on the control socket for its HA
	// state (e.g. "ACTIVE"). Nil reports "unknown".
	NodeState func(ctx context.Context, socket string) (string, error)

	// failAt makes Up fail at the named stage (tests of the rollback).
	failAt string
}

func (o Options) normalize() (Options, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if !nameRE.MatchString(o.Name) {
		return o, fmt.Errorf("invalid lab name %q: use 1 to 8 characters from a-z and 0-9 (it prefixes namespace names like %q, which are limited in length)",
			o.Name, "<name>-client")
	}
	if o.RunDir == "" {
		o.RunDir = DefaultRunDir
	}
	// The daemons' configs name files in the run directory: keep it absolute.
	dir, err := filepath.Abs(o.RunDir)
	if err != nil {
		return o, fmt.Errorf("lab run directory: %w", err)
	}
	o.RunDir = dir
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

func (o Options) dir() string { return filepath.Join(o.RunDir, o.Name) }

// resolveBinary returns the absolute path of the tandem executable.
func resolveBinary(bin string) (string, error) {
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("find the tandem binary: %w", err)
		}
		bin = exe
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("tandem binary: %w", err)
	}
	return filepath.Abs(p)
}

// state is what <dir>/state.json holds.
type state struct {
	Name    string                 `json:"name"`
	Profile string                 `json:"profile"`
	Binary  string                 `json:"binary"`
	Created time.Time              `json:"created"`
	Nodes   map[string]*nodeRecord `json:"nodes"`
}

type nodeRecord struct {
	Netns      string     `json:"netns"`
	Config     string     `json:"config"`
	Log        string     `json:"log"`
	Socket     string     `json:"socket"`
	Proc       procRecord `json:"process"`
	PoweredOff bool       `json:"powered_off,omitempty"`
}

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	for _, n := range nodes {
		if st.Nodes[n] == nil {
			return nil, fmt.Errorf("%s: node %s missing", filepath.Join(dir, stateFile), n)
		}
	}
	return &st, nil
}

// writeState replaces <dir>/state.json atomically.
func writeState(dir string, st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// Lab is a running lab.
type Lab struct {
	name, dir string
	log       *slog.Logger
	nodeState func(ctx context.Context, socket string) (string, error)

	mu sync.Mutex
	st *state
}

// refreshLocked reloads the state file, which another process (another
// `tandem lab` command) may have updated; l.mu is held. If it cannot be read
// the state in memory is kept.
func (l *Lab) refreshLocked() {
	if st, err := readState(l.dir); err == nil && st.Name == l.name {
		l.st = st
	}
}

func errExists(name string) error {
	return fmt.Errorf("lab %s already exists; run `tandem lab down --name %s` first", name, name)
}

func errNoLab(name string) error {
	return fmt.Errorf("no lab named %s; start one with `tandem lab up --name %s`", name, name)
}

// exists reports whether anything of lab o exists: its run directory or
// any of its namespaces.
func exists(o Options) (bool, error) {
	if _, err := os.Lstat(o.dir()); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	found, err := existingNamespaces(o.Name)
	return len(found) > 0, err
}

// Up builds lab o and starts both daemons. It fails if anything of a lab of
// that name exists. On any failure it removes everything it made. It does
// not wait for the daemons to elect an ACTIVE unit.
func Up(ctx context.Context, o Options) (_ *Lab, err error) {
	o, err = o.normalize()
	if err != nil {
		return nil, err
	}
	p, err := profile(o.Profile)
	if err != nil {
		return nil, err
	}
	bin, err := resolveBinary(o.Binary)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the lab needs iproute2's ip: %w", err)
	}
	if found, err := exists(o); err != nil {
		return nil, err
	} else if found {
		return nil, errExists(o.Name)
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return nil, err
	}
	dir := o.dir()
	// Creating the directory claims the name: a concurrent Up fails here.
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, errExists(o.Name)
		}
		return nil, err
	}
	log := o.Logger.With("lab", o.Name)
	l := &Lab{name: o.Name, dir: dir, log: log, nodeState: o.NodeState, st: &state{
		Name: o.Name, Profile: p.Name, Binary: bin, Created: time.Now().UTC(), Nodes: map[string]*nodeRecord{},
	}}
	defer func() {
		if err == nil {
			return
		}
		log.Warn("lab: up failed, removing what was made", "err", err)
		if terr := teardown(o.Name, dir, l.st, log); terr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", terr))
		}
	}()
	stage := func(name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if o.failAt == name {
			return fmt.Errorf("injected failure at %s", name)
		}
		return nil
	}

	if err := writeKey(dir); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		cfg := configPath(dir, n)
		if err := os.WriteFile(cfg, append(renderConfig(dir, n, p), o.ExtraConfig...), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", cfg, err)
		}
		l.st.Nodes[n] = &nodeRecord{Netns: nsName(o.Name, n), Config: cfg, Log: logPath(dir, n), Socket: socketPath(dir, n)}
	}
	if err := writeState(dir, l.st); err != nil {
		return nil, err
	}
	if err := stage("files"); err != nil {
		return nil, err
	}
	log.Info("lab: building topology", "profile", p.Name, "dir", dir)
	if err := build(o.Name, log); err != nil {
		return nil, err
	}
	if err := stage("topology"); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range nodes {
		if err := l.startLocked(n); err != nil {
			return nil, err
		}
	}
	if err := stage("daemons"); err != nil {
		return nil, err
	}
	log.Info("lab: up", "fw-a_pid", l.st.Nodes[RoleFwA].Proc.PID, "fw-b_pid", l.st.Nodes[RoleFwB].Proc.PID)
	return l, nil
}

// Open loads the existing lab o from its state file.
func Open(o Options) (*Lab, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	st, err := readState(o.dir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoLab(o.Name)
	}
	if err != nil {
		return nil, err
	}
	if st.Name != o.Name {
		return nil, fmt.Errorf("%s belongs to lab %q, not %q", filepath.Join(o.dir(), stateFile), st.Name, o.Name)
	}
	return &Lab{name: o.Name, dir: o.dir(), log: o.Logger.With("lab", o.Name), nodeState: o.NodeState, st: st}, nil
}

// Down removes everything of lab o: it stops the recorded daemons (and any
// daemon of this lab found running in the lab's own firewall namespaces with
// the lab's own config, if the record was lost), deletes the namespaces and
// removes the run directory. It works on a half-built lab and after a crash;
// it fails if nothing of that name exists.
func Down(o Options) error {
	o, err := o.normalize()
	if err != nil {
		return err
	}
	found, err := exists(o)
	if err != nil {
		return err
	}
	if !found {
		return errNoLab(o.Name)
	}
	st, err := readState(o.dir())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		o.Logger.Warn("lab: ignoring unreadable state file", "lab", o.Name, "err", err)
	}
	return teardown(o.Name, o.dir(), st, o.Logger.With("lab", o.Name))
}

// Down removes the lab (see the package function Down).
func (l *Lab) Down() error {
	l.mu.Lock()
	l.refreshLocked()
	st := l.st
	l.mu.Unlock()
	return teardown(l.name, l.dir, st, l.log)
}

// teardown stops the daemons, deletes the namespaces and the run directory.
// st may be nil (state lost); it is idempotent.
func teardown(name, dir string, st *state, log *slog.Logger) error {
	var recs []procRecord
	seen := map[int]bool{}
	add := func(r procRecord) {
		if r.PID > 0 && !seen[r.PID] {
			seen[r.PID] = true
			recs = append(recs, r)
		}
	}
	if st != nil {
		for _, n := range nodes {
			if rec := st.Nodes[n]; rec != nil {
				add(rec.Proc)
			}
		}
	}
	var errs []error
	for _, n := range nodes {
		found, err := strays(nsName(name, n), configPath(dir, n))
		if err != nil {
			errs = append(errs, err)
		}
		for _, r := range found {
			add(r)
		}
	}
	if err := stop(recs, 3*time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := teardownNamespaces(name, log); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s down: %w", name, err)
	}
	log.Info("lab: down", "stopped_daemons", len(recs))
	return nil
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.name }

// Dir is the lab's run directory.
func (l *Lab) Dir() string { return l.dir }

// Netns returns the namespace name of a role: "client", "fw-a", "fw-b",
// "server" or "sw".
func (l *Lab) Netns(role string) (string, error) {
	if !slices.Contains(roles, role) {
		return "", fmt.Errorf("unknown lab role %q (have: client, fw-a, fw-b, server, sw)", role)
	}
	return nsName(l.name, role), nil
}

// NsHandle opens the namespace of a role; the caller closes it.
func (l *Lab) NsHandle(role string) (netns.NsHandle, error) {
	full, err := l.Netns(role)
	if err != nil {
		return netns.None(), err
	}
	return netns.GetFromName(full)
}

// Do runs fn on an OS thread inside the namespace of role. Sockets fn
// opens stay in that namespace.
func (l *Lab) Do(role string, fn func() error) error {
	h, err := l.NsHandle(role)
	if err != nil {
		return err
	}
	defer h.Close()
	return doIn(h, fn)
}

// Exec runs a command inside the namespace of role and returns its combined
// output; a failure includes the output in the error.
func (l *Lab) Exec(ctx context.Context, role string, args ...string) ([]byte, error) {
	full, err := l.Netns(role)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("lab exec: no command")
	}
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", full}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %q: %w: %s", full, args, err, out)
	}
	return out, nil
}

// Status is a JSON-ready description of a lab.
type Status struct {
	Name       string `json:"name"`
	Profile    string `json:"profile"`
	Dir        string `json:"dir"`
	Namespaces struct {
		Client string `json:"client"`
		FwA    string `json:"fw_a"`
		FwB    string `json:"fw_b"`
		Server string `json:"server"`
		Switch string `json:"sw"`
	} `json:"namespaces"`
	ClientIP   netip.Addr     `json:"client_ip"`
	ServerIP   netip.Addr     `json:"server_ip"`
	VirtualIPs []netip.Prefix `json:"virtual_ips"`
	Nodes      []NodeStatus   `json:"nodes"`
}

// NodeStatus describes one firewall unit.
type NodeStatus struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
	// State is what NodeState reported; "unknown" without NodeState or on
	// error, "stopped" when the daemon does not run, "off" after Crash.
	State         string `json:"state"`
	ControlSocket string `json:"control_socket"`
	Config        string `json:"config"`
	Log           string `json:"log"`
}

// Status describes the lab; it asks each running daemon for its state.
func (l *Lab) Status(ctx context.Context) Status {
	l.mu.Lock()
	l.refreshLocked()
	var s Status
	s.Name, s.Profile, s.Dir = l.name, l.st.Profile, l.dir
	s.Namespaces.Client = nsName(l.name, RoleClient)
	s.Namespaces.FwA = nsName(l.name, RoleFwA)
	s.Namespaces.FwB = nsName(l.name, RoleFwB)
	s.Namespaces.Server = nsName(l.name, RoleServer)
	s.Namespaces.Switch = nsName(l.name, RoleSwitch)
	s.ClientIP, s.ServerIP = ClientAddr.Addr(), ServerAddr.Addr()
	s.VirtualIPs = []netip.Prefix{LANVIP, LANVIP6, WANVIP}
	recs := map[string]nodeRecord{}
	for _, n := range nodes {
		recs[n] = *l.st.Nodes[n]
	}
	l.mu.Unlock()

	for _, n := range nodes {
		r := recs[n]
		ns := NodeStatus{Name: n, Netns: r.Netns, PID: r.Proc.PID, Running: r.Proc.alive(),
			ControlSocket: r.Socket, Config: r.Config, Log: r.Log}
		switch {
		case !ns.Running && r.PoweredOff:
			ns.State = "off"
		case !ns.Running:
			ns.State = "stopped"
		case l.nodeState == nil:
			ns.State = "unknown"
		default:
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := l.nodeState(cctx, r.Socket)
			cancel()
			if err != nil {
				l.log.Debug("lab: node state", "node", n, "err", err)
				st = "unknown"
			}
			ns.State = st
		}
		s.Nodes = append(s.Nodes, ns)
	}
	return s
}

func checkNode(node string) error {
	if !slices.Contains(nodes, node) {
		return fmt.Errorf("unknown node %q (have: fw-a, fw-b)", node)
	}
	return nil
}

// startLocked starts the daemon of node. l.mu is held.
func (l *Lab) startLocked(node string) error {
	rec := l.st.Nodes[node]
	if rec.Proc.alive() {
		return fmt.Errorf("%s daemon is already running (pid %d)", node, rec.Proc.PID)
	}
	argv := []string{l.st.Binary, "run", "--config", rec.Config}
	logf, err := os.OpenFile(rec.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open %s log: %w", node, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- tandem lab: starting %s in %s at %s ---\n", node, rec.Netns, time.Now().UTC().Format(time.RFC3339Nano))
	// ip netns exec execs the daemon, so the PID is the daemon's. Its own
	// session keeps it running when the process that ran Up exits.
	cmd := exec.Command("ip", append([]string{"netns", "exec", rec.Netns}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s daemon: %w", node, err)
	}
	pid := cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap it if it exits while this process lives
	_, start, err := procStat(pid)
	if err != nil {
		start = 0 // it already exited; alive() reports it
	}
	rec.Proc = procRecord{PID: pid, StartTime: start, Argv: argv, Netns: rec.Netns}
	rec.PoweredOff = false
	l.log.Info("lab: daemon started", "node", node, "pid", pid, "log", rec.Log)
	return writeState(l.dir, l.st)
}

// StartDaemon starts the daemon of node ("fw-a" or "fw-b"); it fails if it
// is already running.
func (l *Lab) StartDaemon(node string) error {
	if err := checkNode(node); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refreshLocked()
	return l.startLocked(node)
}

// KillDaemon sends sig to the daemon of node; the unit's links stay up.
// SIGKILL is a daemon crash, SIGTERM a graceful stop. For SIGKILL, SIGTERM,
// SIGINT and SIGQUIT it waits (up to 10s) until the daemon has exited.
func (l *Lab) KillDaemon(node string, sig syscall.Signal) error {
	if err := checkNode(node); err != nil {
		return err
	}
	l.mu.Lock()
	l.refreshLocked()
	rec := l.st.Nodes[node].Proc
	l.mu.Unlock()
	if err := rec.signal(sig); err != nil {
		return fmt.Errorf("%s daemon: %w", node, err)
	}
	l.log.Info("lab: daemon signalled", "node", node, "pid", rec.PID, "signal", sig.String())
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
		if !rec.waitGone(10 * time.Second) {
			return fmt.Errorf("%s daemon (pid %d) still running 10s after %v", node, rec.PID, sig)
		}
	}
	return nil
}

// Crash simulates a power failure of node: the daemon is killed and every
// link of the unit goes down at (nearly) the same instant. Everything is
// prepared first; then the daemon is frozen (SIGSTOP, so it can neither see
// the links go down nor send anything), the links are set down back to back,
// and the daemon is killed (SIGKILL) — after the links are down, so the
// kernel's cleanup of its sockets cannot put a packet on the wire.
func (l *Lab) Crash(node string) error {
	if err := checkNode(node); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refreshLocked()
	rec := l.st.Nodes[node]
	n, err := openNS(rec.Netns)
	if err != nil {
		return err
	}
	defer n.close()
	links, err := linksOf(n)
	if err != nil {
		return err
	}
	running := rec.Proc.alive()

	if running {
		// Frozen first, so the daemon cannot see its links go down and
		// report a link failure instead of dying (BENCHMARKS.md, finding 5).
		_ = syscall.Kill(rec.Proc.PID, syscall.SIGSTOP)
		rec.Proc.waitStopped(time.Second)
	}
	linkErr := setAllLinks(n, links, false)
	if running {
		_ = syscall.Kill(rec.Proc.PID, syscall.SIGKILL)
	}

	rec.PoweredOff = true
	var errs []error
	if linkErr != nil {
		errs = append(errs, linkErr)
	}
	if running && !rec.Proc.waitGone(5*time.Second) {
		errs = append(errs, fmt.Errorf("%s daemon (pid %d) still running after SIGKILL", node, rec.Proc.PID))
	}
	if err := writeState(l.dir, l.st); err != nil {
		errs = append(errs, err)
	}
	l.log.Info("lab: unit crashed", "node", node, "pid", rec.Proc.PID, "daemon_was_running", running)
	return errors.Join(errs...)
}

// Restore powers node back on: every link up, then the daemon started (its
// new PID is recorded). A daemon that is still running is left alone.
func (l *Lab) Restore(ctx context.Context, node string) error {
	if err := checkNode(node); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refreshLocked()
	rec := l.st.Nodes[node]
	n, err := openNS(rec.Netns)
	if err != nil {
		return err
	}
	defer n.close()
	links, err := linksOf(n)
	if err != nil {
		return err
	}
	if err := setAllLinks(n, links, true); err != nil {
		return err
	}
	rec.PoweredOff = false
	if rec.Proc.alive() {
		return writeState(l.dir, l.st)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return l.startLocked(node)
}

// SetLink sets one link of a lab namespace up or down, e.g. the watched
// lan0 of fw-a. role is "client", "fw-a", "fw-b", "server" or "sw".
func (l *Lab) SetLink(role, link string, up bool) error {
	full, err := l.Netns(role)
	if err != nil {
		return err
	}
	n, err := openNS(full)
	if err != nil {
		return err
	}
	defer n.close()
	lk, err := n.h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", link, full, err)
	}
	if err := setAllLinks(n, []netlink.Link{lk}, up); err != nil {
		return err
	}
	l.log.Info("lab: link set", "netns", full, "link", link, "up", up)
	return nil
}
