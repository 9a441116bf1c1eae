// Package sim is tandem's deterministic simulator: it runs the real HA state
// machine (internal/ha) of two units against a fake clock and a simulated
// network, and checks the cluster's invariants after every event.
//
// The network has one path per heartbeat path (index 0 the HA link, the
// others the watched interfaces), each with its own loss, delay, duplication
// (and so reordering) and cut. Units can crash and restart (a new boot),
// shut down gracefully, lose a watched link, change sync status and receive
// operator requests. Everything random comes from one seeded source, so a
// scenario is reproduced exactly from its seed.
//
// It must never be imported by non-test code, and it must never use the wall
// clock, goroutines or real sockets: a scenario is a pure function of its
// seed.
package sim

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/ha"
)

// Timing is the cluster configuration a scenario runs with.
type Timing struct {
	Heartbeat    time.Duration
	Dead         time.Duration
	PreemptDelay time.Duration
	Holddown     time.Duration
	Preempt      bool
	// MaxDelay bounds the one-way network delay of every path.
	MaxDelay time.Duration
	// DeadMax lets the dead interval stretch after late heartbeats
	// (ha.Config.DeadIntervalMax); 0: never.
	DeadMax time.Duration
}

// deadBound is the longest a unit may wait before declaring a silent peer
// dead.
func (t Timing) deadBound() time.Duration { return max(t.Dead, t.DeadMax) }

// PathState is the condition of one path, the same in both directions.
type PathState struct {
	Cut      bool
	Loss     float64 // probability a packet is lost
	Dup      float64 // probability a packet is delivered twice
	MinDelay time.Duration
}

// Sim is one running scenario.
type Sim struct {
	T     Timing
	Now   time.Time
	Nodes [2]*Node
	Paths []PathState

	// Mutate, when set, rewrites every advert before the receiving machine
	// sees it: the way tests plant a broken rule to prove the invariants
	// catch it.
	Mutate func(receiver *ha.Machine, a *ha.Advert)
	// Trace, when set, receives one line per notable event.
	Trace func(string)

	rng    *rand.Rand
	queue  eventQueue
	order  uint64
	checks *checker
}

// Node is one simulated unit.
type Node struct {
	Name string
	Role ha.Role
	M    *ha.Machine
	Up   bool
	// LinkDown[i] is true when this unit's watched link of path i is down
	// (index 0, the HA link, is never watched).
	LinkDown []bool
	Sync     ha.SyncStatus

	boot     uint64
	seq      uint64
	lastSeen []struct{ boot, seq uint64 } // replay guard per path, as the daemon keeps
	maxEpoch uint64
	tickAt   time.Time
}

var epoch0 = time.Unix(1_000_000, 0)

// New builds two units, primary and secondary, with paths heartbeat paths.
func New(seed uint64, t Timing, paths int) *Sim {
	s := &Sim{
		T:     t,
		Now:   epoch0,
		Paths: make([]PathState, paths),
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
	s.checks = newChecker(s)
	for i, role := range []ha.Role{ha.RolePrimary, ha.RoleSecondary} {
		n := &Node{Name: []string{"fw-a", "fw-b"}[i], Role: role, LinkDown: make([]bool, paths)}
		s.Nodes[i] = n
	}
	return s
}

// PathNames names the paths as the daemon would.
func (s *Sim) PathNames() []string {
	names := []string{"ha0"}
	for i := 1; i < len(s.Paths); i++ {
		names = append(names, fmt.Sprintf("if%d", i))
	}
	return names
}

func (s *Sim) tracef(format string, args ...any) {
	if s.Trace != nil {
		s.Trace(fmt.Sprintf("%9.3fs ", s.Now.Sub(epoch0).Seconds()) + fmt.Sprintf(format, args...))
	}
}

// Start boots unit i: a fresh machine with a new boot id.
func (s *Sim) Start(i int) {
	n := s.Nodes[i]
	n.boot++
	n.seq = 0
	n.Up = true
	n.maxEpoch = 0
	n.tickAt = time.Time{}
	n.lastSeen = make([]struct{ boot, seq uint64 }, len(s.Paths))
	prio := uint8(200)
	if n.Role == ha.RoleSecondary {
		prio = 100
	}
	n.M = ha.New(ha.Config{
		Role: n.Role, Priority: prio, Preempt: s.T.Preempt, PreemptDelay: s.T.PreemptDelay,
		HeartbeatInterval: s.T.Heartbeat, DeadInterval: s.T.Dead, DeadIntervalMax: s.T.DeadMax, LinkHolddown: s.T.Holddown,
		Paths: s.PathNames(), BootID: n.boot,
	}, s.Now)
	s.tracef("%s boots (boot %d)", n.Name, n.boot)
	s.apply(i, n.M.Start(s.Now))
	for p := 1; p < len(s.Paths); p++ {
		if n.LinkDown[p] {
			s.apply(i, n.M.LinkChanged(s.Now, s.PathNames()[p], false, "carrier lost"))
		}
	}
	if n.Sync != ha.SyncUnknown {
		s.apply(i, n.M.SetSync(s.Now, n.Sync))
	}
	s.scheduleBeat(i, n.boot, s.Now)
	s.checks.disrupted()
}

// Crash stops unit i at once, as a power failure does.
func (s *Sim) Crash(i int) {
	n := s.Nodes[i]
	if !n.Up {
		return
	}
	s.tracef("%s crashes in %s", n.Name, n.M.State())
	wasActive := n.M.State() == ha.StateActive
	n.Up = false
	s.checks.disrupted()
	if wasActive {
		s.checks.expectTakeover(1-i, "the ACTIVE crashed")
	}
}

// Shutdown stops unit i gracefully: it resigns, then stops.
func (s *Sim) Shutdown(i int) {
	n := s.Nodes[i]
	if !n.Up {
		return
	}
	wasActive := n.M.State() == ha.StateActive
	s.tracef("%s shuts down", n.Name)
	s.apply(i, n.M.Shutdown(s.Now))
	n.Up = false
	s.checks.disrupted()
	if wasActive {
		s.checks.expectTakeover(1-i, "the ACTIVE shut down")
	}
}

// SetLink takes unit i's watched link of path p down or up.
func (s *Sim) SetLink(i, p int, up bool) {
	n := s.Nodes[i]
	n.LinkDown[p] = !up
	s.tracef("%s link %s up=%v", n.Name, s.PathNames()[p], up)
	s.checks.disrupted()
	if n.Up {
		s.apply(i, n.M.LinkChanged(s.Now, s.PathNames()[p], up, "carrier lost"))
	}
}

// SetSync sets unit i's sync status.
func (s *Sim) SetSync(i int, st ha.SyncStatus) {
	n := s.Nodes[i]
	n.Sync = st
	s.tracef("%s sync %s", n.Name, st)
	s.checks.disrupted()
	if n.Up {
		s.apply(i, n.M.SetSync(s.Now, st))
	}
}

// Failover is an operator's request on unit i.
func (s *Sim) Failover(i int, force bool) error {
	n := s.Nodes[i]
	if !n.Up {
		return nil
	}
	s.checks.disrupted()
	r, err := n.M.RequestFailover(s.Now, force)
	s.tracef("%s operator failover force=%v: err=%v", n.Name, force, err)
	s.apply(i, r)
	return err
}

// SetPath changes the condition of path p.
func (s *Sim) SetPath(p int, st PathState) {
	s.Paths[p] = st
	s.tracef("path %s: %+v", s.PathNames()[p], st)
	s.checks.disrupted()
}

// apply handles a machine's result: trace, checks, and an immediate heartbeat.
func (s *Sim) apply(i int, r ha.Result) {
	n := s.Nodes[i]
	for _, t := range r.Transitions {
		s.tracef("%s %s -> %s epoch %d: %s", n.Name, t.From, t.To, n.M.Epoch(), t.Reason)
		s.checks.transition(i, t)
	}
	if r.SendNow {
		s.send(i)
	}
	// One pending tick per unit: a later deadline is picked up when the
	// earlier tick fires and re-arms.
	if d := n.M.NextDeadline(s.Now); !d.IsZero() && (n.tickAt.IsZero() || d.Before(n.tickAt)) {
		boot := n.boot
		n.tickAt = d
		s.at(d, func() {
			if !n.tickAt.Equal(d) || !n.Up || n.boot != boot {
				return
			}
			n.tickAt = time.Time{}
			s.apply(i, n.M.Tick(s.Now))
		})
	}
}

func (s *Sim) scheduleBeat(i int, boot uint64, at time.Time) {
	n := s.Nodes[i]
	s.at(at, func() {
		if !n.Up || n.boot != boot {
			return
		}
		s.send(i)
		s.scheduleBeat(i, boot, s.Now.Add(s.T.Heartbeat))
	})
}

// send puts unit i's advert on every path.
func (s *Sim) send(i int) {
	from, to := s.Nodes[i], s.Nodes[1-i]
	from.seq++
	a := from.M.Advert()
	a.Seq = from.seq
	for p := range s.Paths {
		ps := s.Paths[p]
		if ps.Cut || from.LinkDown[p] || to.LinkDown[p] {
			continue
		}
		copies := 1
		if s.rng.Float64() < ps.Dup {
			copies = 2
		}
		for range copies {
			if s.rng.Float64() < ps.Loss {
				continue
			}
			delay := ps.MinDelay
			if span := s.T.MaxDelay - ps.MinDelay; span > 0 {
				delay += time.Duration(s.rng.Int64N(int64(span) + 1))
			}
			p, a := p, a
			s.at(s.Now.Add(delay), func() { s.deliver(1-i, p, a) })
		}
	}
}

// deliver hands an advert to unit i as the daemon would: dropped by the
// replay guard when not newer than the last one on this path.
func (s *Sim) deliver(i, p int, a ha.Advert) {
	n := s.Nodes[i]
	// A link that went down after sending still loses what was in flight.
	if !n.Up || n.LinkDown[p] || s.Paths[p].Cut {
		return
	}
	last := &n.lastSeen[p]
	if a.BootID < last.boot || (a.BootID == last.boot && a.Seq <= last.seq) {
		return
	}
	last.boot, last.seq = a.BootID, a.Seq
	if s.Mutate != nil {
		s.Mutate(n.M, &a)
	}
	s.apply(i, n.M.HeartbeatReceived(s.Now, p, a))
}

// Run advances the clock to until, processing every event and checking the
// invariants after each. It returns the first violation.
func (s *Sim) Run(until time.Time) error {
	for s.queue.Len() > 0 && !s.queue[0].at.After(until) {
		e := heap.Pop(&s.queue).(*event)
		s.Now = e.at
		e.fn()
		if err := s.checks.check(); err != nil {
			return err
		}
	}
	s.Now = until
	return s.checks.check()
}

// RunFor advances the clock by d.
func (s *Sim) RunFor(d time.Duration) error { return s.Run(s.Now.Add(d)) }

// Active lists the units that are up and ACTIVE.
func (s *Sim) Active() []int {
	var out []int
	for i, n := range s.Nodes {
		if n.Up && n.M.State() == ha.StateActive {
			out = append(out, i)
		}
	}
	return out
}

// Describe is a one-line summary of both units.
func (s *Sim) Describe() string {
	var b strings.Builder
	for _, n := range s.Nodes {
		if !n.Up {
			fmt.Fprintf(&b, "%s down; ", n.Name)
			continue
		}
		fmt.Fprintf(&b, "%s %s epoch %d; ", n.Name, n.M.State(), n.M.Epoch())
	}
	return strings.TrimSuffix(b.String(), "; ")
}

func (s *Sim) at(t time.Time, fn func()) {
	s.order++
	heap.Push(&s.queue, &event{at: t, order: s.order, fn: fn})
}

type event struct {
	at    time.Time
	order uint64
	fn    func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].order < q[j].order
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}
