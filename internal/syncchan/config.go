package syncchan

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/tandem-ha/tandem/internal/version"
)

// Roles of the two units, the same values as the heartbeat's node id.
const (
	RolePrimary   uint8 = 1 // dials the peer
	RoleSecondary uint8 = 2 // listens for the peer
)

// MinKeySize is the minimum length in bytes of the cluster key.
const MinKeySize = 32

// Defaults of the zero fields of a Config.
const (
	DefaultIdleTimeout      = time.Second
	DefaultDialTimeout      = time.Second
	DefaultHandshakeTimeout = 2 * time.Second
	DefaultMaxFrame         = 4 << 20
	DefaultQueueBytes       = 16 << 20
	DefaultEventBuffer      = 64

	// MaxFrameLimit is the largest MaxFrame accepted.
	MaxFrameLimit = 1 << 30
	// minFrame is the smallest MaxFrame accepted.
	minFrame = 64
)

// Errors. Events and Send wrap them with details; test with errors.Is.
var (
	// ErrNotConnected: Send found no connection up (or not the session
	// asked for).
	ErrNotConnected = errors.New("syncchan: no connection to the peer")
	// ErrBackpressure: the send queue is full; wait on Link.Writable and
	// retry.
	ErrBackpressure = errors.New("syncchan: send queue full")
	// ErrFrameTooLarge: a frame over the maximum frame size, sent or
	// received.
	ErrFrameTooLarge = errors.New("syncchan: frame too large")
	// ErrBatchTooLarge: the frames of one Send call do not fit in the whole
	// send queue, so that call can never succeed.
	ErrBatchTooLarge = errors.New("syncchan: batch larger than the send queue")

	// ErrAuth: the peer failed authentication, or rejected ours.
	ErrAuth = errors.New("syncchan: authentication failed")
	// ErrRefused: the peer is authentic but its hello is not compatible
	// (wrapping ErrWrongCluster, ErrProtocolVersion or ErrWrongRole), or the
	// peer refused ours.
	ErrRefused         = errors.New("syncchan: connection refused")
	ErrWrongCluster    = errors.New("cluster id mismatch")
	ErrProtocolVersion = errors.New("incompatible sync protocol version")
	ErrWrongRole       = errors.New("unexpected peer role")

	// ErrIdleTimeout: nothing received from the peer, or nothing it would
	// read from us, for the idle timeout.
	ErrIdleTimeout = errors.New("syncchan: idle timeout")
	// ErrTruncated: the stream ended inside a frame.
	ErrTruncated = errors.New("syncchan: truncated frame")
	// ErrProtocol: the peer sent something the protocol does not allow.
	ErrProtocol = errors.New("syncchan: protocol violation")
	// ErrPeerClosed: the peer closed the connection.
	ErrPeerClosed = errors.New("syncchan: closed by the peer")
	// ErrReplaced: the peer connected again; the older connection is closed.
	ErrReplaced = errors.New("syncchan: replaced by a newer connection from the peer")
	// ErrClosed: this link is shutting down (its Run context ended).
	ErrClosed = errors.New("syncchan: link shut down")
)

// Config configures a Link. Zero durations and sizes take the defaults.
type Config struct {
	// Key is the cluster key (at least MinKeySize bytes). Used when Auth is
	// nil to build the HMAC authenticator (NewKeyAuthenticator).
	Key []byte
	// Auth, when set, authenticates the peer instead of Key.
	Auth Authenticator

	ClusterID uint8
	Role      uint8 // RolePrimary (dials) or RoleSecondary (listens)

	// Local is this unit's HA address. The secondary listens on it (port 0
	// picks a free port, see Link.Addr); the primary dials from its address
	// (the source port is always chosen by the kernel).
	Local netip.AddrPort
	// Peer is the peer's HA address. The primary dials it; the secondary
	// accepts connections only from its address (the port is not used).
	Peer netip.AddrPort

	// IdleTimeout: a connection on which nothing arrives for this long, or
	// on which a write cannot progress for this long, is dead. Pings are
	// sent every IdleTimeout/4 when there is nothing else to send.
	IdleTimeout time.Duration
	// DialTimeout bounds one TCP connect of the primary.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the whole handshake (TLS, proofs, hellos).
	HandshakeTimeout time.Duration
	// MaxFrame is the largest user frame, in bytes, either way (default 4
	// MiB). Each side announces its limit; Send enforces the smaller one.
	MaxFrame int
	// QueueBytes bounds the bytes queued by Send and not yet written
	// (default 16 MiB, at least MaxFrame plus 5).
	QueueBytes int
	// EventBuffer is the capacity of the Events channel (default 64).
	EventBuffer int

	// Hello is sent to the peer after authentication. Its zero ClusterID and
	// Role take the Config's; a zero Software and Schema take this build's
	// (package version); a zero BootID a random one.
	Hello Hello

	Logger *slog.Logger
}

// Hello is what a unit tells its peer about itself after authentication.
// The channel refuses a peer of another cluster id or role; the software
// and schema versions are only carried, for the replication to judge.
type Hello struct {
	ClusterID uint8
	Role      uint8
	Software  [3]uint8
	Schema    uint16
	BootID    uint64
}

func (h Hello) String() string {
	return fmt.Sprintf("cluster %d %s software %s schema %d boot %016x",
		h.ClusterID, roleName(h.Role), version.Format(h.Software), h.Schema, h.BootID)
}

func roleName(r uint8) string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	}
	return fmt.Sprintf("role(%d)", r)
}

// withDefaults checks c and fills in its zero fields.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("syncchan: "+format, a...)) }

	if c.Auth == nil && len(c.Key) < MinKeySize {
		bad("Config.Key has %d bytes; the cluster key must have at least %d", len(c.Key), MinKeySize)
	}
	if c.Role != RolePrimary && c.Role != RoleSecondary {
		bad("Config.Role is %d; want %d (primary) or %d (secondary)", c.Role, RolePrimary, RoleSecondary)
	}
	if !c.Local.Addr().IsValid() {
		bad("Config.Local %v: this unit's HA address is required", c.Local)
	}
	if !c.Peer.Addr().IsValid() {
		bad("Config.Peer %v: the peer's HA address is required", c.Peer)
	} else if c.Role == RolePrimary && c.Peer.Port() == 0 {
		bad("Config.Peer %v: the primary needs the peer's port to dial", c.Peer)
	}

	dur := func(name string, d *time.Duration, def time.Duration) {
		switch {
		case *d == 0:
			*d = def
		case *d < 0:
			bad("Config.%s is %v; must not be negative", name, *d)
		}
	}
	dur("IdleTimeout", &c.IdleTimeout, DefaultIdleTimeout)
	dur("DialTimeout", &c.DialTimeout, DefaultDialTimeout)
	dur("HandshakeTimeout", &c.HandshakeTimeout, DefaultHandshakeTimeout)

	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.MaxFrame < minFrame || c.MaxFrame > MaxFrameLimit {
		bad("Config.MaxFrame is %d; want %d..%d bytes", c.MaxFrame, minFrame, MaxFrameLimit)
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = max(DefaultQueueBytes, 2*(c.MaxFrame+headerSize))
	}
	if c.QueueBytes < c.MaxFrame+headerSize {
		bad("Config.QueueBytes is %d; must hold at least one frame of MaxFrame (%d) plus its %d-byte header", c.QueueBytes, c.MaxFrame, headerSize)
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = DefaultEventBuffer
	}
	if c.EventBuffer < 0 {
		bad("Config.EventBuffer is %d; must not be negative", c.EventBuffer)
	}

	if c.Hello.ClusterID == 0 {
		c.Hello.ClusterID = c.ClusterID
	} else if c.Hello.ClusterID != c.ClusterID {
		bad("Config.Hello.ClusterID %d differs from Config.ClusterID %d", c.Hello.ClusterID, c.ClusterID)
	}
	if c.Hello.Role == 0 {
		c.Hello.Role = c.Role
	} else if c.Hello.Role != c.Role {
		bad("Config.Hello.Role %d differs from Config.Role %d", c.Hello.Role, c.Role)
	}
	if c.Hello.Software == ([3]uint8{}) && c.Hello.Schema == 0 {
		c.Hello.Software = version.Bytes()
		c.Hello.Schema = version.Schema
	}
	if c.Hello.BootID == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		c.Hello.BootID = binary.BigEndian.Uint64(b[:]) | 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}
