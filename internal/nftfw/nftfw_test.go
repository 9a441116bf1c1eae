package nftfw

import (
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

var labRules = Rules{LAN: "lan0", WAN: "wan0", SNATTo: netip.MustParseAddr("203.0.113.1")}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		r    Rules
		want string // substring of the error; "" = valid
	}{
		{"ok", labRules, ""},
		{"ok mapped v4", Rules{LAN: "a", WAN: "b", SNATTo: netip.MustParseAddr("::ffff:203.0.113.1")}, ""},
		{"no lan", Rules{WAN: "wan0", SNATTo: labRules.SNATTo}, "LAN interface name is empty"},
		{"no wan", Rules{LAN: "lan0", SNATTo: labRules.SNATTo}, "WAN interface name is empty"},
		{"long name", Rules{LAN: "abcdefghijklmnop", WAN: "wan0", SNATTo: labRules.SNATTo}, "longer than 15"},
		{"same", Rules{LAN: "x", WAN: "x", SNATTo: labRules.SNATTo}, "same interface"},
		{"v6 snat", Rules{LAN: "lan0", WAN: "wan0", SNATTo: netip.MustParseAddr("2001:db8::1")}, "not an IPv4"},
		{"zero snat", Rules{LAN: "lan0", WAN: "wan0"}, "not an IPv4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Validate() = %v, want error containing %q", err, c.want)
			}
		})
	}
}

func list(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	out, err := ns.Exec("nft", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

func requireNft(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: the nft binary (used only to render the ruleset in tests) is not installed")
	}
}

func TestApplyGoldenIdempotentRemove(t *testing.T) {
	requireNft(t)
	ns := netnstest.New(t, netnstest.Prefix(), "nft")

	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	got := list(t, ns)
	golden := filepath.Join("testdata", "ruleset.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Fatalf("ruleset differs from %s (-want +got):\n%s", golden, diff)
	}

	// Applying again replaces the table: same text, same number of rules.
	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if diff := cmp.Diff(got, list(t, ns)); diff != "" {
		t.Fatalf("second Apply changed the ruleset (-first +second):\n%s", diff)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.NsHandle)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 || tables[0].Name != TableName {
		t.Fatalf("tables after two Applies = %v, want exactly %s", tables, TableName)
	}
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	for chain, n := range map[string]int{"prerouting": 1, "forward": 5, "postrouting": 1} {
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: chain, Table: tbl})
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != n {
			t.Errorf("chain %s has %d rules, want %d", chain, len(rules), n)
		}
	}

	// A different ruleset replaces the old one entirely.
	other := Rules{LAN: "in0", WAN: "out0", SNATTo: netip.MustParseAddr("198.51.100.7")}
	if err := Apply(ns.NsHandle, other); err != nil {
		t.Fatalf("Apply other: %v", err)
	}
	out := list(t, ns)
	for _, s := range []string{`iifname "in0" oifname "out0"`, `iifname "in0" tcp dport 21 ct helper set "ftp-standard"`, "snat ip to 198.51.100.7"} {
		if !strings.Contains(out, s) {
			t.Errorf("ruleset lacks %q:\n%s", s, out)
		}
	}
	for _, s := range []string{"lan0", "wan0", "203.0.113.1"} {
		if strings.Contains(out, s) {
			t.Errorf("old rule %q survived the replace:\n%s", s, out)
		}
	}

	if err := Remove(ns.NsHandle); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if out, err := ns.Exec("nft", "list", "table", "inet", TableName); err == nil {
		t.Fatalf("table still listed after Remove:\n%s", out)
	}
	if out, _ := ns.Exec("nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Fatalf("ruleset not empty after Remove:\n%s", out)
	}
	// Remove is idempotent.
	if err := Remove(ns.NsHandle); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestApplyLeavesOtherTablesAlone(t *testing.T) {
	requireNft(t)
	ns := netnstest.New(t, netnstest.Prefix(), "nft")
	if _, err := ns.Exec("nft", "add", "table", "inet", "other"); err != nil {
		t.Fatal(err)
	}
	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatal(err)
	}
	if err := Remove(ns.NsHandle); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Exec("nft", "list", "table", "inet", "other"); err != nil {
		t.Fatalf("table inet other was touched: %v", err)
	}
}

func TestApplyInvalidRulesTouchesNothing(t *testing.T) {
	requireNft(t)
	ns := netnstest.New(t, netnstest.Prefix(), "nft")
	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatal(err)
	}
	before := list(t, ns)
	if err := Apply(ns.NsHandle, Rules{LAN: "lan0"}); err == nil {
		t.Fatal("Apply with invalid rules succeeded")
	}
	if diff := cmp.Diff(before, list(t, ns)); diff != "" {
		t.Fatalf("invalid Apply changed the ruleset:\n%s", diff)
	}
}

// TestApplyWithoutFTPHelper: a kernel without the FTP conntrack helper
// refuses the ct helper object (ENOENT); Apply installs the rest of the
// ruleset, the same but for the helper object and its prerouting rule.
func TestApplyWithoutFTPHelper(t *testing.T) {
	requireNft(t)
	ns := netnstest.New(t, netnstest.Prefix(), "nft")
	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatal(err)
	}
	full := list(t, ns)
	if ok, err := HasFTPHelper(ns.NsHandle); err != nil || !ok {
		t.Skipf("skipped: this kernel has no FTP conntrack helper (nf_conntrack_ftp), the fallback is what Apply installed: HasFTPHelper %v %v", ok, err)
	}
	old := ftpHelperKernelName
	ftpHelperKernelName = "nosuchhelper"
	defer func() { ftpHelperKernelName = old }()
	if err := Apply(ns.NsHandle, labRules); err != nil {
		t.Fatalf("Apply with a helper the kernel lacks: %v", err)
	}
	if ok, err := HasFTPHelper(ns.NsHandle); err != nil || ok {
		t.Fatalf("HasFTPHelper = %v, %v; want false", ok, err)
	}
	got := list(t, ns)
	for _, s := range []string{"ct helper", "chain prerouting"} {
		if strings.Contains(got, s) {
			t.Errorf("the fallback ruleset has %q:\n%s", s, got)
		}
	}
	// Everything else is the full ruleset's.
	var want []string
	skip := false
	for _, line := range strings.Split(full, "\n") {
		switch {
		case strings.Contains(line, "ct helper ftp-standard {"), strings.Contains(line, "chain prerouting {"):
			skip = true
		case skip && strings.TrimSpace(line) == "}":
			skip = false
			continue
		}
		if !skip {
			want = append(want, line)
		}
	}
	norm := func(s string) string { // blank lines between blocks do not matter
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.TrimSpace(l) != "" {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	if diff := cmp.Diff(norm(strings.Join(want, "\n")), norm(got)); diff != "" {
		t.Errorf("the fallback ruleset differs from the full one without the helper (-want +got):\n%s", diff)
	}
}
