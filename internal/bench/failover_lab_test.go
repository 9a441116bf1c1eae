package bench_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/netnstest"
)

// TestFailoverCommand runs `tandem bench failover --trials 1` for one mode
// in a real lab and checks that the code path works: the trial ran, the
// traffic came back, and the lab is gone afterwards. It asserts no number.
func TestFailoverCommand(t *testing.T) {
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("skipped in -short: builds tandem and a lab")
	}
	bin := filepath.Join(t.TempDir(), "tandem")
	build := exec.Command("go", "build", "-o", bin, "github.com/tandem-ha/tandem/cmd/tandem")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tandem: %v\n%s", err, out)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "bn" + hex.EncodeToString(b[:]) // 8 characters, the bench's own prefix

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "failover", "--name", name, "--profile", "fast",
		"--trials", "1", "--modes", bench.ModeCrash, "--keepalived=false", "--json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Cleanup(func() {
		// The command removes its lab; if it was killed, remove what is left.
		if _, err := os.Stat(filepath.Join("/run/tandem/lab", name)); err == nil {
			_ = exec.Command(bin, "lab", "down", "--name", name).Run()
		}
	})
	if err != nil {
		t.Fatalf("bench failover: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), out)
	}
	var rep bench.FailoverReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	samples := rep.Samples[bench.ModeCrash]
	if len(samples) != 1 {
		t.Fatalf("want 1 crash sample, got %d (errors: %v)\nstderr:\n%s", len(samples), rep.Errors, stderr.String())
	}
	if s := samples[0]; !s.OK {
		t.Errorf("traffic did not come back after the crash: %+v\nstderr:\n%s", s, stderr.String())
	}
	if rep.Crash == nil || rep.Crash.N != 1 {
		t.Errorf("crash_gap_ms summary: %+v", rep.Crash)
	}
	if len(rep.Errors) > 0 {
		t.Errorf("errors: %v", rep.Errors)
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(list)) {
		if strings.HasPrefix(line, name+"-") {
			t.Errorf("namespace left behind: %s", strings.TrimSpace(line))
		}
	}
}
