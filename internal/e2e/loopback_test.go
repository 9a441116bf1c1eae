package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/daemon"
	"github.com/tandem-ha/tandem/internal/wire"
)

// pair is two daemons on loopback: fw-a (primary) on 127.0.0.1 and fw-b
// (secondary) on 127.0.0.2, heartbeating on a random port.
type pair struct {
	dir     string
	port    int
	key     []byte
	hb      time.Duration
	dead    time.Duration
	preempt time.Duration
}

// newPair writes the configurations of a pair on loopback. The dead
// interval never stretches (dead_interval_max = dead_interval): these
// tests time the rules at the configured dead interval — after the
// frozen-together rounds of TestLoopbackFrozenTogetherNoFailover a
// stretched one would also survive its negative control. The stretch has
// its own tests in internal/ha.
func newPair(t testing.TB, hb, dead, preemptDelay time.Duration) *pair {
	t.Helper()
	p := &pair{dir: t.TempDir(), port: 20000 + mrand.IntN(30000), hb: hb, dead: dead, preempt: preemptDelay}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	// The key is the file's text (hex here), as the daemon reads it.
	p.key = []byte(hex.EncodeToString(raw))
	if err := os.WriteFile(filepath.Join(p.dir, "cluster.key"), append(p.key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct{ name, role string }{{"fw-a", "primary"}, {"fw-b", "secondary"}} {
		cfg := fmt.Sprintf(`cluster: {id: 7, auth_key_file: cluster.key, preempt: true, preempt_delay: %s}
node: {name: %s, role: %s, realtime_softirq: false}
ha_link: {interface: lo, primary_address: 127.0.0.1/8, secondary_address: 127.0.0.2/8, port: %d, heartbeat_interval: %s, dead_interval: %s, dead_interval_max: %[6]s}
control: {socket: %s}
state_dir: %s
sync: {conntrack: false}  # both units share this machine's conntrack table
`, preemptDelay, n.name, n.role, p.port, hb, dead, p.socket(n.name), filepath.Join(p.dir, n.name+".state"))
		if err := os.WriteFile(p.config(n.name), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *pair) config(n string) string { return filepath.Join(p.dir, n+".yaml") }
func (p *pair) socket(n string) string { return filepath.Join(p.dir, n+".sock") }
func (p *pair) start(t testing.TB, n string) *proc {
	return startDaemon(t, p.config(n), filepath.Join(p.dir, fmt.Sprintf("%s-%d.log", n, time.Now().UnixNano())))
}

func (p *pair) state(t testing.TB, n string) string {
	st, err := status(t, p.socket(n))
	if err != nil {
		return "unreachable"
	}
	return st.State
}

// waitElected waits until fw-a is ACTIVE, fw-b STANDBY, and both are
// IN_SYNC (an operator's failover is refused before that, as it should be).
func (p *pair) waitElected(t testing.TB) {
	t.Helper()
	waitFor(t, 10*time.Second, "fw-a ACTIVE, fw-b STANDBY, both IN_SYNC", func() bool {
		a, errA := status(t, p.socket("fw-a"))
		b, errB := status(t, p.socket("fw-b"))
		return errA == nil && errB == nil && a.State == "ACTIVE" && b.State == "STANDBY" && a.Sync == "IN_SYNC" && b.Sync == "IN_SYNC"
	})
}

func lastTransition(st daemon.Status) daemon.TransitionView {
	if len(st.History) == 0 {
		return daemon.TransitionView{}
	}
	return st.History[len(st.History)-1]
}

// TestLoopbackPair: two daemons elect one ACTIVE; SIGKILL of the ACTIVE
// makes the other ACTIVE within dead_interval + one heartbeat; the primary's
// return with preempt takes ACTIVE back after preempt_delay; SIGTERM of the
// ACTIVE hands over at once.
func TestLoopbackPair(t *testing.T) {
	p := newPair(t, 50*time.Millisecond, 150*time.Millisecond, 600*time.Millisecond)
	a := p.start(t, "fw-a")
	p.start(t, "fw-b")
	p.waitElected(t)

	// Power-fail the ACTIVE's daemon.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, 3*time.Second, "fw-b ACTIVE after fw-a was killed", func() bool { return p.state(t, "fw-b") == "ACTIVE" })
	stB, _ := status(t, p.socket("fw-b"))
	took := lastTransition(stB)
	if !strings.Contains(took.Reason, "peer dead") {
		t.Fatalf("fw-b took over for the wrong reason: %+v", took)
	}
	// The bound is the daemon's own: when it decided, against when the
	// process was killed. Scheduling on a busy CI machine adds a little.
	bound := p.dead + p.hb
	gap := took.At.Sub(killed)
	t.Logf("takeover %v after SIGKILL (dead_interval %v + heartbeat %v = %v)", gap, p.dead, p.hb, bound)
	if gap > bound+200*time.Millisecond {
		t.Errorf("takeover took %v, more than dead_interval + one heartbeat (%v) and 200ms of slack", gap, bound)
	}

	// The primary returns: STANDBY first, ACTIVE again after preempt_delay.
	p.start(t, "fw-a")
	waitFor(t, 5*time.Second, "fw-a ACTIVE again (preempt)", func() bool { return p.state(t, "fw-a") == "ACTIVE" })
	stA, _ := status(t, p.socket("fw-a"))
	if len(stA.History) < 2 {
		t.Fatalf("want INIT -> STANDBY -> ACTIVE, got %+v", stA.History)
	}
	standby, active := stA.History[len(stA.History)-2], stA.History[len(stA.History)-1]
	if standby.To != "STANDBY" || active.To != "ACTIVE" {
		t.Fatalf("want INIT -> STANDBY -> ACTIVE, got %+v", stA.History)
	}
	if d := active.At.Sub(standby.At); d < p.preempt {
		t.Errorf("fw-a preempted %v after becoming STANDBY, sooner than preempt_delay %v", d, p.preempt)
	} else {
		t.Logf("fw-a preempted %v after becoming STANDBY (preempt_delay %v)", d, p.preempt)
	}
	waitFor(t, time.Second, "fw-b STANDBY after the preempt", func() bool { return p.state(t, "fw-b") == "STANDBY" })
	stB, _ = status(t, p.socket("fw-b"))
	if r := lastTransition(stB).Reason; !strings.Contains(r, "preempt") {
		t.Errorf("fw-b stepped down for the wrong reason: %q", r)
	}
}

// TestLoopbackSIGTERMHandsOverAtOnce: a graceful stop of the ACTIVE sends a
// resigning heartbeat, and the peer takes over without waiting for the dead
// interval (set long here, so that waiting for it would fail the test).
func TestLoopbackSIGTERMHandsOverAtOnce(t *testing.T) {
	p := newPair(t, 100*time.Millisecond, 3*time.Second, time.Second)
	a := p.start(t, "fw-a")
	p.start(t, "fw-b")
	p.waitElected(t)
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitFor(t, 2*time.Second, "fw-b ACTIVE after SIGTERM", func() bool { return p.state(t, "fw-b") == "ACTIVE" })
	stB, _ := status(t, p.socket("fw-b"))
	took := lastTransition(stB)
	if took.Reason != "peer resigned" {
		t.Fatalf("fw-b took over for %q, want \"peer resigned\"", took.Reason)
	}
	if gap := took.At.Sub(stopped); gap > p.dead/2 {
		t.Errorf("takeover after SIGTERM took %v; it must not wait for the dead interval (%v)", gap, p.dead)
	} else {
		t.Logf("takeover %v after SIGTERM (dead_interval %v)", gap, p.dead)
	}
}

// TestLoopbackOperatorFailover: `tandem failover` on either unit moves the
// role; the unit moved off does not preempt back.
func TestLoopbackOperatorFailover(t *testing.T) {
	p := newPair(t, 50*time.Millisecond, 150*time.Millisecond, 200*time.Millisecond)
	p.start(t, "fw-a")
	p.start(t, "fw-b")
	p.waitElected(t)
	out, code := runCLI(t, "failover", "--socket", p.socket("fw-a"))
	if code != 0 || !strings.Contains(out, "fw-a is STANDBY") {
		t.Fatalf("failover on the ACTIVE: exit %d: %s", code, out)
	}
	time.Sleep(3 * p.preempt) // fw-a, moved off by hand, must not preempt back
	if a, b := p.state(t, "fw-a"), p.state(t, "fw-b"); a != "STANDBY" || b != "ACTIVE" {
		t.Fatalf("after failover on fw-a: fw-a %s, fw-b %s", a, b)
	}
	// fw-a, now a standby, takes the whole state from fw-b before an
	// operator may move the role back to it.
	waitFor(t, 5*time.Second, "fw-a IN_SYNC as the standby", func() bool {
		st, err := status(t, p.socket("fw-a"))
		return err == nil && st.Sync == "IN_SYNC"
	})
	out, code = runCLI(t, "failover", "--socket", p.socket("fw-a"))
	if code != 0 || !strings.Contains(out, "fw-a is ACTIVE") {
		t.Fatalf("failover on the STANDBY: exit %d: %s", code, out)
	}
	// Refusal with a reason: the peer is gone.
	out, code = runCLI(t, "promote", "--socket", p.socket("fw-b"))
	if code == 0 || !strings.Contains(out, "--force") {
		t.Fatalf("promote without --force must be refused naming --force: exit %d: %s", code, out)
	}
}

// TestLoopbackBadPacketsChangeNothing: forged, replayed, truncated,
// wrong-cluster and wrong-version packets sent at a unit are dropped and
// counted, and its state does not move.
func TestLoopbackBadPacketsChangeNothing(t *testing.T) {
	p := newPair(t, 50*time.Millisecond, 150*time.Millisecond, 200*time.Millisecond)
	p.start(t, "fw-a")
	p.start(t, "fw-b")
	p.waitElected(t)
	before, _ := status(t, p.socket("fw-b"))

	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: p.port})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A heartbeat that would make fw-b step aside if it were believed: the
	// primary resigning.
	evil := wire.Heartbeat{ClusterID: 7, NodeID: wire.NodePrimary, State: wire.StateStandby, Flags: wire.FlagResigning,
		Priority: 200, Epoch: 99, BootID: 1, Seq: 1}
	good := wire.NewSigner(p.key)
	forged := wire.NewSigner([]byte("not the cluster key, but 32 bytes long"))
	send := func(b []byte) {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		send(forged.Append(nil, &evil))        // wrong key
		send(good.Append(nil, &evil)[:40])     // truncated
		send([]byte("GET / HTTP/1.1\r\n\r\n")) // not a heartbeat
		wrong := evil
		wrong.ClusterID = 8
		send(good.Append(nil, &wrong)) // another cluster
		v2 := good.Append(nil, &evil)
		v2[4] = 2
		send(v2) // a future protocol version
		// A replay: a genuine heartbeat of an older run (boot id 1 is
		// long before the running fw-a's, which is its start time).
		send(good.Append(nil, &evil))
	}
	time.Sleep(5 * p.hb)
	after, err := status(t, p.socket("fw-b"))
	if err != nil {
		t.Fatal(err)
	}
	if after.State != "STANDBY" || len(after.History) != len(before.History) {
		t.Fatalf("bad packets changed fw-b's state: %s, history %+v", after.State, after.History)
	}
	d := after.Paths[0].Drops
	t.Logf("drops on fw-b: %+v", d)
	if d.BadMAC < 5 || d.Truncated < 5 || d.BadMagic < 5 || d.WrongCluster < 5 || d.BadVersion < 5 || d.Replay < 5 {
		t.Errorf("every kind of bad packet must be dropped and counted: %+v", d)
	}
	// And the pair is still healthy.
	if s := p.state(t, "fw-a"); s != "ACTIVE" {
		t.Errorf("fw-a is %s", s)
	}
}
