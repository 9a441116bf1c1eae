// Package syncchan is the sync channel of tandem: an encrypted, mutually
// authenticated TCP stream of frames between the two units of a cluster,
// over the dedicated HA link.
//
// The ACTIVE unit streams replicated state (connection-tracking entries,
// configuration revisions, database snapshots) to the STANDBY over it. This
// package only carries those frames: they are opaque byte slices produced
// and consumed by the replication engine. It knows nothing of what they
// mean, and the direction of the stream is the engine's business; the
// channel is symmetric once up.
//
// # Use
//
// Each unit runs one [Link] ([NewLink], then [Link.Run] in a goroutine) and
// reads [Link.Events]: Up when a connection has passed the handshake (with
// the peer's [Hello] and a session number), a Frame per user frame received,
// Down when the connection ends (with the reason), AuthFailed and Refused
// when a handshake failed. [Link.Send] queues frames for the current
// connection and returns at once; [Link.SendOn] does the same only while a
// given session is up, so that frames meant for one session never reach the
// next. [Link.Stats] gives the counters and the state.
//
// For one session, Up comes first, then its Frames in the order the peer
// sent them, then Down. Frames queued but not written when a connection
// ends are lost, and frames in flight may or may not have arrived: after a
// Down the replication must start over (resync) on the next Up. Nothing is
// carried over from one session to the next.
//
// # One connection: the primary dials, the secondary listens
//
// Exactly one connection is kept between the two units. The primary (the
// unit configured as such, whatever its HA state) dials the secondary's HA
// address; the secondary listens on its HA address and accepts connections
// only from the primary's address. With both sides dialing, two
// connections could cross and a tie-break would be needed; a fixed
// direction needs none.
//
// When a connection ends, the primary dials again after a backoff of 50ms,
// doubling up to 1s (back to 50ms after a session that lasted at least 1s).
// When the secondary authenticates a new connection while it still holds
// one, the new one replaces the old (Down with [ErrReplaced], then Up): the
// primary only dials when it has given its connection up, so the old one is
// half-open, and this detects it sooner than the idle timeout would.
//
// # Handshake
//
// The whole handshake is bounded by Config.HandshakeTimeout (default 2s).
//
//  1. TCP connect, from the primary's HA address.
//  2. TLS 1.3 (crypto/tls), and nothing older. Each Link makes a fresh,
//     self-signed ECDSA P-256 certificate: there is no PKI to manage, and
//     certificates are not verified (the client skips verification, the
//     server requests the client's certificate only to leave room for
//     pairing certificates later). Session tickets are off, so every
//     connection runs a full handshake with fresh ephemeral (EC)DHE keys.
//     TLS gives confidentiality, integrity, replay protection within the
//     stream and forward secrecy; it authenticates nobody.
//  3. Proofs of the cluster key, bound to this TLS session, computed by the
//     [Authenticator] ([NewKeyAuthenticator]) as shown below. The primary
//     sends its proof first. The secondary verifies it (constant-time
//     compare) before sending anything at all; if it is wrong, it answers
//     with a reject frame and closes. Otherwise it sends its own proof,
//     which the primary verifies in turn (a wrong one: reject and close).
//  4. Hellos and verdicts. The secondary sends its hello with its proof, the
//     primary its hello after verifying; the hello carries the protocol
//     version, cluster id, role, software and schema versions, boot id and
//     the largest frame the sender accepts. Each side checks the other's
//     hello itself: same protocol version, same cluster id, the other role.
//     Each then sends its verdict, ready or refuse (with the reason), and
//     reads the other's. The session is up only when both said ready; when
//     either refuses, both report Refused with a clear error (their own
//     check's, or "the peer refused this unit: <its reason>") and log it.
//
// The proof of the unit in role r (1 primary, 2 secondary) on a session:
//
//	EKM   = ExportKeyingMaterial("tandem sync v1", nil, 32) of the session
//	K     = HKDF-SHA256(cluster key, no salt, info "tandem sync v1 proof key")
//	proof = HMAC-SHA256(K, "tandem sync v1 proof" || r || EKM)
//
// In a diagram:
//
//	primary                               secondary
//	AUTH(proof P)                  -->    verify P, else REJECT and close
//	verify S, else REJECT, close   <--    AUTH(proof S) HELLO(secondary)
//	HELLO(primary) READY|REFUSE    -->    check the primary's hello
//	check the secondary's hello    <--    READY|REFUSE
//
// Only the software and schema versions are left to the replication to
// judge: they are delivered in the Up event.
//
// Why this design: crypto/tls has no external pre-shared-key mode, and
// hand-made cryptography is not an option. TLS with unverified certificates
// plus a key proof bound to the session's exported keying material (RFC
// 8446, section 7.5: unique to the session, known only to its two ends)
// gives what a PSK mode would: an attacker who relays between the two units
// (a man in the middle) runs two TLS sessions with two different EKMs, and
// cannot turn a proof of one into a proof of the other without the key.
// The role in the MAC makes a proof reflected back to its sender fail. The
// proof key is derived with HKDF so that this use of the cluster key is
// separated from the heartbeat MACs, which use the key itself.
//
// # Framing
//
// After TLS, everything is a frame:
//
//	| length, 4 bytes big-endian | type, 1 byte | payload, length-1 bytes |
//
// The length counts the type byte, so it is at least 1. Types:
//
//	0x00 data    a user frame, up to MaxFrame bytes (after the handshake)
//	0x01 ping    empty: keepalive (after the handshake)
//	0x02 bye     reason, up to 256 bytes: the sender is closing
//	0x10 auth    proof, up to 512 bytes (handshake)
//	0x11 reject  reason: the sender rejected the receiver's proof
//	0x12 hello   20 bytes in version 1 (layout in frame.go)
//	0x13 refuse  reason: the sender refuses the session
//	0x14 ready   empty: the sender accepts the session
//
// Users only ever see data frames. Handshake frames are refused after the
// handshake and data frames during it, so no user frame is ever read from a
// peer that has not passed the handshake. The header is checked against the
// limit of its type before anything is allocated: no input makes the reader
// allocate more than MaxFrame bytes (512 before authentication). A frame over
// the limit, an unknown type or a stream ending inside a frame closes the
// connection with an error naming the sizes ([ErrFrameTooLarge],
// [ErrProtocol], [ErrTruncated]); when the stream is still usable the peer is
// told why in a bye frame. The link then reconnects as after any Down.
//
// MaxFrame (default 4 MiB) is announced in the hello; Send refuses frames
// over the smaller of the two units' limits ([ErrFrameTooLarge]) rather
// than have the peer drop the connection.
//
// The frame header, the handshake frame types and their order are the same
// in every version of the protocol, and the first byte of a hello is its
// version; a unit refuses a peer of another version with [ErrProtocolVersion]
// (version 1 accepts only version 1).
//
// # Liveness
//
// TCP keepalive is far too slow for HA. A writer with nothing to send sends
// a ping every IdleTimeout/4. A connection on which nothing at all has been
// received for Config.IdleTimeout (default 1s, about 3 times the HA dead
// interval) is dead, and so is one on which a write cannot progress for
// IdleTimeout (the peer stopped reading): both close it with
// [ErrIdleTimeout]. The consumer of Events must therefore keep draining it:
// while Events is full the reader stops reading, and if that lasts until
// the peer's writes stall for the idle timeout, the peer drops the
// connection.
//
// # Performance
//
// Send copies the frames into the connection's queue (one append per frame
// under a mutex, no allocation once the queue has grown) and wakes the one
// writer goroutine, which takes the whole queue at once and writes it in
// chunks of up to 256 KiB, full 16 KiB TLS records, until the queue is
// empty; a new batch is swapped in while the last one is being written. The
// one reader goroutine reads through a 64 KiB buffer and allocates only the
// payload of each data frame, which the consumer then owns. The queue holds
// at most Config.QueueBytes (default 16 MiB); beyond, Send returns
// [ErrBackpressure] at once and [Link.Writable] says when to retry. See
// BenchmarkLink for the figures.
//
// # Threat model
//
// The attacker sits on the HA link and does not know the cluster key. It
// can read, drop, delay, replay and inject packets, and connect to either
// unit. It cannot:
//
//   - read the stream: TLS 1.3 encrypts it, with ephemeral keys, so even a
//     cluster key learned later decrypts nothing recorded;
//   - inject, modify, reorder or replay frames within a connection: TLS
//     authenticates every record;
//   - replay a connection or a handshake: every connection has fresh TLS
//     keys and a fresh EKM, and a proof is only valid for its own session;
//   - complete a handshake, as either side, alone or by relaying or
//     reflecting the units' own messages: that needs a proof made with the
//     key for that session and that role.
//
// A peer that fails is refused and logged (rate-limited, since it can try
// in a loop), counted in Stats, reported as AuthFailed, and closed; it is
// never fed state, and it is given nothing before it has proved the key but
// a reject (the secondary verifies first). A TCP connection from an address
// other than the peer's is closed at once (a cheap filter, not
// authentication); at most 4 handshakes run at once.
//
// Not in scope: availability (the attacker can cut or stall the link, or
// take the handshake slots, which shows as Down and reconnect attempts),
// traffic analysis (frame sizes and timing are visible), and a unit that
// knows the key (it is the peer).
//
// # What this package must never do
//
//   - No replication logic: frames are opaque; no retransmission across
//     sessions, no acknowledgements, no interpretation.
//   - Never accept or deliver a frame from a peer that has not passed the
//     whole handshake, and never send state to one: data frames are only
//     read and written after both sides said ready.
//   - Never block the caller's event loop: Send, SendOn, Writable and Stats
//     return at once; events are read from a channel. Only the link's own
//     goroutines wait: Run's, the secondary's acceptor, one per handshake in
//     progress, and per connection one reader and one writer. All have
//     ended when Run returns, and Events is then closed.
//   - Never log or send the cluster key or anything derived from it but the
//     proofs.
package syncchan
