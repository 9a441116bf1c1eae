package linkwatch

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ProbeConfig is one path monitor.
type ProbeConfig struct {
	// Target is probed with an ICMP echo when its port is 0, else with a
	// TCP connect (a refusal, RST, counts as reachable: the path works).
	Target netip.AddrPort
	// Interval between probes (default 1 s) and Timeout of each (default
	// Interval).
	Interval, Timeout time.Duration
	// Failures is how many probes in a row must fail before the path is
	// reported down (default 3). One success reports it up.
	Failures int
}

// ProbeName is the Event name of a probe: "probe:192.0.2.1" (ICMP) or
// "probe:192.0.2.1:443" (TCP).
func ProbeName(target netip.AddrPort) string {
	if target.Port() == 0 {
		return "probe:" + target.Addr().String()
	}
	return "probe:" + target.String()
}

// Probe probes cfg.Target from namespace nsh (netns.None() for the calling
// thread's) until ctx ends, and sends an Event named ProbeName(cfg.Target)
// whenever the path's state changes: Up with reason "reachable", or down
// with the last failure as reason. The first Event comes after the first
// success or the first cfg.Failures failures. It returns nil when ctx ends,
// or an error if it cannot enter the namespace or open its ICMP socket.
//
// The probing goroutine's thread is locked in nsh for its whole life, so
// every socket it opens is in nsh; the runtime discards the thread after.
func Probe(ctx context.Context, nsh netns.NsHandle, cfg ProbeConfig, out chan<- Event) error {
	if !cfg.Target.Addr().IsValid() {
		return errors.New("probe: no target address")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = cfg.Interval
	}
	if cfg.Failures <= 0 {
		cfg.Failures = 3
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if nsh.IsOpen() {
			if err := netns.Set(nsh); err != nil {
				errc <- fmt.Errorf("probe %s: enter namespace: %w", cfg.Target, err)
				return
			}
		}
		errc <- probeLoop(ctx, cfg, out)
	}()
	return <-errc
}

func probeLoop(ctx context.Context, cfg ProbeConfig, out chan<- Event) error {
	probe := func(ctx context.Context) error { return tcpProbe(ctx, cfg.Target) }
	if cfg.Target.Port() == 0 {
		p, err := newPinger(cfg.Target.Addr())
		if err != nil {
			return fmt.Errorf("probe %s: %w", cfg.Target.Addr(), err)
		}
		defer p.Close()
		probe = p.ping
	}
	name := ProbeName(cfg.Target)
	var last *Event
	failures := 0
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		err := probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		var e *Event
		if err == nil {
			failures = 0
			e = &Event{Name: name, Up: true, Reason: "reachable"}
		} else if failures++; failures >= cfg.Failures {
			e = &Event{Name: name, Reason: fmt.Sprintf("%d probes failed, last: %v", failures, err)}
		}
		// Report changes of Up only: the failure count in the reason
		// grows while down and is not news.
		if e != nil && (last == nil || last.Up != e.Up) {
			last = e
			select {
			case out <- *e:
			case <-ctx.Done():
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func tcpProbe(ctx context.Context, target netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err == nil {
		return c.Close()
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil // the target answered with RST: the path is up
	}
	return err
}

// pinger sends ICMP echo requests on one socket: raw when the process may
// (CAP_NET_RAW), else an unprivileged ping socket (net.ipv4.ping_group_range).
type pinger struct {
	conn   *icmp.PacketConn
	target netip.Addr
	dst    net.Addr
	id     uint16
	seq    uint16
	v6     bool
	raw    bool
}

func newPinger(target netip.Addr) (*pinger, error) {
	p := &pinger{target: target.Unmap(), v6: !target.Unmap().Is4()}
	var b [2]byte
	_, _ = rand.Read(b[:])
	p.id = binary.BigEndian.Uint16(b[:])
	rawNet, udpNet, local := "ip4:icmp", "udp4", "0.0.0.0"
	if p.v6 {
		rawNet, udpNet, local = "ip6:ipv6-icmp", "udp6", "::"
	}
	conn, err := icmp.ListenPacket(rawNet, local)
	if err == nil {
		p.conn, p.raw = conn, true
		p.dst = &net.IPAddr{IP: p.target.AsSlice(), Zone: p.target.Zone()}
		return p, nil
	}
	conn, uerr := icmp.ListenPacket(udpNet, local)
	if uerr != nil {
		return nil, fmt.Errorf("open ICMP socket: %w", errors.Join(err, uerr))
	}
	p.conn = conn
	p.dst = &net.UDPAddr{IP: p.target.AsSlice(), Zone: p.target.Zone()}
	return p, nil
}

func (p *pinger) Close() error { return p.conn.Close() }

func (p *pinger) ping(ctx context.Context) error {
	p.seq++
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if p.v6 {
		typ, reply, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(p.id), Seq: int(p.seq), Data: []byte("tandem")}}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	if err := p.conn.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := p.conn.WriteTo(b, p.dst); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		if src := addrOf(from); src != p.target {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n]) // net strips IPv4 headers
		if err != nil || m.Type != reply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		// Ping sockets rewrite the ID to their port and filter by it.
		if ok && echo.Seq == int(p.seq) && (!p.raw || echo.ID == int(p.id)) {
			return nil
		}
	}
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}
