package announce

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
)

// Announcer sends announcements and probes for addresses on one interface.
// Its methods may be called from several goroutines.
type Announcer struct {
	ifi  *net.Interface
	log  *slog.Logger
	conn *packet.Conn
}

// NewAnnouncer opens a send-only packet socket on ifi. Call it from a
// goroutine whose thread is in ifi's network namespace; the socket stays
// there.
func NewAnnouncer(ifi *net.Interface, logger *slog.Logger) (*Announcer, error) {
	if ifi == nil {
		return nil, errors.New("announce: nil interface")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Protocol 0: bound to the interface for sending, receives nothing.
	conn, err := packet.Listen(ifi, packet.Raw, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %s: %w", ifi.Name, err)
	}
	return &Announcer{ifi: ifi, log: logger, conn: conn}, nil
}

// Close closes the socket.
func (a *Announcer) Close() error { return a.conn.Close() }

// Announce sends count bursts, interval apart, the first at once; a burst
// has two gratuitous ARPs (request and reply form) per IPv4 address and one
// unsolicited override neighbour advertisement per IPv6 address, all from
// hw. It returns early with ctx's error when ctx ends between bursts.
func (a *Announcer) Announce(ctx context.Context, addrs []netip.Addr, hw net.HardwareAddr, count int, interval time.Duration) error {
	if count < 1 {
		return fmt.Errorf("announce on %s: count %d < 1", a.ifi.Name, count)
	}
	frames, err := a.build(addrs, hw, announceFrames)
	if err != nil {
		return err
	}
	var t *time.Timer
	for i := range count {
		if i > 0 {
			if t == nil {
				t = time.NewTimer(interval)
				defer t.Stop()
			} else {
				t.Reset(interval)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
		if err := a.send(frames); err != nil {
			return err
		}
	}
	a.log.Debug("announced", "interface", a.ifi.Name, "addrs", addrs, "mac", hw.String(), "bursts", count)
	return nil
}

// Probe sends, once, a request that any holder of addrs answers to hw (and
// so to WatchConflicts on this interface): an ARP probe per IPv4 address and
// a neighbour solicitation from hw's EUI-64 link-local address per IPv6
// address. It changes no one's neighbour cache but the holder's entry for
// that link-local address.
func (a *Announcer) Probe(addrs []netip.Addr, hw net.HardwareAddr) error {
	frames, err := a.build(addrs, hw, probeFrames)
	if err != nil {
		return err
	}
	return a.send(frames)
}

type frame struct {
	addr netip.Addr
	dst  net.HardwareAddr
	b    []byte
}

func (a *Announcer) send(frames []frame) error {
	for _, f := range frames {
		if _, err := a.conn.WriteTo(f.b, &packet.Addr{HardwareAddr: f.dst}); err != nil {
			return fmt.Errorf("send for %s on %s: %w", f.addr, a.ifi.Name, err)
		}
	}
	return nil
}

func (a *Announcer) build(addrs []netip.Addr, hw net.HardwareAddr, mk func(netip.Addr, net.HardwareAddr) ([]frame, error)) ([]frame, error) {
	if len(hw) != 6 {
		return nil, fmt.Errorf("announce on %s: %q is not an Ethernet MAC", a.ifi.Name, hw)
	}
	var frames []frame
	for _, ip := range addrs {
		fs, err := mk(ip.WithZone(""), hw)
		if err != nil {
			return nil, fmt.Errorf("build frames for %s on %s: %w", ip, a.ifi.Name, err)
		}
		frames = append(frames, fs...)
	}
	return frames, nil
}

var (
	zeroMAC     = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = multicastMAC(allNodes)
)

func announceFrames(ip netip.Addr, hw net.HardwareAddr) ([]frame, error) {
	switch {
	case ip.Is4():
		req, err := arpFrame(arp.OperationRequest, hw, ip, zeroMAC, ip)
		if err != nil {
			return nil, err
		}
		rep, err := arpFrame(arp.OperationReply, hw, ip, hw, ip)
		if err != nil {
			return nil, err
		}
		return []frame{req, rep}, nil
	case ip.Is6() && !ip.Is4In6():
		na := &ndp.NeighborAdvertisement{
			Router:        true,
			Override:      true,
			TargetAddress: ip,
			Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: hw}},
		}
		f, err := ndpFrame(na, hw, ip, allNodes)
		if err != nil {
			return nil, err
		}
		return []frame{f}, nil
	}
	return nil, errors.New("not an IPv4 or IPv6 address")
}

func probeFrames(ip netip.Addr, hw net.HardwareAddr) ([]frame, error) {
	switch {
	case ip.Is4():
		f, err := arpFrame(arp.OperationRequest, hw, netip.IPv4Unspecified(), zeroMAC, ip)
		if err != nil {
			return nil, err
		}
		return []frame{f}, nil
	case ip.Is6() && !ip.Is4In6():
		snm, err := ndp.SolicitedNodeMulticast(ip)
		if err != nil {
			return nil, err
		}
		ns := &ndp.NeighborSolicitation{
			TargetAddress: ip,
			Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: hw}},
		}
		f, err := ndpFrame(ns, hw, eui64LinkLocal(hw), snm)
		if err != nil {
			return nil, err
		}
		return []frame{f}, nil
	}
	return nil, errors.New("not an IPv4 or IPv6 address")
}

func arpFrame(op arp.Operation, hw net.HardwareAddr, sip netip.Addr, tha net.HardwareAddr, tip netip.Addr) (frame, error) {
	p, err := arp.NewPacket(op, hw, sip, tha, tip)
	if err != nil {
		return frame{}, err
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return frame{}, err
	}
	return ethFrame(tip, ethernet.Broadcast, hw, ethernet.EtherTypeARP, pb)
}

// ndpFrame builds Ethernet + IPv6 (hop limit 255) + ICMPv6 with checksum.
func ndpFrame(m ndp.Message, hw net.HardwareAddr, src, dst netip.Addr) (frame, error) {
	icmp, err := ndp.MarshalMessageChecksum(m, src, dst)
	if err != nil {
		return frame{}, err
	}
	ip6 := make([]byte, 40, 40+len(icmp))
	ip6[0] = 6 << 4
	binary.BigEndian.PutUint16(ip6[4:6], uint16(len(icmp)))
	ip6[6] = 58 // ICMPv6
	ip6[7] = ndp.HopLimit
	s, d := src.As16(), dst.As16()
	copy(ip6[8:24], s[:])
	copy(ip6[24:40], d[:])
	var target netip.Addr
	switch m := m.(type) {
	case *ndp.NeighborAdvertisement:
		target = m.TargetAddress
	case *ndp.NeighborSolicitation:
		target = m.TargetAddress
	}
	return ethFrame(target, multicastMAC(dst), hw, ethernet.EtherTypeIPv6, append(ip6, icmp...))
}

func ethFrame(addr netip.Addr, dst, src net.HardwareAddr, et ethernet.EtherType, payload []byte) (frame, error) {
	f := &ethernet.Frame{Destination: dst, Source: src, EtherType: et, Payload: payload}
	b, err := f.MarshalBinary()
	return frame{addr: addr, dst: dst, b: b}, err
}

// multicastMAC maps an IPv6 multicast address to its Ethernet group
// (RFC 2464 §7).
func multicastMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As16()
	return net.HardwareAddr{0x33, 0x33, a[12], a[13], a[14], a[15]}
}

// eui64LinkLocal is fe80::/64 with the modified EUI-64 interface
// identifier of hw (RFC 4291 appendix A).
func eui64LinkLocal(hw net.HardwareAddr) netip.Addr {
	return netip.AddrFrom16([16]byte{
		0xfe, 0x80, 0, 0, 0, 0, 0, 0,
		hw[0] ^ 0x02, hw[1], hw[2], 0xff, 0xfe, hw[3], hw[4], hw[5],
	})
}
