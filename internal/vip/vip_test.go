package vip_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/netnstest"
	"github.com/tandem-ha/tandem/internal/vip"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// addrs renders the addresses of link name as sorted "prefix flags" lines,
// without IPv6 link-local addresses (their DAD timing is the kernel's).
func addrs(t testing.TB, h *netlink.Handle, name string) []string {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	list, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("addresses of %s: %v", name, err)
	}
	var out []string
	for _, a := range list {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		s := a.IPNet.String()
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			s += " tentative"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// unitNS makes a namespace with an up link "lan0" (a veth whose peer
// "lan0p" is in the same namespace: the dummy driver may be missing) that
// carries the unit's own addresses.
func unitNS(t testing.TB) *netnstest.NS {
	t.Helper()
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix(), "vip")
	if err := ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan0p"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, cmd := range [][]string{
		{"ip", "link", "set", "lan0p", "up"},
		{"ip", "link", "set", "lan0", "up"},
		{"ip", "addr", "add", "192.0.2.2/24", "dev", "lan0"},
		{"ip", "addr", "add", "2001:db8::2/64", "dev", "lan0", "nodad"},
	} {
		if _, err := ns.Exec(cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

var own = []string{"192.0.2.2/24", "2001:db8::2/64"}

func TestAcquireRelease(t *testing.T) {
	ns := unitNS(t)
	vips := pfx("192.0.2.1/24", "198.51.100.7/32", "2001:db8::1/64")
	m, err := vip.New(ns.Handle, []vip.Interface{{Name: "lan0", VIPs: vips}}, vip.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lan0, err := ns.Handle.LinkByName("lan0")
	if err != nil {
		t.Fatal(err)
	}
	var wantAcq []vip.Acquired
	for _, p := range vips {
		wantAcq = append(wantAcq, vip.Acquired{Interface: "lan0", Index: lan0.Attrs().Index, HardwareAddr: lan0.Attrs().HardwareAddr, Prefix: p})
	}
	wantAll := []string{"192.0.2.1/24", "192.0.2.2/24", "198.51.100.7/32", "2001:db8::1/64", "2001:db8::2/64"}

	for i := range 2 { // the second Acquire must change nothing
		got, err := m.Acquire()
		if err != nil {
			t.Fatalf("Acquire #%d: %v", i+1, err)
		}
		if d := cmp.Diff(wantAcq, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
			t.Errorf("Acquire #%d returned (-want +got):\n%s", i+1, d)
		}
		if d := cmp.Diff(wantAll, addrs(t, ns.Handle, "lan0")); d != "" {
			t.Errorf("addresses after Acquire #%d (-want +got):\n%s", i+1, d)
		}
	}
	held, err := m.Held()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(vips, held, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("Held after Acquire (-want +got):\n%s", d)
	}

	for i := range 2 { // the second Release must be a no-op, not an error
		if err := m.Release(); err != nil {
			t.Fatalf("Release #%d: %v", i+1, err)
		}
		if d := cmp.Diff(own, addrs(t, ns.Handle, "lan0")); d != "" {
			t.Errorf("addresses after Release #%d (-want +got):\n%s", i+1, d)
		}
	}
	if held, err := m.Held(); err != nil || len(held) != 0 {
		t.Errorf("Held after Release = %v, %v; want none", held, err)
	}
}

// A daemon that crashed while ACTIVE leaves its VIPs in the kernel; a new
// Manager must see them so the unit, if not ACTIVE, can remove them.
func TestHeldAfterCrash(t *testing.T) {
	ns := unitNS(t)
	for _, a := range []string{"192.0.2.1/24", "2001:db8::1/64"} {
		if _, err := ns.Exec("ip", "addr", "add", a, "dev", "lan0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	vips := pfx("192.0.2.1/24", "192.0.2.3/24", "2001:db8::1/64")
	m, err := vip.New(ns.Handle, []vip.Interface{{Name: "lan0", VIPs: vips}}, vip.Options{})
	if err != nil {
		t.Fatal(err)
	}
	held, err := m.Held()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"192.0.2.1/24", "2001:db8::1/64"}, strs(held)); d != "" {
		t.Errorf("Held (-want +got):\n%s", d)
	}
	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(own, addrs(t, ns.Handle, "lan0")); d != "" {
		t.Errorf("addresses after Release (-want +got):\n%s", d)
	}
}

func strs[T interface{ String() string }](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

func TestUnknownInterface(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix(), "vip")
	_, err := vip.New(ns.Handle, []vip.Interface{{Name: "lan9", VIPs: pfx("192.0.2.1/24")}}, vip.Options{})
	const want = "interface lan9 does not exist; check interfaces[].name"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("New with unknown interface: err = %v; want it to say %q", err, want)
	}
}

func TestConfigErrors(t *testing.T) {
	ns := unitNS(t)
	for name, ifaces := range map[string][]vip.Interface{
		"duplicate VIP":         {{Name: "lan0", VIPs: pfx("192.0.2.1/24", "192.0.2.1/32")}},
		"virtual MAC, no id":    {{Name: "lan0", VIPs: pfx("192.0.2.1/24"), VirtualMAC: true}},
		"invalid prefix":        {{Name: "lan0", VIPs: []netip.Prefix{{}}}},
		"empty interface name":  {{VIPs: pfx("192.0.2.1/24")}},
		"4-in-6 mapped address": {{Name: "lan0", VIPs: pfx("::ffff:192.0.2.1/128")}},
	} {
		if _, err := vip.New(ns.Handle, ifaces, vip.Options{}); err == nil {
			t.Errorf("%s: New succeeded; want an error", name)
		}
	}
}

func TestNames(t *testing.T) {
	for parent, want := range map[string]string{
		"lan0":            "lan0.vip",
		"eth0.100":        "eth0.100.vip",
		"enp130s0f0np0":   "enp130s0f0n.vip",
		"exactly15bytes!": "exactly15by.vip",
	} {
		if got := vip.MacvlanName(parent); got != want || len(got) > 15 {
			t.Errorf("MacvlanName(%q) = %q; want %q", parent, got, want)
		}
	}
	if got := vip.VirtualMAC(7, true).String(); got != "00:00:5e:00:01:07" {
		t.Errorf("VirtualMAC(7, v4) = %s", got)
	}
	if got := vip.VirtualMAC(255, false).String(); got != "00:00:5e:00:02:ff" {
		t.Errorf("VirtualMAC(255, v6 only) = %s", got)
	}
}

// The VIPs live on a macvlan with the VRRP MAC; a peer reaches them, and
// learns the virtual MAC for the VIP while the unit's own address keeps the
// parent's MAC.
func TestVirtualMAC(t *testing.T) {
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	unit := netnstest.New(t, prefix, "unit")
	peer := netnstest.New(t, prefix, "peer")
	// Replies from a VIP to the peer leave through the parent, whose
	// fresh link-local would be tentative for ~2 s (the kernel sends no
	// neighbour solicitation until it is not); a real unit's parent has
	// been up for long. So no DAD in these namespaces.
	noDAD(t, unit)
	noDAD(t, peer)
	netnstest.VethPair(t, unit, "lan0", peer, "lan0")
	for _, c := range []struct {
		ns   *netnstest.NS
		addr []string
	}{
		{unit, []string{"192.0.2.2/24", "2001:db8::2/64"}},
		{peer, []string{"192.0.2.100/24", "2001:db8::100/64"}},
	} {
		for _, a := range c.addr {
			if _, err := c.ns.Exec("ip", "addr", "add", a, "dev", "lan0", "nodad"); err != nil {
				t.Fatal(err)
			}
		}
	}
	vips := pfx("192.0.2.1/24", "2001:db8::1/64")
	m, err := vip.New(unit.Handle, []vip.Interface{{Name: "lan0", VIPs: vips, VirtualMAC: true}},
		vip.Options{ClusterID: 7, Logger: testLogger(t), NetNS: &unit.NsHandle})
	if err != nil {
		t.Fatal(err)
	}
	vmac := "00:00:5e:00:01:07"
	mv, err := unit.Handle.LinkByName("lan0.vip")
	if err != nil {
		t.Fatalf("macvlan not created by New: %v", err)
	}
	if got := mv.Attrs().HardwareAddr.String(); got != vmac {
		t.Errorf("macvlan MAC = %s; want %s", got, vmac)
	}
	if mv.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("macvlan is up before Acquire")
	}
	for _, s := range []string{"lan0/arp_ignore", "lan0.vip/arp_ignore", "lan0/arp_announce"} {
		out, err := unit.Exec("cat", "/proc/sys/net/ipv4/conf/"+s)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s = %s", s, strings.TrimSpace(out))
	}

	acq, err := m.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acq {
		if a.Interface != "lan0.vip" || a.Index != mv.Attrs().Index || a.HardwareAddr.String() != vmac {
			t.Errorf("Acquired %+v; want it on lan0.vip (%d) with %s", a, mv.Attrs().Index, vmac)
		}
	}
	if d := cmp.Diff([]string{"192.0.2.1/24", "2001:db8::1/64"}, addrs(t, unit.Handle, "lan0.vip")); d != "" {
		t.Errorf("macvlan addresses (-want +got):\n%s", d)
	}
	if d := cmp.Diff(own, addrs(t, unit.Handle, "lan0")); d != "" {
		t.Errorf("parent addresses (-want +got):\n%s", d)
	}

	unitMAC := linkMAC(t, unit, "lan0")
	for target, wantMAC := range map[string]string{
		"192.0.2.1":   vmac,
		"2001:db8::1": vmac,
		"192.0.2.2":   unitMAC,
		"2001:db8::2": unitMAC,
	} {
		addr := netip.MustParseAddr(target)
		if err := reach(t, unit, peer, addr); err != nil {
			t.Errorf("peer cannot reach %s: %v", addr, err)
			continue
		}
		if got := neighMAC(t, peer, "lan0", addr); got != wantMAC {
			t.Errorf("peer's neighbour entry for %s has %s; want %s", addr, got, wantMAC)
		}
	}

	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	mv, err = unit.Handle.LinkByName("lan0.vip")
	if err != nil {
		t.Fatalf("macvlan gone after Release: %v", err)
	}
	if mv.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("macvlan still up after Release")
	}
	if got := addrs(t, unit.Handle, "lan0.vip"); len(got) != 0 {
		t.Errorf("macvlan keeps %v after Release", got)
	}
	if d := cmp.Diff(own, addrs(t, unit.Handle, "lan0")); d != "" {
		t.Errorf("parent addresses after Release (-want +got):\n%s", d)
	}

	// Failover again: a second Manager (daemon restart) reuses the macvlan.
	m2, err := vip.New(unit.Handle, []vip.Interface{{Name: "lan0", VIPs: vips, VirtualMAC: true}},
		vip.Options{ClusterID: 7, NetNS: &unit.NsHandle})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Acquire(); err != nil {
		t.Fatal(err)
	}
	if err := reach(t, unit, peer, netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Errorf("peer cannot reach the VIP after a second Acquire: %v", err)
	}
}

// noDAD turns IPv6 duplicate address detection off for links created in ns
// from now on.
func noDAD(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	err := ns.Do(func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("turn DAD off in %s: %v", ns.Name, err)
	}
}

func linkMAC(t *testing.T, ns *netnstest.NS, name string) string {
	t.Helper()
	l, err := ns.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr.String()
}

func neighMAC(t *testing.T, ns *netnstest.NS, link string, addr netip.Addr) string {
	t.Helper()
	l, err := ns.Handle.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	list, err := ns.Handle.NeighList(l.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		if ip, _ := netip.AddrFromSlice(n.IP); ip.Unmap() == addr {
			return n.HardwareAddr.String()
		}
	}
	return "(none)"
}

// reach opens a TCP connection from peer to a listener on addr in unit: a
// full round trip that needs neighbour resolution, without ping.
func reach(t *testing.T, unit, peer *netnstest.NS, addr netip.Addr) error {
	t.Helper()
	var ln net.Listener
	if err := unit.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	return peer.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// BenchmarkAcquireRelease measures a failover's address work on a veth
// link with 2 IPv4 and 2 IPv6 VIPs, plain and with the virtual MAC. ns/op
// is Acquire alone; release-µs is Release. Between rounds the benchmark
// waits for the kernel's deferred work after a link goes down (linkwatch,
// RCU), which would otherwise be charged to the next Acquire: on a real
// failover the link has been down for long.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, vmac := range []bool{false, true} {
		name := "plain"
		if vmac {
			name = "virtualmac"
		}
		b.Run(name, func(b *testing.B) {
			ns := unitNS(b)
			m, err := vip.New(ns.Handle, []vip.Interface{{
				Name: "lan0", VirtualMAC: vmac,
				VIPs: pfx("192.0.2.1/24", "192.0.2.3/24", "2001:db8::1/64", "2001:db8::3/64"),
			}}, vip.Options{ClusterID: 1, NetNS: &ns.NsHandle})
			if err != nil {
				b.Fatal(err)
			}
			var release time.Duration
			b.ResetTimer()
			for range b.N {
				if _, err := m.Acquire(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				start := time.Now()
				if err := m.Release(); err != nil {
					b.Fatal(err)
				}
				release += time.Since(start)
				if vmac {
					time.Sleep(settle)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(release.Microseconds())/float64(b.N), "release-µs")
		})
	}
}

var settle = func() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("TANDEM_BENCH_SETTLE"))
	if d == 0 {
		d = 20 * time.Millisecond
	}
	return d
}()
