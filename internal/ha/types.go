package ha

import (
	"errors"
	"fmt"
	"time"
)

// State is a unit's HA state. The numeric values are the ones carried on the
// wire (internal/wire uses the same numbering).
type State uint8

const (
	StateInit    State = 1 // started, listening for the peer before deciding
	StateStandby State = 2 // healthy, ready to take over
	StateActive  State = 3 // owns the virtual IPs and serves traffic
	StateFault   State = 4 // a watched link is down (or in hold-down); never serves
)

func (s State) String() string {
	switch s {
	case StateInit:
		return "INIT"
	case StateStandby:
		return "STANDBY"
	case StateActive:
		return "ACTIVE"
	case StateFault:
		return "FAULT"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// SyncStatus says whether a unit holds a current copy of the ACTIVE's state.
// Later capabilities (state and config sync) feed it; it gates voluntary
// takeovers but never the takeover that follows the peer's death.
type SyncStatus uint8

const (
	SyncUnknown   SyncStatus = 0
	SyncInSync    SyncStatus = 1
	SyncOutOfSync SyncStatus = 2
)

func (s SyncStatus) String() string {
	switch s {
	case SyncUnknown:
		return "UNKNOWN"
	case SyncInSync:
		return "IN_SYNC"
	case SyncOutOfSync:
		return "OUT_OF_SYNC"
	}
	return fmt.Sprintf("SyncStatus(%d)", uint8(s))
}

// Role is the configured role of a unit; it doubles as the node id on the wire.
type Role uint8

const (
	RolePrimary   Role = 1
	RoleSecondary Role = 2
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Flags are the intentions a unit advertises beside its state.
type Flags uint8

const (
	// FlagResigning: the sender is shutting down; treat it as gone now
	// instead of waiting for the dead interval.
	FlagResigning Flags = 1 << iota
	// FlagTakeover: the sender (a STANDBY) asks to become ACTIVE. Alone it is
	// a preempt request, honoured only if the sender is preferred.
	FlagTakeover
	// FlagYield: the sender was moved off ACTIVE by an operator; do not elect
	// it while the peer is eligible, and it does not preempt.
	FlagYield
	// FlagForce: with FlagTakeover, the request comes from an operator and is
	// honoured whatever the preference.
	FlagForce
)

// Advert is what a unit tells its peer in every heartbeat.
type Advert struct {
	Role        Role
	State       State
	Flags       Flags
	Priority    uint8
	Sync        SyncStatus
	FailedLinks uint8 // watched links currently down
	Epoch       uint64
	BootID      uint64 // grows across restarts of the sender
	Seq         uint64 // orders adverts of one boot; not used for decisions
}

// healthy reports whether the advertising unit could serve.
func (a Advert) healthy() bool {
	return a.FailedLinks == 0 && a.State != StateFault && a.Flags&FlagResigning == 0
}

// newerThan reports whether a was sent after b by the same peer.
func (a Advert) newerThan(b Advert) bool {
	if a.BootID != b.BootID {
		return a.BootID > b.BootID
	}
	return a.Seq > b.Seq
}

// Config holds what the machine needs from the cluster configuration.
type Config struct {
	Role              Role
	Priority          uint8
	Preempt           bool
	PreemptDelay      time.Duration
	HeartbeatInterval time.Duration
	DeadInterval      time.Duration
	// DeadIntervalMax is the most the dead interval stretches to while the
	// peer's heartbeats have lately come late (tolerance.go); at most
	// DeadInterval: never stretched.
	DeadIntervalMax time.Duration
	LinkHolddown    time.Duration
	// Paths names the heartbeat paths; index 0 is the HA link, the others
	// the watched interfaces. Heartbeats arrive tagged with this index.
	Paths []string
	// BootID identifies this run of the unit; it must grow across restarts.
	BootID uint64
}

// Transition is one change of state, with its cause.
type Transition struct {
	At     time.Time `json:"at"`
	From   State     `json:"-"`
	To     State     `json:"-"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

// Result is what one input made the machine do.
type Result struct {
	Transitions []Transition
	// SendNow: the advert changed (state, flags or epoch); send a heartbeat
	// on every path at once rather than at the next interval.
	SendNow bool
}

// Errors returned by operator requests; callers branch on them.
var (
	ErrNoPeer        = errors.New("no peer is heard on any path")
	ErrPeerUnhealthy = errors.New("the peer is not healthy (FAULT or a watched link down)")
	ErrPeerOutOfSync = errors.New("the peer is OUT_OF_SYNC; it does not hold the current state (use --force to switch anyway)")
	ErrOutOfSync     = errors.New("this unit is OUT_OF_SYNC; it does not hold the current state (use --force to switch anyway)")
	ErrNotReady      = errors.New("this unit is not ready to serve (INIT or FAULT)")
	ErrStopping      = errors.New("this unit is shutting down")
	ErrAlreadyActive = errors.New("this unit is already ACTIVE")
)
