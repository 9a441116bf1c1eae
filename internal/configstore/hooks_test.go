package configstore

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestCommandHook(t *testing.T) {
	out := t.TempDir()
	h := CommandHook(
		[]string{"sh", "-c", `grep -q '^mode=' || { echo "no mode= line in $TANDEM_DOCUMENT" >&2; exit 3; }`},
		[]string{"sh", "-c", `cat > "$0/$TANDEM_DOCUMENT"`, out},
	)
	s := openT(t, Options{Hooks: map[string]Hook{"antivirus": h}})
	if _, err := s.Publish(Publish{Category: "antivirus", Name: "engine", Content: []byte("mode=block\n"), Author: "a"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "engine")); err != nil || string(b) != "mode=block\n" {
		t.Errorf("apply command got %q, %v; want the document on stdin", b, err)
	}
	_, err := s.Publish(Publish{Category: "antivirus", Name: "engine", Content: []byte("garbage"), Author: "a"})
	if !errors.Is(err, ErrValidation) || !strings.Contains(err.Error(), "exit status 3: no mode= line in engine") {
		t.Errorf("Publish of invalid content = %v", err)
	}
	if rev, _ := s.Head(); rev != 1 {
		t.Errorf("head = %d, want 1", rev)
	}
	// Nil commands leave the step out.
	if h := CommandHook(nil, []string{}); h.Validate != nil || h.Apply != nil {
		t.Errorf("CommandHook(nil, empty) = %+v, want no funcs", h)
	}
	// A command that is not there fails the step, naming it.
	h = CommandHook(nil, []string{filepath.Join(out, "missing")})
	if err := h.Apply("x", nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Apply with a missing command = %v", err)
	}
}

// A fake nft records its arguments and input, and rejects "BAD".
func TestNftHookFakeBinary(t *testing.T) {
	dir := t.TempDir()
	nft := filepath.Join(dir, "nft")
	writeScript(t, nft, `in=$(cat)
echo "$* <$in>" >> "`+dir+`/calls"
case "$in" in *BAD*) echo "Error: syntax error, unexpected BAD" >&2; exit 1;; esac
`)
	s := openT(t, Options{Hooks: map[string]Hook{"policies": NftHook(nft)}})
	if _, err := s.Publish(Publish{Category: "policies", Name: "main", Content: []byte("flush ruleset"), Author: "a"}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Publish(Publish{Category: "policies", Name: "main", Content: []byte("BAD"), Author: "a"})
	if !errors.Is(err, ErrValidation) || !strings.Contains(err.Error(), "-c -f -: exit status 1: Error: syntax error, unexpected BAD") {
		t.Errorf("Publish BAD = %v", err)
	}
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	want := "-c -f - <flush ruleset>\n-f - <flush ruleset>\n-c -f - <BAD>\n"
	if string(calls) != want {
		t.Errorf("nft calls:\n%s\nwant:\n%s", calls, want)
	}
}

// Real nft inside a network namespace: a valid ruleset is applied, an
// invalid one is rejected by `nft -c` and leaves the kernel and the store
// untouched.
func TestNftHookNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	nftPath, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("skipped: nft not installed")
	}
	ns := netnstest.New(t, netnstest.Prefix(), "cs")
	wrapper := filepath.Join(t.TempDir(), "nft-in-ns")
	writeScript(t, wrapper, `exec ip netns exec `+ns.Name+` `+nftPath+` "$@"`+"\n")
	s := openT(t, Options{Hooks: map[string]Hook{"policies": NftHook(wrapper)}})

	good := "flush ruleset\ntable inet tandemtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 22 accept\n  }\n}\n"
	if _, err := s.Publish(Publish{Category: "policies", Name: "main", Content: []byte(good), Author: "a"}); err != nil {
		t.Fatal(err)
	}
	listed, err := ns.Exec(nftPath, "list", "ruleset")
	if err != nil || !strings.Contains(listed, "table inet tandemtest") || !strings.Contains(listed, "tcp dport 22 accept") {
		t.Fatalf("ruleset after apply: %q, %v", listed, err)
	}
	bad := "flush ruleset\ntable inet tandemtest {\n  chain input {\n    tcp dport 22 acept\n  }\n}\n"
	_, err = s.Publish(Publish{Category: "policies", Name: "main", Content: []byte(bad), Author: "a"})
	if !errors.Is(err, ErrValidation) || !strings.Contains(err.Error(), "acept") {
		t.Errorf("Publish of an invalid ruleset = %v, want ErrValidation quoting nft", err)
	}
	after, _ := ns.Exec(nftPath, "list", "ruleset")
	if after != listed {
		t.Errorf("kernel ruleset changed by a rejected publish:\n%s", after)
	}
	if rev, _ := s.Head(); rev != 1 {
		t.Errorf("head = %d, want 1", rev)
	}
}
