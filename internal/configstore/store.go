package configstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

// categories is the fixed set of document categories, in the order documents
// are applied when several change at once (address and service definitions
// before the policies that use them).
var categories = [...]string{
	"interfaces", "definitions", "policies", "network", "firewall",
	"vpn", "users", "antivirus", "ips", "system",
}

// Categories returns the document categories in apply order.
func Categories() []string { return slices.Clone(categories[:]) }

func categoryIndex(c string) int {
	for i, k := range categories {
		if k == c {
			return i
		}
	}
	return -1
}

// Limits on request fields.
const (
	MaxNameLen    = 128
	MaxAuthorLen  = 256
	MaxMessageLen = 64 << 10
)

// Revision is one change to one document. Revisions are numbered 1, 2, 3...
// across the whole store, without gaps.
type Revision struct {
	Number   uint64
	Author   string
	Message  string
	Time     time.Time // UTC, nanosecond precision
	Category string
	Name     string
	Hash     [32]byte // sha256 of the content; zero for a deletion
	Deleted  bool
	Origin   string // the node that made it (Options.Node of the publisher)
}

// DocInfo is a current document and its latest revision.
type DocInfo struct {
	Category string
	Name     string
	Size     int
	Revision Revision
	// ApplyError is the last Apply hook failure for this document's latest
	// revision, empty when it applied (or there is no hook).
	ApplyError string
}

// AuditRecord is one entry of the store's audit log. The log is local: each
// unit records what happened to its own store.
type AuditRecord struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // one of the Audit* constants
	Author   string    `json:"author,omitempty"`
	Origin   string    `json:"origin,omitempty"`
	Category string    `json:"category,omitempty"`
	Name     string    `json:"name,omitempty"`
	Revision uint64    `json:"revision,omitempty"`
	Message  string    `json:"message,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// Audit actions.
const (
	AuditPublish     = "publish"      // a document was published on this unit
	AuditDelete      = "delete"       // a document was deleted on this unit
	AuditRollback    = "rollback"     // a revision written by Rollback
	AuditReplicate   = "replicate"    // a revision received from the peer
	AuditApplyFailed = "apply-failed" // an Apply/Remove hook failed
	AuditConflict    = "conflict"     // a local revision moved to the conflicts
)

// Hook validates and applies the documents of one category. Any field may
// be nil (no check, nothing to apply).
type Hook struct {
	// Validate checks content before anything is stored; an error rejects
	// the publish. Not called for deletions.
	Validate func(name string, content []byte) error
	// Apply puts a committed document into effect.
	Apply func(name string, content []byte) error
	// Remove takes a deleted document out of effect.
	Remove func(name string) error
}

// Options configure a Store.
type Options struct {
	// Hooks by category. Keys must be categories.
	Hooks map[string]Hook
	// Node is this unit's name, recorded as the Origin of what it publishes.
	Node string
	// LockTimeout bounds the wait for the database file lock; a second Open
	// of the same file fails with ErrLocked after it. Default 1 s.
	LockTimeout time.Duration
	// MmapSize is the initial memory map size. A write that needs a larger
	// map waits for every read transaction (a snapshot in progress), so it
	// is generous. Default: 1 GiB or twice the file, whichever is larger.
	MmapSize int
	// Now is the clock for revisions published without a time and for audit
	// records. Default time.Now.
	Now func() time.Time
	// NoSync skips fsync on commit. For tests and benchmarks only: a crash
	// may lose committed revisions.
	NoSync bool
}

// Publish is a request to change one document.
type Publish struct {
	Category string
	Name     string
	Content  []byte
	// Delete removes the document instead; Content must be empty.
	Delete  bool
	Author  string
	Message string
	// Time of the change; zero means now.
	Time time.Time
}

// Store is the configuration store. Its methods are safe for concurrent use.
// Writers (Publish, Rollback, ApplyReplicated, Divergent, ApplyAll) are
// serialized, hooks included; readers never wait for hooks and Head never
// touches the database.
type Store struct {
	db       *bbolt.DB
	path     string
	opts     Options
	mu       sync.Mutex // serializes writers and their hooks
	head     atomic.Pointer[headState]
	closed   atomic.Bool
	readOnly atomic.Bool
	lastPub  atomic.Pointer[WriteTimes]
}

// WriteTimes is where the last Publish spent its time, for the daemon's
// "slow write" log: waiting for the other writers (LockWait), for bbolt's
// writer lock (Begin), building the change (Build), committing it to disk
// (Commit: bbolt's writes and fsyncs) and running the apply hook (Apply).
type WriteTimes struct {
	LockWait, Begin, Build, Commit, Apply time.Duration
}

// LastPublishTimes returns the phases of the last Publish (zero before
// the first). With concurrent publishers, the last may be another's.
func (s *Store) LastPublishTimes() WriteTimes {
	if t := s.lastPub.Load(); t != nil {
		return *t
	}
	return WriteTimes{}
}

type headState struct {
	rev  uint64
	hash [32]byte
}

// Bucket and key names.
var (
	bMeta      = []byte("meta")
	bRevs      = []byte("revs")      // BE(number) -> encoded revision
	bDocs      = []byte("docs")      // cat\0name -> docEntry (current documents only)
	bDocRevs   = []byte("docrevs")   // cat\0name\0BE(number) -> {} (index)
	bBlobs     = []byte("blobs")     // sha256 -> content
	bAudit     = []byte("audit")     // BE(seq) -> JSON AuditRecord
	bConflicts = []byte("conflicts") // BE(id) -> encoded conflict
	bApplyErr  = []byte("applyerr")  // cat\0name -> BE(rev) + error text

	kFormat    = []byte("format")
	kHead      = []byte("head")
	kStateHash = []byte("statehash")

	allBuckets = [][]byte{bMeta, bRevs, bDocs, bDocRevs, bBlobs, bAudit, bConflicts, bApplyErr}
)

const formatVersion = 1

var emptyHash = sha256.Sum256(nil)

// Open opens (creating if needed) the store at path, e.g.
// /var/lib/tandem/config.db. The directory must exist. Leftover snapshot
// temp files of a crashed transfer in that directory are removed.
func Open(path string, opts Options) (*Store, error) {
	for c := range opts.Hooks {
		if categoryIndex(c) < 0 {
			return nil, fmt.Errorf("configstore: hooks: %w", unknownCategory(c))
		}
	}
	opts.Hooks = maps.Clone(opts.Hooks) // the caller may change its map later
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	mmap := opts.MmapSize
	if mmap <= 0 {
		mmap = 1 << 30
	}
	if fi, err := os.Stat(path); err == nil && int(2*fi.Size()) > mmap {
		mmap = int(2 * fi.Size())
	}
	// Best effort: a leftover that cannot be removed must not keep the
	// daemon from starting; the next Open or Receive tries again.
	_, _ = snapshot.CleanTemp(filepath.Dir(path))
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         opts.LockTimeout,
		InitialMmapSize: mmap,
		FreelistType:    bbolt.FreelistMapType,
		// The free-page list is rebuilt at open rather than written at
		// every commit: with a snapshot's read transaction open, freed
		// pages wait, the list grows, and each publish wrote all of it
		// — 3 MB and its fsync per 100 KB document in the benchmark
		// (BENCHMARKS.md, finding 26). etcd runs bbolt the same way.
		NoFreelistSync: true,
		NoSync:         opts.NoSync,
	})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("open config store %s: %w (waited %s for the file lock; is another tandem daemon running?)", path, ErrLocked, opts.LockTimeout)
		}
		return nil, fmt.Errorf("open config store %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: opts}
	var hs headState
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		if v := meta.Get(kFormat); v == nil {
			if err := meta.Put(kFormat, u64(formatVersion)); err != nil {
				return err
			}
			if err := meta.Put(kStateHash, stateHash(tx).bytes()); err != nil {
				return err
			}
		} else if len(v) != 8 || binary.BigEndian.Uint64(v) != formatVersion {
			return fmt.Errorf("%w: database format %x, this version reads format %d", ErrInvalid, v, formatVersion)
		}
		hs = readHead(tx)
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open config store %s: %w", path, err)
	}
	s.head.Store(&hs)
	return s, nil
}

// Close closes the database. It waits for transactions in progress (a
// snapshot being taken) to finish. Further calls return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	return s.db.Close()
}

// DB exposes the bbolt database for snapshot.Take. Writing through it
// bypasses every guarantee of this package: only read.
func (s *Store) DB() *bbolt.DB { return s.db }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// SetReadOnly makes Publish and Rollback fail with ErrReadOnly (a STANDBY);
// ApplyReplicated and Divergent still write.
func (s *Store) SetReadOnly(on bool) { s.readOnly.Store(on) }

// Head returns the latest revision number and a hash over all current
// documents (their categories, names and contents), what heartbeats carry to
// compare the units. Two stores with the same documents have the same hash
// whatever their histories. It does not touch the database.
func (s *Store) Head() (rev uint64, hash [32]byte) {
	h := s.head.Load()
	return h.rev, h.hash
}

func (s *Store) now() time.Time { return s.opts.Now() }

func (s *Store) view(fn func(tx *bbolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, bbolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// update runs fn in a write transaction and refreshes the cached head.
// Callers hold s.mu.
func (s *Store) update(fn func(tx *bbolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	var hs headState
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		hs = readHead(tx)
		return nil
	})
	if errors.Is(err, bbolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err == nil {
		s.head.Store(&hs)
	}
	return err
}

// ---- validation of request fields ----

func checkDoc(category, name string) error {
	if categoryIndex(category) < 0 {
		return unknownCategory(category)
	}
	return checkName(name)
}

func checkName(name string) error {
	bad := name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) ||
		strings.ContainsFunc(name, func(r rune) bool { return r == '/' || unicode.IsControl(r) })
	if bad {
		return fmt.Errorf("%w document name %q: use 1-%d characters, no '/' or control characters", ErrInvalid, name, MaxNameLen)
	}
	return nil
}

func checkAuthor(author string) error {
	if author == "" {
		return fmt.Errorf("%w author %q: every change needs an author for the audit log", ErrInvalid, author)
	}
	if len(author) > MaxAuthorLen {
		return fmt.Errorf("%w author %.20q...: at most %d bytes", ErrInvalid, author, MaxAuthorLen)
	}
	return nil
}

func checkMessage(msg string) error {
	if len(msg) > MaxMessageLen {
		return fmt.Errorf("%w message of %d bytes: at most %d", ErrInvalid, len(msg), MaxMessageLen)
	}
	return nil
}

// minTime and maxTime bound what UnixNano can represent.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Unix(0, 1<<63-1).UTC()
)

func normTime(t time.Time) (time.Time, error) {
	if t.Before(minTime) || t.After(maxTime) {
		return time.Time{}, fmt.Errorf("%w time %s: must be between 1970 and 2262", ErrInvalid, t.Format(time.RFC3339))
	}
	return time.Unix(0, t.UnixNano()).UTC(), nil
}

// ---- encoding ----

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func docKey(category, name string) []byte {
	return []byte(category + "\x00" + name)
}

func splitDocKey(k []byte) (category, name string) {
	c, n, _ := bytes.Cut(k, []byte{0})
	return string(c), string(n)
}

func docRevKey(category, name string, n uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(category+"\x00"+name+"\x00"), n)
}

// revCore is the encoding of a revision's fields, hashed into the chain.
func revCore(r Revision) []byte {
	b := make([]byte, 0, 96+len(r.Category)+len(r.Name)+len(r.Author)+len(r.Message)+len(r.Origin))
	b = append(b, 1) // encoding version
	b = binary.BigEndian.AppendUint64(b, r.Number)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	b = append(b, r.Hash[:]...)
	if r.Deleted {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	for _, s := range []string{r.Category, r.Name, r.Author, r.Message, r.Origin} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// chainNext is the history hash after r given the one before it. Two stores
// have the same chain hash at revision n exactly when their first n
// revisions are identical, which is how Divergent finds a common ancestor.
func chainNext(prev [32]byte, r Revision) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(revCore(r))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// stored revision: chain hash then core.
func encodeRev(r Revision, chain [32]byte) []byte {
	return append(chain[:], revCore(r)...)
}

// errCorruptRev is built once: decodeRev runs for every revision read,
// thousands of times a second while a standby catches up.
var errCorruptRev = fmt.Errorf("%w: corrupt revision record", ErrInvalid)

func decodeRev(b []byte) (Revision, [32]byte, error) {
	var r Revision
	var chain [32]byte
	if len(b) < 32+1+8+8+32+1 || b[32] != 1 {
		return r, chain, errCorruptRev
	}
	copy(chain[:], b)
	p := b[33:]
	r.Number = binary.BigEndian.Uint64(p)
	r.Time = time.Unix(0, int64(binary.BigEndian.Uint64(p[8:]))).UTC()
	copy(r.Hash[:], p[16:48])
	r.Deleted = p[48] == 1
	p = p[49:]
	for _, dst := range []*string{&r.Category, &r.Name, &r.Author, &r.Message, &r.Origin} {
		n, k := binary.Uvarint(p)
		if k <= 0 || uint64(len(p)-k) < n {
			return r, chain, errCorruptRev
		}
		*dst = string(p[k : k+int(n)])
		p = p[k+int(n):]
	}
	return r, chain, nil
}

// docEntry: BE(rev) + hash + BE(size).
type docEntry struct {
	rev  uint64
	hash [32]byte
	size uint64
}

func (d docEntry) bytes() []byte {
	b := binary.BigEndian.AppendUint64(nil, d.rev)
	b = append(b, d.hash[:]...)
	return binary.BigEndian.AppendUint64(b, d.size)
}

func decodeDoc(b []byte) docEntry {
	var d docEntry
	if len(b) != 48 {
		return d
	}
	d.rev = binary.BigEndian.Uint64(b)
	copy(d.hash[:], b[8:40])
	d.size = binary.BigEndian.Uint64(b[40:])
	return d
}

type hash32 [32]byte

func (h hash32) bytes() []byte { return slices.Clone(h[:]) }

// ---- transaction helpers ----

func readHead(tx *bbolt.Tx) headState {
	meta := tx.Bucket(bMeta)
	var hs headState
	if v := meta.Get(kHead); len(v) == 8 {
		hs.rev = binary.BigEndian.Uint64(v)
	}
	copy(hs.hash[:], meta.Get(kStateHash))
	return hs
}

func headOf(tx *bbolt.Tx) uint64 { return readHead(tx).rev }

// stateHash hashes every current document: length-prefixed key and content
// hash, in key order.
func stateHash(tx *bbolt.Tx) hash32 {
	h := sha256.New()
	var lb [binary.MaxVarintLen64]byte
	_ = tx.Bucket(bDocs).ForEach(func(k, v []byte) error {
		h.Write(lb[:binary.PutUvarint(lb[:], uint64(len(k)))])
		h.Write(k)
		d := decodeDoc(v)
		h.Write(d.hash[:])
		return nil
	})
	var out hash32
	h.Sum(out[:0])
	return out
}

func loadRev(tx *bbolt.Tx, n uint64) (Revision, [32]byte, error) {
	v := tx.Bucket(bRevs).Get(u64(n))
	if v == nil {
		return Revision{}, [32]byte{}, fmt.Errorf("revision %d: %w", n, ErrNotFound)
	}
	return decodeRev(v)
}

func chainAt(tx *bbolt.Tx, n uint64) ([32]byte, error) {
	if n == 0 {
		return [32]byte{}, nil
	}
	_, c, err := loadRev(tx, n)
	return c, err
}

func loadBlob(tx *bbolt.Tx, h [32]byte) ([]byte, error) {
	if h == emptyHash {
		return []byte{}, nil
	}
	v := tx.Bucket(bBlobs).Get(h[:])
	if v == nil {
		return nil, fmt.Errorf("%w: content %x missing", ErrInvalid, h[:8])
	}
	return slices.Clone(v), nil
}

// appendRev writes r as the revision after the head: content, history,
// index, current document and head. r.Number must be head+1.
func appendRev(tx *bbolt.Tx, r Revision, content []byte) error {
	head := headOf(tx)
	if r.Number != head+1 {
		return fmt.Errorf("%w: revision %d does not follow head %d", ErrGap, r.Number, head)
	}
	prev, err := chainAt(tx, head)
	if err != nil {
		return err
	}
	key := docKey(r.Category, r.Name)
	docs := tx.Bucket(bDocs)
	if r.Deleted {
		if docs.Get(key) == nil {
			return fmt.Errorf("delete %s/%s: document %w", r.Category, r.Name, ErrNotFound)
		}
		if err := docs.Delete(key); err != nil {
			return err
		}
	} else {
		blobs := tx.Bucket(bBlobs)
		if blobs.Get(r.Hash[:]) == nil {
			if err := blobs.Put(r.Hash[:], content); err != nil {
				return err
			}
		}
		if err := docs.Put(key, docEntry{r.Number, r.Hash, uint64(len(content))}.bytes()); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bRevs).Put(u64(r.Number), encodeRev(r, chainNext(prev, r))); err != nil {
		return err
	}
	if err := tx.Bucket(bDocRevs).Put(docRevKey(r.Category, r.Name, r.Number), []byte{}); err != nil {
		return err
	}
	return tx.Bucket(bMeta).Put(kHead, u64(r.Number))
}

// finish recomputes the state hash; call once at the end of a transaction
// that changed documents.
func finish(tx *bbolt.Tx) error {
	return tx.Bucket(bMeta).Put(kStateHash, stateHash(tx).bytes())
}

func addAudit(tx *bbolt.Tx, a AuditRecord) error {
	b := tx.Bucket(bAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	a.Seq = seq
	a.Time = a.Time.UTC()
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return b.Put(u64(seq), v)
}

func auditFor(action string, r Revision) AuditRecord {
	return AuditRecord{
		Time: r.Time, Action: action, Author: r.Author, Origin: r.Origin,
		Category: r.Category, Name: r.Name, Revision: r.Number, Message: r.Message,
	}
}

// ---- writing ----

// Publish validates, commits and applies one document change.
//
// The category's Validate hook runs first; if it fails nothing is stored
// and the error matches ErrValidation. The content, history record, audit
// record and new head are then committed in one transaction. The Apply (or
// Remove) hook runs last; if it fails the revision stays stored, the
// failure is recorded, and the returned error matches ErrApply alongside
// the stored Revision.
func (s *Store) Publish(p Publish) (Revision, error) {
	if err := checkDoc(p.Category, p.Name); err != nil {
		return Revision{}, err
	}
	if err := checkAuthor(p.Author); err != nil {
		return Revision{}, err
	}
	if err := checkMessage(p.Message); err != nil {
		return Revision{}, err
	}
	if p.Delete && len(p.Content) != 0 {
		return Revision{}, fmt.Errorf("%w content: a deletion of %s/%s carries no content (got %d bytes)", ErrInvalid, p.Category, p.Name, len(p.Content))
	}
	t := p.Time
	if t.IsZero() {
		t = s.now()
	}
	t, err := normTime(t)
	if err != nil {
		return Revision{}, err
	}
	asked := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	locked := time.Now()
	if s.closed.Load() {
		return Revision{}, ErrClosed
	}
	if s.readOnly.Load() {
		return Revision{}, fmt.Errorf("publish %s/%s: %w", p.Category, p.Name, ErrReadOnly)
	}
	hook := s.opts.Hooks[p.Category]
	if !p.Delete && hook.Validate != nil {
		if err := hook.Validate(p.Name, p.Content); err != nil {
			return Revision{}, &HookError{Stage: "validate", Category: p.Category, Name: p.Name, Err: err}
		}
	}
	r := Revision{
		Author: p.Author, Message: p.Message, Time: t,
		Category: p.Category, Name: p.Name, Deleted: p.Delete, Origin: s.opts.Node,
	}
	content := p.Content
	if p.Delete {
		content = nil
	} else {
		r.Hash = sha256.Sum256(content)
	}
	action := AuditPublish
	if p.Delete {
		action = AuditDelete
	}
	var began, built time.Time
	err = s.update(func(tx *bbolt.Tx) error {
		began = time.Now()
		r.Number = headOf(tx) + 1
		if err := appendRev(tx, r, content); err != nil {
			return err
		}
		if err := addAudit(tx, auditFor(action, r)); err != nil {
			return err
		}
		err := finish(tx)
		built = time.Now()
		return err
	})
	if err != nil {
		return Revision{}, fmt.Errorf("publish %s/%s: %w", p.Category, p.Name, err)
	}
	committed := time.Now()
	err = s.apply([]Revision{r}, [][]byte{content})
	s.lastPub.Store(&WriteTimes{LockWait: locked.Sub(asked), Begin: began.Sub(locked), Build: built.Sub(began),
		Commit: committed.Sub(built), Apply: time.Since(committed)})
	return r, err
}

// apply runs the Apply/Remove hooks of committed revisions, in order, and
// records the outcome. Callers hold s.mu.
func (s *Store) apply(revs []Revision, contents [][]byte) error {
	type outcome struct {
		r   Revision
		err error
	}
	var outs []outcome
	var errs []error
	for i, r := range revs {
		hook := s.opts.Hooks[r.Category]
		var err error
		stage := "apply"
		if r.Deleted {
			stage = "remove"
			if hook.Remove != nil {
				err = hook.Remove(r.Name)
			}
		} else if hook.Apply != nil {
			err = hook.Apply(r.Name, contents[i])
		}
		if err != nil {
			err = &HookError{Stage: stage, Category: r.Category, Name: r.Name, Revision: r.Number, Err: err}
			errs = append(errs, err)
		}
		outs = append(outs, outcome{r, err})
	}
	// Record failures; clear earlier failures of documents that now applied.
	needWrite := len(errs) > 0
	if !needWrite {
		_ = s.view(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bApplyErr)
			for _, o := range outs {
				if b.Get(docKey(o.r.Category, o.r.Name)) != nil {
					needWrite = true
				}
			}
			return nil
		})
	}
	if needWrite {
		now := s.now()
		err := s.update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bApplyErr)
			for _, o := range outs {
				key := docKey(o.r.Category, o.r.Name)
				if o.err == nil {
					if err := b.Delete(key); err != nil {
						return err
					}
					continue
				}
				v := append(u64(o.r.Number), o.err.Error()...)
				if err := b.Put(key, v); err != nil {
					return err
				}
				a := auditFor(AuditApplyFailed, o.r)
				a.Time, a.Error = now, o.err.Error()
				if err := addAudit(tx, a); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("record apply outcome: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ApplyAll runs the Apply hook of every current document, in category
// order: at daemon start and after a snapshot restore, so the running
// system matches the store. Failures are recorded like Publish's.
func (s *Store) ApplyAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var revs []Revision
	var contents [][]byte
	err := s.view(func(tx *bbolt.Tx) error {
		docs, err := currentDocs(tx)
		if err != nil {
			return err
		}
		for _, d := range docs {
			c, err := loadBlob(tx, d.Revision.Hash)
			if err != nil {
				return err
			}
			revs = append(revs, d.Revision)
			contents = append(contents, c)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.apply(revs, contents)
}

// ---- reading ----

// Get returns a document's content and revision at revision rev of the
// store (0 = head): the latest revision of that document numbered rev or
// lower. A document absent or deleted at rev gives ErrNotFound.
func (s *Store) Get(category, name string, rev uint64) ([]byte, Revision, error) {
	if err := checkDoc(category, name); err != nil {
		return nil, Revision{}, err
	}
	var content []byte
	var r Revision
	err := s.view(func(tx *bbolt.Tx) error {
		head := headOf(tx)
		if rev == 0 {
			rev = head
		}
		if rev > head {
			return fmt.Errorf("revision %d: %w (head is %d)", rev, ErrNotFound, head)
		}
		var err error
		r, content, err = docAt(tx, category, name, rev)
		return err
	})
	return content, r, err
}

// docAt finds the latest revision of a document at or before n.
func docAt(tx *bbolt.Tx, category, name string, n uint64) (Revision, []byte, error) {
	prefix := []byte(category + "\x00" + name + "\x00")
	c := tx.Bucket(bDocRevs).Cursor()
	// n+1 cannot overflow: n <= head, and a head of 2^64-1 is unreachable.
	k, _ := c.Seek(docRevKey(category, name, n+1))
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
		return Revision{}, nil, fmt.Errorf("document %s/%s at revision %d: %w", category, name, n, ErrNotFound)
	}
	r, _, err := loadRev(tx, binary.BigEndian.Uint64(k[len(prefix):]))
	if err != nil {
		return Revision{}, nil, err
	}
	if r.Deleted {
		return Revision{}, nil, fmt.Errorf("document %s/%s at revision %d: %w (deleted at revision %d)", category, name, n, ErrNotFound, r.Number)
	}
	content, err := loadBlob(tx, r.Hash)
	return r, content, err
}

// ApplyErrors returns the apply failures of the documents' current
// revisions, in document order — List's ApplyError fields, without
// reading every document: a standby asks after each replicated revision,
// and List of a database of thousands of documents is milliseconds of
// allocation each time (BENCHMARKS.md, finding 18).
func (s *Store) ApplyErrors() ([]string, error) {
	var out []string
	err := s.view(func(tx *bbolt.Tx) error {
		docs := tx.Bucket(bDocs)
		return tx.Bucket(bApplyErr).ForEach(func(k, e []byte) error {
			if v := docs.Get(k); v != nil && len(e) >= 8 && binary.BigEndian.Uint64(e) == decodeDoc(v).rev {
				out = append(out, string(e[8:]))
			}
			return nil
		})
	})
	return out, err
}

func currentDocs(tx *bbolt.Tx) ([]DocInfo, error) {
	var out []DocInfo
	aerr := tx.Bucket(bApplyErr)
	err := tx.Bucket(bDocs).ForEach(func(k, v []byte) error {
		d := decodeDoc(v)
		r, _, err := loadRev(tx, d.rev)
		if err != nil {
			return err
		}
		info := DocInfo{Category: r.Category, Name: r.Name, Size: int(d.size), Revision: r}
		if e := aerr.Get(k); len(e) >= 8 && binary.BigEndian.Uint64(e) == d.rev {
			info.ApplyError = string(e[8:])
		}
		out = append(out, info)
		return nil
	})
	sortDocs(out, func(d DocInfo) (string, string) { return d.Category, d.Name })
	return out, err
}

func sortDocs[T any](s []T, key func(T) (string, string)) {
	slices.SortFunc(s, func(a, b T) int {
		ca, na := key(a)
		cb, nb := key(b)
		if d := categoryIndex(ca) - categoryIndex(cb); d != 0 {
			return d
		}
		return strings.Compare(na, nb)
	})
}

// List returns the current documents with their latest revisions, in
// category order then by name.
func (s *Store) List() ([]DocInfo, error) {
	var out []DocInfo
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		out, err = currentDocs(tx)
		return err
	})
	return out, err
}

// History returns the latest limit revisions, newest first (limit <= 0:
// all).
func (s *Store) History(limit int) ([]Revision, error) {
	var out []Revision
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bRevs).Cursor()
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			r, _, err := decodeRev(v)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Audit returns the latest limit audit records, newest first (limit <= 0:
// all).
func (s *Store) Audit(limit int) ([]AuditRecord, error) {
	var out []AuditRecord
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var a AuditRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// docState is the set of documents at one point of history.
type docState map[string]Revision // docKey -> latest revision (not deleted)

// stateAt returns the documents as they were at revision n.
func stateAt(tx *bbolt.Tx, n uint64) (docState, error) {
	st := docState{}
	if n == headOf(tx) {
		err := tx.Bucket(bDocs).ForEach(func(k, v []byte) error {
			r, _, err := loadRev(tx, decodeDoc(v).rev)
			st[string(k)] = r
			return err
		})
		return st, err
	}
	// Walk the index: for each document, its last revision <= n.
	latest := map[string]uint64{}
	err := tx.Bucket(bDocRevs).ForEach(func(k, _ []byte) error {
		if len(k) < 9 {
			return nil
		}
		num := binary.BigEndian.Uint64(k[len(k)-8:])
		if num <= n {
			latest[string(k[:len(k)-9])] = num
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for key, num := range latest {
		r, _, err := loadRev(tx, num)
		if err != nil {
			return nil, err
		}
		if !r.Deleted {
			st[key] = r
		}
	}
	return st, nil
}

func checkRev(tx *bbolt.Tx, n uint64) error {
	if head := headOf(tx); n > head {
		return fmt.Errorf("revision %d: %w (head is %d)", n, ErrNotFound, head)
	}
	return nil
}

// Diff returns a unified-style line diff of every document that differs
// between revisions rev1 and rev2 of the store (0 = the empty configuration
// before revision 1), in category order; "" when they are the same.
func (s *Store) Diff(rev1, rev2 uint64) (string, error) {
	var out strings.Builder
	err := s.view(func(tx *bbolt.Tx) error {
		for _, n := range []uint64{rev1, rev2} {
			if err := checkRev(tx, n); err != nil {
				return err
			}
		}
		a, err := stateAt(tx, rev1)
		if err != nil {
			return err
		}
		b, err := stateAt(tx, rev2)
		if err != nil {
			return err
		}
		for _, key := range changedKeys(a, b) {
			cat, name := splitDocKey([]byte(key))
			ra, inA := a[key]
			rb, inB := b[key]
			var ca, cb []byte
			if inA {
				if ca, err = loadBlob(tx, ra.Hash); err != nil {
					return err
				}
			}
			if inB {
				if cb, err = loadBlob(tx, rb.Hash); err != nil {
					return err
				}
			}
			from, to := "/dev/null", "/dev/null"
			if inA {
				from = fmt.Sprintf("%s/%s@%d", cat, name, rev1)
			}
			if inB {
				to = fmt.Sprintf("%s/%s@%d", cat, name, rev2)
			}
			out.WriteString(unifiedDiff(from, to, ca, cb))
		}
		return nil
	})
	return out.String(), err
}

// changedKeys lists the documents that differ between two states, in
// category then name order.
func changedKeys(a, b docState) []string {
	var keys []string
	for k, ra := range a {
		if rb, ok := b[k]; !ok || rb.Hash != ra.Hash {
			keys = append(keys, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sortDocs(keys, func(k string) (string, string) { return splitDocKey([]byte(k)) })
	return keys
}

// Rollback publishes, as new revisions, the content every document had at
// revision rev: one revision per document that differs (deletions for
// documents that did not exist then), committed in one transaction after
// every Validate hook passed, then applied in category order. It returns
// the last of them (the new head); ErrNoChange when nothing differs.
func (s *Store) Rollback(rev uint64, author string, t time.Time) (Revision, error) {
	if err := checkAuthor(author); err != nil {
		return Revision{}, err
	}
	if rev == 0 {
		return Revision{}, fmt.Errorf("%w revision 0: roll back to a revision from 1 to the head", ErrInvalid)
	}
	if t.IsZero() {
		t = s.now()
	}
	t, err := normTime(t)
	if err != nil {
		return Revision{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readOnly.Load() {
		return Revision{}, fmt.Errorf("rollback to revision %d: %w", rev, ErrReadOnly)
	}
	// Plan outside the write transaction (hooks may be slow), then check
	// in it that nothing moved (writers are serialized by s.mu, so it
	// cannot, but the check is cheap).
	var revs []Revision
	var contents [][]byte
	var planned uint64
	err = s.view(func(tx *bbolt.Tx) error {
		if err := checkRev(tx, rev); err != nil {
			return err
		}
		planned = headOf(tx)
		then, err := stateAt(tx, rev)
		if err != nil {
			return err
		}
		now, err := stateAt(tx, planned)
		if err != nil {
			return err
		}
		for _, key := range changedKeys(then, now) {
			cat, name := splitDocKey([]byte(key))
			r := Revision{
				Author: author, Message: fmt.Sprintf("rollback to revision %d", rev), Time: t,
				Category: cat, Name: name, Origin: s.opts.Node,
			}
			var c []byte
			if old, ok := then[key]; ok {
				r.Hash = old.Hash
				if c, err = loadBlob(tx, old.Hash); err != nil {
					return err
				}
			} else {
				r.Deleted = true
			}
			revs = append(revs, r)
			contents = append(contents, c)
		}
		return nil
	})
	if err != nil {
		return Revision{}, fmt.Errorf("rollback to revision %d: %w", rev, err)
	}
	if len(revs) == 0 {
		return Revision{}, fmt.Errorf("rollback to revision %d: %w: the configuration is the same as at the head", rev, ErrNoChange)
	}
	for i, r := range revs {
		if h := s.opts.Hooks[r.Category]; !r.Deleted && h.Validate != nil {
			if err := h.Validate(r.Name, contents[i]); err != nil {
				return Revision{}, &HookError{Stage: "validate", Category: r.Category, Name: r.Name, Err: err}
			}
		}
	}
	err = s.update(func(tx *bbolt.Tx) error {
		if headOf(tx) != planned {
			return fmt.Errorf("%w: head moved during rollback", ErrGap)
		}
		for i := range revs {
			revs[i].Number = planned + uint64(i) + 1
			if err := appendRev(tx, revs[i], contents[i]); err != nil {
				return err
			}
			if err := addAudit(tx, auditFor(AuditRollback, revs[i])); err != nil {
				return err
			}
		}
		return finish(tx)
	})
	if err != nil {
		return Revision{}, fmt.Errorf("rollback to revision %d: %w", rev, err)
	}
	return revs[len(revs)-1], s.apply(revs, contents)
}
