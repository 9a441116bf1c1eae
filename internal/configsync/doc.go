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
// Up catches it up from the head the standby announces. The standby stores
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
// another schema are refused and the refusal is shown in the status.
// Documents larger than one frame are sent in chunks.
//
// What it must never do: write on a STANDBY except replicated revisions
// (ApplyReplicated) and the divergence bookkeeping of configstore.Divergent;
// decide or change HA state (who is ACTIVE is internal/ha's to say — this
// package only follows SetActive); block the sync engine's loop (frames are
// queued and handled by the Service's own goroutine, so a slow apply hook
// never delays connection sync or heartbeats).
package configsync
