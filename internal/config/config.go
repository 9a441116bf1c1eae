package config

import (
	"fmt"
	"net/netip"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultPath is where the daemon looks for its configuration file.
const DefaultPath = "/etc/tandem/tandem.yaml"

// MinKeySize is the minimum length in bytes of the cluster key.
const MinKeySize = 32

// Role is the fixed part a unit plays in the pair. It does not change at
// run time; which unit is ACTIVE does.
type Role string

// The two roles of a pair.
const (
	RolePrimary   Role = "primary"
	RoleSecondary Role = "secondary"
)

// Duration is a time.Duration written as a Go duration string ("100ms",
// "10s") in YAML.
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string. Bare numbers are rejected on
// purpose: "100" could mean milliseconds or seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a duration must be a single value such as \"100ms\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q: write a number with a unit such as \"100ms\" or \"10s\"", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration back as a Go duration string.
func (d Duration) MarshalYAML() (any, error) {
	return d.String(), nil
}

// Config is the whole configuration file.
type Config struct {
	// Cluster holds the settings that must be identical on both units.
	Cluster Cluster `yaml:"cluster"`
	// Node describes this unit; it is the only section that differs
	// between the two units.
	Node Node `yaml:"node"`
	// HALink is the dedicated link the units exchange heartbeats over.
	HALink HALink `yaml:"ha_link"`
	// Interfaces are the data interfaces whose virtual IPs follow the
	// ACTIVE unit. The list may be empty.
	Interfaces []Interface `yaml:"interfaces"`
	// Control configures the local control socket used by the CLI.
	Control Control `yaml:"control"`
	// StateDir is an absolute path where the daemon keeps its state
	// across restarts: the configuration store, and on a standby the
	// checkpoint of the conntrack entries it mirrors (conntrack.checkpoint),
	// from which a restarted daemon resumes state sync without a full copy.
	// Default /var/lib/tandem.
	StateDir string `yaml:"state_dir"`
	// Sync configures connection-state and dynamic-set synchronization.
	Sync Sync `yaml:"sync"`
	// ConfigSync configures the replicated configuration store.
	ConfigSync ConfigSync `yaml:"config_sync"`
}

// Cluster holds the settings shared by both units.
type Cluster struct {
	// ID (1..255) separates clusters sharing one HA link or segment.
	ID int `yaml:"id"`
	// AuthKeyFile is the path of the shared secret (at least MinKeySize
	// bytes) that authenticates heartbeats. Load resolves a relative path
	// against the configuration file's directory. Required.
	AuthKeyFile string `yaml:"auth_key_file"`
	// Preempt makes the primary take ACTIVE back once it has recovered.
	// Default true.
	Preempt bool `yaml:"preempt"`
	// PreemptDelay is how long a recovered primary waits before taking
	// ACTIVE back (0..1h). Default 10s.
	PreemptDelay Duration `yaml:"preempt_delay"`
}

// Node describes the local unit.
type Node struct {
	// Name identifies the unit in logs and in the peer's view:
	// 1..63 characters from [A-Za-z0-9._-]. Required.
	Name string `yaml:"name"`
	// Role is primary or secondary. Required.
	Role Role `yaml:"role"`
	// Priority (1..254) breaks ties in elections; 0 means the role default
	// (200 for primary, 100 for secondary). See EffectivePriority.
	Priority int `yaml:"priority"`
	// RealtimePriority (1..99) runs the daemon's threads under SCHED_RR at
	// this priority, so heartbeats keep their rhythm when the CPUs are busy
	// with other work (keepalived does the same); bulk sync work yields the
	// CPU every 0.5 ms (internal/sched). 0 turns it off. Default 50.
	RealtimePriority int `yaml:"realtime_priority"`
	// RealtimeSoftirq also runs the kernel's softirq threads (ksoftirqd,
	// which deliver packets when the kernel defers them) under SCHED_FIFO
	// one below RealtimePriority, so heartbeats are not left waiting behind
	// busy processes (internal/sched.BoostSoftirq). System-wide, and it
	// stays after the daemon exits. Default true; off when
	// RealtimePriority is 0.
	RealtimeSoftirq bool `yaml:"realtime_softirq"`
}

// HALink is the dedicated heartbeat link between the two units.
type HALink struct {
	// Interface is the name of the local HA link interface. Required.
	Interface string `yaml:"interface"`
	// PrimaryAddress is the primary unit's address on the HA link.
	PrimaryAddress netip.Prefix `yaml:"primary_address"`
	// SecondaryAddress is the secondary unit's address on the HA link, in
	// the same subnet as PrimaryAddress.
	SecondaryAddress netip.Prefix `yaml:"secondary_address"`
	// Port is the UDP port of the heartbeats (1..65535). Default 7480.
	Port int `yaml:"port"`
	// HeartbeatInterval is the spacing of heartbeats (5ms..10s).
	// Default 100ms.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	// DeadInterval is how long without heartbeats before the peer is
	// declared dead: at least 3 x HeartbeatInterval and at most 60s.
	// Default (and meaning of 0 in a file) 3 x HeartbeatInterval.
	DeadInterval Duration `yaml:"dead_interval"`
	// DeadIntervalMax is the most the dead interval stretches to while the
	// peer's heartbeats have lately come late (its host held it, and it
	// came back): for 30 s after such a gap the peer is declared dead only
	// after twice that gap, between dead_interval and this. Equal to
	// dead_interval: never stretched. At most 60s. Default (and meaning of
	// 0 in a file) 4 x dead_interval.
	DeadIntervalMax Duration `yaml:"dead_interval_max"`
	// LinkHolddown is how long a watched link must stay up after a failure
	// before the unit leaves FAULT (0..10m). Default 2s.
	LinkHolddown Duration `yaml:"link_holddown"`
	// AnnounceCount is how many gratuitous ARPs / unsolicited neighbour
	// advertisements are sent on takeover (1..100). Default 3.
	AnnounceCount int `yaml:"announce_count"`
	// AnnounceInterval is the spacing of those announcements (1ms..1s).
	// Default 10ms.
	AnnounceInterval Duration `yaml:"announce_interval"`
}

// Interface is a data interface whose virtual IPs follow the ACTIVE unit.
type Interface struct {
	// Name is the local interface name. Required, unique in the file.
	Name string `yaml:"name"`
	// PrimaryIP is the primary unit's own address; its prefix is the
	// subnet every other address of this interface must be in.
	PrimaryIP netip.Prefix `yaml:"primary_ip"`
	// SecondaryIP is the secondary unit's own address.
	SecondaryIP netip.Prefix `yaml:"secondary_ip"`
	// VirtualIPs move to the ACTIVE unit. At least one.
	VirtualIPs []netip.Prefix `yaml:"virtual_ips"`
	// Watch puts the unit in FAULT while this interface's link is down.
	// Not allowed on the HA link interface. Default false.
	Watch bool `yaml:"watch"`
	// VirtualMAC owns the virtual IPs on a macvlan with a fixed
	// per-cluster MAC (VRRP style) instead of the interface's own MAC.
	// Default false.
	VirtualMAC bool `yaml:"virtual_mac"`
}

// Control configures the local control socket.
type Control struct {
	// Socket is the absolute path of the control socket.
	// Default /run/tandem/tandem.sock.
	Socket string `yaml:"socket"`
}

// Default returns a Config holding only the defaults. It has no node, no
// HA link addresses, no cluster id or key, and is therefore not valid on
// its own.
func Default() Config {
	return Config{
		Cluster: Cluster{
			Preempt:      true,
			PreemptDelay: Duration{10 * time.Second},
		},
		HALink: HALink{
			Port:              7480,
			HeartbeatInterval: Duration{100 * time.Millisecond},
			DeadInterval:      Duration{300 * time.Millisecond},
			DeadIntervalMax:   Duration{1200 * time.Millisecond},
			LinkHolddown:      Duration{2 * time.Second},
			AnnounceCount:     3,
			AnnounceInterval:  Duration{10 * time.Millisecond},
		},
		Node: Node{RealtimePriority: 50, RealtimeSoftirq: true},
		Sync: Sync{Enabled: true, Conntrack: true, ConntrackMode: "inject",
			OutOfSyncAfter: Duration{time.Second}},
		ConfigSync: ConfigSync{SnapshotInterval: Duration{3 * time.Minute}},
		Control:    Control{Socket: "/run/tandem/tandem.sock"},
		StateDir:   "/var/lib/tandem",
	}
}

// fillDerived sets the defaults that depend on other fields, once the file
// has been decoded over Default.
func (c *Config) fillDerived() {
	if c.HALink.DeadInterval.Duration == 0 {
		c.HALink.DeadInterval.Duration = 3 * c.HALink.HeartbeatInterval.Duration
	}
	if c.HALink.DeadIntervalMax.Duration == 0 {
		c.HALink.DeadIntervalMax.Duration = max(min(4*c.HALink.DeadInterval.Duration, time.Minute), c.HALink.DeadInterval.Duration)
	}
	if c.Node.Priority == 0 {
		c.Node.Priority = int(rolePriority(c.Node.Role))
	}
	if c.Sync.Port == 0 {
		c.Sync.Port = c.HALink.Port + 1
		if c.HALink.Port >= 65535 {
			c.Sync.Port = c.HALink.Port - 1
		}
	}
}

// rolePriority is the default priority of a role, 0 for an unknown role.
func rolePriority(r Role) uint8 {
	switch r {
	case RolePrimary:
		return 200
	case RoleSecondary:
		return 100
	}
	return 0
}

// EffectivePriority is the configured priority, or the role default when
// none is set. It is 0 only for an invalid role or priority, which Validate
// rejects.
func (c *Config) EffectivePriority() uint8 {
	p := c.Node.Priority
	if p == 0 {
		return rolePriority(c.Node.Role)
	}
	if p < 1 || p > 254 {
		return 0
	}
	return uint8(p)
}

// LocalHAAddress is this unit's address on the HA link.
func (c *Config) LocalHAAddress() netip.Prefix {
	if c.Node.Role == RolePrimary {
		return c.HALink.PrimaryAddress
	}
	return c.HALink.SecondaryAddress
}

// PeerHAAddress is the other unit's address on the HA link.
func (c *Config) PeerHAAddress() netip.Prefix {
	if c.Node.Role == RolePrimary {
		return c.HALink.SecondaryAddress
	}
	return c.HALink.PrimaryAddress
}

// LocalIP is the own address of the unit with the given role.
func (i Interface) LocalIP(role Role) netip.Prefix {
	if role == RolePrimary {
		return i.PrimaryIP
	}
	return i.SecondaryIP
}

// PeerIP is the own address of the other unit, seen from role.
func (i Interface) PeerIP(role Role) netip.Prefix {
	if role == RolePrimary {
		return i.SecondaryIP
	}
	return i.PrimaryIP
}
