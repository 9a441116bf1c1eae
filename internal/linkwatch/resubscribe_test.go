package linkwatch

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

// After the subscription breaks, Watch subscribes again and reports what
// changed while it was deaf, and nothing that did not.
func TestResubscribe(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix(), "lw")
	if err := ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan1"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"lan1", "lan0"} {
		if _, err := ns.Exec("ip", "link", "set", n, "up"); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l0, _ := ns.Handle.LinkByName("lan0")
		l1, _ := ns.Handle.LinkByName("lan1")
		if l0 != nil && l1 != nil && l0.Attrs().OperState == netlink.OperUp && l1.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("links not up")
		}
	}

	breaks := make(chan func(error), 4)
	subscribe = func(ch chan<- netlink.LinkUpdate, done <-chan struct{}, o netlink.LinkSubscribeOptions) error {
		breaks <- o.ErrorCallback
		return netlink.LinkSubscribeWithOptions(ch, done, o)
	}
	t.Cleanup(func() { subscribe = netlink.LinkSubscribeWithOptions })

	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 16)
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, ns.NsHandle, []string{"lan0", "lan1"}, out) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()

	var got []Event
	collect := func(n int) {
		t.Helper()
		for range n {
			select {
			case e := <-out:
				got = append(got, e)
			case <-time.After(2 * time.Second):
				t.Fatalf("timed out; got %+v", got)
			}
		}
	}
	collect(2)
	// Break the subscription, and change lan1 while Watch is deaf.
	(<-breaks)(errors.New("simulated socket failure"))
	if _, err := ns.Exec("ip", "link", "set", "lan1", "down"); err != nil {
		t.Fatal(err)
	}
	collect(2) // lan1 admin down, lan0 carrier lost
	select {
	case <-breaks:
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not subscribe again")
	}
	select {
	case e := <-out:
		t.Errorf("unexpected event %+v", e)
	case <-time.After(300 * time.Millisecond):
	}
	idx := func(n string) int { l, _ := ns.Handle.LinkByName(n); return l.Attrs().Index }
	want := []Event{
		{Name: "lan0", Index: idx("lan0"), Up: true, Reason: "up"},
		{Name: "lan1", Index: idx("lan1"), Up: true, Reason: "up"},
		{Name: "lan0", Index: idx("lan0"), Reason: "carrier lost"},
		{Name: "lan1", Index: idx("lan1"), Reason: "admin down"},
	}
	// The last two may come in either order (notification or re-read).
	slices.SortFunc(got[2:], func(a, b Event) int { return strings.Compare(a.Name, b.Name) })
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}
