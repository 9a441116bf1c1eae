package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// EchoServer answers UDP probes; open it inside the server's namespace (the
// socket stays there afterwards).
type EchoServer struct {
	conn *net.UDPConn
	done chan struct{}
}

// ListenEcho binds a UDP echo server on port. Call it inside the namespace.
func ListenEcho(port int) (*EchoServer, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, err
	}
	s := &EchoServer{conn: c, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *EchoServer) serve() {
	defer close(s.done)
	buf := make([]byte, 64)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = s.conn.WriteToUDPAddrPort(buf[:n], from)
	}
}

// Close stops the server.
func (s *EchoServer) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// Prober sends a numbered UDP probe every interval to a target and records
// when each answer came back. The outage of a failover is the longest gap
// between consecutive answers.
type Prober struct {
	conn     *net.UDPConn
	target   netip.AddrPort
	interval time.Duration
	start    time.Time

	mu      sync.Mutex
	answers []time.Duration // receive times since start, in order
	sent    uint64
	wg      sync.WaitGroup
}

// DialProbe opens the prober's socket; call it inside the client's namespace.
func DialProbe(target netip.AddrPort, interval time.Duration) (*Prober, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return nil, err
	}
	return &Prober{conn: c, target: target, interval: interval}, nil
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	p.start = time.Now()
	p.wg.Add(1)
	go p.receive()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	buf := make([]byte, 16)
	for seq := uint64(0); ; seq++ {
		binary.BigEndian.PutUint64(buf, seq)
		binary.BigEndian.PutUint64(buf[8:], uint64(time.Since(p.start)))
		_, _ = p.conn.WriteToUDPAddrPort(buf, p.target)
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			_ = p.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			p.wg.Wait()
			p.conn.Close()
			return
		case <-t.C:
		}
	}
}

func (p *Prober) receive() {
	defer p.wg.Done()
	buf := make([]byte, 64)
	for {
		n, err := p.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP unreachable reported on the socket
		}
		if n < 16 {
			continue
		}
		at := time.Since(p.start)
		p.mu.Lock()
		p.answers = append(p.answers, at)
		p.mu.Unlock()
	}
}

// Answered reports how many probes were answered so far.
func (p *Prober) Answered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.answers)
}

// Mark returns the prober's clock now, for GapAfter.
func (p *Prober) Mark() time.Duration { return time.Since(p.start) }

// GapAfter is the longest gap between consecutive answers that ends after
// mark: the outage caused by something done at mark. ok is false when no
// answer arrived after mark.
func (p *Prober) GapAfter(mark time.Duration) (gap time.Duration, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 1; i < len(p.answers); i++ {
		if p.answers[i] <= mark {
			continue
		}
		ok = true
		gap = max(gap, p.answers[i]-p.answers[i-1])
	}
	return gap, ok
}
