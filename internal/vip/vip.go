package vip

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is one interface of the unit and the VIPs it carries when the
// unit is ACTIVE.
type Interface struct {
	// Name is the parent link, which keeps the unit's own addresses.
	Name string
	// VIPs are added with their prefix length as given (192.0.2.1/24).
	VIPs []netip.Prefix
	// VirtualMAC puts the VIPs on a macvlan "<Name>.vip" with a VRRP MAC.
	VirtualMAC bool
}

// Options tune a Manager.
type Options struct {
	// ClusterID (1..255) is the last byte of the virtual MAC; required when
	// an interface has VirtualMAC.
	ClusterID uint8
	// Logger receives what the Manager changes; nil discards.
	Logger *slog.Logger
	// NetNS is the namespace the handle was opened in, where the ARP
	// sysctls of virtual-MAC links are written. Nil means the namespace of
	// the calling thread, which is right when the handle is too.
	NetNS *netns.NsHandle
}

// Acquired is one VIP the Manager holds, with the link it lives on: what
// an announcer needs to advertise it.
type Acquired struct {
	Interface    string
	Index        int
	HardwareAddr net.HardwareAddr
	Prefix       netip.Prefix
}

// Manager adds and removes the configured VIPs. Its methods may be called
// from several goroutines; they are serialised.
type Manager struct {
	mu     sync.Mutex
	h      *netlink.Handle
	log    *slog.Logger
	opts   Options
	ifaces []*iface
}

type iface struct {
	cfg      Interface
	parent   netlink.Link
	link     netlink.Link // where the VIPs live: parent, or the macvlan
	linkName string
	vmac     net.HardwareAddr // nil without VirtualMAC
	addrs    []*netlink.Addr  // prepared requests, one per VIP
}

// New resolves the interfaces by name through h and prepares the netlink
// requests. For VirtualMAC interfaces it creates the macvlan (down) if it is
// missing and sets the ARP sysctls described in the package documentation.
func New(h *netlink.Handle, ifaces []Interface, opts Options) (*Manager, error) {
	if h == nil {
		return nil, errors.New("vip: nil netlink handle")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{h: h, log: log, opts: opts}
	seenVIP := map[netip.Addr]string{}
	seenLink := map[string]string{}
	for _, cfg := range ifaces {
		if cfg.Name == "" {
			return nil, errors.New("vip: interface with empty name; check interfaces[].name")
		}
		ifc := &iface{cfg: cfg, linkName: cfg.Name}
		hasV4 := false
		for _, p := range cfg.VIPs {
			if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				return nil, fmt.Errorf("vip: interface %s: invalid VIP %s", cfg.Name, p)
			}
			if other, dup := seenVIP[p.Addr()]; dup {
				return nil, fmt.Errorf("vip: VIP %s configured on both %s and %s", p.Addr(), other, cfg.Name)
			}
			seenVIP[p.Addr()] = cfg.Name
			hasV4 = hasV4 || p.Addr().Is4()
			ifc.addrs = append(ifc.addrs, netlinkAddr(p))
		}
		if cfg.VirtualMAC {
			if opts.ClusterID == 0 {
				return nil, fmt.Errorf("vip: interface %s has virtual_mac but the cluster id is 0; set it (1-255)", cfg.Name)
			}
			ifc.linkName = MacvlanName(cfg.Name)
			ifc.vmac = VirtualMAC(opts.ClusterID, hasV4)
		}
		if other, dup := seenLink[ifc.linkName]; dup {
			return nil, fmt.Errorf("vip: interfaces %s and %s both map to link %s", other, cfg.Name, ifc.linkName)
		}
		seenLink[ifc.linkName] = cfg.Name
		if err := m.resolve(ifc); err != nil {
			return nil, err
		}
		m.ifaces = append(m.ifaces, ifc)
	}
	return m, nil
}

// MacvlanName is the name of the virtual-MAC link of parent: "<parent>.vip",
// with parent cut to 11 bytes to fit IFNAMSIZ.
func MacvlanName(parent string) string {
	const suffix = ".vip"
	if max := unix.IFNAMSIZ - 1 - len(suffix); len(parent) > max {
		parent = parent[:max]
	}
	return parent + suffix
}

// VirtualMAC is the VRRP virtual router MAC for id: 00:00:5e:00:01:id when
// the interface has an IPv4 VIP, else 00:00:5e:00:02:id (RFC 5798 §7.3).
func VirtualMAC(id uint8, ipv4 bool) net.HardwareAddr {
	fam := byte(0x02)
	if ipv4 {
		fam = 0x01
	}
	return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, fam, id}
}

func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// resolve looks the links of ifc up (again), creating the macvlan if needed.
func (m *Manager) resolve(ifc *iface) error {
	parent, err := m.h.LinkByName(ifc.cfg.Name)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("interface %s does not exist; check interfaces[].name: %w", ifc.cfg.Name, err)
		}
		return fmt.Errorf("look up interface %s: %w", ifc.cfg.Name, err)
	}
	ifc.parent, ifc.link = parent, parent
	if ifc.vmac == nil {
		return nil
	}
	if ifc.link, err = m.ensureMacvlan(ifc); err != nil {
		return err
	}
	// No kernel-made link-local address: both units would generate the same
	// one from the shared MAC, and setting the link up costs ~4 ms with it
	// (~0.3 ms without). IPv6 VIPs work without it (NAs for a VIP are sent
	// from the VIP itself).
	if err := m.h.LinkSetIP6AddrGenMode(ifc.link, addrGenModeNone); err != nil && hasV6(ifc.cfg.VIPs) {
		return fmt.Errorf("set addrgenmode none on %s: %w", ifc.linkName, err)
	}
	return inNetNS(m.opts.NetNS, func() error {
		for _, name := range []string{ifc.cfg.Name, ifc.linkName} {
			if err := raiseSysctl(m.log, name, "arp_ignore", 1); err != nil {
				return err
			}
			if err := raiseSysctl(m.log, name, "arp_announce", 2); err != nil {
				return err
			}
		}
		return nil
	})
}

func (m *Manager) ensureMacvlan(ifc *iface) (netlink.Link, error) {
	parentIdx := ifc.parent.Attrs().Index
	l, err := m.h.LinkByName(ifc.linkName)
	switch {
	case err == nil:
		mv, ok := l.(*netlink.Macvlan)
		if !ok || mv.ParentIndex != parentIdx {
			return nil, fmt.Errorf("link %s exists but is not a macvlan on %s; remove it or turn virtual_mac off", ifc.linkName, ifc.cfg.Name)
		}
		if !bytes.Equal(mv.HardwareAddr, ifc.vmac) {
			if err := m.h.LinkSetHardwareAddr(mv, ifc.vmac); err != nil {
				return nil, fmt.Errorf("set MAC %s on %s: %w", ifc.vmac, ifc.linkName, err)
			}
			m.log.Info("virtual MAC changed", "link", ifc.linkName, "from", mv.HardwareAddr.String(), "to", ifc.vmac.String())
			mv.HardwareAddr = ifc.vmac
		}
		return mv, nil
	case isNotFound(err):
		mv := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: ifc.linkName, ParentIndex: parentIdx, HardwareAddr: ifc.vmac},
			Mode:      netlink.MACVLAN_MODE_PRIVATE,
		}
		if err := m.h.LinkAdd(mv); err != nil {
			return nil, fmt.Errorf("create macvlan %s on %s: %w", ifc.linkName, ifc.cfg.Name, err)
		}
		m.log.Info("virtual MAC link created", "link", ifc.linkName, "parent", ifc.cfg.Name, "mac", ifc.vmac.String())
		l, err := m.h.LinkByName(ifc.linkName)
		if err != nil {
			return nil, fmt.Errorf("look up new macvlan %s: %w", ifc.linkName, err)
		}
		return l, nil
	default:
		return nil, fmt.Errorf("look up %s: %w", ifc.linkName, err)
	}
}

// Acquire adds every VIP (idempotent) and returns those it holds. It keeps
// going past a failed interface or address and returns all errors joined,
// so a partial failure still leaves as many VIPs up as possible.
func (m *Manager) Acquire() ([]Acquired, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Acquired
	var errs []error
	for _, ifc := range m.ifaces {
		if err := m.retryNoDev(ifc, func() error { return m.linkUp(ifc) }); err != nil {
			errs = append(errs, err)
			continue
		}
		for i, a := range ifc.addrs {
			p := ifc.cfg.VIPs[i]
			err := m.retryNoDev(ifc, func() error { return m.h.AddrReplace(ifc.link, a) })
			if err != nil {
				errs = append(errs, fmt.Errorf("add VIP %s on %s: %w", p, ifc.linkName, err))
				continue
			}
			attrs := ifc.link.Attrs()
			out = append(out, Acquired{Interface: attrs.Name, Index: attrs.Index, HardwareAddr: attrs.HardwareAddr, Prefix: p})
		}
	}
	return out, errors.Join(errs...)
}

func (m *Manager) linkUp(ifc *iface) error {
	if ifc.vmac == nil {
		return nil
	}
	if err := m.h.LinkSetUp(ifc.link); err != nil {
		return fmt.Errorf("set %s up: %w", ifc.linkName, err)
	}
	return nil
}

// retryNoDev runs op and, if the link has vanished since it was resolved
// (recreated VLAN or bond, macvlan deleted by hand), resolves it again and
// retries once.
func (m *Manager) retryNoDev(ifc *iface, op func() error) error {
	err := op()
	if !errors.Is(err, unix.ENODEV) {
		return err
	}
	m.log.Warn("link changed under the VIP manager; resolving it again", "link", ifc.linkName)
	if rerr := m.resolve(ifc); rerr != nil {
		return errors.Join(err, rerr)
	}
	return op()
}

// Release removes every configured VIP (idempotent: an address or link that
// is already gone is not an error) and sets the virtual-MAC links down. Only
// the configured addresses, with their configured prefix length, are
// removed.
func (m *Manager) Release() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, ifc := range m.ifaces {
		for i, a := range ifc.addrs {
			err := m.h.AddrDel(ifc.link, a)
			if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("remove VIP %s from %s: %w", ifc.cfg.VIPs[i], ifc.linkName, err))
			}
		}
		if ifc.vmac != nil {
			if err := m.h.LinkSetDown(ifc.link); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("set %s down: %w", ifc.linkName, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Held returns the configured VIPs that are in the kernel now, on the link
// they belong to, with the configured prefix length, in configuration order.
func (m *Manager) Held() ([]netip.Prefix, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all, err := m.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	type key struct {
		index int
		p     netip.Prefix
	}
	present := make(map[key]bool, len(all))
	for _, a := range all {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		present[key{a.LinkIndex, netip.PrefixFrom(ip.Unmap(), bits)}] = true
	}
	var held []netip.Prefix
	for _, ifc := range m.ifaces {
		for _, p := range ifc.cfg.VIPs {
			if present[key{ifc.link.Attrs().Index, p}] {
				held = append(held, p)
			}
		}
	}
	return held, nil
}

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE from linux/if_link.h.
const addrGenModeNone = 1

func hasV6(ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
