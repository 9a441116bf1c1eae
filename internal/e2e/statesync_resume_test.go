package e2e

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/lab"
)

// TestStateSyncStandbyRestartResumes: the standby's daemon is SIGKILLed
// and started again while its kernel keeps the table; connections opened
// while it was down arrive by the resumed stream, without a full copy,
// and every connection — from before and during the restart — survives a
// power failure of the ACTIVE afterwards. Negative controls: with the
// checkpoint removed, and with the standby's table flushed, the restarted
// standby gets a full copy instead (and the connections survive all the
// same).
func TestStateSyncStandbyRestartResumes(t *testing.T) {
	cases := []struct {
		name        string
		beforeStart func(t *testing.T, l *testLab, ckpt string)
		resumed     bool
	}{
		{"resume", func(*testing.T, *testLab, string) {}, true},
		{"checkpoint-removed", func(t *testing.T, l *testLab, ckpt string) {
			if err := os.Remove(ckpt); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"table-flushed", func(t *testing.T, l *testLab, ckpt string) {
			if out, err := l.Exec(context.Background(), lab.RoleFwB, "conntrack", "-F"); err != nil {
				t.Fatalf("conntrack -F: %v: %s", err, out)
			}
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := syncedLab(t, true)
			const n = 40
			before, srv := l.streams(n)
			ckpt := filepath.Join(l.Dir(), "fw-b.state", "conntrack.checkpoint")
			waitFor(t, 10*time.Second, "fw-b's checkpoint of the connections", func() bool {
				st, err := os.Stat(ckpt)
				return err == nil && st.Size() > int64(n*20)
			})
			if err := l.KillDaemon("fw-b", syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// Changes while the standby's daemon is down.
			var during *bench.Streams
			if err := l.Do(lab.RoleClient, func() (err error) {
				during, err = bench.DialStreams(netip.AddrPortFrom(lab.ServerAddr.Addr(), streamPort), n, 32, 100*time.Millisecond)
				return
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(during.Close)
			c.beforeStart(t, l, ckpt)
			if err := l.StartDaemon("fw-b"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 15*time.Second, "fw-b IN_SYNC with every connection", func() bool {
				b, err := status(t, l.socket("fw-b"))
				return err == nil && b.Sync == "IN_SYNC"
			})
			// A small copy may say IN_SYNC before its writer logs (the
			// kernel's backlog allowance): wait for the log to tell.
			waitFor(t, 5*time.Second, "fw-b's log saying how it synchronised", func() bool {
				log := lastLife(t, l, "fw-b")
				return strings.Contains(log, "resuming from the checkpoint") || strings.Contains(log, "full copy: reconciling")
			})
			time.Sleep(500 * time.Millisecond)
			log := lastLife(t, l, "fw-b")
			resumed := strings.Contains(log, "resuming from the checkpoint")
			copied := strings.Contains(log, "full copy: reconciling")
			t.Logf("%s: resumed %v, full copy %v", c.name, resumed, copied)
			if resumed != c.resumed || copied == c.resumed {
				t.Fatalf("%s: resumed %v and full copy %v, want resumed %v; fw-b's log since its start:\n%s", c.name, resumed, copied, c.resumed, tail(log, 30))
			}

			if err := l.Crash("fw-a"); err != nil {
				t.Fatal(err)
			}
			failedAt := l.tookOverByFwB(t)
			deadline := failedAt.Add(15 * time.Second)
			var okB, okD int
			for {
				okB, _ = before.Progressed(failedAt.Add(200 * time.Millisecond))
				okD, _ = during.Progressed(failedAt.Add(200 * time.Millisecond))
				if okB+okD == 2*n || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if okB != n || okD != n {
				why := append(before.FirstErrors(2), during.FirstErrors(2)...)
				for _, err := range srv.Errors() {
					why = append(why, err.Error())
					break
				}
				t.Fatalf("%s: after the takeover %d of %d connections from before the restart and %d of %d opened during it went on: %s",
					c.name, okB, n, okD, n, strings.Join(why, "; "))
			}
		})
	}
}

// lastLife returns node's log since the lab last started its daemon.
func lastLife(t *testing.T, l *testLab, node string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(l.Dir(), node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if i := strings.LastIndex(s, "--- tandem lab: starting "+node); i >= 0 {
		s = s[i:]
	}
	return s
}
