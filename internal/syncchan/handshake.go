package syncchan

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"
)

const (
	readBufSize = 64 << 10
	// lingerTime bounds how long a refused connection is drained before it
	// is closed, so that the refusal reaches the peer instead of a reset.
	lingerTime = 200 * time.Millisecond
)

// handshake runs the TLS handshake and the sync handshake on raw and returns
// the established session, not yet started. On error raw is closed.
//
// The primary (dialer) and the secondary (listener) play different parts:
//
//	primary                          secondary
//	AUTH(proof P)              -->   verify P (else REJECT, close)
//	verify S (else REJECT)     <--   AUTH(proof S) HELLO(h2)
//	HELLO(h1) READY|REFUSE     -->   check h1
//	check h2                   <--   READY|REFUSE
//
// Each side checks the other's hello itself and sends its verdict, then
// reads the other's: the session is up only when both said READY, and when
// one refuses, both know why. The secondary sends nothing at all before it
// has verified the primary's proof.
func (l *Link) handshake(ctx context.Context, raw net.Conn) (s *session, err error) {
	remote := addrPortOf(raw.RemoteAddr())
	dialer := l.cfg.Role == RolePrimary
	peerRole := RolePrimary
	if dialer {
		peerRole = RoleSecondary
	}
	_ = raw.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	linger := false
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			err = ErrClosed
		}
		if linger {
			lingerClose(raw)
		} else {
			_ = raw.Close()
		}
	}()

	var tc *tls.Conn
	if dialer {
		tc = tls.Client(raw, l.clientTLS)
	} else {
		tc = tls.Server(raw, l.serverTLS)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("syncchan: TLS handshake: %w", err)
	}
	cs := tc.ConnectionState()
	ir := &idleReader{c: tc, raw: raw}
	fr := &frameReader{r: bufio.NewReaderSize(ir, readBufSize), max: l.cfg.MaxFrame}
	write := func(b []byte) error {
		if _, err := tc.Write(b); err != nil {
			return fmt.Errorf("syncchan: handshake write: %w", err)
		}
		return nil
	}
	expect := func(want ...frameType) (frameType, []byte, error) {
		t, p, err := fr.next(false)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: the peer closed the connection during the handshake", ErrPeerClosed)
			}
			return 0, nil, err
		}
		if !slices.Contains(want, t) {
			return 0, nil, fmt.Errorf("%w: got a %v frame during the handshake, expected %v", ErrProtocol, t, want)
		}
		return t, p, nil
	}
	reject := func(verr error) error {
		linger = true
		_ = write(appendReason(nil, ftReject, "authentication failed"))
		return fmt.Errorf("%w: the peer's proof was rejected: %w", ErrAuth, verr)
	}
	rejected := func(reason []byte) error {
		return fmt.Errorf("%w: the peer rejected this unit's proof (%q): the cluster keys differ", ErrAuth, reason)
	}
	myProof, err := l.auth.Proof(&cs, l.cfg.Role)
	if err != nil {
		return nil, fmt.Errorf("syncchan: make the proof: %w", err)
	}
	myHello := appendFrame(nil, ftHello, appendHello(nil, wireHello{
		Hello: l.cfg.Hello, proto: l.proto, maxFrame: uint32(l.cfg.MaxFrame),
	}))

	var peer wireHello
	var verdict error
	verdictFrame := func() []byte {
		if verdict != nil {
			linger = true
			return appendReason(nil, ftRefuse, verdict.Error())
		}
		return appendFrame(nil, ftReady, nil)
	}
	if dialer {
		if err := write(appendFrame(nil, ftAuth, myProof)); err != nil {
			return nil, err
		}
		t, p, err := expect(ftAuth, ftReject)
		if err != nil {
			return nil, err
		}
		if t == ftReject {
			return nil, rejected(p)
		}
		if err := l.auth.Verify(&cs, peerRole, p); err != nil {
			return nil, reject(err)
		}
		_, p, err = expect(ftHello)
		if err != nil {
			return nil, err
		}
		if peer, err = parseHello(p); err != nil {
			return nil, err
		}
		verdict = l.checkPeer(peer)
		if err := write(append(myHello, verdictFrame()...)); err != nil {
			return nil, err
		}
	} else {
		_, p, err := expect(ftAuth)
		if err != nil {
			return nil, err
		}
		if err := l.auth.Verify(&cs, peerRole, p); err != nil {
			return nil, reject(err)
		}
		if err := write(append(appendFrame(nil, ftAuth, myProof), myHello...)); err != nil {
			return nil, err
		}
		t, p, err := expect(ftHello, ftReject)
		if err != nil {
			return nil, err
		}
		if t == ftReject {
			return nil, rejected(p)
		}
		if peer, err = parseHello(p); err != nil {
			return nil, err
		}
		verdict = l.checkPeer(peer)
		if err := write(verdictFrame()); err != nil {
			return nil, err
		}
	}
	// Read the peer's verdict even after refusing: its refusal is the last
	// thing it sends, so closing after it never resets the connection
	// before the peer has read ours.
	t, p, rerr := expect(ftReady, ftRefuse)
	if verdict != nil {
		return nil, verdict
	}
	if rerr != nil {
		return nil, rerr
	}
	if t == ftRefuse {
		return nil, fmt.Errorf("%w: the peer refused this unit: %q", ErrRefused, p)
	}

	_ = raw.SetDeadline(time.Time{})
	ir.timeout = l.cfg.IdleTimeout
	return newSession(l, tc, raw, fr, remote, peer), nil
}

// checkPeer is this unit's verdict on the peer's hello.
func (l *Link) checkPeer(h wireHello) error {
	if h.proto != l.proto {
		return fmt.Errorf("%w: %w: the peer speaks version %d, this unit version %d", ErrRefused, ErrProtocolVersion, h.proto, l.proto)
	}
	if h.ClusterID != l.cfg.ClusterID {
		return fmt.Errorf("%w: %w: this unit is in cluster %d, the peer in cluster %d", ErrRefused, ErrWrongCluster, l.cfg.ClusterID, h.ClusterID)
	}
	if want := 3 - l.cfg.Role; h.Role != want {
		return fmt.Errorf("%w: %w: the peer says it is the %s, this unit is the %s", ErrRefused, ErrWrongRole, roleName(h.Role), roleName(l.cfg.Role))
	}
	if h.maxFrame < minFrame {
		return fmt.Errorf("%w: %w: the peer accepts frames of at most %d bytes, less than the minimum %d", ErrRefused, ErrProtocol, h.maxFrame, minFrame)
	}
	return nil
}

// idleReader reads from the TLS connection and, once the handshake is over
// (timeout set), pushes the read deadline forward so that a connection on
// which nothing arrives for the idle timeout fails. The deadline is moved
// at most every timeout/8, not on every read, so it costs nothing per
// frame; a silence is detected between 7/8 of the timeout and the timeout.
type idleReader struct {
	c       io.Reader
	raw     net.Conn
	timeout time.Duration // 0 during the handshake
	armed   time.Time
}

func (r *idleReader) Read(p []byte) (int, error) {
	if r.timeout > 0 {
		if now := time.Now(); now.Sub(r.armed) >= r.timeout/8 {
			if err := r.raw.SetReadDeadline(now.Add(r.timeout)); err != nil {
				return 0, err
			}
			r.armed = now
		}
	}
	return r.c.Read(p)
}

// lingerClose closes a connection after a refusal: it half-closes so that
// the peer reads the refusal and then EOF, and drains what the peer still
// sends for a short while, so that unread bytes never turn the close into a
// reset that would discard the refusal.
func lingerClose(raw net.Conn) {
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = raw.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(raw, 1<<16))
	_ = raw.Close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return ap
		}
	}
	return netip.AddrPort{}
}
