package snapshot

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Options tune Take and Receive. The zero value is ready to use.
type Options struct {
	// ChunkSize is the raw bytes per chunk (Take). Default DefaultChunkSize.
	ChunkSize int
	// Level is the zstd level (Take), as in zstd(1); 0 means the fastest.
	Level int
	// Now is the clock for Manifest.Created. Default time.Now.
	Now func() time.Time
	// Swap closes and reopens the live database around Receive's rename.
	Swap Swap
	// Workers is how many goroutines Take or Receive runs. 1 (the
	// default) does the work in one goroutine; 2 compresses two chunks at
	// once (Take) or writes beside decompression (Receive). Either way the
	// compressing and decompressing of all snapshots in the process keep
	// at most all cores but one busy (cpuSlots): on two cores, 2 overlaps
	// only the I/O.
	Workers int
	// Check runs bbolt's full consistency check on a received file before
	// installing it (slower: it walks every page). Without it the file's
	// hash and bbolt meta pages are checked.
	Check bool
}

func (o Options) withDefaults() Options {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Take writes a snapshot of db to w: header, chunks, trailer (see the
// format at the top of format.go).
//
// The database is copied inside one bbolt read transaction, which sees a
// consistent state while writers go on committing (bbolt never blocks a
// writer on a reader, as long as its memory map need not grow: open the
// database with a generous InitialMmapSize, as configstore does). The
// copy is cut into chunks, each compressed, tagged and written to w as it
// is read: nothing is spooled, so nothing of the snapshot touches the
// disk, and the read transaction lasts as long as the stream.
func Take(db *bbolt.DB, w io.Writer, opts Options) (Manifest, error) {
	var m Manifest
	err := db.View(func(tx *bbolt.Tx) error {
		var err error
		m, err = take(tx.Size(), func(cw io.Writer) error {
			_, err := tx.WriteTo(cw)
			return err
		}, w, opts)
		return err
	})
	return m, err
}

// take writes the snapshot stream of a size-byte database to w; copyInto
// writes the database bytes into the writer it is given (the chunker).
// Take runs it inside a read transaction, the worker process on the file
// a daemon's transaction holds still (worker.go).
func take(size int64, copyInto func(io.Writer) error, w io.Writer, opts Options) (Manifest, error) {
	start := time.Now()
	opts = opts.withDefaults()
	if opts.ChunkSize < minChunkSize || opts.ChunkSize > MaxChunkSize {
		return Manifest{}, fmt.Errorf("snapshot: chunk size %d: must be %d to %d", opts.ChunkSize, minChunkSize, MaxChunkSize)
	}
	level := zstd.SpeedFastest
	if opts.Level > 0 {
		level = zstd.EncoderLevelFromZstd(opts.Level)
	}
	workers := max(1, min(opts.Workers, 2))
	m := Manifest{Created: opts.Now().UTC(), ChunkSize: opts.ChunkSize}
	_, _ = rand.Read(m.ID[:])

	// EncodeAll may run on up to workers goroutines at once.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(workers), zstd.WithEncoderCRC(false))
	if err != nil {
		return m, fmt.Errorf("snapshot: zstd: %w", err)
	}
	defer enc.Close()

	cw := newChunker(m, workers, enc, w)
	defer cw.close() // stops the workers if the header could not be sent
	m.Size = size
	m.Chunks = chunkCount(m.Size, m.ChunkSize)
	if _, err := w.Write(encodeHeader(m)); err != nil {
		return m, fmt.Errorf("snapshot: send header: %w", err)
	}
	if err := copyInto(cw); err != nil {
		if cw.err != nil { // a send or compress error, surfaced by the copy
			err = cw.err
		} else {
			err = fmt.Errorf("copy database: %w", err)
		}
		cw.stop()
		return m, fmt.Errorf("snapshot: %w", err)
	}
	if err := cw.close(); err != nil {
		return m, fmt.Errorf("snapshot: %w", err)
	}
	if cw.size != m.Size || cw.chunks != m.Chunks {
		return m, fmt.Errorf("snapshot: internal error: copied %d bytes in %d chunks, header says %d in %d", cw.size, cw.chunks, m.Size, m.Chunks)
	}
	cw.digest.Sum(m.Digest[:0])
	if _, err := w.Write(encodeTrailer(m)); err != nil {
		return m, fmt.Errorf("snapshot: send trailer: %w", err)
	}
	m.StreamBytes = headerLen + cw.sent + trailerLen
	m.Duration = time.Since(start)
	return m, nil
}

// slot is one chunk on its way: raw bytes in, record out.
type slot struct {
	raw  []byte
	comp []byte
	rec  [chunkHdrLen]byte
	err  error
	done chan struct{} // closed once comp and rec are ready (two workers)
}

// chunker receives the database bytes (tx.WriteTo) and cuts them into
// chunks; each is compressed and tagged, here (one worker) or by two
// compressor goroutines in parallel, and its record written to w in order
// by the caller's goroutine.
type chunker struct {
	chunkSize int
	id        [16]byte
	enc       *zstd.Encoder
	tg        *tagger // serial mode
	w         io.Writer
	digest    hash.Hash // sha256 of the tags, in chunk order
	size      int64     // raw bytes cut
	chunks    int
	sent      int64 // record bytes written to w
	err       error // first compress or send error
	closed    bool
	cur       *slot
	// yield gives the CPU back while the caller's copy runs: the daemon
	// is realtime and a 200 MB copy must not hold off a heartbeat.
	yield sched.Yielder

	// Two-worker mode.
	work    chan *slot
	pending []*slot // handed to the workers, oldest first
	free    []*slot
	wg      sync.WaitGroup
}

func newChunker(m Manifest, workers int, enc *zstd.Encoder, w io.Writer) *chunker {
	c := &chunker{chunkSize: m.ChunkSize, id: m.ID, enc: enc, w: w, digest: sha256.New()}
	newSlot := func() *slot {
		return &slot{raw: make([]byte, 0, m.ChunkSize), comp: make([]byte, 0, maxCompressed(m.ChunkSize))}
	}
	if workers < 2 {
		c.tg = newTagger(m.ID)
		c.cur = newSlot()
		return c
	}
	// One slot filling, one per worker compressing, one finished waiting
	// for w.
	const slots = 4
	c.work = make(chan *slot, slots)
	for range slots {
		c.free = append(c.free, newSlot())
	}
	c.cur = c.take()
	for range workers {
		c.wg.Go(func() {
			tg := newTagger(m.ID)
			var y sched.Yielder // compressing 200 MB at the daemon's priority
			for s := range c.work {
				y.Pause()
				c.compress(s, tg)
				close(s.done)
				// Let a waiting goroutine (a writer back from its fsync)
				// have this P now rather than at the next preemption,
				// up to 10 ms away.
				runtime.Gosched()
			}
		})
	}
	return c
}

func (c *chunker) take() *slot {
	s := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	return s
}

// cpuSlots bounds the snapshot work (compressing, decompressing, tagging)
// running at once in this process, Takes and Receives together, to all
// cores but one: the remaining core is the event loop's and the writers'.
// Without it, on two cores, two compressors beside a receiver left a
// Publish a third of a core and queued it behind them at every return
// from its fsyncs.
var cpuSlots = make(chan struct{}, max(1, min(runtime.GOMAXPROCS(0), runtime.NumCPU())-1))

func acquireCPU() { cpuSlots <- struct{}{} }
func releaseCPU() { <-cpuSlots }

// compress fills s.comp and s.rec from s.raw; the index is in s.rec.
func (c *chunker) compress(s *slot, tg *tagger) {
	acquireCPU()
	defer releaseCPU()
	s.comp = c.enc.EncodeAll(s.raw, s.comp[:0])
	index := binary.BigEndian.Uint32(s.rec[:])
	if len(s.comp) > maxCompressed(c.chunkSize) {
		s.err = fmt.Errorf("chunk %d compressed to %d bytes, over the bound", index, len(s.comp))
		return
	}
	hdr := chunkHdr{index: index, rawLen: uint32(len(s.raw)), compLen: uint32(len(s.comp)), compCRC: crc(s.comp), tag: tg.tag(index, s.raw)}
	hdr.append(s.rec[:0])
}

// send writes a finished chunk's record to w; after an error it only
// drops the chunk.
func (c *chunker) send(s *slot) {
	if c.err == nil {
		c.err = s.err
	}
	if c.err != nil {
		return
	}
	c.digest.Write(s.rec[16:chunkHdrLen])
	if _, err := c.w.Write(s.rec[:]); err != nil {
		c.err = fmt.Errorf("send chunks: %w", err)
		return
	}
	if _, err := c.w.Write(s.comp); err != nil {
		c.err = fmt.Errorf("send chunks: %w", err)
		return
	}
	c.sent += chunkHdrLen + int64(len(s.comp))
}

// sendOldest waits for the oldest pending chunk, sends it and frees its
// slot.
func (c *chunker) sendOldest() {
	s := c.pending[0]
	c.pending = c.pending[1:]
	<-s.done
	c.send(s)
	c.free = append(c.free, s)
}

func isDone(s *slot) bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// flush cuts the current (non-empty) buffer as the next chunk.
func (c *chunker) flush() error {
	s := c.cur
	binary.BigEndian.PutUint32(s.rec[:], uint32(c.chunks))
	c.size += int64(len(s.raw))
	c.chunks++
	if c.work == nil {
		c.compress(s, c.tg)
		c.send(s)
		s.raw = s.raw[:0]
		runtime.Gosched() // as in the compressors
		return c.err
	}
	s.err, s.done = nil, make(chan struct{})
	c.pending = append(c.pending, s)
	c.work <- s
	// Send what is finished, in order, without waiting; wait only when no
	// slot is free.
	for len(c.pending) > 0 && isDone(c.pending[0]) {
		c.sendOldest()
	}
	if len(c.free) == 0 {
		c.sendOldest()
	}
	c.cur = c.take()
	c.cur.raw = c.cur.raw[:0]
	return c.err
}

func (c *chunker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c.yield.Pause()
		k := min(len(p), c.chunkSize-len(c.cur.raw))
		c.cur.raw = append(c.cur.raw, p[:k]...)
		p = p[k:]
		if len(c.cur.raw) == c.chunkSize {
			if err := c.flush(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// ReadFrom reads straight into the chunk buffers (io.Copy uses it).
func (c *chunker) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		c.yield.Pause()
		buf := c.cur.raw
		n, err := r.Read(buf[len(buf):c.chunkSize])
		c.cur.raw = buf[:len(buf)+n]
		total += int64(n)
		if len(c.cur.raw) == c.chunkSize {
			if ferr := c.flush(); ferr != nil {
				return total, ferr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// close flushes the last partial chunk, sends what is pending and stops
// the workers.
func (c *chunker) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if len(c.cur.raw) > 0 {
		_ = c.flush() // the error is in c.err
	}
	if c.work != nil {
		for len(c.pending) > 0 {
			c.sendOldest()
		}
		close(c.work)
		c.wg.Wait()
	}
	return c.err
}

// stop ends the chunker after a failed copy, sending nothing more.
func (c *chunker) stop() {
	if c.err == nil {
		c.err = errStopped
	}
	c.cur.raw = c.cur.raw[:0]
	_ = c.close()
}

var errStopped = errors.New("stopped")

var _ io.ReaderFrom = (*chunker)(nil)

// syncDir fsyncs a directory, making renames and creations in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
