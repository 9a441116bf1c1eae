package snapshot

import (
	"time"
)

// Per-peer synchronization statuses, as the dashboard shows them.
const (
	StatusSynchronized  = "Synchronized"
	StatusNotSynced     = "Some servers could not be synchronized"
	StatusNoHA          = "No HA"
	StatusCommunication = "Communication problem"
	StatusCollision     = "Collision"
)

// Outcome is the result of the last synchronization attempt with a peer.
type Outcome int

const (
	OutcomeNone   Outcome = iota // never attempted
	OutcomeOK                    // the last attempt succeeded
	OutcomeFailed                // the last attempt failed
)

// DecideStatus is the status of one peer:
//
//   - no peer configured: "No HA";
//   - both units claim ACTIVE: "Collision" (whatever the last sync did: two
//     writers make any copy stale);
//   - the peer is not heard: "Communication problem";
//   - the last attempt succeeded: "Synchronized";
//   - it failed, or none was made yet: "Some servers could not be
//     synchronized".
func DecideStatus(haConfigured, connected, bothActive bool, last Outcome) string {
	switch {
	case !haConfigured:
		return StatusNoHA
	case bothActive:
		return StatusCollision
	case !connected:
		return StatusCommunication
	case last == OutcomeOK:
		return StatusSynchronized
	default:
		return StatusNotSynced
	}
}

// PeerSync is one peer's synchronization state for the dashboard.
type PeerSync struct {
	Peer        string
	Status      string
	LastSync    time.Time // last success
	LastAttempt time.Time
	LastError   string // of the last attempt; "" if it succeeded
	Bytes       int64  // stream bytes of the last success
	Duration    time.Duration
}

// Outcome is the last attempt's result as recorded.
func (p *PeerSync) Outcome() Outcome {
	switch {
	case p.LastAttempt.IsZero():
		return OutcomeNone
	case p.LastError != "":
		return OutcomeFailed
	default:
		return OutcomeOK
	}
}

// Record notes the result of an attempt (the restore notification the peer
// sent back, or a local failure to send).
func (p *PeerSync) Record(r Result) {
	p.LastAttempt = r.Finished
	if r.OK {
		p.LastSync, p.LastError, p.Bytes, p.Duration = r.Finished, "", r.Bytes, r.Duration
		return
	}
	p.LastError = r.Error
	if p.LastError == "" {
		p.LastError = "failed"
	}
}

// Refresh recomputes Status from the recorded outcome and the current
// link state.
func (p *PeerSync) Refresh(haConfigured, connected, bothActive bool) {
	p.Status = DecideStatus(haConfigured, connected, bothActive, p.Outcome())
}

// Result is the restore notification a STANDBY sends back to the ACTIVE
// after Receive: which snapshot, whether it was installed, and why not.
// It is plain data for the sync channel to encode (JSON tags).
type Result struct {
	Peer     string        `json:"peer"` // the unit that received
	ID       string        `json:"id"`   // Manifest.IDString
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"`
	Size     int64         `json:"size"`  // database bytes
	Bytes    int64         `json:"bytes"` // stream bytes
	Duration time.Duration `json:"duration_ns"`
	Finished time.Time     `json:"finished"`
}

// NewResult builds the notification for Receive's outcome on unit peer.
func NewResult(peer string, m Manifest, err error, finished time.Time) Result {
	r := Result{
		Peer: peer, ID: m.IDString(), OK: err == nil, Size: m.Size,
		Bytes: m.StreamBytes, Duration: m.Duration, Finished: finished.UTC(),
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}
