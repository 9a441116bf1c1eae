package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
)

var cmpPrefix = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func ms(n int) Duration { return Duration{time.Duration(n) * time.Millisecond} }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// edit applies old/new replacements to base, failing the test when an old
// string is missing so that a stale case cannot pass by accident.
func edit(t testing.TB, base string, oldNew ...string) string {
	t.Helper()
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(base, oldNew[i]) {
			t.Fatalf("edit: %q not found in base file", oldNew[i])
		}
		base = strings.Replace(base, oldNew[i], oldNew[i+1], 1)
	}
	return base
}

func problemsOf(t testing.TB, err error) Problems {
	t.Helper()
	if err == nil {
		return nil
	}
	var p *Problems
	if !errors.As(err, &p) {
		t.Fatalf("error is %T, want *Problems: %v", err, err)
	}
	return *p
}

func paths(p Problems) []string {
	out := make([]string, len(p))
	for i, pr := range p {
		out[i] = pr.Path
	}
	return out
}

func wantV4() *Config {
	return &Config{
		Cluster: Cluster{ID: 7, AuthKeyFile: "/etc/tandem/cluster.key", Preempt: true, PreemptDelay: ms(10000)},
		Node:    Node{Name: "fw-a", Role: RolePrimary, Priority: 200, RealtimePriority: 50, RealtimeSoftirq: true},
		HALink: HALink{
			Interface:         "ha0",
			PrimaryAddress:    pfx("169.254.77.1/30"),
			SecondaryAddress:  pfx("169.254.77.2/30"),
			Port:              7480,
			HeartbeatInterval: ms(100),
			DeadInterval:      ms(300),
			DeadIntervalMax:   ms(1200),
			LinkHolddown:      ms(2000),
			AnnounceCount:     3,
			AnnounceInterval:  ms(10),
		},
		Interfaces: []Interface{
			{
				Name:        "lan0",
				PrimaryIP:   pfx("172.16.121.3/24"),
				SecondaryIP: pfx("172.16.121.4/24"),
				VirtualIPs:  []netip.Prefix{pfx("172.16.121.7/24")},
				Watch:       true,
			},
			{
				Name:        "wan0",
				PrimaryIP:   pfx("198.51.100.3/28"),
				SecondaryIP: pfx("198.51.100.4/28"),
				VirtualIPs:  []netip.Prefix{pfx("198.51.100.1/28"), pfx("198.51.100.2/28")},
				Watch:       true,
				VirtualMAC:  true,
			},
		},
		Control:    Control{Socket: "/run/tandem/tandem.sock"},
		StateDir:   "/var/lib/tandem",
		Sync:       Sync{Enabled: true, Port: 7481, Conntrack: true, ConntrackMode: "inject", OutOfSyncAfter: ms(1000)},
		ConfigSync: ConfigSync{SnapshotInterval: ms(180000)},
	}
}

func wantV6() *Config {
	c := Default()
	c.Cluster.ID = 42
	c.Cluster.AuthKeyFile = "cluster.key"
	c.Node = Node{Name: "fw-b", Role: RoleSecondary, Priority: 100, RealtimePriority: 50, RealtimeSoftirq: true}
	c.HALink.Interface = "ha0"
	c.HALink.PrimaryAddress = pfx("fe80::77:1/64")
	c.HALink.SecondaryAddress = pfx("fe80::77:2/64")
	c.Sync.Port = 7481
	c.Interfaces = []Interface{
		{
			Name:        "lan0",
			PrimaryIP:   pfx("fd00:121::3/64"),
			SecondaryIP: pfx("fd00:121::4/64"),
			VirtualIPs:  []netip.Prefix{pfx("fd00:121::1/64")},
			Watch:       true,
		},
		{
			Name:        "dmz0",
			PrimaryIP:   pfx("2001:db8:5::3/64"),
			SecondaryIP: pfx("2001:db8:5::4/64"),
			VirtualIPs:  []netip.Prefix{pfx("2001:db8:5::1/64"), pfx("2001:db8:5::80/64")},
		},
	}
	return &c
}

func TestParseValidFiles(t *testing.T) {
	for _, tc := range []struct {
		file string
		want *Config
	}{
		{"valid-v4.yaml", wantV4()},
		{"valid-v6.yaml", wantV6()},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := Parse([]byte(readTestdata(t, tc.file)))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpPrefix); diff != "" {
				t.Errorf("Parse mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// Valid variations of the IPv4 file, with the fields they should produce.
func TestParseValidVariants(t *testing.T) {
	v4 := readTestdata(t, "valid-v4.yaml")
	for _, tc := range []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "dead_interval defaults to 3 x heartbeat_interval",
			yaml: edit(t, v4, "heartbeat_interval: 100ms", "heartbeat_interval: 250ms",
				"  dead_interval: 300ms ", "  # dead_interval: 300ms"),
			check: func(t *testing.T, c *Config) {
				if c.HALink.DeadInterval != ms(750) {
					t.Errorf("dead_interval = %v, want 750ms", c.HALink.DeadInterval)
				}
			},
		},
		{
			name: "dual-stack interface: one entry per family",
			yaml: edit(t, v4, "\ncontrol:", "  - {name: lan0, primary_ip: fd00:1::3/64, secondary_ip: fd00:1::4/64, virtual_ips: [fd00:1::1/64], watch: true}\ncontrol:"),
			check: func(t *testing.T, c *Config) {
				if len(c.Interfaces) != 3 || c.Interfaces[2].VirtualIPs[0].String() != "fd00:1::1/64" {
					t.Errorf("interfaces = %+v", c.Interfaces)
				}
			},
		},
		{
			name: "sync settings",
			yaml: edit(t, v4, "\ncontrol:", "\nsync: {max_rate: 20MB/s, nft_sets: [inet/filter/blocklist], conntrack_mode: hold}\nconfig_sync: {hooks: {system: {apply: [/usr/local/bin/apply-system]}}}\ncontrol:"),
			check: func(t *testing.T, c *Config) {
				if c.Sync.MaxRate.BytesPerSec != 20e6 || c.Sync.NftSets[0] != "inet/filter/blocklist" || c.Sync.ConntrackMode != "hold" ||
					c.ConfigSync.Hooks["system"].Apply[0] != "/usr/local/bin/apply-system" {
					t.Errorf("sync = %+v, config_sync = %+v", c.Sync, c.ConfigSync)
				}
			},
		},
		{
			name: "priority defaults by role",
			yaml: edit(t, v4, "  priority: 200", ""),
			check: func(t *testing.T, c *Config) {
				if c.Node.Priority != 200 || c.EffectivePriority() != 200 {
					t.Errorf("priority = %d, effective %d, want 200", c.Node.Priority, c.EffectivePriority())
				}
			},
		},
		{
			name: "explicit zero durations and preempt off are kept",
			yaml: edit(t, v4, "preempt: true ", "preempt: false ", "preempt_delay: 10s", "preempt_delay: 0s",
				"link_holddown: 2s", "link_holddown: 0s"),
			check: func(t *testing.T, c *Config) {
				if c.Cluster.Preempt || c.Cluster.PreemptDelay.Duration != 0 || c.HALink.LinkHolddown.Duration != 0 {
					t.Errorf("got preempt %v delay %v holddown %v, want false 0s 0s",
						c.Cluster.Preempt, c.Cluster.PreemptDelay, c.HALink.LinkHolddown)
				}
			},
		},
		{
			name: "/31 HA link",
			yaml: edit(t, v4, "169.254.77.1/30", "169.254.77.0/31", "169.254.77.2/30", "169.254.77.1/31"),
		},
		{
			name: "HA link interface listed without watch",
			yaml: edit(t, v4, "- name: lan0", "- name: ha0", "    watch: true\n  - name: wan0", "    watch: false\n  - name: wan0"),
		},
		{
			name: "no data interfaces",
			yaml: v4[:strings.Index(v4, "interfaces:")],
		},
		{
			name: "bounds are inclusive",
			yaml: edit(t, v4, "id: 7 ", "id: 255 ", "priority: 200", "priority: 254", "heartbeat_interval: 100ms", "heartbeat_interval: 5ms",
				"dead_interval: 300ms", "dead_interval: 15ms", "announce_count: 3", "announce_count: 100",
				"announce_interval: 10ms", "announce_interval: 1s", "preempt_delay: 10s", "preempt_delay: 1h",
				"link_holddown: 2s", "link_holddown: 10m", "port: 7480", "port: 65535"),
		},
		{
			name: "YAML anchors and merge keys",
			yaml: edit(t, v4, "  preempt_delay: 10s", "  preempt_delay: &delay 10s", "  link_holddown: 2s", "  link_holddown: *delay",
				"  - name: wan0\n", "  - <<: {watch: false, virtual_mac: false}\n    name: wan0\n"),
			check: func(t *testing.T, c *Config) {
				if c.HALink.LinkHolddown != ms(10000) {
					t.Errorf("link_holddown = %v, want the anchored 10s", c.HALink.LinkHolddown)
				}
				if w := c.Interfaces[1]; !w.Watch || !w.VirtualMAC {
					t.Errorf("wan0 watch %v virtual_mac %v, want explicit keys to override the merge", w.Watch, w.VirtualMAC)
				}
			},
		},
		{
			name: "trailing document marker",
			yaml: v4 + "---\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// Each case breaks one rule and must produce exactly one problem, at path
// and mentioning the bad value.
func TestParseProblems(t *testing.T) {
	v4 := readTestdata(t, "valid-v4.yaml")
	v6 := readTestdata(t, "valid-v6.yaml")
	for _, tc := range []struct {
		name   string
		yaml   string
		path   string
		value  string // must appear in the problem line
		decode bool   // a YAML problem: no config, no validation
	}{
		// YAML decoding.
		{name: "syntax error", yaml: edit(t, v4, "preempt_delay: 10s", "preempt_delay: [10s"), path: "", value: "near line", decode: true},
		{name: "tab indentation", yaml: edit(t, v4, "  name: fw-a", "\tname: fw-a"), path: "", value: "line 10 is indented with a tab", decode: true},
		{name: "unknown field", yaml: edit(t, v4, "preempt: true ", "preemt: true "), path: "cluster.preemt", value: `"preemt" at line 6`, decode: true},
		{name: "unknown top-level field", yaml: edit(t, v4, "state_dir:", "statedir:"), path: "statedir", value: `did you mean "state_dir"`, decode: true},
		{name: "unknown field in list item", yaml: edit(t, v4, "    watch: true\n  - name: wan0", "    wach: true\n  - name: wan0"), path: "interfaces[0].wach", value: "wach", decode: true},
		{name: "duplicate key", yaml: edit(t, v4, "  preempt: true ", "  id: 8\n  preempt: true "), path: "cluster.id", value: "line 4 and line 6", decode: true},
		{name: "wrong type int", yaml: edit(t, v4, "port: 7480", "port: http"), path: "ha_link.port", value: "http", decode: true},
		{name: "float for int", yaml: edit(t, v4, "id: 7 ", "id: 7.5 "), path: "cluster.id", value: "7.5", decode: true},
		{name: "wrong type bool", yaml: edit(t, v4, "preempt: true ", "preempt: sometimes "), path: "cluster.preempt", value: "sometimes", decode: true},
		{name: "mapping for string", yaml: edit(t, v4, "name: fw-a", "name: {first: fw}"), path: "node.name", value: "not a mapping", decode: true},
		{name: "single value for list", yaml: edit(t, v4, "virtual_ips: [172.16.121.7/24]", "virtual_ips: 172.16.121.7/24"), path: "interfaces[0].virtual_ips", value: "172.16.121.7/24", decode: true},
		{name: "single value for section", yaml: edit(t, v4, "control:\n  socket: /run/tandem/tandem.sock", "control: /run/tandem/tandem.sock"), path: "control", value: "/run/tandem/tandem.sock", decode: true},
		{name: "file is not a mapping", yaml: "just some text\n", path: "", value: "just some text", decode: true},
		{name: "bad duration", yaml: edit(t, v4, "heartbeat_interval: 100ms", "heartbeat_interval: fast"), path: "ha_link.heartbeat_interval", value: "fast", decode: true},
		{name: "duration without unit", yaml: edit(t, v4, "heartbeat_interval: 100ms", "heartbeat_interval: 100"), path: "ha_link.heartbeat_interval", value: "add a unit, e.g. 100ms", decode: true},
		{name: "bad prefix", yaml: edit(t, v4, "[172.16.121.7/24]", "[172.16.121.777/24]"), path: "interfaces[0].virtual_ips[0]", value: "172.16.121.777/24", decode: true},
		{name: "prefix without length", yaml: edit(t, v4, "primary_address: 169.254.77.1/30", "primary_address: 169.254.77.1"), path: "ha_link.primary_address", value: "add the subnet's prefix length", decode: true},
		{name: "prefix with zone", yaml: edit(t, v6, "fe80::77:1/64", "fe80::77:1%ha0/64"), path: "ha_link.primary_address", value: "fe80::77:1%ha0/64", decode: true},
		{name: "alias loop", yaml: "cluster: &c {<<: *c}\n", path: "cluster", value: "alias *c at line 1", decode: true},
		{name: "second document", yaml: v4 + "---\ncluster:\n  id: 8\n", path: "", value: "second YAML document starts at line 44", decode: true},

		// cluster
		{name: "cluster.id missing", yaml: edit(t, v4, "  id: 7 ", "  # id: 7 "), path: "cluster.id", value: "is required"},
		{name: "cluster.id too large", yaml: edit(t, v4, "id: 7 ", "id: 256 "), path: "cluster.id", value: "256"},
		{name: "cluster.id negative", yaml: edit(t, v4, "id: 7 ", "id: -1 "), path: "cluster.id", value: "-1"},
		{name: "auth_key_file missing", yaml: edit(t, v4, "auth_key_file: /etc/tandem/cluster.key", `auth_key_file: ""`), path: "cluster.auth_key_file", value: "is required"},
		{name: "preempt_delay too long", yaml: edit(t, v4, "preempt_delay: 10s", "preempt_delay: 2h"), path: "cluster.preempt_delay", value: "2h"},
		{name: "preempt_delay negative", yaml: edit(t, v4, "preempt_delay: 10s", "preempt_delay: -1s"), path: "cluster.preempt_delay", value: "-1s"},

		// node
		{name: "node.name missing", yaml: edit(t, v4, "name: fw-a", `name: ""`), path: "node.name", value: "is required"},
		{name: "node.name malformed", yaml: edit(t, v4, "name: fw-a", `name: "fw a"`), path: "node.name", value: "fw a"},
		{name: "node.name too long", yaml: edit(t, v4, "name: fw-a", "name: "+strings.Repeat("f", 64)), path: "node.name", value: strings.Repeat("f", 64)},
		{name: "node.role missing", yaml: edit(t, v4, "role: primary ", "# role: primary "), path: "node.role", value: "is required"},
		{name: "node.role invalid", yaml: edit(t, v4, "role: primary ", "role: master "), path: "node.role", value: "master"},
		{name: "node.priority too large", yaml: edit(t, v4, "priority: 200", "priority: 255"), path: "node.priority", value: "255"},
		{name: "node.priority negative", yaml: edit(t, v4, "priority: 200", "priority: -5"), path: "node.priority", value: "-5"},

		// ha_link
		{name: "ha_link.interface missing", yaml: edit(t, v4, "interface: ha0", `interface: ""`), path: "ha_link.interface", value: "is required"},
		{name: "ha_link.interface invalid", yaml: edit(t, v4, "interface: ha0", "interface: averyverylongname0"), path: "ha_link.interface", value: "averyverylongname0"},
		{name: "primary_address missing", yaml: edit(t, v4, "  primary_address: 169.254.77.1/30\n", ""), path: "ha_link.primary_address", value: "is required"},
		{name: "secondary_address missing", yaml: edit(t, v4, "secondary_address: 169.254.77.2/30", `secondary_address: ""`), path: "ha_link.secondary_address", value: "is required"},
		{name: "ha addresses equal", yaml: edit(t, v4, "169.254.77.2/30", "169.254.77.1/30"), path: "ha_link.secondary_address", value: "already used by ha_link.primary_address"},
		{name: "ha addresses in different subnets", yaml: edit(t, v4, "169.254.77.2/30", "169.254.78.2/30"), path: "ha_link.secondary_address", value: "169.254.78.2/30"},
		{name: "ha addresses with different lengths", yaml: edit(t, v4, "169.254.77.2/30", "169.254.77.2/29"), path: "ha_link.secondary_address", value: "169.254.77.2/29"},
		{name: "ha addresses of different families", yaml: edit(t, v4, "169.254.77.2/30", "fd00:77::2/64"), path: "ha_link.secondary_address", value: "same IP version"},
		{name: "ha network address", yaml: edit(t, v4, "169.254.77.1/30", "169.254.77.0/30"), path: "ha_link.primary_address", value: "network address"},
		{name: "ha broadcast address", yaml: edit(t, v4, "169.254.77.2/30", "169.254.77.3/30"), path: "ha_link.secondary_address", value: "broadcast address"},
		{name: "ha multicast address", yaml: edit(t, v4, "169.254.77.1/30", "224.0.0.18/30"), path: "ha_link.primary_address", value: "224.0.0.18/30"},
		{name: "ha IPv4-mapped address", yaml: edit(t, v4, "169.254.77.1/30", "::ffff:169.254.77.1/126"), path: "ha_link.primary_address", value: "169.254.77.1/30"},
		{name: "port zero", yaml: edit(t, v4, "port: 7480", "port: 0"), path: "ha_link.port", value: "0"},
		{name: "port too large", yaml: edit(t, v4, "port: 7480", "port: 65536"), path: "ha_link.port", value: "65536"},
		{name: "heartbeat too short", yaml: edit(t, v4, "heartbeat_interval: 100ms", "heartbeat_interval: 4ms"), path: "ha_link.heartbeat_interval", value: "4ms"},
		{name: "heartbeat too long", yaml: edit(t, v4, "heartbeat_interval: 100ms", "heartbeat_interval: 11s", "dead_interval: 300ms", "dead_interval: 40s"), path: "ha_link.heartbeat_interval", value: "11s"},
		{name: "dead_interval too short", yaml: edit(t, v4, "dead_interval: 300ms", "dead_interval: 200ms"), path: "ha_link.dead_interval", value: `"200ms": must be at least 3 x heartbeat_interval (300ms); raise dead_interval or lower heartbeat_interval`},
		{name: "dead_interval too long", yaml: edit(t, v4, "dead_interval: 300ms", "dead_interval: 2m"), path: "ha_link.dead_interval", value: `"2m": must be at most 1m`},
		{name: "link_holddown too long", yaml: edit(t, v4, "link_holddown: 2s", "link_holddown: 11m"), path: "ha_link.link_holddown", value: "11m"},
		{name: "link_holddown negative", yaml: edit(t, v4, "link_holddown: 2s", "link_holddown: -2s"), path: "ha_link.link_holddown", value: "-2s"},
		{name: "announce_count zero", yaml: edit(t, v4, "announce_count: 3", "announce_count: 0"), path: "ha_link.announce_count", value: "0"},
		{name: "announce_count too large", yaml: edit(t, v4, "announce_count: 3", "announce_count: 101"), path: "ha_link.announce_count", value: "101"},
		{name: "announce_interval too short", yaml: edit(t, v4, "announce_interval: 10ms", "announce_interval: 500us"), path: "ha_link.announce_interval", value: "500µs"},
		{name: "announce_interval too long", yaml: edit(t, v4, "announce_interval: 10ms", "announce_interval: 2s"), path: "ha_link.announce_interval", value: "2s"},

		// interfaces
		{name: "interface name missing", yaml: edit(t, v4, "- name: lan0", `- name: ""`), path: "interfaces[0].name", value: "is required"},
		{name: "interface name invalid", yaml: edit(t, v4, "- name: lan0", "- name: lan/0"), path: "interfaces[0].name", value: "lan/0"},
		{name: "sync mode", yaml: edit(t, v4, "\ncontrol:", "\nsync: {conntrack_mode: fast}\ncontrol:"), path: "sync.conntrack_mode", value: "fast"},
		{name: "sync port is the heartbeat port", yaml: edit(t, v4, "\ncontrol:", "\nsync: {port: 7480}\ncontrol:"), path: "sync.port", value: "7480"},
		{name: "sync nft set", yaml: edit(t, v4, "\ncontrol:", "\nsync: {nft_sets: [blocklist]}\ncontrol:"), path: "sync.nft_sets[0]", value: "family/table/set"},
		{name: "sync rate", yaml: edit(t, v4, "\ncontrol:", "\nsync: {max_rate: fast}\ncontrol:"), path: "sync.max_rate", value: "fast", decode: true},
		{name: "hook category", yaml: edit(t, v4, "\ncontrol:", "\nconfig_sync: {hooks: {polices: {apply: [/bin/true]}}}\ncontrol:"), path: "config_sync.hooks.polices", value: "unknown category"},
		{name: "interface name duplicate", yaml: edit(t, v4, "- name: wan0", "- name: lan0"), path: "interfaces[1].name", value: "duplicates interfaces[0].name"},
		{name: "dual-stack entries disagree on watch", yaml: edit(t, v4, "\ncontrol:", "  - {name: lan0, primary_ip: fd00:1::3/64, secondary_ip: fd00:1::4/64, virtual_ips: [fd00:1::1/64], watch: false}\ncontrol:"), path: "interfaces[2].watch", value: "differs from the other entry of lan0"},
		{name: "primary_ip missing", yaml: edit(t, v4, "    primary_ip: 172.16.121.3/24\n", ""), path: "interfaces[0].primary_ip", value: "is required"},
		{name: "secondary_ip missing", yaml: edit(t, v4, "    secondary_ip: 172.16.121.4/24\n", ""), path: "interfaces[0].secondary_ip", value: "is required"},
		{name: "no virtual IPs", yaml: edit(t, v4, "virtual_ips: [172.16.121.7/24]", "virtual_ips: []"), path: "interfaces[0].virtual_ips", value: "at least one"},
		{name: "virtual_ips missing", yaml: edit(t, v4, "    virtual_ips: [172.16.121.7/24]\n", ""), path: "interfaces[0].virtual_ips", value: "at least one"},
		{name: "secondary_ip in another subnet", yaml: edit(t, v4, "172.16.121.4/24", "172.16.122.4/24"), path: "interfaces[0].secondary_ip", value: "172.16.122.4/24"},
		{name: "virtual IP in another subnet", yaml: edit(t, v4, "[172.16.121.7/24]", "[172.16.122.7/24]"), path: "interfaces[0].virtual_ips[0]", value: "172.16.122.7/24"},
		{name: "virtual IP with another length", yaml: edit(t, v4, "- 198.51.100.2/28", "- 198.51.100.2/29"), path: "interfaces[1].virtual_ips[1]", value: "198.51.100.2/29"},
		{name: "virtual IP of another family", yaml: edit(t, v4, "[172.16.121.7/24]", "[fd00::7/64]"), path: "interfaces[0].virtual_ips[0]", value: "fd00::7/64"},
		{name: "virtual IP is the broadcast address", yaml: edit(t, v4, "[172.16.121.7/24]", "[172.16.121.255/24]"), path: "interfaces[0].virtual_ips[0]", value: "172.16.121.255/24"},
		{name: "primary_ip is the network address", yaml: edit(t, v4, "primary_ip: 172.16.121.3/24", "primary_ip: 172.16.121.0/24"), path: "interfaces[0].primary_ip", value: "network address of 172.16.121.0/24"},
		{name: "watch on the HA link interface", yaml: edit(t, v4, "- name: lan0", "- name: ha0"), path: "interfaces[0].watch", value: "watch cannot be enabled on the HA link interface ha0"},

		// duplicates
		{name: "duplicate within an interface", yaml: edit(t, v4, "secondary_ip: 172.16.121.4/24", "secondary_ip: 172.16.121.7/24"), path: "interfaces[0].virtual_ips[0]", value: "already used by interfaces[0].secondary_ip"},
		{name: "duplicate virtual IP", yaml: edit(t, v4, "- 198.51.100.2/28", "- 198.51.100.1/28"), path: "interfaces[1].virtual_ips[1]", value: "already used by interfaces[1].virtual_ips[0]"},
		{name: "duplicate between HA link and interface", yaml: edit(t, v4, "169.254.77.1/30", "172.16.121.1/24", "169.254.77.2/30", "172.16.121.2/24", "[172.16.121.7/24]", "[172.16.121.2/24]"), path: "interfaces[0].virtual_ips[0]", value: "already used by ha_link.secondary_address"},
		{name: "duplicate address with another prefix length", yaml: v6 + "  - name: lan1\n    primary_ip: fd00:121::3/48\n    secondary_ip: fd00:121::5/48\n    virtual_ips: [fd00:121::6/48]\n", path: "interfaces[2].primary_ip", value: "already used by interfaces[0].primary_ip"},

		// paths
		{name: "state_dir relative", yaml: edit(t, v4, "state_dir: /var/lib/tandem", "state_dir: var/lib/tandem"), path: "state_dir", value: "var/lib/tandem"},
		{name: "state_dir empty", yaml: edit(t, v4, "state_dir: /var/lib/tandem", `state_dir: ""`), path: "state_dir", value: "must not be empty"},
		{name: "control.socket relative", yaml: edit(t, v4, "socket: /run/tandem/tandem.sock", "socket: tandem.sock"), path: "control.socket", value: "tandem.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			probs := problemsOf(t, err)
			if len(probs) != 1 {
				t.Fatalf("got %d problems, want 1:\n%v", len(probs), err)
			}
			t.Log(probs[0])
			if probs[0].Path != tc.path {
				t.Errorf("path = %q, want %q (%s)", probs[0].Path, tc.path, probs[0])
			}
			if !strings.Contains(probs[0].String(), tc.value) {
				t.Errorf("problem %q does not mention %q", probs[0], tc.value)
			}
			if probs[0].Message == "" {
				t.Error("empty message")
			}
			// A file that decodes is returned for context; one that does
			// not is not validated at all.
			if (cfg == nil) != tc.decode {
				t.Errorf("config returned = %v, want %v", cfg != nil, !tc.decode)
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	bad := edit(t, readTestdata(t, "valid-v4.yaml"),
		"id: 7 ", "id: 0 ",
		"role: primary ", "role: leader ",
		"dead_interval: 300ms", "dead_interval: 200ms",
		"[172.16.121.7/24]", "[10.9.9.9/24]",
		"- name: wan0", "- name: lan0",
		"state_dir: /var/lib/tandem", "state_dir: tandem",
	)
	cfg, err := Parse([]byte(bad))
	if cfg == nil {
		t.Fatal("Parse returned no config for a file that decodes")
	}
	want := []string{
		"cluster.id",
		"node.role",
		"ha_link.dead_interval",
		"interfaces[0].virtual_ips[0]",
		"interfaces[1].name",
		"state_dir",
	}
	if diff := cmp.Diff(want, paths(problemsOf(t, err))); diff != "" {
		t.Errorf("problem paths (-want +got):\n%s\n%v", diff, err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(want) {
		t.Errorf("Error() has %d lines, want one per problem:\n%v", n, err)
	}
}

func TestParseReportsAllDecodeProblems(t *testing.T) {
	bad := edit(t, readTestdata(t, "valid-v4.yaml"),
		"preempt: true ", "preemt: true ",
		"port: 7480", "port: seven",
		"heartbeat_interval: 100ms", "heartbeat_interval: 100",
		"[172.16.121.7/24]", "[172.16.121.7]",
	)
	_, err := Parse([]byte(bad))
	want := []string{"cluster.preemt", "ha_link.port", "ha_link.heartbeat_interval", "interfaces[0].virtual_ips[0]"}
	if diff := cmp.Diff(want, paths(problemsOf(t, err))); diff != "" {
		t.Errorf("problem paths (-want +got):\n%s\n%v", diff, err)
	}
}

// Aliases can make a tiny file expand exponentially; Parse must give up
// early instead of walking 2^40 nodes.
func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("x0: &a0 {id: 1}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "x%d: &a%d {<<: [*a%d, *a%d]}\n", i, i, i-1, i-1)
	}
	b.WriteString("cluster: *a40\n")
	cfg, err := Parse([]byte(b.String()))
	if cfg != nil || err == nil || !strings.Contains(err.Error(), "use fewer YAML aliases") {
		t.Errorf("Parse = %v, %v; want a problem about aliases", cfg, err)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "---\n", "~\n"} {
		cfg, err := Parse([]byte(in))
		if cfg == nil {
			t.Fatalf("Parse(%q) returned no config", in)
		}
		want := []string{"cluster.id", "cluster.auth_key_file", "node.name", "node.role",
			"ha_link.interface", "ha_link.primary_address", "ha_link.secondary_address"}
		if diff := cmp.Diff(want, paths(problemsOf(t, err))); diff != "" {
			t.Errorf("Parse(%q) problem paths (-want +got):\n%s", in, diff)
		}
	}
}

func TestDefault(t *testing.T) {
	want := Config{
		Cluster: Cluster{Preempt: true, PreemptDelay: ms(10000)},
		Node:    Node{RealtimePriority: 50, RealtimeSoftirq: true},
		HALink: HALink{Port: 7480, HeartbeatInterval: ms(100), DeadInterval: ms(300), DeadIntervalMax: ms(1200),
			LinkHolddown: ms(2000), AnnounceCount: 3, AnnounceInterval: ms(10)},
		Control:    Control{Socket: "/run/tandem/tandem.sock"},
		StateDir:   "/var/lib/tandem",
		Sync:       Sync{Enabled: true, Conntrack: true, ConntrackMode: "inject", OutOfSyncAfter: ms(1000)},
		ConfigSync: ConfigSync{SnapshotInterval: ms(180000)},
	}
	if diff := cmp.Diff(want, Default(), cmpPrefix); diff != "" {
		t.Errorf("Default() (-want +got):\n%s", diff)
	}
}

func TestValidateNil(t *testing.T) {
	// A typed nil inside a non-nil error would make `err != nil` lie.
	if err := wantV4().Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestProblemsError(t *testing.T) {
	p := Problems{
		{Path: "ha_link.dead_interval", Value: "200ms", Message: "must be at least 3 x heartbeat_interval (300ms); raise dead_interval or lower heartbeat_interval"},
		{Path: "node.name", Message: "is required"},
		{Message: "invalid YAML near line 3: oops"},
	}
	want := `ha_link.dead_interval: "200ms": must be at least 3 x heartbeat_interval (300ms); raise dead_interval or lower heartbeat_interval
node.name: is required
invalid YAML near line 3: oops`
	if got := p.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}

func TestRoleHelpers(t *testing.T) {
	c := wantV4()
	lan := c.Interfaces[0]
	for _, tc := range []struct {
		role                    Role
		localHA, peerHA         string
		localIP, peerIP         string
		priority, wantEffective int
	}{
		{RolePrimary, "169.254.77.1/30", "169.254.77.2/30", "172.16.121.3/24", "172.16.121.4/24", 0, 200},
		{RoleSecondary, "169.254.77.2/30", "169.254.77.1/30", "172.16.121.4/24", "172.16.121.3/24", 0, 100},
		{RoleSecondary, "169.254.77.2/30", "169.254.77.1/30", "172.16.121.4/24", "172.16.121.3/24", 150, 150},
	} {
		c.Node.Role, c.Node.Priority = tc.role, tc.priority
		if got := c.LocalHAAddress(); got != pfx(tc.localHA) {
			t.Errorf("%s: LocalHAAddress = %v, want %s", tc.role, got, tc.localHA)
		}
		if got := c.PeerHAAddress(); got != pfx(tc.peerHA) {
			t.Errorf("%s: PeerHAAddress = %v, want %s", tc.role, got, tc.peerHA)
		}
		if got := lan.LocalIP(tc.role); got != pfx(tc.localIP) {
			t.Errorf("%s: LocalIP = %v, want %s", tc.role, got, tc.localIP)
		}
		if got := lan.PeerIP(tc.role); got != pfx(tc.peerIP) {
			t.Errorf("%s: PeerIP = %v, want %s", tc.role, got, tc.peerIP)
		}
		if got := c.EffectivePriority(); int(got) != tc.wantEffective {
			t.Errorf("%s priority %d: EffectivePriority = %d, want %d", tc.role, tc.priority, got, tc.wantEffective)
		}
	}
}

// The effective configuration can be written back out (e.g. by a
// "show config" command) and reads back the same.
func TestMarshalRoundTrip(t *testing.T) {
	for _, want := range []*Config{wantV4(), wantV6()} {
		out, err := yaml.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse of marshalled config: %v\n%s", err, out)
		}
		if diff := cmp.Diff(want, got, cmpPrefix); diff != "" {
			t.Errorf("round trip (-want +got):\n%s\n%s", diff, out)
		}
	}
}

// writeConfig writes the IPv4 sample into dir with auth_key_file set to
// keyRef and returns the config path.
func writeConfig(t *testing.T, dir, keyRef string, extra ...string) string {
	t.Helper()
	data := edit(t, readTestdata(t, "valid-v4.yaml"),
		append([]string{"auth_key_file: /etc/tandem/cluster.key", "auth_key_file: " + keyRef}, extra...)...)
	path := filepath.Join(dir, "tandem.yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const hexKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" // 64 bytes

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "keys", "cluster.key"), hexKey+"\n")
	writeFile(t, filepath.Join(dir, "abs.key"), strings.Repeat("k", MinKeySize)) // boundary, no newline
	writeFile(t, filepath.Join(dir, "nl.key"), strings.Repeat("k", MinKeySize-1)+"\n\n")

	for _, tc := range []struct {
		name, keyRef, wantPath, wantKey string
	}{
		{"relative path", "keys/cluster.key", filepath.Join(dir, "keys", "cluster.key"), hexKey},
		{"absolute path", filepath.Join(dir, "abs.key"), filepath.Join(dir, "abs.key"), strings.Repeat("k", MinKeySize)},
		{"only one trailing newline trimmed", "nl.key", filepath.Join(dir, "nl.key"), strings.Repeat("k", MinKeySize-1) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, key, err := Load(writeConfig(t, dir, tc.keyRef))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if string(key) != tc.wantKey {
				t.Errorf("key = %q, want %q", key, tc.wantKey)
			}
			if cfg.Cluster.AuthKeyFile != tc.wantPath {
				t.Errorf("auth_key_file = %q, want resolved %q", cfg.Cluster.AuthKeyFile, tc.wantPath)
			}
		})
	}
}

func TestLoadKeyProblems(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "short.key"), strings.Repeat("k", MinKeySize-1)+"\n")
	if err := os.Mkdir(filepath.Join(dir, "dir.key"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "secret.key"), hexKey)
	if err := os.Chmod(filepath.Join(dir, "secret.key"), 0); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, keyRef, want string
		needNonRoot        bool
	}{
		{name: "missing", keyRef: "missing.key", want: filepath.Join(dir, "missing.key") + " does not exist"},
		{name: "short", keyRef: "short.key", want: "holds 31 bytes, but the key must be at least 32 bytes"},
		{name: "directory", keyRef: "dir.key", want: "cannot be read: is a directory"},
		{name: "unreadable", keyRef: "secret.key", want: "permission denied", needNonRoot: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needNonRoot && os.Geteuid() == 0 {
				t.Skip("root reads files regardless of their mode")
			}
			cfg, key, err := Load(writeConfig(t, dir, tc.keyRef))
			probs := problemsOf(t, err)
			if len(probs) != 1 || probs[0].Path != "cluster.auth_key_file" {
				t.Fatalf("got problems %v, want one at cluster.auth_key_file", err)
			}
			if !strings.Contains(probs[0].String(), tc.want) || !strings.Contains(probs[0].String(), tc.keyRef) {
				t.Errorf("problem %q does not mention %q and the configured path", probs[0], tc.want)
			}
			if cfg == nil || key != nil {
				t.Errorf("got cfg %v, key %q; want the config and no key", cfg != nil, key)
			}
		})
	}
}

func TestLoadCombinesProblems(t *testing.T) {
	dir := t.TempDir()
	_, _, err := Load(writeConfig(t, dir, "missing.key", "port: 7480", "port: 0"))
	want := []string{"ha_link.port", "cluster.auth_key_file"}
	if diff := cmp.Diff(want, paths(problemsOf(t, err))); diff != "" {
		t.Errorf("problem paths (-want +got):\n%s\n%v", diff, err)
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Load(filepath.Join(dir, "nope.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
	path := filepath.Join(dir, "broken.yaml")
	writeFile(t, path, "cluster: [\n")
	cfg, key, err := Load(path)
	if cfg != nil || key != nil || len(problemsOf(t, err)) != 1 {
		t.Errorf("Load of broken YAML = %v, %q, %v; want one problem only", cfg, key, err)
	}
}

func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"", "cluster: [\n", "a: &a [*a]\n", "cluster:\n  <<: *x\n", "interfaces: [{}, ~, 1]\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Parse accepted a config that Validate rejects: %v", err)
			}
			return
		}
		var p *Problems
		if !errors.As(err, &p) || len(*p) == 0 {
			t.Fatalf("error %T %v is not a non-empty *Problems", err, err)
		}
		for _, pr := range *p {
			if pr.Message == "" {
				t.Fatalf("problem without message: %+v", pr)
			}
		}
		_ = err.Error()
	})
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in             string
		bytes, entries int64
		bad            bool
	}{
		{"0", 0, 0, false}, {"off", 0, 0, false}, {"20MB/s", 20e6, 0, false}, {"512KiB/s", 512 << 10, 0, false},
		{"100B/s", 100, 0, false}, {"50000/s", 0, 50000, false}, {"fast", 0, 0, true}, {"20MB", 0, 0, true}, {"-5/s", 0, 0, true},
	} {
		r, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || r.BytesPerSec != tc.bytes || r.EntriesPerSec != tc.entries {
			t.Errorf("ParseRate(%q) = %+v, %v", tc.in, r, err)
		}
	}
}
