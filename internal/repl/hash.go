package repl

import (
	"encoding/binary"
	"math/bits"
)

// The digest hash. It must give the same result on both units, whatever
// their process or architecture, so it is a fixed function (a wyhash-style
// multiply-mix over little-endian words) and never hash/maphash, whose seed
// is per process. It is not cryptographic: digests detect accidental
// divergence (a lost or misapplied change, a damaged store), not an attacker
// who can already write to the replication channel.
const (
	hp0 = 0xa0761d6478bd642f
	hp1 = 0xe7037ed1a0b428db
	hp2 = 0x8ebc6af09c88c6e3
	hp3 = 0x589965cc75374cc3

	keySeed = 0x2d358dccaa6c78a5 // seed of the key hash inside entryHash
)

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func r64(p []byte) uint64 { return binary.LittleEndian.Uint64(p) }
func r32(p []byte) uint64 { return uint64(binary.LittleEndian.Uint32(p)) }

// hash64 hashes p with seed.
func hash64(seed uint64, p []byte) uint64 {
	n := len(p)
	seed ^= mix(seed^hp0, hp1)
	var a, b uint64
	switch {
	case n <= 16:
		switch {
		case n >= 4:
			q := (n >> 3) << 2
			a = r32(p)<<32 | r32(p[q:])
			b = r32(p[n-4:])<<32 | r32(p[n-4-q:])
		case n > 0:
			a = uint64(p[0])<<16 | uint64(p[n>>1])<<8 | uint64(p[n-1])
		}
	default:
		i := 0
		rest := n
		if rest > 48 {
			s1, s2 := seed, seed
			for rest > 48 {
				seed = mix(r64(p[i:])^hp1, r64(p[i+8:])^seed)
				s1 = mix(r64(p[i+16:])^hp2, r64(p[i+24:])^s1)
				s2 = mix(r64(p[i+32:])^hp3, r64(p[i+40:])^s2)
				i += 48
				rest -= 48
			}
			seed ^= s1 ^ s2
		}
		for rest > 16 {
			seed = mix(r64(p[i:])^hp1, r64(p[i+8:])^seed)
			i += 16
			rest -= 16
		}
		// The last 16 bytes of p, overlapping what was already mixed.
		a = r64(p[n-16:])
		b = r64(p[n-8:])
	}
	a ^= hp1
	b ^= seed
	hi, lo := bits.Mul64(a, b)
	return mix(hi^hp0^uint64(n), lo^hp1)
}

// entryHash is an entry's contribution to its table's digest. It binds the
// key and the value together (the key's hash seeds the value's), so moving
// values between keys changes the digest. It is never 0: 0 stands for "no
// entry" in the old-hash field of an operation.
func entryHash(key, value []byte) uint64 {
	h := hash64(hash64(keySeed, key), value)
	if h == 0 {
		h = 1
	}
	return h
}

// EntryHash returns the digest contribution of one entry: a table's digest
// is the XOR of EntryHash over its entries. Adapters that keep their own
// store can use it to check a table against a [Digest] without the engine.
func EntryHash(key, value []byte) uint64 { return entryHash(key, value) }
