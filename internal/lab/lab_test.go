package lab

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"ping", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not installed (apt-get install iputils-ping nftables)", tool)
		}
	}
}

func ping(t *testing.T, l *Lab, from string, to netip.Addr) {
	t.Helper()
	var err error
	for range 5 {
		if _, err = l.Exec(context.Background(), from, "ping", "-n", "-c", "1", "-W", "1", to.String()); err == nil {
			return
		}
	}
	t.Fatalf("ping %s -> %s: %v", from, to, err)
}

func sh(t *testing.T, l *Lab, role string, args ...string) string {
	t.Helper()
	out, err := l.Exec(context.Background(), role, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func moveVIPs(t *testing.T, l *Lab, from, to string) {
	t.Helper()
	for _, v := range []struct {
		vip netip.Prefix
		dev string
	}{{LANVIP, IfLAN}, {WANVIP, IfWAN}} {
		if from != "" {
			sh(t, l, from, "ip", "addr", "del", v.vip.String(), "dev", v.dev)
		}
		sh(t, l, to, "ip", "addr", "add", v.vip.String(), "dev", v.dev)
	}
	// Without a daemon nobody sends gratuitous ARP: forget the old owner.
	sh(t, l, RoleClient, "ip", "neigh", "flush", "dev", IfHost)
	sh(t, l, RoleServer, "ip", "neigh", "flush", "dev", IfHost)
}

// echoServer is a TCP echo listener inside the server namespace that
// reports the source address of every connection it accepts.
type echoServer struct {
	ln    net.Listener
	peers chan netip.Addr
}

func startEcho(t *testing.T, l *Lab) *echoServer {
	t.Helper()
	e := &echoServer{peers: make(chan netip.Addr, 16)}
	if err := l.Do(RoleServer, func() error {
		var err error
		e.ln, err = net.Listen("tcp4", "0.0.0.0:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ln.Close() })
	go func() {
		for {
			c, err := e.ln.Accept()
			if err != nil {
				return
			}
			e.peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return e
}

func (e *echoServer) peer(t *testing.T) netip.Addr {
	t.Helper()
	select {
	case a := <-e.peers:
		return a
	case <-time.After(3 * time.Second):
		t.Fatal("the server saw no connection")
		return netip.Addr{}
	}
}

// dialServer connects from the client namespace to the echo server.
func dialServer(t *testing.T, l *Lab) net.Conn {
	t.Helper()
	var c net.Conn
	if err := l.Do(RoleClient, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(ServerAddr.Addr(), 8080).String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("client -> server: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo sends msg and waits up to timeout for it to come back.
func echo(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

var nonSynCounter = regexp.MustCompile(`tcp flags != syn / fin,syn,rst,ack ct state new counter packets (\d+)`)

func nonSynDrops(t *testing.T, l *Lab, role string) int {
	t.Helper()
	out := sh(t, l, role, "nft", "list", "table", "inet", "tandem_fw")
	m := nonSynCounter.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("non-SYN drop rule not found in %s's ruleset:\n%s", role, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func node(t *testing.T, s Status, name string) NodeStatus {
	t.Helper()
	for _, n := range s.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no node %s in status %+v", name, s)
	return NodeStatus{}
}

func links(t *testing.T, l *Lab, role string) []netlink.Link {
	t.Helper()
	full, err := l.Netns(role)
	if err != nil {
		t.Fatal(err)
	}
	n, err := openNS(full)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	ls, err := n.h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func link(t *testing.T, l *Lab, role, name string) netlink.Link {
	t.Helper()
	for _, k := range links(t, l, role) {
		if k.Attrs().Name == name {
			return k
		}
	}
	t.Fatalf("no link %s in %s", name, role)
	return nil
}

func isUp(k netlink.Link) bool { return k.Attrs().Flags&net.FlagUp != 0 }

// standInRunning reports whether node's daemon runs and answers from inside
// its firewall namespace (it sees ha0).
func standInRunning(l *Lab, name string) bool {
	for _, n := range l.Status(context.Background()).Nodes {
		if n.Name == name {
			return n.Running && strings.HasPrefix(n.State, "standin ") && strings.Contains(n.State, "ha0")
		}
	}
	return false
}

func TestLabEndToEnd(t *testing.T) {
	requireTools(t)
	o := newOpts(t)
	ctx := context.Background()
	l, err := Up(ctx, o)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}

	// Namespaces, files, sysctls.
	found, err := existingNamespaces(o.Name)
	if err != nil || len(found) != 5 {
		t.Fatalf("namespaces = %v, %v; want 5", found, err)
	}
	if fi, err := os.Stat(l.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("run dir: %v %v, want mode 0700", fi, err)
	}
	key, err := os.ReadFile(filepath.Join(l.Dir(), "cluster.key"))
	if err != nil || !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(key) {
		t.Errorf("cluster.key = %q, %v; want 64 hex characters", key, err)
	}
	if fi, err := os.Stat(filepath.Join(l.Dir(), "cluster.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cluster.key: %v %v, want mode 0600", fi, err)
	}
	for role, kv := range map[string][2]string{
		RoleFwA:    {"/proc/sys/net/ipv4/ip_forward", "1"},
		RoleFwB:    {"/proc/sys/net/ipv4/ip_forward", "1"},
		RoleClient: {"/proc/sys/net/ipv4/conf/all/arp_accept", "1"},
		RoleServer: {"/proc/sys/net/ipv4/conf/all/arp_accept", "1"},
	} {
		if got := strings.TrimSpace(sh(t, l, role, "cat", kv[0])); got != kv[1] {
			t.Errorf("%s: %s = %s, want %s", role, kv[0], got, kv[1])
		}
	}
	if got := sh(t, l, RoleClient, "ip", "-6", "route", "show", "default"); !strings.Contains(got, "via fd00:121::1 dev eth0") {
		t.Errorf("client IPv6 default route = %q", got)
	}

	// Every host link has carrier before the daemons start.
	for _, hl := range [][2]string{{RoleClient, IfHost}, {RoleServer, IfHost}, {RoleFwA, IfLAN}, {RoleFwA, IfWAN}, {RoleFwA, IfHA},
		{RoleFwB, IfLAN}, {RoleFwB, IfWAN}, {RoleFwB, IfHA}} {
		if st := link(t, l, hl[0], hl[1]).Attrs().OperState; st != netlink.OperUp {
			t.Errorf("%s %s: operstate %s right after Up, want up", hl[0], hl[1], st)
		}
	}

	// Both daemons run, each inside its own firewall namespace.
	for _, n := range nodes {
		waitFor(t, n+" daemon to answer", 10*time.Second, func() bool { return standInRunning(l, n) })
	}
	first := l.Status(ctx)

	// A second Up with the same name fails clearly and leaves the lab alone.
	if _, err := Up(ctx, o); err == nil || err.Error() != "lab "+o.Name+" already exists; run `tandem lab down --name "+o.Name+"` first" {
		t.Fatalf("second Up = %v, want already-exists error", err)
	}
	if found, _ := existingNamespaces(o.Name); len(found) != 5 {
		t.Fatalf("after second Up: namespaces = %v", found)
	}
	again := l.Status(ctx)
	for i := range first.Nodes {
		if again.Nodes[i].PID != first.Nodes[i].PID || !again.Nodes[i].Running {
			t.Fatalf("after second Up: %+v, was %+v", again.Nodes[i], first.Nodes[i])
		}
	}
	opened, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if o2 := opened.Status(ctx); node(t, o2, RoleFwA).PID != node(t, first, RoleFwA).PID || !node(t, o2, RoleFwB).Running {
		t.Fatalf("Open sees %+v, want %+v", o2.Nodes, first.Nodes)
	}

	// A change made through one handle (another process, e.g. the CLI) is
	// seen through the other.
	if err := opened.KillDaemon(RoleFwA, syscall.SIGKILL); err != nil {
		t.Fatalf("KillDaemon via Open: %v", err)
	}
	if n := node(t, l.Status(ctx), RoleFwA); n.Running {
		t.Fatalf("Up's handle still sees fw-a running: %+v", n)
	}
	if err := opened.StartDaemon(RoleFwA); err != nil {
		t.Fatalf("StartDaemon via Open: %v", err)
	}
	waitFor(t, "fw-a restarted via Open", 10*time.Second, func() bool { return standInRunning(l, RoleFwA) })
	if n := node(t, l.Status(ctx), RoleFwA); n.PID == node(t, first, RoleFwA).PID {
		t.Fatalf("Up's handle sees the old PID %d", n.PID)
	}

	// Status is JSON with the agreed keys.
	b, err := json.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"fw_a":"` + o.Name + `-fw-a"`, `"client_ip":"172.16.121.10"`, `"server_ip":"203.0.113.10"`,
		`"virtual_ips":["172.16.121.1/24","fd00:121::1/64","203.0.113.1/24"]`, `"control_socket":"` + l.Dir() + `/fw-a.sock"`, `"running":true`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("status JSON lacks %s:\n%s", s, b)
		}
	}

	// Plain reachability of the units.
	a, bb := Units[RoleFwA], Units[RoleFwB]
	ping(t, l, RoleClient, a.LAN.Addr())
	ping(t, l, RoleClient, bb.LAN.Addr())
	ping(t, l, RoleClient, a.LAN6.Addr())
	ping(t, l, RoleServer, a.WAN.Addr())
	ping(t, l, RoleServer, bb.WAN.Addr())
	ping(t, l, RoleFwA, bb.HA.Addr())

	// With the VIPs on fw-a, the client reaches the server through it, and
	// the server sees the WAN VIP (SNAT).
	moveVIPs(t, l, "", RoleFwA)
	ping(t, l, RoleClient, ServerAddr.Addr())
	srv := startEcho(t, l)
	c1 := dialServer(t, l)
	if got := srv.peer(t); got != WANVIP.Addr() {
		t.Fatalf("server saw the connection from %s, want the WAN VIP %s", got, WANVIP.Addr())
	}
	if err := echo(c1, "through fw-a\n", 3*time.Second); err != nil {
		t.Fatalf("echo through fw-a: %v", err)
	}

	// Negative control, to be fixed by state sync: move the VIPs to fw-b.
	// New connections work through fw-b, but the one established through
	// fw-a breaks: its mid-stream packets are not SYNs and fw-b has no
	// conntrack entry, so fw-b drops them.
	moveVIPs(t, l, RoleFwA, RoleFwB)
	before := nonSynDrops(t, l, RoleFwB)
	c2 := dialServer(t, l)
	if got := srv.peer(t); got != WANVIP.Addr() {
		t.Fatalf("server saw the connection via fw-b from %s, want %s", got, WANVIP.Addr())
	}
	if err := echo(c2, "through fw-b\n", 3*time.Second); err != nil {
		t.Fatalf("new connection through fw-b: %v", err)
	}
	if err := echo(c1, "after failover\n", 1500*time.Millisecond); err == nil {
		t.Fatal("the connection established through fw-a survived the move to fw-b without state sync")
	}
	if after := nonSynDrops(t, l, RoleFwB); after <= before {
		t.Fatalf("fw-b's non-SYN drop counter went from %d to %d; the connection broke for another reason", before, after)
	}
	c1.Close()
	c2.Close()

	// Power failure of fw-a: the daemon dies and every link goes down.
	oldPID := node(t, l.Status(ctx), RoleFwA).PID
	if err := l.Crash(RoleFwA); err != nil {
		t.Fatalf("Crash: %v", err)
	}
	if st, _, err := procStat(oldPID); err == nil && st != 'Z' {
		t.Errorf("fw-a daemon pid %d still running (state %c) after Crash", oldPID, st)
	}
	waitFor(t, "the crashed daemon to be reaped", 2*time.Second, func() bool { return errors.Is(syscall.Kill(oldPID, 0), syscall.ESRCH) })
	for _, k := range links(t, l, RoleFwA) {
		if isUp(k) {
			t.Errorf("fw-a %s is still up after Crash", k.Attrs().Name)
		}
	}
	waitFor(t, "fw-b ha0 to lose carrier", 2*time.Second, func() bool {
		return link(t, l, RoleFwB, IfHA).Attrs().OperState != netlink.OperUp
	})
	if n := node(t, l.Status(ctx), RoleFwA); n.Running || n.State != "off" {
		t.Errorf("fw-a after Crash: %+v", n)
	}

	// Power back on.
	if err := l.Restore(ctx, RoleFwA); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	for _, k := range links(t, l, RoleFwA) {
		if !isUp(k) {
			t.Errorf("fw-a %s is down after Restore", k.Attrs().Name)
		}
	}
	waitFor(t, "fw-a daemon after Restore", 10*time.Second, func() bool { return standInRunning(l, RoleFwA) })
	if pid := node(t, l.Status(ctx), RoleFwA).PID; pid == oldPID {
		t.Errorf("Restore kept the old PID %d", pid)
	}
	waitFor(t, "fw-b ha0 carrier", 2*time.Second, func() bool {
		return link(t, l, RoleFwB, IfHA).Attrs().OperState == netlink.OperUp
	})
	ping(t, l, RoleClient, a.LAN.Addr())
	ping(t, l, RoleFwB, a.HA.Addr())

	// Daemon-only failures: graceful stop, crash, restart.
	if err := l.KillDaemon(RoleFwB, syscall.SIGTERM); err != nil {
		t.Fatalf("KillDaemon SIGTERM: %v", err)
	}
	if n := node(t, l.Status(ctx), RoleFwB); n.Running || n.State != "stopped" {
		t.Errorf("fw-b after SIGTERM: %+v", n)
	}
	if logText, _ := os.ReadFile(node(t, first, RoleFwB).Log); !strings.Contains(string(logText), "stand-in: stopping") {
		t.Errorf("fw-b log shows no graceful stop:\n%s", logText)
	}
	if !isUp(link(t, l, RoleFwB, IfLAN)) {
		t.Error("KillDaemon took fw-b's lan0 down")
	}
	if err := l.KillDaemon(RoleFwB, syscall.SIGTERM); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("KillDaemon of a stopped daemon = %v, want not running", err)
	}
	if err := l.StartDaemon(RoleFwB); err != nil {
		t.Fatalf("StartDaemon: %v", err)
	}
	if err := l.StartDaemon(RoleFwB); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second StartDaemon = %v, want already running", err)
	}
	waitFor(t, "fw-b daemon after StartDaemon", 10*time.Second, func() bool { return standInRunning(l, RoleFwB) })
	if err := l.KillDaemon(RoleFwB, syscall.SIGKILL); err != nil {
		t.Fatalf("KillDaemon SIGKILL: %v", err)
	}
	if err := l.StartDaemon(RoleFwB); err != nil {
		t.Fatalf("StartDaemon after SIGKILL: %v", err)
	}
	waitFor(t, "fw-b daemon after SIGKILL+StartDaemon", 10*time.Second, func() bool { return standInRunning(l, RoleFwB) })

	// A watched link down and up again.
	if err := l.SetLink(RoleFwA, IfLAN, false); err != nil {
		t.Fatal(err)
	}
	if isUp(link(t, l, RoleFwA, IfLAN)) {
		t.Error("fw-a lan0 still up")
	}
	if err := l.SetLink(RoleFwA, IfLAN, true); err != nil {
		t.Fatal(err)
	}
	if !isUp(link(t, l, RoleFwA, IfLAN)) {
		t.Error("fw-a lan0 still down")
	}
	if err := l.SetLink(RoleFwA, "nope0", true); err == nil {
		t.Error("SetLink of a missing link succeeded")
	}
	if err := l.Crash("fw-c"); err == nil {
		t.Error("Crash of an unknown node succeeded")
	}

	// Down removes everything; a second Down says there is nothing.
	pids := []int{node(t, l.Status(ctx), RoleFwA).PID, node(t, l.Status(ctx), RoleFwB).PID}
	if err := Down(o); err != nil {
		t.Fatalf("Down: %v", err)
	}
	requireNoNamespaces(t, o.Name)
	if _, err := os.Stat(l.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("run dir after Down: %v", err)
	}
	for _, pid := range pids {
		waitFor(t, "daemon to be reaped", 2*time.Second, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })
	}
	want := "no lab named " + o.Name + "; start one with `tandem lab up --name " + o.Name + "`"
	if err := Down(o); err == nil || err.Error() != want {
		t.Fatalf("second Down = %v, want %q", err, want)
	}
}

func TestDownNonexistent(t *testing.T) {
	o := newOpts(t)
	if err := Down(o); err == nil || !strings.Contains(err.Error(), "no lab named "+o.Name) {
		t.Fatalf("Down = %v, want no lab error", err)
	}
}

// The process that ran Up crashed and its state file is gone; the
// namespaces and daemons are still there. Down still removes everything,
// finding the daemons by namespace and config.
func TestDownAfterLostState(t *testing.T) {
	o := newOpts(t)
	l, err := Up(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, n+" daemon", 10*time.Second, func() bool { return standInRunning(l, n) })
	}
	var pids []int
	for _, n := range l.Status(context.Background()).Nodes {
		pids = append(pids, n.PID)
	}
	if err := os.Remove(filepath.Join(l.Dir(), "state.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(o); err == nil {
		t.Fatal("Open without state.json succeeded")
	}
	if err := Down(o); err != nil {
		t.Fatalf("Down: %v", err)
	}
	requireNoNamespaces(t, o.Name)
	for _, pid := range pids {
		waitFor(t, "daemon to be gone", 2*time.Second, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })
	}
	if _, err := os.Stat(l.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("run dir after Down: %v", err)
	}
}

// Only some namespaces exist (a crash in the middle of Up): Up refuses,
// Down removes them.
func TestHalfBuiltLab(t *testing.T) {
	o := newOpts(t)
	for _, role := range []string{RoleSwitch, RoleClient} {
		if out, err := exec.Command("ip", "netns", "add", nsName(o.Name, role)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	// A namespace that merely shares the prefix is not the lab's.
	other := o.Name + "-other"
	if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", other).Run() })

	if _, err := Up(context.Background(), o); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Up over a half-built lab = %v, want already exists", err)
	}
	if err := Down(o); err != nil {
		t.Fatalf("Down: %v", err)
	}
	all, _ := listNamespaces()
	for _, n := range all {
		if n == nsName(o.Name, RoleSwitch) || n == nsName(o.Name, RoleClient) {
			t.Errorf("%s left behind", n)
		}
	}
	found := false
	for _, n := range all {
		found = found || n == other
	}
	if !found {
		t.Errorf("Down deleted %s, which is not part of the lab", other)
	}
	_ = exec.Command("ip", "netns", "del", other).Run()
}

// A failure at any stage of Up leaves nothing behind.
func TestUpRollback(t *testing.T) {
	for _, stage := range []string{"files", "topology", "daemons"} {
		t.Run(stage, func(t *testing.T) {
			o := newOpts(t)
			o.failAt = stage
			l, err := Up(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), "injected failure at "+stage) {
				t.Fatalf("Up = %v, %v; want the injected failure", l, err)
			}
			requireNoNamespaces(t, o.Name)
			if _, err := os.Stat(filepath.Join(o.RunDir, o.Name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("run dir after failed Up: %v", err)
			}
			cfg := filepath.Join(o.RunDir, o.Name)
			waitFor(t, "no daemon left", 2*time.Second, func() bool { return len(processesMentioning(t, cfg)) == 0 })
			if err := Down(o); err == nil {
				t.Error("Down after a rolled-back Up found something to remove")
			}
		})
	}
}

// processesMentioning lists live processes whose command line contains s.
func processesMentioning(t *testing.T, s string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, _, err := procStat(pid)
		if err != nil || st == 'Z' {
			continue
		}
		if cmd, err := procCmdline(pid); err == nil && strings.Contains(strings.Join(cmd, " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Two labs run side by side without touching each other.
func TestTwoLabs(t *testing.T) {
	requireTools(t)
	o1, o2 := newOpts(t), newOpts(t)
	l1, err := Up(context.Background(), o1)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Up(context.Background(), o2)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, l1, RoleClient, Units[RoleFwA].LAN.Addr())
	ping(t, l2, RoleClient, Units[RoleFwA].LAN.Addr())
	if err := Down(o1); err != nil {
		t.Fatal(err)
	}
	requireNoNamespaces(t, o1.Name)
	if found, _ := existingNamespaces(o2.Name); len(found) != 5 {
		t.Fatalf("Down of one lab touched the other: %v", found)
	}
	ping(t, l2, RoleServer, Units[RoleFwB].WAN.Addr())
}
