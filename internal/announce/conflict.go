package announce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Conflict is another host claiming one of our addresses on the wire.
type Conflict struct {
	Interface string
	Addr      netip.Addr
	TheirMAC  net.HardwareAddr
}

// snapLen is how much of a matching packet is copied to us; NAs and ARP
// packets are far shorter.
const snapLen = 256

// naFilter passes ICMPv6 neighbour advertisements without extension
// headers (RFC 4861 messages carry none in practice), offsets from the
// IPv6 header (datagram socket).
var naFilter = mustAssemble([]bpf.Instruction{
	bpf.LoadAbsolute{Off: 6, Size: 1}, // next header
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: 2},
	bpf.LoadAbsolute{Off: 40, Size: 1}, // ICMPv6 type
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: 136, SkipTrue: 1},
	bpf.RetConstant{Val: 0},
	bpf.RetConstant{Val: snapLen},
})

func mustAssemble(ins []bpf.Instruction) []bpf.RawInstruction {
	raw, err := bpf.Assemble(ins)
	if err != nil {
		panic(err)
	}
	return raw
}

// WatchConflicts reports on out every received ARP packet or neighbour
// advertisement that claims an address in owned() for a MAC other than
// ourMAC (see the package documentation for the exact rules). owned is
// called for each such packet, so the set may change with ownership. Like
// NewAnnouncer, call it from a goroutine whose thread is in ifi's network
// namespace; the sockets are opened before it blocks.
//
// It blocks until ctx is done, then returns nil; it returns an error if a
// socket cannot be opened or fails (the interface was deleted, say).
// Sending on out blocks until the receiver takes the conflict or ctx ends.
func WatchConflicts(ctx context.Context, ifi *net.Interface, ourMAC net.HardwareAddr, owned func() []netip.Addr, out chan<- Conflict) error {
	arpConn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
	if err != nil {
		return fmt.Errorf("open ARP socket on %s: %w", ifi.Name, err)
	}
	ndpConn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IPV6, &packet.Config{Filter: naFilter})
	if err != nil {
		arpConn.Close()
		return fmt.Errorf("open ICMPv6 socket on %s: %w", ifi.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		arpConn.Close()
		ndpConn.Close()
	}()

	w := &watcher{ifi: ifi.Name, ourMAC: ourMAC, owned: owned, out: out}
	errc := make(chan error, 2)
	go func() { errc <- w.read(ctx, arpConn, w.arp) }()
	go func() { errc <- w.read(ctx, ndpConn, w.na) }()
	var errs []error
	for range 2 {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
		cancel() // one reader failed or ctx ended: stop the other too
	}
	return errors.Join(errs...)
}

type watcher struct {
	ifi    string
	ourMAC net.HardwareAddr
	owned  func() []netip.Addr
	out    chan<- Conflict
}

// read reads conn until ctx ends (nil) or it fails.
func (w *watcher) read(ctx context.Context, conn *packet.Conn, parse func([]byte, net.HardwareAddr) (netip.Addr, net.HardwareAddr, bool)) error {
	buf := make([]byte, snapLen)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read on %s: %w", w.ifi, err)
		}
		src, _ := from.(*packet.Addr)
		var srcMAC net.HardwareAddr
		if src != nil {
			srcMAC = src.HardwareAddr
		}
		addr, theirs, ok := parse(buf[:n], srcMAC)
		if !ok || bytes.Equal(theirs, w.ourMAC) || !slices.Contains(w.owned(), addr) {
			continue
		}
		c := Conflict{Interface: w.ifi, Addr: addr, TheirMAC: slices.Clone(theirs)}
		select {
		case w.out <- c:
		case <-ctx.Done():
			return nil
		}
	}
}

// arp returns the address an ARP packet claims and for which MAC.
func (w *watcher) arp(b []byte, _ net.HardwareAddr) (netip.Addr, net.HardwareAddr, bool) {
	var p arp.Packet
	if err := p.UnmarshalBinary(b); err != nil || p.IPLength != 4 || len(p.SenderHardwareAddr) != 6 {
		return netip.Addr{}, nil, false
	}
	if !p.SenderIP.IsValid() || p.SenderIP.IsUnspecified() { // ARP probe
		return netip.Addr{}, nil, false
	}
	return p.SenderIP, p.SenderHardwareAddr, true
}

// na returns the address a neighbour advertisement claims and for which
// MAC: the target link-layer address option, else the frame's source.
func (w *watcher) na(b []byte, srcMAC net.HardwareAddr) (netip.Addr, net.HardwareAddr, bool) {
	if len(b) < 40 || b[0]>>4 != 6 || b[6] != unix.IPPROTO_ICMPV6 {
		return netip.Addr{}, nil, false
	}
	m, err := ndp.ParseMessage(b[40:])
	if err != nil {
		return netip.Addr{}, nil, false
	}
	na, ok := m.(*ndp.NeighborAdvertisement)
	if !ok {
		return netip.Addr{}, nil, false
	}
	mac := srcMAC
	for _, o := range na.Options {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target {
			mac = lla.Addr
		}
	}
	if len(mac) == 0 {
		return netip.Addr{}, nil, false
	}
	return na.TargetAddress, mac, true
}
