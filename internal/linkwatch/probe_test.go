package linkwatch_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/linkwatch"
	"github.com/tandem-ha/tandem/internal/netnstest"
)

func TestProbe(t *testing.T) {
	netnstest.RequireRoot(t)
	prefix := netnstest.Prefix()
	a := netnstest.New(t, prefix, "a")
	b := netnstest.New(t, prefix, "b")
	netnstest.VethPair(t, a, "lan0", b, "lan0")
	for ns, addrs := range map[*netnstest.NS][]string{a: {"192.0.2.1/24", "2001:db8::1/64"}, b: {"192.0.2.2/24", "2001:db8::2/64"}} {
		for _, addr := range addrs {
			if _, err := ns.Exec("ip", "addr", "add", addr, "dev", "lan0", "nodad"); err != nil {
				t.Fatal(err)
			}
		}
	}
	// b's IPv6 address must survive the link going down (by default Linux
	// removes IPv6 addresses from a link that goes down).
	if err := b.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/lan0/keep_addr_on_down", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", "192.0.2.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	targets := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.2:0"),
		netip.MustParseAddrPort("[2001:db8::2]:0"),
		netip.MustParseAddrPort(ln.Addr().String()),
		netip.MustParseAddrPort("192.0.2.2:1"), // refused: still a working path
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan linkwatch.Event, 16)
	errc := make(chan error, len(targets))
	for _, target := range targets {
		cfg := linkwatch.ProbeConfig{Target: target, Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond, Failures: 3}
		go func() { errc <- linkwatch.Probe(ctx, a.NsHandle, cfg, out) }()
	}
	collect := func(up bool, after string) {
		t.Helper()
		want := map[string]bool{}
		for _, target := range targets {
			want[linkwatch.ProbeName(target)] = up
		}
		got := map[string]bool{}
		deadline := time.After(3 * time.Second)
		for len(got) < len(targets) {
			select {
			case e := <-out:
				if _, dup := got[e.Name]; dup {
					t.Errorf("%s: second event for %s: %+v", after, e.Name, e)
				}
				got[e.Name] = e.Up
				t.Logf("%s: %+v", after, e)
			case <-deadline:
				t.Fatalf("%s: got %v; want %v", after, got, want)
			}
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", after, d)
		}
	}
	collect(true, "start")
	if _, err := b.Exec("ip", "link", "set", "lan0", "down"); err != nil {
		t.Fatal(err)
	}
	collect(false, "peer down")
	if _, err := b.Exec("ip", "link", "set", "lan0", "up"); err != nil {
		t.Fatal(err)
	}
	collect(true, "peer up")
	cancel()
	for range targets {
		if err := <-errc; err != nil {
			t.Errorf("Probe: %v", err)
		}
	}
}
