package snapshot

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Swap closes and reopens the live database around the rename that
// installs a received snapshot. Either may be nil (the database is not
// open).
type Swap struct {
	// Close closes the live database (the daemon's configstore.Store). It
	// is called only once the received file is fully verified, just
	// before the rename. If it fails nothing is installed.
	Close func() error
	// Reopen opens the database again: the new file after the rename, or
	// the old one if the rename failed.
	Reopen func() error
}

// Receive reads a snapshot stream from r into a temp file in dir, verifies
// it (every chunk's checksums, tag and lengths, the trailer, the digest
// over the whole file, the bbolt meta pages), fsyncs the file and dir, then installs it
// over target (a path in dir, or a name relative to it): opts.Swap.Close,
// rename, fsync dir, opts.Swap.Reopen.
//
// A corrupted or truncated stream is rejected with ErrCorrupt or
// ErrTruncated, the temp file removed and target left as it was. Receive
// reads exactly the snapshot's bytes from r, nothing past its trailer.
// One Receive per directory at a time.
//
// The returned Manifest (with Duration set) and error are what
// NewResult turns into the restore notification for the ACTIVE.
func Receive(r io.Reader, dir, target string, opts Options) (Manifest, error) {
	start := time.Now()
	st, err := Stage(r, dir, opts)
	if err != nil {
		return st.Manifest(), err
	}
	defer st.Discard()
	err = st.Install(target, opts.Swap)
	m := st.Manifest()
	m.Duration = time.Since(start)
	return m, err
}

// Staged is a received and verified snapshot waiting in its temp file, for
// callers that install it at a moment of their choosing (the daemon: in
// its event loop). Discard it if not installed.
type Staged struct {
	f *os.File // temp file, shared-locked; nil once installed or discarded
	m Manifest
}

// Manifest describes the staged snapshot (Duration: receiving and
// verifying).
func (st *Staged) Manifest() Manifest {
	if st == nil {
		return Manifest{}
	}
	return st.m
}

// Path is the temp file, "" once installed or discarded.
func (st *Staged) Path() string {
	if st == nil || st.f == nil {
		return ""
	}
	return st.f.Name()
}

// Discard removes the temp file; a no-op after Install.
func (st *Staged) Discard() {
	if st != nil && st.f != nil {
		removeTemp(st.f)
		st.f = nil
	}
}

// Stage receives and verifies a snapshot into a temp file in dir without
// installing it. It first removes stale temp files of crashed transfers
// (CleanTemp, best effort). On any error the temp file is removed; the returned *Staged
// then still reports what was known of the Manifest.
func Stage(r io.Reader, dir string, opts Options) (*Staged, error) {
	start := time.Now()
	opts = opts.withDefaults()
	// Best effort: an unremovable leftover must not stop replication.
	_, _ = CleanTemp(dir)
	f, err := createTemp(dir)
	if err != nil {
		return &Staged{}, fmt.Errorf("snapshot: temp file: %w", err)
	}
	m, err := stageInto(r, f, opts)
	if err == nil {
		err = checkStaged(f.Name(), m, opts.Check)
	}
	return staged(f, m, err, start)
}

// checkStaged opens a received file as a bbolt database (read-only: a
// shared lock while it does) — here, not in the worker process, so that
// nothing but this process ever locks the temp file.
func checkStaged(path string, m Manifest, full bool) error {
	if err := checkBolt(path, full); err != nil {
		return fmt.Errorf("snapshot %s: %w: not a usable database: %v", m.IDString(), ErrCorrupt, err)
	}
	return nil
}

// staged ends a Stage, here or in the worker process: on success the
// directory is made durable and the file kept, on any error removed.
func staged(f *os.File, m Manifest, err error, start time.Time) (*Staged, error) {
	if err == nil {
		if err = syncDir(filepath.Dir(f.Name())); err != nil {
			err = fmt.Errorf("snapshot %s: fsync %s: %w", m.IDString(), filepath.Dir(f.Name()), err)
		}
	}
	if err != nil {
		removeTemp(f)
		return &Staged{m: m}, err
	}
	m.Duration = time.Since(start)
	return &Staged{m: m, f: f}, nil
}

// stageInto reads a snapshot stream from r into f (empty), checking every
// chunk and the trailer, and fsyncs f: Stage's work, which the worker
// process does on the file its daemon created.
func stageInto(r io.Reader, f *os.File, opts Options) (Manifest, error) {
	hdr := make([]byte, headerLen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return Manifest{}, readErr("header", err)
	}
	m, err := decodeHeader(hdr)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := receiveInto(r, f, &m, opts.Workers); err != nil {
		return m, fmt.Errorf("snapshot %s: %w", m.IDString(), err)
	}
	if err := f.Sync(); err != nil {
		return m, fmt.Errorf("snapshot %s: fsync: %w", m.IDString(), err)
	}
	return m, nil
}

func readErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("snapshot: %w: stream ended in the %s", ErrTruncated, what)
	}
	return fmt.Errorf("snapshot: read %s: %w", what, err)
}

type decoded struct {
	raw []byte
	err error
}

// receiveInto reads the chunks and trailer, writing the database bytes to
// f. With one worker a single goroutine does everything; with two, one
// reads, checks and decompresses while this one writes.
func receiveInto(r io.Reader, f *os.File, m *Manifest, workers int) error {
	free := make(chan []byte, 3)
	for range 3 {
		free <- make([]byte, 0, m.ChunkSize)
	}
	var written int64
	consume := func(raw []byte) error {
		if _, err := f.Write(raw); err != nil {
			return fmt.Errorf("write %s: %w", f.Name(), err)
		}
		written += int64(len(raw))
		free <- raw[:0]
		return nil
	}
	var err error
	if workers < 2 {
		var cerr error
		n, rerr := readChunks(r, m, free, nil, func(d decoded) bool {
			cerr = consume(d.raw)
			return cerr == nil
		})
		m.StreamBytes = n
		err = errors.Join(cerr, rerr)
	} else {
		out := make(chan decoded, 2)
		stop := make(chan struct{})
		finished := make(chan struct{})
		var streamBytes int64
		// readChunks sets m.Digest, read here only after finished.
		rm := *m
		go func() {
			defer close(finished)
			defer close(out)
			send := func(d decoded) bool {
				select {
				case out <- d:
					return true
				case <-stop:
					return false
				}
			}
			n, err := readChunks(r, &rm, free, stop, send)
			streamBytes = n
			if err != nil {
				send(decoded{err: err})
			}
		}()
		var y sched.Yielder // writing 200 MB at the daemon's priority
		for d := range out {
			y.Pause()
			if d.err != nil {
				err = d.err
				break
			}
			if err = consume(d.raw); err != nil {
				break
			}
		}
		close(stop)
		<-finished
		m.StreamBytes = streamBytes
		m.Digest = rm.Digest
	}
	if err != nil {
		return err
	}
	if written != m.Size {
		return fmt.Errorf("%w: got %d database bytes, header says %d", ErrCorrupt, written, m.Size)
	}
	return nil
}

// readChunks reads and checks every chunk record (lengths, crc32c of the
// compressed bytes, tag of the raw bytes) and the trailer (digest of the
// tags, set in m), sending decompressed chunks in order. It returns the
// stream bytes read.
func readChunks(r io.Reader, m *Manifest, free chan []byte, stop chan struct{}, send func(decoded) bool) (int64, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(uint64(m.ChunkSize)))
	if err != nil {
		return 0, err
	}
	defer dec.Close()
	tg := newTagger(m.ID)
	digest := sha256.New()
	n := int64(headerLen)
	rec := make([]byte, chunkHdrLen)
	comp := make([]byte, maxCompressed(m.ChunkSize))
	var y sched.Yielder
	for i := 0; i < m.Chunks; i++ {
		y.Pause()
		if _, err := io.ReadFull(r, rec); err != nil {
			return n, readErr(fmt.Sprintf("chunk %d header", i), err)
		}
		ch := decodeChunkHdr(rec)
		want := min(int64(m.ChunkSize), m.Size-int64(i)*int64(m.ChunkSize))
		switch {
		case ch.index != uint32(i):
			return n, fmt.Errorf("%w: chunk %d has index %d", ErrCorrupt, i, ch.index)
		case int64(ch.rawLen) != want:
			return n, fmt.Errorf("%w: chunk %d raw length %d, want %d", ErrCorrupt, i, ch.rawLen, want)
		case int(ch.compLen) > len(comp):
			return n, fmt.Errorf("%w: chunk %d compressed length %d over the bound %d", ErrCorrupt, i, ch.compLen, len(comp))
		}
		data := comp[:ch.compLen]
		if _, err := io.ReadFull(r, data); err != nil {
			return n, readErr(fmt.Sprintf("chunk %d", i), err)
		}
		n += chunkHdrLen + int64(ch.compLen)
		if got := crc(data); got != ch.compCRC {
			return n, fmt.Errorf("%w: chunk %d compressed crc32c %08x, record says %08x", ErrCorrupt, i, got, ch.compCRC)
		}
		var buf []byte
		select {
		case buf = <-free:
		case <-stop:
			return n, nil
		}
		acquireCPU()
		raw, err := dec.DecodeAll(data, buf[:0])
		var got [tagLen]byte
		if err == nil && len(raw) == int(ch.rawLen) {
			got = tg.tag(ch.index, raw)
		}
		releaseCPU()
		if err != nil {
			return n, fmt.Errorf("%w: chunk %d: zstd: %v", ErrCorrupt, i, err)
		}
		if len(raw) != int(ch.rawLen) {
			return n, fmt.Errorf("%w: chunk %d decompressed to %d bytes, record says %d", ErrCorrupt, i, len(raw), ch.rawLen)
		}
		if got != ch.tag {
			return n, fmt.Errorf("%w: chunk %d tag %x, record says %x", ErrCorrupt, i, got, ch.tag)
		}
		digest.Write(ch.tag[:])
		if !send(decoded{raw: raw}) {
			return n, nil
		}
		runtime.Gosched() // as in Take's compressors
	}
	digest.Sum(m.Digest[:0])
	tr := make([]byte, trailerLen)
	if _, err := io.ReadFull(r, tr); err != nil {
		return n, readErr("trailer", err)
	}
	n += trailerLen
	return n, checkTrailer(tr, *m)
}

// checkBolt opens the file as a bbolt database, read-only: its meta pages
// must be valid. With full, bbolt's page-by-page consistency check runs too.
func checkBolt(path string, full bool) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	if !full {
		return nil
	}
	return db.View(func(tx *bbolt.Tx) error {
		var errs []error
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return errors.Join(errs...)
	})
}

// Install puts the staged file in place of target: swap.Close, rename,
// fsync of the directory, swap.Reopen. target must be in the directory the
// snapshot was staged in (a rename is only atomic within a file system); a
// relative target is taken relative to that directory. If swap.Close fails
// nothing changes and the staged file is kept (Discard it or retry); if
// the rename fails the old database is reopened.
func (st *Staged) Install(target string, swap Swap) error {
	if st == nil || st.f == nil {
		return errors.New("snapshot: nothing staged (already installed or discarded)")
	}
	dir := filepath.Dir(st.f.Name())
	if !filepath.IsAbs(target) && filepath.Dir(target) == "." {
		target = filepath.Join(dir, target)
	}
	absDir, err1 := filepath.Abs(dir)
	absTarget, err2 := filepath.Abs(target)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if filepath.Dir(absTarget) != absDir {
		return fmt.Errorf("snapshot: target %s is not in %s, where the snapshot was received: the rename would not be atomic", target, dir)
	}
	if swap.Close != nil {
		if err := swap.Close(); err != nil {
			return fmt.Errorf("snapshot: close the live database before installing: %w", err)
		}
	}
	reopen := func() error {
		if swap.Reopen == nil {
			return nil
		}
		return swap.Reopen()
	}
	if err := os.Rename(st.f.Name(), absTarget); err != nil {
		return errors.Join(fmt.Errorf("snapshot: install: %w", err), reopen())
	}
	// The lock is released with the descriptor, before the database is
	// opened again (bbolt takes its own lock on the same file).
	_ = st.f.Close()
	st.f = nil
	if err := syncDir(absDir); err != nil {
		return errors.Join(fmt.Errorf("snapshot: fsync %s after install: %w", absDir, err), reopen())
	}
	if err := reopen(); err != nil {
		return fmt.Errorf("snapshot: installed, but reopening the database failed: %w", err)
	}
	return nil
}
