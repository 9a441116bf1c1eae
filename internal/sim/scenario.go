package sim

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tandem-ha/tandem/internal/ha"
)

// Options tune a scenario run.
type Options struct {
	Mutate func(receiver *ha.Machine, a *ha.Advert)
	Trace  func(string)
}

// Outcome summarises one scenario.
type Outcome struct {
	Seed   uint64
	Family string
	Timing Timing
	Paths  int
	Events int
	Err    error
}

func (o Outcome) String() string {
	return fmt.Sprintf("seed %d (%s, hb %v dead %v (max %v) preempt %v delay %v holddown %v maxdelay %v, %d paths, %d events)",
		o.Seed, o.Family, o.Timing.Heartbeat, o.Timing.Dead, o.Timing.DeadMax, o.Timing.Preempt, o.Timing.PreemptDelay,
		o.Timing.Holddown, o.Timing.MaxDelay, o.Paths, o.Events)
}

// Families are the scenario kinds Run picks from, by seed.
var Families = []string{"random", "ha-link-only", "active-dies", "preempt", "operator"}

// Run plays the scenario of the given seed: its family, timing and events
// all come from the seed.
func Run(seed uint64, o Options) Outcome {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	family := Families[rng.IntN(len(Families))]
	t := randomTiming(rng)
	paths := 1 + rng.IntN(3)
	if family == "ha-link-only" && paths == 1 {
		paths = 2
	}
	s := New(seed, t, paths)
	s.Mutate, s.Trace = o.Mutate, o.Trace
	out := Outcome{Seed: seed, Family: family, Timing: t, Paths: paths}
	var err error
	switch family {
	case "random":
		err = randomEvents(s, rng, &out)
	case "ha-link-only":
		err = haLinkOnly(s, rng, &out)
	case "active-dies":
		err = activeDies(s, rng, &out)
	case "preempt":
		err = preemptReturn(s, rng, &out)
	case "operator":
		err = operatorFailovers(s, rng, &out)
	}
	out.Err = err
	return out
}

func randomTiming(rng *rand.Rand) Timing {
	hb := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond}[rng.IntN(4)]
	t := Timing{
		Heartbeat:    hb,
		Dead:         hb * time.Duration(3+rng.IntN(3)),
		PreemptDelay: []time.Duration{0, 2 * hb, 20 * hb}[rng.IntN(3)],
		Holddown:     []time.Duration{0, 5 * hb, 20 * hb}[rng.IntN(3)],
		Preempt:      rng.IntN(3) > 0,
		MaxDelay:     time.Duration(rng.Int64N(int64(hb/2) + 1)),
	}
	if rng.IntN(2) == 0 {
		t.DeadMax = t.Dead * time.Duration(2+rng.IntN(3)) // as the daemon's default (4x)
	}
	return t
}

// startBoth boots both units a little apart, as two boxes do.
func startBoth(s *Sim, rng *rand.Rand) error {
	first := rng.IntN(2)
	s.Start(first)
	if err := s.RunFor(time.Duration(rng.Int64N(int64(s.T.Dead)))); err != nil {
		return err
	}
	s.Start(1 - first)
	return nil
}

// settle heals everything, boots every unit and lets the pair run quietly
// long enough for the liveness and preempt checks to apply.
func settle(s *Sim) error {
	for p := range s.Paths {
		s.SetPath(p, PathState{})
	}
	for i, n := range s.Nodes {
		for p, down := range n.LinkDown {
			if down {
				s.SetLink(i, p, true)
			}
		}
		if n.Sync == ha.SyncOutOfSync {
			s.SetSync(i, ha.SyncInSync)
		}
		if !n.Up {
			s.Start(i)
		}
	}
	T := s.T
	return s.RunFor(2 * (T.Holddown + 4*T.Dead + T.PreemptDelay + 8*T.Heartbeat + 4*T.MaxDelay))
}

// randomEvents: crashes, restarts, shutdowns, cuts, loss, partitions, link
// failures, sync changes and operator requests at random times.
func randomEvents(s *Sim, rng *rand.Rand, out *Outcome) error {
	if err := startBoth(s, rng); err != nil {
		return err
	}
	T := s.T
	end := s.Now.Add(400 * T.Heartbeat)
	for s.Now.Before(end) {
		gap := time.Duration(rng.ExpFloat64() * float64(8*T.Heartbeat))
		if err := s.RunFor(gap); err != nil {
			return err
		}
		out.Events++
		i := rng.IntN(2)
		p := rng.IntN(len(s.Paths))
		switch k := rng.IntN(100); {
		case k < 10:
			s.Crash(i)
		case k < 25:
			if !s.Nodes[i].Up {
				s.Start(i)
			}
		case k < 29:
			s.Shutdown(i)
		case k < 42:
			s.SetPath(p, PathState{Cut: !s.Paths[p].Cut})
		case k < 52:
			s.SetPath(p, PathState{Loss: rng.Float64() * 0.3, Dup: rng.Float64() * 0.2})
		case k < 60:
			cut := !s.Paths[0].Cut
			for q := range s.Paths {
				s.SetPath(q, PathState{Cut: cut})
			}
		case k < 72:
			if p > 0 {
				s.SetLink(i, p, s.Nodes[i].LinkDown[p])
			}
		case k < 80:
			st := ha.SyncInSync
			if rng.IntN(2) == 0 {
				st = ha.SyncOutOfSync
			}
			s.SetSync(i, st)
		case k < 90:
			_ = s.Failover(i, rng.IntN(2) == 0)
		default:
			s.SetPath(p, PathState{Dup: rng.Float64() * 0.5, MinDelay: time.Duration(rng.Int64N(int64(T.MaxDelay) + 1))})
		}
	}
	return settle(s)
}

// haLinkOnly: after the election, the HA link loses 30% of its packets or is
// cut outright while the watched paths stay clean. No unit may change state.
func haLinkOnly(s *Sim, rng *rand.Rand, out *Outcome) error {
	if err := startBoth(s, rng); err != nil {
		return err
	}
	// Let the election and any preempt finish before the link degrades.
	if err := s.RunFor(2*s.T.Dead + s.T.PreemptDelay + 4*s.T.Heartbeat + 2*s.T.MaxDelay); err != nil {
		return err
	}
	s.ForbidTransitions(s.Now)
	end := s.Now.Add(300 * s.T.Heartbeat)
	for s.Now.Before(end) {
		out.Events++
		if rng.IntN(2) == 0 {
			s.SetPath(0, PathState{Loss: 0.3, Dup: rng.Float64() * 0.2})
		} else {
			s.SetPath(0, PathState{Cut: true})
		}
		if p := 1 + rng.IntN(len(s.Paths)-1); rng.IntN(3) == 0 {
			s.SetPath(p, PathState{Dup: 0.3}) // reordering and duplicates on a watched path
		}
		if rng.IntN(4) == 0 {
			s.SetSync(rng.IntN(2), ha.SyncOutOfSync) // out of sync must not matter either
		}
		if err := s.RunFor(time.Duration(rng.ExpFloat64() * float64(30*s.T.Heartbeat))); err != nil {
			return err
		}
	}
	if s.Transitions(0)+s.Transitions(1) == 0 {
		return fmt.Errorf("no unit ever changed state: the election did not run")
	}
	return nil
}

// activeDies: the ACTIVE crashes or shuts down, possibly while the network
// is lossy; the checker asserts the takeover bound.
func activeDies(s *Sim, rng *rand.Rand, out *Outcome) error {
	if err := startBoth(s, rng); err != nil {
		return err
	}
	for range 5 {
		if err := s.RunFor(3*s.T.Dead + s.T.PreemptDelay + s.T.Holddown); err != nil {
			return err
		}
		out.Events++
		if rng.IntN(3) == 0 {
			s.SetPath(rng.IntN(len(s.Paths)), PathState{Loss: rng.Float64() * 0.3})
		}
		for _, i := range s.Active() {
			if rng.IntN(2) == 0 {
				s.Crash(i)
			} else {
				s.Shutdown(i)
			}
		}
		if err := s.RunFor(2*s.T.Dead + 2*s.T.Heartbeat); err != nil {
			return err
		}
		for i, n := range s.Nodes {
			if !n.Up {
				s.Start(i)
			}
		}
	}
	return settle(s)
}

// preemptReturn: the primary dies, the secondary takes over, the primary
// comes back. With preempt on it must be ACTIVE again no sooner than
// preempt_delay after it sees the secondary ACTIVE, and soon after; with
// preempt off the secondary keeps the role.
func preemptReturn(s *Sim, rng *rand.Rand, out *Outcome) error {
	s.checks.strict = true
	s.Start(0)
	s.Start(1)
	T := s.T
	if err := s.RunFor(2*T.Dead + T.PreemptDelay + 4*T.Heartbeat); err != nil {
		return err
	}
	if a := s.Active(); len(a) != 1 || a[0] != 0 {
		return fmt.Errorf("after start the primary is not the only ACTIVE: %s", s.Describe())
	}
	out.Events++
	s.Crash(0)
	if err := s.RunFor(T.Dead + 2*T.Heartbeat + T.MaxDelay); err != nil {
		return err
	}
	if a := s.Active(); len(a) != 1 || a[0] != 1 {
		return fmt.Errorf("the secondary did not take over: %s", s.Describe())
	}
	s.Start(0)
	back := s.Now
	// Earliest: it must first hear the ACTIVE, then wait preempt_delay.
	for s.Now.Sub(back) < T.PreemptDelay {
		if err := s.RunFor(T.Heartbeat / 2); err != nil {
			return err
		}
		if s.Nodes[0].M.State() == ha.StateActive {
			return fmt.Errorf("the primary took ACTIVE back %v after returning, before preempt_delay %v", s.Now.Sub(back), T.PreemptDelay)
		}
	}
	if err := s.RunFor(T.Heartbeat + 2*T.MaxDelay + 2*T.Heartbeat + 2*T.MaxDelay); err != nil {
		return err
	}
	a := s.Active()
	if T.Preempt && (len(a) != 1 || a[0] != 0) {
		return fmt.Errorf("preempt on: the primary is not ACTIVE %v after returning (preempt_delay %v): %s", s.Now.Sub(back), T.PreemptDelay, s.Describe())
	}
	if !T.Preempt {
		if err := s.RunFor(T.PreemptDelay + 10*T.Dead); err != nil {
			return err
		}
		if a := s.Active(); len(a) != 1 || a[0] != 1 {
			return fmt.Errorf("preempt off: the secondary should have kept ACTIVE: %s", s.Describe())
		}
	}
	return nil
}

// operatorFailovers: on a healthy network (some loss and duplication
// allowed on one path), an operator switches the role back and forth. Each
// switch completes within a dead interval plus a heartbeat, and the two
// units never overlap as ACTIVE.
func operatorFailovers(s *Sim, rng *rand.Rand, out *Outcome) error {
	s.checks.strict = true
	if err := startBoth(s, rng); err != nil {
		return err
	}
	T := s.T
	if len(s.Paths) > 1 {
		s.SetPath(rng.IntN(len(s.Paths)), PathState{Loss: rng.Float64() * 0.3, Dup: rng.Float64() * 0.3})
	}
	if err := s.RunFor(2*T.Dead + T.PreemptDelay + 4*T.Heartbeat); err != nil {
		return err
	}
	for range 6 {
		a := s.Active()
		if len(a) != 1 {
			return fmt.Errorf("want one ACTIVE before the switch: %s", s.Describe())
		}
		from := a[0]
		on := from
		if rng.IntN(2) == 0 {
			on = 1 - from // asked on the standby
		}
		out.Events++
		if err := s.Failover(on, false); err != nil {
			return fmt.Errorf("operator failover on %s refused: %v", s.Nodes[on].Name, err)
		}
		if err := s.RunFor(T.Dead + T.Heartbeat + 2*T.MaxDelay); err != nil {
			return err
		}
		if a := s.Active(); len(a) != 1 || a[0] != 1-from {
			return fmt.Errorf("operator failover on %s did not move ACTIVE off %s: %s", s.Nodes[on].Name, s.Nodes[from].Name, s.Describe())
		}
		// The unit moved off by hand does not preempt back.
		if err := s.RunFor(T.PreemptDelay + 2*T.Dead); err != nil {
			return err
		}
		if a := s.Active(); len(a) != 1 || a[0] != 1-from {
			return fmt.Errorf("the unit moved off by hand took ACTIVE back: %s", s.Describe())
		}
	}
	return nil
}
