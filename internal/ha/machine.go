package ha

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// historySize bounds the transition record kept for status output.
const historySize = 64

// Machine is the HA state machine of one unit. It is not safe for concurrent
// use: one event loop owns it.
type Machine struct {
	cfg       Config
	state     State
	epoch     uint64
	sync      SyncStatus
	startedAt time.Time
	stopping  bool

	// yield: moved off ACTIVE by an operator; cleared when it serves again
	// or an operator asks for the role back.
	yield bool
	// manualTakeover: an operator asked this STANDBY to take over.
	manualTakeover bool
	manualSince    time.Time
	// preemptRequested: this STANDBY is preferred and asks for the role.
	preemptRequested bool
	peerActiveSince  time.Time
	// pendingReason: an operator asked this ACTIVE to step down.
	pendingReason string
	// promoteNow: an operator forced this unit ACTIVE.
	promoteNow bool

	failed       map[string]string // watched link -> why it is down
	linksUpSince time.Time

	peer peerView

	history []Transition
}

type peerView struct {
	known    bool
	advert   Advert
	heard    []time.Time // per path: last authentic heartbeat
	gone     bool        // resigned; heartbeats of goneBoot are ignored
	goneBoot uint64
	late     lateTracker // late heartbeats stretch the dead interval (tolerance.go)
}

// New returns a machine in INIT, started at now.
func New(cfg Config, now time.Time) *Machine {
	if len(cfg.Paths) == 0 {
		cfg.Paths = []string{"ha"}
	}
	return &Machine{
		cfg:       cfg,
		state:     StateInit,
		startedAt: now,
		failed:    map[string]string{},
		peer:      peerView{heard: make([]time.Time, len(cfg.Paths))},
	}
}

// State returns the current state.
func (m *Machine) State() State { return m.state }

// Epoch returns the current epoch.
func (m *Machine) Epoch() uint64 { return m.epoch }

// Advert returns what this unit advertises now.
func (m *Machine) Advert() Advert {
	a := Advert{
		Role:        m.cfg.Role,
		State:       m.state,
		Priority:    m.cfg.Priority,
		Sync:        m.sync,
		FailedLinks: uint8(min(len(m.failed), 255)),
		Epoch:       m.epoch,
		BootID:      m.cfg.BootID,
	}
	if m.stopping {
		a.Flags |= FlagResigning
	}
	if m.yield {
		a.Flags |= FlagYield
	}
	if m.manualTakeover {
		a.Flags |= FlagTakeover | FlagForce
	} else if m.preemptRequested {
		a.Flags |= FlagTakeover
	}
	return a
}

// Start evaluates the machine once; call it right after New.
func (m *Machine) Start(now time.Time) Result {
	return m.step(now, func() {})
}

// Tick lets time pass: peer death, the INIT wait, hold-downs and delays.
func (m *Machine) Tick(now time.Time) Result {
	return m.step(now, func() {})
}

// HeartbeatReceived records an authentic heartbeat from the peer on path.
// Replay and authentication checks are the caller's; a is trusted here.
func (m *Machine) HeartbeatReceived(now time.Time, path int, a Advert) Result {
	return m.step(now, func() {
		if path < 0 || path >= len(m.peer.heard) {
			return
		}
		p := &m.peer
		switch {
		case a.Flags&FlagResigning != 0:
			p.gone, p.goneBoot = true, a.BootID
			p.known, p.advert = true, a
			clear(p.heard)
			p.late.reset()
		case p.gone && a.BootID == p.goneBoot:
			// A late heartbeat from a run that already resigned.
		default:
			p.gone = false
			p.heard[path] = now
			p.late.heard(&m.cfg, now, a.BootID)
			if p.known && p.advert.newerThan(a) {
				return // a late advert; the path is alive, the content stale
			}
			if a.Flags&FlagYield != 0 && (!p.known || p.advert.Flags&FlagYield == 0) {
				// The peer was just moved off by an operator: that decision
				// supersedes the one that moved this unit off.
				m.yield = false
			}
			p.known, p.advert = true, a
		}
	})
}

// LinkChanged records a watched link going down or up. reason says how
// ("carrier lost", "admin down", "probe failed").
func (m *Machine) LinkChanged(now time.Time, link string, up bool, reason string) Result {
	return m.step(now, func() {
		_, wasDown := m.failed[link]
		if up {
			delete(m.failed, link)
			if wasDown && len(m.failed) == 0 {
				m.linksUpSince = now
			}
			return
		}
		if reason == "" {
			reason = "down"
		}
		m.failed[link] = reason
	})
}

// SetSync records this unit's sync status.
func (m *Machine) SetSync(now time.Time, s SyncStatus) Result {
	return m.step(now, func() { m.sync = s })
}

// Shutdown resigns: an ACTIVE steps down and every later heartbeat carries
// FlagResigning so the peer takes over at once. Later inputs are ignored.
func (m *Machine) Shutdown(now time.Time) Result {
	r := m.step(now, func() {})
	before := m.Advert()
	if m.state == StateActive {
		m.transition(now, StateStandby, "shutdown: resigning", &r)
	}
	m.stopping = true
	r.SendNow = r.SendNow || m.Advert() != before
	return r
}

// RequestFailover is an operator's `tandem failover`. On the ACTIVE it steps
// down in favour of the peer; on the STANDBY it asks the ACTIVE to step down.
// force skips the sync checks, never the health checks.
func (m *Machine) RequestFailover(now time.Time, force bool) (Result, error) {
	var err error
	r := m.step(now, func() {
		alive := m.peerAlive(now)
		p := m.peer.advert
		switch {
		case m.stopping:
			err = ErrStopping
		case m.state == StateActive:
			switch {
			case !alive:
				err = ErrNoPeer
			case !p.healthy():
				err = ErrPeerUnhealthy
			case p.Sync == SyncOutOfSync && !force:
				err = ErrPeerOutOfSync
			default:
				m.yield = true
				m.pendingReason = "operator failover: stepping down for the peer"
			}
		case m.state == StateStandby:
			switch {
			case m.sync == SyncOutOfSync && !force:
				err = ErrOutOfSync
			default:
				m.yield = false
				m.manualTakeover, m.manualSince = true, now
			}
		default:
			err = ErrNotReady
		}
	})
	return r, err
}

// Promote makes this unit ACTIVE at once, whatever the peer says: disaster
// recovery when the old ACTIVE is gone for good. Its new epoch outranks the
// old ACTIVE's, so if that one comes back it yields.
func (m *Machine) Promote(now time.Time) (Result, error) {
	var err error
	r := m.step(now, func() {
		switch {
		case m.stopping:
			err = ErrStopping
		case m.state == StateActive:
			err = ErrAlreadyActive
		case len(m.failed) > 0:
			err = ErrNotReady
		default:
			m.promoteNow = true
		}
	})
	return r, err
}

// step applies an input and re-evaluates, collecting what changed.
func (m *Machine) step(now time.Time, input func()) Result {
	var r Result
	if m.stopping {
		return r
	}
	before := m.Advert()
	input()
	m.evaluate(now, &r)
	r.SendNow = m.Advert() != before
	return r
}

// peerAlive: a heartbeat arrived on some path within the dead interval.
func (m *Machine) peerAlive(now time.Time) bool {
	if m.peer.gone {
		return false
	}
	dead := m.deadInterval(now)
	for _, t := range m.peer.heard {
		if !t.IsZero() && now.Sub(t) < dead {
			return true
		}
	}
	return false
}

// evaluate is the decision: from the inputs recorded so far, which state.
func (m *Machine) evaluate(now time.Time, r *Result) {
	if len(m.failed) > 0 {
		m.preemptRequested, m.manualTakeover = false, false
		if m.state != StateFault {
			m.transition(now, StateFault, "watched link "+m.failedLinks()+" down", r)
		}
		return
	}
	if m.state == StateFault {
		if now.Before(m.linksUpSince.Add(m.cfg.LinkHolddown)) {
			return
		}
		m.transition(now, StateStandby, "watched links up for link_holddown", r)
	}
	if m.manualTakeover && now.Sub(m.manualSince) >= 3*m.cfg.DeadInterval {
		m.manualTakeover = false // the ACTIVE did not step down; do not ask forever
	}
	if m.promoteNow {
		m.promoteNow = false
		m.becomeActive(now, "operator promote --force", r)
		return
	}
	alive := m.peerAlive(now)
	if !alive {
		m.peer.late.reset() // a silence it did not survive is no late heartbeat
	}
	p := m.peer.advert
	if !(m.state == StateStandby && alive && p.State == StateActive) {
		m.peerActiveSince = time.Time{}
		m.preemptRequested = false
	}
	switch m.state {
	case StateInit, StateStandby:
		m.decidePassive(now, alive, p, r)
	case StateActive:
		m.decideActive(now, alive, p, r)
	}
}

func (m *Machine) decidePassive(now time.Time, alive bool, p Advert, r *Result) {
	if !alive {
		switch {
		case m.peer.gone:
			m.becomeActive(now, "peer resigned", r)
		case m.peer.known:
			m.becomeActive(now, "peer dead on all paths", r)
		case !now.Before(m.startedAt.Add(m.cfg.DeadInterval)):
			m.becomeActive(now, "no peer heard within dead_interval of start", r)
		}
		return
	}
	switch p.State {
	case StateActive:
		if m.state == StateInit {
			m.transition(now, StateStandby, "peer is ACTIVE", r)
		}
		if m.peerActiveSince.IsZero() {
			m.peerActiveSince = now
		}
		m.preemptRequested = m.cfg.Preempt && !m.yield && m.sync != SyncOutOfSync &&
			prefers(m.Advert(), p) && now.Sub(m.peerActiveSince) >= m.cfg.PreemptDelay
	case StateFault:
		m.becomeActive(now, fmt.Sprintf("peer in FAULT (%d watched links down)", p.FailedLinks), r)
	default:
		if p.Flags&FlagResigning == 0 && !p.healthy() {
			m.becomeActive(now, "peer unhealthy", r)
			return
		}
		self := m.Advert()
		if why, ok := better(self, p); ok {
			m.becomeActive(now, "elected: "+why, r)
		} else if m.state == StateInit {
			m.transition(now, StateStandby, "peer preferred in election", r)
		}
	}
}

func (m *Machine) decideActive(now time.Time, alive bool, p Advert, r *Result) {
	if m.pendingReason != "" {
		reason := m.pendingReason
		m.pendingReason = ""
		m.transition(now, StateStandby, reason, r)
		return
	}
	if !alive {
		return
	}
	switch p.State {
	case StateActive:
		if why, ok := winsCollision(m.Advert(), p); !ok {
			m.transition(now, StateStandby, "collision: "+why, r)
		}
	case StateStandby, StateInit:
		if p.Flags&FlagTakeover == 0 || !p.healthy() {
			return
		}
		switch {
		case p.Flags&FlagForce != 0:
			m.yield = true
			m.transition(now, StateStandby, "operator failover requested on the peer", r)
		case m.cfg.Preempt && p.Sync != SyncOutOfSync && prefers(p, m.Advert()):
			m.transition(now, StateStandby, "preempt: the preferred peer takes ACTIVE back", r)
		}
	}
}

func (m *Machine) becomeActive(now time.Time, reason string, r *Result) {
	m.epoch = max(m.epoch, m.peer.advert.Epoch) + 1
	m.yield, m.manualTakeover, m.preemptRequested = false, false, false
	m.transition(now, StateActive, reason, r)
}

func (m *Machine) transition(now time.Time, to State, reason string, r *Result) {
	t := Transition{At: now, From: m.state, To: to, Epoch: m.epoch, Reason: reason}
	m.state = to
	m.peerActiveSince = time.Time{}
	if len(m.history) == historySize {
		copy(m.history, m.history[1:])
		m.history = m.history[:historySize-1]
	}
	m.history = append(m.history, t)
	r.Transitions = append(r.Transitions, t)
}

func (m *Machine) failedLinks() string {
	names := make([]string, 0, len(m.failed))
	for name, why := range m.failed {
		names = append(names, name+" ("+why+")")
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// prefers reports whether a should hold ACTIVE rather than b by configuration:
// higher priority, then the primary role.
func prefers(a, b Advert) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Role == RolePrimary && b.Role != RolePrimary
}

// better is the election among units of which none is ACTIVE: healthy,
// not moved off by an operator, not OUT_OF_SYNC, asking to take over, higher
// priority, primary, older boot. Both units
// compute it from the same two adverts and so agree on the winner. It
// reports whether a wins over b, and why.
func better(a, b Advert) (string, bool) {
	if ah, bh := a.healthy(), b.healthy(); ah != bh {
		return "healthier than the peer", ah
	}
	if ay, by := a.Flags&FlagYield != 0, b.Flags&FlagYield != 0; ay != by {
		return "the peer was moved off ACTIVE by an operator", by
	} else if ay {
		// Both moved off by hand: the older mark is cleared when its owner
		// sees the newer one; until then neither elects itself.
		return "both were moved off by an operator", false
	}
	if ao, bo := a.Sync == SyncOutOfSync, b.Sync == SyncOutOfSync; ao != bo {
		return "the peer is OUT_OF_SYNC", bo
	}
	if at, bt := a.Flags&FlagTakeover != 0, b.Flags&FlagTakeover != 0; at != bt {
		return "takeover requested", at
	}
	if a.Priority != b.Priority {
		return fmt.Sprintf("priority %d over %d", a.Priority, b.Priority), a.Priority > b.Priority
	}
	if a.Role != b.Role {
		return "primary role", a.Role == RolePrimary
	}
	return "older boot", a.BootID < b.BootID
}

// winsCollision settles two ACTIVE units: the higher epoch (the later
// takeover) stays; equal epochs fall back to the election order.
func winsCollision(a, b Advert) (string, bool) {
	if a.Epoch != b.Epoch {
		return fmt.Sprintf("epoch %d against peer's %d", a.Epoch, b.Epoch), a.Epoch > b.Epoch
	}
	why, ok := better(a, b)
	return fmt.Sprintf("equal epoch %d, %s", a.Epoch, why), ok
}

// NextDeadline is the next instant at which Tick could change something; the
// zero time when nothing is pending.
func (m *Machine) NextDeadline(now time.Time) time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if m.stopping {
		return next
	}
	if !m.peer.gone {
		dead := m.deadInterval(now)
		for _, t := range m.peer.heard {
			if !t.IsZero() {
				consider(t.Add(dead))
			}
		}
		if dead != m.cfg.DeadInterval {
			consider(m.peer.late.until) // the stretch ends
		}
	}
	switch m.state {
	case StateInit:
		consider(m.startedAt.Add(m.cfg.DeadInterval))
	case StateFault:
		if len(m.failed) == 0 {
			consider(m.linksUpSince.Add(m.cfg.LinkHolddown))
		}
	case StateStandby:
		if !m.peerActiveSince.IsZero() && !m.preemptRequested {
			consider(m.peerActiveSince.Add(m.cfg.PreemptDelay))
		}
	}
	if m.manualTakeover {
		consider(m.manualSince.Add(3 * m.cfg.DeadInterval))
	}
	return next
}

// PeerStatus is the machine's view of the peer.
type PeerStatus struct {
	Known     bool
	Alive     bool
	Resigned  bool
	Advert    Advert
	LastHeard []time.Time // per path; zero when never heard
}

// Status is a snapshot for `tandem status`.
type Status struct {
	Advert      Advert
	FailedLinks map[string]string
	Peer        PeerStatus
	History     []Transition
	Preempting  bool
}

// Status returns a copy of the machine's state for display.
func (m *Machine) Status(now time.Time) Status {
	return Status{
		Advert:      m.Advert(),
		FailedLinks: maps.Clone(m.failed),
		Peer: PeerStatus{
			Known:     m.peer.known,
			Alive:     m.peerAlive(now),
			Resigned:  m.peer.gone,
			Advert:    m.peer.advert,
			LastHeard: slices.Clone(m.peer.heard),
		},
		History:    slices.Clone(m.history),
		Preempting: m.preemptRequested,
	}
}
