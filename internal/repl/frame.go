package repl

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the frame format version, carried in every frame.
const Version = 1

// Protocol limits, checked by ParseFrame and by Source.Put.
const (
	MaxTableName = 255     // bytes in a table name (at least 1)
	MaxKeyLen    = 1 << 16 // bytes in a key
	MaxValueLen  = 1 << 20 // bytes in a value
)

// headerLen is magic "TR", version, type.
const headerLen = 4

// FrameType says what a frame is.
type FrameType uint8

// Frame types. The direction is in the comment: source → sink or back.
const (
	FrameHello         FrameType = 1 // sink → source: who I am, what I hold
	FrameSnapshotBegin FrameType = 2 // source → sink: drop everything, a full copy follows
	FrameEntries       FrameType = 3 // source → sink: a chunk of the full copy
	FrameSnapshotEnd   FrameType = 4 // source → sink: the copy is complete; digests
	FrameChanges       FrameType = 5 // source → sink: a batch of changes, numbered from Seq
	FrameAck           FrameType = 6 // sink → source: applied up to Seq, received bytes
	FrameDigest        FrameType = 7 // source → sink: per-table digests at Seq
	FrameResync        FrameType = 8 // sink → source: send me a full copy
	FrameStatus        FrameType = 9 // sink → source: my sync status and counts
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "Hello"
	case FrameSnapshotBegin:
		return "SnapshotBegin"
	case FrameEntries:
		return "Entries"
	case FrameSnapshotEnd:
		return "SnapshotEnd"
	case FrameChanges:
		return "Changes"
	case FrameAck:
		return "Ack"
	case FrameDigest:
		return "Digest"
	case FrameResync:
		return "Resync"
	case FrameStatus:
		return "Status"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// OpKind is the kind of one operation in a Changes frame.
type OpKind uint8

const (
	OpPut    OpKind = 1
	OpDelete OpKind = 2
)

func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one operation of a Changes frame, or one entry of an Entries frame
// (Kind OpPut, OldHash 0). Key and Value of a parsed frame point into the
// frame's bytes.
type Op struct {
	Kind  OpKind
	Table int // index into Frame.Tables
	Key   []byte
	Value []byte // OpPut only
	// OldHash is the EntryHash of the entry this operation replaces or
	// removes, as the receiver holds it; 0 when it holds none. It lets the
	// sink keep its digest without storing a hash per key.
	OldHash uint64
}

// TableDigest is the state of one table at a sequence number: its number
// of entries and the XOR of EntryHash over them.
type TableDigest struct {
	Table   string
	Entries uint64
	Sum     uint64
}

// ResyncReason says why a sink asks for a full copy.
type ResyncReason uint8

const (
	ReasonGap       ResyncReason = 1 // a Changes frame did not follow the last applied
	ReasonMismatch  ResyncReason = 2 // the sink's digest differs from the source's
	ReasonMalformed ResyncReason = 3 // a frame failed to parse or broke the protocol
	ReasonAudit     ResyncReason = 4 // the store itself differs from the source's digest
	ReasonRetry     ResyncReason = 5 // an earlier request got no answer
	maxReason                    = ReasonRetry
)

func (r ResyncReason) String() string {
	switch r {
	case ReasonGap:
		return "gap"
	case ReasonMismatch:
		return "digest mismatch"
	case ReasonMalformed:
		return "malformed frame"
	case ReasonAudit:
		return "store audit mismatch"
	case ReasonRetry:
		return "retry"
	}
	return fmt.Sprintf("ResyncReason(%d)", uint8(r))
}

// Frame is any frame, decoded. Each type uses some fields (see the layout in
// the package documentation); AppendFrame ignores the others, and
// ParseFrame leaves them zero.
type Frame struct {
	Type     FrameType
	SinkID   uint64 // Hello
	SourceID uint64 // Hello, SnapshotBegin, SnapshotEnd, Changes, Digest, Status
	Full     bool   // Hello: the sink holds nothing usable, send a full copy
	// Seq: Hello, Status: the last sequence number the sink applied;
	// SnapshotBegin, SnapshotEnd, Digest: the stream's sequence number at
	// that point; Changes: the number of the first op; Ack: the highest
	// applied.
	Seq      uint64
	Received uint64 // Ack: frame bytes received on this connection
	// Sent: SnapshotEnd, Digest: the frame bytes the source sent on this
	// connection before this frame. The sink re-bases its Received on it,
	// so frames lost below the engine do not hold the window shut.
	Sent uint64
	// Copying: Digest: a full copy is in progress; the frame carries no
	// digests, only Seq and Sent.
	Copying bool
	Tables  []string // SnapshotBegin: every table; Entries, Changes: the tables ops refer to
	Ops     []Op     // Entries, Changes
	Digests []TableDigest
	Reason  ResyncReason // Resync
	Status  SyncStatus   // Status
	Entries uint64       // Status: entries held
}

// ErrMalformed is wrapped by every error of ParseFrame.
var ErrMalformed = errors.New("repl: malformed frame")

// AppendFrame appends the encoding of f to dst. It encodes f as it is: a
// frame with a table index out of range, an empty or over-long table name,
// or an unknown type or op kind encodes to bytes that ParseFrame rejects.
func AppendFrame(dst []byte, f Frame) []byte {
	b := append(dst, 'T', 'R', Version, byte(f.Type))
	be := binary.BigEndian
	switch f.Type {
	case FrameHello:
		b = be.AppendUint64(b, f.SinkID)
		var flags byte
		if f.Full {
			flags = 1
		}
		b = append(b, flags)
		b = be.AppendUint64(b, f.SourceID)
		b = binary.AppendUvarint(b, f.Seq)
	case FrameSnapshotBegin:
		b = be.AppendUint64(b, f.SourceID)
		b = binary.AppendUvarint(b, f.Seq)
		b = appendNames(b, f.Tables)
	case FrameEntries:
		b = appendNames(b, f.Tables)
		b = binary.AppendUvarint(b, uint64(len(f.Ops)))
		for _, op := range f.Ops {
			b = binary.AppendUvarint(b, uint64(op.Table))
			b = appendBytes(b, op.Key)
			b = appendBytes(b, op.Value)
		}
	case FrameSnapshotEnd, FrameDigest:
		b = be.AppendUint64(b, f.SourceID)
		b = append(b, b2u8(f.Copying))
		b = binary.AppendUvarint(b, f.Sent)
		b = binary.AppendUvarint(b, f.Seq)
		b = appendDigests(b, f.Digests)
	case FrameChanges:
		b = be.AppendUint64(b, f.SourceID)
		b = binary.AppendUvarint(b, f.Seq)
		b = appendNames(b, f.Tables)
		b = binary.AppendUvarint(b, uint64(len(f.Ops)))
		for _, op := range f.Ops {
			b = appendOp(b, op.Kind, op.Table, op.Key, op.Value, op.OldHash)
		}
	case FrameAck:
		b = binary.AppendUvarint(b, f.Seq)
		b = binary.AppendUvarint(b, f.Received)
	case FrameResync:
		b = append(b, byte(f.Reason))
	case FrameStatus:
		b = append(b, byte(f.Status))
		b = be.AppendUint64(b, f.SourceID)
		b = binary.AppendUvarint(b, f.Seq)
		b = binary.AppendUvarint(b, f.Entries)
	}
	return b
}

func appendOp(b []byte, kind OpKind, table int, key, value []byte, old uint64) []byte {
	b = append(b, byte(kind))
	b = binary.AppendUvarint(b, uint64(table))
	b = appendBytes(b, key)
	if kind == OpPut {
		b = appendBytes(b, value)
	}
	return binary.BigEndian.AppendUint64(b, old)
}

// opSize is the encoded size of an op of a Changes frame.
func opSize(kind OpKind, table, klen, vlen int) int {
	n := 1 + uvarintLen(uint64(table)) + uvarintLen(uint64(klen)) + klen + 8
	if kind == OpPut {
		n += uvarintLen(uint64(vlen)) + vlen
	}
	return n
}

// entrySize is the encoded size of an entry of an Entries frame.
func entrySize(table, klen, vlen int) int {
	return uvarintLen(uint64(table)) + uvarintLen(uint64(klen)) + klen + uvarintLen(uint64(vlen)) + vlen
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// appendDigests appends n uv | n × (name | entries uv | sum u64).
func appendDigests(b []byte, ds []TableDigest) []byte {
	b = binary.AppendUvarint(b, uint64(len(ds)))
	for _, d := range ds {
		b = appendName(b, d.Table)
		b = binary.AppendUvarint(b, d.Entries)
		b = binary.BigEndian.AppendUint64(b, d.Sum)
	}
	return b
}

func appendName(b []byte, name string) []byte {
	b = append(b, byte(len(name)))
	return append(b, name...)
}

func appendNames(b []byte, names []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, n := range names {
		b = appendName(b, n)
	}
	return b
}

// ParseFrame decodes one frame. It never panics; it rejects truncated
// frames, trailing bytes, unknown types, versions, op kinds and flag bits,
// non-minimal varints, table names out of range and indexes beyond the
// frame's table list, with an error (wrapping ErrMalformed) that names the
// field. Keys and values of the result point into b.
func ParseFrame(b []byte) (Frame, error) {
	var f Frame
	if err := parseFrame(b, &f, func(p []byte) string { return string(p) }); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// parseFrame decodes b into f, reusing f's slices; name turns table name
// bytes into strings (the sink interns them). On error f is garbage.
func parseFrame(b []byte, f *Frame, name func([]byte) string) error {
	tables, ops, digests := f.Tables[:0], f.Ops[:0], f.Digests[:0]
	*f = Frame{}
	r := reader{b: b}
	if len(b) < headerLen {
		return r.fail("header", "truncated: %d bytes, a frame has at least %d", len(b), headerLen)
	}
	if b[0] != 'T' || b[1] != 'R' {
		return r.fail("header", "bad magic %q", b[:2])
	}
	if b[2] != Version {
		return r.fail("header", "unsupported version %d (this is version %d)", b[2], Version)
	}
	f.Type = FrameType(b[3])
	r.off = headerLen
	r.frame = f.Type
	switch f.Type {
	case FrameHello:
		f.SinkID = r.u64("sink id")
		switch fl := r.u8("flags"); {
		case fl == 1:
			f.Full = true
		case fl > 1:
			r.failf("flags", "unknown bits %#x", fl)
		}
		f.SourceID = r.u64("source id")
		f.Seq = r.uvarint("seq")
	case FrameSnapshotBegin:
		f.SourceID = r.u64("source id")
		f.Seq = r.uvarint("seq")
		tables = r.names(tables, name)
	case FrameEntries:
		tables = r.names(tables, name)
		n := r.count("entry count", 3)
		for i := 0; i < n && r.err == nil; i++ {
			r.item = i + 1
			var op Op
			op.Kind = OpPut
			op.Table = r.index("table index", len(tables))
			op.Key = r.bytes("key", MaxKeyLen)
			op.Value = r.bytes("value", MaxValueLen)
			ops = append(ops, op)
		}
	case FrameSnapshotEnd, FrameDigest:
		f.SourceID = r.u64("source id")
		switch fl := r.u8("flags"); {
		case fl == 1 && f.Type == FrameDigest:
			f.Copying = true
		case fl != 0:
			r.failf("flags", "unknown bits %#x", fl)
		}
		f.Sent = r.uvarint("sent")
		f.Seq = r.uvarint("seq")
		digests = r.digests(digests, name)
	case FrameChanges:
		f.SourceID = r.u64("source id")
		f.Seq = r.uvarint("first seq")
		tables = r.names(tables, name)
		n := r.count("op count", 11)
		if f.Seq+uint64(n) < f.Seq {
			r.failf("first seq", "%d ops from %d overflow the sequence", n, f.Seq)
		}
		for i := 0; i < n && r.err == nil; i++ {
			r.item = i + 1
			var op Op
			op.Kind = OpKind(r.u8("op kind"))
			if op.Kind != OpPut && op.Kind != OpDelete {
				r.failf("op kind", "unknown kind %d", op.Kind)
			}
			op.Table = r.index("table index", len(tables))
			op.Key = r.bytes("key", MaxKeyLen)
			if op.Kind == OpPut {
				op.Value = r.bytes("value", MaxValueLen)
			}
			op.OldHash = r.u64("old hash")
			ops = append(ops, op)
		}
	case FrameAck:
		f.Seq = r.uvarint("seq")
		f.Received = r.uvarint("received")
	case FrameResync:
		f.Reason = ResyncReason(r.u8("reason"))
		if r.err == nil && (f.Reason == 0 || f.Reason > maxReason) {
			r.failf("reason", "unknown reason %d", f.Reason)
		}
	case FrameStatus:
		f.Status = SyncStatus(r.u8("status"))
		if r.err == nil && f.Status > SyncOutOfSync {
			r.failf("status", "unknown status %d", f.Status)
		}
		f.SourceID = r.u64("source id")
		f.Seq = r.uvarint("seq")
		f.Entries = r.uvarint("entries")
	default:
		return r.fail("header", "unknown frame type %d", b[3])
	}
	if r.err == nil && r.off != len(b) {
		r.item = 0
		r.failf("end", "%d trailing bytes", len(b)-r.off)
	}
	if r.err != nil {
		return r.err
	}
	if len(tables) > 0 {
		f.Tables = tables
	}
	if len(ops) > 0 {
		f.Ops = ops
	}
	if len(digests) > 0 {
		f.Digests = digests
	}
	return nil
}

// reader decodes fields, keeping the first error.
type reader struct {
	b     []byte
	off   int
	err   error
	frame FrameType
	item  int // 1-based op, entry or table being read; 0 none
}

func (r *reader) fail(field, format string, args ...any) error {
	where := "frame"
	if r.frame != 0 {
		where = r.frame.String()
	}
	if r.item > 0 {
		where += fmt.Sprintf(" item %d", r.item)
	}
	return fmt.Errorf("%w: %s: %s: %s", ErrMalformed, where, field, fmt.Sprintf(format, args...))
}

func (r *reader) failf(field, format string, args ...any) {
	if r.err == nil {
		r.err = r.fail(field, format, args...)
	}
}

func (r *reader) need(field string, n int) bool {
	if r.err != nil {
		return false
	}
	if len(r.b)-r.off < n {
		r.failf(field, "truncated at byte %d: need %d bytes, %d left", r.off, n, len(r.b)-r.off)
		return false
	}
	return true
}

func (r *reader) u8(field string) byte {
	if !r.need(field, 1) {
		return 0
	}
	r.off++
	return r.b[r.off-1]
}

func (r *reader) u64(field string) uint64 {
	if !r.need(field, 8) {
		return 0
	}
	r.off += 8
	return binary.BigEndian.Uint64(r.b[r.off-8:])
}

// uvarint reads an unsigned LEB128 varint in its minimal form.
func (r *reader) uvarint(field string) uint64 {
	if r.err != nil {
		return 0
	}
	var x uint64
	for i := 0; ; i++ {
		if r.off >= len(r.b) {
			r.failf(field, "truncated varint at byte %d", r.off)
			return 0
		}
		c := r.b[r.off]
		r.off++
		if i == 9 && c > 1 {
			r.failf(field, "varint overflows 64 bits")
			return 0
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			if c == 0 && i > 0 {
				r.failf(field, "non-minimal varint")
				return 0
			}
			return x
		}
	}
}

// count reads a count of items that each take at least min bytes, and
// rejects counts the rest of the frame cannot hold.
func (r *reader) count(field string, min int) int {
	n := r.uvarint(field)
	if r.err != nil {
		return 0
	}
	if n > uint64(len(r.b)-r.off)/uint64(min) {
		r.failf(field, "%d items cannot fit in %d bytes", n, len(r.b)-r.off)
		return 0
	}
	return int(n)
}

func (r *reader) index(field string, n int) int {
	i := r.uvarint(field)
	if r.err == nil && i >= uint64(n) {
		r.failf(field, "index %d beyond the %d tables of the frame", i, n)
		return 0
	}
	return int(i)
}

func (r *reader) bytes(field string, max int) []byte {
	n := r.uvarint(field)
	if r.err != nil {
		return nil
	}
	if n > uint64(max) {
		r.failf(field, "length %d exceeds the limit %d", n, max)
		return nil
	}
	if !r.need(field, int(n)) {
		return nil
	}
	r.off += int(n)
	return r.b[r.off-int(n) : r.off : r.off]
}

func (r *reader) name(field string, name func([]byte) string) string {
	n := int(r.u8(field))
	if r.err != nil {
		return ""
	}
	if n == 0 {
		r.failf(field, "empty table name")
		return ""
	}
	if !r.need(field, n) {
		return ""
	}
	r.off += n
	return name(r.b[r.off-n : r.off])
}

// digests reads what appendDigests wrote.
func (r *reader) digests(dst []TableDigest, name func([]byte) string) []TableDigest {
	n := r.count("table count", 11)
	for i := 0; i < n && r.err == nil; i++ {
		r.item = i + 1
		var d TableDigest
		d.Table = r.name("table name", name)
		d.Entries = r.uvarint("entries")
		d.Sum = r.u64("sum")
		dst = append(dst, d)
	}
	r.item = 0
	return dst
}

func (r *reader) names(dst []string, name func([]byte) string) []string {
	n := r.count("table count", 2)
	for i := 0; i < n && r.err == nil; i++ {
		r.item = i + 1
		dst = append(dst, r.name("table name", name))
	}
	r.item = 0
	return dst
}
