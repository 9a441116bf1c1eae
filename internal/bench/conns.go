package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// StreamServer accepts TCP connections and echoes every byte back, after
// checking that the stream is the counter pattern the client sends: a lost,
// duplicated or reordered byte is an error recorded for that connection.
type StreamServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

// ListenStream binds the server; call it inside the server's namespace.
func ListenStream(port int) (*StreamServer, error) {
	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	s := &StreamServer{ln: ln}
	s.wg.Go(s.accept)
	return s, nil
}

func (s *StreamServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() {
			defer c.Close()
			buf := make([]byte, 4096)
			var want byte
			for {
				n, err := c.Read(buf)
				for i := range n {
					if buf[i] != want {
						s.fail(fmt.Errorf("server: byte %d out of order (got %d, want %d)", i, buf[i], want))
						return
					}
					want = next(want)
				}
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						s.fail(fmt.Errorf("server write: %w", werr))
						return
					}
				}
				if err != nil {
					if !errors.Is(err, io.EOF) {
						s.fail(fmt.Errorf("server read: %w", err))
					}
					return
				}
			}
		})
	}
}

func (s *StreamServer) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// Errors are the server-side failures so far.
func (s *StreamServer) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.errs...)
}

// Close stops the server and its connections.
func (s *StreamServer) Close() {
	s.ln.Close()
	s.wg.Wait()
}

// next is the counter pattern (mod 251, a prime, so chunk boundaries never
// line up with it).
func next(b byte) byte { return byte((int(b) + 1) % 251) }

// Stream is one client connection sending the counter pattern continuously
// and checking the echo.
type Stream struct {
	conn     net.Conn
	sent     atomic.Int64
	received atomic.Int64
	lastRecv atomic.Int64 // unix nanos of the last echo
	err      atomic.Pointer[error]
}

// Streams is a set of client connections through the firewall.
type Streams struct {
	All    []*Stream
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// DialStreams opens n connections to target (call it inside the client's
// namespace) and starts each sending chunk bytes every interval.
func DialStreams(target netip.AddrPort, n, chunk int, interval time.Duration) (*Streams, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ss := &Streams{cancel: cancel}
	d := net.Dialer{Timeout: 5 * time.Second}
	for i := range n {
		c, err := d.Dial("tcp4", target.String())
		if err != nil {
			ss.Close()
			return nil, fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
		ss.All = append(ss.All, &Stream{conn: c})
	}
	for i, s := range ss.All {
		// Spread the writes over the interval.
		offset := interval * time.Duration(i) / time.Duration(n)
		ss.wg.Go(func() { s.write(ctx, chunk, interval, offset) })
		ss.wg.Go(func() { s.read() })
	}
	return ss, nil
}

func (s *Stream) fail(err error) { s.err.CompareAndSwap(nil, &err) }

// Err is the first failure of the connection, nil while it is healthy.
func (s *Stream) Err() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Stream) write(ctx context.Context, chunk int, interval, offset time.Duration) {
	buf := make([]byte, chunk)
	var b byte
	select {
	case <-time.After(offset):
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for i := range buf {
			buf[i] = b
			b = next(b)
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := s.conn.Write(buf); err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("write: %w", err))
			}
			return
		}
		s.sent.Add(int64(chunk))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Stream) read() {
	buf := make([]byte, 4096)
	var want byte
	for {
		n, err := s.conn.Read(buf)
		for i := range n {
			if buf[i] != want {
				s.fail(fmt.Errorf("echo byte out of order (got %d, want %d)", buf[i], want))
				return
			}
			want = next(want)
		}
		if n > 0 {
			s.received.Add(int64(n))
			s.lastRecv.Store(time.Now().UnixNano())
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				s.fail(fmt.Errorf("read: %w", err))
			}
			return
		}
	}
}

// Progressed counts the connections that received an echo after t, and
// those that failed.
func (ss *Streams) Progressed(t time.Time) (ok, failed int) {
	for _, s := range ss.All {
		switch {
		case s.Err() != nil:
			failed++
		case s.lastRecv.Load() > t.UnixNano():
			ok++
		}
	}
	return ok, failed
}

// Drain stops sending and waits until every byte sent was echoed (or the
// timeout passes); it returns the connections whose echo is incomplete.
func (ss *Streams) Drain(timeout time.Duration) (incomplete int) {
	ss.cancel()
	deadline := time.Now().Add(timeout)
	for {
		incomplete = 0
		for _, s := range ss.All {
			if s.Err() == nil && s.received.Load() != s.sent.Load() {
				incomplete++
			}
		}
		if incomplete == 0 || time.Now().After(deadline) {
			return incomplete
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FirstErrors lists up to n distinct failures, for a test's message.
func (ss *Streams) FirstErrors(n int) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss.All {
		if err := s.Err(); err != nil && !seen[err.Error()] && len(out) < n {
			seen[err.Error()] = true
			out = append(out, err.Error())
		}
	}
	return out
}

// Close ends every connection.
func (ss *Streams) Close() {
	ss.cancel()
	for _, s := range ss.All {
		s.conn.Close()
	}
	ss.wg.Wait()
}
