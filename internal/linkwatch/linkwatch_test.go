package linkwatch_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/linkwatch"
	"github.com/tandem-ha/tandem/internal/netnstest"
)

type watch struct {
	t  *testing.T
	ch chan linkwatch.Event
}

func startWatch(t *testing.T, ns *netnstest.NS, names ...string) *watch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watch{t: t, ch: make(chan linkwatch.Event)}
	done := make(chan error, 1)
	go func() { done <- linkwatch.Watch(ctx, ns.NsHandle, names, w.ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v after cancel; want nil", err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("Watch did not return after cancel")
		}
	})
	return w
}

// expect takes the next event and compares it with want; it must come
// within a second.
func (w *watch) expect(want linkwatch.Event, after string) {
	w.t.Helper()
	start := time.Now()
	select {
	case got := <-w.ch:
		if d := cmp.Diff(want, got); d != "" {
			w.t.Fatalf("after %s: event (-want +got):\n%s", after, d)
		}
		w.t.Logf("after %s: %+v in %v", after, got, time.Since(start))
	case <-time.After(time.Second):
		w.t.Fatalf("after %s: no event within 1s; want %+v", after, want)
	}
}

// quiet checks that no further (duplicate) event comes.
func (w *watch) quiet(d time.Duration) {
	w.t.Helper()
	select {
	case got := <-w.ch:
		w.t.Errorf("unexpected event %+v", got)
	case <-time.After(d):
	}
}

func index(t *testing.T, ns *netnstest.NS, name string) int {
	t.Helper()
	l, err := ns.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func run(t *testing.T, ns *netnstest.NS, args ...string) string {
	t.Helper()
	if _, err := ns.Exec("ip", args...); err != nil {
		t.Fatal(err)
	}
	return "ip " + args[0] + " " + args[1] + " " + args[2] + " " + args[len(args)-1]
}

// waitOperUp waits until the kernel reports name operationally up, so the
// first state is not a transitional one.
func waitOperUp(t *testing.T, ns *netnstest.NS, name string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if l, err := ns.Handle.LinkByName(name); err == nil && l.Attrs().OperState == netlink.OperUp {
			return
		}
	}
	t.Fatalf("%s not operationally up", name)
}

func TestWatch(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, netnstest.Prefix(), "lw")
	if err := ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	run(t, ns, "link", "set", "dev", "peer0", "up")
	run(t, ns, "link", "set", "dev", "lan0", "up")
	waitOperUp(t, ns, "lan0")
	idx := index(t, ns, "lan0")
	up := linkwatch.Event{Name: "lan0", Index: idx, Up: true, Reason: "up"}

	w := startWatch(t, ns, "lan0", "wan0")
	w.expect(up, "start")
	w.expect(linkwatch.Event{Name: "wan0", Reason: "link missing"}, "start")
	w.quiet(200 * time.Millisecond) // the ListExisting dump repeats the state: no duplicate

	w.expect(linkwatch.Event{Name: "lan0", Index: idx, Reason: "admin down"}, run(t, ns, "link", "set", "dev", "lan0", "down"))
	w.expect(up, run(t, ns, "link", "set", "dev", "lan0", "up"))
	w.expect(linkwatch.Event{Name: "lan0", Index: idx, Reason: "carrier lost"}, run(t, ns, "link", "set", "dev", "peer0", "down"))
	w.expect(up, run(t, ns, "link", "set", "dev", "peer0", "up"))
	// Changes that do not change the state are not events.
	run(t, ns, "link", "set", "dev", "lan0", "mtu", "1400")
	run(t, ns, "link", "set", "dev", "lan0", "up")
	w.quiet(200 * time.Millisecond)

	// A missing link that appears is reported; a link renamed away and one
	// deleted are removed.
	if err := ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "peer1"}); err != nil {
		t.Fatal(err)
	}
	wanIdx := index(t, ns, "wan0")
	w.expect(linkwatch.Event{Name: "wan0", Index: wanIdx, Reason: "admin down"}, "adding wan0")
	w.expect(linkwatch.Event{Name: "wan0", Index: wanIdx, Reason: "link removed"}, run(t, ns, "link", "set", "dev", "wan0", "name", "wan1"))
	// Deleting an up link: the kernel closes it first (one notification),
	// then removes it.
	del := run(t, ns, "link", "del", "dev", "lan0")
	w.expect(linkwatch.Event{Name: "lan0", Index: idx, Reason: "admin down"}, del)
	w.expect(linkwatch.Event{Name: "lan0", Index: idx, Reason: "link removed"}, del)
	w.quiet(300 * time.Millisecond)
}

func TestWatchBadNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	f, err := os.Open("/dev/null") // a file, not a namespace
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := linkwatch.Watch(ctx, netns.NsHandle(f.Fd()), []string{"lan0"}, make(chan linkwatch.Event)); err == nil {
		t.Errorf("Watch in an invalid namespace returned nil")
	}
}
