package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(args ...string) (string, int) {
	var out bytes.Buffer
	code := Main(args, &out, &out)
	return out.String(), code
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cluster.key"), []byte(strings.Repeat("s", 40)), 0o600); err != nil {
		t.Fatal(err)
	}
	good := `cluster: {id: 7, auth_key_file: cluster.key}
node: {name: fw-a, role: primary}
ha_link: {interface: ha0, primary_address: 169.254.77.1/30, secondary_address: 169.254.77.2/30}
interfaces:
  - {name: lan0, primary_ip: 172.16.121.3/24, secondary_ip: 172.16.121.4/24, virtual_ips: [172.16.121.7/24], watch: true}
`
	path := filepath.Join(dir, "t.yaml")
	os.WriteFile(path, []byte(good), 0o600)
	if out, code := run("config", "check", path); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("valid file: exit %d: %s", code, out)
	}
	bad := strings.Replace(good, "dead_interval", "x", 1)
	bad = strings.Replace(bad, "172.16.121.7/24", "10.9.9.9/24", 1)
	bad = strings.Replace(bad, "watch: true", "watch: true, colour: red", 1)
	bad = strings.Replace(bad, "interface: ha0", "interface: lan0", 1)
	os.WriteFile(path, []byte(bad), 0o600)
	out, code := run("config", "check", path)
	if code != 2 {
		t.Fatalf("invalid file must exit 2, got %d: %s", code, out)
	}
	if !strings.Contains(out, "colour") {
		t.Fatalf("unknown field not named: %s", out)
	}
	// Fix the typo; the semantic problems are all listed at once.
	bad = strings.Replace(bad, ", colour: red", "", 1)
	os.WriteFile(path, []byte(bad), 0o600)
	out, code = run("config", "check", path)
	for _, want := range []string{"interfaces[0].virtual_ips[0]", "10.9.9.9/24", "watch"} {
		if code != 2 || !strings.Contains(out, want) {
			t.Errorf("want %q in the problems (exit %d):\n%s", want, code, out)
		}
	}
}

func TestClientWithoutDaemon(t *testing.T) {
	out, code := run("status", "--socket", filepath.Join(t.TempDir(), "x.sock"))
	if code == 0 || !strings.Contains(out, "cannot reach the tandem daemon") {
		t.Fatalf("exit %d: %s", code, out)
	}
	out, code = run("status", "-o", "yaml")
	if code != 2 || !strings.Contains(out, "use table or json") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

func TestVersion(t *testing.T) {
	if out, code := run("version"); code != 0 || !strings.HasPrefix(out, "tandem ") {
		t.Fatalf("exit %d: %s", code, out)
	}
}
