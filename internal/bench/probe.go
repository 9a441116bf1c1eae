package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sort"
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

	mu       sync.Mutex
	answers  []time.Duration // receive times since start, in order
	rtts     []time.Duration // round trip of each answer in answers
	sent     uint64
	sentAt   []time.Duration // send time of probe seq, since start
	answered []bool          // probe seq was answered
	wg       sync.WaitGroup
}

// DialProbe opens the prober's socket; call it inside the client's namespace.
func DialProbe(target netip.AddrPort, interval time.Duration) (*Prober, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return nil, err
	}
	// The clock starts here rather than in Run, so Mark can be called from
	// any goroutine without racing with Run.
	// The records are preallocated for ~17 minutes at 1 kHz, so that the
	// prober does not stall on copying them as they grow.
	const n = 1 << 20
	return &Prober{conn: c, target: target, interval: interval, start: time.Now(),
		answers: make([]time.Duration, 0, n), rtts: make([]time.Duration, 0, n),
		sentAt: make([]time.Duration, 0, n), answered: make([]bool, 0, n)}, nil
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	p.wg.Add(1)
	go p.receive()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	buf := make([]byte, 16)
	for seq := uint64(0); ; seq++ {
		at := time.Since(p.start)
		binary.BigEndian.PutUint64(buf, seq)
		binary.BigEndian.PutUint64(buf[8:], uint64(at))
		p.mu.Lock()
		p.sent++
		p.sentAt = append(p.sentAt, at)
		p.answered = append(p.answered, false)
		p.mu.Unlock()
		_, _ = p.conn.WriteToUDPAddrPort(buf, p.target)
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
		seq := binary.BigEndian.Uint64(buf)
		p.mu.Lock()
		var rtt time.Duration
		if seq < uint64(len(p.answered)) {
			p.answered[seq] = true
			rtt = at - p.sentAt[seq]
		}
		p.answers = append(p.answers, at)
		p.rtts = append(p.rtts, rtt)
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
	return p.GapBetween(mark, 1<<62)
}

// GapBetween is the longest gap between consecutive answers that ends in
// (from, to]: the outage caused by something done at from, observed until
// to (so that what is done after to, such as repairing the failure, is not
// counted). ok is false when no answer arrived in (from, to].
func (p *Prober) GapBetween(from, to time.Duration) (gap time.Duration, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.answers), func(i int) bool { return p.answers[i] > from })
	for i = max(i, 1); i < len(p.answers) && p.answers[i] <= to; i++ {
		ok = true
		gap = max(gap, p.answers[i]-p.answers[i-1])
	}
	return gap, ok
}

// LastAnswer is the prober's clock at the latest answer; ok is false when
// nothing was answered yet.
func (p *Prober) LastAnswer() (at time.Duration, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.answers) == 0 {
		return 0, false
	}
	return p.answers[len(p.answers)-1], true
}

// Flowing reports whether traffic has been flowing for the last window:
// answers came back all along, never more than maxGap apart, and the latest
// less than maxGap ago.
func (p *Prober) Flowing(window, maxGap time.Duration) bool {
	now := p.Mark()
	if now < window {
		return false
	}
	from := now - window
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.answers)
	if n == 0 || now-p.answers[n-1] >= maxGap {
		return false
	}
	i := sort.Search(n, func(i int) bool { return p.answers[i] > from })
	if i == n || p.answers[i]-from >= maxGap {
		return false
	}
	for i++; i < n; i++ {
		if p.answers[i]-p.answers[i-1] >= maxGap {
			return false
		}
	}
	return true
}

// Lost counts the probes sent in [from, to] that were never answered. Call
// it a round trip or more after to, or probes in flight count as lost.
func (p *Prober) Lost(from, to time.Duration) (lost, sent int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.sentAt), func(i int) bool { return p.sentAt[i] >= from })
	for ; i < len(p.sentAt) && p.sentAt[i] <= to; i++ {
		sent++
		if !p.answered[i] {
			lost++
		}
	}
	return lost, sent
}

// LossWindow is the longest run of unanswered probes sent in [from, to],
// measured on the sender's clock: from the last answered probe before the
// run to the first answered one after it. Unlike the gap between answers it
// does not grow when the prober itself is delayed (no probe is lost then),
// so it tells a network outage from a stall of the measuring host. 0 when
// no probe was lost.
func (p *Prober) LossWindow(from, to time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.sentAt), func(i int) bool { return p.sentAt[i] >= from })
	var worst time.Duration
	for i < len(p.sentAt) && p.sentAt[i] <= to {
		if p.answered[i] {
			i++
			continue
		}
		j := i
		for j < len(p.sentAt) && !p.answered[j] {
			j++
		}
		if j == len(p.sentAt) {
			break // still running: not a closed window
		}
		start := from
		if i > 0 {
			start = p.sentAt[i-1]
		}
		worst = max(worst, p.sentAt[j]-start)
		i = j
	}
	return worst
}

// MaxRTT is the longest round trip of the answers received in (from, to]. A
// gap between answers with a long round trip and no loss means packets were
// held somewhere (a neighbour resolution queue, a stalled echo server), not
// dropped.
func (p *Prober) MaxRTT(from, to time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var worst time.Duration
	i := sort.Search(len(p.answers), func(i int) bool { return p.answers[i] > from })
	for ; i < len(p.answers) && p.answers[i] <= to; i++ {
		worst = max(worst, p.rtts[i])
	}
	return worst
}

// MaxSendGap is the longest time between consecutive probes sent in
// [from, to]: a stall of the prober itself.
func (p *Prober) MaxSendGap(from, to time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var worst time.Duration
	i := sort.Search(len(p.sentAt), func(i int) bool { return p.sentAt[i] >= from })
	for i = max(i, 1); i < len(p.sentAt) && p.sentAt[i] <= to; i++ {
		worst = max(worst, p.sentAt[i]-p.sentAt[i-1])
	}
	return worst
}
