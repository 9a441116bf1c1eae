package ha

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1000, 0)

const (
	hb   = 100 * time.Millisecond
	dead = 300 * time.Millisecond
)

func newMachine(role Role, prio uint8, preempt bool) *Machine {
	m := New(Config{Role: role, Priority: prio, Preempt: preempt, PreemptDelay: time.Second,
		HeartbeatInterval: hb, DeadInterval: dead, LinkHolddown: 2 * time.Second,
		Paths: []string{"ha0", "lan0"}, BootID: 10 + uint64(role)}, t0)
	m.Start(t0)
	return m
}

func peer(role Role, st State, epoch uint64) Advert {
	prio := uint8(200)
	if role == RoleSecondary {
		prio = 100
	}
	return Advert{Role: role, State: st, Priority: prio, Epoch: epoch, BootID: 10 + uint64(role), Seq: 1}
}

// at advances a clock shared by a test.
type clock struct{ now time.Time }

func (c *clock) after(d time.Duration) time.Time { c.now = c.now.Add(d); return c.now }

func lastReason(m *Machine) string {
	h := m.Status(t0).History
	if len(h) == 0 {
		return ""
	}
	return h[len(h)-1].Reason
}

func TestAloneBecomesActiveAfterDeadInterval(t *testing.T) {
	m := newMachine(RoleSecondary, 100, true)
	if r := m.Tick(t0.Add(dead - time.Millisecond)); m.State() != StateInit || len(r.Transitions) != 0 {
		t.Fatalf("must wait a dead interval in INIT, got %s", m.State())
	}
	r := m.Tick(t0.Add(dead))
	if m.State() != StateActive || m.Epoch() != 1 || !r.SendNow {
		t.Fatalf("want ACTIVE epoch 1 with an immediate heartbeat, got %s epoch %d %+v", m.State(), m.Epoch(), r)
	}
	if !strings.Contains(lastReason(m), "no peer heard") {
		t.Fatalf("reason %q", lastReason(m))
	}
}

func TestElectionPrefersPrimaryThenPriority(t *testing.T) {
	a := newMachine(RolePrimary, 200, true)
	a.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RoleSecondary, StateInit, 0))
	if a.State() != StateActive {
		t.Fatalf("primary with higher priority must win, got %s", a.State())
	}
	b := newMachine(RoleSecondary, 100, true)
	b.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateInit, 0))
	if b.State() != StateStandby {
		t.Fatalf("secondary must yield the election, got %s", b.State())
	}
	// Priority beats role.
	c := newMachine(RoleSecondary, 250, true)
	c.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateInit, 0))
	if c.State() != StateActive {
		t.Fatalf("higher priority must win over the primary role, got %s", c.State())
	}
}

func TestPeerDeathOnAllPathsOnly(t *testing.T) {
	m := newMachine(RoleSecondary, 100, true)
	c := &clock{t0}
	m.HeartbeatReceived(c.after(time.Millisecond), 0, peer(RolePrimary, StateActive, 3))
	if m.State() != StateStandby {
		t.Fatalf("got %s", m.State())
	}
	// The HA link goes silent, the LAN path keeps delivering: no failover.
	for i := range 50 {
		a := peer(RolePrimary, StateActive, 3)
		a.Seq = uint64(2 + i)
		m.HeartbeatReceived(c.after(hb), 1, a)
		m.Tick(c.now)
	}
	if m.State() != StateStandby {
		t.Fatalf("failover while the LAN path still delivers: %s (%s)", m.State(), lastReason(m))
	}
	// Silence on every path: takeover at exactly the dead interval.
	last := c.now
	m.Tick(last.Add(dead - time.Nanosecond))
	if m.State() != StateStandby {
		t.Fatal("took over before the dead interval")
	}
	if d := m.NextDeadline(last.Add(time.Millisecond)); !d.Equal(last.Add(dead)) {
		t.Fatalf("next deadline %v, want %v", d.Sub(t0), last.Add(dead).Sub(t0))
	}
	m.Tick(last.Add(dead))
	if m.State() != StateActive || m.Epoch() != 4 {
		t.Fatalf("want ACTIVE with epoch above the peer's 3, got %s %d", m.State(), m.Epoch())
	}
}

func TestCollisionHigherEpochStays(t *testing.T) {
	m := newMachine(RolePrimary, 200, true)
	m.Tick(t0.Add(dead)) // alone: ACTIVE epoch 1
	r := m.HeartbeatReceived(t0.Add(dead+time.Millisecond), 0, peer(RoleSecondary, StateActive, 5))
	if m.State() != StateStandby || !r.SendNow {
		t.Fatalf("a lower epoch must yield at once, even for the primary: %s", m.State())
	}
	if !strings.Contains(lastReason(m), "collision: epoch 1 against peer's 5") {
		t.Fatalf("reason %q", lastReason(m))
	}
	// Equal epochs: the election order decides.
	n := newMachine(RolePrimary, 200, true)
	n.Tick(t0.Add(dead))
	n.HeartbeatReceived(t0.Add(dead+time.Millisecond), 0, peer(RoleSecondary, StateActive, 1))
	if n.State() != StateActive {
		t.Fatalf("equal epochs: the primary stays, got %s", n.State())
	}
}

func TestPreemptWaitsAndHandsOverWithoutOverlap(t *testing.T) {
	prim := newMachine(RolePrimary, 200, true)
	c := &clock{t0}
	active := peer(RoleSecondary, StateActive, 2)
	prim.HeartbeatReceived(c.after(time.Millisecond), 0, active)
	if prim.State() != StateStandby {
		t.Fatalf("got %s", prim.State())
	}
	for i := range 9 {
		active.Seq = uint64(2 + i)
		prim.HeartbeatReceived(c.after(hb), 0, active)
		if prim.Advert().Flags&FlagTakeover != 0 {
			t.Fatalf("asked for the role %v after returning, before preempt_delay", c.now.Sub(t0))
		}
	}
	prim.Tick(c.after(200 * time.Millisecond))
	if prim.Advert().Flags&FlagTakeover == 0 || prim.State() != StateStandby {
		t.Fatalf("after preempt_delay the primary must ask for the role and still be STANDBY: %s %v", prim.State(), prim.Advert().Flags)
	}
	// The secondary (ACTIVE) sees the request and steps down first.
	sec := newMachine(RoleSecondary, 100, true)
	sec.Tick(t0.Add(dead))
	r := sec.HeartbeatReceived(c.after(time.Millisecond), 0, prim.Advert())
	if sec.State() != StateStandby || !r.SendNow {
		t.Fatalf("the ACTIVE must step down for a preferred peer: %s", sec.State())
	}
	// Only then does the primary take over.
	resigned := sec.Advert()
	resigned.Seq = 100
	prim.HeartbeatReceived(c.after(time.Millisecond), 0, resigned)
	if prim.State() != StateActive || prim.Epoch() <= resigned.Epoch {
		t.Fatalf("primary must take over with a higher epoch: %s %d", prim.State(), prim.Epoch())
	}
}

func TestOutOfSyncStandbyDoesNotPreemptButTakesOverOnDeath(t *testing.T) {
	prim := newMachine(RolePrimary, 200, true)
	prim.SetSync(t0, SyncOutOfSync)
	c := &clock{t0}
	active := peer(RoleSecondary, StateActive, 2)
	for i := range 30 {
		active.Seq = uint64(i + 1)
		prim.HeartbeatReceived(c.after(hb), 0, active)
	}
	if prim.Advert().Flags&FlagTakeover != 0 {
		t.Fatal("an OUT_OF_SYNC unit must not ask for the role")
	}
	prim.Tick(c.after(dead))
	if prim.State() != StateActive {
		t.Fatalf("the peer's death must still make it take over: %s", prim.State())
	}
}

func TestWatchedLinkFaultAndHolddown(t *testing.T) {
	m := newMachine(RolePrimary, 200, true)
	m.Tick(t0.Add(dead))
	c := &clock{t0.Add(dead)}
	r := m.LinkChanged(c.after(time.Millisecond), "lan0", false, "carrier lost")
	if m.State() != StateFault || !r.SendNow || m.Advert().FailedLinks != 1 {
		t.Fatalf("want FAULT at once: %s %+v", m.State(), r)
	}
	m.LinkChanged(c.after(time.Second), "lan0", true, "")
	m.LinkChanged(c.after(500*time.Millisecond), "lan0", false, "carrier lost") // flap
	m.LinkChanged(c.after(500*time.Millisecond), "lan0", true, "")
	m.Tick(c.after(1900 * time.Millisecond))
	if m.State() != StateFault {
		t.Fatal("left FAULT before the link was up for link_holddown")
	}
	m.Tick(c.after(100 * time.Millisecond))
	if m.State() == StateFault {
		t.Fatal("still FAULT after link_holddown")
	}
}

func TestPeerFaultMakesStandbyTakeOver(t *testing.T) {
	m := newMachine(RoleSecondary, 100, true)
	m.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
	f := peer(RolePrimary, StateFault, 1)
	f.FailedLinks, f.Seq = 1, 2
	m.HeartbeatReceived(t0.Add(2*time.Millisecond), 0, f)
	if m.State() != StateActive {
		t.Fatalf("got %s", m.State())
	}
}

func TestResigningPeerIsGoneAtOnce(t *testing.T) {
	m := newMachine(RoleSecondary, 100, true)
	m.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
	r := peer(RolePrimary, StateStandby, 1)
	r.Flags, r.Seq = FlagResigning, 2
	m.HeartbeatReceived(t0.Add(2*time.Millisecond), 0, r)
	if m.State() != StateActive || lastReason(m) != "peer resigned" {
		t.Fatalf("got %s (%s)", m.State(), lastReason(m))
	}
	// A late heartbeat of the run that resigned does not bring it back.
	late := peer(RolePrimary, StateActive, 1)
	m.HeartbeatReceived(t0.Add(3*time.Millisecond), 1, late)
	if st := m.Status(t0.Add(3 * time.Millisecond)); st.Peer.Alive {
		t.Fatal("a late heartbeat revived a resigned peer")
	}
}

func TestShutdownResigns(t *testing.T) {
	m := newMachine(RolePrimary, 200, true)
	m.Tick(t0.Add(dead))
	r := m.Shutdown(t0.Add(time.Second))
	if m.State() != StateStandby || m.Advert().Flags&FlagResigning == 0 || !r.SendNow {
		t.Fatalf("want STANDBY, resigning, immediate heartbeat: %s %v %+v", m.State(), m.Advert().Flags, r)
	}
	if r := m.Tick(t0.Add(time.Hour)); len(r.Transitions) != 0 {
		t.Fatal("a stopped machine must not act")
	}
}

func TestOperatorFailoverRefusals(t *testing.T) {
	m := newMachine(RolePrimary, 200, true)
	m.Tick(t0.Add(dead))
	now := t0.Add(dead + time.Millisecond)
	if _, err := m.RequestFailover(now, false); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("no peer: %v", err)
	}
	p := peer(RoleSecondary, StateStandby, 0)
	p.Sync = SyncOutOfSync
	m.HeartbeatReceived(now, 0, p)
	if _, err := m.RequestFailover(now, false); !errors.Is(err, ErrPeerOutOfSync) {
		t.Fatalf("peer out of sync: %v", err)
	}
	if m.State() != StateActive {
		t.Fatal("a refused failover changed the state")
	}
	if _, err := m.RequestFailover(now, true); err != nil || m.State() != StateStandby {
		t.Fatalf("--force: %v, %s", err, m.State())
	}
	if m.Advert().Flags&FlagYield == 0 {
		t.Fatal("the unit moved off by hand must advertise Yield")
	}
	s := newMachine(RoleSecondary, 100, true)
	s.SetSync(t0, SyncOutOfSync)
	s.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
	if _, err := s.RequestFailover(t0.Add(time.Millisecond), false); !errors.Is(err, ErrOutOfSync) {
		t.Fatalf("standby out of sync: %v", err)
	}
}

func TestPromoteOutranksOldActive(t *testing.T) {
	m := newMachine(RoleSecondary, 100, true)
	m.HeartbeatReceived(t0.Add(time.Millisecond), 0, peer(RolePrimary, StateActive, 7))
	if _, err := m.Promote(t0.Add(2 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if m.State() != StateActive || m.Epoch() != 8 {
		t.Fatalf("got %s epoch %d", m.State(), m.Epoch())
	}
	a := peer(RolePrimary, StateActive, 7)
	a.Seq = 2
	m.HeartbeatReceived(t0.Add(3*time.Millisecond), 0, a)
	if m.State() != StateActive {
		t.Fatal("the promoted unit must win the collision with the old ACTIVE")
	}
}

// TestNextDeadlineAcrossPathsAfterATick: heartbeats arrive on three paths a
// few µs apart; a Tick at the first path's expiry changes nothing, and the
// deadlines, each computed at the instant of its step, lead to the last
// path's expiry, where the peer is dead. (A caller that recomputed it later with a newer
// clock lost that deadline: BENCHMARKS.md, finding 1.)
func TestNextDeadlineAcrossPathsAfterATick(t *testing.T) {
	m := New(Config{Role: RoleSecondary, Priority: 100, Preempt: true, PreemptDelay: time.Second,
		HeartbeatInterval: hb, DeadInterval: dead, Paths: []string{"ha0", "lan0", "wan0"}, BootID: 12}, t0)
	m.Start(t0)
	a := peer(RolePrimary, StateActive, 1)
	for i := range 3 {
		a.Seq = uint64(i + 1)
		m.HeartbeatReceived(t0.Add(time.Duration(i)*20*time.Microsecond), i, a)
	}
	tick := t0.Add(dead + 10*time.Microsecond)
	m.Tick(tick)
	if m.State() != StateStandby {
		t.Fatalf("the peer is still heard on two paths: %s", m.State())
	}
	// Following the deadlines, each computed at the instant of the step,
	// reaches the last path's expiry, where the peer is dead.
	now := tick
	for range 3 {
		next := m.NextDeadline(now)
		if next.IsZero() {
			t.Fatalf("no deadline at %v although the peer is still alive", now.Sub(t0))
		}
		now = next
		m.Tick(now)
		if m.State() == StateActive {
			break
		}
	}
	if want := t0.Add(dead + 40*time.Microsecond); m.State() != StateActive || !now.Equal(want) {
		t.Fatalf("%s at %v; want ACTIVE at the last path's expiry %v", m.State(), now.Sub(t0), want.Sub(t0))
	}
}
