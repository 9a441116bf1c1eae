package ctsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
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

// takeCheckpoint runs on the writer goroutine: it encodes the record and
// hands the file write to another goroutine.
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
	size := 64 + len(j.pos)
	for t := range 2 {
		size += 32 * (k.meta[t].len() + k.stale[t].len())
	}
	b := make([]byte, 0, size)
	b = append(b, checkpointMagic...)
	b = appendBytes(b, []byte(boot))
	b = binary.BigEndian.AppendUint64(b, ns)
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixNano()))
	b = appendBytes(b, j.pos)
	var y sched.Yielder
	info := CheckpointInfo{Flows: k.meta[tCT].len(), Expectations: k.meta[tExp].len()}
	for _, m := range [...]*keyMap[entryMeta]{k.meta[tCT], k.meta[tExp], k.stale[tCT], k.stale[tExp]} {
		b = binary.AppendUvarint(b, uint64(m.len()))
		m.each(func(key []byte, e entryMeta) bool {
			y.Pause()
			b = appendBytes(b, key)
			b = binary.AppendUvarint(b, uint64(e.timeout))
			b = binary.BigEndian.AppendUint32(b, e.fp)
			b = binary.BigEndian.AppendUint32(b, e.vh)
			return true
		})
	}
	info.Stale = k.stale[tCT].len() + k.stale[tExp].len()
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
	info.Bytes = len(b)
	go func() {
		err := writeFileAtomic(j.path, b)
		info.Took = time.Since(start)
		j.done(info, err)
	}()
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
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
func (k *Sink) LoadCheckpoint(path string) (pos []byte, info CheckpointInfo, err error) {
	start := time.Now()
	k.mu.Lock()
	fresh := !k.closed && !k.promoted && k.opts.Mode == Inject && k.enqGen == 0 && !k.busy
	k.mu.Unlock()
	if !fresh {
		return nil, info, errors.New("ctsync: LoadCheckpoint on a sink that has started, or does not inject")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, info, err
	}
	info.Bytes = len(b)
	if len(b) < len(checkpointMagic)+4 || !bytes.Equal(b[:len(checkpointMagic)], checkpointMagic) {
		return nil, info, fmt.Errorf("%s: not a tandem conntrack checkpoint (bad magic or version)", path)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, info, fmt.Errorf("%s: checksum mismatch (a torn or damaged file)", path)
	}
	r := reader{b: body[len(checkpointMagic):]}
	boot := string(r.str())
	ns := r.u64()
	info.Saved = time.Unix(0, int64(r.u64()))
	pos = r.str()
	wantBoot, wantNS, err := k.kernelIdentity()
	if err != nil {
		return nil, info, err
	}
	switch {
	case r.err != nil:
		return nil, info, fmt.Errorf("%s: header: %w", path, r.err)
	case boot != wantBoot:
		return nil, info, fmt.Errorf("%s: written under another boot of the kernel (%s, now %s)", path, boot, wantBoot)
	case ns != wantNS:
		return nil, info, fmt.Errorf("%s: written for another network namespace", path)
	}
	var maps [4]*keyMap[entryMeta]
	for i := range maps {
		n := r.uvarint()
		if r.err == nil && n > uint64(len(r.b))/10 {
			return nil, info, fmt.Errorf("%s: %d entries cannot fit in %d bytes", path, n, len(r.b))
		}
		m := newKeyMap[entryMeta](int(n))
		for range n {
			key := r.str()
			e := entryMeta{timeout: r.u32varint(), fp: r.u32(), vh: r.u32()}
			if r.err != nil {
				break
			}
			if len(key) == 0 {
				r.err = errors.New("empty key")
				break
			}
			m.set(key, e)
		}
		maps[i] = m
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%d bytes after the record", len(r.b))
	}
	if r.err != nil {
		return nil, info, fmt.Errorf("%s: %w", path, r.err)
	}
	if err := k.checkAgainstKernel(maps[0], maps[2]); err != nil {
		return nil, info, fmt.Errorf("%s: %w", path, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.enqGen != 0 || k.busy || k.closed {
		return nil, info, errors.New("ctsync: the sink started while its checkpoint was loading")
	}
	k.meta = [2]*keyMap[entryMeta]{maps[0], maps[1]}
	k.stale = [2]*keyMap[entryMeta]{maps[2], maps[3]}
	k.countMeta()
	info.Flows, info.Expectations, info.Stale = maps[0].len(), maps[1].len(), maps[2].len()+maps[3].len()
	info.Took = time.Since(start)
	k.log.Info("checkpoint loaded: the kernel holds what the last daemon wrote", "flows", info.Flows,
		"expectations", info.Expectations, "stale", info.Stale, "saved", info.Saved.Format(time.RFC3339Nano), "took", info.Took)
	return pos, info, nil
}

// checkAgainstKernel refuses a record the kernel contradicts: a table
// with fewer connections than the record (flushed, or rebuilt), or a
// sample of recorded connections missing or holding another value.
func (k *Sink) checkAgainstKernel(meta, stale *keyMap[entryMeta]) error {
	s, err := readSysctl(k.nsh, "net/netfilter/nf_conntrack_count")
	if err != nil {
		return fmt.Errorf("read the kernel's connection count: %w", err)
	}
	count, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("the kernel's connection count %q: %w", s, err)
	}
	if recorded := meta.len() + stale.len(); count < recorded {
		return fmt.Errorf("the kernel holds %d connections, the checkpoint %d: the table was flushed or rebuilt", count, recorded)
	}
	checked := 0
	var buf []byte
	var err2 error
	meta.each(func(key []byte, e entryMeta) bool {
		if checked == checkpointSample {
			return false
		}
		checked++
		t, zone, err := decodeKey(key)
		if err != nil {
			err2 = fmt.Errorf("a recorded key cannot be decoded: %w", err)
			return false
		}
		f, err := getFlow(k.conns[0], t, zone)
		if err != nil {
			err2 = fmt.Errorf("recorded connection %v (zone %d) is not in the kernel: %w", t, zone, err)
			return false
		}
		var vh uint32
		buf, vh = k.kernelValueHash(buf, f)
		if e.vh != 0 && vh != e.vh {
			err2 = fmt.Errorf("recorded connection %v (zone %d) holds another value in the kernel", t, zone)
			return false
		}
		return true
	})
	return err2
}
