package configsync

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/sched"
	"github.com/tandem-ha/tandem/internal/snapshot"
	"github.com/tandem-ha/tandem/internal/version"
)

// ErrReadOnlyStandby is what a write on a unit that is not ACTIVE returns
// (wrapped in a *ReadOnlyError that names the ACTIVE unit).
var ErrReadOnlyStandby = errors.New("read-only standby")

// ReadOnlyError is a refused write on the STANDBY; it matches
// ErrReadOnlyStandby with errors.Is.
type ReadOnlyError struct {
	Node       string // this unit
	ActiveName string // "" when not known
	ActiveAddr string // "" when not known
}

func (e *ReadOnlyError) Error() string {
	switch {
	case e.ActiveName == "" && e.ActiveAddr == "":
		return fmt.Sprintf("this unit (%s) is the STANDBY and read-only; make changes on the ACTIVE unit (no ACTIVE unit is known right now)", e.Node)
	case e.ActiveName == "":
		return fmt.Sprintf("this unit (%s) is the STANDBY and read-only; make changes on the ACTIVE unit (%s)", e.Node, e.ActiveAddr)
	case e.ActiveAddr == "":
		return fmt.Sprintf("this unit (%s) is the STANDBY and read-only; make changes on the ACTIVE unit %s", e.Node, e.ActiveName)
	}
	return fmt.Sprintf("this unit (%s) is the STANDBY and read-only; make changes on the ACTIVE unit %s (%s)", e.Node, e.ActiveName, e.ActiveAddr)
}

// Unwrap makes errors.Is(err, ErrReadOnlyStandby) hold.
func (e *ReadOnlyError) Unwrap() error { return ErrReadOnlyStandby }

// MaxDocument is the largest document a publish accepts. Documents larger
// than ChunkSize travel in several frames.
const MaxDocument = 32 << 20

var maxDocument = MaxDocument // tests lower it

// ChunkSize is the most content bytes one frame carries (raw after the
// frame's JSON header, well under the channel's 4 MiB frame limit).
const ChunkSize = 1 << 20

// Options configure a Service opened without a tandem configuration (tests).
type Options struct {
	Path   string // the bbolt file
	Node   string // this unit's name
	Hooks  map[string]configstore.Hook
	Logger *slog.Logger
	// HA says whether a peer exists to synchronize with (sync enabled);
	// false shows "No HA".
	HA bool
	// Schema is the configuration schema this unit speaks; 0 means
	// version.Schema.
	Schema int
	// NoSync skips fsync in the store (tests only).
	NoSync bool
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SnapshotInterval is how often the ACTIVE sends the standby a
	// snapshot of the whole database besides after publishes
	// (config_sync.snapshot_interval); 0: only after publishes and when a
	// standby connects.
	SnapshotInterval time.Duration
	// SnapshotDebounce is how long publishing must be quiet before the
	// snapshot (config_sync.snapshot_debounce); default
	// DefaultSnapshotDebounce.
	SnapshotDebounce time.Duration
	// SnapshotMaxDelay bounds the wait from the first publish not in a
	// snapshot to the snapshot (config_sync.snapshot_max_delay); default
	// DefaultSnapshotMaxDelay, never less than SnapshotDebounce.
	SnapshotMaxDelay time.Duration
	// CatchUpSnapshotBytes: a standby whose missing history is estimated
	// above this many bytes (a new unit: an empty database) is caught up
	// by a snapshot of the database, not by replaying every revision.
	// Default DefaultCatchUpSnapshotBytes; negative: always replay.
	CatchUpSnapshotBytes int64
	// Snapshots takes and stages the snapshots; nil: in this process
	// (snapshot.InProcess). The daemon uses a snapshot.Worker, which does
	// the bulk work in a child process below its priority.
	Snapshots snapshot.Runner
}

// Service is one unit's configuration store and its replication.
type Service struct {
	store     storeRef     // the current store, replaced by a snapshot install
	storeMu   sync.RWMutex // held for reading by requests, for writing by the install
	path      string
	storeOpts configstore.Options
	log       *slog.Logger
	node      string
	ha        bool
	schema    int
	now       func() time.Time

	active atomic.Bool

	qmu    sync.Mutex
	queue  []event
	signal chan struct{}
	stop   chan struct{}
	done   chan struct{}
	closed atomic.Bool

	mu sync.Mutex // guards st (read by Handle)
	st state

	// Owned by the worker goroutine.
	send     func(...[]byte) error
	sentUpTo uint64 // ACTIVE: revisions up to this one were queued to the peer
	lastPush time.Time
	// pushHeld: the last push stopped on the channel's backpressure; the
	// standby's next ack, the next tick or publish goes on from sentUpTo.
	pushHeld bool
	// yield: applying revisions, staging snapshot data and reading
	// history for a standby are bulk work at the daemon's realtime
	// priority; the Service goroutine yields between events and between
	// revisions it pushes (internal/sched).
	yield   sched.Yielder
	partial *partialRev
	snap    snapWorker

	syncCh chan ha.SyncStatus // SyncChanges
	peerHA atomic.Bool        // SetPeerActive
}

// state is what the worker shares with status readers.
type state struct {
	linkUp     bool
	peerKnown  bool
	peerName   string
	peerActive bool
	peerHead   uint64
	peerHash   [32]byte
	peerErr    string // the standby's own apply failures, as it reported them
	schemaErr  string
	resyncing  bool
	sync       snapshot.PeerSync
	snap       snapStatus
	errors     []string
}

type partialRev struct {
	rev   wireRev
	parts [][]byte
	got   int
}

type eventKind int

const (
	evFrame eventKind = iota
	evUp
	evDown
	evKick
	evRole
	evForce
)

type event struct {
	kind eventKind
	b    []byte
	send func(...[]byte) error
	snap *snapDone
}

// Open opens the Service of a tandem configuration: the store at
// <state_dir>/config.db, the policies category validated and applied with
// nft unless config_sync.hooks says otherwise, the other categories with
// their config_sync.hooks commands. snapshots takes and stages the
// snapshots (nil: in this process).
func Open(cfg *config.Config, logger *slog.Logger, snapshots snapshot.Runner) (*Service, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("config sync: state_dir is not set")
	}
	hooks := map[string]configstore.Hook{"policies": configstore.NftHook("")}
	for cat, h := range cfg.ConfigSync.Hooks {
		hooks[cat] = configstore.CommandHook(h.Validate, h.Apply)
	}
	return OpenWith(Options{
		Path:   filepath.Join(cfg.StateDir, "config.db"),
		Node:   cfg.Node.Name,
		Hooks:  hooks,
		Logger: logger,
		HA:     cfg.Sync.Enabled,

		SnapshotInterval: cfg.ConfigSync.SnapshotInterval.Duration,
		SnapshotDebounce: cfg.ConfigSync.SnapshotDebounce.Duration,
		SnapshotMaxDelay: cfg.ConfigSync.SnapshotMaxDelay.Duration,
		Snapshots:        snapshots,
	})
}

// OpenWith opens a Service from explicit options and starts its worker.
// It starts as not ACTIVE (read-only) until SetActive(true).
func OpenWith(o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Schema == 0 {
		o.Schema = version.Schema
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(o.Path), 0o700); err != nil {
		return nil, fmt.Errorf("config sync: state directory: %w", err)
	}
	storeOpts := configstore.Options{Hooks: o.Hooks, Node: o.Node, Now: o.Now, NoSync: o.NoSync}
	st, err := configstore.Open(o.Path, storeOpts)
	if err != nil {
		return nil, err
	}
	st.SetReadOnly(true)
	s := &Service{
		log: o.Logger, node: o.Node, ha: o.HA, schema: o.Schema, now: o.Now,
		path: o.Path, storeOpts: storeOpts,
		signal: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	s.store.p.Store(st)
	s.st.sync.Peer = "peer"
	s.snapInit(o)
	go s.run()
	return s, nil
}

// Close stops the worker and closes the store.
func (s *Service) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	<-s.done
	s.snapClose()
	return s.store.Close()
}

// Store exposes the configuration store (read it; write through Handle).
func (s *Service) Store() *configstore.Store { return s.store.get() }

// SetActive tells the Service this unit's HA role. Writes are accepted only
// while active; the store is made read-only at once when the unit leaves
// ACTIVE.
func (s *Service) SetActive(active bool) {
	// The flag first: a snapshot install that swaps the store meanwhile
	// sets the new store's read-only flag from it.
	changed := s.active.Swap(active) != active
	s.store.SetReadOnly(!active)
	if changed {
		s.enqueue(event{kind: evRole})
	}
}

// Head is the store's head revision and the first 8 bytes of its content
// hash, what the heartbeats carry.
func (s *Service) Head() (rev uint64, hash [8]byte) {
	r, h := s.store.Head()
	copy(hash[:], h[:8])
	return r, hash
}

// Frame, Up and Down implement statesync.Extra. They only queue: the work
// happens on the Service's goroutine.
func (s *Service) Frame(b []byte, send func(...[]byte) error) {
	s.enqueue(event{kind: evFrame, b: b, send: send})
}

// Up: the channel to the peer is up.
func (s *Service) Up(send func(...[]byte) error) { s.enqueue(event{kind: evUp, send: send}) }

// Down: the channel to the peer is down.
func (s *Service) Down() { s.enqueue(event{kind: evDown}) }

func (s *Service) enqueue(ev event) {
	s.qmu.Lock()
	s.queue = append(s.queue, ev)
	s.qmu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *Service) recordError(format string, args ...any) {
	msg := s.now().UTC().Format(time.RFC3339) + " " + fmt.Sprintf(format, args...)
	s.log.Warn("config sync: " + fmt.Sprintf(format, args...))
	s.mu.Lock()
	s.st.errors = append(s.st.errors, msg)
	if n := len(s.st.errors); n > 10 {
		s.st.errors = s.st.errors[n-10:]
	}
	s.mu.Unlock()
}

// applyErrors lists the current documents whose last apply failed.
func (s *Service) applyErrors() []string {
	errs, err := s.store.ApplyErrors()
	if err != nil {
		return []string{"read apply errors: " + err.Error()}
	}
	return errs
}

func (s *Service) chainAt(rev uint64) [32]byte {
	h, _ := s.store.HashAt(rev)
	return h
}

func sameBytes(a, b []byte) bool { return bytes.Equal(a, b) }
