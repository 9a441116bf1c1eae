// Package wire encodes, signs, parses and authenticates tandem heartbeats.
//
// The two units of a cluster send each other a heartbeat several times a
// second over every configured path. This package is the only place that
// knows the bytes of that packet. It is pure code: it turns a [Heartbeat]
// into bytes and bytes back into a Heartbeat, and keeps the small amount of
// per-peer state needed to reject replays ([ReplayGuard]) and to count drops
// ([DropCounters]).
//
// # What this package must never do
//
//   - No I/O: no sockets, files, logging or environment. The caller sends and
//     receives; this package only sees byte slices.
//   - No clock: it never reads the time. [Heartbeat.SentAtNanos] and
//     [Heartbeat.BootID] are filled in by the caller, and SentAtNanos is for
//     diagnostics only: nothing may base a decision on it.
//   - No global mutable state: everything lives in values the caller owns.
//   - No allocation per packet on the hot path: [Signer.Append] into a buffer
//     with enough capacity and [Signer.Parse] of any packet that is not
//     rejected as malformed allocate nothing.
//   - No panics on any input: Parse accepts arbitrary bytes.
//
// # Packet layout (version 1)
//
// A heartbeat is exactly [HeartbeatSize] (97) bytes. Multi-byte integers are
// big-endian (network byte order). Offsets are in bytes from the start of the
// UDP payload.
//
//	offset size field
//	     0    4 magic            "TDHB" (0x54 0x44 0x48 0x42)
//	     4    1 Version          protocol version, 1
//	     5    1 ClusterID
//	     6    1 NodeID           1 primary, 2 secondary
//	     7    1 State            1 INIT, 2 STANDBY, 3 ACTIVE, 4 FAULT
//	     8    1 Flags            bit 0 RESIGNING, 1 TAKEOVER, 2 YIELD, 3 FORCE
//	     9    1 Priority
//	    10    1 Sync             0 UNKNOWN, 1 IN_SYNC, 2 OUT_OF_SYNC
//	    11    1 FailedLinks      number of watched links down
//	    12    8 Epoch            uint64
//	    20    8 ConfigVersion    uint64
//	    28    8 ConfigHash       8 raw bytes
//	    36    2 SchemaVersion    uint16
//	    38    3 SoftwareVersion  major, minor, patch
//	    41    8 BootID           uint64
//	    49    8 Seq              uint64
//	    57    8 SentAtNanos      int64 (two's complement)
//	    65   32 MAC              HMAC-SHA256(cluster key, bytes 0..64)
//	    97      end
//
// # Checks on receipt
//
// [Signer.Parse] checks, in this order, and stops at the first failure:
//
//  1. at least 5 bytes, else [ErrTruncated];
//  2. magic, else [ErrBadMagic];
//  3. version, else [ErrBadVersion] (checked before the length so that a
//     packet of another protocol version is reported as such, whatever its
//     size);
//  4. length: shorter than HeartbeatSize is [ErrTruncated], longer is
//     [ErrMalformed];
//  5. MAC, compared in constant time, else [ErrBadMAC]. No field after the
//     version byte is looked at before the MAC is verified;
//  6. cluster id, else [ErrWrongCluster] (only seen when two clusters share
//     a key; with different keys the packet fails the MAC);
//  7. field values (node id, state, sync status), else [ErrMalformed].
//
// Unknown flag bits are accepted and preserved, so that a later release can
// add a flag without a version bump; receivers ignore bits they do not know.
//
// # What the caller must still check
//
// Both units sign with the same key, so a heartbeat of a unit is also valid
// when an attacker reflects it back to the unit that sent it. The receiver
// must drop any heartbeat whose NodeID is its own. Replays are rejected by
// a [ReplayGuard] per (peer, path), fed with BootID and Seq after Parse
// succeeded.
package wire
