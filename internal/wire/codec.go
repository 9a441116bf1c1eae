package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
)

// Reasons for dropping a packet, returned by [Signer.Parse] and
// [ReplayGuard.Check]. Errors may wrap them: compare with [errors.Is].
var (
	// ErrTruncated: the packet is shorter than a heartbeat.
	ErrTruncated = errors.New("wire: truncated heartbeat")
	// ErrBadMagic: the packet does not start with "TDHB"; it is not a
	// heartbeat at all.
	ErrBadMagic = errors.New("wire: bad magic")
	// ErrBadVersion: a heartbeat of a protocol version other than [Version].
	ErrBadVersion = errors.New("wire: unsupported protocol version")
	// ErrWrongCluster: an authentic heartbeat of another cluster that uses
	// the same key.
	ErrWrongCluster = errors.New("wire: heartbeat of another cluster")
	// ErrBadMAC: the MAC does not match; the packet was altered or signed
	// with another key.
	ErrBadMAC = errors.New("wire: bad MAC")
	// ErrReplay: the (BootID, Seq) pair is not newer than the last accepted
	// one from that peer and path.
	ErrReplay = errors.New("wire: replayed heartbeat")
	// ErrMalformed: the packet is longer than a heartbeat, or an
	// authentic heartbeat carries an undefined node id, state or sync
	// status.
	ErrMalformed = errors.New("wire: malformed heartbeat")
)

const magic = "TDHB"

// HeartbeatSize is the size in bytes of every version 1 heartbeat packet.
const HeartbeatSize = offMAC + sha256.Size

// Field offsets; see the table in the package documentation.
const (
	offMagic           = 0
	offVersion         = 4
	offClusterID       = 5
	offNodeID          = 6
	offState           = 7
	offFlags           = 8
	offPriority        = 9
	offSync            = 10
	offFailedLinks     = 11
	offEpoch           = 12
	offConfigVersion   = 20
	offConfigHash      = 28
	offSchemaVersion   = 36
	offSoftwareVersion = 38
	offBootID          = 41
	offSeq             = 49
	offSentAtNanos     = 57
	offMAC             = 65
)

// Signer signs and authenticates heartbeats with the cluster key.
//
// It keeps one HMAC state and reuses it for every packet, so a Signer is
// not safe for concurrent use: give each goroutine its own (a sender and a
// receiver loop each hold one, created from the same key).
type Signer struct {
	mac hash.Hash
	sum [sha256.Size]byte
}

// NewSigner returns a Signer keyed with the cluster key. The key is copied.
// It should be long and random; checking that is the job of the
// configuration, not of this package.
func NewSigner(key []byte) *Signer {
	return &Signer{mac: hmac.New(sha256.New, key)}
}

// Append appends the encoded and signed heartbeat hb to dst and returns the
// extended slice. It allocates only when dst lacks room for
// [HeartbeatSize] more bytes.
//
// Append encodes hb as is, except that it always writes [Version]: it does
// not check field values (see [Heartbeat.Validate]).
func (s *Signer) Append(dst []byte, hb *Heartbeat) []byte {
	n := len(dst)
	dst = slices.Grow(dst, HeartbeatSize)[:n+HeartbeatSize]
	p := dst[n:]
	encodeBody(p[:offMAC], hb)
	copy(p[offMAC:], s.sign(p[:offMAC]))
	return dst
}

// Parse authenticates pkt and, if it is an acceptable heartbeat of cluster
// clusterID, decodes it into hb. On error hb is left unchanged.
//
// The checks and their order are listed in the package documentation; no
// field past the version byte is trusted before the MAC is verified. Parse
// does not check replays (see [ReplayGuard]) nor whether NodeID is the
// receiver's own. It never panics and never modifies pkt.
func (s *Signer) Parse(pkt []byte, clusterID uint8, hb *Heartbeat) error {
	switch {
	case len(pkt) <= offVersion:
		return ErrTruncated
	case string(pkt[offMagic:offVersion]) != magic:
		return ErrBadMagic
	case pkt[offVersion] != Version:
		return ErrBadVersion
	case len(pkt) < HeartbeatSize:
		return ErrTruncated
	case len(pkt) > HeartbeatSize:
		return ErrMalformed
	}
	if !hmac.Equal(s.sign(pkt[:offMAC]), pkt[offMAC:]) {
		return ErrBadMAC
	}
	if pkt[offClusterID] != clusterID {
		return ErrWrongCluster
	}
	var h Heartbeat
	decodeBody(pkt[:offMAC], &h)
	if err := h.Validate(); err != nil {
		return err
	}
	*hb = h
	return nil
}

// sign returns the MAC of body. The result aliases s.sum and is valid until
// the next call.
func (s *Signer) sign(body []byte) []byte {
	s.mac.Reset()
	s.mac.Write(body)
	return s.mac.Sum(s.sum[:0])
}

// encodeBody writes every field of hb but the MAC into p, which must be
// offMAC bytes long.
func encodeBody(p []byte, hb *Heartbeat) {
	be := binary.BigEndian
	copy(p[offMagic:], magic)
	p[offVersion] = Version
	p[offClusterID] = hb.ClusterID
	p[offNodeID] = hb.NodeID
	p[offState] = uint8(hb.State)
	p[offFlags] = uint8(hb.Flags)
	p[offPriority] = hb.Priority
	p[offSync] = uint8(hb.Sync)
	p[offFailedLinks] = hb.FailedLinks
	be.PutUint64(p[offEpoch:], hb.Epoch)
	be.PutUint64(p[offConfigVersion:], hb.ConfigVersion)
	copy(p[offConfigHash:], hb.ConfigHash[:])
	be.PutUint16(p[offSchemaVersion:], hb.SchemaVersion)
	copy(p[offSoftwareVersion:], hb.SoftwareVersion[:])
	be.PutUint64(p[offBootID:], hb.BootID)
	be.PutUint64(p[offSeq:], hb.Seq)
	be.PutUint64(p[offSentAtNanos:], uint64(hb.SentAtNanos))
}

// decodeBody is the inverse of encodeBody.
func decodeBody(p []byte, hb *Heartbeat) {
	be := binary.BigEndian
	hb.Version = p[offVersion]
	hb.ClusterID = p[offClusterID]
	hb.NodeID = p[offNodeID]
	hb.State = State(p[offState])
	hb.Flags = Flags(p[offFlags])
	hb.Priority = p[offPriority]
	hb.Sync = SyncStatus(p[offSync])
	hb.FailedLinks = p[offFailedLinks]
	hb.Epoch = be.Uint64(p[offEpoch:])
	hb.ConfigVersion = be.Uint64(p[offConfigVersion:])
	copy(hb.ConfigHash[:], p[offConfigHash:])
	hb.SchemaVersion = be.Uint16(p[offSchemaVersion:])
	copy(hb.SoftwareVersion[:], p[offSoftwareVersion:])
	hb.BootID = be.Uint64(p[offBootID:])
	hb.Seq = be.Uint64(p[offSeq:])
	hb.SentAtNanos = int64(be.Uint64(p[offSentAtNanos:]))
}
