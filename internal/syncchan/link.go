package syncchan

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The primary's wait between connection attempts (tests change them).
var (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

const (
	// maxHandshakes bounds the handshakes the secondary runs at once;
	// connections beyond are closed at once.
	maxHandshakes = 4
	byeShutdown   = "shutting down"
	byeReplaced   = "replaced by a newer connection"
)

// Kind is the kind of an Event.
type Kind uint8

const (
	// Up: a connection passed the handshake; Event.Peer is the peer's
	// hello, Event.Session the new session's number.
	Up Kind = iota + 1
	// Down: the connection of Event.Session ended; Event.Err says why.
	// Frames queued and not yet written are lost.
	Down
	// Frame: a user frame received on Event.Session, in Event.Frame, which
	// the consumer owns.
	Frame
	// AuthFailed: a connection was refused because the peer's proof was
	// wrong, or the peer rejected this unit's (the cluster keys differ).
	AuthFailed
	// Refused: the peer is authentic but a hello check failed on either
	// side (cluster id, protocol version, role); Event.Err says which.
	Refused
)

func (k Kind) String() string {
	switch k {
	case Up:
		return "Up"
	case Down:
		return "Down"
	case Frame:
		return "Frame"
	case AuthFailed:
		return "AuthFailed"
	case Refused:
		return "Refused"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Event is what a Link reports. For one session, Up comes first, then its
// Frames in the order the peer sent them, then Down.
type Event struct {
	Kind    Kind
	Session uint64 // Up, Down, Frame: the session (connection) number, from 1
	Peer    Hello  // Up, Down: the peer's hello
	Frame   []byte // Frame: the user frame; the consumer owns it
	Err     error  // Down, AuthFailed, Refused: the reason
	Remote  netip.AddrPort
}

// State is the state of a Link.
type State uint8

const (
	StateStopped    State = iota // Run is not running
	StateConnecting              // no connection: dialing (primary) or listening (secondary)
	StateUp                      // a connection is up
)

func (s State) String() string {
	switch s {
	case StateStopped:
		return "stopped"
	case StateConnecting:
		return "connecting"
	case StateUp:
		return "up"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Stats are the counters of a Link since NewLink. Frames and bytes count
// user frames and their payload bytes only.
type Stats struct {
	State   State
	Since   time.Time // when State was entered
	Session uint64    // when up: the session number
	Peer    Hello     // when up: the peer's hello

	Connects          uint64 // sessions that came up
	Disconnects       uint64 // sessions that ended
	AuthFailures      uint64 // handshakes that failed on a proof
	Refusals          uint64 // handshakes refused on a hello
	HandshakeFailures uint64 // other failed handshakes: TLS, timeout, protocol, unexpected source address
	EventsDropped     uint64 // AuthFailed and Refused events dropped because Events was full

	FramesIn, FramesOut uint64
	BytesIn, BytesOut   uint64
	QueuedBytes         int // queued by Send and not yet written
}

// Link keeps the one sync connection of this unit to its peer.
type Link struct {
	cfg       Config
	auth      Authenticator
	serverTLS *tls.Config
	clientTLS *tls.Config
	log       *slog.Logger
	events    chan Event
	redial    chan struct{} // Redial: skip the dial backoff once
	proto     uint8         // protoVersion; tests change it

	running atomic.Bool
	wg      sync.WaitGroup // handshake and accept goroutines
	nextID  uint64         // owned by the Run goroutine

	mu    sync.RWMutex
	cur   *session
	state State
	since time.Time
	addr  netip.AddrPort

	stats struct {
		connects, disconnects, authFailures, refusals, handshakeFailures, eventsDropped atomic.Uint64
		framesIn, framesOut, bytesIn, bytesOut                                          atomic.Uint64
	}
	authLog, refuseLog, failLog logLimiter
}

// NewLink checks cfg and prepares a link: the authenticator and a fresh
// self-signed certificate. Nothing is opened before Run.
func NewLink(cfg Config) (*Link, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	auth := cfg.Auth
	if auth == nil {
		if auth, err = NewKeyAuthenticator(cfg.Key); err != nil {
			return nil, err
		}
	}
	cfg.Key = nil // only the derived key is kept
	server, client, err := newTLSConfigs()
	if err != nil {
		return nil, err
	}
	return &Link{
		cfg: cfg, auth: auth, serverTLS: server, clientTLS: client,
		log:    cfg.Logger,
		events: make(chan Event, cfg.EventBuffer),
		redial: make(chan struct{}, 1),
		proto:  protoVersion,
		since:  time.Now(),
	}, nil
}

// Events is the channel of the link's events. It is closed when Run
// returns. The consumer must keep draining it: while it is full, the reader
// stops reading, and a peer whose writes stall for the idle timeout drops
// the connection.
func (l *Link) Events() <-chan Event { return l.events }

// Addr is the address the secondary listens on, once it does (useful with
// port 0); the zero AddrPort before, and always for the primary.
func (l *Link) Addr() netip.AddrPort {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.addr
}

// Run keeps a connection to the peer until ctx ends: the primary dials the
// peer, the secondary listens, and after a connection ends the primary
// dials again with a backoff from 50ms doubling to 1s. Run returns nil when
// ctx ends, after every goroutine of the link has ended; it may be called
// only once.
func (l *Link) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("syncchan: Run called more than once")
	}
	defer close(l.events)
	defer l.wg.Wait()
	defer l.setState(StateStopped)
	l.setState(StateConnecting)
	if l.cfg.Role == RolePrimary {
		l.dialLoop(ctx)
	} else {
		l.listenLoop(ctx)
	}
	return nil
}

// Send queues frames, in order, for the current connection and returns at
// once; the writer sends them. It copies the frames: the caller keeps
// them. All the frames are queued or none: ErrNotConnected when no
// connection is up, ErrBackpressure when they do not fit in the queue now
// (wait on Writable), ErrFrameTooLarge or ErrBatchTooLarge when they never
// will. Frames still queued when the connection ends are lost (see Down).
// Safe for concurrent use.
func (l *Link) Send(frames ...[]byte) error { return l.sendTagged(0, nil, frames) }

// SendOn is Send restricted to one session (the number of its Up event):
// it returns ErrNotConnected once that session has ended, even if another
// one is up, so that frames meant for one session never reach the next.
func (l *Link) SendOn(session uint64, frames ...[]byte) error {
	if session == 0 {
		return ErrNotConnected
	}
	return l.sendTagged(session, nil, frames)
}

// SendOnTagged is SendOn with one byte put before each frame, as if each
// frame were append([]byte{tag}, f...) — without that copy: the queue
// copies the frames anyway, and a copy per 256 KiB snapshot frame was one
// more large allocation on the sender's heap for nothing.
func (l *Link) SendOnTagged(session uint64, tag byte, frames ...[]byte) error {
	if session == 0 {
		return ErrNotConnected
	}
	return l.sendTagged(session, []byte{tag}, frames)
}

func (l *Link) sendTagged(id uint64, tag []byte, frames [][]byte) error {
	l.mu.RLock()
	s := l.cur
	l.mu.RUnlock()
	if s == nil || (id != 0 && s.id != id) {
		return ErrNotConnected
	}
	return s.enqueue(tag, frames)
}

// Writable returns a channel that is closed when Send is worth trying
// again after ErrBackpressure: the queue has drained to half, or the
// connection ended. It never blocks; select on it in an event loop.
func (l *Link) Writable() <-chan struct{} {
	l.mu.RLock()
	s := l.cur
	l.mu.RUnlock()
	if s == nil {
		return closedChan
	}
	return s.writable()
}

// Stats returns the link's counters and state.
func (l *Link) Stats() Stats {
	l.mu.RLock()
	st := Stats{State: l.state, Since: l.since}
	s := l.cur
	l.mu.RUnlock()
	if s != nil && st.State == StateUp {
		st.Session, st.Peer = s.id, s.peer
		s.mu.Lock()
		st.QueuedBytes = s.queued
		s.mu.Unlock()
	}
	c := &l.stats
	st.Connects, st.Disconnects = c.connects.Load(), c.disconnects.Load()
	st.AuthFailures, st.Refusals = c.authFailures.Load(), c.refusals.Load()
	st.HandshakeFailures, st.EventsDropped = c.handshakeFailures.Load(), c.eventsDropped.Load()
	st.FramesIn, st.FramesOut = c.framesIn.Load(), c.framesOut.Load()
	st.BytesIn, st.BytesOut = c.bytesIn.Load(), c.bytesOut.Load()
	return st
}

func (l *Link) setState(s State) {
	l.mu.Lock()
	if l.state != s {
		l.state, l.since = s, time.Now()
	}
	l.mu.Unlock()
}

// dialLoop is the primary's: one connection at a time, redialed with
// backoff.
func (l *Link) dialLoop(ctx context.Context) {
	backoff := minBackoff
	lastErr := ""
	for {
		s, err := l.dial(ctx)
		if ctx.Err() != nil {
			if s != nil {
				s.discard()
			}
			return
		}
		var de *dialError
		switch {
		case errors.As(err, &de):
			// The peer is down or not yet listening: normal, say it once.
			if msg := err.Error(); msg != lastErr {
				l.log.Info("sync: cannot reach the peer; retrying", "peer", l.cfg.Peer, "err", err)
				lastErr = msg
			}
		case err != nil:
			lastErr = ""
			l.handshakeFailed(ctx, err, l.cfg.Peer)
		default:
			lastErr = ""
			l.runSession(ctx, s)
			if ctx.Err() != nil {
				return
			}
			if time.Since(s.started) >= maxBackoff {
				backoff = minBackoff
			}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-l.redial:
			t.Stop()
			backoff = minBackoff
			continue
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Redial tells a primary that is waiting to connect again to try now,
// not after its backoff: the daemon calls it when it hears a peer that
// has just started, so a restarted standby is fed at once rather than up
// to a second later. No effect on a secondary or while connected.
func (l *Link) Redial() {
	select {
	case l.redial <- struct{}{}:
	default:
	}
}

type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (l *Link) dial(ctx context.Context) (*session, error) {
	d := net.Dialer{
		Timeout:   l.cfg.DialTimeout,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(l.cfg.Local.Addr(), 0)),
	}
	raw, err := d.DialContext(ctx, "tcp", l.cfg.Peer.String())
	if err != nil {
		return nil, &dialError{fmt.Errorf("syncchan: connect to %v: %w", l.cfg.Peer, err)}
	}
	return l.handshake(ctx, raw)
}

// runSession runs an established session until it ends or ctx does.
func (l *Link) runSession(ctx context.Context, s *session) {
	l.startSession(ctx, s)
	select {
	case <-ctx.Done():
		s.fail(ErrClosed, byeShutdown)
	case <-s.ctx.Done():
	}
	l.endSession(ctx, s)
}

// listenLoop is the secondary's: it accepts connections from the peer's
// address, authenticates them concurrently, and keeps the newest
// authenticated one, closing the one it replaces (the primary only dials
// again when it has given its connection up, so the older one is dead or
// about to be).
func (l *Link) listenLoop(ctx context.Context) {
	ln := l.listen(ctx)
	if ln == nil {
		return
	}
	l.mu.Lock()
	l.addr = addrPortOf(ln.Addr())
	l.mu.Unlock()
	l.log.Info("sync: listening for the peer", "addr", l.addr, "peer", l.cfg.Peer.Addr())
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()

	established := make(chan *session)
	l.wg.Go(func() { l.acceptLoop(ctx, ln, established) })
	var cur *session
	for {
		var ended <-chan struct{}
		if cur != nil {
			ended = cur.ctx.Done()
		}
		select {
		case <-ctx.Done():
			if cur != nil {
				cur.fail(ErrClosed, byeShutdown)
				l.endSession(ctx, cur)
			}
			_ = ln.Close()
			return
		case s := <-established:
			if cur != nil {
				cur.fail(ErrReplaced, byeReplaced)
				l.endSession(ctx, cur)
			}
			cur = s
			l.startSession(ctx, s)
		case <-ended:
			l.endSession(ctx, cur)
			cur = nil
		}
	}
}

func (l *Link) listen(ctx context.Context) net.Listener {
	backoff := minBackoff
	lastErr := ""
	for {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", l.cfg.Local.String())
		if err == nil {
			return ln
		}
		if ctx.Err() != nil {
			return nil
		}
		if msg := err.Error(); msg != lastErr {
			l.log.Warn("sync: cannot listen; retrying", "addr", l.cfg.Local, "err", err)
			lastErr = msg
		}
		if !sleepCtx(ctx, backoff) {
			return nil
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (l *Link) acceptLoop(ctx context.Context, ln net.Listener, out chan<- *session) {
	sem := make(chan struct{}, maxHandshakes)
	want := l.cfg.Peer.Addr().Unmap().WithZone("")
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			l.log.Warn("sync: accept failed", "err", err)
			if !sleepCtx(ctx, minBackoff) {
				return
			}
			continue
		}
		remote := addrPortOf(raw.RemoteAddr())
		if !want.IsUnspecified() && remote.Addr().WithZone("") != want {
			_ = raw.Close()
			l.stats.handshakeFailures.Add(1)
			if ok, n := l.failLog.allow(); ok {
				l.log.Warn("sync: connection from an address other than the peer's closed", "remote", remote, "peer", want, "suppressed", n)
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			_ = raw.Close()
			l.stats.handshakeFailures.Add(1)
			if ok, n := l.failLog.allow(); ok {
				l.log.Warn("sync: too many handshakes at once; connection closed", "remote", remote, "suppressed", n)
			}
			continue
		}
		l.wg.Go(func() {
			defer func() { <-sem }()
			s, err := l.handshake(ctx, raw)
			if err != nil {
				l.handshakeFailed(ctx, err, remote)
				return
			}
			select {
			case out <- s:
			case <-ctx.Done():
				s.discard()
			}
		})
	}
}

// startSession makes s the current session, reports Up, and starts it.
func (l *Link) startSession(ctx context.Context, s *session) {
	l.nextID++
	s.id = l.nextID
	l.mu.Lock()
	l.cur = s
	l.state, l.since = StateUp, time.Now()
	l.mu.Unlock()
	l.stats.connects.Add(1)
	l.log.Info("sync: connection up", "session", s.id, "remote", s.remote, "peer", s.peer.String())
	l.emit(ctx, Event{Kind: Up, Session: s.id, Peer: s.peer, Remote: s.remote})
	s.start()
}

// endSession waits for an ended session to wind down and reports Down,
// after every Frame of the session.
func (l *Link) endSession(ctx context.Context, s *session) {
	cause := s.finish()
	if errors.Is(cause, context.Canceled) {
		cause = ErrClosed
	}
	l.mu.Lock()
	if l.cur == s {
		l.cur = nil
	}
	l.state, l.since = StateConnecting, time.Now()
	l.mu.Unlock()
	l.stats.disconnects.Add(1)
	level := slog.LevelWarn
	if errors.Is(cause, ErrClosed) || errors.Is(cause, ErrReplaced) {
		level = slog.LevelInfo
	}
	l.log.Log(context.Background(), level, "sync: connection down", "session", s.id, "remote", s.remote,
		"lasted", time.Since(s.started).Round(time.Millisecond), "err", cause)
	ev := Event{Kind: Down, Session: s.id, Peer: s.peer, Err: cause, Remote: s.remote}
	if ctx.Err() != nil {
		l.emitDrop(ev) // shutting down: the consumer may be gone
	} else {
		l.emit(ctx, ev)
	}
}

// handshakeFailed counts, logs (rate-limited: a peer on the link could try
// in a loop) and reports a failed handshake.
func (l *Link) handshakeFailed(ctx context.Context, err error, remote netip.AddrPort) {
	switch {
	case ctx.Err() != nil || errors.Is(err, ErrClosed):
	case errors.Is(err, ErrAuth):
		l.stats.authFailures.Add(1)
		if ok, n := l.authLog.allow(); ok {
			l.log.Warn("sync: authentication failed; connection refused", "remote", remote, "err", err, "suppressed", n)
		}
		l.emitDrop(Event{Kind: AuthFailed, Err: err, Remote: remote})
	case errors.Is(err, ErrRefused):
		l.stats.refusals.Add(1)
		if ok, n := l.refuseLog.allow(); ok {
			l.log.Error("sync: peer refused", "remote", remote, "err", err, "suppressed", n)
		}
		l.emitDrop(Event{Kind: Refused, Err: err, Remote: remote})
	default:
		l.stats.handshakeFailures.Add(1)
		if ok, n := l.failLog.allow(); ok {
			l.log.Warn("sync: handshake failed; connection closed", "remote", remote, "err", err, "suppressed", n)
		}
	}
}

// emit delivers an event in order, waiting for the consumer.
func (l *Link) emit(ctx context.Context, ev Event) {
	select {
	case l.events <- ev:
	case <-ctx.Done():
	}
}

// emitDrop delivers an event if there is room, else counts it as dropped:
// for events that an unauthenticated peer can cause at will.
func (l *Link) emitDrop(ev Event) {
	select {
	case l.events <- ev:
	default:
		l.stats.eventsDropped.Add(1)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// logLimiter lets one message through per second and counts the others.
type logLimiter struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

func (r *logLimiter) allow() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Before(r.next) {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.next, r.suppressed = now.Add(time.Second), 0
	return true, n
}
