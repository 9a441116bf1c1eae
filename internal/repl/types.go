package repl

import (
	"errors"
	"time"

	"github.com/tandem-ha/tandem/internal/ha"
)

// SyncStatus says whether a sink holds a current copy of the source's
// state. It is the HA state machine's own type (the heartbeat's Sync field
// uses the same numbering), so the sink's status feeds it directly.
type SyncStatus = ha.SyncStatus

const (
	// SyncUnknown: the sink was never connected.
	SyncUnknown = ha.SyncUnknown
	// SyncInSync: a full copy was received, the stream after it applied,
	// and the last digest matched.
	SyncInSync = ha.SyncInSync
	// SyncOutOfSync: a copy is being received, a gap or a digest mismatch
	// was found and a new copy requested, or the link has been down for
	// longer than SinkConfig.OutOfSyncAfter.
	SyncOutOfSync = ha.SyncOutOfSync
)

// Defaults of the configurations, used for zero fields.
const (
	DefaultMaxFrame        = 64 << 10
	DefaultWindow          = 4 << 20
	DefaultRetransmitBytes = 8 << 20
	DefaultDigestEvery     = time.Second
	DefaultOutOfSyncAfter  = 3 * time.Second
	DefaultAckEvery        = time.Second
	DefaultRetryAfter      = 10 * time.Second

	// minMaxFrame is the smallest MaxFrame accepted: room for a change of
	// a short key and value in a table with a long name.
	minMaxFrame = 512
)

// SourceConfig configures a [Source]. Zero fields take the defaults.
type SourceConfig struct {
	// SourceID identifies this run of the source: random or derived from
	// the clock, different at every start, never 0. A sink that holds the
	// state of another id gets a full copy.
	SourceID uint64
	// Tables names the tables known in advance (they may stay empty). A
	// full copy resets every table the source knows on the sink, so
	// declaring them clears stale content a restarted sink's store may
	// hold. Other tables are created by their first Put.
	Tables []string
	// SizeHints gives the expected entries of some tables (conntrack:
	// nf_conntrack_max). Their index is allocated at that size up front,
	// so it never doubles, and never pauses to rehash, as they fill.
	SizeHints map[string]int
	// MaxRateBytes and MaxRateEntries cap what the source sends per
	// second (frame bytes, and entries or operations); 0 means no limit.
	// Over the limit, changes wait and are merged per key.
	MaxRateBytes   int
	MaxRateEntries int
	// MaxFrame is the largest frame sent, in bytes (default 64 KiB, at
	// least 512). Each change must fit in one frame.
	MaxFrame int
	// Window is the most frame bytes sent and not yet acknowledged
	// (default 4 MiB). One frame is always allowed.
	Window int
	// RetransmitBytes bounds the sent changes kept so that a sink that
	// reconnects resumes without a full copy (default 8 MiB; negative:
	// keep none, so only a sink that lost nothing resumes).
	RetransmitBytes int
	// DigestEvery is the period of Digest frames (default 1 s).
	DigestEvery time.Duration
}

func (c SourceConfig) withDefaults() SourceConfig {
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	c.MaxFrame = max(c.MaxFrame, minMaxFrame)
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.RetransmitBytes == 0 {
		c.RetransmitBytes = DefaultRetransmitBytes
	}
	if c.DigestEvery <= 0 {
		c.DigestEvery = DefaultDigestEvery
	}
	return c
}

// SinkConfig configures a [Sink]. Zero fields take the defaults.
type SinkConfig struct {
	// SinkID identifies this run of the sink (random, different at every
	// start); it is reported to the source for diagnostics.
	SinkID uint64
	// OutOfSyncAfter is how long the link may be down before an IN_SYNC
	// sink becomes OUT_OF_SYNC (default 3 s).
	OutOfSyncAfter time.Duration
	// AckEvery is the longest time between two Ack frames while
	// connected, even when nothing arrives (default 1 s).
	AckEvery time.Duration
	// RetryAfter is how long the sink waits for the answer to a Hello or
	// Resync before asking again; it doubles at each retry up to 8 times
	// (default 10 s). Only a channel that loses frames needs it.
	RetryAfter time.Duration
	// AuditEvery, when positive and the store is a [Ranger], is the
	// period of a full audit: at a Digest, the sink recomputes the digest
	// of every table from the store itself. It costs a pass over the
	// store (about 30 ms per million entries). 0: never.
	AuditEvery time.Duration
}

func (c SinkConfig) withDefaults() SinkConfig {
	if c.OutOfSyncAfter <= 0 {
		c.OutOfSyncAfter = DefaultOutOfSyncAfter
	}
	if c.AckEvery <= 0 {
		c.AckEvery = DefaultAckEvery
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = DefaultRetryAfter
	}
	return c
}

// TableStats describes one table.
type TableStats struct {
	Name    string
	Entries int
	// Digest is the table's digest as the stream has carried it (source)
	// or as applied (sink).
	Digest uint64
	// Bytes is the memory the table takes (source only).
	Bytes int
}

// SourceStats is a source's view of replication.
type SourceStats struct {
	SourceID uint64
	// Connected: the link is up and the sink has said Hello.
	Connected bool
	// The peer, as it last reported itself.
	PeerSinkID  uint64
	PeerStatus  SyncStatus
	PeerSeq     uint64
	PeerEntries uint64

	Seq      uint64 // last sequence number sent
	AckedSeq uint64 // highest sequence number the sink acknowledged
	Queued   int    // changes waiting to be sent (merged per key)
	// Lag: changes not yet acknowledged (sent and queued), frame bytes in
	// flight, and the age of the oldest change not yet acknowledged.
	LagEntries uint64
	LagBytes   int
	LagAge     time.Duration

	Snapshot      bool // a full copy is being sent
	SnapshotSent  int  // entries of it sent so far
	SnapshotTotal int  // entries when it began

	Snapshots uint64 // full copies begun
	Resumes   uint64 // reconnections served from the retransmit window
	Resyncs   uint64 // Resync frames received

	FramesSent uint64
	BytesSent  uint64
	// Throttled: the rate limit held frames back at the last Poll.
	// ThrottledWaits counts the Polls it did so.
	Throttled      bool
	ThrottledWaits uint64

	Tables []TableStats
	// Memory is the bytes held: tables, queue and retransmit window.
	Memory int
}

// SinkStats is a sink's view of replication.
type SinkStats struct {
	SinkID    uint64
	Status    SyncStatus
	Connected bool
	// Valid: the store holds a complete copy of SourceID's state at Seq
	// (a reconnection can resume from there).
	Valid    bool
	SourceID uint64
	Seq      uint64

	Snapshot        bool   // a full copy is being received
	SnapshotEntries uint64 // entries of it received so far
	Entries         uint64 // entries held, all tables

	Snapshots       uint64 // full copies begun
	Resumes         uint64 // reconnections that resumed without a copy
	Gaps            uint64
	Mismatches      uint64
	AuditMismatches uint64
	Malformed       uint64
	Retries         uint64
	LastDigestAt    time.Time

	FramesReceived uint64
	BytesReceived  uint64
	// LostBytes counts frame bytes the source sent that never arrived:
	// always 0 on a channel that keeps its promise.
	LostBytes uint64
	Tables    []TableStats
}

// Errors of Source.Put and Source.Delete.
var (
	ErrTableName = errors.New("repl: table name must be 1 to 255 bytes")
	ErrTooLarge  = errors.New("repl: entry does not fit in one frame")
)
