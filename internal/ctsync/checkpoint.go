package ctsync

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Checkpoints: a standby's record of what it wrote into its kernel, saved
// so that its next daemon resumes instead of reconciling a full copy.
//
// A standby's kernel table outlives its daemon (a restart, an upgrade, a
// crash). Without a record of it the next daemon must ask for a full copy
// and dump the kernel's table to reconcile it (adopt.go): at a million
// connections that is ~2.3 s of kernel dump alone, ~5 s in all. With one,
// the daemon loads the record (its meta and stale maps, as the writer held
// them), checks it against the kernel, and the replication engine resumes
// the stream after the position saved beside it (repl.Position): only the
// changes since are sent.
//
// A checkpoint is taken by the writer goroutine once everything queued
// before the request is in the kernel, so the record never claims less
// than the kernel was given up to the position (it may hold later
// changes: resuming sends them again, and writing them again is
// harmless). It is refused while the record is incomplete — a copy being
// reconciled, writes that failed and wait for a retry, related
// connections waiting for their master — and after promotion.
//
// The file names the kernel boot and the network namespace it describes;
// a record of another boot or namespace is refused at load, and so is one
// the kernel contradicts: fewer entries in the table than in the record (a
// flush), or any of a sample of recorded connections missing from the
// kernel or holding another value. The file is written beside its final
// name and renamed over it, without fsync: it only matters while the
// kernel that holds the table runs, and a torn file fails its CRC.

// CheckpointInfo describes a saved or loaded checkpoint.
type CheckpointInfo struct {
	Flows, Expectations, Stale int
	Bytes                      int
	Took                       time.Duration
	Saved                      time.Time // when it was written (at load)
}

type checkpointJob struct {
	gen  uint64
	path string
	pos  []byte
	done func(CheckpointInfo, error)
}

// checkpointMagic starts a checkpoint file ("TCKP", version 1).
var checkpointMagic = []byte("TCKP\x01")

// checkpointSample is how many recorded connections are looked up in the
// kernel at load (each a short system call).
const checkpointSample = 64

// Checkpoint saves the Sink's record of the kernel's tables with pos (the
// replication engine's position, opaque here) to path, once every change
// queued before the call is written. It returns at once; done is called
// from another goroutine when the file is written or the checkpoint
// refused (Inject mode only, never after promotion).
func (k *Sink) Checkpoint(path string, pos []byte, done func(CheckpointInfo, error)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.closed:
		go done(CheckpointInfo{}, errors.New("ctsync: sink closed"))
		return
	case k.opts.Mode != Inject || k.promoted:
		go done(CheckpointInfo{}, errors.New("ctsync: checkpoint of a sink that does not inject as a standby"))
		return
	case k.ckpt != nil:
		go done(CheckpointInfo{}, errors.New("ctsync: a checkpoint is already being taken"))
		return
	}
	k.ckpt = &checkpointJob{gen: k.enqGen, path: path, pos: append([]byte(nil), pos...), done: done}
	k.cond.Broadcast()
}

// takeCheckpoint runs on the writer goroutine: it writes the record to
// the file and reports to the caller from another goroutine.
func (k *Sink) takeCheckpoint(j *checkpointJob) {
	start := time.Now()
	if n := k.failed[tCT].len() + k.failed[tExp].len() + k.orphans.len() + k.adopted.len(); n > 0 {
		go j.done(CheckpointInfo{}, fmt.Errorf("ctsync: checkpoint refused: %d entries wait for a retry or a reconciliation", n))
		return
	}
	boot, ns, err := k.kernelIdentity()
	if err != nil {
		go j.done(CheckpointInfo{}, fmt.Errorf("ctsync: checkpoint: %w", err))
		return
	}
	maps := [4]*keyMap[entryMeta]{k.meta[tCT], k.meta[tExp], k.stale[tCT], k.stale[tExp]}
	info := CheckpointInfo{Flows: maps[0].len(), Expectations: maps[1].len(), Stale: maps[2].len() + maps[3].len()}
	// Written from here, through a small buffer: a million entries'
	// encoding held in memory would add ~30 bytes per entry to the
	// standby's footprint until the next collection.
	info.Bytes, err = writeFileAtomic(j.path, func(w io.Writer) error {
		return encodeCheckpoint(w, boot, ns, time.Now(), j.pos, maps, k.stopWriting.Load)
	})
	info.Took = time.Since(start)
	go j.done(info, err)
}

// encodeCheckpoint writes a checkpoint file to w: magic | boot id bytes |
// namespace u64 | saved (Unix ns) u64 | position bytes | 4 × count uv |
// the four maps' records in that order (meta conntrack, meta expect, stale
// conntrack, stale expect), each key bytes | timeout uv | fp u32 | value
// hash u32 | CRC-32C u32 of everything before. bytes is a uv length and
// the bytes.
//
// abort (when not nil) is asked every 1024 records: a promotion or Close
// must not wait for a checkpoint of a million entries.
func encodeCheckpoint(w io.Writer, boot string, ns uint64, saved time.Time, pos []byte, maps [4]*keyMap[entryMeta], abort func() bool) error {
	crc := crc32.New(crcTable)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 64<<10)
	b := make([]byte, 0, 128+len(pos))
	b = append(b, checkpointMagic...)
	b = appendBytes(b, []byte(boot))
	b = binary.BigEndian.AppendUint64(b, ns)
	b = binary.BigEndian.AppendUint64(b, uint64(saved.UnixNano()))
	b = appendBytes(b, pos)
	for _, m := range maps {
		b = binary.AppendUvarint(b, uint64(m.len()))
	}
	if _, err := bw.Write(b); err != nil {
		return err
	}
	var err error
	var y sched.Yielder
	n := 0
	for _, m := range maps {
		m.each(func(key []byte, e entryMeta) bool {
			if n++; n%1024 == 0 {
				y.Pause()
				if abort != nil && abort() {
					err = errCheckpointAborted
					return false
				}
			}
			b = appendBytes(b[:0], key)
			b = binary.AppendUvarint(b, uint64(e.timeout))
			b = binary.BigEndian.AppendUint32(b, e.fp)
			b = binary.BigEndian.AppendUint32(b, e.vh)
			_, err = bw.Write(b)
			return err == nil
		})
		if err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err = w.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errCheckpointAborted = errors.New("ctsync: checkpoint abandoned: the sink is being promoted or closed")

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// writeFileAtomic writes a file beside path with write and renames it
// over path; it returns the bytes written.
func writeFileAtomic(path string, write func(io.Writer) error) (int, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	cw := &countingWriter{w: f}
	err = write(cw)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += n
	return n, err
}

// kernelIdentity names the kernel boot and the namespace whose table this
// Sink writes.
func (k *Sink) kernelIdentity() (boot string, ns uint64, err error) {
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", 0, fmt.Errorf("read the boot id: %w", err)
	}
	var st unix.Stat_t
	if k.nsh.IsOpen() {
		err = unix.Fstat(int(k.nsh), &st)
	} else {
		err = unix.Stat("/proc/thread-self/ns/net", &st)
	}
	if err != nil {
		return "", 0, fmt.Errorf("identify the network namespace: %w", err)
	}
	return string(bytes.TrimSpace(id)), st.Dev<<32 ^ st.Ino, nil
}

// LoadCheckpoint reads a checkpoint that Checkpoint wrote, checks it
// against the kernel and makes it the Sink's record of what it wrote. It
// returns the position saved with it. Call it on a new Sink, before any
// Put, Delete or Reset. On any error the Sink is left as it was (empty);
// the error says why the checkpoint cannot be used.
//
// It returns once the file is checked: the writer goroutine builds the
// record's maps (about 0.3 s per million connections, mostly cache misses
// inserting into a map that size) before it writes anything, so the
// caller's replication engine can resume meanwhile.
func (k *Sink) LoadCheckpoint(path string) (pos []byte, info CheckpointInfo, err error) {
	start := time.Now()
	k.mu.Lock()
	fresh := !k.closed && !k.promoted && k.opts.Mode == Inject && k.enqGen == 0 && !k.busy && k.load == nil && k.nMeta[tCT].Load() == 0
	k.mu.Unlock()
	if !fresh {
		return nil, info, errors.New("ctsync: LoadCheckpoint on a sink that has started, or does not inject")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, info, err
	}
	info.Bytes = len(b)
	c, err := parseCheckpoint(b)
	if err != nil {
		return nil, info, fmt.Errorf("%s: %w", path, err)
	}
	info.Saved = c.saved
	wantBoot, wantNS, err := k.kernelIdentity()
	if err != nil {
		return nil, info, err
	}
	switch {
	case c.boot != wantBoot:
		return nil, info, fmt.Errorf("%s: written under another boot of the kernel (%s, now %s)", path, c.boot, wantBoot)
	case c.ns != wantNS:
		return nil, info, fmt.Errorf("%s: written for another network namespace", path)
	}
	if err := k.checkAgainstKernel(c); err != nil {
		return nil, info, fmt.Errorf("%s: %w", path, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.enqGen != 0 || k.busy || k.closed {
		return nil, info, errors.New("ctsync: the sink started while its checkpoint was loading")
	}
	k.load = c
	for t := range 2 {
		k.nMeta[t].Store(int64(c.counts[t]))
	}
	k.nStale.Store(int64(c.counts[2] + c.counts[3]))
	k.cond.Broadcast()
	info.Flows, info.Expectations, info.Stale = c.counts[0], c.counts[1], c.counts[2]+c.counts[3]
	info.Took = time.Since(start)
	k.log.Info("checkpoint loaded: the kernel holds what the last daemon wrote", "flows", info.Flows,
		"expectations", info.Expectations, "stale", info.Stale, "saved", info.Saved.Format(time.RFC3339Nano), "took", info.Took)
	return c.pos, info, nil
}

// buildLoaded turns a loaded checkpoint into the writer's maps (writer
// goroutine, before anything else).
func (k *Sink) buildLoaded(c *checkpointFile) {
	start := time.Now()
	var maps [4]*keyMap[entryMeta]
	for i := range maps {
		maps[i] = newKeyMap[entryMeta](c.counts[i])
	}
	var y sched.Yielder
	_ = c.walk(func(i int, key []byte, e entryMeta) {
		y.Pause()
		maps[i].set(key, e)
	})
	k.meta = [2]*keyMap[entryMeta]{maps[0], maps[1]}
	k.stale = [2]*keyMap[entryMeta]{maps[2], maps[3]}
	k.countMeta()
	big := len(c.records) > bigCopy*16
	c.records = nil
	if big {
		debug.FreeOSMemory() // the file's bytes are garbage now
	}
	k.log.Info("checkpoint: record rebuilt", "flows", maps[0].len(), "took", time.Since(start))
}

// checkpointFile is a parsed checkpoint: the header, and the records of
// the four maps (conntrack, expect, stale conntrack, stale expect), whose
// structure parseCheckpoint has checked.
type checkpointFile struct {
	boot    string
	ns      uint64
	saved   time.Time
	pos     []byte
	counts  [4]int
	records []byte
}

// parseCheckpoint decodes a checkpoint file's header and checks the
// structure of all of it; any damage is an error (a CRC covers the file).
func parseCheckpoint(b []byte) (*checkpointFile, error) {
	if len(b) < len(checkpointMagic)+4 || !bytes.Equal(b[:len(checkpointMagic)], checkpointMagic) {
		return nil, errors.New("not a tandem conntrack checkpoint (bad magic or version)")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, errors.New("checksum mismatch (a torn or damaged file)")
	}
	r := reader{b: body[len(checkpointMagic):]}
	c := &checkpointFile{}
	c.boot = string(r.take(int(min(r.uvarint(), 256))))
	c.ns = r.u64()
	c.saved = time.Unix(0, int64(r.u64()))
	c.pos = bytes.Clone(r.take(int(min(r.uvarint(), 1<<16))))
	total := uint64(0)
	for i := range c.counts {
		n := r.uvarint()
		total += n
		if r.err == nil && total > uint64(len(r.b))/10 {
			return nil, fmt.Errorf("%d entries cannot fit in %d bytes", total, len(r.b))
		}
		c.counts[i] = int(n)
	}
	if r.err != nil {
		return nil, fmt.Errorf("header: %w", r.err)
	}
	c.records = r.b
	if err := c.walk(nil); err != nil {
		return nil, err
	}
	return c, nil
}

// walk calls fn (when not nil) for every record, with the index of its map.
func (c *checkpointFile) walk(fn func(i int, key []byte, e entryMeta)) error {
	r := reader{b: c.records}
	for i, n := range c.counts {
		for range n {
			l := r.uvarint()
			if r.err == nil && (l == 0 || l > 255) {
				r.err = fmt.Errorf("a key of %d bytes", l)
			}
			key := r.take(int(l))
			e := entryMeta{timeout: r.u32varint(), fp: r.u32(), vh: r.u32()}
			if r.err != nil {
				return r.err
			}
			if fn != nil {
				fn(i, key, e)
			}
		}
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%d bytes after the record", len(r.b))
	}
	return nil
}

// checkAgainstKernel refuses a record the kernel contradicts: a table
// with fewer connections than the record (flushed, or rebuilt), or any of
// the first checkpointSample recorded connections (the order of a Go map:
// arbitrary) missing or holding another value.
func (k *Sink) checkAgainstKernel(c *checkpointFile) error {
	s, err := readSysctl(k.nsh, "net/netfilter/nf_conntrack_count")
	if err != nil {
		return fmt.Errorf("read the kernel's connection count: %w", err)
	}
	count, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("the kernel's connection count %q: %w", s, err)
	}
	if recorded := c.counts[0] + c.counts[2]; count < recorded {
		return fmt.Errorf("the kernel holds %d connections, the checkpoint %d: the table was flushed or rebuilt", count, recorded)
	}
	type sample struct {
		key []byte
		e   entryMeta
	}
	var samples []sample
	_ = c.walk(func(i int, key []byte, e entryMeta) {
		if i == 0 && len(samples) < checkpointSample {
			samples = append(samples, sample{key, e})
		}
	})
	var buf []byte
	for _, sm := range samples {
		t, zone, err := decodeKey(sm.key)
		if err != nil {
			return fmt.Errorf("a recorded key cannot be decoded: %w", err)
		}
		f, err := getFlow(k.conns[0], t, zone)
		if err != nil {
			return fmt.Errorf("recorded connection %v (zone %d) is not in the kernel: %w", t, zone, err)
		}
		var vh uint32
		buf, vh = k.kernelValueHash(buf, f)
		if sm.e.vh != 0 && vh != sm.e.vh {
			return fmt.Errorf("recorded connection %v (zone %d) holds another value in the kernel", t, zone)
		}
	}
	return nil
}
