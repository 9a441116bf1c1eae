package syncchan

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Wire format: every message, handshake or data, is a frame
//
//	| length uint32 big-endian | type uint8 | payload (length-1 bytes) |
//
// length counts the type byte and the payload, so it is at least 1.

const (
	headerSize = 5 // length + type

	// protoVersion is the sync protocol version carried in the hello.
	protoVersion = 1

	// maxControlPayload bounds every non-data frame: a peer cannot make the
	// reader allocate or buffer more than this before it is authenticated.
	maxControlPayload = 512
	maxReasonLen      = 256 // reject, refuse, bye: a reason for the log
	helloSize         = 20
)

// frameType is the type byte. Data frames carry the user's bytes; every
// other type is internal to the channel and never reaches the user.
type frameType uint8

const (
	ftData frameType = 0x00 // user frame (established only)
	ftPing frameType = 0x01 // keepalive, empty (established only)
	ftBye  frameType = 0x02 // the sender is closing; payload: reason (established only)

	ftAuth   frameType = 0x10 // payload: proof (handshake only)
	ftReject frameType = 0x11 // the sender rejected the receiver's proof; payload: reason
	ftHello  frameType = 0x12 // payload: hello, helloSize bytes in version 1
	ftRefuse frameType = 0x13 // the sender refuses the session; payload: reason
	ftReady  frameType = 0x14 // the sender accepts the session, empty
)

func (t frameType) String() string {
	switch t {
	case ftData:
		return "data"
	case ftPing:
		return "ping"
	case ftBye:
		return "bye"
	case ftAuth:
		return "auth"
	case ftReject:
		return "reject"
	case ftHello:
		return "hello"
	case ftRefuse:
		return "refuse"
	case ftReady:
		return "ready"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// payloadLimit says whether a frame of type t may arrive in this phase and
// how large its payload may be. maxData is the user frame limit.
func payloadLimit(t frameType, established bool, maxData int) (int, bool) {
	if established {
		switch t {
		case ftData:
			return maxData, true
		case ftPing:
			return 0, true
		case ftBye:
			return maxReasonLen, true
		}
		return 0, false
	}
	switch t {
	case ftAuth:
		return maxControlPayload, true
	case ftReject, ftRefuse:
		return maxReasonLen, true
	case ftHello:
		return maxControlPayload, true
	case ftReady:
		return 0, true
	}
	return 0, false
}

// Large data frames (bulk transfers: 256 KiB snapshot frames) come from a
// pool their consumer may give back with Recycle once it is done with
// them. Allocated per frame, a 300 MB transfer was 300 MB of garbage on the
// receiver, whose collector's workers — realtime threads, like all of the
// daemon's — then held CPUs for tens of milliseconds.
//
// Only frames of about that size: state sync's 64 KiB frames, never
// given back, must not each take a larger buffer.
const (
	pooledMin = 192 << 10       // smaller frames are allocated
	pooledCap = 256<<10 + 8<<10 // a snapshot frame and its headers
)

// recycleSlack is how much of a pooled frame's head a consumer may have
// cut (its own tags) and still give the rest back.
const recycleSlack = 16

var dataPool = sync.Pool{}

// dataBuffer returns n bytes for a data frame's payload.
func dataBuffer(n int) []byte {
	if n < pooledMin || n > pooledCap {
		return make([]byte, n)
	}
	if b, ok := dataPool.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:n]
	}
	return make([]byte, n, pooledCap)
}

// Recycle gives back a frame (or the tail of one: a frame's body after
// its tag) the caller received from this package and no longer uses —
// nor does anything else: the next frame may overwrite it. Optional:
// frames never given back are collected as usual.
func Recycle(b []byte) {
	// Only what dataBuffer made (less a few bytes of the consumer's own
	// header): never a buffer someone else may still hold.
	if cap(b) > pooledCap-recycleSlack && cap(b) <= pooledCap {
		b = b[:0]
		dataPool.Put(&b)
	}
}

// frameReader decodes frames from a buffered stream.
type frameReader struct {
	r   *bufio.Reader
	max int // largest user payload accepted
	hdr [headerSize]byte
	ctl [maxControlPayload]byte
}

// next reads one frame. A data payload is a slice that the caller owns
// (and may Recycle);
// any other payload aliases the reader's buffer and is valid until the next
// call. Nothing is allocated before the header has been checked against the
// limits of its type, so no input makes it allocate more than max bytes.
//
// A stream that ends cleanly between frames returns io.EOF; one that ends
// inside a frame returns ErrTruncated.
func (fr *frameReader) next(established bool) (frameType, []byte, error) {
	if n, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: the stream ended after %d bytes of a %d-byte frame header", ErrTruncated, n, headerSize)
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[:4])
	t := frameType(fr.hdr[4])
	if n == 0 {
		return 0, nil, fmt.Errorf("%w: frame length 0", ErrProtocol)
	}
	size := uint64(n) - 1
	limit, ok := payloadLimit(t, established, fr.max)
	if !ok {
		phase := "during the handshake"
		if established {
			phase = "after the handshake"
		}
		return 0, nil, fmt.Errorf("%w: unexpected %v frame %s", ErrProtocol, t, phase)
	}
	if size > uint64(limit) {
		if t == ftData {
			return 0, nil, fmt.Errorf("%w: received a frame of %d bytes, the maximum is %d", ErrFrameTooLarge, size, limit)
		}
		return 0, nil, fmt.Errorf("%w: %v frame of %d bytes, at most %d allowed", ErrProtocol, t, size, limit)
	}
	var p []byte
	if t == ftData {
		p = dataBuffer(int(size))
	} else {
		p = fr.ctl[:size]
	}
	if got, err := io.ReadFull(fr.r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: the stream ended after %d of %d payload bytes of a %v frame", ErrTruncated, got, size, t)
		}
		return 0, nil, err
	}
	return t, p, nil
}

// appendHeader appends the header of a frame of type t with n payload bytes.
func appendHeader(dst []byte, t frameType, n int) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(n)+1)
	return append(dst, byte(t))
}

// appendFrame appends a whole frame.
func appendFrame(dst []byte, t frameType, payload []byte) []byte {
	return append(appendHeader(dst, t, len(payload)), payload...)
}

// appendReason appends a reject, refuse or bye frame whose payload is the
// reason, cut to maxReasonLen.
func appendReason(dst []byte, t frameType, reason string) []byte {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	return appendFrame(dst, t, []byte(reason))
}

// wireHello is a hello as carried on the wire: the user's Hello plus what
// the channel itself negotiates.
type wireHello struct {
	Hello
	proto    uint8
	maxFrame uint32 // the largest user frame the sender accepts
}

// Hello payload, version 1 (helloSize bytes, big-endian):
//
//	offset size field
//	     0    1 protocol version (1)
//	     1    1 cluster id
//	     2    1 role (1 primary, 2 secondary)
//	     3    3 software version major, minor, patch
//	     6    2 schema version
//	     8    8 boot id
//	    16    4 max frame: the largest user frame the sender accepts
//	    20      end
//
// The first byte is the protocol version in every version: a receiver reads
// it before anything else, so a peer of another version is refused as such.
func appendHello(dst []byte, h wireHello) []byte {
	dst = append(dst, h.proto, h.ClusterID, h.Role)
	dst = append(dst, h.Software[:]...)
	dst = binary.BigEndian.AppendUint16(dst, h.Schema)
	dst = binary.BigEndian.AppendUint64(dst, h.BootID)
	return binary.BigEndian.AppendUint32(dst, h.maxFrame)
}

// parseHello decodes a hello payload. For another protocol version only
// proto is filled in: the layout of other versions is not known here, and
// the caller refuses the peer by version.
func parseHello(p []byte) (wireHello, error) {
	var h wireHello
	if len(p) < 1 {
		return h, fmt.Errorf("%w: empty hello", ErrProtocol)
	}
	h.proto = p[0]
	if h.proto != protoVersion {
		return h, nil
	}
	if len(p) != helloSize {
		return wireHello{}, fmt.Errorf("%w: hello of %d bytes, version %d has %d", ErrProtocol, len(p), protoVersion, helloSize)
	}
	h.ClusterID = p[1]
	h.Role = p[2]
	copy(h.Software[:], p[3:6])
	h.Schema = binary.BigEndian.Uint16(p[6:8])
	h.BootID = binary.BigEndian.Uint64(p[8:16])
	h.maxFrame = binary.BigEndian.Uint32(p[16:20])
	return h, nil
}
