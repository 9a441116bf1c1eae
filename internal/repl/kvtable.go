package repl

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"slices"
)

// kvTable is the compact key -> value table under both the source's tables
// and [MapStore]: no Go pointer per entry, so the garbage collector never
// scans it, and no allocation per operation once it has grown.
//
// Records live back to back in chunks of memory (the arena):
//
//	flags u8 | gen u8 | klen uvarint | vlen uvarint | key | value
//
// The index is an open-addressing hash table (linear probing, backward-shift
// deletion) of uint64 slots: the record's reference (chunk id and offset,
// plus one so that 0 means empty) in the high 40 bits, the low 24 bits of the
// key's hash in the low 24 bits. Those hash bits double as the home slot for
// tables of up to 2^24 slots, so growing and deleting seldom read the arena.
//
// A record whose value changes length moves to the end of the arena; one
// that keeps its length is rewritten in place. Deleted and moved records
// leave garbage in their chunk; a chunk more than half garbage is compacted
// by moving its live records to the end, one chunk at a time, so there is
// never a pause proportional to the table.
//
// Per entry of a 24-byte key and an 80-byte value this costs 108 bytes of
// arena plus 8 bytes per slot at a load of 3/8 to 3/4: about 120-130 bytes.
type kvTable struct {
	seed  maphash.Seed
	slots []uint64
	mask  uint64
	live  int // records in the index

	chunks  [][]byte // by chunk id; nil when free
	garbage []int    // dead bytes per chunk id
	order   []uint32 // chunk ids in arena order; the last is the tail
	free    []uint32 // ids of freed chunks
	spare   [][]byte // freed chunk memory kept for reuse
	pinned  int      // chunk id+1 that must not be compacted (a cursor is in it); 0 none
	bytes   int      // capacity of the chunks in use

	// rehashHome makes home() hash the key as it does for tables of more
	// than 2^24 slots; tests set it to cover that path on small tables.
	rehashHome bool
}

const (
	tagBits   = 24
	tagMask   = 1<<tagBits - 1
	posBits   = 24
	posMask   = 1<<posBits - 1
	maxChunks = 1<<16 - 1
	chunkMin  = 1 << 10
	chunkMax  = 1 << 20
	// maxRecord bounds one record (header, key and value); the frame limits
	// (MaxKeyLen, MaxValueLen) keep every record well under it.
	maxRecord = 1 << posBits

	flagDead  = 1 << 0 // garbage: the record was deleted or moved
	flagDirty = 1 << 1 // source: a change to this key is queued
	flagTomb  = 1 << 2 // source: deleted, the delete is queued
)

// loc is where a key is, or would be inserted: valid until the next change
// to the table.
type loc struct {
	h    uint64
	slot int
	ref  uint64 // record reference+1; 0 when the key is absent
}

func newKVTable() *kvTable { return newKVTableSize(0) }

// newKVTableSize returns a table whose index holds n entries without
// growing.
func newKVTableSize(n int) *kvTable {
	size := 8
	for size*3 < n*4 {
		size *= 2
	}
	return &kvTable{seed: maphash.MakeSeed(), slots: make([]uint64, size), mask: uint64(size - 1)}
}

func (t *kvTable) hash(key []byte) uint64 { return maphash.Bytes(t.seed, key) }

func slotRef(s uint64) uint64 { return s >> tagBits }

// find looks key up.
func (t *kvTable) find(key []byte) loc {
	h := t.hash(key)
	tag := h & tagMask
	i := h & t.mask
	for {
		s := t.slots[i]
		if s == 0 {
			return loc{h: h, slot: int(i)}
		}
		if s&tagMask == tag && bytes.Equal(t.keyOf(slotRef(s)), key) {
			return loc{h: h, slot: int(i), ref: slotRef(s)}
		}
		i = (i + 1) & t.mask
	}
}

// record returns the record at ref (reference+1, as in a slot). The slices
// point into the arena: valid until the next change to the table.
func (t *kvTable) record(ref uint64) (flags, gen byte, key, value []byte) {
	r := ref - 1
	c := t.chunks[r>>posBits]
	p := int(r & posMask)
	flags, gen = c[p], c[p+1]
	kl, n1 := binary.Uvarint(c[p+2:])
	vl, n2 := binary.Uvarint(c[p+2+n1:])
	k := p + 2 + n1 + n2
	return flags, gen, c[k : k+int(kl) : k+int(kl)], c[k+int(kl) : k+int(kl)+int(vl) : k+int(kl)+int(vl)]
}

func (t *kvTable) keyOf(ref uint64) []byte {
	_, _, k, _ := t.record(ref)
	return k
}

func (t *kvTable) header(ref uint64) *[2]byte {
	r := ref - 1
	c := t.chunks[r>>posBits]
	p := int(r & posMask)
	return (*[2]byte)(c[p : p+2])
}

func (t *kvTable) setFlags(ref uint64, flags, gen byte) {
	h := t.header(ref)
	h[0], h[1] = flags, gen
}

func recordSize(kl, vl int) int {
	return 2 + uvarintLen(uint64(kl)) + uvarintLen(uint64(vl)) + kl + vl
}

// appendRecord writes a record at the end of the arena and returns its
// reference+1.
func (t *kvTable) appendRecord(flags, gen byte, key, value []byte) uint64 {
	n := recordSize(len(key), len(value))
	c := t.tailFor(n)
	id := t.order[len(t.order)-1]
	p := len(*c)
	b := append(*c, flags, gen)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = binary.AppendUvarint(b, uint64(len(value)))
	b = append(b, key...)
	b = append(b, value...)
	*c = b
	return uint64(id)<<posBits | uint64(p) + 1
}

// tailFor returns the tail chunk, with room for n more bytes.
func (t *kvTable) tailFor(n int) *[]byte {
	if len(t.order) > 0 {
		c := &t.chunks[t.order[len(t.order)-1]]
		if cap(*c)-len(*c) >= n {
			return c
		}
	}
	size := chunkMin
	if len(t.order) > 0 {
		size = min(2*cap(t.chunks[t.order[len(t.order)-1]]), chunkMax)
	}
	size = max(size, n)
	var mem []byte
	if k := len(t.spare); k > 0 && cap(t.spare[k-1]) >= size {
		mem, t.spare = t.spare[k-1][:0], t.spare[:k-1]
	} else {
		mem = make([]byte, 0, size)
	}
	var id uint32
	if k := len(t.free); k > 0 {
		id, t.free = t.free[k-1], t.free[:k-1]
		t.chunks[id] = mem
		t.garbage[id] = 0
	} else {
		if len(t.chunks) >= maxChunks {
			panic("repl: table arena exhausted (64 GiB)")
		}
		id = uint32(len(t.chunks))
		t.chunks = append(t.chunks, mem)
		t.garbage = append(t.garbage, 0)
	}
	t.order = append(t.order, id)
	t.bytes += cap(mem)
	return &t.chunks[id]
}

// insert adds a record for a key that find reported absent at l.
func (t *kvTable) insert(l loc, flags, gen byte, key, value []byte) uint64 {
	if (t.live+1)*4 > len(t.slots)*3 {
		t.grow()
		l = t.find(key)
	}
	ref := t.appendRecord(flags, gen, key, value)
	t.slots[l.slot] = ref<<tagBits | l.h&tagMask
	t.live++
	return ref
}

// setValue replaces the value of the record at l (which must be present)
// and sets its flags; it returns the record's new reference+1.
func (t *kvTable) setValue(l loc, flags, gen byte, value []byte) uint64 {
	_, _, key, old := t.record(l.ref)
	if len(old) == len(value) {
		copy(old, value)
		t.setFlags(l.ref, flags, gen)
		return l.ref
	}
	ref := t.appendRecord(flags, gen, key, value)
	t.slots[l.slot] = ref<<tagBits | l.h&tagMask
	t.kill(l.ref)
	return ref
}

// remove deletes the record at l (which must be present).
func (t *kvTable) remove(l loc) {
	// Backward-shift deletion: pull later members of the probe run into the
	// hole, so that lookups never meet tombstones.
	i := uint64(l.slot)
	for j := (i + 1) & t.mask; t.slots[j] != 0; j = (j + 1) & t.mask {
		// Move slot j into the hole i unless its home lies cyclically in (i, j].
		if (j-t.home(t.slots[j]))&t.mask >= (j-i)&t.mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = 0
	t.live--
	t.kill(l.ref)
}

// home is the slot where the entry s would sit without collisions.
func (t *kvTable) home(s uint64) uint64 {
	if t.mask <= tagMask && !t.rehashHome {
		return s & tagMask & t.mask
	}
	return t.hash(t.keyOf(slotRef(s))) & t.mask
}

// kill marks the record at ref as garbage and compacts its chunk when it is
// mostly garbage.
func (t *kvTable) kill(ref uint64) {
	flags, _, key, value := t.record(ref)
	if flags&flagDead != 0 {
		return
	}
	t.header(ref)[0] = flagDead
	id := uint32((ref - 1) >> posBits)
	t.garbage[id] += recordSize(len(key), len(value))
	if id != t.order[len(t.order)-1] && int(id)+1 != t.pinned && t.garbage[id]*2 > len(t.chunks[id]) {
		t.compactChunk(id)
	}
}

// compactChunk moves the live records of chunk id to the tail and frees it.
func (t *kvTable) compactChunk(id uint32) {
	c := t.chunks[id]
	for p := 0; p < len(c); {
		ref := uint64(id)<<posBits | uint64(p) + 1
		flags, gen, key, value := t.record(ref)
		p += recordSize(len(key), len(value))
		if flags&flagDead != 0 {
			continue
		}
		h := t.hash(key)
		i := h & t.mask
		for slotRef(t.slots[i]) != ref {
			i = (i + 1) & t.mask
		}
		nref := t.appendRecord(flags, gen, key, value)
		t.slots[i] = nref<<tagBits | h&tagMask
	}
	t.order = slices.DeleteFunc(t.order, func(x uint32) bool { return x == id })
	t.bytes -= cap(c)
	if cap(c) == chunkMax && len(t.spare) < 2 {
		t.spare = append(t.spare, c[:0])
	}
	t.chunks[id] = nil
	t.garbage[id] = 0
	t.free = append(t.free, id)
}

// grow doubles the index.
func (t *kvTable) grow() {
	old := t.slots
	t.slots = make([]uint64, 2*len(old))
	t.mask = uint64(len(t.slots) - 1)
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := t.home(s)
		for t.slots[i] != 0 {
			i = (i + 1) & t.mask
		}
		t.slots[i] = s
	}
}

// cursor is a position in the arena: before the record at (chunk, pos).
// The zero cursor is the start.
type cursor struct {
	chunk   uint32
	pos     uint32
	started bool
}

// next returns the record at or after c that is not garbage, and the
// cursor after it; ok is false at the end of the arena. The table must not
// compact the cursor's chunk meanwhile: pin it.
func (t *kvTable) next(c cursor) (ref uint64, after cursor, ok bool) {
	if !c.started {
		if len(t.order) == 0 {
			return 0, c, false
		}
		c = cursor{chunk: t.order[0], started: true}
	}
	for {
		ch := t.chunks[c.chunk]
		for int(c.pos) < len(ch) {
			ref = uint64(c.chunk)<<posBits | uint64(c.pos) + 1
			flags, _, key, value := t.record(ref)
			c.pos += uint32(recordSize(len(key), len(value)))
			if flags&flagDead == 0 {
				return ref, c, true
			}
		}
		i := slices.Index(t.order, c.chunk)
		if i < 0 || i+1 >= len(t.order) {
			return 0, c, false
		}
		c = cursor{chunk: t.order[i+1], started: true}
	}
}

// pin protects the chunk of c from compaction (c unstarted: nothing).
func (t *kvTable) pin(c cursor) {
	t.pinned = 0
	if c.started {
		t.pinned = int(c.chunk) + 1
	}
}

// each calls fn for every record that is not garbage, in arena order, until
// fn returns false. fn must not change the table.
func (t *kvTable) each(fn func(ref uint64, flags, gen byte, key, value []byte) bool) {
	for _, id := range t.order {
		c := t.chunks[id]
		for p := 0; p < len(c); {
			ref := uint64(id)<<posBits | uint64(p) + 1
			flags, gen, key, value := t.record(ref)
			p += recordSize(len(key), len(value))
			if flags&flagDead == 0 && !fn(ref, flags, gen, key, value) {
				return
			}
		}
	}
}

// memory is the table's footprint in bytes (index and arena).
func (t *kvTable) memory() int { return 8*len(t.slots) + t.bytes }

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
