package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is the protocol version this package encodes and accepts.
const Version = 1

// Node ids. A cluster has exactly two units.
const (
	NodePrimary   uint8 = 1
	NodeSecondary uint8 = 2
)

// State is the failover state of the sending unit. The zero value is not a
// valid state.
type State uint8

// States, as sent on the wire.
const (
	StateInit State = iota + 1
	StateStandby
	StateActive
	StateFault
)

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool { return s >= StateInit && s <= StateFault }

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
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// SyncStatus tells whether the sender's configuration matches its peer's.
type SyncStatus uint8

// Sync statuses, as sent on the wire.
const (
	SyncUnknown SyncStatus = iota
	SyncInSync
	SyncOutOfSync
)

// Valid reports whether s is one of the defined sync statuses.
func (s SyncStatus) Valid() bool { return s <= SyncOutOfSync }

func (s SyncStatus) String() string {
	switch s {
	case SyncUnknown:
		return "UNKNOWN"
	case SyncInSync:
		return "IN_SYNC"
	case SyncOutOfSync:
		return "OUT_OF_SYNC"
	}
	return "SyncStatus(" + strconv.Itoa(int(s)) + ")"
}

// Flags carry one-shot requests and hints from the sender.
type Flags uint8

// Defined flags. Bits not listed here are reserved: senders leave them clear
// and receivers ignore them.
const (
	// FlagResigning: the sender is leaving ACTIVE or shutting down; the peer
	// should take over now instead of waiting for the dead interval.
	FlagResigning Flags = 1 << iota
	// FlagTakeover: the sender asks to become ACTIVE (preemption or manual
	// failover).
	FlagTakeover
	// FlagYield: the sender was moved off ACTIVE by hand; do not elect it
	// while the peer is eligible.
	FlagYield
	// FlagForce: the takeover was requested with --force.
	FlagForce
)

var flagNames = [...]struct {
	f    Flags
	name string
}{
	{FlagResigning, "RESIGNING"},
	{FlagTakeover, "TAKEOVER"},
	{FlagYield, "YIELD"},
	{FlagForce, "FORCE"},
}

// Has reports whether all bits of x are set in f.
func (f Flags) Has(x Flags) bool { return f&x == x }

// String returns the set flags joined by "|", "NONE" when no bit is set.
// Reserved bits are shown as a hexadecimal remainder.
func (f Flags) String() string {
	if f == 0 {
		return "NONE"
	}
	var names []string
	for _, fn := range flagNames {
		if f.Has(fn.f) {
			names = append(names, fn.name)
			f &^= fn.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint8(f)))
	}
	return strings.Join(names, "|")
}

// Heartbeat is the content of one heartbeat packet. See the package
// documentation for its layout on the wire.
type Heartbeat struct {
	Version         uint8      // protocol version; set by Parse, Append always writes [Version]
	ClusterID       uint8      // must match the receiver's cluster id
	NodeID          uint8      // NodePrimary or NodeSecondary
	State           State      // sender's failover state
	Flags           Flags      // requests and hints, see the Flag constants
	Priority        uint8      // election priority
	Sync            SyncStatus // whether the sender's config matches its peer's
	FailedLinks     uint8      // number of watched links currently down
	Epoch           uint64     // grows with each takeover
	ConfigVersion   uint64     // config revision
	ConfigHash      [8]byte    // truncated content hash of the config
	SchemaVersion   uint16     // config schema version, for the prerequisite check
	SoftwareVersion [3]uint8   // major, minor, patch of the sender's tandem build
	BootID          uint64     // chosen by the sender at start (start time in ns); grows across restarts
	Seq             uint64     // monotonic per BootID
	SentAtNanos     int64      // sender's monotonic clock; diagnostics only, never trusted for decisions
}

// Validate reports whether the fields that have a restricted range hold
// defined values: NodeID, State and Sync. The error wraps [ErrMalformed].
// Version is not checked: [Signer.Append] always writes [Version].
//
// Append does not call Validate; a sender that is not sure of its input
// should, because the receiver drops an invalid heartbeat.
func (hb *Heartbeat) Validate() error {
	switch {
	case hb.NodeID != NodePrimary && hb.NodeID != NodeSecondary:
		return fmt.Errorf("%w: node id %d", ErrMalformed, hb.NodeID)
	case !hb.State.Valid():
		return fmt.Errorf("%w: state %d", ErrMalformed, uint8(hb.State))
	case !hb.Sync.Valid():
		return fmt.Errorf("%w: sync status %d", ErrMalformed, uint8(hb.Sync))
	}
	return nil
}
