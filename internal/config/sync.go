package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Sync configures state synchronization: the ACTIVE streams its connection
// table and dynamic sets to the STANDBY over an authenticated, encrypted TCP
// channel on the HA link.
type Sync struct {
	// Enabled turns state sync on (default true). With it off, connections
	// do not survive a failover.
	Enabled bool `yaml:"enabled"`
	// Port is the TCP port of the sync channel on the HA addresses.
	// Default: the heartbeat port + 1.
	Port int `yaml:"port"`
	// MaxRate throttles sync traffic so it never starves real traffic:
	// "0" (off, the default), bytes per second ("20MB/s", "500KB/s") or
	// entries per second ("50000/s").
	MaxRate Rate `yaml:"max_rate"`
	// Conntrack synchronizes the kernel connection-tracking table and its
	// expectations (default true).
	Conntrack bool `yaml:"conntrack"`
	// ConntrackMode is how the standby holds the entries: "inject" writes
	// them into its kernel table as they arrive, "hold" keeps them in
	// memory and commits them at promotion. Default inject.
	ConntrackMode string `yaml:"conntrack_mode"`
	// NftSets lists the nftables named sets whose elements are synchronized,
	// as family/table/set, e.g. inet/filter/blocklist.
	NftSets []string `yaml:"nft_sets,omitempty"`
	// OutOfSyncAfter is how long the sync channel may be down before the
	// standby marks itself OUT_OF_SYNC and the ACTIVE logs
	// hasync_connection_failed_timeout. Default 1s.
	OutOfSyncAfter Duration `yaml:"out_of_sync_after"`
}

// ConfigSync configures the replicated configuration store and the
// management-database snapshots.
type ConfigSync struct {
	// SnapshotInterval is how often the ACTIVE sends a full snapshot of the
	// management database to the standby besides every publish. Default 3m.
	SnapshotInterval Duration `yaml:"snapshot_interval"`
	// SnapshotDebounce is how long publishing must have been quiet before
	// the ACTIVE sends a snapshot after publishes, so a burst costs one,
	// sent after it. 0: the default, 500ms.
	SnapshotDebounce Duration `yaml:"snapshot_debounce"`
	// SnapshotMaxDelay bounds the wait from the first publish not yet in a
	// snapshot to the snapshot, so continuous publishing still gets them.
	// 0: the default, 10s. At least snapshot_debounce.
	SnapshotMaxDelay Duration `yaml:"snapshot_max_delay"`
	// Hooks run per category when a document is published or replicated:
	// validate (must exit 0) and apply. The policies category defaults to
	// `nft -c -f -` and `nft -f -`.
	Hooks map[string]Hook `yaml:"hooks,omitempty"`
}

// Hook is a command pair; each gets the document on standard input.
type Hook struct {
	Validate []string `yaml:"validate"`
	Apply    []string `yaml:"apply"`
}

// Categories are the configuration document categories (seed 002's list).
var Categories = []string{"interfaces", "definitions", "policies", "network", "firewall", "vpn", "users", "antivirus", "ips", "system"}

// Rate is a throughput limit: bytes or entries per second; zero is off.
type Rate struct {
	BytesPerSec   int64
	EntriesPerSec int64
	// Text is the rate as written.
	Text string
}

var rateRE = regexp.MustCompile(`^(\d+)\s*(|[KMG]i?B|B)/s$`)

// ParseRate reads "0", "20MB/s", "512KiB/s", "100B/s" or "50000/s".
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" || s == "off" {
		return Rate{}, nil
	}
	m := rateRE.FindStringSubmatch(s)
	if m == nil {
		return Rate{}, fmt.Errorf("invalid rate %q: write 0 (off), bytes per second like \"20MB/s\" or entries per second like \"50000/s\"", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return Rate{}, fmt.Errorf("invalid rate %q: %v", s, err)
	}
	mult := map[string]int64{"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
	if m[2] == "" {
		return Rate{EntriesPerSec: n, Text: s}, nil
	}
	return Rate{BytesPerSec: n * mult[m[2]], Text: s}, nil
}

// UnmarshalYAML parses a rate string.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a rate must be a single value such as \"20MB/s\"", n.Line)
	}
	v, err := ParseRate(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*r = v
	return nil
}

// MarshalYAML writes the rate back as written.
func (r Rate) MarshalYAML() (any, error) {
	if r.Text == "" {
		return "0", nil
	}
	return r.Text, nil
}

// String is the rate as written.
func (r Rate) String() string { s, _ := r.MarshalYAML(); return s.(string) }

var setRefRE = regexp.MustCompile(`^(inet|ip|ip6|arp|bridge|netdev)/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)

func (c *Config) validateSync(p *Problems) {
	s := c.Sync
	if s.Port < 1 || s.Port > 65535 {
		p.add("sync.port", strconv.Itoa(s.Port), "must be between 1 and 65535")
	} else if s.Port == c.HALink.Port {
		p.add("sync.port", strconv.Itoa(s.Port), "is the heartbeat port (ha_link.port); use another, e.g. %d", c.HALink.Port+1)
	}
	switch s.ConntrackMode {
	case "inject", "hold":
	default:
		p.add("sync.conntrack_mode", s.ConntrackMode, "must be inject or hold")
	}
	for i, ref := range s.NftSets {
		if !setRefRE.MatchString(ref) {
			p.add(fmt.Sprintf("sync.nft_sets[%d]", i), ref, "must be family/table/set, e.g. inet/filter/blocklist")
		}
	}
	durRange(p, "sync.out_of_sync_after", s.OutOfSyncAfter, 10*time.Millisecond, time.Hour)
	durRange(p, "config_sync.snapshot_interval", c.ConfigSync.SnapshotInterval, time.Second, 24*time.Hour)
	c.validateSnapshotTiming(p)
	for cat, h := range c.ConfigSync.Hooks {
		path := "config_sync.hooks." + cat
		known := false
		for _, k := range Categories {
			known = known || k == cat
		}
		if !known {
			p.add(path, cat, "unknown category: use one of %s", strings.Join(Categories, ", "))
		}
		if len(h.Validate) == 0 && len(h.Apply) == 0 {
			p.add(path, "", "needs a validate or an apply command (a list: [program, arg, ...])")
		}
	}
}

// Defaults of the snapshot-after-publish timing (0 in the file), as
// internal/configsync applies them.
const (
	defaultSnapshotDebounce = 500 * time.Millisecond
	defaultSnapshotMaxDelay = 10 * time.Second
)

func (c *Config) validateSnapshotTiming(p *Problems) {
	cs := c.ConfigSync
	if cs.SnapshotDebounce.Duration != 0 {
		durRange(p, "config_sync.snapshot_debounce", cs.SnapshotDebounce, 10*time.Millisecond, time.Minute)
	}
	if cs.SnapshotMaxDelay.Duration != 0 {
		durRange(p, "config_sync.snapshot_max_delay", cs.SnapshotMaxDelay, 100*time.Millisecond, time.Hour)
	}
	deb, maxd := cs.SnapshotDebounce.Duration, cs.SnapshotMaxDelay.Duration
	if deb == 0 {
		deb = defaultSnapshotDebounce
	}
	if maxd == 0 {
		maxd = defaultSnapshotMaxDelay
	}
	if maxd < deb {
		p.add("config_sync.snapshot_max_delay", fmtDur(maxd), "is shorter than config_sync.snapshot_debounce (%s): set it to at least %s, or lower the debounce", fmtDur(deb), fmtDur(deb))
	}
}
