// Package heartbeat is the UDP adapter that carries heartbeats between the
// two units: one socket per path (the HA link and each watched interface),
// bound to this unit's address on that path and sending to the peer's.
//
// Received packets are authenticated and checked for replay here, at the
// edge, with one wire.Signer and one wire.ReplayGuard per path, so the event
// loop only ever sees heartbeats that passed every check. Drops are counted
// per path and per reason.
//
// It must never decide anything about HA state: it moves bytes and reports
// what arrived.
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/wire"
)

// Path is one heartbeat path.
type Path struct {
	Name  string         // "ha0", "lan0"
	Local netip.AddrPort // this unit's address on the path
	Peer  netip.AddrPort // the peer's address on the path
}

// Received is an authentic, fresh heartbeat from the peer.
type Received struct {
	Path int
	At   time.Time
	HB   wire.Heartbeat
}

// Options configure a Transport.
type Options struct {
	Key       []byte
	ClusterID uint8
	NodeID    uint8 // this unit's own id: heartbeats carrying it are reflections
	Logger    *slog.Logger
}

// Transport owns the sockets of every path.
type Transport struct {
	opts  Options
	paths []Path
	conns []*net.UDPConn
	drops []dropCounters

	sendMu   sync.Mutex // Send may be called from the loop and from shutdown
	signer   *wire.Signer
	buf      []byte
	sendErrs []atomic.Uint64
	// peers is each path's peer as a sockaddr, with the interface index
	// of a zoned (link-local) IPv6 address.
	peers []unix.Sockaddr
}

type dropCounters struct {
	mu sync.Mutex
	c  wire.DropCounters
	// reflected counts our own heartbeats coming back.
	reflected uint64
}

// Open binds a socket on every path. Addresses are bound with IP_FREEBIND so
// a unit can start before its addresses are configured (or while a link is
// down) and start hearing as soon as they are.
func Open(paths []Path, o Options) (*Transport, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		opts: o, paths: paths,
		drops:    make([]dropCounters, len(paths)),
		sendErrs: make([]atomic.Uint64, len(paths)),
		signer:   wire.NewSigner(o.Key),
		buf:      make([]byte, 0, wire.HeartbeatSize),
	}
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = setSocketOptions(int(fd), network)
		})
		return errors.Join(err, serr)
	}}
	for _, p := range paths {
		network := "udp4"
		if p.Local.Addr().Is6() {
			network = "udp6"
		}
		pc, err := lc.ListenPacket(context.Background(), network, p.Local.String())
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("heartbeat path %s: bind %s: %w", p.Name, p.Local, err)
		}
		t.conns = append(t.conns, pc.(*net.UDPConn))
		sa, err := sockaddr(p.Peer)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("heartbeat path %s: peer %s: %w", p.Name, p.Peer, err)
		}
		t.peers = append(t.peers, sa)
	}
	return t, nil
}

// Paths returns the configured paths.
func (t *Transport) Paths() []Path { return t.paths }

// Send signs hb once and sends it on every path. A path that cannot send
// (link down, address missing) is counted, never fatal.
func (t *Transport) Send(hb *wire.Heartbeat) {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	t.buf = t.signer.Append(t.buf[:0], hb)
	for i := range t.conns {
		if err := t.sendNow(i); err != nil {
			t.sendErrs[i].Add(1)
		}
	}
}

// Receive reads every path until ctx ends, delivering authentic, fresh
// heartbeats to out. It returns when all readers have stopped.
func (t *Transport) Receive(ctx context.Context, out chan<- Received) {
	var wg sync.WaitGroup
	for i := range t.conns {
		wg.Go(func() { t.readPath(ctx, i, out) })
	}
	go func() {
		<-ctx.Done()
		for _, c := range t.conns {
			_ = c.SetReadDeadline(time.Now())
		}
	}()
	wg.Wait()
}

func (t *Transport) readPath(ctx context.Context, i int, out chan<- Received) {
	conn := t.conns[i]
	signer := wire.NewSigner(t.opts.Key) // Signer is not safe for concurrent use
	var guard wire.ReplayGuard
	buf := make([]byte, 2048)
	d := &t.drops[i]
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			t.opts.Logger.Warn("heartbeat read failed", "path", t.paths[i].Name, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		at := time.Now()
		var hb wire.Heartbeat
		err = signer.Parse(buf[:n], t.opts.ClusterID, &hb)
		if err == nil && hb.NodeID == t.opts.NodeID {
			d.mu.Lock()
			d.reflected++
			d.mu.Unlock()
			continue
		}
		if err == nil {
			err = guard.Check(hb.BootID, hb.Seq)
		}
		if err != nil {
			d.mu.Lock()
			d.c.Count(err)
			d.mu.Unlock()
			t.opts.Logger.Debug("heartbeat dropped", "path", t.paths[i].Name, "from", from, "reason", err)
			continue
		}
		guard.Accept(hb.BootID, hb.Seq)
		select {
		case out <- Received{Path: i, At: at, HB: hb}:
		case <-ctx.Done():
			return
		}
	}
}

// PathStats is the per-path counters for status output.
type PathStats struct {
	Drops      wire.DropCounters
	Reflected  uint64
	SendErrors uint64
}

// Stats returns a snapshot of every path's counters.
func (t *Transport) Stats() []PathStats {
	out := make([]PathStats, len(t.paths))
	for i := range t.drops {
		d := &t.drops[i]
		d.mu.Lock()
		out[i] = PathStats{Drops: d.c, Reflected: d.reflected, SendErrors: t.sendErrs[i].Load()}
		d.mu.Unlock()
	}
	return out
}

// Close closes every socket.
func (t *Transport) Close() error {
	var errs []error
	for _, c := range t.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// sendNow sends the signed heartbeat on path i without ever waiting: a full
// socket buffer (the peer powered off, its neighbour entry unresolved)
// drops this heartbeat instead of parking the event loop until the buffer
// drains, which a plain write on a Go socket would do.
func (t *Transport) sendNow(i int) error {
	rc, err := t.conns[i].SyscallConn()
	if err != nil {
		return err
	}
	sa := t.peers[i]
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), t.buf, unix.MSG_DONTWAIT, sa)
		return true // done either way: never wait for writability
	})
	return errors.Join(err, serr)
}

func sockaddr(ap netip.AddrPort) (unix.Sockaddr, error) {
	if a := ap.Addr(); a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}, nil
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if z := ap.Addr().Zone(); z != "" {
		ifi, err := net.InterfaceByName(z)
		if err != nil {
			return nil, fmt.Errorf("zone %q: %w", z, err)
		}
		sa.ZoneId = uint32(ifi.Index)
	}
	return sa, nil
}
