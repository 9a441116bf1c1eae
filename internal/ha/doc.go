// Package ha is tandem's HA state machine and election: the pure core that
// decides which unit of the pair is ACTIVE.
//
// A Machine is fed inputs — heartbeats heard from the peer on a path, a
// watched link going down or up, the passing of time, a sync-status change,
// an operator's failover request, a graceful shutdown — and answers with the
// transitions it made, each with its cause, and whether a heartbeat must go
// out at once. The caller (the daemon, or the simulator in tests) does every
// side effect: sending heartbeats, adding virtual IPs, logging.
//
// # Rules
//
//   - States are INIT, STANDBY, ACTIVE and FAULT. A unit with a watched link
//     down is FAULT and never serves; it leaves FAULT only after every watched
//     link has been up for the link hold-down.
//   - The peer is alive while any path (the HA link or a watched interface)
//     delivered a heartbeat within the dead interval. A STANDBY takes over only
//     when the peer is dead on all paths, resigned, in FAULT, or hands over;
//     losing the HA link alone never causes a failover. A peer whose
//     heartbeats came late and that survived it (its host held it) gets a
//     longer dead interval for a while, up to DeadIntervalMax
//     (tolerance.go).
//   - When nobody is ACTIVE the election picks, in order: the healthy unit,
//     the one not moved off ACTIVE by hand (Yield), the one not OUT_OF_SYNC,
//     the one asking to take over, higher priority, the primary role, the
//     older boot.
//   - Every takeover sets epoch = max(own, peer's) + 1. Two ACTIVE units (after
//     a partition heals) resolve at the first heartbeat: the higher epoch
//     stays, the lower yields; equal epochs fall back to the election order.
//   - Preempt: a preferred STANDBY (higher priority, or the primary) that is
//     healthy and not OUT_OF_SYNC asks for the role back after it has seen the
//     peer ACTIVE for preempt_delay. The ACTIVE steps down first and the
//     requester takes over on seeing it STANDBY, so two owners never overlap.
//   - An operator's failover on the ACTIVE steps down and sets Yield; on the
//     STANDBY it asks the ACTIVE to step down. The sync check (refuse when
//     OUT_OF_SYNC unless forced) is the requester's.
//   - A STANDBY that is OUT_OF_SYNC does not ask for the role while it hears
//     the peer; the death of the peer still makes it take over.
//
// # What it must never do
//
// No syscalls, no sockets, no goroutines, no wall clock: time comes in as an
// argument to every input, so the simulator (internal/sim) runs this very code
// under a fake clock and a lossy network. It does not know the wire format;
// the daemon converts heartbeats to Advert.
package ha
