package snapshot

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Stream format (all integers big-endian):
//
//	header  88 bytes: magic "TNDMSNAP", version u16, flags u16 (0),
//	        snapshot id [16], created unix-nanos i64, size u64 (database
//	        bytes), chunk size u32, chunk count u32, sha256 [32] of the
//	        database, crc32c u32 of the preceding header bytes
//	chunk   (chunk count of them, index 0, 1, ...) 20-byte record header:
//	        index u32, raw length u32, compressed length u32, crc32c u32 of
//	        the raw bytes, crc32c u32 of the compressed bytes; then the
//	        compressed bytes: one zstd frame. Every chunk but the last has
//	        raw length = chunk size.
//	trailer 52 bytes: 0xFFFFFFFF u32, chunk count u32, size u64, sha256
//	        [32] (repeated from the header), crc32c u32 of the preceding
//	        trailer bytes
const (
	magic       = "TNDMSNAP"
	Version     = 1
	headerLen   = 8 + 2 + 2 + 16 + 8 + 8 + 4 + 4 + 32 + 4
	chunkHdrLen = 20
	trailerLen  = 4 + 4 + 8 + 32 + 4
	trailerMark = 0xFFFFFFFF

	// DefaultChunkSize is the raw bytes per chunk.
	DefaultChunkSize = 1 << 20
	// MaxChunkSize bounds what a receiver accepts (and so its memory).
	MaxChunkSize = 64 << 20
	minChunkSize = 4 << 10
)

// Errors a receiver returns, wrapped with the detail. Either way nothing was
// installed.
var (
	// ErrCorrupt: a checksum, hash, length or field of the stream is wrong.
	ErrCorrupt = errors.New("snapshot corrupt")
	// ErrTruncated: the stream ended before its trailer.
	ErrTruncated = errors.New("snapshot truncated")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Manifest describes a snapshot.
type Manifest struct {
	ID        [16]byte  // random, names this snapshot in logs and notifications
	Created   time.Time // when Take started
	Size      int64     // database bytes
	SHA256    [32]byte  // of the database bytes
	ChunkSize int
	Chunks    int
	// StreamBytes is the size of the stream, header to trailer.
	StreamBytes int64
	// Duration: for Take, taking and sending; for Receive, receiving,
	// verifying and installing.
	Duration time.Duration
}

// IDString is the snapshot id in hex.
func (m Manifest) IDString() string { return hex.EncodeToString(m.ID[:]) }

func chunkCount(size int64, chunkSize int) int {
	return int((size + int64(chunkSize) - 1) / int64(chunkSize))
}

func encodeHeader(m Manifest) []byte {
	b := make([]byte, 0, headerLen)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint16(b, Version)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Created.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint32(b, uint32(m.ChunkSize))
	b = binary.BigEndian.AppendUint32(b, uint32(m.Chunks))
	b = append(b, m.SHA256[:]...)
	return binary.BigEndian.AppendUint32(b, crc(b))
}

func decodeHeader(b []byte) (Manifest, error) {
	var m Manifest
	if string(b[:8]) != magic {
		return m, fmt.Errorf("%w: magic %q, want %q: not a tandem snapshot", ErrCorrupt, b[:8], magic)
	}
	if got, want := binary.BigEndian.Uint32(b[headerLen-4:]), crc(b[:headerLen-4]); got != want {
		return m, fmt.Errorf("%w: header crc32c %08x, computed %08x", ErrCorrupt, got, want)
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != Version {
		return m, fmt.Errorf("%w: format version %d, this build reads version %d", ErrCorrupt, v, Version)
	}
	if f := binary.BigEndian.Uint16(b[10:]); f != 0 {
		return m, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, f)
	}
	copy(m.ID[:], b[12:28])
	m.Created = time.Unix(0, int64(binary.BigEndian.Uint64(b[28:]))).UTC()
	size := binary.BigEndian.Uint64(b[36:])
	m.ChunkSize = int(binary.BigEndian.Uint32(b[44:]))
	m.Chunks = int(binary.BigEndian.Uint32(b[48:]))
	copy(m.SHA256[:], b[52:84])
	if m.ChunkSize < minChunkSize || m.ChunkSize > MaxChunkSize {
		return m, fmt.Errorf("%w: chunk size %d, must be %d to %d", ErrCorrupt, m.ChunkSize, minChunkSize, MaxChunkSize)
	}
	if size > 1<<50 {
		return m, fmt.Errorf("%w: database size %d is implausible", ErrCorrupt, size)
	}
	m.Size = int64(size)
	if want := chunkCount(m.Size, m.ChunkSize); m.Chunks != want {
		return m, fmt.Errorf("%w: %d chunks for %d bytes in chunks of %d, want %d", ErrCorrupt, m.Chunks, m.Size, m.ChunkSize, want)
	}
	return m, nil
}

type chunkHdr struct {
	index, rawLen, compLen, rawCRC, compCRC uint32
}

func (h chunkHdr) append(b []byte) []byte {
	for _, v := range []uint32{h.index, h.rawLen, h.compLen, h.rawCRC, h.compCRC} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

func decodeChunkHdr(b []byte) chunkHdr {
	return chunkHdr{
		index:   binary.BigEndian.Uint32(b),
		rawLen:  binary.BigEndian.Uint32(b[4:]),
		compLen: binary.BigEndian.Uint32(b[8:]),
		rawCRC:  binary.BigEndian.Uint32(b[12:]),
		compCRC: binary.BigEndian.Uint32(b[16:]),
	}
}

// maxCompressed bounds a chunk's compressed length (zstd's worst case is a
// little over the input).
func maxCompressed(chunkSize int) int { return chunkSize + chunkSize/64 + 1024 }

func encodeTrailer(m Manifest) []byte {
	b := make([]byte, 0, trailerLen)
	b = binary.BigEndian.AppendUint32(b, trailerMark)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Chunks))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = append(b, m.SHA256[:]...)
	return binary.BigEndian.AppendUint32(b, crc(b))
}

func checkTrailer(b []byte, m Manifest) error {
	if got, want := binary.BigEndian.Uint32(b[trailerLen-4:]), crc(b[:trailerLen-4]); got != want {
		return fmt.Errorf("%w: trailer crc32c %08x, computed %08x", ErrCorrupt, got, want)
	}
	if binary.BigEndian.Uint32(b) != trailerMark ||
		int(binary.BigEndian.Uint32(b[4:])) != m.Chunks ||
		int64(binary.BigEndian.Uint64(b[8:])) != m.Size ||
		[32]byte(b[16:48]) != m.SHA256 {
		return fmt.Errorf("%w: trailer does not match the header", ErrCorrupt)
	}
	return nil
}
