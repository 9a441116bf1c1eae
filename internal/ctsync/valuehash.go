package ctsync

import (
	"encoding/binary"

	"github.com/ti-mo/conntrack"
)

// The Source remembers a hash of every entry's last reported value without
// its timeout (liveInfo.hash): fnv32 of the value encoded with a timeout
// of 0. Rather than encoding every entry a second time for it, the hash is
// taken from the value already encoded for the output: the same bytes with
// the timeout's uvarint replaced by the single byte 0, which is what
// EncodeFlow and EncodeExpect write for a timeout of 0. The result is the
// same number (TestValueHashMatchesEncoding).

const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

func fnv32Add(h uint32, b []byte) uint32 {
	for _, c := range b {
		h ^= uint32(c)
		h *= fnvPrime32
	}
	return h
}

// hashSkipping is fnv32 of v with v[i:j] replaced by a single zero byte.
func hashSkipping(v []byte, i, j int) uint32 {
	h := fnv32Add(fnvOffset32, v[:i])
	h *= fnvPrime32 // the byte 0 (h ^= 0 changes nothing)
	return fnv32Add(h, v[j:])
}

// uvarintEnd returns the offset after the uvarint at v[i:], or -1.
func uvarintEnd(v []byte, i int) int {
	if i < 0 || i > len(v) {
		return -1
	}
	_, n := binary.Uvarint(v[i:])
	if n <= 0 {
		return -1
	}
	return i + n
}

// flowTimeoutSpan returns where EncodeFlow wrote the timeout in v (its
// uvarint is v[i:j]), or ok false if v is not a value it could have
// written.
func flowTimeoutSpan(v []byte) (i, j int, ok bool) {
	if len(v) < 1 || v[0] != magicFlow {
		return 0, 0, false
	}
	p, n := binary.Uvarint(v[1:])
	if n <= 0 {
		return 0, 0, false
	}
	al := 4
	if p&pV6 != 0 {
		al = 16
	}
	pos := 1 + n
	// Original tuple: proto, two addresses, 4 bytes of layer 4.
	if pos >= len(v) {
		return 0, 0, false
	}
	icmp := isICMP(v[pos])
	pos += 1 + 2*al + 4
	// Reply: bits, then the parts that differ.
	if pos >= len(v) {
		return 0, 0, false
	}
	rb := v[pos]
	pos++
	if rb&rProto != 0 {
		pos++
	}
	if rb&rSrc != 0 {
		pos += al
	}
	if rb&rDst != 0 {
		pos += al
	}
	if icmp {
		if rb&rSport != 0 {
			pos += 2
		}
		pos += 2 // type and code
	} else {
		if rb&rSport != 0 {
			pos += 2
		}
		if rb&rDport != 0 {
			pos += 2
		}
	}
	pos = uvarintEnd(v, pos) // status
	j = uvarintEnd(v, pos)   // timeout
	if j < 0 {
		return 0, 0, false
	}
	return pos, j, true
}

// expectTimeoutSpan is flowTimeoutSpan for EncodeExpect.
func expectTimeoutSpan(v []byte) (i, j int, ok bool) {
	if len(v) < 1 || v[0] != magicExpect {
		return 0, 0, false
	}
	p, n := binary.Uvarint(v[1:])
	if n <= 0 {
		return 0, 0, false
	}
	al := 4
	if p&eV6 != 0 {
		al = 16
	}
	pos := 1 + n + 3*(1+2*al+4) // master, expected and mask tuples
	j = uvarintEnd(v, pos)
	if j < 0 {
		return 0, 0, false
	}
	return pos, j, true
}

// flowValueHash is the hash of f (encoded as v by EncodeFlow) without its
// timeout, as flowHash computes it.
func (s *Source) flowValueHash(v []byte, f *conntrack.Flow) uint32 {
	if i, j, ok := flowTimeoutSpan(v); ok {
		return hashSkipping(v, i, j)
	}
	return s.flowHash(f) // cannot happen: EncodeFlow's own layout
}

// expectValueHash is flowValueHash for expectations.
func (s *Source) expectValueHash(v []byte, e *conntrack.Expect) uint32 {
	if i, j, ok := expectTimeoutSpan(v); ok {
		return hashSkipping(v, i, j)
	}
	return s.expectHash(e)
}
