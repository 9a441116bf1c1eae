package sim

import (
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/internal/ha"
)

// checker holds the cluster invariants and the bookkeeping they need. Every
// bound is written in terms of the configured timing, as the issue states
// them.
type checker struct {
	s *Sim

	lastDisruption time.Time
	disruptions    uint64
	connectedSince time.Time // both up with a clean path, continuously
	dualSince      time.Time // both ACTIVE, continuously
	// strict: two ACTIVE units are a violation at any instant once the pair
	// has been cleanly connected for a dead interval (handover scenarios).
	strict          bool
	noActiveSince   time.Time
	forbidAfter     time.Time // transitions forbidden after this (zero: allowed)
	violation       error
	transitionCount [2]int
}

func newChecker(s *Sim) *checker { return &checker{s: s, lastDisruption: s.Now} }

// disrupted notes a scenario event: crash, restart, link, path or sync change.
func (c *checker) disrupted() {
	c.lastDisruption = c.s.Now
	c.disruptions++
}

func (c *checker) fail(format string, args ...any) {
	if c.violation == nil {
		c.violation = fmt.Errorf("at %.3fs: %s [%s]", c.s.Now.Sub(epoch0).Seconds(), fmt.Sprintf(format, args...), c.s.Describe())
	}
}

// ForbidTransitions makes any state change after t a violation: used by
// scenarios in which no failover may happen (loss or a cut on the HA link
// alone while other paths deliver).
func (s *Sim) ForbidTransitions(after time.Time) { s.checks.forbidAfter = after }

// Transitions counts the state changes unit i made.
func (s *Sim) Transitions(i int) int { return s.checks.transitionCount[i] }

func (c *checker) transition(i int, t ha.Transition) {
	n := c.s.Nodes[i]
	c.transitionCount[i]++
	if !c.forbidAfter.IsZero() && c.s.Now.After(c.forbidAfter) {
		c.fail("no failover may happen while a path delivers heartbeats, but %s went %s -> %s: %s", n.Name, t.From, t.To, t.Reason)
	}
	if t.To == ha.StateActive {
		e := n.M.Epoch()
		if e <= n.maxEpoch {
			c.fail("%s took over with epoch %d, not above its previous %d", n.Name, e, n.maxEpoch)
		}
		n.maxEpoch = e
	}
}

// expectTakeover: the ACTIVE just died; unit j, if up and a healthy STANDBY,
// must be ACTIVE within the dead interval plus one heartbeat (plus the
// network's one-way delay, which the bound does not count).
func (c *checker) expectTakeover(j int, why string) {
	n := c.s.Nodes[j]
	if !n.Up || n.M.State() != ha.StateStandby || c.linksDown(j) {
		return
	}
	bound := c.s.T.deadBound() + c.s.T.Heartbeat + c.s.T.MaxDelay
	mark := c.disruptions
	boot := n.boot
	c.s.at(c.s.Now.Add(bound+time.Nanosecond), func() {
		if c.disruptions != mark || !n.Up || n.boot != boot {
			return // something else happened meanwhile; the bound no longer applies
		}
		if n.M.State() != ha.StateActive {
			c.fail("%s: %s is %s, not ACTIVE, %v after it", why, n.Name, n.M.State(), bound)
		}
	})
}

func (c *checker) linksDown(i int) bool {
	for _, d := range c.s.Nodes[i].LinkDown {
		if d {
			return true
		}
	}
	return false
}

// cleanPath: both units up and some path with no loss, no cut and both ends'
// links up.
func (c *checker) cleanPath() bool {
	a, b := c.s.Nodes[0], c.s.Nodes[1]
	if !a.Up || !b.Up {
		return false
	}
	for p, ps := range c.s.Paths {
		if !ps.Cut && ps.Loss == 0 && !a.LinkDown[p] && !b.LinkDown[p] {
			return true
		}
	}
	return false
}

// check runs after every event.
func (c *checker) check() error {
	if c.violation != nil {
		return c.violation
	}
	s, T := c.s, c.s.T
	now := s.Now
	active := s.Active()

	// Safety: two ACTIVE units that can hear each other cleanly resolve
	// within one dead interval (after a partition heals, or when both leave
	// FAULT at the same instant). In strict scenarios — preempt and operator
	// handovers on a healthy network — they never overlap at all.
	if c.cleanPath() {
		if c.connectedSince.IsZero() {
			c.connectedSince = now
		}
	} else {
		c.connectedSince = time.Time{}
	}
	if len(active) == 2 {
		if c.dualSince.IsZero() {
			c.dualSince = now
		}
	} else {
		c.dualSince = time.Time{}
	}
	if len(active) == 2 && !c.connectedSince.IsZero() {
		since := c.connectedSince
		if c.dualSince.After(since) {
			since = c.dualSince
		}
		switch {
		case now.Sub(since) > T.Dead:
			c.fail("two ACTIVE units for %v while connected (at most one dead interval, %v, allowed)", now.Sub(since), T.Dead)
		case c.strict && now.Sub(c.connectedSince) > T.Dead:
			c.fail("two ACTIVE units during a handover on a healthy network")
		}
	}

	// Liveness: once things are quiet, an eligible unit is never without an
	// ACTIVE for longer than a dead interval plus a heartbeat.
	if len(active) > 0 {
		c.noActiveSince = time.Time{}
	} else if c.noActiveSince.IsZero() {
		c.noActiveSince = now
	}
	quiet := T.Holddown + 3*T.deadBound() + 3*T.Heartbeat + 2*T.MaxDelay
	if now.Sub(c.lastDisruption) > quiet && len(active) == 0 && c.anyEligible() {
		if gap := now.Sub(c.noActiveSince); gap > T.deadBound()+T.Heartbeat+T.MaxDelay {
			c.fail("no ACTIVE for %v although a healthy unit is up", gap)
		}
	}

	// Preempt: with preempt on, a quiet, healthy, connected pair ends with
	// the primary ACTIVE, unless an operator moved it off.
	settle := quiet + T.PreemptDelay + T.Dead + 4*T.Heartbeat + 2*T.MaxDelay
	if T.Preempt && now.Sub(c.lastDisruption) > settle && c.preemptApplies() {
		if len(active) != 1 || active[0] != 0 {
			c.fail("preempt is on and the primary is healthy and in sync, but it is not the only ACTIVE %v after the last event", now.Sub(c.lastDisruption))
		}
	}
	return c.violation
}

func (c *checker) anyEligible() bool {
	for i, n := range c.s.Nodes {
		if n.Up && !c.linksDown(i) {
			return true
		}
	}
	return false
}

func (c *checker) preemptApplies() bool {
	p := c.s.Nodes[0]
	if !c.cleanPath() || c.linksDown(0) || c.linksDown(1) || p.Sync == ha.SyncOutOfSync {
		return false
	}
	return p.M.Advert().Flags&ha.FlagYield == 0
}
