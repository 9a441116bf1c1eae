// Package configsync replicates the gateway's configuration documents
// (internal/configstore) from the ACTIVE unit to the STANDBY over the
// authenticated sync channel of internal/statesync, as that engine's Extra
// handler (KindExtra frames), and answers the operator's configuration
// requests (`tandem config publish/get/list/history/diff/rollback/
// conflicts`, `tandem sync --force`).
//
// All changes are made on the ACTIVE: a Service accepts publishes and
// rollbacks only while the daemon has told it (SetActive) that this unit
// is ACTIVE; on the STANDBY they are refused with ErrReadOnlyStandby,
// naming the ACTIVE unit and its address, and nothing is written. The
// ACTIVE pushes every new revision to the standby, and on every channel
// Up catches it up from the head the standby announces — revision by
// revision, or, when the missing history is large (a new unit with an
// empty database; Options.CatchUpSnapshotBytes), with one snapshot of the
// database and then the revisions published meanwhile. The standby stores
// each revision unchanged with configstore's ApplyReplicated (which runs
// the category's apply hook) and acknowledges it; a failed apply is stored,
// reported back to the ACTIVE and shown as OUT_OF_SYNC in `config.status`,
// never skipped silently. After a partition in which both units accepted
// publishes, the unit that is STANDBY when the channel returns moves its
// divergent revisions into the conflicts bucket (configstore.Divergent),
// listable with `tandem config conflicts`, and adopts the ACTIVE's history.
//
// Frames are JSON objects carrying a frame-format version and this build's
// configuration schema (internal/version.Schema); frames from a peer with
// another schema are refused and the refusal is shown in the status. A
// revision's content follows its JSON header raw (a binary rev frame: no
// base64 to encode and decode per publish); documents larger than one
// frame are sent in chunks. On the standby a revision frame is handled
// before the snapshot frames queued ahead of it, so applying a publish
// never waits for megabytes of snapshot data to be staged.
//
// Besides the revisions, the ACTIVE replicates the whole management
// database — documents, history and audit log — by snapshot
// (internal/snapshot, snapshot.go here): after publishes (a trailing
// debounce: once publishing has been quiet for
// config_sync.snapshot_debounce, but no later than
// config_sync.snapshot_max_delay after the first publish not yet in a
// snapshot; one transfer in flight at a time, a publish during a transfer
// scheduling one more), every config_sync.snapshot_interval, and when a
// standby connects or the role changes. The snapshot is taken in a read
// transaction (writers go on) and streamed as it is read, in binary
// frames of 256 KiB, waiting out the channel's backpressure and
// never more than 1 MiB ahead of what the standby has staged (snap-progress
// frames), so that a revision sent meanwhile does not queue behind the
// channel's whole queue of snapshot data. The
// standby stages it into a temp file, verifies it, refuses it if it is
// older than its own head of the same history, sets a diverged history
// aside as conflicts first, carries its own conflicts and apply outcomes
// into it, and installs it — close, rename, reopen — while holding the
// store lock for writing, so no request runs against a closed store; then
// it applies the documents that changed and sends the restore notification
// back. A corrupted or truncated stream, a channel that drops or a killed
// process leaves the standby's database as it was; temp files are removed
// at once, or by the next start. config.status shows each peer's status
// (snapshot.DecideStatus), last sync, last error and last snapshot.
//
// SyncChanges gives the HA machine this unit's configuration sync status:
// a STANDBY holding a document that failed to apply is OUT_OF_SYNC (the
// daemon combines it with state sync's), so a failover to it is refused
// without --force.
//
// What it must never do: write on a STANDBY except replicated revisions
// (ApplyReplicated), the divergence bookkeeping of configstore.Divergent
// and the install of a verified snapshot; lose a conflict to a snapshot;
// decide or change HA state (who is ACTIVE is internal/ha's to say — this
// package only follows SetActive); block the sync engine's loop (frames are
// queued and handled by the Service's own goroutine, so a slow apply hook
// never delays connection sync or heartbeats).
package configsync
