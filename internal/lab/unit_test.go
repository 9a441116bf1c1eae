package lab

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
)

func TestNameValidation(t *testing.T) {
	for _, name := range []string{"Tandem", "a-b", "toolong99", "lab_1", " x", "é"} {
		o := Options{Name: name, RunDir: t.TempDir()}
		if _, err := Up(context.Background(), o); err == nil || !strings.Contains(err.Error(), "invalid lab name") {
			t.Errorf("Up(%q) = %v, want invalid lab name", name, err)
		}
		if err := Down(o); err == nil || !strings.Contains(err.Error(), "invalid lab name") {
			t.Errorf("Down(%q) = %v, want invalid lab name", name, err)
		}
		if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "invalid lab name") {
			t.Errorf("Open(%q) = %v, want invalid lab name", name, err)
		}
	}
	for _, name := range []string{"", "tandem", "a", "12345678", "td0a1b"} {
		if _, err := (Options{Name: name}).normalize(); err != nil {
			t.Errorf("normalize(%q): %v", name, err)
		}
	}
}

func TestUnknownProfile(t *testing.T) {
	_, err := Up(context.Background(), Options{Name: "x", Profile: "warp", RunDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `unknown lab profile "warp" (have: default, fast)`) {
		t.Fatalf("Up = %v, want unknown profile error", err)
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := Open(Options{Name: "nolab", RunDir: t.TempDir()})
	want := "no lab named nolab; start one with `tandem lab up --name nolab`"
	if err == nil || err.Error() != want {
		t.Fatalf("Open = %v, want %q", err, want)
	}
}

// configFile mirrors the daemon's config schema, to check what the lab
// writes parses as intended.
type configFile struct {
	Cluster struct {
		ID           int    `yaml:"id"`
		AuthKeyFile  string `yaml:"auth_key_file"`
		Preempt      bool   `yaml:"preempt"`
		PreemptDelay string `yaml:"preempt_delay"`
	} `yaml:"cluster"`
	Node struct {
		Name string `yaml:"name"`
		Role string `yaml:"role"`
	} `yaml:"node"`
	HALink struct {
		Interface         string `yaml:"interface"`
		PrimaryAddress    string `yaml:"primary_address"`
		SecondaryAddress  string `yaml:"secondary_address"`
		Port              int    `yaml:"port"`
		HeartbeatInterval string `yaml:"heartbeat_interval"`
		DeadInterval      string `yaml:"dead_interval"`
		LinkHolddown      string `yaml:"link_holddown"`
		AnnounceCount     int    `yaml:"announce_count"`
		AnnounceInterval  string `yaml:"announce_interval"`
	} `yaml:"ha_link"`
	Interfaces []struct {
		Name        string   `yaml:"name"`
		PrimaryIP   string   `yaml:"primary_ip"`
		SecondaryIP string   `yaml:"secondary_ip"`
		VirtualIPs  []string `yaml:"virtual_ips"`
		Watch       bool     `yaml:"watch"`
	} `yaml:"interfaces"`
	Control struct {
		Socket string `yaml:"socket"`
	} `yaml:"control"`
	StateDir string `yaml:"state_dir"`
}

func TestRenderConfig(t *testing.T) {
	dir := "/run/tandem/lab/x y" // a space must survive
	for _, tc := range []struct {
		node, profile, role                 string
		heartbeat, dead, holddown, preDelay string
	}{
		{RoleFwA, "default", "primary", "50ms", "150ms", "1s", "2s"},
		{RoleFwB, "fast", "secondary", "5ms", "15ms", "500ms", "2s"},
	} {
		p, err := profile(tc.profile)
		if err != nil {
			t.Fatal(err)
		}
		var got configFile
		dec := yaml.NewDecoder(strings.NewReader(string(renderConfig(dir, tc.node, p))))
		dec.KnownFields(true)
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: generated config does not parse: %v\n%s", tc.node, err, renderConfig(dir, tc.node, p))
		}
		var want configFile
		want.Cluster.ID, want.Cluster.AuthKeyFile, want.Cluster.Preempt, want.Cluster.PreemptDelay = 77, dir+"/cluster.key", true, tc.preDelay
		want.Node.Name, want.Node.Role = tc.node, tc.role
		h := &want.HALink
		h.Interface, h.PrimaryAddress, h.SecondaryAddress, h.Port = "ha0", "169.254.77.1/30", "169.254.77.2/30", 7480
		h.HeartbeatInterval, h.DeadInterval, h.LinkHolddown = tc.heartbeat, tc.dead, tc.holddown
		h.AnnounceCount, h.AnnounceInterval = 3, "10ms"
		want.Interfaces = append(want.Interfaces, got.Interfaces...) // shape checked below
		want.Control.Socket = dir + "/" + tc.node + ".sock"
		want.StateDir = dir + "/" + tc.node + ".state"
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s config (-want +got):\n%s", tc.node, diff)
		}
		if len(got.Interfaces) != 3 {
			t.Fatalf("%d interfaces, want 3 (lan0 for IPv4 and IPv6, wan0)", len(got.Interfaces))
		}
		lan, lan6, wan := got.Interfaces[0], got.Interfaces[1], got.Interfaces[2]
		if lan6.Name != "lan0" || lan6.PrimaryIP != "fd00:121::3/64" || lan6.SecondaryIP != "fd00:121::4/64" ||
			!cmp.Equal(lan6.VirtualIPs, []string{"fd00:121::1/64"}) || !lan6.Watch {
			t.Errorf("lan0 IPv6 entry = %+v", lan6)
		}
		if lan.Name != "lan0" || lan.PrimaryIP != "172.16.121.3/24" || lan.SecondaryIP != "172.16.121.4/24" ||
			!cmp.Equal(lan.VirtualIPs, []string{"172.16.121.1/24"}) || !lan.Watch {
			t.Errorf("lan0 entry = %+v", lan)
		}
		if wan.Name != "wan0" || wan.PrimaryIP != "203.0.113.3/24" || wan.SecondaryIP != "203.0.113.4/24" ||
			!cmp.Equal(wan.VirtualIPs, []string{"203.0.113.1/24"}) || !wan.Watch {
			t.Errorf("wan0 entry = %+v", wan)
		}
	}
}

// A PID is only ours while its command line and start time are the
// recorded ones: a recycled PID is never signalled.
func TestProcRecordIdentity(t *testing.T) {
	pid := os.Getpid()
	_, start, err := procStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	self := procRecord{PID: pid, StartTime: start, Argv: os.Args, Netns: "x"}
	if !self.alive() {
		t.Fatal("own process not recognised")
	}
	if err := self.signal(0); err != nil {
		t.Fatalf("signal 0 to self: %v", err)
	}
	for name, r := range map[string]procRecord{
		"other start time": {PID: pid, StartTime: start + 1, Argv: os.Args, Netns: "x"},
		"other argv":       {PID: pid, StartTime: start, Argv: []string{"/usr/sbin/tandem", "run", "--config", "/x.yaml"}, Netns: "x"},
		"no argv":          {PID: pid, StartTime: start},
		"no pid":           {Argv: os.Args},
	} {
		if r.alive() {
			t.Errorf("%s: alive() = true", name)
		}
		if err := r.signal(syscall.SIGKILL); !errors.Is(err, errNotRunning) {
			t.Errorf("%s: signal = %v, want errNotRunning", name, err)
		}
	}
	// The instant between fork and exec: "ip netns exec <ns> <argv...>".
	r := procRecord{Argv: []string{"/bin/tandem", "run", "--config", "c"}, Netns: "lab-fw-a"}
	if !r.matches([]string{"ip", "netns", "exec", "lab-fw-a", "/bin/tandem", "run", "--config", "c"}) {
		t.Error("ip netns exec form not matched")
	}
	if r.matches([]string{"ip", "netns", "exec", "other-fw-a", "/bin/tandem", "run", "--config", "c"}) {
		t.Error("ip netns exec in another namespace matched")
	}
	if r.matches([]string{"/bin/tandem", "run", "--config", "c", "extra"}) {
		t.Error("longer command line matched")
	}
}
