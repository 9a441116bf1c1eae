package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"

	"github.com/tandem-ha/tandem/internal/lab"
)

// units are the two firewall units of a lab; fw-a is the primary (the
// preferred unit, priority 200), fw-b the secondary (priority 100).
var units = []string{lab.RoleFwA, lab.RoleFwB}

func peerOf(node string) string {
	if node == lab.RoleFwA {
		return lab.RoleFwB
	}
	return lab.RoleFwA
}

// vips are the virtual IPs of the lab, with the interface each lives on.
var vips = []struct {
	addr netip.Addr
	dev  string
}{{lab.LANVIP.Addr(), lab.IfLAN}, {lab.WANVIP.Addr(), lab.IfWAN}}

// nsHandle is a netlink handle inside one lab namespace.
func nsHandle(l *lab.Lab, role string) (*netlink.Handle, error) {
	nsh, err := l.NsHandle(role)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", role, err)
	}
	return h, nil
}

// heldVIPs lists the lab's virtual IPs configured in the kernel of unit
// node, whoever put them there.
func heldVIPs(l *lab.Lab, node string) ([]netip.Addr, error) {
	h, err := nsHandle(l, node)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", node, err)
	}
	var held []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, v := range vips {
			if v.addr == ip {
				held = append(held, ip)
			}
		}
	}
	return held, nil
}

// vipHolders returns the units whose kernel holds at least one virtual IP,
// and whether the holders are exactly {only}: every VIP on only, none on the
// other unit.
func vipHolders(l *lab.Lab, only string) (holders []string, exactly bool, err error) {
	exactly = true
	for _, n := range units {
		held, err := heldVIPs(l, n)
		if err != nil {
			return nil, false, err
		}
		if len(held) > 0 {
			holders = append(holders, n)
		}
		switch {
		case n == only && len(held) != len(vips):
			exactly = false
		case n != only && len(held) > 0:
			exactly = false
		}
	}
	return holders, exactly, nil
}

// unitLinks is a prepared power switch for one unit: every link of its
// namespace, loopback first, as lab.Crash sets them.
type unitLinks struct {
	h     *netlink.Handle
	links []netlink.Link
}

func openUnitLinks(l *lab.Lab, node string) (*unitLinks, error) {
	h, err := nsHandle(l, node)
	if err != nil {
		return nil, err
	}
	all, err := h.LinkList()
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("links of %s: %w", node, err)
	}
	u := &unitLinks{h: h}
	for _, lk := range all {
		if lk.Attrs().Name == "lo" {
			u.links = append([]netlink.Link{lk}, u.links...)
		} else {
			u.links = append(u.links, lk)
		}
	}
	return u, nil
}

func (u *unitLinks) set(up bool) error {
	var errs []error
	for _, lk := range u.links {
		var err error
		if up {
			err = u.h.LinkSetUp(lk)
		} else {
			err = u.h.LinkSetDown(lk)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s up=%v: %w", lk.Attrs().Name, up, err))
		}
	}
	return errors.Join(errs...)
}

func (u *unitLinks) close() { u.h.Close() }

// vrrpNotrack is an nftables table that keeps VRRP (IP protocol 112) out of
// connection tracking, so the lab's source NAT (everything leaving wan0 is
// rewritten to the WAN VIP, see internal/nftfw) does not rewrite the
// adverts' source address. Without it VRRPv3 breaks on wan0: the checksum
// covers a pseudo-header with the source address (the BACKUP logs "Invalid
// VRRPv3 checksum"), and a MASTER cannot send at all (EPERM: the NAT tuple
// clashes with the peer's adverts).
const vrrpNotrack = `table inet bench_vrrp_notrack {
	chain output {
		type filter hook output priority raw; policy accept;
		ip protocol 112 notrack
	}
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip protocol 112 notrack
	}
}
`

// exemptVRRP installs vrrpNotrack in both units (the table goes with the
// namespaces when the lab is removed).
func exemptVRRP(ctx context.Context, l *lab.Lab) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("keepalived on this lab needs nft to keep VRRP out of the lab's source NAT: %w", err)
	}
	file := filepath.Join(l.Dir(), "keepalived", "vrrp-notrack.nft")
	if err := os.WriteFile(file, []byte(vrrpNotrack), 0o600); err != nil {
		return err
	}
	for _, n := range units {
		if _, err := l.Exec(ctx, n, "nft", "-f", file); err != nil {
			return err
		}
	}
	return nil
}

// schedOf describes the scheduling policies of every thread of the given
// processes, e.g. "SCHED_OTHER x7, SCHED_RR/50 x2".
func schedOf(pids ...int) string {
	count := map[string]int{}
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			i := bytes.LastIndexByte(b, ')')
			if i < 0 {
				continue
			}
			f := strings.Fields(string(b[i+1:]))
			if len(f) < 39 {
				continue
			}
			prio, _ := strconv.Atoi(f[37]) // field 40: rt_priority
			pol, _ := strconv.Atoi(f[38])  // field 41: policy
			name := map[int]string{0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}[pol]
			if name == "" {
				name = "policy " + strconv.Itoa(pol)
			}
			if pol == 1 || pol == 2 {
				name += "/" + strconv.Itoa(prio)
			}
			count[name]++
		}
	}
	if len(count) == 0 {
		return "unknown"
	}
	var parts []string
	for k, v := range count {
		parts = append(parts, fmt.Sprintf("%s x%d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// Machine describes where a benchmark ran.
type Machine struct {
	CPUs    int    `json:"nproc"`
	CPU     string `json:"cpu"`
	Kernel  string `json:"kernel"`
	LoadAvg string `json:"loadavg_at_start"`
	// LoadAvgEnd shows what else ran on the machine during the benchmark.
	LoadAvgEnd string `json:"loadavg_at_end"`
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU()}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = b.String()
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	m.LoadAvg = loadavg()
	return m
}

// cpuBusy reads the machine's busy and total jiffies from /proc/stat.
func cpuBusy() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// setRealtime runs every thread of this process under SCHED_RR at prio, so
// that the prober and the echo server (the measuring instrument) keep their
// 1 ms rhythm while other processes load the CPUs. Threads started later
// inherit the policy from their creator; the scan repeats until a pass
// finds no thread left to change, so a thread created during a pass is not
// missed.
func setRealtime(prio int) error {
	if prio <= 0 {
		return nil
	}
	param := struct{ prio int32 }{int32(prio)}
	for range 20 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			pol, _, _ := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
			if pol == 2 {
				continue
			}
			if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid), 2, uintptr(unsafe.Pointer(&param))); e != 0 {
				return fmt.Errorf("SCHED_RR %d for thread %d: %w", prio, tid, e)
			}
			changed++
		}
		if changed == 0 {
			return nil
		}
	}
	return nil
}

// trafficVia tells which unit the probe traffic goes through: the unit
// whose MAC the client's neighbour entry for the LAN VIP and the server's
// entry for the WAN VIP point to ("fw-a", "fw-b"), "mixed" when they point
// to different units, "" when an entry is missing. A unit can be ACTIVE and
// hold the VIPs while the hosts still send to the other one (a missed
// gratuitous ARP), and the other one, up and forwarding, carries the
// traffic: a trial must not start then.
func trafficVia(l *lab.Lab) (string, error) {
	macs := map[string]string{} // MAC -> unit
	for _, n := range units {
		h, err := nsHandle(l, n)
		if err != nil {
			return "", err
		}
		for _, dev := range []string{lab.IfLAN, lab.IfWAN} {
			lk, err := h.LinkByName(dev)
			if err != nil {
				h.Close()
				return "", fmt.Errorf("%s %s: %w", n, dev, err)
			}
			macs[lk.Attrs().HardwareAddr.String()] = n
		}
		h.Close()
	}
	var via []string
	for _, host := range []struct {
		role string
		vip  netip.Addr
	}{{lab.RoleClient, lab.LANVIP.Addr()}, {lab.RoleServer, lab.WANVIP.Addr()}} {
		h, err := nsHandle(l, host.role)
		if err != nil {
			return "", err
		}
		neighs, err := h.NeighList(0, netlink.FAMILY_V4)
		h.Close()
		if err != nil {
			return "", fmt.Errorf("neighbours of %s: %w", host.role, err)
		}
		unit := ""
		for _, nb := range neighs {
			if ip, ok := netip.AddrFromSlice(nb.IP); ok && ip.Unmap() == host.vip && nb.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
				unit = macs[nb.HardwareAddr.String()]
			}
		}
		if unit == "" {
			return "", nil
		}
		via = append(via, unit)
	}
	if via[0] != via[1] {
		return "mixed", nil
	}
	return via[0], nil
}
