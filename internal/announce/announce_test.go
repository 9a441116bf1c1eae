package announce_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tandem-ha/tandem/internal/announce"
	"github.com/tandem-ha/tandem/internal/netnstest"
)

// segment is an Ethernet segment: a bridge in its own namespace and, per
// host, a namespace whose "lan0" is a port of that bridge.
type segment map[string]*host

type host struct {
	*netnstest.NS
	ifi *net.Interface
	mac net.HardwareAddr
}

func newSegment(t *testing.T, hosts ...string) segment {
	t.Helper()
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	sw := netnstest.New(t, prefix, "sw")
	mustExec(t, sw, "ip", "link", "add", "br0", "type", "bridge")
	seg := segment{}
	for i, name := range hosts {
		ns := netnstest.New(t, prefix, name)
		port := fmt.Sprintf("p%d", i)
		netnstest.VethPair(t, sw, port, ns, "lan0")
		mustExec(t, sw, "ip", "link", "set", port, "master", "br0")
		h := &host{NS: ns}
		if err := ns.Do(func() (err error) {
			h.ifi, err = net.InterfaceByName("lan0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		h.mac = h.ifi.HardwareAddr
		seg[name] = h
	}
	mustExec(t, sw, "ip", "link", "set", "br0", "up")
	return seg
}

func mustExec(t *testing.T, ns *netnstest.NS, cmd string, args ...string) {
	t.Helper()
	if _, err := ns.Exec(cmd, args...); err != nil {
		t.Fatal(err)
	}
}

func addAddrs(t *testing.T, h *host, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		mustExec(t, h.NS, "ip", "addr", "add", a, "dev", "lan0", "nodad")
	}
}

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, x := range s {
		out[i] = netip.MustParseAddr(x)
	}
	return out
}

func (h *host) announcer(t *testing.T) *announce.Announcer {
	t.Helper()
	var a *announce.Announcer
	if err := h.Do(func() (err error) {
		a, err = announce.NewAnnouncer(h.ifi, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func (h *host) neighMAC(t *testing.T, addr netip.Addr) string {
	t.Helper()
	list, err := h.Handle.NeighList(h.ifi.Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		if ip, _ := netip.AddrFromSlice(n.IP); ip.Unmap() == addr && n.HardwareAddr != nil {
			return n.HardwareAddr.String()
		}
	}
	return "(none)"
}

// waitNeigh polls h's neighbour table until addr maps to want.
func (h *host) waitNeigh(t *testing.T, addr netip.Addr, want net.HardwareAddr) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := h.neighMAC(t, addr)
		if got == want.String() {
			return
		}
		if time.Now().After(deadline) {
			out, _ := h.Exec("ip", "neigh", "show", "dev", "lan0")
			t.Errorf("%s: neighbour %s is %s; want %s\n%s", h.Name, addr, got, want, out)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The observer's neighbour table follows the announcer: existing entries
// (v4 and v6) are overridden, and with arp_accept=1 a new entry is made.
func TestAnnounceUpdatesNeighbours(t *testing.T) {
	seg := newSegment(t, "unit", "obs")
	unit, obs := seg["unit"], seg["obs"]
	addAddrs(t, unit, "192.0.2.1/24", "192.0.2.5/24", "2001:db8::1/64")
	addAddrs(t, obs, "192.0.2.100/24", "2001:db8::100/64")
	mustExec(t, obs.NS, "ip", "neigh", "replace", "192.0.2.1", "lladdr", "02:00:00:00:00:99", "dev", "lan0", "nud", "stale")
	mustExec(t, obs.NS, "ip", "neigh", "replace", "2001:db8::1", "lladdr", "02:00:00:00:00:99", "dev", "lan0", "nud", "stale")
	if err := obs.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lan0/arp_accept", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}

	a := unit.announcer(t)
	addrs := ips("192.0.2.1", "192.0.2.5", "2001:db8::1")
	if err := a.Announce(context.Background(), addrs, unit.mac, 1, 0); err != nil {
		t.Fatal(err)
	}
	for _, addr := range addrs {
		obs.waitNeigh(t, addr, unit.mac)
	}
}

// conflicts runs WatchConflicts in h and collects what it reports.
type conflicts struct {
	mu   sync.Mutex
	got  []announce.Conflict
	done chan error
}

func (h *host) watch(t *testing.T, ourMAC net.HardwareAddr, owned func() []netip.Addr) *conflicts {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &conflicts{done: make(chan error, 1)}
	out := make(chan announce.Conflict)
	go func() {
		c.done <- h.Do(func() error { return announce.WatchConflicts(ctx, h.ifi, ourMAC, owned, out) })
	}()
	go func() {
		for x := range out {
			c.mu.Lock()
			c.got = append(c.got, x)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-c.done:
			if err != nil {
				t.Errorf("WatchConflicts: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("WatchConflicts did not return after cancel")
		}
		close(out)
	})
	return c
}

func (c *conflicts) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, x := range c.got {
		out = append(out, fmt.Sprintf("%s %s %s", x.Interface, x.Addr, x.TheirMAC))
	}
	return out
}

// until repeats send every 20 ms until c has reported want (a line of
// snapshot), for at most 3 s; the watcher's sockets may not be open yet
// when the test first sends.
func (c *conflicts) until(t *testing.T, want string, send func() error) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		if err := send(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		if slices.Contains(c.snapshot(), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no conflict %q reported; got %q", want, c.snapshot())
		}
	}
}

func TestWatchConflicts(t *testing.T) {
	seg := newSegment(t, "unit", "rival")
	unit, rival := seg["unit"], seg["rival"]
	addAddrs(t, unit, "192.0.2.1/24", "2001:db8::1/64")
	addAddrs(t, rival, "192.0.2.2/24", "2001:db8::2/64")

	var mu sync.Mutex
	ownedSet := ips("192.0.2.1", "192.0.2.3", "2001:db8::1")
	owned := func() []netip.Addr { mu.Lock(); defer mu.Unlock(); return slices.Clone(ownedSet) }
	got := unit.watch(t, unit.mac, owned)
	// A second watcher whose MAC is the rival's (as with a shared virtual
	// MAC) must report nothing of the rival's.
	sameMAC := unit.watch(t, rival.mac, owned)
	a := rival.announcer(t)
	claim := func(addrs ...string) func() error {
		return func() error { return a.Announce(context.Background(), ips(addrs...), rival.mac, 1, 0) }
	}
	line := func(addr string) string { return fmt.Sprintf("lan0 %s %s", addr, rival.mac) }
	// Not owned first, then owned: a report for the first would come
	// before the second on the same socket.
	got.until(t, line("192.0.2.1"), claim("192.0.2.77", "192.0.2.1"))
	got.until(t, line("2001:db8::1"), claim("2001:db8::77", "2001:db8::1"))
	// Our own announcements are never reported (checked at the end, after
	// more reports have come through the same sockets).
	ours := unit.announcer(t)
	if err := ours.Announce(context.Background(), ips("192.0.2.1", "2001:db8::1"), unit.mac, 1, 0); err != nil {
		t.Fatal(err)
	}

	// Ownership changes are seen per packet.
	mu.Lock()
	ownedSet = ips("192.0.2.3")
	mu.Unlock()
	before := len(got.snapshot())
	got.until(t, line("192.0.2.3"), claim("192.0.2.1", "2001:db8::1", "192.0.2.3"))
	time.Sleep(50 * time.Millisecond) // let a late NA report arrive, if any

	for _, s := range got.snapshot()[before:] {
		if s != line("192.0.2.3") {
			t.Errorf("reported %q after 192.0.2.1 and 2001:db8::1 were no longer owned", s)
		}
	}
	for _, s := range got.snapshot() {
		if strings.Contains(s, "::77") || strings.Contains(s, ".77") || strings.Contains(s, unit.mac.String()) {
			t.Errorf("reported %q: not owned, or our own MAC", s)
		}
	}
	if s := sameMAC.snapshot(); len(s) != 0 {
		t.Errorf("watcher with the rival's MAC as ours reported %q", s)
	}
}

// A rival whose kernel still holds our VIPs but announces nothing (its
// daemon died) is found by probing: it answers us, and we see it.
func TestProbeFindsSilentHolder(t *testing.T) {
	seg := newSegment(t, "unit", "rival", "client")
	unit, rival, client := seg["unit"], seg["rival"], seg["client"]
	addAddrs(t, unit, "192.0.2.1/24", "2001:db8::1/64")
	addAddrs(t, rival, "192.0.2.1/24", "2001:db8::1/64")
	addAddrs(t, client, "192.0.2.100/24", "2001:db8::100/64")
	vips := ips("192.0.2.1", "2001:db8::1")

	// The client learns the unit's MAC for the VIPs.
	mustExec(t, client.NS, "ip", "neigh", "replace", "192.0.2.1", "lladdr", unit.mac.String(), "dev", "lan0", "nud", "stale")
	mustExec(t, client.NS, "ip", "neigh", "replace", "2001:db8::1", "lladdr", unit.mac.String(), "dev", "lan0", "nud", "stale")

	got := unit.watch(t, unit.mac, func() []netip.Addr { return vips })
	a := unit.announcer(t)
	probe := func() error { return a.Probe(vips, unit.mac) }
	got.until(t, fmt.Sprintf("lan0 192.0.2.1 %s", rival.mac), probe)
	got.until(t, fmt.Sprintf("lan0 2001:db8::1 %s", rival.mac), probe)

	// Probing must not have moved the client to the rival.
	for _, v := range vips {
		if m := client.neighMAC(t, v); m != unit.mac.String() {
			t.Errorf("client's entry for %s moved to %s after the probes; want %s", v, m, unit.mac)
		}
	}
}

// Bursts: count of them, interval apart, the first at once; a burst is two
// ARPs per IPv4 address and one NA per IPv6 address.
func TestAnnounceBursts(t *testing.T) {
	seg := newSegment(t, "unit", "obs")
	unit, obs := seg["unit"], seg["obs"]
	addrs := ips("192.0.2.1", "2001:db8::1")
	// The observer counts the unit's frames as conflicts.
	got := obs.watch(t, obs.mac, func() []netip.Addr { return addrs })
	a := unit.announcer(t)
	got.until(t, fmt.Sprintf("lan0 192.0.2.1 %s", unit.mac), func() error {
		return a.Announce(context.Background(), addrs[:1], unit.mac, 1, 0)
	})
	time.Sleep(50 * time.Millisecond)
	before := len(got.snapshot())

	start := time.Now()
	if err := a.Announce(context.Background(), addrs, unit.mac, 3, 40*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 80*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("3 bursts 40 ms apart took %v; want ~80 ms", d)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(got.snapshot()) - before; n != 9 {
		t.Errorf("observer saw %d announcement frames; want 9 (3 × (2 ARP + 1 NA)): %q", n, got.snapshot()[before:])
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Announce(ctx, addrs, unit.mac, 5, time.Second); err != context.Canceled {
		t.Errorf("Announce with a cancelled context = %v; want context.Canceled after the first burst", err)
	}
	if err := a.Announce(context.Background(), addrs, net.HardwareAddr{1, 2}, 1, 0); err == nil {
		t.Errorf("Announce with a 2-byte MAC succeeded")
	}
}
