package lab

// This file is the only place that knows how the lab's network is built and
// torn down: namespaces, bridges, veth links, addresses, routes, sysctls and
// the firewall ruleset. Everything lives in namespaces named "<lab>-<role>";
// nothing of the lab is created in the root namespace.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/nftfw"
)

// Roles: the suffix of each namespace name. Node names of the firewall
// units ("fw-a", "fw-b") are roles too.
const (
	RoleClient = "client"
	RoleFwA    = "fw-a"
	RoleFwB    = "fw-b"
	RoleServer = "server"
	RoleSwitch = "sw"
)

// roles lists every namespace of a lab. Order matters for teardown: the
// switch goes first, which deletes every veth pair that has an end in it.
var roles = []string{RoleSwitch, RoleClient, RoleFwA, RoleFwB, RoleServer}

// Interface names inside the namespaces.
const (
	IfLAN    = "lan0" // firewall unit, LAN side
	IfWAN    = "wan0" // firewall unit, WAN side
	IfHA     = "ha0"  // firewall unit, dedicated HA link
	IfHost   = "eth0" // client and server
	brLAN    = "br-lan"
	brWAN    = "br-wan"
	haPort   = 7480
	clusterI = 77
)

// Addressing of every lab. Labs live in separate namespaces, so they all use
// the same addresses. These are read-only: do not modify them.
var (
	ClientAddr  = netip.MustParsePrefix("172.16.121.10/24")
	ClientAddr6 = netip.MustParsePrefix("fd00:121::10/64")
	ServerAddr  = netip.MustParsePrefix("203.0.113.10/24")
	LANVIP      = netip.MustParsePrefix("172.16.121.1/24")
	LANVIP6     = netip.MustParsePrefix("fd00:121::1/64")
	WANVIP      = netip.MustParsePrefix("203.0.113.1/24")

	// Units holds the per-unit addresses, keyed by node name.
	Units = map[string]Unit{
		RoleFwA: {
			Name: RoleFwA, Role: "primary",
			LAN:  netip.MustParsePrefix("172.16.121.3/24"),
			LAN6: netip.MustParsePrefix("fd00:121::3/64"),
			WAN:  netip.MustParsePrefix("203.0.113.3/24"),
			HA:   netip.MustParsePrefix("169.254.77.1/30"),
		},
		RoleFwB: {
			Name: RoleFwB, Role: "secondary",
			LAN:  netip.MustParsePrefix("172.16.121.4/24"),
			LAN6: netip.MustParsePrefix("fd00:121::4/64"),
			WAN:  netip.MustParsePrefix("203.0.113.4/24"),
			HA:   netip.MustParsePrefix("169.254.77.2/30"),
		},
	}
)

// Unit is the fixed addressing of one firewall unit.
type Unit struct {
	Name string // "fw-a" or "fw-b"
	Role string // "primary" or "secondary"
	LAN  netip.Prefix
	LAN6 netip.Prefix
	WAN  netip.Prefix
	HA   netip.Prefix
}

// nodes are the firewall units, in order.
var nodes = []string{RoleFwA, RoleFwB}

// nsName is the namespace name of a role in lab name.
func nsName(name, role string) string { return name + "-" + role }

// port is one veth pair between a host and the switch.
type port struct {
	role, ifName string // host side
	swName       string // switch side
	bridge       string
	addrs        []netip.Prefix
}

func ports() []port {
	a, b := Units[RoleFwA], Units[RoleFwB]
	return []port{
		{RoleClient, IfHost, "client", brLAN, []netip.Prefix{ClientAddr, ClientAddr6}},
		{RoleFwA, IfLAN, "fwa-lan", brLAN, []netip.Prefix{a.LAN, a.LAN6}},
		{RoleFwB, IfLAN, "fwb-lan", brLAN, []netip.Prefix{b.LAN, b.LAN6}},
		{RoleFwA, IfWAN, "fwa-wan", brWAN, []netip.Prefix{a.WAN}},
		{RoleFwB, IfWAN, "fwb-wan", brWAN, []netip.Prefix{b.WAN}},
		{RoleServer, IfHost, "server", brWAN, []netip.Prefix{ServerAddr}},
	}
}

// Neighbour timing on every host interface of the lab: short enough that a
// stale entry for a moved VIP is re-resolved within seconds even without a
// gratuitous ARP, long enough not to flood the lab with probes.
var neighSysctls = map[string]string{
	"base_reachable_time_ms": "5000",
	"delay_first_probe_time": "1",
	"retrans_time_ms":        "200",
	"gc_stale_time":          "10",
}

// ns is an open lab namespace.
type ns struct {
	name string
	fd   netns.NsHandle
	h    *netlink.Handle
}

func (n *ns) close() {
	if n.h != nil {
		n.h.Close()
	}
	if n.fd.IsOpen() {
		_ = n.fd.Close()
	}
}

// openNS opens an existing namespace by name with a netlink handle in it.
func openNS(name string) (*ns, error) {
	fd, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		_ = fd.Close()
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return &ns{name: name, fd: fd, h: h}, nil
}

// build creates the whole topology of lab name. On error it returns what it
// could not do; the caller tears down (teardown deletes all lab namespaces).
func build(name string, log *slog.Logger) (err error) {
	open := map[string]*ns{}
	defer func() {
		for _, n := range open {
			n.close()
		}
	}()
	for _, role := range roles {
		full := nsName(name, role)
		if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %w: %s", full, err, bytes.TrimSpace(out))
		}
		n, err := openNS(full)
		if err != nil {
			return err
		}
		open[role] = n
		if err := linkUp(n, "lo"); err != nil {
			return err
		}
		log.Debug("lab: namespace created", "netns", full)
	}

	// The switch: two bridges, no IPv6 and no multicast snooping (NDP must
	// be flooded like ARP, whoever has joined which group).
	sw := open[RoleSwitch]
	if err := writeSysctls(sw.fd, map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	}); err != nil {
		return err
	}
	noSnooping := false
	for _, br := range []string{brLAN, brWAN} {
		if err := sw.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}, MulticastSnooping: &noSnooping}); err != nil {
			return fmt.Errorf("add bridge %s in %s: %w", br, sw.name, err)
		}
		if err := linkUp(sw, br); err != nil {
			return err
		}
	}

	// Per-host sysctls that must exist before links come up.
	for _, role := range []string{RoleFwA, RoleFwB} {
		if err := writeSysctls(open[role].fd, map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
			return err
		}
	}
	for _, role := range []string{RoleClient, RoleServer} {
		if err := writeSysctls(open[role].fd, map[string]string{
			"net/ipv4/conf/all/arp_accept":     "1",
			"net/ipv4/conf/default/arp_accept": "1",
		}); err != nil {
			return err
		}
	}

	for _, p := range ports() {
		host := open[p.role]
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.swName},
			PeerName:      p.ifName,
			PeerNamespace: netlink.NsFd(int(host.fd)),
		}
		if err := sw.h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s(%s) <-> %s(%s): %w", p.swName, sw.name, p.ifName, host.name, err)
		}
		swl, err := sw.h.LinkByName(p.swName)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", p.swName, sw.name, err)
		}
		br, err := sw.h.LinkByName(p.bridge)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", p.bridge, sw.name, err)
		}
		if err := sw.h.LinkSetMaster(swl, br); err != nil {
			return fmt.Errorf("attach %s to %s in %s: %w", p.swName, p.bridge, sw.name, err)
		}
		if err := sw.h.LinkSetUp(swl); err != nil {
			return fmt.Errorf("set %s up in %s: %w", p.swName, sw.name, err)
		}
		if err := configureHostLink(host, p.ifName, p.addrs); err != nil {
			return err
		}
	}

	// The dedicated HA link: a direct veth between the two units.
	fa, fb := open[RoleFwA], open[RoleFwB]
	ha := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: IfHA},
		PeerName:      IfHA,
		PeerNamespace: netlink.NsFd(int(fb.fd)),
	}
	if err := fa.h.LinkAdd(ha); err != nil {
		return fmt.Errorf("add HA veth %s(%s) <-> %s(%s): %w", IfHA, fa.name, IfHA, fb.name, err)
	}
	if err := configureHostLink(fa, IfHA, []netip.Prefix{Units[RoleFwA].HA}); err != nil {
		return err
	}
	if err := configureHostLink(fb, IfHA, []netip.Prefix{Units[RoleFwB].HA}); err != nil {
		return err
	}

	// Default routes: client via the LAN VIP (v4 and v6), server via the
	// WAN VIP. The VIPs need not exist yet: the gateways are on-link.
	for _, r := range []struct {
		role string
		gw   netip.Addr
	}{
		{RoleClient, LANVIP.Addr()},
		{RoleClient, LANVIP6.Addr()},
		{RoleServer, WANVIP.Addr()},
	} {
		n := open[r.role]
		l, err := n.h.LinkByName(IfHost)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", IfHost, n.name, err)
		}
		if err := n.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: r.gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", r.gw, n.name, err)
		}
	}

	// Carrier is reported asynchronously (linkwatch, up to a second): wait
	// for it, so the daemons start on a settled network and do not see the
	// HA link down at birth.
	hostLinks := []struct{ role, ifName string }{{RoleFwA, IfHA}, {RoleFwB, IfHA}}
	for _, p := range ports() {
		hostLinks = append(hostLinks, struct{ role, ifName string }{p.role, p.ifName})
	}
	deadline := time.Now().Add(carrierTimeout)
	for _, hl := range hostLinks {
		if err := waitCarrier(open[hl.role], hl.ifName, deadline); err != nil {
			return err
		}
	}

	// The stateful firewall of each unit.
	for _, role := range []string{RoleFwA, RoleFwB} {
		if err := nftfw.Apply(open[role].fd, nftfw.Rules{LAN: IfLAN, WAN: IfWAN, SNATTo: WANVIP.Addr()}); err != nil {
			return fmt.Errorf("firewall of %s: %w", open[role].name, err)
		}
	}
	log.Debug("lab: topology built", "lab", name)
	return nil
}

// configureHostLink brings a host-side link up, tunes its neighbour timing
// and ARP/NA acceptance, and adds its addresses (IPv6 without DAD).
func configureHostLink(n *ns, ifName string, addrs []netip.Prefix) error {
	l, err := n.h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifName, n.name, err)
	}
	if err := n.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", ifName, n.name, err)
	}
	sysctls := map[string]string{}
	for k, v := range neighSysctls {
		sysctls["net/ipv4/neigh/"+ifName+"/"+k] = v
		sysctls["net/ipv6/neigh/"+ifName+"/"+k] = v
	}
	if err := writeSysctls(n.fd, sysctls); err != nil {
		return err
	}
	if ifName == IfHost {
		// Let gratuitous ARP and unsolicited NA create neighbour entries,
		// so a VIP move is learnt at once. accept_untracked_na is recent
		// (Linux 5.18); skip it where the kernel does not have it.
		if err := writeSysctls(n.fd, map[string]string{"net/ipv4/conf/" + ifName + "/arp_accept": "1"}); err != nil {
			return err
		}
		_ = writeSysctls(n.fd, map[string]string{"net/ipv6/conf/" + ifName + "/accept_untracked_na": "1"})
	}
	for _, p := range addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = syscall.IFA_F_NODAD
		}
		if err := n.h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", p, ifName, n.name, err)
		}
	}
	return nil
}

// carrierTimeout bounds how long build waits for all links to have carrier.
const carrierTimeout = 5 * time.Second

// waitCarrier polls until link ifName in n is operationally up.
func waitCarrier(n *ns, ifName string, deadline time.Time) error {
	for {
		l, err := n.h.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", ifName, n.name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s has no carrier after %v (state %s)", ifName, n.name, carrierTimeout, l.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func linkUp(n *ns, ifName string) error {
	l, err := n.h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifName, n.name, err)
	}
	if err := n.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", ifName, n.name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// writeSysctls writes /proc/sys/<key> = value from inside the namespace
// (the net sysctls seen through /proc/sys belong to the opener's namespace).
func writeSysctls(nsh netns.NsHandle, kv map[string]string) error {
	return doIn(nsh, func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(k, "/", "."), v, err)
			}
		}
		return nil
	})
}

// doIn runs fn on a fresh OS thread switched into nsh. If the thread cannot
// be switched back it is left locked, so the runtime discards it instead of
// reusing a thread in the wrong namespace.
func doIn(nsh netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(nsh); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return to original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listNamespaces returns the names "ip netns list" shows.
func listNamespaces() ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, sc.Err()
}

// existingNamespaces returns the namespaces of lab name that exist: those
// listed with the prefix "<name>-" whose suffix is one of the lab's roles
// (never another namespace that merely shares the prefix).
func existingNamespaces(name string) ([]string, error) {
	all, err := listNamespaces()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, n := range all {
		have[n] = true
	}
	var found []string
	for _, role := range roles {
		if full := nsName(name, role); have[full] {
			found = append(found, full)
		}
	}
	return found, nil
}

// teardownNamespaces deletes every namespace of lab name that exists, switch
// first. Deleting a namespace deletes the links in it, and deleting one end
// of a veth deletes the pair. It is idempotent. Processes still running in
// a namespace keep it alive unnamed, so callers stop the daemons first.
func teardownNamespaces(name string, log *slog.Logger) error {
	found, err := existingNamespaces(name)
	if err != nil {
		return err
	}
	var errs []error
	for _, full := range found {
		if out, err := exec.Command("ip", "netns", "del", full).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", full, err, bytes.TrimSpace(out)))
			continue
		}
		log.Debug("lab: namespace deleted", "netns", full)
	}
	return errors.Join(errs...)
}

// setAllLinks sets the given links of a namespace up or down, in order.
func setAllLinks(n *ns, links []netlink.Link, up bool) error {
	var errs []error
	for _, l := range links {
		var err error
		if up {
			err = n.h.LinkSetUp(l)
		} else {
			err = n.h.LinkSetDown(l)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s %s in %s: %w", l.Attrs().Name, updown(up), n.name, err))
		}
	}
	return errors.Join(errs...)
}

// linksOf lists the links of n, loopback first.
func linksOf(n *ns) ([]netlink.Link, error) {
	links, err := n.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", n.name, err)
	}
	out := make([]netlink.Link, 0, len(links))
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			out = append([]netlink.Link{l}, out...)
		} else {
			out = append(out, l)
		}
	}
	return out, nil
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
