package syncchan

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func numbered(n, size int, tag byte) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		f := make([]byte, size+i%7)
		if len(f) >= 5 {
			f[0] = tag
			binary.BigEndian.PutUint32(f[1:], uint32(i))
		}
		frames[i] = f
	}
	return frames
}

// checkFrames compares frames (cmp.Diff is slow on megabytes).
func checkFrames(t *testing.T, who string, want, got [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s received %d frames; want %d", who, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: frame %d differs: got %d bytes %.16x..., want %d bytes %.16x...", who, i, len(got[i]), got[i], len(want[i]), want[i])
		}
	}
}

func TestExchangeBothWays(t *testing.T) {
	p, s := startPair(t, nil, nil)
	up := waitUp(t, p, s)

	wantS := Hello{ClusterID: 7, Role: RoleSecondary, Software: [3]uint8{1, 2, 3}, Schema: 4, BootID: uint64(RoleSecondary) << 32}
	wantP := Hello{ClusterID: 7, Role: RolePrimary, Software: [3]uint8{1, 2, 3}, Schema: 4, BootID: uint64(RolePrimary) << 32}
	if d := cmp.Diff(wantS, up[0].Peer); d != "" {
		t.Errorf("primary's Up: peer hello (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantP, up[1].Peer); d != "" {
		t.Errorf("secondary's Up: peer hello (-want +got):\n%s", d)
	}
	if up[0].Remote.Addr() != secondaryIP || up[1].Remote.Addr() != primaryIP {
		t.Errorf("Up remotes: primary sees %v, secondary sees %v", up[0].Remote, up[1].Remote)
	}

	toS := numbered(3000, 100, 'p')
	toS = append(toS, []byte{}, bytes.Repeat([]byte{'x'}, DefaultMaxFrame)) // empty and maximal frames
	toP := numbered(2000, 1000, 's')
	errs := make(chan error, 2)
	go func() { errs <- sendFrames(p.l, toS, 50) }()
	go func() { errs <- sendFrames(s.l, toP, 7) }()
	checkFrames(t, "secondary", toS, s.recv(len(toS), 10*time.Second))
	checkFrames(t, "primary", toP, p.recv(len(toP), 10*time.Second))
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	ps, ss := p.l.Stats(), s.l.Stats()
	if ps.State != StateUp || ss.State != StateUp || ps.Connects != 1 || ss.Connects != 1 {
		t.Errorf("stats: primary %+v, secondary %+v", ps, ss)
	}
	if ps.FramesOut != uint64(len(toS)) || ss.FramesIn != uint64(len(toS)) ||
		ss.FramesOut != uint64(len(toP)) || ps.FramesIn != uint64(len(toP)) {
		t.Errorf("frame counters: primary out %d in %d, secondary out %d in %d; want %d and %d",
			ps.FramesOut, ps.FramesIn, ss.FramesOut, ss.FramesIn, len(toS), len(toP))
	}
	if ps.BytesOut != ss.BytesIn || ps.BytesIn != ss.BytesOut {
		t.Errorf("byte counters disagree: primary out %d in %d, secondary out %d in %d", ps.BytesOut, ps.BytesIn, ss.BytesOut, ss.BytesIn)
	}
	if ps.Session != up[0].Session || ps.Peer != wantS {
		t.Errorf("primary stats session %d peer %v; want session %d peer %v", ps.Session, ps.Peer, up[0].Session, wantS)
	}
}

func TestSendErrors(t *testing.T) {
	cfg := testConfig(RolePrimary)
	cfg.Peer = netip.MustParseAddrPort("127.0.0.2:1")
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Send([]byte("x")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send before Run: %v; want ErrNotConnected", err)
	}
	select {
	case <-l.Writable():
	default:
		t.Errorf("Writable without a connection should be ready (Send fails fast)")
	}

	p, s := startPair(t, nil, func(c *Config) { c.MaxFrame = 1000 })
	up := waitUp(t, p, s)
	if err := p.l.Send(make([]byte, 1001)); !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "1001") {
		t.Errorf("Send over the peer's MaxFrame: %v; want ErrFrameTooLarge naming 1001", err)
	}
	if err := p.l.Send(make([]byte, 1000)); err != nil {
		t.Errorf("Send at the peer's MaxFrame: %v", err)
	}
	big := make([][]byte, DefaultQueueBytes/1000+1)
	for i := range big {
		big[i] = make([]byte, 1000)
	}
	if err := p.l.Send(big...); !errors.Is(err, ErrBatchTooLarge) {
		t.Errorf("Send of more than the queue in one call: %v; want ErrBatchTooLarge", err)
	}
	if err := p.l.SendOn(up[0].Session, []byte("on")); err != nil {
		t.Errorf("SendOn the current session: %v", err)
	}
	if err := p.l.SendOn(up[0].Session+1, []byte("other")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SendOn another session: %v; want ErrNotConnected", err)
	}
	// A tagged frame is the tag and the frame, and counts both against
	// MaxFrame.
	if err := p.l.SendOnTagged(up[0].Session, 'X', make([]byte, 1000)); !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "1001") {
		t.Errorf("SendOnTagged of 1+1000 bytes over MaxFrame 1000: %v; want ErrFrameTooLarge naming 1001", err)
	}
	if err := p.l.SendOnTagged(up[0].Session, 'X', []byte("tagged"), []byte("two")); err != nil {
		t.Errorf("SendOnTagged the current session: %v", err)
	}
	if err := p.l.SendOnTagged(up[0].Session+1, 'X', []byte("other")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SendOnTagged another session: %v; want ErrNotConnected", err)
	}
	got := s.recv(4, 5*time.Second)
	if len(got[0]) != 1000 || string(got[1]) != "on" || string(got[2]) != "Xtagged" || string(got[3]) != "Xtwo" {
		t.Errorf("received %d, %q, %q and %q", len(got[0]), got[1], got[2], got[3])
	}
}

// The secondary restarts: the primary sees Down (with the goodbye), then
// reconnects on its own when the secondary is back; and the other way.
func TestReconnectAfterPeerRestart(t *testing.T) {
	p, s := startPair(t, nil, nil)
	up := waitUp(t, p, s)
	addr := s.l.Addr()

	s.stop()
	down := p.waitFor(Down, 3*time.Second)
	if !errors.Is(down.Err, ErrPeerClosed) || !strings.Contains(down.Err.Error(), byeShutdown) || down.Session != up[0].Session {
		t.Errorf("primary's Down: session %d err %v; want session %d and the peer's goodbye", down.Session, down.Err, up[0].Session)
	}
	if err := p.l.Send([]byte("lost")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send while down: %v; want ErrNotConnected", err)
	}

	sc := testConfig(RoleSecondary)
	sc.Local = addr
	s2 := startLink(t, "secondary2", sc)
	up2 := waitUp(t, p, s2)
	if up2[0].Session != up[0].Session+1 {
		t.Errorf("new session %d; want %d", up2[0].Session, up[0].Session+1)
	}
	if err := p.l.SendOn(up[0].Session, []byte("old")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SendOn the old session: %v; want ErrNotConnected", err)
	}
	sendAll(t, p.l, [][]byte{[]byte("again")}, 1)
	if got := s2.recv(1, 3*time.Second); string(got[0]) != "again" {
		t.Errorf("after reconnect got %q", got[0])
	}

	// Now the primary restarts.
	p.stop()
	if down := s2.waitFor(Down, 3*time.Second); !errors.Is(down.Err, ErrPeerClosed) {
		t.Errorf("secondary's Down: %v; want ErrPeerClosed", down.Err)
	}
	pc := testConfig(RolePrimary)
	pc.Peer = addr
	p2 := startLink(t, "primary2", pc)
	waitUp(t, p2, s2)
	sendAll(t, s2.l, [][]byte{[]byte("back")}, 1)
	if got := p2.recv(1, 3*time.Second); string(got[0]) != "back" {
		t.Errorf("after the primary's restart got %q", got[0])
	}
	if st := s2.l.Stats(); st.Connects != 2 || st.Disconnects != 1 {
		t.Errorf("secondary stats: %d connects, %d disconnects; want 2, 1", st.Connects, st.Disconnects)
	}
}

// A proxy in the middle is cut: both sides see Down, then reconnect
// through it.
func TestReconnectAfterCut(t *testing.T) {
	sc := testConfig(RoleSecondary)
	s := startLink(t, "secondary", sc)
	px := newProxy(t, s.l.Addr(), primaryIP)
	pc := testConfig(RolePrimary)
	pc.Peer = px.addr()
	p := startLink(t, "primary", pc)
	waitUp(t, p, s)

	for round := range 3 {
		px.cut()
		p.waitFor(Down, 3*time.Second)
		s.waitFor(Down, 3*time.Second)
		waitUp(t, p, s)
		msg := []byte(fmt.Sprintf("round %d", round))
		sendAll(t, p.l, [][]byte{msg}, 1)
		if got := s.recv(1, 3*time.Second); !bytes.Equal(got[0], msg) {
			t.Fatalf("got %q; want %q", got[0], msg)
		}
	}
}

// A stalled path (nothing forwarded either way, connections left open) is
// detected by both sides within the idle timeout.
func TestIdleTimeoutOnStall(t *testing.T) {
	const idle = 400 * time.Millisecond
	sc := testConfig(RoleSecondary)
	sc.IdleTimeout = idle
	s := startLink(t, "secondary", sc)
	px := newProxy(t, s.l.Addr(), primaryIP)
	pc := testConfig(RolePrimary)
	pc.Peer = px.addr()
	pc.IdleTimeout = idle
	p := startLink(t, "primary", pc)
	waitUp(t, p, s)
	// Pings keep an otherwise silent connection up.
	p.quiet(3 * idle)
	s.quiet(10 * time.Millisecond) // its events were buffered meanwhile

	px.refuse.Store(true) // no way around the stall: both must detect it
	px.stall()
	stalled := time.Now()
	for _, r := range []*runner{p, s} {
		down := r.waitFor(Down, 5*idle)
		took := time.Since(stalled)
		// The silence began with the last ping before the stall (pings
		// go every idle/4), so the timeout may fire a little earlier
		// after the stall itself, but not much.
		if took < idle/2 {
			t.Errorf("%s: Down %v after the stall, well before the idle timeout %v", r.name, took, idle)
		}
		if !errors.Is(down.Err, ErrIdleTimeout) {
			t.Errorf("%s: Down %v; want ErrIdleTimeout", r.name, down.Err)
		}
		// Detected within the idle timeout, plus scheduling slack (the
		// race detector on two shared cores).
		if took > idle+600*time.Millisecond {
			t.Errorf("%s: stall detected after %v; idle timeout %v", r.name, took, idle)
		}
	}
	px.refuse.Store(false)
	waitUp(t, p, s) // new connections pass the proxy
}

// A peer that keeps pinging but never reads: the writer's stall is
// detected within the idle timeout of the writes stopping, and Send
// reports backpressure meanwhile.
func TestIdleTimeoutOnPeerNotReading(t *testing.T) {
	const idle = 400 * time.Millisecond
	fake := fakePeer(t, testConfig(RoleSecondary))
	ln, err := net.Listen("tcp", netip.AddrPortFrom(secondaryIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fakeDone := make(chan struct{})
	go func() {
		defer close(fakeDone)
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		fs, err := fake.handshake(context.Background(), raw)
		if err != nil {
			t.Errorf("fake handshake: %v", err)
			return
		}
		defer fs.discard()
		ping := appendFrame(nil, ftPing, nil)
		for {
			if _, err := fs.tc.Write(ping); err != nil {
				return
			}
			time.Sleep(idle / 8)
		}
	}()

	pc := testConfig(RolePrimary)
	pc.Peer = addrPortOf(ln.Addr())
	pc.IdleTimeout = idle
	pc.QueueBytes = 1 << 20
	pc.MaxFrame = 128 << 10
	p := startLink(t, "primary", pc)
	p.waitFor(Up, 5*time.Second)

	frame := make([]byte, 64<<10)
	sawBackpressure := false
	deadline := time.Now().Add(10 * time.Second)
	var lastOK time.Time
	for time.Now().Before(deadline) {
		err := p.l.Send(frame)
		if errors.Is(err, ErrNotConnected) {
			break
		}
		if errors.Is(err, ErrBackpressure) {
			sawBackpressure = true
			select {
			case <-p.l.Writable():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		lastOK = time.Now()
	}
	down := p.waitFor(Down, 5*time.Second)
	if !errors.Is(down.Err, ErrIdleTimeout) || !strings.Contains(down.Err.Error(), "writes stalled") {
		t.Errorf("Down: %v; want ErrIdleTimeout for stalled writes", down.Err)
	}
	if !sawBackpressure {
		t.Errorf("Send never reported ErrBackpressure against a peer that does not read")
	}
	// The queue was accepting until the socket buffers filled; the stall
	// must be declared within the idle timeout of that (plus slack).
	if took := time.Since(lastOK); took > idle+time.Second {
		t.Errorf("stall declared %v after the last accepted Send; idle timeout %v", took, idle)
	}
	ln.Close()
	p.stop()
	<-fakeDone
}

// A connection from the genuine peer that sends a frame over the limit, or
// ends inside a frame, is dropped; the listener carries on.
func TestBadStreamFromPeerDropped(t *testing.T) {
	sc := testConfig(RoleSecondary)
	sc.MaxFrame = 1024
	s := startLink(t, "secondary", sc)
	fcfg := testConfig(RolePrimary)
	fcfg.Peer = s.l.Addr()
	fake := fakePeer(t, fcfg)

	cases := []struct {
		name  string
		bytes []byte
		want  error
		text  string
	}{
		{"oversize", appendHeader(nil, ftData, 2000), ErrFrameTooLarge, "received a frame of 2000 bytes, the maximum is 1024"},
		{"truncated", append(appendHeader(nil, ftData, 1000), make([]byte, 10)...), ErrTruncated, "10 of 1000"},
		{"bad type", appendFrame(nil, ftHello, []byte{1}), ErrProtocol, "unexpected hello frame after the handshake"},
		{"huge", []byte{0xff, 0xff, 0xff, 0xff, 0}, ErrFrameTooLarge, "4294967294 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs, err := fake.dial(context.Background())
			if err != nil {
				t.Fatalf("fake dial: %v", err)
			}
			defer fs.discard()
			s.waitFor(Up, 3*time.Second)
			good := appendFrame(nil, ftData, []byte("before"))
			if _, err := fs.tc.Write(append(good, tc.bytes...)); err != nil {
				t.Fatal(err)
			}
			if tc.want == ErrTruncated {
				fs.raw.Close()
			}
			if got := s.recv(1, 3*time.Second); string(got[0]) != "before" {
				t.Errorf("got %q", got[0])
			}
			down := s.waitFor(Down, 3*time.Second)
			if !errors.Is(down.Err, tc.want) || !strings.Contains(down.Err.Error(), tc.text) {
				t.Errorf("Down: %v; want %v mentioning %q", down.Err, tc.want, tc.text)
			}
			if tc.want != ErrTruncated {
				// The peer is told why.
				_ = fs.raw.SetReadDeadline(time.Now().Add(2 * time.Second))
				typ, p, err := fs.fr.next(true)
				if err != nil || typ != ftBye || !strings.Contains(string(p), tc.text) {
					t.Errorf("fake peer read %v %q %v; want a goodbye mentioning %q", typ, p, err, tc.text)
				}
			}
		})
	}

	// The genuine primary still gets through.
	pc := testConfig(RolePrimary)
	pc.Peer = s.l.Addr()
	p := startLink(t, "primary", pc)
	waitUp(t, p, s)
	sendAll(t, p.l, [][]byte{[]byte("fine")}, 1)
	if got := s.recv(1, 3*time.Second); string(got[0]) != "fine" {
		t.Errorf("got %q", got[0])
	}
}

// The primary receiving an oversize frame drops the connection and dials
// again.
func TestPrimaryDropsOversizeAndRedials(t *testing.T) {
	fake := fakePeer(t, testConfig(RoleSecondary))
	ln, err := net.Listen("tcp", netip.AddrPortFrom(secondaryIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc := testConfig(RolePrimary)
	pc.Peer = addrPortOf(ln.Addr())
	pc.MaxFrame = 1024
	p := startLink(t, "primary", pc)

	accept := func() *session {
		t.Helper()
		raw, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		fs, err := fake.handshake(context.Background(), raw)
		if err != nil {
			t.Fatalf("fake handshake: %v", err)
		}
		return fs
	}
	fs := accept()
	p.waitFor(Up, 3*time.Second)
	if _, err := fs.tc.Write(appendHeader(nil, ftData, 5000)); err != nil {
		t.Fatal(err)
	}
	down := p.waitFor(Down, 3*time.Second)
	if !errors.Is(down.Err, ErrFrameTooLarge) || !strings.Contains(down.Err.Error(), "5000") {
		t.Errorf("Down: %v; want ErrFrameTooLarge naming 5000", down.Err)
	}
	fs.discard()

	fs2 := accept()
	defer fs2.discard()
	p.waitFor(Up, 3*time.Second)
	if _, err := fs2.tc.Write(appendFrame(nil, ftData, []byte("ok"))); err != nil {
		t.Fatal(err)
	}
	if got := p.recv(1, 3*time.Second); string(got[0]) != "ok" {
		t.Errorf("got %q", got[0])
	}
}

// After cancel and Run returning, no goroutine of the package remains.
func TestNoGoroutineLeak(t *testing.T) {
	if g := waitNoPackageGoroutines(5 * time.Second); g != "" {
		t.Fatalf("package goroutines before the test:\n%s", g)
	}
	before := countGoroutines()
	func() {
		p, s := startPair(t, nil, nil)
		waitUp(t, p, s)
		sendAll(t, p.l, numbered(1000, 1000, 'x'), 10)
		// A stranger mid-handshake and a reader blocked on a full Events
		// channel when the links stop.
		c := dialFrom(t, primaryIP, s.l.Addr())
		defer c.Close()
		time.Sleep(100 * time.Millisecond)
		p.stop()
		s.stop()
	}()
	if g := waitNoPackageGoroutines(5 * time.Second); g != "" {
		t.Fatalf("goroutines left after Run returned:\n%s", g)
	}
	// And the total is back where it was (give the runtime time to reap).
	deadline := time.Now().Add(5 * time.Second)
	for countGoroutines() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := countGoroutines(); n > before {
		t.Errorf("%d goroutines after, %d before", n, before)
	}
}

func countGoroutines() int {
	return len(strings.Split(strings.TrimSpace(allStacks()), "\n\n"))
}

func TestConfigErrors(t *testing.T) {
	good := testConfig(RolePrimary)
	good.Peer = netip.MustParseAddrPort("127.0.0.2:7481")
	if _, err := NewLink(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cases := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"short key", func(c *Config) { c.Key = c.Key[:31] }, "Config.Key has 31 bytes"},
		{"role", func(c *Config) { c.Role = 3 }, "Config.Role is 3"},
		{"no peer port", func(c *Config) { c.Peer = netip.AddrPortFrom(c.Peer.Addr(), 0) }, "needs the peer's port"},
		{"no local", func(c *Config) { c.Local = netip.AddrPort{} }, "Config.Local"},
		{"frame", func(c *Config) { c.MaxFrame = 10 }, "Config.MaxFrame is 10"},
		{"queue", func(c *Config) { c.QueueBytes = 100 }, "Config.QueueBytes is 100"},
		{"negative", func(c *Config) { c.IdleTimeout = -1 }, "Config.IdleTimeout"},
		{"hello cluster", func(c *Config) { c.Hello.ClusterID = 8 }, "Config.Hello.ClusterID 8 differs"},
	}
	for _, tc := range cases {
		c := good
		tc.mut(&c)
		_, err := NewLink(c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewLink error %v; want one mentioning %q", tc.name, err, tc.want)
		}
	}
}

// TestRedialSkipsBackoff: a primary waiting out its backoff connects at
// once when told the peer has started (Redial); without it, it waits.
func TestRedialSkipsBackoff(t *testing.T) {
	defer func(lo, hi time.Duration) { minBackoff, maxBackoff = lo, hi }(minBackoff, maxBackoff)
	minBackoff, maxBackoff = time.Minute, time.Minute

	// A port nobody listens on yet.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(secondaryIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	addr := addrPortOf(ln.Addr())
	ln.Close()

	pc := testConfig(RolePrimary)
	pc.Peer = addr
	p := startLink(t, "primary", pc)
	waitFor := func(cond func() bool) {
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the primary never tried to connect")
			}
		}
	}
	waitFor(func() bool { return strings.Contains(p.logs.String(), "cannot reach the peer") })

	sc := testConfig(RoleSecondary)
	sc.Local = addr
	s := startLink(t, "secondary", sc)
	p.quiet(time.Second) // negative control: the backoff holds
	if st := s.l.Stats(); st.Connects != 0 {
		t.Fatalf("connected during the backoff: %+v", st)
	}
	p.l.Redial()
	waitUp(t, p, s)
}
