package e2e

import (
	"context"
	"flag"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/lab"
)

var flagConns = flag.Int("e2e.conns", 1000, "TCP connections the state-sync survival tests keep open")

const streamPort = 8080

// streams opens n TCP connections from the client to the server through the
// firewall's NAT, each sending 32 bytes every 100 ms and checking the echo.
func (l *testLab) streams(n int) (*bench.Streams, *bench.StreamServer) {
	l.t.Helper()
	var srv *bench.StreamServer
	if err := l.Do(lab.RoleServer, func() (err error) { srv, err = bench.ListenStream(streamPort); return }); err != nil {
		l.t.Fatal(err)
	}
	var ss *bench.Streams
	if err := l.Do(lab.RoleClient, func() (err error) {
		ss, err = bench.DialStreams(netip.AddrPortFrom(lab.ServerAddr.Addr(), streamPort), n, 32, 100*time.Millisecond)
		return
	}); err != nil {
		srv.Close()
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ss.Close(); srv.Close() })
	return ss, srv
}

// syncedLab brings a lab up with state sync on or off and waits until the
// standby holds the ACTIVE's connections (IN_SYNC on both).
func syncedLab(t *testing.T, syncOn bool) *testLab {
	t.Helper()
	extra := ""
	if !syncOn {
		extra = "sync: {enabled: false}\n"
	}
	l := newLabOpts(t, "default", extra)
	if syncOn {
		waitFor(t, 10*time.Second, "both units IN_SYNC", func() bool {
			a, errA := status(t, l.socket("fw-a"))
			b, errB := status(t, l.socket("fw-b"))
			return errA == nil && errB == nil && a.Sync == "IN_SYNC" && b.Sync == "IN_SYNC"
		})
	}
	return l
}

// survive runs n streams through the pair, fails the ACTIVE with fail, and
// reports how many connections came through without a reset or a lost,
// duplicated or reordered byte.
func survive(t *testing.T, l *testLab, n int, fail func() error) (ok, broken int, why []string) {
	ss, srv := l.streams(n)
	time.Sleep(time.Second) // established, and replicated to the standby
	if err := fail(); err != nil {
		t.Fatal(err)
	}
	failedAt := l.tookOverByFwB(t)
	// TCP retransmits within a second or two of the takeover.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, broken = ss.Progressed(failedAt.Add(200 * time.Millisecond))
		if ok+broken == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ok == n {
		if inc := ss.Drain(10 * time.Second); inc > 0 {
			t.Errorf("%d connections did not get every byte back", inc)
		}
	}
	why = ss.FirstErrors(3)
	for _, err := range srv.Errors() {
		why = append(why, err.Error())
		break
	}
	return ok, n - ok, why
}

// tookOverByFwB waits until fw-b is ACTIVE and the client and the server
// send to it, and returns that moment. The failover is complete only then
// (after a daemon SIGKILL the old ACTIVE still forwards until they do);
// connections are judged on what they do after it.
func (l *testLab) tookOverByFwB(t *testing.T) time.Time {
	t.Helper()
	l.waitStates(5*time.Second, "", "ACTIVE")
	lanB, wanB := l.mac("fw-b", "lan0").String(), l.mac("fw-b", "wan0").String()
	waitFor(t, 5*time.Second, "the client and the server sending to fw-b", func() bool {
		return l.neighMAC(lab.RoleClient, lab.LANVIP.Addr()) == lanB && l.neighMAC(lab.RoleServer, lab.WANVIP.Addr()) == wanB
	})
	return time.Now()
}

// TestStateSyncConnectionsSurvive: 1,000 TCP connections through the NAT'ed
// virtual IP survive a power failure of the ACTIVE, a daemon SIGKILL on a
// live box, and `tandem failover`, with no reset and no lost or reordered
// byte. Each has a negative control: with state sync off, they break.
func TestStateSyncConnectionsSurvive(t *testing.T) {
	n := *flagConns
	cases := []struct {
		name string
		fail func(l *testLab) error
	}{
		{"crash", func(l *testLab) error { return l.Crash("fw-a") }},
		{"sigkill", func(l *testLab) error { return l.KillDaemon("fw-a", syscall.SIGKILL) }},
		{"failover", func(l *testLab) error {
			out, code := runCLI(t, "failover", "--socket", l.socket("fw-a"))
			if code != 0 {
				t.Fatalf("tandem failover: exit %d: %s", code, out)
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := syncedLab(t, true)
			ok, broken, why := survive(t, l, n, func() error { return c.fail(l) })
			t.Logf("%s with state sync: %d of %d connections survived", c.name, ok, n)
			if broken > 0 {
				t.Fatalf("%s: %d of %d connections broke with state sync on: %s", c.name, broken, n, strings.Join(why, "; "))
			}
		})
		t.Run(c.name+"/without-sync", func(t *testing.T) {
			l := syncedLab(t, false)
			ok, broken, why := survive(t, l, n, func() error { return c.fail(l) })
			t.Logf("%s without state sync: %d of %d survived, %d broke (%s)", c.name, ok, n, broken, strings.Join(why, "; "))
			if broken < n/2 {
				t.Fatalf("negative control: with state sync off most connections must break, but %d of %d survived — the test would prove nothing", ok, n)
			}
		})
	}
}

// TestStateSyncLinkCut: the sync channel is cut (the HA link) while the
// watched paths stay up: no failover, OUT_OF_SYNC on both units,
// hasync_connection_failed_timeout logged by the ACTIVE; when the link
// returns, IN_SYNC again with the same connection count, without a restart.
func TestStateSyncLinkCut(t *testing.T) {
	l := syncedLab(t, true)
	l.streams(50)
	time.Sleep(500 * time.Millisecond)
	if err := l.SetLink("fw-a", "ha0", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "OUT_OF_SYNC on both units", func() bool {
		a, _ := status(t, l.socket("fw-a"))
		b, _ := status(t, l.socket("fw-b"))
		return a.Sync == "OUT_OF_SYNC" && b.Sync == "OUT_OF_SYNC"
	})
	if a, b := l.states(); a != "ACTIVE" || b != "STANDBY" {
		t.Fatalf("a cut sync link must not cause a failover: fw-a %s, fw-b %s", a, b)
	}
	waitFor(t, 3*time.Second, "hasync_connection_failed_timeout in fw-a's log", func() bool {
		out, _ := l.Exec(context.Background(), lab.RoleFwA, "cat", l.Dir()+"/fw-a.log")
		return strings.Contains(string(out), "hasync_connection_failed_timeout")
	})
	if err := l.SetLink("fw-a", "ha0", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "IN_SYNC on both units after the link returns", func() bool {
		a, _ := status(t, l.socket("fw-a"))
		b, _ := status(t, l.socket("fw-b"))
		return a.Sync == "IN_SYNC" && b.Sync == "IN_SYNC"
	})
	out, code := runCLI(t, "stats", "--compare", "--socket", l.socket("fw-a"), "-o", "json")
	if code != 0 {
		t.Fatalf("tandem stats --compare: exit %d: %s", code, out)
	}
	t.Logf("stats --compare: %s", out)
}
