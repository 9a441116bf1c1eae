package syncchan

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain fails the run if any goroutine of the package (not of its
// tests) outlives the tests: every Link is stopped by its test.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitNoPackageGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of package syncchan leaked:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	testKey  = bytes.Repeat([]byte("tandem-test-key!"), 2)
	otherKey = bytes.Repeat([]byte("another-test-key"), 2)

	primaryIP   = netip.MustParseAddr("127.0.0.1")
	secondaryIP = netip.MustParseAddr("127.0.0.2")
	proxyIP     = netip.MustParseAddr("127.0.0.3")
	strangerIP  = netip.MustParseAddr("127.0.0.4")
)

// packageGoroutines returns the stacks of goroutines running code of the
// package's non-test files.
func packageGoroutines() string {
	var out []string
	for _, g := range strings.Split(allStacks(), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if i := strings.Index(line, "/internal/syncchan/"); i >= 0 && strings.Contains(line, ".go:") && !strings.Contains(line, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

func waitNoPackageGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		s := packageGoroutines()
		if s == "" || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logBuf collects a link's log.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testConfig(role uint8) Config {
	c := Config{
		Key: testKey, ClusterID: 7, Role: role,
		IdleTimeout:      500 * time.Millisecond,
		DialTimeout:      500 * time.Millisecond,
		HandshakeTimeout: time.Second,
		Hello:            Hello{Software: [3]uint8{1, 2, 3}, Schema: 4, BootID: uint64(role) << 32},
	}
	if role == RolePrimary {
		c.Local = netip.AddrPortFrom(primaryIP, 0)
	} else {
		c.Local = netip.AddrPortFrom(secondaryIP, 0)
		c.Peer = netip.AddrPortFrom(primaryIP, 0)
	}
	return c
}

// runner runs one Link for a test and records its events.
type runner struct {
	t      testing.TB
	name   string
	l      *Link
	logs   *logBuf
	cancel context.CancelFunc
	done   chan struct{}
	err    error

	mu   sync.Mutex
	seen []Event // every event read so far
}

// startLink starts a link with cfg; before, if given, runs before Run.
func startLink(t testing.TB, name string, cfg Config, before ...func(*Link)) *runner {
	t.Helper()
	r := &runner{t: t, name: name, logs: &logBuf{}, done: make(chan struct{})}
	cfg.Logger = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatalf("%s: NewLink: %v", name, err)
	}
	for _, f := range before {
		f(l)
	}
	r.l = l
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.err = l.Run(ctx)
	}()
	t.Cleanup(r.stop)
	if cfg.Role == RoleSecondary {
		deadline := time.Now().Add(5 * time.Second)
		for !l.Addr().IsValid() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not listening after 5s", name)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return r
}

// stop ends Run and checks that it returns nil, promptly.
func (r *runner) stop() {
	r.cancel()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-r.l.Events():
			if ok {
				continue
			}
			select {
			case <-r.done:
			case <-timeout:
				r.t.Errorf("%s: Run did not return 5s after cancel", r.name)
				return
			}
			if r.err != nil {
				r.t.Errorf("%s: Run returned %v after cancel; want nil", r.name, r.err)
			}
			return
		case <-timeout:
			r.t.Errorf("%s: Events not closed 5s after cancel", r.name)
			return
		}
	}
}

// next returns the next event within d, or ok false.
func (r *runner) next(d time.Duration) (Event, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case ev, ok := <-r.l.Events():
		if !ok {
			return Event{}, false
		}
		r.mu.Lock()
		r.seen = append(r.seen, ev)
		r.mu.Unlock()
		return ev, true
	case <-t.C:
		return Event{}, false
	}
}

// waitFor reads events until one of kind k, within d; it fails the test
// on a Frame event unless frames are allowed.
func (r *runner) waitFor(k Kind, d time.Duration) Event {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			r.t.Fatalf("%s: no %v event within %v; events so far: %v\nlog:\n%s", r.name, k, d, r.kinds(), r.logs)
		}
		ev, ok := r.next(left)
		if !ok {
			continue
		}
		if ev.Kind == k {
			return ev
		}
		if ev.Kind == Frame {
			r.t.Fatalf("%s: unexpected Frame event (%d bytes) while waiting for %v", r.name, len(ev.Frame), k)
		}
	}
}

// quiet checks that no event other than the allowed kinds arrives for d.
func (r *runner) quiet(d time.Duration, allowed ...Kind) {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		ev, ok := r.next(left)
		if !ok {
			continue
		}
		if !containsKind(allowed, ev.Kind) {
			r.t.Fatalf("%s: unexpected %v event (err %v)", r.name, ev.Kind, ev.Err)
		}
	}
}

func containsKind(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func (r *runner) kinds() []Kind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []Kind
	for _, ev := range r.seen {
		ks = append(ks, ev.Kind)
	}
	return ks
}

// recv reads n Frame events within d and returns their payloads; other
// events fail the test.
func (r *runner) recv(n int, d time.Duration) [][]byte {
	r.t.Helper()
	deadline := time.Now().Add(d)
	var got [][]byte
	for len(got) < n {
		left := time.Until(deadline)
		if left <= 0 {
			r.t.Fatalf("%s: got %d of %d frames within %v", r.name, len(got), n, d)
		}
		ev, ok := r.next(left)
		if !ok {
			continue
		}
		if ev.Kind != Frame {
			r.t.Fatalf("%s: %v event (err %v) while receiving frames", r.name, ev.Kind, ev.Err)
		}
		got = append(got, ev.Frame)
	}
	return got
}

// sendFrames sends frames in batches, waiting on Writable on backpressure.
func sendFrames(l *Link, frames [][]byte, batch int) error {
	for i := 0; i < len(frames); {
		j := min(i+batch, len(frames))
		err := l.Send(frames[i:j]...)
		switch {
		case err == nil:
			i = j
		case errors.Is(err, ErrBackpressure):
			select {
			case <-l.Writable():
			case <-time.After(5 * time.Second):
				return errors.New("Writable not ready within 5s")
			}
		default:
			return fmt.Errorf("Send: %w", err)
		}
	}
	return nil
}

func sendAll(t testing.TB, l *Link, frames [][]byte, batch int) {
	t.Helper()
	if err := sendFrames(l, frames, batch); err != nil {
		t.Fatal(err)
	}
}

// startPair starts a secondary, then a primary dialing it, and waits for
// both to be up. mut, if given, change the configs first.
func startPair(t testing.TB, mutP, mutS func(*Config)) (p, s *runner) {
	t.Helper()
	sc := testConfig(RoleSecondary)
	if mutS != nil {
		mutS(&sc)
	}
	s = startLink(t, "secondary", sc)
	pc := testConfig(RolePrimary)
	pc.Peer = s.l.Addr()
	if mutP != nil {
		mutP(&pc)
	}
	p = startLink(t, "primary", pc)
	return p, s
}

func waitUp(t testing.TB, rs ...*runner) []Event {
	t.Helper()
	var evs []Event
	for _, r := range rs {
		evs = append(evs, r.waitFor(Up, 5*time.Second))
	}
	return evs
}

// fakePeer is a Link that is never Run: tests use its handshake to play a
// genuine (keyed) peer that then misbehaves on the raw stream.
func fakePeer(t testing.TB, cfg Config) *Link {
	t.Helper()
	cfg.Logger = slog.New(slog.DiscardHandler)
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// dialFrom opens a TCP connection from the address from.
func dialFrom(t testing.TB, from netip.Addr, to netip.AddrPort) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		t.Fatalf("dial %v from %v: %v", to, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAllFrames reads handshake-phase frames until the stream ends and
// returns their types and the final error.
func readAllFrames(r io.Reader) ([]frameType, error) {
	fr := &frameReader{r: bufio.NewReader(r), max: 1 << 20}
	var ts []frameType
	for {
		t, _, err := fr.next(false)
		if err != nil {
			return ts, err
		}
		ts = append(ts, t)
	}
}

// proxy forwards TCP between a listener and a target, dialing from a
// given address; tests cut or stall it.
type proxy struct {
	t       testing.TB
	ln      net.Listener
	target  netip.AddrPort
	from    netip.Addr
	wg      sync.WaitGroup
	accDone chan struct{}

	refuse atomic.Bool // close new connections at once

	mu    sync.Mutex
	pairs map[*pipePair]bool
}

type pipePair struct {
	a, b    net.Conn
	stalled atomic.Bool
	closed  chan struct{}
	once    sync.Once
}

func (p *pipePair) close() {
	p.once.Do(func() {
		close(p.closed)
		p.a.Close()
		p.b.Close()
	})
}

func newProxy(t testing.TB, target netip.AddrPort, from netip.Addr) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(proxyIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	px := &proxy{t: t, ln: ln, target: target, from: from, pairs: map[*pipePair]bool{}, accDone: make(chan struct{})}
	go px.accept()
	t.Cleanup(px.close)
	return px
}

func (px *proxy) addr() netip.AddrPort { return addrPortOf(px.ln.Addr()) }

func (px *proxy) accept() {
	defer close(px.accDone)
	for {
		a, err := px.ln.Accept()
		if err != nil {
			return
		}
		if px.refuse.Load() {
			a.Close()
			continue
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(px.from, 0)), Timeout: time.Second}
		b, err := d.Dial("tcp", px.target.String())
		if err != nil {
			a.Close()
			continue
		}
		p := &pipePair{a: a, b: b, closed: make(chan struct{})}
		px.mu.Lock()
		px.pairs[p] = true
		px.mu.Unlock()
		px.wg.Add(2)
		go px.pipe(p, a, b)
		go px.pipe(p, b, a)
	}
}

// pipe copies src to dst. Once the pair is stalled it forwards nothing and
// ignores the ends closing: both ends see silence until the pair is cut.
func (px *proxy) pipe(p *pipePair, src, dst net.Conn) {
	defer px.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.stalled.Load() {
			<-p.closed
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				p.close()
				return
			}
		}
		if err != nil {
			p.close()
			return
		}
	}
}

// cut closes every forwarded connection.
func (px *proxy) cut() {
	px.mu.Lock()
	defer px.mu.Unlock()
	for p := range px.pairs {
		p.close()
		delete(px.pairs, p)
	}
}

// stall stops forwarding on every current connection (new ones pass).
func (px *proxy) stall() {
	px.mu.Lock()
	defer px.mu.Unlock()
	for p := range px.pairs {
		p.stalled.Store(true)
	}
}

func (px *proxy) close() {
	px.ln.Close()
	<-px.accDone
	px.cut()
	px.wg.Wait()
}

func newBufReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
