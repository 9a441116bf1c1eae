package heartbeat

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/netnstest"
	"github.com/tandem-ha/tandem/internal/wire"
)

// An HA link with only IPv6 link-local addresses: the same fe80:: prefix is
// on every link, so binding and sending need the interface as the zone.
func TestLinkLocalIPv6Path(t *testing.T) {
	netnstest.RequireRoot(t)
	pfx := netnstest.Prefix()
	a, b := netnstest.New(t, pfx, "a"), netnstest.New(t, pfx, "b")
	// Different names on the two ends: Go caches interface names process-wide
	// and both namespaces live in this test process (a daemon has one).
	netnstest.VethPair(t, a, "haa", b, "hab")
	for _, x := range []struct {
		ns   *netnstest.NS
		addr string
		dev  string
	}{{a, "fe80::a/64", "haa"}, {b, "fe80::b/64", "hab"}} {
		if out, err := x.ns.Exec("ip", "addr", "add", x.addr, "dev", x.dev, "nodad"); err != nil {
			t.Fatal(out, err)
		}
	}
	key := make([]byte, 32)
	open := func(ns *netnstest.NS, node uint8, dev, local, peer string) *Transport {
		t.Helper()
		var tr *Transport
		err := ns.Do(func() error {
			var err error
			tr, err = Open([]Path{{Name: dev,
				Local: netip.MustParseAddrPort(local), Peer: netip.MustParseAddrPort(peer)}},
				Options{Key: key, ClusterID: 1, NodeID: node})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	ta := open(a, wire.NodePrimary, "haa", "[fe80::a%haa]:7480", "[fe80::b%haa]:7480")
	tb := open(b, wire.NodeSecondary, "hab", "[fe80::b%hab]:7480", "[fe80::a%hab]:7480")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Received, 16)
	go tb.Receive(ctx, got)
	hb := wire.Heartbeat{ClusterID: 1, NodeID: wire.NodePrimary, State: wire.StateActive, BootID: 1}
	deadline := time.After(3 * time.Second)
	for seq := uint64(1); ; seq++ {
		hb.Seq = seq
		ta.Send(&hb)
		select {
		case r := <-got:
			if r.HB.NodeID != wire.NodePrimary || r.HB.State != wire.StateActive {
				t.Fatalf("received %+v", r.HB)
			}
			if n := ta.Stats()[0].SendErrors; n != 0 {
				t.Errorf("%d send errors on the link-local path", n)
			}
			return
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no heartbeat over the link-local path in 3 s; send errors: %d", ta.Stats()[0].SendErrors)
		}
	}
}
