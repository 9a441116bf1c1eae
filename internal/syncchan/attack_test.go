package syncchan

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Two units with different keys: both report AuthFailed and log it, neither
// ever comes up or delivers a frame.
func TestWrongKeyRefusedBothSides(t *testing.T) {
	p, s := startPair(t, func(c *Config) { c.Key = otherKey }, nil)
	for _, r := range []*runner{p, s} {
		ev := r.waitFor(AuthFailed, 5*time.Second)
		if !errors.Is(ev.Err, ErrAuth) {
			t.Errorf("%s: AuthFailed err %v; want ErrAuth", r.name, ev.Err)
		}
	}
	if err := p.l.Send([]byte("state")); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send with no authenticated peer: %v; want ErrNotConnected", err)
	}
	// The primary keeps trying; every attempt fails the same way.
	p.quiet(time.Second, AuthFailed)
	s.quiet(100*time.Millisecond, AuthFailed)
	for _, r := range []*runner{p, s} {
		st := r.l.Stats()
		if st.AuthFailures == 0 || st.Connects != 0 || st.FramesIn != 0 || st.State != StateConnecting {
			t.Errorf("%s: stats %+v; want auth failures and no connection", r.name, st)
		}
		if log := r.logs.String(); !strings.Contains(log, "authentication failed") {
			t.Errorf("%s: the failure is not logged:\n%s", r.name, log)
		}
	}
	if !strings.Contains(p.logs.String(), "the peer rejected this unit's proof") {
		t.Errorf("primary's log does not say the peer rejected its proof:\n%s", p.logs)
	}
	if !strings.Contains(s.logs.String(), "the peer's proof was rejected") {
		t.Errorf("secondary's log does not say it rejected the peer's proof:\n%s", s.logs)
	}
}

// Strangers get nothing and are disconnected quickly; the secondary then
// serves the genuine primary.
func TestListenerRefusesStrangers(t *testing.T) {
	sc := testConfig(RoleSecondary)
	sc.HandshakeTimeout = 300 * time.Millisecond
	s := startLink(t, "secondary", sc)
	addr := s.l.Addr()

	// closedQuickly reads c until it ends and returns what it got.
	closedQuickly := func(name string, c net.Conn, within time.Duration) []byte {
		t.Helper()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, err := io.ReadAll(c)
		if took := time.Since(start); took > within {
			t.Errorf("%s: disconnected after %v; want within %v", name, took, within)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: still connected after 3s", name)
		}
		return got
	}

	t.Run("garbage", func(t *testing.T) {
		c := dialFrom(t, primaryIP, addr)
		junk := make([]byte, 4096)
		_, _ = rand.Read(junk)
		_, _ = c.Write(append([]byte("GET / HTTP/1.1\r\n\r\n"), junk...))
		got := closedQuickly("garbage", c, time.Second)
		// At most a TLS alert record (content type 21), never data.
		if len(got) > 0 && (got[0] != 21 || len(got) > 7) {
			t.Errorf("garbage client received %x", got)
		}
	})

	_, client, err := newTLSConfigs()
	if err != nil {
		t.Fatal(err)
	}
	tlsStranger := func(t *testing.T) (*tls.Conn, net.Conn) {
		raw := dialFrom(t, primaryIP, addr)
		tc := tls.Client(raw, client)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		return tc, raw
	}

	t.Run("bad proof", func(t *testing.T) {
		tc, _ := tlsStranger(t)
		proof := make([]byte, 32)
		_, _ = rand.Read(proof)
		if _, err := tc.Write(appendFrame(nil, ftAuth, proof)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = tc.SetReadDeadline(time.Now().Add(3 * time.Second))
		types, err := readAllFrames(tc)
		if time.Since(start) > time.Second {
			t.Errorf("disconnected after %v", time.Since(start))
		}
		if len(types) != 1 || types[0] != ftReject || !errors.Is(err, io.EOF) {
			t.Errorf("received %v then %v; want only a reject, then EOF", types, err)
		}
		ev := s.waitFor(AuthFailed, 2*time.Second)
		if ev.Remote.Addr() != primaryIP || !errors.Is(ev.Err, ErrAuth) {
			t.Errorf("AuthFailed event %+v", ev)
		}
	})

	t.Run("data before auth", func(t *testing.T) {
		tc, _ := tlsStranger(t)
		_, _ = tc.Write(appendFrame(nil, ftData, []byte("injected state")))
		_ = tc.SetReadDeadline(time.Now().Add(3 * time.Second))
		types, err := readAllFrames(tc)
		if len(types) != 0 {
			t.Errorf("received %v (%v); want nothing", types, err)
		}
	})

	t.Run("silent after TLS", func(t *testing.T) {
		_, raw := tlsStranger(t)
		got := closedQuickly("silent", raw, sc.HandshakeTimeout+500*time.Millisecond)
		if len(got) != 0 {
			t.Errorf("silent client received %d bytes", len(got))
		}
	})

	t.Run("other source address", func(t *testing.T) {
		c := dialFrom(t, strangerIP, addr)
		if got := closedQuickly("stranger", c, 500*time.Millisecond); len(got) != 0 {
			t.Errorf("stranger received %d bytes", len(got))
		}
	})

	s.quiet(200*time.Millisecond, AuthFailed)
	if st := s.l.Stats(); st.HandshakeFailures < 3 || st.AuthFailures < 1 || st.Connects != 0 {
		t.Errorf("stats after strangers: %+v", st)
	}

	pc := testConfig(RolePrimary)
	pc.Peer = addr
	p := startLink(t, "primary", pc)
	waitUp(t, p, s)
	sendAll(t, p.l, [][]byte{[]byte("genuine")}, 1)
	if got := s.recv(1, 3*time.Second); string(got[0]) != "genuine" {
		t.Errorf("got %q", got[0])
	}
}

// An impostor listener that reflects the primary's own proof back fails,
// and so does replaying that proof to the genuine secondary on another
// session.
func TestReflectedAndReplayedProofFail(t *testing.T) {
	server, _, err := newTLSConfigs()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(strangerIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	captured := make(chan []byte, 1)
	reply := make(chan []frameType, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		defer raw.Close()
		tc := tls.Server(raw, server)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		fr := &frameReader{r: newBufReader(tc), max: 1024}
		typ, proof, err := fr.next(false)
		if err != nil || typ != ftAuth {
			return
		}
		proof = append([]byte(nil), proof...)
		captured <- proof
		// Reflect it, with a hello, as a genuine secondary would answer.
		hello := appendHello(nil, wireHello{Hello: Hello{ClusterID: 7, Role: RoleSecondary}, proto: protoVersion, maxFrame: 1024})
		_, _ = tc.Write(append(appendFrame(nil, ftAuth, proof), appendFrame(nil, ftHello, hello)...))
		var got []frameType
		for {
			typ, _, err := fr.next(false)
			if err != nil {
				break
			}
			got = append(got, typ)
		}
		reply <- got
	}()

	pc := testConfig(RolePrimary)
	pc.Peer = addrPortOf(ln.Addr())
	p := startLink(t, "primary", pc)
	ev := p.waitFor(AuthFailed, 5*time.Second)
	if !errors.Is(ev.Err, ErrAuth) || !strings.Contains(ev.Err.Error(), "the peer's proof was rejected") {
		t.Errorf("primary facing a reflected proof: %v", ev.Err)
	}
	if got := <-reply; len(got) != 1 || got[0] != ftReject {
		t.Errorf("impostor received %v; want only a reject (no hello, no data)", got)
	}
	proof := <-captured
	p.stop()

	// Replay the captured (genuine) primary proof to the genuine secondary.
	s := startLink(t, "secondary", testConfig(RoleSecondary))
	_, client, err := newTLSConfigs()
	if err != nil {
		t.Fatal(err)
	}
	raw := dialFrom(t, primaryIP, s.l.Addr())
	tc := tls.Client(raw, client)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Write(appendFrame(nil, ftAuth, proof)); err != nil {
		t.Fatal(err)
	}
	_ = tc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if types, err := readAllFrames(tc); len(types) != 1 || types[0] != ftReject || !errors.Is(err, io.EOF) {
		t.Errorf("replayed proof: received %v then %v; want only a reject", types, err)
	}
	s.waitFor(AuthFailed, 2*time.Second)
}

// The proofs themselves: bound to the key, the role and the session.
func TestKeyAuthenticator(t *testing.T) {
	a, err := NewKeyAuthenticator(testKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewKeyAuthenticator(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewKeyAuthenticator(testKey[:31]); err == nil {
		t.Errorf("a 31-byte key was accepted")
	}
	c1, s1 := tlsStates(t)
	c2, _ := tlsStates(t)
	proof, err := a.Proof(c1, RolePrimary)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(s1, RolePrimary, proof); err != nil {
		t.Errorf("genuine proof rejected: %v", err)
	}
	if a.Verify(s1, RoleSecondary, proof) == nil {
		t.Errorf("a proof made for the primary verified as the secondary's (reflection)")
	}
	if b.Verify(s1, RolePrimary, proof) == nil {
		t.Errorf("a proof verified under another key")
	}
	if a.Verify(c2, RolePrimary, proof) == nil {
		t.Errorf("a proof verified on another session (replay)")
	}
	if a.Verify(s1, RolePrimary, proof[:31]) == nil || a.Verify(s1, RolePrimary, nil) == nil {
		t.Errorf("a truncated proof verified")
	}
}

// tlsStates returns the client's and the server's view of one fresh TLS
// session.
func tlsStates(t *testing.T) (client, server *tls.ConnectionState) {
	t.Helper()
	sc, cc, err := newTLSConfigs()
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ts, tc := tls.Server(a, sc), tls.Client(b, cc)
	errc := make(chan error, 1)
	go func() { errc <- ts.Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c, s := tc.ConnectionState(), ts.ConnectionState()
	return &c, &s
}

func TestWrongClusterRefused(t *testing.T) {
	p, s := startPair(t, func(c *Config) { c.ClusterID = 9 }, nil)
	want := map[string]string{
		"primary":   "this unit is in cluster 9, the peer in cluster 7",
		"secondary": "this unit is in cluster 7, the peer in cluster 9",
	}
	for _, r := range []*runner{p, s} {
		ev := r.waitFor(Refused, 5*time.Second)
		if !errors.Is(ev.Err, ErrRefused) || !errors.Is(ev.Err, ErrWrongCluster) || !strings.Contains(ev.Err.Error(), want[r.name]) {
			t.Errorf("%s: Refused err %v; want a cluster id mismatch saying %q", r.name, ev.Err, want[r.name])
		}
		if !strings.Contains(r.logs.String(), "cluster id mismatch") {
			t.Errorf("%s: refusal not logged:\n%s", r.name, r.logs)
		}
	}
	p.quiet(300*time.Millisecond, Refused)
	s.quiet(100*time.Millisecond, Refused)
}

func TestProtocolVersionRefused(t *testing.T) {
	sc := testConfig(RoleSecondary)
	s := startLink(t, "secondary", sc, func(l *Link) { l.proto = 2 })
	pc := testConfig(RolePrimary)
	pc.Peer = s.l.Addr()
	p := startLink(t, "primary", pc)
	want := map[string]string{
		"primary":   "the peer speaks version 2, this unit version 1",
		"secondary": "the peer speaks version 1, this unit version 2",
	}
	for _, r := range []*runner{p, s} {
		ev := r.waitFor(Refused, 5*time.Second)
		if !errors.Is(ev.Err, ErrProtocolVersion) || !strings.Contains(ev.Err.Error(), want[r.name]) {
			t.Errorf("%s: Refused err %v; want %q", r.name, ev.Err, want[r.name])
		}
	}
}

// A unit configured with the wrong role is refused too (here: a second
// "secondary" dialing, which only a misconfiguration can produce).
func TestWrongRoleRefused(t *testing.T) {
	s := startLink(t, "secondary", testConfig(RoleSecondary))
	fcfg := testConfig(RolePrimary)
	fcfg.Peer = s.l.Addr()
	fake := fakePeer(t, fcfg)
	fake.cfg.Hello.Role = RoleSecondary
	_, err := fake.dial(context.Background())
	if !errors.Is(err, ErrWrongRole) && !errors.Is(err, ErrRefused) {
		t.Errorf("fake dial: %v; want refused", err)
	}
	ev := s.waitFor(Refused, 3*time.Second)
	if !errors.Is(ev.Err, ErrWrongRole) {
		t.Errorf("secondary: %v; want ErrWrongRole", ev.Err)
	}
}
