package bench_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/netnstest"
)

// TestSyncBenchEntriesArrive runs the state-sync benchmark's code path on a
// real lab with 2,000 connections (tandem only) and checks behaviour, not
// speed: every connection reached the standby, nothing was lost, the
// resync and the promotion completed, and the lab is gone afterwards.
// The connections avoid tandem's own ports as NAT ports (its sync ignores
// those; the benchmark reports them as lost by default).
func TestSyncBenchEntriesArrive(t *testing.T) {
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("skipped in -short: builds tandem and a lab")
	}
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("skipped: the benchmark needs the conntrack tool (apt-get install conntrack)")
	}
	bin := filepath.Join(t.TempDir(), "tandem")
	build := exec.Command("go", "build", "-o", bin, "github.com/tandem-ha/tandem/cmd/tandem")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tandem: %v\n%s", err, out)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "bs" + hex.EncodeToString(b[:]) // 8 characters, the sync bench's own prefix
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(lab.DefaultRunDir, name)); err == nil {
			t.Errorf("lab %s left behind", name)
			_ = lab.Down(lab.Options{Name: name})
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 2000
	var progress strings.Builder
	rep, err := bench.RunSync(ctx, bench.SyncOptions{
		Lab:           lab.Options{Name: name, Binary: bin},
		Entries:       n,
		AvoidNATPorts: []uint16{7480, 7481},
		Stall:         20 * time.Second,
		Progress:      &progress,
	})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("RunSync: %v", err)
	}
	r := rep.SyncResult
	if r.Created.Failed != 0 {
		t.Errorf("%d creates failed on the ACTIVE: %v", r.Created.Failed, r.Errors)
	}
	if r.Lost == nil || *r.Lost != 0 || r.OnStandby != n {
		t.Errorf("on the standby %d of %d (lost %v, e.g. %v)", r.OnStandby, n, r.Lost, r.LostExamples)
	}
	if r.AllOnStandbyS == nil {
		t.Error("the standby never held all the connections")
	}
	if r.Lag == nil || r.Lag.Seen == 0 {
		t.Errorf("no lag sample seen on the standby: %+v", r.Lag)
	}
	if r.Resync == nil || r.Resync.Entries != n || r.ResyncS == nil {
		t.Errorf("resync incomplete: %+v", r.Resync)
	}
	if r.Promote == nil || r.Promote.Entries != n || r.PromoteS == nil {
		t.Errorf("promotion incomplete: %+v", r.Promote)
	}
	if len(r.Errors) > 0 {
		t.Errorf("errors: %v", r.Errors)
	}
	if !rep.Limits.Restored {
		t.Errorf("conntrack limits not restored: %s", rep.Limits.RestoreErrors)
	}
	if _, err := os.Stat(filepath.Join(lab.DefaultRunDir, name)); err == nil {
		t.Errorf("lab %s still exists after RunSync", name)
	}
}
