package nftsets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

// ruleset is loaded on both units. Only some sets are configured for
// synchronisation; "other" must be left alone.
const ruleset = `
table inet filter {
	set blocklist { type ipv4_addr; flags timeout; }
	set bl6 { type ipv6_addr; flags timeout; }
	set svc { type ipv4_addr . inet_service; flags timeout; }
	map marks { type ipv4_addr : mark; flags timeout; }
	set nets { type ipv4_addr; flags interval; }
	set other { type ipv4_addr; }
	chain input {
		type filter hook input priority 0;
		ip saddr 10.9.0.0/24 add @blocklist { ip saddr timeout 5s }
	}
	chain forward {
		type filter hook forward priority 0;
		ip saddr @blocklist drop
	}
}
`

var (
	refBlock = SetRef{"inet", "filter", "blocklist"}
	refV6    = SetRef{"inet", "filter", "bl6"}
	refSvc   = SetRef{"inet", "filter", "svc"}
	refMarks = SetRef{"inet", "filter", "marks"}
	refNets  = SetRef{"inet", "filter", "nets"}
	refOther = SetRef{"inet", "filter", "other"}
	allRefs  = []SetRef{refBlock, refV6, refSvc, refMarks, refNets}
)

func requireNft(t testing.TB) {
	t.Helper()
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: the nft binary is not installed (tests only)")
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// nft runs an nft command (one argument: a script) in ns.
func nft(t testing.TB, ns *netnstest.NS, script string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "script.nft")
	if err := os.WriteFile(f, []byte(script+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Exec("nft", "-f", f); err != nil {
		t.Fatalf("nft %q: %v", script, err)
	} else if strings.TrimSpace(out) != "" {
		t.Logf("nft: %s", out)
	}
}

func newUnit(t testing.TB, prefix, name string) *netnstest.NS {
	t.Helper()
	ns := netnstest.New(t, prefix, name)
	nft(t, ns, ruleset)
	return ns
}

// snapElem is what the tests compare of an element.
type snapElem struct {
	Timeout time.Duration
	Expires time.Duration
	Data    string
	Comment string
}

// snapshot lists a set through the package's own netlink code.
func snapshot(t testing.TB, ns *netnstest.NS, ref SetRef) map[string]snapElem {
	t.Helper()
	c, err := dial(ns.NsHandle)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	info, err := c.getSet(ref)
	if err != nil {
		t.Fatalf("get %s: %v", ref, err)
	}
	elems, _, _, err := c.listElements(ref, info, nil)
	if err != nil {
		t.Fatalf("list %s: %v", ref, err)
	}
	m := map[string]snapElem{}
	for _, e := range elems {
		m[fmt.Sprintf("%x", EncodeKey(e))] = snapElem{Timeout: e.Timeout, Expires: e.Expires, Data: fmt.Sprintf("%x", e.Data), Comment: e.Comment()}
	}
	return m
}

// sameSets reports how a and b differ, expiries compared within tol.
func sameSets(a, b map[string]snapElem, tol time.Duration) error {
	var diffs []string
	for k, ea := range a {
		eb, ok := b[k]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+k)
		case ea.Timeout != eb.Timeout || ea.Data != eb.Data || ea.Comment != eb.Comment || absDur(ea.Expires-eb.Expires) > tol:
			diffs = append(diffs, fmt.Sprintf("%s: %+v vs %+v", k, ea, eb))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, "extra "+k)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

func waitFor(t testing.TB, within time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recorder keeps the changes a Source reported.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) add(ch []Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range ch {
		c.Key = append([]byte(nil), c.Key...)
		c.Value = append([]byte(nil), c.Value...)
		r.changes = append(r.changes, c)
	}
}

func (r *recorder) deleted(table string, key []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		if !c.Put && c.Table == table && string(c.Key) == string(key) {
			return true
		}
	}
	return false
}

// link runs src into sink (the test stands in for the replication engine)
// until the returned stop is called or the test ends.
func link(t testing.TB, src *Source, sink *Sink) (*recorder, func()) {
	t.Helper()
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(ch []Change) {
			rec.add(ch)
			for _, c := range ch {
				if c.Put {
					sink.Put(c.Table, c.Key, c.Value)
				} else {
					sink.Delete(c.Table, c.Key)
				}
			}
		})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Source.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return rec, stop
}

func openPair(t testing.TB, a, b *netnstest.NS, refs []SetRef) (*Source, *Sink) {
	t.Helper()
	src, err := OpenSource(a.NsHandle, refs, testLogger(t))
	if err != nil {
		t.Fatalf("OpenSource: %v", err)
	}
	src.PollInterval = 50 * time.Millisecond
	sink, err := OpenSink(b.NsHandle, refs, testLogger(t))
	if err != nil {
		t.Fatalf("OpenSink: %v", err)
	}
	t.Cleanup(func() {
		if err := sink.Close(); err != nil {
			t.Errorf("Sink.Close: %v", err)
		}
	})
	return src, sink
}

func converged(t testing.TB, a, b *netnstest.NS, refs ...SetRef) func() error {
	return func() error {
		for _, r := range refs {
			if err := sameSets(snapshot(t, a, r), snapshot(t, b, r), 2*time.Second); err != nil {
				return fmt.Errorf("%s: %w", r, err)
			}
		}
		return nil
	}
}

func TestOpenErrors(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	a := newUnit(t, p, "a")
	nft(t, a, "add map inet filter vm { type ipv4_addr : verdict; }")
	cases := []struct {
		ref  SetRef
		want string
	}{
		{SetRef{"inet", "filter", "nope"}, "nft set inet/filter/nope does not exist: create it or remove it from sync.nft_sets"},
		{SetRef{"inet", "nope", "blocklist"}, "nft set inet/nope/blocklist does not exist"},
		{SetRef{"ip", "filter", "blocklist"}, "nft set ip/filter/blocklist does not exist"},
		{SetRef{"inet", "filter", "vm"}, "verdict maps are not supported"},
		{SetRef{"inet", "filter", "b l"}, "character"},
	}
	for _, c := range cases {
		_, err := OpenSource(a.NsHandle, []SetRef{refBlock, c.ref}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("OpenSource(%v) = %v, want %q", c.ref, err, c.want)
		}
		_, err = OpenSink(a.NsHandle, []SetRef{c.ref}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("OpenSink(%v) = %v, want %q", c.ref, err, c.want)
		}
	}
	if _, err := OpenSource(a.NsHandle, []SetRef{refBlock, refBlock}, nil); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestSyncElements(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	a, b := newUnit(t, p, "a"), newUnit(t, p, "b")
	nft(t, a, "add element inet filter blocklist { 10.0.0.1, 10.0.0.2 timeout 1h expires 30m comment \"ips: scan\" }")
	nft(t, b, "add element inet filter other { 192.0.2.1 }")
	src, sink := openPair(t, a, b, allRefs)
	rec, _ := link(t, src, sink)

	// The initial listing.
	waitFor(t, 3*time.Second, "initial listing on B", converged(t, a, b, refBlock))
	got := snapshot(t, b, refBlock)[fmt.Sprintf("%x", EncodeKey(Element{Key: []byte{10, 0, 0, 2}}))]
	if got.Timeout != time.Hour || absDur(got.Expires-30*time.Minute) > 5*time.Second || got.Comment != "ips: scan" {
		t.Errorf("10.0.0.2 on B: %+v, want timeout 1h, expires ~30m, comment", got)
	}
	out, err := b.Exec("nft", "list", "set", "inet", "filter", "blocklist")
	if err != nil || !strings.Contains(out, `10.0.0.2 timeout 1h expires 29m5`) || !strings.Contains(out, `comment "ips: scan"`) {
		t.Errorf("nft list on B: %v\n%s", err, out)
	}

	// Live changes from netlink, each kind of set.
	start := time.Now()
	nft(t, a, "add element inet filter blocklist { 10.0.0.3 timeout 2s, 10.0.0.4 timeout 10m }")
	waitFor(t, 2*time.Second, "added elements on B", converged(t, a, b, refBlock))
	t.Logf("netlink add reached B after %v", time.Since(start))
	nft(t, a, `add element inet filter bl6 { 2001:db8::1 timeout 1h, 2001:db8::2 }
add element inet filter svc { 10.0.0.5 . 443 timeout 1h, 10.0.0.6 . 22 }
add element inet filter marks { 10.0.0.7 timeout 1h : 0x2a, 10.0.0.8 : 7 }
add element inet filter nets { 10.1.0.0/16, 10.2.3.4 }`)
	waitFor(t, 2*time.Second, "all kinds of sets on B", converged(t, a, b, allRefs...))
	for _, check := range []struct{ args, want string }{
		{"bl6", "2001:db8::1 timeout 1h"},
		{"svc", "10.0.0.5 . 443 timeout 1h"},
		{"marks", "10.0.0.7 timeout 1h expires"},
		{"nets", "10.1.0.0/16"},
	} {
		out, err := b.Exec("nft", "list", "set", "inet", "filter", check.args)
		if check.args == "marks" {
			out, err = b.Exec("nft", "list", "map", "inet", "filter", check.args)
		}
		if err != nil || !strings.Contains(out, check.want) {
			t.Errorf("B's %s lacks %q: %v\n%s", check.args, check.want, err, out)
		}
	}

	// Deletes.
	nft(t, a, "delete element inet filter blocklist { 10.0.0.1 }\ndelete element inet filter svc { 10.0.0.6 . 22 }\ndelete element inet filter nets { 10.1.0.0/16 }")
	waitFor(t, 2*time.Second, "deletes on B", converged(t, a, b, allRefs...))
	if len(snapshot(t, b, refBlock)) != 3 {
		t.Errorf("B's blocklist: %v", snapshot(t, b, refBlock))
	}

	// Expiry: 10.0.0.3 (2s) goes on A, so on B, and the Source says so.
	k3 := EncodeKey(Element{Key: []byte{10, 0, 0, 3}})
	waitFor(t, 4*time.Second, "10.0.0.3 expired and deleted", func() error {
		if !rec.deleted(refBlock.ReplTable(), k3) {
			return errors.New("no Delete from the Source")
		}
		if _, ok := snapshot(t, b, refBlock)[fmt.Sprintf("%x", k3)]; ok {
			return errors.New("still on B")
		}
		return nil
	})

	// A refresh (re-add with a new timeout) moves the expiry on B.
	nft(t, a, "delete element inet filter blocklist { 10.0.0.4 }\nadd element inet filter blocklist { 10.0.0.4 timeout 2h }")
	waitFor(t, 2*time.Second, "refreshed 10.0.0.4", converged(t, a, b, refBlock))

	// The set that is not configured is untouched.
	if o := snapshot(t, b, refOther); len(o) != 1 {
		t.Errorf("B's unconfigured set changed: %v", o)
	}
	if err := sink.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

// TestSyncFromPacketPath: elements that a rule adds ("add @blocklist
// { ip saddr timeout 5s }") for real packets produce no netlink event; the
// poll finds them.
func TestSyncFromPacketPath(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	a, b := newUnit(t, p, "a"), newUnit(t, p, "b")
	cl := netnstest.New(t, p, "cl")
	netnstest.VethPair(t, cl, "eth0", a, "eth0")
	mustExec(t, cl, "ip", "addr", "add", "10.9.0.2/24", "dev", "eth0")
	mustExec(t, a, "ip", "addr", "add", "10.9.0.1/24", "dev", "eth0")

	src, sink := openPair(t, a, b, []SetRef{refBlock})
	link(t, src, sink)
	start := time.Now()
	if out, err := cl.Exec("ping", "-c", "1", "-W", "2", "10.9.0.1"); err != nil {
		t.Fatalf("ping A: %v\n%s", err, out)
	}
	k := fmt.Sprintf("%x", EncodeKey(Element{Key: []byte{10, 9, 0, 2}}))
	waitFor(t, 2*time.Second, "rule-added element on B", func() error {
		e, ok := snapshot(t, b, refBlock)[k]
		if !ok {
			return errors.New("not on B")
		}
		if e.Timeout != 5*time.Second || e.Expires > 5*time.Second || e.Expires < 3*time.Second {
			return fmt.Errorf("B has %+v, want timeout 5s, expires 3-5s", e)
		}
		return nil
	})
	t.Logf("packet-path add reached B after %v", time.Since(start))
	// It expires on A after 5 s and goes on B.
	waitFor(t, 7*time.Second, "rule-added element expired", func() error {
		if len(snapshot(t, b, refBlock)) != 0 {
			return errors.New("still on B")
		}
		return nil
	})
}

func mustExec(t testing.TB, ns *netnstest.NS, name string, args ...string) {
	t.Helper()
	if out, err := ns.Exec(name, args...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestResync: after changes B missed (link down) and a stray element on B,
// a Reset and a fresh listing make B equal to A, and the Sink never
// empties the set on the way.
func TestResync(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	a, b := newUnit(t, p, "a"), newUnit(t, p, "b")
	nft(t, a, "add element inet filter blocklist { 10.0.0.1, 10.0.0.2 timeout 1h, 10.0.0.3 }")
	nft(t, b, "add element inet filter other { 192.0.2.1 }")
	src, sink := openPair(t, a, b, []SetRef{refBlock, refSvc})
	_, stop := link(t, src, sink)
	waitFor(t, 3*time.Second, "first sync", converged(t, a, b, refBlock))
	stop()

	// While the link is down: A changes, and B gets a stray element.
	nft(t, a, "delete element inet filter blocklist { 10.0.0.3 }\nadd element inet filter blocklist { 10.0.0.4 timeout 30m }\nadd element inet filter svc { 10.0.0.5 . 80 }")
	nft(t, b, "add element inet filter blocklist { 10.0.0.99 }")

	// Resynchronisation: Reset, then the full listing of a new Run.
	sink.Reset(refBlock.ReplTable())
	sink.Reset(refSvc.ReplTable())
	link(t, src, sink)
	// Until the resync settles, B keeps what both units have.
	time.Sleep(20 * time.Millisecond)
	if _, ok := snapshot(t, b, refBlock)[fmt.Sprintf("%x", EncodeKey(Element{Key: []byte{10, 0, 0, 1}}))]; !ok {
		t.Errorf("B dropped 10.0.0.1 during the resync")
	}
	waitFor(t, 3*time.Second, "B equals A after the resync", converged(t, a, b, refBlock, refSvc))
	if err := sink.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
	if o := snapshot(t, b, refOther); len(o) != 1 {
		t.Errorf("B's unconfigured set changed: %v", o)
	}
}

// TestSinkEdges: stale and foreign input.
func TestSinkEdges(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	b := newUnit(t, p, "b")
	sink, err := OpenSink(b.NsHandle, []SetRef{refBlock}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tbl := refBlock.ReplTable()
	now := time.Now()
	put := func(table string, e Element, at time.Time) { sink.Put(table, EncodeKey(e), EncodeValue(e, at)) }
	// Encoded 10 minutes ago with 5 minutes left: elapsed, skipped.
	put(tbl, Element{Key: []byte{10, 0, 0, 1}, Timeout: time.Hour, Expires: 5 * time.Minute}, now.Add(-10*time.Minute))
	// Encoded 10 minutes ago with 15 minutes left: 5 left.
	put(tbl, Element{Key: []byte{10, 0, 0, 2}, Timeout: time.Hour, Expires: 15 * time.Minute}, now.Add(-10*time.Minute))
	// Foreign table, undecodable value, wrong key length: dropped.
	put("nftset:inet:filter:other", Element{Key: []byte{10, 0, 0, 3}}, now)
	sink.Put(tbl, EncodeKey(Element{Key: []byte{10, 0, 0, 4}}), []byte{9, 9})
	put(tbl, Element{Key: []byte{10, 0, 0, 5, 1}}, now)
	put(tbl, Element{Key: []byte{10, 0, 0, 6}}, now)
	if err := sink.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	got := snapshot(t, b, refBlock)
	if len(got) != 2 {
		t.Errorf("B's blocklist: %v, want 10.0.0.2 and 10.0.0.6", got)
	}
	e2 := got[fmt.Sprintf("%x", EncodeKey(Element{Key: []byte{10, 0, 0, 2}}))]
	if e2.Timeout != time.Hour || absDur(e2.Expires-5*time.Minute) > 2*time.Second {
		t.Errorf("10.0.0.2: %+v, want timeout 1h expires ~5m", e2)
	}
	if o := snapshot(t, b, refOther); len(o) != 0 {
		t.Errorf("unconfigured set changed: %v", o)
	}
	// A delete of an element that is not there, and one that expired on
	// its own, are no error.
	sink.Delete(tbl, EncodeKey(Element{Key: []byte{10, 0, 0, 77}}))
	put(tbl, Element{Key: []byte{10, 0, 0, 8}, Timeout: 100 * time.Millisecond, Expires: 100 * time.Millisecond}, time.Now())
	if err := sink.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	sink.Delete(tbl, EncodeKey(Element{Key: []byte{10, 0, 0, 8}}))
	sink.Delete(tbl, EncodeKey(Element{Key: []byte{10, 0, 0, 6}}))
	if err := sink.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if got := snapshot(t, b, refBlock); len(got) != 1 {
		t.Errorf("B's blocklist: %v, want 10.0.0.2 only", got)
	}
	// The set deleted behind the Sink's back: Flush reports it, and the
	// Sink recovers when it is back.
	nft(t, b, "delete table inet filter")
	put(tbl, Element{Key: []byte{10, 0, 0, 9}}, time.Now())
	if err := sink.Flush(); err == nil {
		t.Errorf("Flush with the set deleted: no error")
	}
	nft(t, b, ruleset)
	waitFor(t, 3*time.Second, "recovered", func() error {
		if err := sink.Flush(); err != nil {
			return err
		}
		if got := snapshot(t, b, refBlock); len(got) != 2 {
			return fmt.Errorf("B's blocklist: %v, want 10.0.0.2 and 10.0.0.9", got)
		}
		return nil
	})
	if err := sink.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := sink.Flush(); err == nil {
		t.Errorf("Flush after Close: no error")
	}
	sink.Put(tbl, EncodeKey(Element{Key: []byte{1, 1, 1, 1}}), EncodeValue(Element{Key: []byte{1, 1, 1, 1}}, now)) // no panic
}

// TestTrafficAfterSync: client — fw-b — server, where fw-b is the STANDBY
// that received the blocklist. A blocked client address is dropped, an
// unblocked one passes.
func TestTrafficAfterSync(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	a, fwb := newUnit(t, p, "a"), newUnit(t, p, "fwb")
	cl, srv := netnstest.New(t, p, "cl"), netnstest.New(t, p, "srv")
	netnstest.VethPair(t, cl, "eth0", fwb, "lan0")
	netnstest.VethPair(t, fwb, "wan0", srv, "eth0")
	mustExec(t, cl, "ip", "addr", "add", "10.1.0.2/24", "dev", "eth0")
	mustExec(t, cl, "ip", "addr", "add", "10.1.0.3/24", "dev", "eth0")
	mustExec(t, cl, "ip", "route", "add", "default", "via", "10.1.0.1")
	mustExec(t, fwb, "ip", "addr", "add", "10.1.0.1/24", "dev", "lan0")
	mustExec(t, fwb, "ip", "addr", "add", "10.2.0.1/24", "dev", "wan0")
	mustExec(t, fwb, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	mustExec(t, srv, "ip", "addr", "add", "10.2.0.2/24", "dev", "eth0")
	mustExec(t, srv, "ip", "route", "add", "default", "via", "10.2.0.1")

	// A TCP server in srv.
	var ln net.Listener
	if err := srv.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "10.2.0.2:8080")
		return err
	}); err != nil {
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
	connect := func(from string) error {
		return cl.Do(func() error {
			d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(from), 0))}
			c, err := d.Dial("tcp", "10.2.0.2:8080")
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	for _, from := range []string{"10.1.0.2", "10.1.0.3"} {
		if err := connect(from); err != nil {
			t.Fatalf("before any block, %s cannot connect: %v", from, err)
		}
	}

	src, sink := openPair(t, a, fwb, []SetRef{refBlock})
	link(t, src, sink)
	nft(t, a, "add element inet filter blocklist { 10.1.0.2 timeout 1h }")
	waitFor(t, 2*time.Second, "blocklist on fw-b", converged(t, a, fwb, refBlock))

	if err := connect("10.1.0.2"); err == nil {
		t.Errorf("blocked 10.1.0.2 connected through fw-b")
	}
	if out, err := cl.Exec("ping", "-c", "1", "-W", "1", "-I", "10.1.0.2", "10.2.0.2"); err == nil {
		t.Errorf("blocked 10.1.0.2 pings through fw-b:\n%s", out)
	}
	if err := connect("10.1.0.3"); err != nil {
		t.Errorf("unblocked 10.1.0.3 cannot connect through fw-b: %v", err)
	}
	if out, err := cl.Exec("ping", "-c", "1", "-W", "1", "-I", "10.1.0.3", "10.2.0.2"); err != nil {
		t.Errorf("unblocked 10.1.0.3 cannot ping through fw-b: %v\n%s", err, out)
	}
}

// BenchmarkConverge10k: 10,000 elements added on A in one transaction
// (nft -f), time until B holds them all (the Source has reported them and
// the Sink's Flush has returned; B's set is then checked): ms/converge from
// the start of nft, ms/after-nft from its exit (nft itself takes 0.1-0.3 s
// to parse and commit them).
func BenchmarkConverge10k(b *testing.B) {
	requireNft(b)
	p := netnstest.Prefix()
	na, nb := newUnit(b, p, "a"), newUnit(b, p, "b")
	src, err := OpenSource(na.NsHandle, []SetRef{refBlock}, nil)
	if err != nil {
		b.Fatal(err)
	}
	sink, err := OpenSink(nb.NsHandle, []SetRef{refBlock}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	const n = 10000
	var mu sync.Mutex
	puts, dels := 0, 0
	reached := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = src.Run(ctx, func(ch []Change) {
			for _, c := range ch {
				if c.Put {
					sink.Put(c.Table, c.Key, c.Value)
				} else {
					sink.Delete(c.Table, c.Key)
				}
			}
			mu.Lock()
			for _, c := range ch {
				if c.Put {
					puts++
				} else {
					dels++
				}
			}
			if puts == n || dels == n {
				puts, dels = 0, 0
				reached <- struct{}{}
			}
			mu.Unlock()
		})
	}()
	defer func() { cancel(); <-done }()

	var sb strings.Builder
	sb.WriteString("add element inet filter blocklist {")
	for i := range n {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, " 10.%d.%d.%d timeout 1h", 100+i/65536, (i/256)%256, i%256)
	}
	sb.WriteString(" }")
	f := filepath.Join(b.TempDir(), "add.nft")
	if err := os.WriteFile(f, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	converge := func() {
		select {
		case <-reached:
		case <-time.After(30 * time.Second):
			b.Fatal("the Source did not report the change")
		}
		if err := sink.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	var total, afterNft time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		if i > 0 {
			nft(b, na, "flush set inet filter blocklist")
			converge()
		}
		b.StartTimer()
		start := time.Now()
		if out, err := na.Exec("nft", "-f", f); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
		exited := time.Now()
		converge()
		total += time.Since(start)
		afterNft += time.Since(exited)
		b.StopTimer()
		if got := len(snapshot(b, nb, refBlock)); got != n {
			b.Fatalf("B has %d elements, want %d", got, n)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/converge")
	b.ReportMetric(float64(afterNft.Milliseconds())/float64(b.N), "ms/after-nft")
}

// BenchmarkList10k: what one poll of a Source costs for a set of 10,000
// elements (the listing; the diff adds little when nothing changed).
func BenchmarkList10k(b *testing.B) {
	requireNft(b)
	p := netnstest.Prefix()
	a := newUnit(b, p, "a")
	var elems []Element
	for i := range 10000 {
		elems = append(elems, Element{Key: []byte{10, byte(100 + i/65536), byte(i / 256), byte(i)}, Timeout: time.Hour, Expires: time.Hour})
	}
	c, err := dial(a.NsHandle)
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	if err := c.commit([]setOps{{ref: refBlock, kind: opAdd, elems: elems}}); err != nil {
		b.Fatal(err)
	}
	src, err := OpenSource(a.NsHandle, []SetRef{refBlock}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, st := range src.sets {
		st.known = map[string]*seen{}
	}
	changes := 0
	out := func(ch []Change) { changes += len(ch) }
	if _, err := src.poll(c, out); err != nil || changes != 10000 {
		b.Fatalf("first poll: %d changes, %v", changes, err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := src.poll(c, out); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if changes != 10000 {
		b.Errorf("%d changes while nothing changed", changes-10000)
	}
}

// TestSinkWithoutDestroy: on kernels before 6.3 deletes are DELSETELEM,
// which fails for an element that is gone already; the Sink converges and
// Flush reports success.
func TestSinkWithoutDestroy(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	b := newUnit(t, p, "b")
	sink, err := OpenSink(b.NsHandle, []SetRef{refBlock}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.conn.useDestroy = false // before any change: the worker is idle
	tbl := refBlock.ReplTable()
	for _, ip := range [][]byte{{10, 0, 0, 1}, {10, 0, 0, 2}} {
		e := Element{Key: ip, Timeout: time.Hour, Expires: time.Hour}
		sink.Put(tbl, EncodeKey(e), EncodeValue(e, time.Now()))
	}
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	nft(t, b, "delete element inet filter blocklist { 10.0.0.1 }") // behind the Sink's back
	sink.Delete(tbl, EncodeKey(Element{Key: []byte{10, 0, 0, 1}}))
	e := Element{Key: []byte{10, 0, 0, 3}}
	sink.Put(tbl, EncodeKey(e), EncodeValue(e, time.Now()))
	if err := sink.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	got := snapshot(t, b, refBlock)
	if len(got) != 2 {
		t.Errorf("B's blocklist: %v, want 10.0.0.2 and 10.0.0.3", got)
	}
}

// TestSinkKeepsAndRefills: what B's set holds before the first Reset is
// kept; after it, a ruleset reload on B (which empties the set) is noticed
// and the set refilled without any new change.
func TestSinkKeepsAndRefills(t *testing.T) {
	requireNft(t)
	p := netnstest.Prefix()
	b := newUnit(t, p, "b")
	nft(t, b, "add element inet filter blocklist { 10.0.0.50 }")
	sink, err := OpenSink(b.NsHandle, []SetRef{refBlock}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tbl := refBlock.ReplTable()
	put := func(ip byte) {
		e := Element{Key: []byte{10, 0, 0, ip}, Timeout: time.Hour, Expires: time.Hour}
		sink.Put(tbl, EncodeKey(e), EncodeValue(e, time.Now()))
	}
	put(1)
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, b, refBlock); len(got) != 2 {
		t.Fatalf("before a Reset: %v, want 10.0.0.50 kept and 10.0.0.1", got)
	}
	sink.Reset(tbl)
	put(1)
	put(2)
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, b, refBlock); len(got) != 2 || hasKey(got, 10, 0, 0, 50) {
		t.Fatalf("after a Reset: %v, want 10.0.0.1 and 10.0.0.2", got)
	}
	// A reload of B's ruleset.
	nft(t, b, "delete table inet filter\n"+ruleset)
	waitFor(t, 4*time.Second, "refilled after a reload", func() error {
		if got := snapshot(t, b, refBlock); len(got) != 2 {
			return fmt.Errorf("B's blocklist: %v", got)
		}
		return nil
	})
}

func hasKey(m map[string]snapElem, key ...byte) bool {
	_, ok := m[fmt.Sprintf("%x", EncodeKey(Element{Key: key}))]
	return ok
}
