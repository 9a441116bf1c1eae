package ha

import (
	"testing"
	"time"
)

// standbyOf returns a STANDBY hearing an ACTIVE primary on time every
// heartbeat until the clock's now, with dead interval stretching up to
// most.
func standbyOf(t *testing.T, most time.Duration, c *clock) *Machine {
	t.Helper()
	m := New(Config{Role: RoleSecondary, Priority: 100, HeartbeatInterval: hb, DeadInterval: dead,
		DeadIntervalMax: most, Paths: []string{"ha0"}, BootID: 11}, t0)
	m.Start(t0)
	c.now = t0
	for range 10 {
		m.HeartbeatReceived(c.after(hb), 0, peer(RolePrimary, StateActive, 1))
	}
	if m.State() != StateStandby || m.DeadInterval(c.now) != dead {
		t.Fatalf("setup: %s, dead interval %v", m.State(), m.DeadInterval(c.now))
	}
	return m
}

// silentFor ticks the machine every millisecond for d with no heartbeat
// and returns how long after the start of the silence it took over (0:
// it did not).
func silentFor(m *Machine, c *clock, d time.Duration) time.Duration {
	start := c.now
	for c.now.Sub(start) < d {
		m.Tick(c.after(time.Millisecond))
		if m.State() == StateActive {
			return c.now.Sub(start)
		}
	}
	return 0
}

// A peer that came back after a late heartbeat (a gap it survived) is
// given twice that gap before it is dead; the negative control, with no
// stretch allowed, takes over at the dead interval.
func TestLateHeartbeatsStretchDeadInterval(t *testing.T) {
	for _, most := range []time.Duration{4 * dead, dead} {
		var c clock
		m := standbyOf(t, most, &c)
		// The peer was held 250 ms (just under the dead interval) and came
		// back.
		m.HeartbeatReceived(c.after(250*time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
		m.HeartbeatReceived(c.after(hb), 0, peer(RolePrimary, StateActive, 1))
		want := dead
		if most > dead {
			want = 500 * time.Millisecond // twice the 250 ms gap
		}
		if got := m.DeadInterval(c.now); got != want {
			t.Fatalf("max %v: dead interval %v after a 250 ms gap, want %v", most, got, want)
		}
		// Held again, longer than the dead interval: survived only when
		// stretched.
		took := silentFor(m, &c, 450*time.Millisecond)
		switch {
		case most > dead && took != 0:
			t.Fatalf("stretched to %v, the peer silent 450 ms was declared dead after %v", want, took)
		case most == dead && took != dead:
			t.Fatalf("negative control: took over after %v, want the dead interval %v", took, dead)
		}
	}
}

// A peer that really dies while the dead interval is stretched is declared
// dead at the stretched interval, never later than DeadIntervalMax; and a
// stretch ends lateWindow after the last late heartbeat.
func TestStretchedDeadIntervalBounds(t *testing.T) {
	var c clock
	most := 3 * dead / 2
	m := standbyOf(t, most, &c)
	m.HeartbeatReceived(c.after(290*time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
	if got := m.DeadInterval(c.now); got != most {
		t.Fatalf("dead interval %v after a 290 ms gap, want the cap %v", got, most)
	}
	if n := m.NextDeadline(c.now); n != c.now.Add(most) {
		t.Fatalf("next deadline in %v, want %v", n.Sub(c.now), most)
	}
	if took := silentFor(m, &c, time.Second); took != most {
		t.Fatalf("a dead peer was declared dead after %v, want %v", took, most)
	}

	// On time for lateWindow: back to the dead interval.
	c = clock{}
	m = standbyOf(t, 4*dead, &c)
	m.HeartbeatReceived(c.after(250*time.Millisecond), 0, peer(RolePrimary, StateActive, 1))
	if got := m.DeadInterval(c.now); got != 500*time.Millisecond {
		t.Fatalf("dead interval %v after a 250 ms gap, want 500ms", got)
	}
	for c.now.Sub(t0) < lateWindow+2*time.Second {
		m.HeartbeatReceived(c.after(hb), 0, peer(RolePrimary, StateActive, 1))
	}
	if got := m.DeadInterval(c.now); got != dead {
		t.Fatalf("dead interval %v %v after the last late heartbeat, want %v", got, lateWindow, dead)
	}
	if took := silentFor(m, &c, time.Second); took != dead {
		t.Fatalf("took over after %v, want %v", took, dead)
	}
}

// A restart of the peer is no late heartbeat: the gap across it does not
// stretch the dead interval; nor does one lost heartbeat (2 of 3).
func TestPeerRestartIsNoLateHeartbeat(t *testing.T) {
	var c clock
	m := standbyOf(t, 4*dead, &c)
	restarted := peer(RolePrimary, StateActive, 1)
	restarted.BootID++
	m.HeartbeatReceived(c.after(250*time.Millisecond), 0, restarted)
	if got := m.DeadInterval(c.now); got != dead {
		t.Fatalf("dead interval %v after the peer's restart, want %v", got, dead)
	}
	m.HeartbeatReceived(c.after(2*hb), 0, restarted)
	if got := m.DeadInterval(c.now); got != dead {
		t.Fatalf("dead interval %v after one lost heartbeat, want %v", got, dead)
	}
}
