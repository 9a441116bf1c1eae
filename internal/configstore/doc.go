// Package configstore keeps the gateway's configuration as named documents
// with a numbered history, in one bbolt file in the state directory
// (e.g. /var/lib/tandem/config.db).
//
// A document is a (category, name) pair — categories are the fixed set
// interfaces, definitions, policies, network, firewall, vpn, users,
// antivirus, ips and system — holding bytes stored byte for byte as
// published. Every change is a Revision: numbered without gaps across the
// whole store, with author, message, time, origin node and the sha256 of
// the content. Contents are stored once per distinct hash, so rollbacks
// cost no space.
//
// On the ACTIVE, Publish runs the category's Validate hook, commits the
// content, the history record, an audit record and the new head in one
// bbolt transaction, then runs the Apply hook (NftHook for policies: nft
// applies a whole script atomically; CommandHook for the rest). A failed
// validation stores nothing; a failed apply leaves the revision stored,
// recorded in the audit log and DocInfo.ApplyError, and returned as
// ErrApply so the daemon can report the unit out of sync. Rollback
// publishes, as new revisions, what every document was at an earlier
// revision; Diff shows what changed between two revisions.
//
// Replication: the STANDBY stores the ACTIVE's revisions unchanged with
// ApplyReplicated, fed from the ACTIVE's Since(standby head). Head (a
// cached revision number plus a hash of all current documents) is what
// heartbeats carry to compare units; HashAt (a hash chained over the
// history) lets Divergent find the common ancestor after a partition in
// which both units accepted publishes. The unit that yields moves its
// revisions after the ancestor into the conflicts bucket — kept and
// listable with Conflicts, never dropped — and then accepts the peer's
// history. A whole-database copy is the snapshot package's job; DB exposes
// the bbolt handle it reads. Before a received copy is installed,
// OpenReceived reads its history (stale? diverged?) and CarryOver writes
// into it what is the receiving unit's own: its conflicts, with their
// contents, and its apply outcomes; documents that differ are applied
// after the install (ApplyPending, also at the next Open after a crash).
//
// What it must never do: write on a STANDBY except through ApplyReplicated,
// Divergent and a snapshot restore. The daemon enforces the read-only rule
// (SetReadOnly adds a guard); the store makes half-writes impossible: each
// change is one bbolt transaction, so a crash leaves either the whole
// revision (content, history, index, audit, head) or none of it. Hooks run
// outside transactions and never decide what is stored after the commit.
// The store never reaches the network, and never loses a revision it
// committed: divergent ones go to the conflicts bucket.
//
// A Store is safe for concurrent use. Writers are serialized (hooks
// included, so applies happen in revision order); readers run beside them,
// and Head does not touch the database. A second Open of the same file, in
// this process or another, fails with ErrLocked after Options.LockTimeout.
package configstore
