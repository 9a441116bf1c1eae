package snapshot

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
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
	// TempDir is where Take spools the compressed snapshot. Default: the
	// database's directory.
	TempDir string
	// Now is the clock for Manifest.Created. Default time.Now.
	Now func() time.Time
	// Swap closes and reopens the live database around Receive's rename.
	Swap Swap
	// Workers is how many cores Take or Receive may keep busy. 1 (the
	// default) does the work in one goroutine, leaving the other cores to
	// the daemon's event loop and to writers; 2 runs hashing beside
	// compression (Take) or decompression (Receive), about 1.5x faster.
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
// copy is hashed, cut into chunks and compressed into a spool file beside
// the database (the header carries the whole-file hash, known only at the
// end); the read transaction ends, then the spool is streamed to w and
// removed. Nothing of the snapshot is left on disk on any path.
func Take(db *bbolt.DB, w io.Writer, opts Options) (Manifest, error) {
	start := time.Now()
	opts = opts.withDefaults()
	if opts.ChunkSize < minChunkSize || opts.ChunkSize > MaxChunkSize {
		return Manifest{}, fmt.Errorf("snapshot: chunk size %d: must be %d to %d", opts.ChunkSize, minChunkSize, MaxChunkSize)
	}
	level := zstd.SpeedFastest
	if opts.Level > 0 {
		level = zstd.EncoderLevelFromZstd(opts.Level)
	}
	dir := opts.TempDir
	if dir == "" {
		dir = filepath.Dir(db.Path())
	}
	m := Manifest{Created: opts.Now().UTC(), ChunkSize: opts.ChunkSize}
	_, _ = rand.Read(m.ID[:])

	spool, err := createTemp(dir)
	if err != nil {
		return m, fmt.Errorf("snapshot: spool: %w", err)
	}
	defer removeTemp(spool)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		return m, fmt.Errorf("snapshot: zstd: %w", err)
	}
	defer enc.Close()

	bw := bufio.NewWriterSize(spool, 1<<20)
	cw := newChunker(opts.ChunkSize, opts.Workers, enc, bw)
	defer cw.close() // stops the compressor if View failed before WriteTo
	err = db.View(func(tx *bbolt.Tx) error {
		_, err := tx.WriteTo(cw)
		return errors.Join(err, cw.close())
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return m, fmt.Errorf("snapshot: copy database: %w", err)
	}
	m.Size, m.Chunks = cw.size, cw.chunks
	cw.h.Sum(m.SHA256[:0])
	if m.Chunks != chunkCount(m.Size, m.ChunkSize) {
		return m, fmt.Errorf("snapshot: internal error: %d chunks for %d bytes", m.Chunks, m.Size)
	}
	spoolLen, err := spool.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = spool.Seek(0, io.SeekStart)
	}
	if err != nil {
		return m, fmt.Errorf("snapshot: spool: %w", err)
	}

	// Stream: header, the spooled chunks, trailer.
	if _, err := w.Write(encodeHeader(m)); err != nil {
		return m, fmt.Errorf("snapshot: send header: %w", err)
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(onlyWriter{w}, onlyReader{spool}, buf)
	if err == nil && n != spoolLen {
		err = fmt.Errorf("sent %d of %d bytes", n, spoolLen)
	}
	if err != nil {
		return m, fmt.Errorf("snapshot: send chunks: %w", err)
	}
	if _, err := w.Write(encodeTrailer(m)); err != nil {
		return m, fmt.Errorf("snapshot: send trailer: %w", err)
	}
	m.StreamBytes = headerLen + spoolLen + trailerLen
	m.Duration = time.Since(start)
	return m, nil
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so io.CopyBuffer uses
// the 1 MiB buffer.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

// chunker receives the database bytes (tx.WriteTo), hashes them and cuts
// them into chunks, each compressed and written as a record to the spool.
// With two workers a second goroutine compresses while the first hashes.
type chunker struct {
	chunkSize int
	buf       []byte
	h         hash.Hash
	size      int64
	chunks    int
	closed    bool

	enc   *zstd.Encoder
	out   io.Writer
	comp  []byte
	index uint32
	err   error // first compress/write error (serial mode)
	// yield gives the CPU back while the caller's copy runs: the daemon
	// is realtime and a 200 MB copy must not hold off a heartbeat.
	yield sched.Yielder

	// Two-worker mode.
	work chan []byte
	free chan []byte
	done chan error
}

func newChunker(chunkSize, workers int, enc *zstd.Encoder, out io.Writer) *chunker {
	c := &chunker{
		chunkSize: chunkSize,
		h:         sha256.New(),
		enc:       enc,
		out:       out,
		comp:      make([]byte, 0, maxCompressed(chunkSize)),
	}
	if workers < 2 {
		c.buf = make([]byte, 0, chunkSize)
		return c
	}
	c.work = make(chan []byte, 2)
	c.free = make(chan []byte, 3)
	c.done = make(chan error, 1)
	for range 3 {
		c.free <- make([]byte, 0, chunkSize)
	}
	c.buf = <-c.free
	go func() {
		var err error
		var y sched.Yielder // compressing 200 MB at the daemon's priority
		for raw := range c.work {
			y.Pause()
			if err == nil {
				err = c.emit(raw)
			}
			c.free <- raw[:0]
		}
		c.done <- err
	}()
	return c
}

// emit compresses one chunk and writes its record.
func (c *chunker) emit(raw []byte) error {
	c.comp = c.enc.EncodeAll(raw, c.comp[:0])
	if len(c.comp) > maxCompressed(c.chunkSize) {
		return fmt.Errorf("chunk %d compressed to %d bytes, over the bound", c.index, len(c.comp))
	}
	var rec [chunkHdrLen]byte
	hdr := chunkHdr{c.index, uint32(len(raw)), uint32(len(c.comp)), crc(raw), crc(c.comp)}
	c.index++
	if _, err := c.out.Write(hdr.append(rec[:0])); err != nil {
		return err
	}
	_, err := c.out.Write(c.comp)
	return err
}

// flush hashes the current (non-empty) buffer and compresses it, here or
// in the compressor goroutine.
func (c *chunker) flush() error {
	c.h.Write(c.buf)
	c.size += int64(len(c.buf))
	c.chunks++
	if c.work == nil {
		if c.err == nil {
			c.err = c.emit(c.buf)
		}
		c.buf = c.buf[:0]
		return c.err
	}
	c.work <- c.buf
	c.buf = <-c.free
	return nil
}

func (c *chunker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c.yield.Pause()
		k := min(len(p), c.chunkSize-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == c.chunkSize {
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
		n, err := r.Read(c.buf[len(c.buf):c.chunkSize])
		c.buf = c.buf[:len(c.buf)+n]
		total += int64(n)
		if len(c.buf) == c.chunkSize {
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

// close flushes the last partial chunk and waits for the compressor.
func (c *chunker) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	var err error
	if len(c.buf) > 0 {
		err = c.flush()
	}
	if c.work == nil {
		return c.err
	}
	close(c.work)
	return errors.Join(err, <-c.done)
}

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
