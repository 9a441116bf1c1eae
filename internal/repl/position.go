package repl

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A Position is what a sink holds, in the protocol's terms: the state of
// source SourceID's run at sequence number Seq, whose tables have the
// digests Tables. A sink whose store outlives it (a standby's kernel
// table outlives a restart of its daemon) saves its Position beside a
// record of the store, and a new sink over that store Resumes from it: its
// Hello then asks the source to resume the stream after Seq instead of
// sending the entire state again. The source checks the digests at once,
// so a store that was not what the Position says is caught and copied
// anew.
type Position struct {
	SourceID uint64
	Seq      uint64
	Tables   []TableDigest
}

// Position returns the sink's position when its state is complete and
// verified (IN_SYNC: the last digest matched), ok false otherwise. The
// store must have applied every change handed to it so far before the
// position is saved with it (a store that writes in the background waits
// for its queue); changes applied after that are harmless (resuming
// applies them again).
func (k *Sink) Position() (p Position, ok bool) {
	if k.mode != modeStream || k.status != SyncInSync {
		return Position{}, false
	}
	p = Position{SourceID: k.sourceID, Seq: k.seq, Tables: make([]TableDigest, 0, len(k.list))}
	for _, t := range k.list {
		p.Tables = append(p.Tables, TableDigest{Table: t.name, Entries: t.count, Sum: t.sum})
	}
	return p, true
}

// Resume tells a new sink that its store holds p: its first Hello asks the
// source to resume after p.Seq. Call it before Connected, once. If the
// source cannot resume (another run, changes no longer kept) it sends a
// full copy, and if the store is not what p says the first digest fails
// and a full copy follows: either way the sink ends with the source's
// state. The sink says OUT_OF_SYNC until the source's digest has matched.
func (k *Sink) Resume(p Position) error {
	if k.mode != modeIdle || k.connected || len(k.list) > 0 {
		return errors.New("repl: sink: Resume after the sink has started")
	}
	if p.SourceID == 0 {
		return errors.New("repl: sink: Resume: a position of source 0")
	}
	for _, d := range p.Tables {
		if d.Table == "" || len(d.Table) > 255 {
			return fmt.Errorf("repl: sink: Resume: table name of %d bytes", len(d.Table))
		}
		t := k.table(d.Table)
		t.count, t.sum = d.Entries, d.Sum
	}
	k.mode = modeStream
	k.sourceID, k.seq = p.SourceID, p.Seq
	k.setStatus(SyncOutOfSync)
	return nil
}

// positionMagic starts an encoded Position ("TP", version 1).
var positionMagic = [3]byte{'T', 'P', 1}

// AppendPosition appends p's encoding: "TP" 1 | source_id u64 | seq uv |
// n uv | n × (name | entries uv | sum u64).
func AppendPosition(b []byte, p Position) []byte {
	b = append(b, positionMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, p.SourceID)
	b = binary.AppendUvarint(b, p.Seq)
	return appendDigests(b, p.Tables)
}

// ParsePosition decodes what AppendPosition wrote; the whole of b must be
// one Position. The error names the field that is wrong.
func ParsePosition(b []byte) (Position, error) {
	var p Position
	if len(b) < len(positionMagic) || [3]byte(b[:3]) != positionMagic {
		return p, errors.New("repl: position: not a tandem replication position (bad magic or version)")
	}
	r := reader{b: b, off: len(positionMagic)}
	p.SourceID = r.u64("source id")
	p.Seq = r.uvarint("seq")
	p.Tables = r.digests(nil, func(b []byte) string { return string(b) })
	if r.err == nil && r.off != len(b) {
		r.failf("end", "%d bytes after the position", len(b)-r.off)
	}
	if r.err != nil {
		return Position{}, fmt.Errorf("repl: position: %w", r.err)
	}
	return p, nil
}
