// Package netnstest gives real-kernel tests their own network namespaces.
//
// Every adapter of tandem (addresses, links, ARP/NDP, conntrack, nftables,
// sockets) is tested against the real kernel inside namespaces that the test
// creates and removes. This package is the one place that knows how: it skips
// a test with a clear reason when the process is not root, gives each run a
// unique name prefix so parallel runs and several labs never collide, and
// registers cleanup that runs even when the test fails.
//
// It must never touch a namespace or link it did not create, and it must
// never be imported by non-test code paths of the daemon.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips t with the reason when the process cannot create
// network namespaces. CI runs as root, so these tests run there.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces (CI runs it as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: iproute2 'ip' not found; install iproute2")
	}
}

// Prefix returns a short per-run prefix ("tdab12") for namespace and link
// names. Interface names are limited to 15 bytes, so keep what follows short.
func Prefix() string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return "td" + hex.EncodeToString(b[:])
}

// NS is a named network namespace created for one test.
type NS struct {
	Name string
	// Handle is a netlink handle bound to the namespace.
	Handle *netlink.Handle
	// NsHandle is the namespace file handle, for netlink.NewHandleAt and
	// for moving links into the namespace.
	NsHandle netns.NsHandle
}

// New creates the namespace prefix+"-"+name, brings its loopback up, and
// removes it when the test ends (pass or fail).
func New(t testing.TB, prefix, name string) *NS {
	t.Helper()
	full := prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", full, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", full).Run() })
	nsh, err := netns.GetFromName(full)
	if err != nil {
		t.Fatalf("open netns %s: %v", full, err)
	}
	t.Cleanup(func() { nsh.Close() })
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", full, err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bring lo up in %s: %v", full, err)
	}
	return &NS{Name: full, Handle: h, NsHandle: nsh}
}

// Do runs fn with the calling goroutine's OS thread switched into the
// namespace, so sockets fn opens belong to it. The thread is switched back
// (and stays locked only for the duration of fn).
func (ns *NS) Do(fn func() error) error {
	return Do(ns.NsHandle, fn)
}

// Do runs fn inside the namespace nsh on a locked OS thread.
func Do(nsh netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(nsh); err != nil {
		return fmt.Errorf("enter netns: %w", err)
	}
	defer func() { _ = netns.Set(orig) }()
	return fn()
}

// Exec runs a command inside the namespace ("ip netns exec") and returns its
// combined output; a failure includes the output in the error.
func (ns *NS) Exec(name string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", ns.Name, name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, out)
	}
	return string(out), nil
}

// VethPair creates a veth pair with one end in a and the other in b, both up,
// and returns the two link names. Names are "<aName>" in a and "<bName>" in b.
func VethPair(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	tmpA, tmpB := Prefix()+"a", Prefix()+"b"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmpA}, PeerName: tmpB}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", tmpA, tmpB, err)
	}
	move := func(tmp string, ns *NS, name string) {
		l, err := netlink.LinkByName(tmp)
		if err != nil {
			t.Fatalf("find %s: %v", tmp, err)
		}
		if err := netlink.LinkSetNsFd(l, int(ns.NsHandle)); err != nil {
			_ = netlink.LinkDel(l)
			t.Fatalf("move %s into %s: %v", tmp, ns.Name, err)
		}
		l, err = ns.Handle.LinkByName(tmp)
		if err != nil {
			t.Fatalf("find %s in %s: %v", tmp, ns.Name, err)
		}
		if err := ns.Handle.LinkSetName(l, name); err != nil {
			t.Fatalf("rename %s to %s in %s: %v", tmp, name, ns.Name, err)
		}
		if err := ns.Handle.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up in %s: %v", name, ns.Name, err)
		}
	}
	move(tmpA, a, aName)
	move(tmpB, b, bName)
}
