package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path locates the value, e.g. "ha_link.dead_interval" or
	// "interfaces[1].virtual_ips[0]". Empty for problems with the file as
	// a whole, such as YAML syntax errors.
	Path string
	// Value is the offending value as written, empty when it is missing.
	Value string
	// Message says what is wrong and how to fix it.
	Message string
}

// String formats the problem as one line: `path: "value": message`.
func (p Problem) String() string {
	var b strings.Builder
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	if p.Value != "" {
		b.WriteString(strconv.Quote(p.Value))
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Problems is every problem found in a configuration. Parse, Validate and
// Load return it as their error so that all problems can be fixed at once.
type Problems []Problem

// Error lists the problems, one per line.
func (p *Problems) Error() string {
	lines := make([]string, len(*p))
	for i, pr := range *p {
		lines[i] = pr.String()
	}
	return strings.Join(lines, "\n")
}

func (p *Problems) add(path, value, format string, args ...any) {
	*p = append(*p, Problem{Path: path, Value: value, Message: fmt.Sprintf(format, args...)})
}

// err returns p as an error, or a true nil when there is nothing to report.
func (p Problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &p
}

// Validate checks c against every rule and returns all problems as a
// *Problems, or nil. It expects defaults to be filled in already (Parse
// does that), so a zero duration or port is reported, not defaulted.
func (c *Config) Validate() error {
	var p Problems
	c.validateCluster(&p)
	c.validateNode(&p)
	c.validateHALink(&p)
	c.validateInterfaces(&p)
	c.validateUnique(&p)
	c.validateSync(&p)
	absPath(&p, "control.socket", c.Control.Socket)
	absPath(&p, "state_dir", c.StateDir)
	return p.err()
}

func (c *Config) validateCluster(p *Problems) {
	cl := c.Cluster
	switch {
	case cl.ID == 0:
		p.add("cluster.id", "", "is required: set a number from 1 to 255, the same on both units and different for every cluster sharing the HA link")
	case cl.ID < 1 || cl.ID > 255:
		p.add("cluster.id", strconv.Itoa(cl.ID), "must be between 1 and 255")
	}
	if cl.AuthKeyFile == "" {
		p.add("cluster.auth_key_file", "", "is required: point it at a file holding the shared secret (at least %d bytes), e.g. created with `openssl rand -hex 32 > /etc/tandem/cluster.key` and copied to both units", MinKeySize)
	}
	durRange(p, "cluster.preempt_delay", cl.PreemptDelay, 0, time.Hour)
}

func (c *Config) validateNode(p *Problems) {
	n := c.Node
	switch {
	case n.Name == "":
		p.add("node.name", "", "is required: name this unit, e.g. fw-a (1 to 63 characters from A-Z a-z 0-9 . _ -)")
	case !validNodeName(n.Name):
		p.add("node.name", n.Name, "must be 1 to 63 characters from A-Z a-z 0-9 . _ - (no spaces)")
	}
	switch n.Role {
	case RolePrimary, RoleSecondary:
	case "":
		p.add("node.role", "", "is required: set it to primary or secondary (one unit of the pair each)")
	default:
		p.add("node.role", string(n.Role), "must be primary or secondary")
	}
	if n.Priority < 0 || n.Priority > 254 {
		p.add("node.priority", strconv.Itoa(n.Priority), "must be between 1 and 254; leave it out to use the role default (200 for primary, 100 for secondary)")
	}
	if n.RealtimePriority < 0 || n.RealtimePriority > 99 {
		p.add("node.realtime_priority", strconv.Itoa(n.RealtimePriority), "must be between 0 (off) and 99; leave it out for the default 50")
	}
}

func validNodeName(s string) bool {
	if len(s) > 63 {
		return false
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return false
		}
	}
	return s != ""
}

func (c *Config) validateHALink(p *Problems) {
	h := c.HALink
	ifName(p, "ha_link.interface", h.Interface)
	priOK := hostAddr(p, "ha_link.primary_address", h.PrimaryAddress, true)
	secOK := hostAddr(p, "ha_link.secondary_address", h.SecondaryAddress, true)
	if priOK && secOK {
		sameSubnet(p, "ha_link.secondary_address", h.SecondaryAddress, "ha_link.primary_address", h.PrimaryAddress)
	}
	if h.Port < 1 || h.Port > 65535 {
		p.add("ha_link.port", strconv.Itoa(h.Port), "must be between 1 and 65535; leave it out for the default 7480")
	}
	durRange(p, "ha_link.heartbeat_interval", h.HeartbeatInterval, 5*time.Millisecond, 10*time.Second)
	if minDead := 3 * h.HeartbeatInterval.Duration; h.DeadInterval.Duration < minDead {
		p.add("ha_link.dead_interval", fmtDur(h.DeadInterval.Duration),
			"must be at least 3 x heartbeat_interval (%s); raise dead_interval or lower heartbeat_interval", fmtDur(minDead))
	} else if h.DeadInterval.Duration > time.Minute {
		p.add("ha_link.dead_interval", fmtDur(h.DeadInterval.Duration), "must be at most 1m; lower it so that a failed peer is detected in time")
	}
	if h.DeadIntervalMax.Duration < h.DeadInterval.Duration {
		p.add("ha_link.dead_interval_max", fmtDur(h.DeadIntervalMax.Duration),
			"must be at least dead_interval (%s); set it equal to dead_interval to never stretch the dead interval", fmtDur(h.DeadInterval.Duration))
	} else if h.DeadIntervalMax.Duration > max(time.Minute, h.DeadInterval.Duration) {
		p.add("ha_link.dead_interval_max", fmtDur(h.DeadIntervalMax.Duration), "must be at most 1m; lower it so that a failed peer is detected in time")
	}
	durRange(p, "ha_link.link_holddown", h.LinkHolddown, 0, 10*time.Minute)
	if h.AnnounceCount < 1 || h.AnnounceCount > 100 {
		p.add("ha_link.announce_count", strconv.Itoa(h.AnnounceCount), "must be between 1 and 100; leave it out for the default 3")
	}
	durRange(p, "ha_link.announce_interval", h.AnnounceInterval, time.Millisecond, time.Second)
}

func (c *Config) validateInterfaces(p *Problems) {
	// An interface may appear once per address family (a dual-stack LAN is
	// two entries with the same name, one IPv4, one IPv6).
	type nameFamily struct {
		name string
		v4   bool
	}
	firstName := map[nameFamily]string{} // -> path of its first use
	watchOf := map[string]bool{}
	for i, ifc := range c.Interfaces {
		base := fmt.Sprintf("interfaces[%d]", i)
		if ifName(p, base+".name", ifc.Name) {
			key := nameFamily{ifc.Name, ifc.PrimaryIP.Addr().Is4()}
			if prev, dup := firstName[key]; dup {
				p.add(base+".name", ifc.Name, "duplicates %s for the same address family; list each interface once per family and put all its virtual IPs of that family in that entry", prev)
			} else {
				firstName[key] = base + ".name"
			}
			if w, seen := watchOf[ifc.Name]; seen && w != ifc.Watch {
				p.add(base+".watch", strconv.FormatBool(ifc.Watch), "differs from the other entry of %s; an interface is watched or not, whatever the family", ifc.Name)
			}
			watchOf[ifc.Name] = ifc.Watch
		}
		if ifc.Watch && ifc.Name != "" && ifc.Name == c.HALink.Interface {
			p.add(base+".watch", "true", "watch cannot be enabled on the HA link interface %s; the HA link is monitored by heartbeats; set watch: false", ifc.Name)
		}

		subnet := ifc.PrimaryIP
		subnetOK := hostAddr(p, base+".primary_ip", ifc.PrimaryIP, false)
		check := func(path string, a netip.Prefix) {
			if hostAddr(p, path, a, false) && subnetOK {
				sameSubnet(p, path, a, base+".primary_ip", subnet)
			}
		}
		check(base+".secondary_ip", ifc.SecondaryIP)
		if len(ifc.VirtualIPs) == 0 {
			p.add(base+".virtual_ips", "", "needs at least one virtual IP: list the addresses that follow the ACTIVE unit, e.g. virtual_ips: [192.0.2.1/24], in the subnet of primary_ip")
		}
		for j, v := range ifc.VirtualIPs {
			check(fmt.Sprintf("%s.virtual_ips[%d]", base, j), v)
		}
	}
}

// validateUnique rejects an address used twice anywhere in the file. Only
// addresses are compared: 10.0.0.1/24 and 10.0.0.1/25 are the same address.
func (c *Config) validateUnique(p *Problems) {
	seen := map[netip.Addr]string{}
	use := func(path string, a netip.Prefix) {
		if !a.IsValid() {
			return
		}
		if prev, dup := seen[a.Addr()]; dup {
			p.add(path, a.String(), "address %s is already used by %s; every address may appear only once in the file", a.Addr(), prev)
			return
		}
		seen[a.Addr()] = path
	}
	use("ha_link.primary_address", c.HALink.PrimaryAddress)
	use("ha_link.secondary_address", c.HALink.SecondaryAddress)
	for i, ifc := range c.Interfaces {
		base := fmt.Sprintf("interfaces[%d]", i)
		use(base+".primary_ip", ifc.PrimaryIP)
		use(base+".secondary_ip", ifc.SecondaryIP)
		for j, v := range ifc.VirtualIPs {
			use(fmt.Sprintf("%s.virtual_ips[%d]", base, j), v)
		}
	}
}

// ifName checks a Linux interface name the way the kernel's
// dev_valid_name does, so the mistake shows up here and not at run time.
func ifName(p *Problems, path, name string) bool {
	switch {
	case name == "":
		p.add(path, "", "is required: set the name of the network interface, e.g. eth1")
	case len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\v\f"):
		p.add(path, name, "is not a valid Linux interface name: use 1 to 15 characters without '/', ':' or whitespace")
	default:
		return true
	}
	return false
}

// hostAddr checks that a is present and usable as a unicast host address,
// and reports whether it is. Loopback is allowed only for the HA link, where
// two units on one machine (the loopback demo and tests) may use 127.0.0.x.
func hostAddr(p *Problems, path string, a netip.Prefix, allowLoopback bool) bool {
	addr := a.Addr()
	switch {
	case a == netip.Prefix{}:
		p.add(path, "", "is required: write an address with its prefix length, e.g. 192.0.2.1/24 or fd00::1/64")
	case !a.IsValid():
		p.add(path, a.String(), "is not a valid address with prefix length; write it like 192.0.2.1/24 or fd00::1/64")
	case addr.Is4In6():
		p.add(path, a.String(), "is an IPv4-mapped IPv6 address; write the IPv4 address in dotted form, e.g. %s/%d", addr.Unmap(), a.Bits()-96)
	case addr.IsUnspecified(), addr.IsMulticast(), addr.IsLoopback() && !allowLoopback:
		p.add(path, a.String(), "must be a unicast host address (not unspecified, loopback or multicast)")
	case addr.Is4() && a.Bits() < 31 && addr == a.Masked().Addr():
		p.add(path, a.String(), "is the network address of %s; use a host address inside the subnet", a.Masked())
	case addr.Is4() && a.Bits() < 31 && addr == lastAddr(a):
		p.add(path, a.String(), "is the broadcast address of %s; use a host address inside the subnet", a.Masked())
	default:
		return true
	}
	return false
}

// lastAddr is the highest address of an IPv4 prefix: its broadcast address.
func lastAddr(a netip.Prefix) netip.Addr {
	b := a.Masked().Addr().As4()
	host := uint32(1)<<(32-a.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// sameSubnet requires a to be in ref's subnet with ref's prefix length.
// The lengths must match too: the units install these addresses as
// interface routes, and a mismatch silently breaks reachability.
func sameSubnet(p *Problems, path string, a netip.Prefix, refPath string, ref netip.Prefix) {
	switch {
	case a.Addr().Is4() != ref.Addr().Is4():
		p.add(path, a.String(), "is not the same IP version as %s (%s); use one address family per entry", refPath, ref)
	case a.Bits() != ref.Bits() || !ref.Contains(a.Addr()):
		p.add(path, a.String(), "must be in the subnet of %s (%s) with the same prefix length /%d; fix the address or its prefix length", refPath, ref.Masked(), ref.Bits())
	}
}

func durRange(p *Problems, path string, d Duration, lo, hi time.Duration) {
	if d.Duration < lo || d.Duration > hi {
		p.add(path, fmtDur(d.Duration), "must be between %s and %s", fmtDur(lo), fmtDur(hi))
	}
}

// fmtDur prints durations as people write them: "1h", not "1h0m0s".
func fmtDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func absPath(p *Problems, path, v string) {
	switch {
	case v == "":
		p.add(path, "", "must not be empty: set an absolute path or leave the key out for the default")
	case !filepath.IsAbs(v):
		p.add(path, v, "must be an absolute path (starting with /)")
	}
}
