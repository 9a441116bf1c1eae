package repl

import (
	"encoding/binary"
	"fmt"
	"sort"
	"time"
)

// Sink is the STANDBY unit's end of replication: it applies the source's
// stream to a [Store], checks it against the source's digests, asks for a
// full copy when it finds a gap or a mismatch, and reports its
// [SyncStatus]. It is not safe for concurrent use: one event loop owns it.
//
// A new Sink holds nothing it can vouch for (its digests live in memory),
// so its first Hello asks for a full copy: a restarted standby always
// receives the entire state.
//
// Poll returns frames that point into the sink's memory: they are valid
// until the next call to Poll.
type Sink struct {
	cfg    SinkConfig
	store  Store
	ranger Ranger
	tables map[string]*sinkTable
	list   []*sinkTable
	dir    []*sinkTable
	in     Frame

	mode      sinkMode
	sourceID  uint64
	seq       uint64 // last sequence number applied
	status    SyncStatus
	connected bool
	downSince time.Time

	sendHello, sendResync bool
	reason                ResyncReason
	waiting, waitFull     bool // a Hello or Resync waits for its answer
	askedHello            bool // the request waiting is a Hello
	askedAt               time.Time
	retries               int

	received  uint64 // frame bytes received on this connection
	ackedRecv uint64
	ackedSeq  uint64
	lastAck   time.Time
	statusDue bool
	lastAudit time.Time
	checkGen  uint64

	out []byte
	st  struct {
		snapshots, snapEntries, resumes, gaps, mismatches, audits, malformed, retries, frames, bytes, lost uint64
		lastDigest                                                                                         time.Time
	}

	// ignoreGaps is a planted bug for the simulator's negative control: the
	// sink applies a Changes frame that does not follow the last one.
	ignoreGaps bool
}

type sinkMode uint8

const (
	modeIdle     sinkMode = iota // holds nothing usable, has not asked yet
	modeAwait                    // asked for a full copy, waits for SnapshotBegin
	modeSnapshot                 // receiving a full copy
	modeStream                   // holds sourceID's state at seq
)

type sinkTable struct {
	name  string
	sum   uint64 // XOR of EntryHash over the entries applied
	count uint64
	seen  uint64 // checkGen of the last digest check that listed it
}

// NewSink returns a sink that applies to store.
func NewSink(cfg SinkConfig, store Store) *Sink {
	k := &Sink{cfg: cfg.withDefaults(), store: store, tables: map[string]*sinkTable{}}
	k.ranger, _ = store.(Ranger)
	return k
}

func (k *Sink) table(name string) *sinkTable {
	t := k.tables[name]
	if t == nil {
		t = &sinkTable{name: name}
		k.tables[name] = t
		k.list = append(k.list, t)
	}
	return t
}

// intern returns the sink's copy of a table name, allocating only for a
// name it has not seen.
func (k *Sink) intern(p []byte) string {
	if t, ok := k.tables[string(p)]; ok {
		return t.name
	}
	return string(p)
}

// Status returns the sync status as of the last call that was given a time.
func (k *Sink) Status() SyncStatus { return k.status }

func (k *Sink) setStatus(s SyncStatus) {
	if k.status != s {
		k.status = s
		k.statusDue = true
	}
}

// Connected tells the sink the channel to the source is up: its next Poll
// says Hello.
func (k *Sink) Connected(now time.Time) {
	k.Disconnected(now)
	k.connected = true
	k.received, k.ackedRecv, k.ackedSeq = 0, 0, 0
	k.lastAck = now
	k.sendHello = true
	k.retries = 0
	if k.mode != modeStream {
		k.setStatus(SyncOutOfSync)
	}
}

// Disconnected tells the sink the channel is down. A copy in progress is
// lost; a complete one is kept for the source to resume.
func (k *Sink) Disconnected(now time.Time) {
	if k.connected {
		k.downSince = now
	}
	k.connected = false
	if k.mode == modeSnapshot || k.mode == modeAwait {
		k.mode = modeIdle
		k.setStatus(SyncOutOfSync)
	}
	k.sendHello, k.sendResync, k.waiting = false, false, false
	k.tick(now)
}

// resync gives up the state held and asks for a full copy.
func (k *Sink) resync(reason ResyncReason) {
	k.setStatus(SyncOutOfSync)
	if !k.connected {
		k.mode = modeIdle
		return
	}
	if k.mode == modeAwait && (k.waiting || k.sendResync || k.sendHello) {
		return // already asked
	}
	k.mode = modeAwait
	if !k.sendHello {
		k.sendResync, k.reason = true, reason
	}
}

// Handle applies one frame from the source. An error means the frame was
// malformed or broke the protocol: the store was not touched by it, and
// the sink has already asked for a full copy. Gaps and digest mismatches
// are not errors: the sink handles them the same way and counts them.
func (k *Sink) Handle(now time.Time, frame []byte) error {
	k.received += uint64(len(frame))
	k.st.frames++
	k.st.bytes += uint64(len(frame))
	k.tick(now)
	if err := parseFrame(frame, &k.in, k.intern); err != nil {
		k.st.malformed++
		k.resync(ReasonMalformed)
		return err
	}
	f := &k.in
	switch f.Type {
	case FrameSnapshotBegin:
		k.onBegin(f)
	case FrameEntries:
		if k.mode == modeStream {
			// A copy whose SnapshotBegin was lost: what follows is not
			// the stream this sink holds.
			k.st.gaps++
			k.resync(ReasonGap)
		}
		if k.mode == modeSnapshot {
			k.resolve(f.Tables)
			for i := range f.Ops {
				op := &f.Ops[i]
				t := k.dir[op.Table]
				k.store.Put(t.name, op.Key, op.Value)
				t.sum ^= entryHash(op.Key, op.Value)
				t.count++
			}
			k.st.snapEntries += uint64(len(f.Ops))
		}
	case FrameChanges:
		return k.onChanges(f)
	case FrameSnapshotEnd, FrameDigest:
		// Re-base the byte count on the source's: bytes lost on the way
		// must not hold the source's window shut.
		if before := k.received - uint64(len(frame)); f.Sent != before {
			k.st.lost += f.Sent - before
			k.received = f.Sent + uint64(len(frame))
		}
		return k.onDigest(now, f)
	default:
		k.st.malformed++
		k.resync(ReasonMalformed)
		return fmt.Errorf("repl: sink: unexpected %v frame (sent by a sink, not a source)", f.Type)
	}
	return nil
}

func (k *Sink) resolve(names []string) {
	k.dir = k.dir[:0]
	for _, n := range names {
		k.dir = append(k.dir, k.table(n))
	}
}

func (k *Sink) onBegin(f *Frame) {
	for _, n := range f.Tables {
		k.table(n)
	}
	for _, t := range k.list {
		k.store.Reset(t.name)
		t.sum, t.count = 0, 0
	}
	k.mode = modeSnapshot
	k.sourceID, k.seq = f.SourceID, f.Seq
	k.sendResync, k.waiting, k.retries = false, false, 0
	k.setStatus(SyncOutOfSync)
	k.st.snapshots++
	k.st.snapEntries = 0
}

func (k *Sink) onChanges(f *Frame) error {
	if k.mode != modeStream && k.mode != modeSnapshot {
		return nil // waiting for a full copy: what came before it does not matter
	}
	if f.SourceID != k.sourceID {
		k.st.malformed++
		k.resync(ReasonMalformed)
		return fmt.Errorf("repl: sink: Changes of source %#x in the stream of source %#x", f.SourceID, k.sourceID)
	}
	if len(f.Ops) == 0 {
		return nil
	}
	skip := 0
	switch {
	case f.Seq > k.seq+1:
		k.st.gaps++
		if !k.ignoreGaps {
			k.resync(ReasonGap)
			return nil
		}
	case f.Seq <= k.seq:
		// Resent after a reconnection: skip what was applied.
		if k.seq-f.Seq >= uint64(len(f.Ops)) {
			return nil
		}
		skip = int(k.seq - f.Seq + 1)
	}
	k.resolve(f.Tables)
	for i := skip; i < len(f.Ops); i++ {
		op := &f.Ops[i]
		t := k.dir[op.Table]
		if op.Kind == OpPut {
			k.store.Put(t.name, op.Key, op.Value)
			t.sum ^= op.OldHash ^ entryHash(op.Key, op.Value)
			if op.OldHash == 0 {
				t.count++
			}
		} else {
			k.store.Delete(t.name, op.Key)
			t.sum ^= op.OldHash
			if op.OldHash != 0 {
				t.count--
			}
		}
	}
	k.seq = f.Seq + uint64(len(f.Ops)) - 1
	return nil
}

// onDigest checks a SnapshotEnd or a Digest. A Digest during a copy means
// its SnapshotEnd was lost: the source sends Digests only between copies,
// so the digest decides whether the copy is complete.
func (k *Sink) onDigest(now time.Time, f *Frame) error {
	if k.mode != modeStream && k.mode != modeSnapshot {
		return nil
	}
	if k.mode == modeStream && (f.Copying || f.Type == FrameSnapshotEnd) {
		// A copy whose SnapshotBegin was lost.
		k.st.gaps++
		k.resync(ReasonGap)
		return nil
	}
	if f.SourceID != k.sourceID {
		k.st.malformed++
		k.resync(ReasonMalformed)
		return fmt.Errorf("repl: sink: %v of source %#x in the stream of source %#x", f.Type, f.SourceID, k.sourceID)
	}
	if f.Seq != k.seq {
		// Changes before it were lost.
		k.st.gaps++
		k.resync(ReasonGap)
		return nil
	}
	if f.Copying {
		return nil // a copy in progress: nothing to compare yet
	}
	if k.mode == modeStream && k.waiting && !k.waitFull {
		k.st.resumes++
	}
	k.waiting = false
	k.mode = modeStream
	k.st.lastDigest = now
	k.statusDue = true
	if !k.matches(f.Digests, func(t *sinkTable) (uint64, uint64) { return t.count, t.sum }) {
		k.st.mismatches++
		k.resync(ReasonMismatch)
		return nil
	}
	if k.ranger != nil && k.cfg.AuditEvery > 0 && !now.Before(k.lastAudit.Add(k.cfg.AuditEvery)) {
		k.lastAudit = now
		if !k.matches(f.Digests, k.scan) {
			k.st.audits++
			k.resync(ReasonAudit)
			return nil
		}
	}
	if k.connected {
		k.setStatus(SyncInSync)
	}
	return nil
}

// matches compares the source's digests with what state returns for each
// table; tables the source does not list must be empty.
func (k *Sink) matches(ds []TableDigest, state func(*sinkTable) (count, sum uint64)) bool {
	k.checkGen++
	for _, d := range ds {
		t := k.table(d.Table)
		t.seen = k.checkGen
		if c, s := state(t); c != d.Entries || s != d.Sum {
			return false
		}
	}
	for _, t := range k.list {
		if t.seen != k.checkGen {
			if c, s := state(t); c != 0 || s != 0 {
				return false
			}
		}
	}
	return true
}

// scan computes a table's digest from the store itself.
func (k *Sink) scan(t *sinkTable) (count, sum uint64) {
	k.ranger.Range(t.name, func(key, value []byte) bool {
		count++
		sum ^= entryHash(key, value)
		return true
	})
	return count, sum
}

// tick lets time pass: the out-of-sync timeout and request retries.
func (k *Sink) tick(now time.Time) {
	if !k.connected {
		if k.status == SyncInSync && !now.Before(k.downSince.Add(k.cfg.OutOfSyncAfter)) {
			k.setStatus(SyncOutOfSync)
		}
		return
	}
	if k.waiting && !now.Before(k.askedAt.Add(k.retryAfter())) {
		k.waiting = false
		k.retries++
		k.st.retries++
		if k.askedHello {
			k.sendHello = true
		} else {
			k.sendResync, k.reason = true, ReasonRetry
		}
	}
}

func (k *Sink) retryAfter() time.Duration { return k.cfg.RetryAfter << min(k.retries, 3) }

// Poll appends to out the frames to send now (Hello, Resync, Ack, Status)
// and returns it. Call it after every input and at NextDeadline.
func (k *Sink) Poll(now time.Time, out [][]byte) [][]byte {
	k.tick(now)
	k.out = k.out[:0]
	if !k.connected {
		return out
	}
	be := binary.BigEndian
	emit := func(start int) {
		out = append(out, k.out[start:len(k.out):len(k.out)])
	}
	switch {
	case k.sendHello:
		full := k.mode != modeStream
		start := len(k.out)
		k.out = append(k.out, 'T', 'R', Version, byte(FrameHello))
		k.out = be.AppendUint64(k.out, k.cfg.SinkID)
		k.out = append(k.out, b2u8(full))
		var src, seq uint64
		if !full {
			src, seq = k.sourceID, k.seq
		}
		k.out = be.AppendUint64(k.out, src)
		k.out = binary.AppendUvarint(k.out, seq)
		emit(start)
		if full {
			k.mode = modeAwait
		}
		k.sendHello, k.sendResync = false, false
		k.waiting, k.waitFull, k.askedHello, k.askedAt = true, full, true, now
	case k.sendResync:
		start := len(k.out)
		k.out = append(k.out, 'T', 'R', Version, byte(FrameResync), byte(k.reason))
		emit(start)
		k.sendResync = false
		k.waiting, k.waitFull, k.askedHello, k.askedAt = true, true, false, now
	}
	seq := k.ackSeq()
	if k.received != k.ackedRecv || seq != k.ackedSeq || !now.Before(k.lastAck.Add(k.cfg.AckEvery)) {
		start := len(k.out)
		k.out = append(k.out, 'T', 'R', Version, byte(FrameAck))
		k.out = binary.AppendUvarint(k.out, seq)
		k.out = binary.AppendUvarint(k.out, k.received)
		emit(start)
		k.ackedRecv, k.ackedSeq, k.lastAck = k.received, seq, now
	}
	if k.statusDue {
		start := len(k.out)
		k.out = append(k.out, 'T', 'R', Version, byte(FrameStatus), byte(k.status))
		k.out = be.AppendUint64(k.out, k.sourceID)
		k.out = binary.AppendUvarint(k.out, seq)
		k.out = binary.AppendUvarint(k.out, k.entries())
		emit(start)
		k.statusDue = false
	}
	return out
}

// ackSeq is the sequence number to acknowledge: 0 while nothing of the
// current stream is held.
func (k *Sink) ackSeq() uint64 {
	if k.mode == modeStream || k.mode == modeSnapshot {
		return k.seq
	}
	return 0
}

func (k *Sink) entries() uint64 {
	n := uint64(0)
	for _, t := range k.list {
		n += t.count
	}
	return n
}

func b2u8(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// NextDeadline returns when Poll must be called next if nothing else
// happens: now when a frame waits, the next keepalive Ack, a request retry,
// or the moment the link has been down for OutOfSyncAfter; zero for none.
func (k *Sink) NextDeadline(now time.Time) time.Time {
	if !k.connected {
		if k.status == SyncInSync {
			return later(now, k.downSince.Add(k.cfg.OutOfSyncAfter))
		}
		return time.Time{}
	}
	if k.sendHello || k.sendResync || k.statusDue || k.received != k.ackedRecv || k.ackSeq() != k.ackedSeq {
		return now
	}
	d := k.lastAck.Add(k.cfg.AckEvery)
	if k.waiting {
		if r := k.askedAt.Add(k.retryAfter()); r.Before(d) {
			d = r
		}
	}
	return later(now, d)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Stats returns the sink's counters.
func (k *Sink) Stats() SinkStats {
	st := SinkStats{
		SinkID:          k.cfg.SinkID,
		Status:          k.status,
		Connected:       k.connected,
		Valid:           k.mode == modeStream,
		SourceID:        k.sourceID,
		Seq:             k.seq,
		Snapshot:        k.mode == modeSnapshot,
		SnapshotEntries: k.st.snapEntries,
		Entries:         k.entries(),
		Snapshots:       k.st.snapshots,
		Resumes:         k.st.resumes,
		Gaps:            k.st.gaps,
		Mismatches:      k.st.mismatches,
		AuditMismatches: k.st.audits,
		Malformed:       k.st.malformed,
		Retries:         k.st.retries,
		LastDigestAt:    k.st.lastDigest,
		LostBytes:       k.st.lost,
		FramesReceived:  k.st.frames,
		BytesReceived:   k.st.bytes,
	}
	for _, t := range k.list {
		st.Tables = append(st.Tables, TableStats{Name: t.name, Entries: int(t.count), Digest: t.sum})
	}
	sort.Slice(st.Tables, func(i, j int) bool { return st.Tables[i].Name < st.Tables[j].Name })
	return st
}
