package snapshot

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Stream format, version 2 (all integers big-endian):
//
//	header  56 bytes: magic "TNDMSNAP", version u16, flags u16 (0),
//	        snapshot id [16], created unix-nanos i64, size u64 (database
//	        bytes), chunk size u32, chunk count u32, crc32c u32 of the
//	        preceding header bytes
//	chunk   (chunk count of them, index 0, 1, ...) 32-byte record header:
//	        index u32, raw length u32, compressed length u32, crc32c u32 of
//	        the compressed bytes, tag [16] of the raw bytes; then the
//	        compressed bytes: one zstd frame. Every chunk but the last has
//	        raw length = chunk size.
//	trailer 52 bytes: 0xFFFFFFFF u32, chunk count u32, size u64, digest
//	        [32], crc32c u32 of the preceding trailer bytes
//
// A chunk's tag is the AES-GMAC of its raw bytes (AES-128 keyed with the
// snapshot id, nonce: 8 zero bytes and the chunk index u32): a 128-bit
// polynomial hash under a random per-snapshot key, so a corruption that
// does not know the id goes undetected with probability below 2^-100 per
// chunk, and a chunk moved to another index does not match. The digest is
// the sha256 of the tags in chunk order: a hash tree over the whole file,
// checked before anything is installed. The id travels in the clear, so
// like the sha256 of version 1 this detects corruption, not forgery (the
// sync channel authenticates). GMAC runs at several GB/s with AES-NI and
// PCLMULQDQ, where sha256 without SHA-NI managed about 400 MB/s.
//
// With nothing in the header that depends on the data, Take streams as it
// reads: no spool. Version 1 carried the file's sha256 in the header.
const (
	magic       = "TNDMSNAP"
	Version     = 2
	headerLen   = 8 + 2 + 2 + 16 + 8 + 8 + 4 + 4 + 4
	chunkHdrLen = 4 + 4 + 4 + 4 + tagLen
	tagLen      = 16
	trailerLen  = 4 + 4 + 8 + 32 + 4
	trailerMark = 0xFFFFFFFF

	// DefaultChunkSize is the raw bytes per chunk.
	DefaultChunkSize = 256 << 10
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
	ID      [16]byte  // random, names this snapshot in logs and notifications
	Created time.Time // when Take started
	Size    int64     // database bytes
	// Digest is the sha256 of the chunks' tags (see the format above):
	// the whole file's integrity check.
	Digest    [32]byte
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
	index, rawLen, compLen, compCRC uint32
	tag                             [tagLen]byte
}

func (h chunkHdr) append(b []byte) []byte {
	for _, v := range []uint32{h.index, h.rawLen, h.compLen, h.compCRC} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return append(b, h.tag[:]...)
}

func decodeChunkHdr(b []byte) chunkHdr {
	return chunkHdr{
		index:   binary.BigEndian.Uint32(b),
		rawLen:  binary.BigEndian.Uint32(b[4:]),
		compLen: binary.BigEndian.Uint32(b[8:]),
		compCRC: binary.BigEndian.Uint32(b[12:]),
		tag:     [tagLen]byte(b[16:chunkHdrLen]),
	}
}

// tagger computes chunk tags (one per goroutine: it reuses its nonce).
type tagger struct {
	gmac  cipher.AEAD
	nonce [12]byte
}

func newTagger(id [16]byte) *tagger {
	block, err := aes.NewCipher(id[:])
	if err != nil {
		panic(err) // a 16-byte key is always valid
	}
	gmac, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &tagger{gmac: gmac}
}

// tag is the AES-GMAC of raw: GCM with raw as additional data and nothing
// to encrypt.
func (t *tagger) tag(index uint32, raw []byte) (tag [tagLen]byte) {
	binary.BigEndian.PutUint32(t.nonce[8:], index)
	t.gmac.Seal(tag[:0], t.nonce[:], nil, raw)
	return tag
}

// maxCompressed bounds a chunk's compressed length (zstd's worst case is a
// little over the input).
func maxCompressed(chunkSize int) int { return chunkSize + chunkSize/64 + 1024 }

func encodeTrailer(m Manifest) []byte {
	b := make([]byte, 0, trailerLen)
	b = binary.BigEndian.AppendUint32(b, trailerMark)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Chunks))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = append(b, m.Digest[:]...)
	return binary.BigEndian.AppendUint32(b, crc(b))
}

// checkTrailer checks the trailer against the header and the digest the
// receiver computed.
func checkTrailer(b []byte, m Manifest) error {
	if got, want := binary.BigEndian.Uint32(b[trailerLen-4:]), crc(b[:trailerLen-4]); got != want {
		return fmt.Errorf("%w: trailer crc32c %08x, computed %08x", ErrCorrupt, got, want)
	}
	if binary.BigEndian.Uint32(b) != trailerMark ||
		int(binary.BigEndian.Uint32(b[4:])) != m.Chunks ||
		int64(binary.BigEndian.Uint64(b[8:])) != m.Size {
		return fmt.Errorf("%w: trailer does not match the header", ErrCorrupt)
	}
	if got := [32]byte(b[16:48]); got != m.Digest {
		return fmt.Errorf("%w: digest of the chunk tags %x, trailer says %x", ErrCorrupt, m.Digest, got)
	}
	return nil
}
