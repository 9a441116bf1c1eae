package syncchan

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/internal/sched"
)

const (
	// writeChunk is the most bytes handed to one TLS write, each with its
	// own write deadline: a slow but moving link never trips the timeout.
	writeChunk = 256 << 10
	// byeTimeout bounds the goodbye written when a session ends.
	byeTimeout = 100 * time.Millisecond
)

// session is one established connection: a reader and a writer goroutine
// around the TLS stream, and the send queue between Send and the writer.
type session struct {
	l       *Link
	id      uint64
	tc      *tls.Conn
	raw     net.Conn
	fr      *frameReader
	remote  netip.AddrPort
	peer    Hello
	sendMax int // the smaller of the two units' MaxFrame
	started time.Time

	ctx        context.Context
	cancel     context.CancelCauseFunc
	wake       chan struct{} // cap 1: the writer has something to do
	readerDone chan struct{}
	writerDone chan struct{}

	mu          sync.Mutex
	pending     []byte // encoded frames waiting for the writer
	pendFrames  int
	pendPayload int
	queued      int // bytes pending plus bytes the writer has not written yet
	closed      bool
	drained     chan struct{} // closed when queued drops to half, or at close
	bye         string        // reason to send the peer when closing, if any
}

// newSession wraps an established connection. The session has its own
// context, not the link's: the link ends it with fail, which carries the
// reason (and the goodbye).
func newSession(l *Link, tc *tls.Conn, raw net.Conn, fr *frameReader, remote netip.AddrPort, peer wireHello) *session {
	s := &session{
		l: l, tc: tc, raw: raw, fr: fr, remote: remote,
		peer:       peer.Hello,
		sendMax:    min(l.cfg.MaxFrame, int(peer.maxFrame)),
		wake:       make(chan struct{}, 1),
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	return s
}

// start runs the reader and the writer.
func (s *session) start() {
	s.started = time.Now()
	go s.readLoop()
	go s.writeLoop()
}

// discard closes a session that was never started.
func (s *session) discard() {
	s.cancel(ErrClosed)
	_ = s.raw.Close()
}

// fail ends the session with cause (the first cause wins). When bye is not
// empty and the session is still healthy enough to write, the writer tells
// the peer why.
func (s *session) fail(cause error, bye string) {
	s.mu.Lock()
	if s.ctx.Err() == nil {
		s.bye = bye
		s.cancel(cause)
	}
	s.mu.Unlock()
}

// finish waits for both goroutines after the session ended, closes the
// connection and returns the reason it ended. Frames still queued are
// dropped.
func (s *session) finish() error {
	s.fail(ErrClosed, "")
	s.mu.Lock()
	s.closed = true
	if s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.pending = nil
	s.mu.Unlock()
	// Bound a writer blocked on a stalled peer (and its goodbye), let it
	// finish, then close: that also ends a read in progress.
	_ = s.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	<-s.writerDone
	_ = s.raw.Close()
	<-s.readerDone
	return context.Cause(s.ctx)
}

// enqueue appends frames to the send queue, all or none.
func (s *session) enqueue(tag []byte, frames [][]byte) error {
	total, payload := 0, 0
	for _, f := range frames {
		n := len(tag) + len(f)
		if n > s.sendMax {
			return fmt.Errorf("%w: a frame of %d bytes, the maximum is %d", ErrFrameTooLarge, n, s.sendMax)
		}
		total += headerSize + n
		payload += n
	}
	limit := s.l.cfg.QueueBytes
	if total > limit {
		return fmt.Errorf("%w: %d frames of %d bytes in one call, the queue holds %d", ErrBatchTooLarge, len(frames), total, limit)
	}
	s.mu.Lock()
	if s.closed || s.ctx.Err() != nil {
		s.mu.Unlock()
		return ErrNotConnected
	}
	if s.queued+total > limit {
		s.mu.Unlock()
		return ErrBackpressure
	}
	for _, f := range frames {
		s.pending = append(append(appendHeader(s.pending, ftData, len(tag)+len(f)), tag...), f...)
	}
	s.queued += total
	s.pendFrames += len(frames)
	s.pendPayload += payload
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// writable returns a channel closed once the queue has drained to half its
// size or the session ended.
func (s *session) writable() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.queued <= s.l.cfg.QueueBytes/2 {
		return closedChan
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	return s.drained
}

// written releases n written bytes from the queue.
func (s *session) written(n int) {
	s.mu.Lock()
	s.queued -= n
	if s.drained != nil && s.queued <= s.l.cfg.QueueBytes/2 {
		close(s.drained)
		s.drained = nil
	}
	s.mu.Unlock()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (s *session) writeLoop() {
	defer close(s.writerDone)
	idle := s.l.cfg.IdleTimeout
	pingEvery := max(idle/4, time.Millisecond)
	ticker := time.NewTicker(pingEvery)
	defer ticker.Stop()
	var spare []byte
	lastWrite := time.Now()
	ping := appendFrame(nil, ftPing, nil)
	var y sched.Yielder // encrypting a million entries is bulk work

	for {
		y.Pause()
		select {
		case <-s.ctx.Done():
			s.sayBye()
			return
		case <-s.wake:
		case now := <-ticker.C:
			s.mu.Lock()
			empty := len(s.pending) == 0
			s.mu.Unlock()
			if empty {
				if now.Sub(lastWrite) < pingEvery/2 {
					continue
				}
				if err := s.write(ping, idle); err != nil {
					return
				}
				lastWrite = now
				continue
			}
		}
		// Write until the queue is empty: frames queued while a batch is
		// being written go out in the next batch, without waiting.
		for {
			s.mu.Lock()
			buf, frames, payload := s.pending, s.pendFrames, s.pendPayload
			s.pending, s.pendFrames, s.pendPayload = spare[:0], 0, 0
			s.mu.Unlock()
			if len(buf) == 0 {
				spare = buf
				break
			}
			for off := 0; off < len(buf); {
				if s.ctx.Err() != nil {
					// Ending: stop between chunks (each write would push
					// the deadline the closer set). A goodbye can only
					// follow whole frames.
					if off == 0 {
						s.sayBye()
					}
					return
				}
				end := min(off+writeChunk, len(buf))
				if err := s.write(buf[off:end], idle); err != nil {
					return
				}
				s.written(end - off)
				off = end
			}
			s.l.stats.framesOut.Add(uint64(frames))
			s.l.stats.bytesOut.Add(uint64(payload))
			lastWrite = time.Now()
			spare = buf
		}
	}
}

// write writes b with a deadline; on error it ends the session.
func (s *session) write(b []byte, timeout time.Duration) error {
	_ = s.raw.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := s.tc.Write(b); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.fail(fmt.Errorf("%w: the peer has not accepted data for %v (writes stalled)", ErrIdleTimeout, timeout), "")
		} else {
			s.fail(fmt.Errorf("syncchan: write: %w", err), "")
		}
		return err
	}
	return nil
}

// sayBye tells the peer why the session ends, when there is a reason to
// and the stream is still usable.
func (s *session) sayBye() {
	s.mu.Lock()
	reason := s.bye
	s.mu.Unlock()
	if reason == "" {
		return
	}
	_ = s.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	_, _ = s.tc.Write(appendReason(nil, ftBye, reason))
}

func (s *session) readLoop() {
	defer close(s.readerDone)
	events := s.l.events
	var y sched.Yielder // decrypting a million entries is bulk work
	for {
		y.Pause()
		t, p, err := s.fr.next(true)
		if err != nil {
			s.readFailed(err)
			return
		}
		switch t {
		case ftData:
			s.l.stats.framesIn.Add(1)
			s.l.stats.bytesIn.Add(uint64(len(p)))
			select {
			case events <- Event{Kind: Frame, Session: s.id, Frame: p}:
			case <-s.ctx.Done():
				return
			}
		case ftPing:
		case ftBye:
			s.fail(fmt.Errorf("%w: %q", ErrPeerClosed, p), "")
			return
		}
	}
}

func (s *session) readFailed(err error) {
	switch {
	case s.ctx.Err() != nil:
		// Closed by us; the cause is already set.
	case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrProtocol):
		s.fail(err, err.Error())
	case errors.Is(err, ErrTruncated):
		s.fail(err, "")
	case errors.Is(err, io.EOF):
		s.fail(fmt.Errorf("%w: the connection ended without a goodbye", ErrPeerClosed), "")
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.fail(fmt.Errorf("%w: nothing received from the peer for %v", ErrIdleTimeout, s.l.cfg.IdleTimeout), "")
	default:
		s.fail(fmt.Errorf("syncchan: read: %w", err), "")
	}
}
