package repl

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"time"
)

// Source is the ACTIVE unit's end of replication. It holds the
// authoritative tables, numbers the changes it sends, and serves a sink
// through frames: Handle what the sink sends, Poll what to send. It is not
// safe for concurrent use: one event loop owns it.
//
// Poll returns frames that point into the source's memory: they are valid
// until the next call to Poll.
type Source struct {
	cfg    SourceConfig
	tables []*srcTable
	byName map[string]*srcTable
	last   *srcTable

	seq uint64 // last sequence number sent
	// tracking: a sink holds the stream or is receiving a copy of it, so
	// changes are queued. Without it (no copy was ever completed, or one
	// was cut short) changes only update the tables: the next sink gets a
	// full copy anyway.
	tracking bool
	queue    fifo
	gen      uint8 // the copy generation: a record with gen == s.gen was sent by the current copy
	snap     snapState
	ring     ring

	up, hello   bool   // link up; Hello received on it
	sent, acked uint64 // frame bytes sent and acknowledged on this connection
	ackedSeq    uint64
	inflight    []inflightFrame
	lastDigest  time.Time
	digestDue   bool

	bytesB, entriesB bucket
	throttleWait     time.Time // Poll stopped on the rate limit until then
	windowFull       bool      // Poll stopped on the window

	out       []byte   // frames other than Changes, for one Poll
	lastFrame int      // start in out of the Digest or SnapshotEnd just built
	ops       []byte   // scratch: the ops of the frame being built
	dir       []uint32 // scratch: table ids of the frame being built
	dirPos    []int32  // table id -> index in dir, -1

	peer struct {
		sinkID       uint64
		status       SyncStatus
		seq, entries uint64
	}
	st struct {
		snapshots, resumes, resyncs, frames, bytes, throttled uint64
	}
	in Frame
}

type srcTable struct {
	id    uint32
	name  string
	kv    *kvTable
	tombs int // records that are queued deletes
	// What the sink holds once it applied everything sent: the XOR of
	// EntryHash over its entries, and their number.
	sum   uint64
	count uint64
}

type snapState struct {
	active bool
	begun  bool // SnapshotBegin sent
	copied bool // every table copied; SnapshotEnd to send
	table  int  // index in tables of the table being copied
	cur    cursor
	total  int
	sent   int
	turn   bool // send entries next when changes wait too
}

type inflightFrame struct {
	last   uint64
	oldest int64
}

// NewSource returns a source with empty tables (cfg.Tables created).
func NewSource(cfg SourceConfig) *Source {
	cfg = cfg.withDefaults()
	s := &Source{
		cfg:      cfg,
		byName:   map[string]*srcTable{},
		ring:     newRing(cfg.RetransmitBytes, cfg.MaxFrame),
		bytesB:   newBucket(cfg.MaxRateBytes, cfg.MaxFrame),
		entriesB: newBucket(cfg.MaxRateEntries, max(1, cfg.MaxRateEntries/10)),
	}
	for _, n := range cfg.Tables {
		if len(n) > 0 && len(n) <= MaxTableName {
			s.table(n)
		}
	}
	return s
}

func (s *Source) table(name string) *srcTable {
	if s.last != nil && s.last.name == name {
		return s.last
	}
	t := s.byName[name]
	if t == nil {
		t = &srcTable{id: uint32(len(s.tables)), name: name, kv: newKVTableSize(s.cfg.SizeHints[name])}
		s.tables = append(s.tables, t)
		s.byName[name] = t
		s.dirPos = append(s.dirPos, -1)
	}
	s.last = t
	return t
}

// covered reports whether the sink holds (or will be sent through the
// queue) the record of generation gen. During a copy, records the copy
// has not reached yet are not covered: the sink holds nothing for them.
func (s *Source) covered(gen byte) bool { return !s.snap.active || gen == s.gen }

// Put sets key to value in table. The source copies key and value. It
// fails only for a table name that is empty or longer than 255 bytes, or
// an entry that cannot fit in one frame.
func (s *Source) Put(now time.Time, table string, key, value []byte) error {
	if len(table) == 0 || len(table) > MaxTableName {
		return ErrTableName
	}
	if len(key) > MaxKeyLen || len(value) > MaxValueLen ||
		changesSize(1<<63, 1, 1+len(table), 1, opSize(OpPut, 0, len(key), len(value))) > s.cfg.MaxFrame {
		return fmt.Errorf("%w: %d-byte key and %d-byte value, max frame %d", ErrTooLarge, len(key), len(value), s.cfg.MaxFrame)
	}
	t := s.table(table)
	l := t.kv.find(key)
	if l.ref == 0 {
		if !s.tracking {
			t.kv.insert(l, 0, s.gen, key, value)
			return nil
		}
		t.kv.insert(l, flagDirty, s.gen, key, value)
		s.queue.push(t.id, 0, now.UnixNano(), key)
		return nil
	}
	flags, gen, _, old := t.kv.record(l.ref)
	switch {
	case flags&flagTomb != 0: // a queued delete: the put replaces it
		t.tombs--
		t.kv.setValue(l, flagDirty, gen, value)
	case flags&flagDirty != 0:
		if !bytes.Equal(old, value) {
			t.kv.setValue(l, flags, gen, value)
		}
	case bytes.Equal(old, value):
		// No change.
	case !s.tracking:
		t.kv.setValue(l, flags, gen, value)
	default:
		var sent uint64
		if s.covered(gen) {
			sent = entryHash(key, old)
		}
		t.kv.setValue(l, flagDirty, s.gen, value)
		s.queue.push(t.id, sent, now.UnixNano(), key)
	}
	return nil
}

// Delete removes key from table; an absent key is not an error.
func (s *Source) Delete(now time.Time, table string, key []byte) error {
	if len(table) == 0 || len(table) > MaxTableName {
		return ErrTableName
	}
	t := s.byName[table]
	if t == nil {
		return nil
	}
	l := t.kv.find(key)
	if l.ref == 0 {
		return nil
	}
	flags, gen, _, old := t.kv.record(l.ref)
	switch {
	case flags&flagTomb != 0:
		// Already deleted.
	case flags&flagDirty != 0:
		t.kv.setFlags(l.ref, flags|flagTomb, gen)
		t.tombs++
	case !s.tracking || !s.covered(gen):
		// The sink does not hold it (or no sink will resume): just drop it.
		t.kv.remove(l)
	default:
		sent := entryHash(key, old)
		t.kv.setFlags(l.ref, flagDirty|flagTomb, s.gen)
		t.tombs++
		s.queue.push(t.id, sent, now.UnixNano(), key)
	}
	return nil
}

// Get returns the value of key in table. The slice points into the
// source's memory: valid until the next Put, Delete or Poll.
func (s *Source) Get(table string, key []byte) ([]byte, bool) {
	t := s.byName[table]
	if t == nil {
		return nil, false
	}
	l := t.kv.find(key)
	if l.ref == 0 {
		return nil, false
	}
	flags, _, _, v := t.kv.record(l.ref)
	if flags&flagTomb != 0 {
		return nil, false
	}
	return v, true
}

// Range calls fn for every entry of table until fn returns false. key and
// value are valid during the call only; fn must not change the source.
func (s *Source) Range(table string, fn func(key, value []byte) bool) {
	t := s.byName[table]
	if t == nil {
		return
	}
	t.kv.each(func(_ uint64, flags, _ byte, k, v []byte) bool {
		return flags&flagTomb != 0 || fn(k, v)
	})
}

// Tables returns the names of the source's tables, sorted.
func (s *Source) Tables() []string {
	names := make([]string, 0, len(s.tables))
	for _, t := range s.tables {
		names = append(names, t.name)
	}
	sort.Strings(names)
	return names
}

// Connected tells the source the channel to the sink is up. Nothing is
// sent before the sink's Hello.
func (s *Source) Connected(now time.Time) {
	s.Disconnected(now)
	s.up = true
}

// Disconnected tells the source the channel is down. A copy in progress
// is abandoned; queued changes are kept for a sink that resumes.
func (s *Source) Disconnected(now time.Time) {
	if s.snap.active {
		s.dropQueue()
		s.snap = snapState{}
		s.tracking = false
		for _, t := range s.tables {
			t.kv.pin(cursor{})
		}
	}
	s.up, s.hello = false, false
	s.sent, s.acked = 0, 0
	s.ring.next = len(s.ring.frames)
	s.digestDue = false
	s.throttleWait, s.windowFull = time.Time{}, false
}

// Handle takes one frame from the sink. An error means the frame was
// malformed or is not one a sink sends; the source's state is unchanged.
func (s *Source) Handle(now time.Time, frame []byte) error {
	if err := parseFrame(frame, &s.in, func(p []byte) string { return string(p) }); err != nil {
		return err
	}
	f := &s.in
	switch f.Type {
	case FrameHello:
		s.onHello(now, f)
	case FrameAck:
		if f.Seq > s.ackedSeq && f.Seq <= s.seq {
			s.ackedSeq = f.Seq
			s.trimInflight()
		}
		s.peer.seq = f.Seq
		if f.Received > s.acked {
			s.acked = min(f.Received, s.sent)
		}
	case FrameResync:
		s.st.resyncs++
		if s.hello {
			s.startSnapshot()
		}
	case FrameStatus:
		s.peer.status, s.peer.seq, s.peer.entries = f.Status, f.Seq, f.Entries
	default:
		return fmt.Errorf("repl: source: unexpected %v frame (sent by a source, not a sink)", f.Type)
	}
	return nil
}

func (s *Source) onHello(now time.Time, f *Frame) {
	s.up, s.hello = true, true
	s.peer.sinkID = f.SinkID
	s.ring.next = len(s.ring.frames)
	if !f.Full && f.SourceID == s.cfg.SourceID && s.tracking && !s.snap.active &&
		f.Seq <= s.seq && s.ring.seek(f.Seq) {
		if f.Seq > s.ackedSeq {
			s.ackedSeq = f.Seq
			s.trimInflight()
		}
		s.digestDue = true // tells the sink it resumed, and checks it
		s.st.resumes++
		return
	}
	s.startSnapshot()
}

func (s *Source) trimInflight() {
	i := 0
	for i < len(s.inflight) && s.inflight[i].last <= s.ackedSeq {
		i++
	}
	s.inflight = s.inflight[:copy(s.inflight, s.inflight[i:])]
}

// dropQueue forgets the queued changes: a copy will carry every key.
func (s *Source) dropQueue() {
	for {
		it, ok := s.queue.peek()
		if !ok {
			break
		}
		t := s.tables[it.table]
		if l := t.kv.find(it.key); l.ref != 0 {
			flags, gen, _, _ := t.kv.record(l.ref)
			if flags&flagTomb != 0 {
				t.tombs--
				t.kv.remove(l)
			} else {
				t.kv.setFlags(l.ref, flags&^flagDirty, gen)
			}
		}
		s.queue.pop(it)
	}
	s.queue.reset()
}

// startSnapshot begins a full copy on the current connection.
func (s *Source) startSnapshot() {
	s.dropQueue()
	s.gen++
	if s.gen == 0 {
		// Generations wrapped: mark every record as not copied.
		for _, t := range s.tables {
			t.kv.each(func(ref uint64, flags, _ byte, _, _ []byte) bool {
				t.kv.setFlags(ref, flags, 0)
				return true
			})
		}
		s.gen = 1
	}
	total := 0
	for _, t := range s.tables {
		t.sum, t.count = 0, 0
		t.kv.pin(cursor{})
		total += t.kv.live - t.tombs
	}
	s.snap = snapState{active: true, total: total}
	s.tracking = true
	s.ring.reset(s.seq)
	s.inflight = s.inflight[:0]
	s.ackedSeq = s.seq
	s.digestDue = false
	s.st.snapshots++
}

// Poll appends to out the frames to send now, and returns it. Call it after
// every input (Put, Delete, Handle, Connected) and at NextDeadline.
func (s *Source) Poll(now time.Time, out [][]byte) [][]byte {
	s.out = s.out[:0]
	s.ring.startPoll()
	s.bytesB.refill(now)
	s.entriesB.refill(now)
	s.throttleWait, s.windowFull = time.Time{}, false
	if !s.up || !s.hello {
		return out
	}
	if s.tracking && !now.Before(s.lastDigest.Add(s.cfg.DigestEvery)) {
		s.digestDue = true
	}
	for {
		f, more := s.step(now)
		if f != nil {
			out = append(out, f)
		}
		if !more {
			break
		}
	}
	if !s.throttleWait.IsZero() {
		s.st.throttled++
	}
	s.ring.trim()
	return out
}

// step sends at most one frame; more is false when Poll must stop.
func (s *Source) step(now time.Time) (frame []byte, more bool) {
	switch {
	case s.ring.pending():
		f := s.ring.frames[s.ring.next]
		b := s.ring.frame(s.ring.next)
		if !s.allow(len(b), int(f.last-f.first+1)) {
			return nil, false
		}
		s.ring.next++
		return b, true
	case s.snap.active && !s.snap.begun:
		start := len(s.out)
		s.out = append(s.out, 'T', 'R', Version, byte(FrameSnapshotBegin))
		s.out = binary.BigEndian.AppendUint64(s.out, s.cfg.SourceID)
		s.out = binary.AppendUvarint(s.out, s.seq)
		s.out = binary.AppendUvarint(s.out, uint64(len(s.tables)))
		for _, t := range s.tables {
			s.out = appendName(s.out, t.name)
		}
		if !s.allow(len(s.out)-start, 0) {
			s.out = s.out[:start]
			return nil, false
		}
		s.snap.begun = true
		return s.out[start:len(s.out):len(s.out)], true
	case s.snap.active && s.snap.copied:
		if !s.sendDigest(now, FrameSnapshotEnd, false) {
			return nil, false
		}
		s.snap = snapState{}
		for _, t := range s.tables {
			t.kv.pin(cursor{})
		}
		s.ring.reset(s.seq)
		return s.out[s.lastFrame:len(s.out):len(s.out)], true
	case s.digestDue && (!s.snap.active || s.snap.begun):
		if !s.sendDigest(now, FrameDigest, s.snap.active) {
			return nil, false
		}
		return s.out[s.lastFrame:len(s.out):len(s.out)], true
	}
	entries := s.snap.active && (s.queue.n == 0 || s.snap.turn)
	if !entries && s.queue.n == 0 {
		return nil, false
	}
	budget, budgetE, ok := s.budget()
	if !ok {
		return nil, false
	}
	var b []byte
	var need, n int
	if entries {
		b, n, need = s.buildEntries(budget, budgetE)
		s.snap.turn = false
	} else {
		b, n, need = s.buildChanges(budget, budgetE)
		s.snap.turn = true
	}
	if b == nil {
		if need > 0 {
			s.blockedOn(need)
			return nil, false
		}
		return nil, true // nothing to send of this kind (merged away, or the copy reached its end)
	}
	s.account(len(b), n)
	return b, true
}

// budget is what the next data frame may hold: bytes and entries.
func (s *Source) budget() (bytes, entries int, ok bool) {
	bytes = s.cfg.MaxFrame
	if inflight := int(s.sent - s.acked); inflight > 0 {
		bytes = min(bytes, s.cfg.Window-inflight)
		if bytes < minMaxFrame/2 {
			s.windowFull = true
			return 0, 0, false
		}
	}
	entries = s.entriesB.avail()
	if s.bytesB.on() {
		// Throttled traffic goes in chunks of a hundredth of the rate, not
		// in a frame per change.
		chunk := min(s.cfg.MaxFrame, max(minMaxFrame, s.cfg.MaxRateBytes/100))
		if avail := s.bytesB.avail(); avail < chunk && avail < bytes {
			s.throttleWait = s.bytesB.when(min(chunk, bytes))
			return 0, 0, false
		}
		bytes = min(bytes, s.bytesB.avail())
	}
	if s.entriesB.on() {
		chunk := max(1, s.cfg.MaxRateEntries/100)
		if entries < chunk {
			s.throttleWait = s.entriesB.when(chunk)
			return 0, 0, false
		}
	}
	return bytes, entries, true
}

// blockedOn records why a frame of need bytes could not go.
func (s *Source) blockedOn(need int) {
	if inflight := int(s.sent - s.acked); inflight > 0 && inflight+need > s.cfg.Window {
		s.windowFull = true
		return
	}
	if s.bytesB.on() && need > s.bytesB.avail() {
		s.throttleWait = s.bytesB.when(need)
		return
	}
	s.windowFull = true // cannot happen: need fits a frame
}

// allow checks a frame of n bytes and e entries against the window and the
// rate limits, and accounts for it when it may go.
func (s *Source) allow(n, e int) bool {
	if inflight := int(s.sent - s.acked); inflight > 0 && inflight+n > s.cfg.Window {
		s.windowFull = true
		return false
	}
	if need := min(n, s.cfg.MaxFrame); need > s.bytesB.avail() {
		s.throttleWait = s.bytesB.when(need)
		return false
	}
	if e > 0 && s.entriesB.on() && min(e, int(s.entriesB.burst)) > s.entriesB.avail() {
		s.throttleWait = s.entriesB.when(min(e, int(s.entriesB.burst)))
		return false
	}
	s.account(n, e)
	return true
}

func (s *Source) account(n, e int) {
	s.bytesB.take(n)
	s.entriesB.take(e)
	s.sent += uint64(n)
	s.st.frames++
	s.st.bytes += uint64(n)
}

func changesSize(first uint64, ntables, dirBytes, nops, opsBytes int) int {
	return headerLen + 8 + uvarintLen(first) + uvarintLen(uint64(ntables)) + dirBytes + uvarintLen(uint64(nops)) + opsBytes
}

func entriesSize(ntables, dirBytes, n, entBytes int) int {
	return headerLen + uvarintLen(uint64(ntables)) + dirBytes + uvarintLen(uint64(n)) + entBytes
}

// buildChanges takes queued changes into a Changes frame of at most
// budget bytes and budgetE ops, kept in the retransmit window. It returns
// the frame and its number of ops, or need > 0: the size of a frame of the
// first change, when even that does not fit.
func (s *Source) buildChanges(budget, budgetE int) (frame []byte, n, need int) {
	first := s.seq + 1
	s.ops, s.dir = s.ops[:0], s.dir[:0]
	dirBytes := 0
	var oldest int64
	for n < budgetE {
		it, ok := s.queue.peek()
		if !ok {
			break
		}
		t := s.tables[it.table]
		l := t.kv.find(it.key)
		if l.ref == 0 {
			s.queue.pop(it) // cannot happen: a queued key keeps its record
			continue
		}
		flags, gen, key, val := t.kv.record(l.ref)
		kind, h := OpPut, uint64(0)
		if flags&flagTomb != 0 {
			if it.sent == 0 { // put and deleted before the sink heard of it
				t.tombs--
				t.kv.remove(l)
				s.queue.pop(it)
				continue
			}
			kind = OpDelete
		} else if h = entryHash(key, val); h == it.sent { // changed back
			t.kv.setFlags(l.ref, flags&^flagDirty, gen)
			s.queue.pop(it)
			continue
		}
		di := int(s.dirPos[t.id])
		add := 0
		if di < 0 {
			di, add = len(s.dir), 1+len(t.name)
		}
		size := changesSize(first, len(s.dir)+min(add, 1), dirBytes+add, n+1, len(s.ops)+opSize(kind, di, len(key), len(val)))
		if size > budget {
			if n == 0 {
				need = size
			}
			break
		}
		if add > 0 {
			s.dirPos[t.id] = int32(di)
			s.dir = append(s.dir, t.id)
			dirBytes += add
		}
		s.ops = appendOp(s.ops, kind, di, key, val, it.sent)
		if n == 0 {
			oldest = it.at
		}
		n++
		if kind == OpDelete {
			t.sum ^= it.sent
			t.count--
			t.tombs--
			t.kv.remove(l)
		} else {
			t.sum ^= it.sent ^ h
			if it.sent == 0 {
				t.count++
			}
			t.kv.setFlags(l.ref, flags&^flagDirty, gen)
		}
		s.queue.pop(it)
	}
	for _, id := range s.dir {
		s.dirPos[id] = -1
	}
	if n == 0 {
		return nil, 0, need
	}
	size := changesSize(first, len(s.dir), dirBytes, n, len(s.ops))
	s.seq += uint64(n)
	b := s.ring.alloc(size, first, s.seq)
	w := append(b[:0], 'T', 'R', Version, byte(FrameChanges))
	w = binary.BigEndian.AppendUint64(w, s.cfg.SourceID)
	w = binary.AppendUvarint(w, first)
	w = binary.AppendUvarint(w, uint64(len(s.dir)))
	for _, id := range s.dir {
		w = appendName(w, s.tables[id].name)
	}
	w = binary.AppendUvarint(w, uint64(n))
	w = append(w, s.ops...)
	if len(w) != size {
		panic(fmt.Sprintf("repl: Changes frame of %d bytes, computed %d", len(w), size))
	}
	s.ring.next = len(s.ring.frames)
	s.inflight = append(s.inflight, inflightFrame{last: s.seq, oldest: oldest})
	return b, n, 0
}

// buildEntries takes the next entries of the copy into an Entries frame
// (one table per frame). It returns nil with need 0 when the copy is done.
func (s *Source) buildEntries(budget, budgetE int) (frame []byte, n, need int) {
	for s.snap.table < len(s.tables) {
		t := s.tables[s.snap.table]
		s.ops = s.ops[:0]
		dirBytes := 1 + len(t.name)
		for n < budgetE {
			ref, after, ok := t.kv.next(s.snap.cur)
			if !ok {
				break
			}
			flags, gen, key, val := t.kv.record(ref)
			if flags&flagDirty != 0 || gen == s.gen {
				// Queued, or already copied: the queue or the copy sent it.
				s.snap.cur = after
				continue
			}
			size := entriesSize(1, dirBytes, n+1, len(s.ops)+entrySize(0, len(key), len(val)))
			if size > budget {
				if n == 0 {
					t.kv.pin(s.snap.cur)
					return nil, 0, size
				}
				break
			}
			s.ops = binary.AppendUvarint(s.ops, 0)
			s.ops = appendBytes(s.ops, key)
			s.ops = appendBytes(s.ops, val)
			t.kv.setFlags(ref, flags, s.gen)
			t.sum ^= entryHash(key, val)
			t.count++
			n++
			s.snap.sent++
			s.snap.cur = after
		}
		if n > 0 {
			t.kv.pin(s.snap.cur)
			start := len(s.out)
			s.out = append(s.out, 'T', 'R', Version, byte(FrameEntries), 1)
			s.out = appendName(s.out, t.name)
			s.out = binary.AppendUvarint(s.out, uint64(n))
			s.out = append(s.out, s.ops...)
			return s.out[start:len(s.out):len(s.out)], n, 0
		}
		// This table is done.
		t.kv.pin(cursor{})
		s.snap.table++
		s.snap.cur = cursor{}
	}
	s.snap.copied = true
	return nil, 0, 0
}

// sendDigest sends a Digest or SnapshotEnd frame of every table at the
// current sequence number (a Digest during a copy has no tables), into
// s.out from s.lastFrame. It is not held by the window: small, periodic,
// and the frame that re-bases the sink's byte count.
func (s *Source) sendDigest(now time.Time, typ FrameType, copying bool) bool {
	start := len(s.out)
	s.out = append(s.out, 'T', 'R', Version, byte(typ))
	s.out = binary.BigEndian.AppendUint64(s.out, s.cfg.SourceID)
	s.out = append(s.out, b2u8(copying))
	s.out = binary.AppendUvarint(s.out, s.sent)
	s.out = binary.AppendUvarint(s.out, s.seq)
	if copying {
		s.out = append(s.out, 0)
	} else {
		s.out = binary.AppendUvarint(s.out, uint64(len(s.tables)))
		for _, t := range s.tables {
			s.out = appendName(s.out, t.name)
			s.out = binary.AppendUvarint(s.out, t.count)
			s.out = binary.BigEndian.AppendUint64(s.out, t.sum)
		}
	}
	if n := len(s.out) - start; min(n, s.cfg.MaxFrame) > s.bytesB.avail() {
		s.throttleWait = s.bytesB.when(min(n, s.cfg.MaxFrame))
		s.out = s.out[:start]
		return false
	} else {
		s.account(n, 0)
	}
	s.lastFrame = start
	s.digestDue = false
	s.lastDigest = now
	return true
}

// NextDeadline returns when Poll must be called next if nothing else
// happens: now when frames wait to be sent, the end of a rate-limit wait,
// or the next Digest; zero when only an input can create work (the link
// is down, or the window waits for an Ack).
func (s *Source) NextDeadline(now time.Time) time.Time {
	if !s.up || !s.hello {
		return time.Time{}
	}
	var d time.Time
	if s.ring.pending() || s.snap.active || s.queue.n > 0 || s.digestDue {
		switch {
		case !s.throttleWait.IsZero():
			d = s.throttleWait
		case s.windowFull:
		default:
			d = now
		}
	}
	if s.tracking && !s.digestDue {
		if t := s.lastDigest.Add(s.cfg.DigestEvery); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	if !d.IsZero() && d.Before(now) {
		d = now
	}
	return d
}

// Stats returns the source's counters and lag at now.
func (s *Source) Stats(now time.Time) SourceStats {
	st := SourceStats{
		SourceID:       s.cfg.SourceID,
		Connected:      s.up && s.hello,
		PeerSinkID:     s.peer.sinkID,
		PeerStatus:     s.peer.status,
		PeerSeq:        s.peer.seq,
		PeerEntries:    s.peer.entries,
		Seq:            s.seq,
		AckedSeq:       s.ackedSeq,
		Queued:         s.queue.n,
		LagEntries:     s.seq - s.ackedSeq + uint64(s.queue.n),
		LagBytes:       int(s.sent - s.acked),
		Snapshot:       s.snap.active,
		SnapshotSent:   s.snap.sent,
		SnapshotTotal:  s.snap.total,
		Snapshots:      s.st.snapshots,
		Resumes:        s.st.resumes,
		Resyncs:        s.st.resyncs,
		FramesSent:     s.st.frames,
		BytesSent:      s.st.bytes,
		Throttled:      !s.throttleWait.IsZero(),
		ThrottledWaits: s.st.throttled,
		Memory:         s.queue.memory() + s.ring.memory() + cap(s.out) + cap(s.ops),
	}
	oldest := int64(0)
	if len(s.inflight) > 0 {
		oldest = s.inflight[0].oldest
	} else if it, ok := s.queue.peek(); ok {
		oldest = it.at
	}
	if oldest != 0 {
		st.LagAge = max(0, now.Sub(time.Unix(0, oldest)))
	}
	for _, t := range s.tables {
		st.Tables = append(st.Tables, TableStats{Name: t.name, Entries: t.kv.live - t.tombs, Digest: t.sum, Bytes: t.kv.memory()})
		st.Memory += t.kv.memory()
	}
	return st
}
