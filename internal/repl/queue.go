package repl

import (
	"encoding/binary"
	"math"
	"time"
)

// fifo is the source's queue of changed keys, oldest first. A key is in it
// at most once (its record carries flagDirty while it is); the item keeps
// what the sink holds for the key (the EntryHash of the value last sent,
// 0 for none) and when the first unsent change happened. The value itself
// is read from the table when the item is sent, so changes merge.
//
//	table uvarint | sent u64 | at i64 (unix ns) | klen uvarint | key
type fifo struct {
	buf  []byte
	head int
	n    int
}

type fifoItem struct {
	table uint32
	sent  uint64
	at    int64
	key   []byte
	size  int
}

func (q *fifo) push(table uint32, sent uint64, at int64, key []byte) {
	if q.head > 0 && q.head >= len(q.buf)/2 && q.head >= 4096 {
		q.buf = q.buf[:copy(q.buf, q.buf[q.head:])]
		q.head = 0
	}
	b := binary.AppendUvarint(q.buf, uint64(table))
	b = binary.LittleEndian.AppendUint64(b, sent)
	b = binary.LittleEndian.AppendUint64(b, uint64(at))
	b = binary.AppendUvarint(b, uint64(len(key)))
	q.buf = append(b, key...)
	q.n++
}

// peek returns the oldest item; its key is valid until the next push.
func (q *fifo) peek() (it fifoItem, ok bool) {
	if q.n == 0 {
		return it, false
	}
	b := q.buf[q.head:]
	t, n1 := binary.Uvarint(b)
	it.table = uint32(t)
	it.sent = binary.LittleEndian.Uint64(b[n1:])
	it.at = int64(binary.LittleEndian.Uint64(b[n1+8:]))
	kl, n2 := binary.Uvarint(b[n1+16:])
	k := n1 + 16 + n2
	it.key = b[k : k+int(kl) : k+int(kl)]
	it.size = k + int(kl)
	return it, true
}

func (q *fifo) pop(it fifoItem) {
	q.head += it.size
	q.n--
	if q.n == 0 {
		q.buf, q.head = q.buf[:0], 0
	}
}

func (q *fifo) reset() { q.buf, q.head, q.n = q.buf[:0], 0, 0 }

func (q *fifo) memory() int { return cap(q.buf) }

// bucket is a token bucket driven by the times passed in.
type bucket struct {
	rate   float64 // tokens per second; 0: unlimited
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate, burst int) bucket {
	return bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst)}
}

func (b *bucket) on() bool { return b.rate > 0 }

func (b *bucket) refill(now time.Time) {
	if !b.on() {
		return
	}
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+b.rate*now.Sub(b.last).Seconds())
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
}

// avail is the whole tokens available (MaxInt when unlimited).
func (b *bucket) avail() int {
	if !b.on() {
		return math.MaxInt
	}
	return int(b.tokens)
}

func (b *bucket) take(n int) {
	if b.on() {
		b.tokens -= float64(n)
	}
}

// when is the time at which n tokens will be available.
func (b *bucket) when(n int) time.Time {
	missing := float64(n) - b.tokens
	if missing <= 0 {
		return b.last
	}
	return b.last.Add(time.Duration(math.Ceil(missing / b.rate * 1e9)))
}

// ring is the source's retransmit window: the Changes frames sent, oldest
// first, kept in blocks of memory until their total exceeds the limit. A
// reconnecting sink that holds seq S resumes with the frames after S.
//
// Frames returned by Poll point into the blocks, so a block is reused only
// after a later Poll (retired blocks wait one Poll on a list).
type ring struct {
	limit     int // bytes to keep; < 0 none
	blockSize int

	frames []ringFrame
	head   int    // first kept frame
	next   int    // first frame not yet sent on this connection
	bytes  int    // bytes of kept frames
	base   uint64 // the seq before the first kept frame (all of it when empty: the last seq)

	blocks  [][]byte // by block id; nil when free
	live    []int    // frames per block
	cur     int      // block being filled; -1 none
	freeIDs []int
	retired [][]byte // blocks emptied during this Poll
	spare   [][]byte // blocks ready for reuse
}

type ringFrame struct {
	block, off, n int
	first, last   uint64
}

func newRing(limit, maxFrame int) ring {
	return ring{limit: limit, blockSize: max(256<<10, 4*maxFrame), cur: -1}
}

// startPoll makes the blocks retired by earlier Polls reusable.
func (r *ring) startPoll() {
	for _, b := range r.retired {
		if len(r.spare) < 2 {
			r.spare = append(r.spare, b[:0])
		}
	}
	clear(r.retired)
	r.retired = r.retired[:0]
}

// alloc returns n bytes of ring memory for a frame of ops first..last, and
// records the frame as kept and not yet sent.
func (r *ring) alloc(n int, first, last uint64) []byte {
	if r.cur < 0 || cap(r.blocks[r.cur])-len(r.blocks[r.cur]) < n {
		var mem []byte
		if k := len(r.spare); k > 0 && cap(r.spare[k-1]) >= n {
			mem, r.spare = r.spare[k-1], r.spare[:k-1]
		} else {
			// Blocks grow from 16 KiB: a quiet source keeps little.
			size := 16 << 10
			if r.cur >= 0 {
				size = 2 * cap(r.blocks[r.cur])
			}
			mem = make([]byte, 0, max(min(size, r.blockSize), n))
		}
		old := r.cur
		if k := len(r.freeIDs); k > 0 {
			r.cur, r.freeIDs = r.freeIDs[k-1], r.freeIDs[:k-1]
			r.blocks[r.cur], r.live[r.cur] = mem, 0
		} else {
			r.cur = len(r.blocks)
			r.blocks = append(r.blocks, mem)
			r.live = append(r.live, 0)
		}
		if old >= 0 && r.live[old] == 0 {
			r.retire(old)
		}
	}
	b := r.blocks[r.cur]
	off := len(b)
	r.blocks[r.cur] = b[:off+n]
	r.live[r.cur]++
	r.frames = append(r.frames, ringFrame{block: r.cur, off: off, n: n, first: first, last: last})
	r.bytes += n
	return r.blocks[r.cur][off : off+n : off+n]
}

func (r *ring) frame(i int) []byte {
	f := r.frames[i]
	return r.blocks[f.block][f.off : f.off+f.n : f.off+f.n]
}

func (r *ring) retire(id int) {
	r.retired = append(r.retired, r.blocks[id])
	r.blocks[id] = nil
	r.freeIDs = append(r.freeIDs, id)
	if r.cur == id {
		r.cur = -1
	}
}

// trim drops sent frames beyond the limit.
func (r *ring) trim() {
	for r.head < r.next && (r.limit < 0 || r.bytes > r.limit) {
		f := r.frames[r.head]
		r.head++
		r.bytes -= f.n
		r.base = f.last
		r.live[f.block]--
		if r.live[f.block] == 0 && f.block != r.cur {
			r.retire(f.block)
		}
	}
	if r.head == len(r.frames) {
		r.frames, r.head, r.next = r.frames[:0], 0, 0
	} else if r.head > 64 && r.head > len(r.frames)/2 {
		n := copy(r.frames, r.frames[r.head:])
		r.frames = r.frames[:n]
		r.next -= r.head
		r.head = 0
	}
}

// reset drops every frame; the window starts after seq.
func (r *ring) reset(seq uint64) {
	for _, f := range r.frames[r.head:] {
		r.live[f.block]--
	}
	for id, b := range r.blocks {
		if b != nil && r.live[id] == 0 {
			r.retire(id)
		}
	}
	r.frames, r.head, r.next, r.bytes, r.base = r.frames[:0], 0, 0, 0, seq
}

// seek points next at the first frame that holds ops after seq; ok is false
// when the window no longer holds them all.
func (r *ring) seek(seq uint64) bool {
	if seq < r.base {
		return false
	}
	r.next = len(r.frames)
	for i := r.head; i < len(r.frames); i++ {
		if r.frames[i].last > seq {
			r.next = i
			break
		}
	}
	return true
}

// pending reports whether kept frames wait to be sent.
func (r *ring) pending() bool { return r.next < len(r.frames) }

func (r *ring) memory() int {
	n := 0
	for _, b := range r.blocks {
		n += cap(b)
	}
	return n
}
