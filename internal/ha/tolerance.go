package ha

import "time"

// Late heartbeats stretch the dead interval.
//
// A peer whose heartbeats come late but come — its event loop held, or its
// host not letting it run (a virtual machine's CPU taken by the
// hypervisor) — is alive, and the next silence of the same kind is not a
// death. On the lab's 2-vCPU VM such holds last 15–50 ms, several times in
// a rough second and then not for minutes; at the fast profile's 15 ms
// dead interval each was a false failover (BENCHMARKS.md, findings 19 and
// 25), as it is for keepalived at its fastest setting. So the machine
// remembers the longest gap between two of the peer's heartbeats that the
// peer survived, when it was longer than three quarters of the dead
// interval (one lost heartbeat is not: 2 heartbeats of 3), and for
// lateWindow after it the peer is declared dead only after twice that gap —
// never less than DeadInterval and never more than DeadIntervalMax. When
// the peer's heartbeats are on time (a quiet host), the dead interval is
// DeadInterval, and a power failure is detected as fast as configured. The
// cost is paid only on a rough host: a real death there is detected within
// DeadIntervalMax instead of DeadInterval.
//
// What counts: gaps between authentic heartbeats of one run of the peer on
// any path. A restart of the peer (a new boot id) and its death reset the
// record.

// lateWindow is how long a survived late gap keeps the dead interval
// stretched.
const lateWindow = 30 * time.Second

// lateTracker is the peer's record of late heartbeats.
type lateTracker struct {
	last  time.Time     // the last heartbeat, on any path
	boot  uint64        // of this run of the peer
	gap   time.Duration // the longest late gap survived in the window
	until time.Time     // the window's end
}

// heard records a heartbeat of the peer's run boot at now.
func (l *lateTracker) heard(cfg *Config, now time.Time, boot uint64) {
	if boot != l.boot || l.last.IsZero() {
		*l = lateTracker{last: now, boot: boot}
		return
	}
	gap := now.Sub(l.last)
	l.last = now
	if gap <= cfg.DeadInterval*3/4 {
		return
	}
	if !now.Before(l.until) {
		l.gap = 0
	}
	l.gap = max(l.gap, gap)
	l.until = now.Add(lateWindow)
}

// reset forgets the record (the peer died or resigned).
func (l *lateTracker) reset() { *l = lateTracker{} }

// deadInterval is how long the peer may be silent at now before it is
// dead.
func (m *Machine) deadInterval(now time.Time) time.Duration {
	d, most := m.cfg.DeadInterval, m.cfg.DeadIntervalMax
	l := &m.peer.late
	if most <= d || l.gap == 0 || !now.Before(l.until) {
		return d
	}
	return min(max(2*l.gap, d), most)
}

// DeadInterval returns the dead interval in force at now: DeadInterval,
// or more while the peer's heartbeats have lately come late.
func (m *Machine) DeadInterval(now time.Time) time.Duration { return m.deadInterval(now) }
