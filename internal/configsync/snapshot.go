package configsync

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/snapshot"
	"github.com/tandem-ha/tandem/internal/syncchan"
)

// Management-database snapshots. Besides the revision stream, the ACTIVE
// sends the standby a full copy of its database (documents, history,
// audit log; internal/snapshot's format) after publishes — a trailing
// debounce bounded by SnapshotMaxDelay, one transfer in flight at a time,
// a publish during a transfer scheduling one more — every
// SnapshotInterval, and when a standby connects.
//
// On the wire: a JSON snap-begin frame, the stream in binary data frames
// ('D', transfer id, offset, bytes), a JSON snap-end frame with the
// length; snap-abort when the ACTIVE gives up; the standby answers each
// data frame it staged with snap-progress (the ACTIVE keeps at most
// snapWindow bytes unacknowledged) and the transfer with snap-result, the
// restore notification (snapshot.Result).
//
// The ACTIVE takes the snapshot in a read transaction (writers go on)
// and streams it as it reads (snapshot.Take), from its own goroutine. The
// standby stages the stream into a temp file (snapshot.Stage: every
// chunk, the whole-file digest and the bbolt meta pages checked), refuses a stale snapshot, sets a diverged history aside
// as conflicts first (configstore.Divergent against the received
// history), carries its own conflicts and apply outcomes into the staged
// file (Staged.Patch, configstore.CarryOver), and installs it: with the
// store lock held for writing — requests wait, none is served against a
// closed store — the store is closed, the file renamed over it, and the
// store reopened. Documents that changed are then applied.

// Snapshot frame types (JSON).
const (
	tSnapBegin  = "snap-begin"  // ACTIVE -> STANDBY: a snapshot stream follows
	tSnapEnd    = "snap-end"    // ACTIVE -> STANDBY: the stream is complete (Bytes)
	tSnapAbort  = "snap-abort"  // ACTIVE -> STANDBY: the stream will not be completed
	tSnapResult = "snap-result" // STANDBY -> ACTIVE: the restore notification
	// STANDBY -> ACTIVE: stream bytes staged so far (Bytes); the ACTIVE
	// keeps at most snapWindow bytes unacknowledged.
	tSnapProgress = "snap-progress"
)

// snapDataTag starts a binary data frame: tag, transfer id u64, offset
// u64 (big-endian), stream bytes. JSON frames start with '{'.
const (
	snapDataTag = 'D'
	snapDataHdr = 1 + 8 + 8
)

// Tunables (tests lower them).
var (
	// snapFrameData is the stream bytes per data frame, well under the
	// channel's frame limit (syncchan.DefaultMaxFrame, 4 MiB).
	snapFrameData = 256 << 10
	// snapWindow bounds the snapshot bytes sent and not yet staged by the
	// standby, so that a revision sent meanwhile queues behind at most
	// this much snapshot data (on the channel, in the TCP buffers and in
	// the standby's queue) rather than the channel's whole queue (16 MiB).
	snapWindow = 1 << 20
	// snapStall bounds the wait for the standby's progress.
	snapStall = 30 * time.Second
	// snapChunkSize is the snapshot's chunk size (raw bytes).
	snapChunkSize = snapshot.DefaultChunkSize
	// snapResultTimeout bounds the wait for the standby's restore
	// notification after the stream was sent (it verifies, fsyncs and
	// installs meanwhile); then the transfer counts as failed and the
	// next one may start.
	snapResultTimeout = 2 * time.Minute
)

// DefaultSnapshotDebounce is how long publishing must have been quiet
// before the ACTIVE takes a snapshot (trailing debounce), so that a burst
// of publishes costs one, taken after it (config_sync.snapshot_debounce).
const DefaultSnapshotDebounce = 500 * time.Millisecond

// DefaultSnapshotMaxDelay bounds the wait from the first publish not in a
// snapshot to the next snapshot, so that continuous publishing still gets
// snapshots (config_sync.snapshot_max_delay). Every revision reaches the
// standby on its own at once; the snapshot is the backstop for the rest of
// the database (audit log, history after a gap). A snapshot of a store
// grown by publishes of 100 KB documents is tens of MB and costs the
// standby a few hundred ms of disk and CPU, during which a revision can
// wait behind its install: 10 s keeps that under a few percent of the
// time during a sustained burst while bounding how stale the standby's
// full copy gets.
const DefaultSnapshotMaxDelay = 10 * time.Second

// Event kinds of the snapshot machinery (the worker's queue).
const (
	evSnapWant     eventKind = iota + 100 // a publish or a standby connected: a snapshot is wanted
	evSnapStart                           // the debounce ended
	evSnapTaken                           // the sending goroutine finished
	evSnapTimeout                         // no restore notification in time
	evSnapPeriodic                        // snapshot_interval elapsed
)

// snapDone is what the sending goroutine reports.
type snapDone struct {
	xfer    uint64
	m       snapshot.Manifest
	err     error
	started time.Time
}

// snapFrame is a snapshot control frame: the common frame fields and the
// transfer's.
type snapFrame struct {
	frame
	Xfer   uint64           `json:"xfer"`
	Bytes  int64            `json:"bytes,omitempty"`
	Result *snapshot.Result `json:"result,omitempty"`
	Stale  bool             `json:"stale,omitempty"`
}

// SnapshotView is the last management-database snapshot as config.status
// shows it: on the ACTIVE the last one sent (with the standby's answer),
// on the STANDBY the last one received.
type SnapshotView struct {
	ID         string    `json:"id"`
	At         time.Time `json:"at"`
	OK         bool      `json:"ok"`
	Stale      bool      `json:"stale,omitempty"` // refused as older than the standby's head: not a failure
	Error      string    `json:"error,omitempty"`
	Head       uint64    `json:"head,omitempty"`
	Size       int64     `json:"size"`  // database bytes
	Bytes      int64     `json:"bytes"` // stream bytes
	DurationMs float64   `json:"duration_ms"`
}

// snapStatus is the snapshot part of the shared state (Service.mu).
type snapStatus struct {
	last     *SnapshotView
	count    uint64 // snapshots installed
	inFlight bool
}

// snapWorker is the snapshot state owned by the worker goroutine (and
// Close, once the worker has stopped).
type snapWorker struct {
	interval, debounce, maxDelay time.Duration
	catchUpBytes                 int64
	runner                       snapshot.Runner

	// catchUp: the transfer in flight (or the next one) stands for the
	// history a standby lacks; the revisions after it follow its install.
	catchUp bool

	// ACTIVE: sending.
	greeted bool // a snapshot was asked for the standby since the session or role began
	busy    bool // a transfer is in flight (Take to the standby's answer)
	taking  bool // the sending goroutine runs
	again   bool // a publish came during the transfer: one more after it
	pending bool // the debounce timer runs
	// wantSince is when the first snapshot request not yet covered by a
	// transfer came (zero: none): the debounce never runs past it plus
	// maxDelay.
	wantSince time.Time
	timer     *time.Timer
	timerGen  uint64 // evSnapStart of an older arming is ignored
	xfer      uint64
	start     time.Time
	cancel    *atomic.Bool
	writer    *snapWriter // of the transfer being sent
	timeout   *time.Timer
	wg        sync.WaitGroup

	// STANDBY: receiving.
	rx *snapRx

	// The sync status last reported to the HA machine.
	reported bool
	lastSync ha.SyncStatus
}

type snapRx struct {
	xfer  uint64
	from  string
	pw    *io.PipeWriter
	done  chan stageResult
	off   int64
	start time.Time
}

type stageResult struct {
	st  *snapshot.Staged
	err error
}

// storeRef is the Service's handle on its store, which a snapshot install
// replaces. Every method loads the current store. Requests hold
// Service.storeMu for reading around their use of it; the install holds
// it for writing.
type storeRef struct {
	p atomic.Pointer[configstore.Store]
}

func (r *storeRef) get() *configstore.Store { return r.p.Load() }

func (r *storeRef) ApplyAll() error { return r.get().ApplyAll() }
func (r *storeRef) ApplyReplicated(rev configstore.Revision, c []byte) error {
	return r.get().ApplyReplicated(rev, c)
}
func (r *storeRef) Close() error                              { return r.get().Close() }
func (r *storeRef) ConflictContent(id uint64) ([]byte, error) { return r.get().ConflictContent(id) }
func (r *storeRef) Conflicts() ([]configstore.Conflict, error) {
	return r.get().Conflicts()
}
func (r *storeRef) Diff(a, b uint64) (string, error) { return r.get().Diff(a, b) }
func (r *storeRef) Divergent(head uint64, at func(uint64) ([32]byte, bool)) (configstore.Divergence, error) {
	return r.get().Divergent(head, at)
}
func (r *storeRef) Get(cat, name string, rev uint64) ([]byte, configstore.Revision, error) {
	return r.get().Get(cat, name, rev)
}
func (r *storeRef) HashAt(rev uint64) ([32]byte, bool)                { return r.get().HashAt(rev) }
func (r *storeRef) Head() (uint64, [32]byte)                          { return r.get().Head() }
func (r *storeRef) History(limit int) ([]configstore.Revision, error) { return r.get().History(limit) }
func (r *storeRef) List() ([]configstore.DocInfo, error)              { return r.get().List() }
func (r *storeRef) ApplyErrors() ([]string, error)                    { return r.get().ApplyErrors() }
func (r *storeRef) Publish(p configstore.Publish) (configstore.Revision, error) {
	return r.get().Publish(p)
}
func (r *storeRef) Rollback(rev uint64, author string, t time.Time) (configstore.Revision, error) {
	return r.get().Rollback(rev, author, t)
}
func (r *storeRef) SetReadOnly(on bool) { r.get().SetReadOnly(on) }
func (r *storeRef) LastPublishTimes() configstore.WriteTimes {
	return r.get().LastPublishTimes()
}
func (r *storeRef) SinceBounded(rev uint64, maxBytes int) ([]configstore.Revision, [][]byte, error) {
	return r.get().SinceBounded(rev, maxBytes)
}

// Status is this unit's configuration sync status. It waits while a
// snapshot is being installed.
func (s *Service) Status(active bool) Status {
	s.storeMu.RLock()
	defer s.storeMu.RUnlock()
	return s.status(active)
}

// SyncChanges delivers this unit's configuration sync status for the HA
// machine whenever it changes (the latest only): OUT_OF_SYNC while this
// unit is not ACTIVE and a document it holds failed to apply, IN_SYNC
// otherwise. The daemon combines it with state sync's (the worse wins),
// so a standby whose configuration failed to apply advertises
// OUT_OF_SYNC and a failover to it is refused without --force.
func (s *Service) SyncChanges() <-chan ha.SyncStatus { return s.syncCh }

// SetPeerActive tells the Service whether the HA machine sees the peer
// ACTIVE while this unit is ACTIVE too, for the "Collision" status when
// the sync channel cannot say so.
func (s *Service) SetPeerActive(both bool) { s.peerHA.Store(both) }

// reportSync recomputes the status SyncChanges delivers. Worker only.
func (s *Service) reportSync() {
	st := ha.SyncInSync
	if !s.active.Load() && len(s.applyErrors()) > 0 {
		st = ha.SyncOutOfSync
	}
	w := &s.snap
	if w.reported && st == w.lastSync {
		return
	}
	w.reported, w.lastSync = true, st
	select {
	case <-s.syncCh:
	default:
	}
	s.syncCh <- st
}

func (s *Service) snapInit(o Options) {
	s.snap.interval, s.snap.debounce, s.snap.maxDelay = o.SnapshotInterval, o.SnapshotDebounce, o.SnapshotMaxDelay
	if s.snap.debounce <= 0 {
		s.snap.debounce = DefaultSnapshotDebounce
	}
	if s.snap.maxDelay <= 0 {
		s.snap.maxDelay = DefaultSnapshotMaxDelay
	}
	s.snap.maxDelay = max(s.snap.maxDelay, s.snap.debounce)
	s.snap.catchUpBytes = o.CatchUpSnapshotBytes
	s.snap.runner = o.Snapshots
	if s.snap.runner == nil {
		s.snap.runner = snapshot.InProcess
	}
	if s.snap.catchUpBytes == 0 {
		s.snap.catchUpBytes = DefaultCatchUpSnapshotBytes
	}
	s.syncCh = make(chan ha.SyncStatus, 1)
	// A restore whose documents were not applied before a crash.
	if applied, err := s.store.get().ApplyPending(); err != nil {
		s.log.Warn("config sync: apply the documents of the last snapshot restore", "err", err)
	} else if applied {
		s.log.Info("config sync: applied the documents of the last snapshot restore")
	}
	s.reportSync()
	if iv := s.snap.interval; iv > 0 {
		s.snap.wg.Go(func() {
			t := time.NewTicker(iv)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					s.enqueue(event{kind: evSnapPeriodic})
				case <-s.stop:
					return
				}
			}
		})
	}
}

// snapClose ends what is in flight, once the worker has stopped.
func (s *Service) snapClose() {
	w := &s.snap
	if w.cancel != nil {
		w.cancel.Store(true)
	}
	if w.timeout != nil {
		w.timeout.Stop()
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	s.abortRx(errors.New("the service is closing"))
	w.wg.Wait()
}

func (s *Service) snapEvent(ev event) {
	switch ev.kind {
	case evSnapWant:
		s.snapWant()
	case evSnapStart:
		if ev.snap == nil || ev.snap.xfer != s.snap.timerGen {
			return // re-armed since
		}
		s.snap.pending = false
		s.snapStart()
	case evSnapPeriodic:
		if w := &s.snap; !w.busy && !w.taking && !w.pending {
			s.snapStart()
		}
	case evSnapTaken:
		s.snapTaken(ev.snap)
	case evSnapTimeout:
		if w := &s.snap; w.busy && ev.snap.xfer == w.xfer {
			w.busy = false
			s.snapFailed(fmt.Errorf("no restore notification from the standby within %s", snapResultTimeout))
			s.catchUpByReplay()
			s.snapNext()
		}
	}
}

func (s *Service) setInFlight(on bool) {
	s.mu.Lock()
	s.st.snap.inFlight = on
	s.mu.Unlock()
}

// ---- ACTIVE side ----

// snapWant asks for a snapshot: once requests have been quiet for the
// debounce but no later than maxDelay after the first request not yet
// covered, or after the transfer in flight. Trailing, so that a burst of
// publishes gets one snapshot after it instead of transfers competing
// with its revisions.
func (s *Service) snapWant() {
	w := &s.snap
	if !s.active.Load() {
		return
	}
	w.greeted = true
	now := time.Now()
	if w.wantSince.IsZero() {
		w.wantSince = now
	}
	if w.busy || w.taking {
		w.again = true
		return
	}
	wait := min(w.debounce, w.wantSince.Add(w.maxDelay).Sub(now))
	w.pending = true
	w.timerGen++
	gen := w.timerGen
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(max(0, wait), func() {
		s.enqueue(event{kind: evSnapStart, snap: &snapDone{xfer: gen}})
	})
}

func (s *Service) snapStart() {
	w := &s.snap
	if w.busy || w.taking {
		w.again = true
		return
	}
	w.wantSince = time.Time{} // this snapshot covers every request so far
	if !s.peerIsStandby() || s.send == nil {
		return
	}
	w.busy, w.taking, w.again = true, true, false
	if w.xfer == 0 {
		w.xfer = rand.Uint64() >> 1
	}
	w.xfer++
	w.start = s.now()
	w.cancel = new(atomic.Bool)
	sw := &snapWriter{xfer: w.xfer, send: s.send, cancel: w.cancel, begin: s.snapFrame(tSnapBegin, w.xfer),
		acked: new(atomic.Int64), progress: make(chan struct{}, 1)}
	w.writer = sw
	db := s.store.get().DB()
	done := &snapDone{xfer: w.xfer, started: w.start}
	s.setInFlight(true)
	runner := w.runner
	w.wg.Go(func() {
		done.m, done.err = runner.Take(db, sw, snapshot.Options{ChunkSize: snapChunkSize})
		switch {
		case done.err == nil:
			end := s.snapFrame(tSnapEnd, sw.xfer)
			end.Bytes = sw.off
			done.err = sw.sendControl(end)
		case sw.begun && !sw.cancel.Load():
			_ = sw.sendControl(s.snapFrame(tSnapAbort, sw.xfer))
		}
		s.enqueue(event{kind: evSnapTaken, snap: done})
	})
}

func (s *Service) snapFrame(t string, xfer uint64) snapFrame {
	return snapFrame{frame: frame{V: frameVersion, Schema: s.schema, Type: t, Node: s.node, Active: s.active.Load()}, Xfer: xfer}
}

func (s *Service) snapTaken(d *snapDone) {
	w := &s.snap
	w.taking = false
	if !w.busy || d.xfer != w.xfer {
		s.snapNext() // cancelled meanwhile (channel down, role change)
		return
	}
	if d.err != nil {
		w.busy = false
		s.snapFailed(fmt.Errorf("send snapshot %s: %w", d.m.IDString(), d.err))
		s.catchUpByReplay()
		s.snapNext()
		return
	}
	xfer := d.xfer
	w.timeout = time.AfterFunc(snapResultTimeout, func() {
		s.enqueue(event{kind: evSnapTimeout, snap: &snapDone{xfer: xfer}})
	})
}

// snapFailed records a transfer that failed on this side.
func (s *Service) snapFailed(err error) {
	now := s.now()
	s.recordError("management-database snapshot: %v", err)
	s.mu.Lock()
	s.st.sync.Record(snapshot.Result{Finished: now, Error: err.Error()})
	s.st.snap.last = &SnapshotView{At: now.UTC(), Error: err.Error(), DurationMs: ms(now.Sub(s.snap.start))}
	s.mu.Unlock()
}

// snapNext starts the transfer a publish asked for during the last one.
func (s *Service) snapNext() {
	w := &s.snap
	if w.busy || w.taking {
		return
	}
	s.setInFlight(false)
	if w.again {
		w.again = false
		s.snapWant()
	}
}

func (s *Service) onSnapResult(f snapFrame) {
	w := &s.snap
	if !w.busy || f.Xfer != w.xfer || f.Result == nil {
		return
	}
	w.busy = false
	if w.timeout != nil {
		w.timeout.Stop()
	}
	if w.taking && w.cancel != nil {
		// Refused before the end of the stream: stop sending it.
		w.cancel.Store(true)
	}
	r := *f.Result
	now := s.now()
	r.Finished = now.UTC()
	v := &SnapshotView{ID: r.ID, At: r.Finished, OK: r.OK, Stale: f.Stale, Error: r.Error, Head: f.Head,
		Size: r.Size, Bytes: r.Bytes, DurationMs: ms(now.Sub(w.start))}
	if strings.Trim(v.ID, "0") == "" {
		v.ID = "" // refused before its header was read
	}
	s.mu.Lock()
	if !f.Stale {
		s.st.sync.Record(r)
	}
	if r.OK {
		s.st.snap.count++
	}
	s.st.snap.last = v
	s.mu.Unlock()
	if r.OK || f.Stale {
		// The history up to the standby's new head came with the
		// snapshot: the rest follows.
		s.endCatchUp(f.Head)
	}
	s.catchUpByReplay()
	switch {
	case r.OK:
		s.log.Info("config sync: snapshot installed on the standby", "peer", f.Node, "id", r.ID, "size", r.Size, "stream_bytes", r.Bytes, "duration", now.Sub(w.start))
	case f.Stale:
		s.log.Info("config sync: the standby already had a newer head than the snapshot", "peer", f.Node, "id", r.ID, "err", r.Error)
	default:
		s.recordError("snapshot %s was not installed on %s: %s", r.ID, f.Node, r.Error)
	}
	s.snapNext()
}

// catchUpByReplay: a snapshot that stood for a standby's missing history
// did not get there; the history is replayed instead.
func (s *Service) catchUpByReplay() {
	s.mu.Lock()
	peerHead := s.st.peerHead
	s.mu.Unlock()
	s.endCatchUp(peerHead)
}

// endCatchUp ends a catch-up by snapshot, if one is under way: the
// revisions after upTo are pushed.
func (s *Service) endCatchUp(upTo uint64) {
	if !s.snap.catchUp {
		return
	}
	s.snap.catchUp = false
	s.sentUpTo = upTo
	s.push()
}

// snapPeerSeen: the standby answered; it gets a snapshot once per session
// and role, whoever spoke first.
func (s *Service) snapPeerSeen() {
	if !s.snap.greeted {
		s.snapWant()
	}
}

// snapDown: the channel ended (or a new session began), or this unit's
// role changed: whatever was in flight is abandoned.
func (s *Service) snapDown(why string) {
	w := &s.snap
	w.greeted, w.catchUp = false, false
	if w.busy {
		w.busy = false
		if w.cancel != nil {
			w.cancel.Store(true)
		}
		if w.timeout != nil {
			w.timeout.Stop()
		}
		s.snapFailed(fmt.Errorf("transfer abandoned: %s", why))
		s.snapNext()
	}
	s.abortRx(errors.New(why))
}

// onSnapProgress: the standby staged the stream up to f.Bytes.
func (s *Service) onSnapProgress(f snapFrame) {
	sw := s.snap.writer
	if !s.snap.busy || sw == nil || sw.xfer != f.Xfer || f.Bytes <= sw.acked.Load() {
		return
	}
	sw.acked.Store(f.Bytes)
	select {
	case sw.progress <- struct{}{}:
	default:
	}
}

// snapWriter turns Take's stream into frames: snap-begin before the first
// bytes, then data frames. It waits out the channel's backpressure, and
// keeps at most snapWindow bytes ahead of the standby's progress.
type snapWriter struct {
	xfer     uint64
	send     func(...[]byte) error
	cancel   *atomic.Bool
	begin    snapFrame
	begun    bool
	off      int64
	buf      []byte
	acked    *atomic.Int64 // stream bytes the standby staged (nil: no window)
	progress chan struct{} // acked moved
}

// waitWindow waits until k more bytes fit in the window.
func (w *snapWriter) waitWindow(k int) error {
	if w.acked == nil {
		return nil
	}
	last, lastAt := w.acked.Load(), time.Now()
	for w.off+int64(k)-w.acked.Load() > int64(max(snapWindow, k)) {
		if w.cancel.Load() {
			return errSnapCancelled
		}
		if a := w.acked.Load(); a != last {
			last, lastAt = a, time.Now()
		} else if time.Since(lastAt) > snapStall {
			return fmt.Errorf("the standby staged no snapshot data for %s", snapStall)
		}
		select {
		case <-w.progress:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

var errSnapCancelled = errors.New("transfer cancelled")

func (w *snapWriter) Write(p []byte) (int, error) {
	if !w.begun {
		if err := w.sendControl(w.begin); err != nil {
			return 0, err
		}
		w.begun = true
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), snapFrameData)
		if err := w.waitWindow(k); err != nil {
			return n, err
		}
		w.buf = append(w.buf[:0], snapDataTag)
		w.buf = binary.BigEndian.AppendUint64(w.buf, w.xfer)
		w.buf = binary.BigEndian.AppendUint64(w.buf, uint64(w.off))
		w.buf = append(w.buf, p[:k]...)
		if err := w.sendRetry(w.buf); err != nil {
			return n, err
		}
		p, n, w.off = p[k:], n+k, w.off+int64(k)
	}
	return n, nil
}

func (w *snapWriter) sendControl(f snapFrame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return w.sendRetry(b)
}

// sendRetry sends one frame, retrying while the channel's queue is full.
func (w *snapWriter) sendRetry(b []byte) error {
	backoff := time.Millisecond
	for {
		if w.cancel.Load() {
			return errSnapCancelled
		}
		err := w.send(b)
		if !errors.Is(err, syncchan.ErrBackpressure) {
			return err
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// ---- STANDBY side ----

func (s *Service) onSnapFrame(f frame, b []byte) {
	var sf snapFrame
	if err := json.Unmarshal(b, &sf); err != nil {
		s.recordError("bad snapshot frame from the peer: %v", err)
		return
	}
	switch f.Type {
	case tSnapBegin:
		s.onSnapBegin(sf)
	case tSnapEnd:
		s.onSnapEnd(sf)
	case tSnapAbort:
		if rx := s.snap.rx; rx != nil && rx.xfer == sf.Xfer {
			s.abortRx(errors.New("the ACTIVE abandoned the transfer"))
		}
	case tSnapResult:
		if s.active.Load() {
			s.onSnapResult(sf)
		}
	case tSnapProgress:
		if s.active.Load() {
			s.onSnapProgress(sf)
		}
	}
}

func (s *Service) onSnapBegin(f snapFrame) {
	s.abortRx(errors.New("a new snapshot transfer started"))
	if !s.peerIsActive() {
		s.snapReply(f.Xfer, snapshot.NewResult(s.node, snapshot.Manifest{}, fmt.Errorf("%s is not the STANDBY of an ACTIVE %s: snapshot refused", s.node, f.Node), s.now()), false)
		return
	}
	pr, pw := io.Pipe()
	rx := &snapRx{xfer: f.Xfer, from: f.Node, pw: pw, done: make(chan stageResult, 1), start: s.now()}
	dir := filepath.Dir(s.path)
	runner := s.snap.runner
	s.snap.wg.Go(func() {
		st, err := runner.Stage(pr, dir, snapshot.Options{})
		// Unblock the writer if Stage stopped before the end.
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(errors.New("stream longer than the snapshot"))
		}
		rx.done <- stageResult{st, err}
	})
	s.snap.rx = rx
	s.setInFlight(true)
}

func (s *Service) onSnapData(b []byte) {
	if len(b) < snapDataHdr {
		s.recordError("short snapshot data frame from the peer (%d bytes)", len(b))
		return
	}
	xfer, off := binary.BigEndian.Uint64(b[1:]), int64(binary.BigEndian.Uint64(b[9:]))
	rx := s.snap.rx
	if rx == nil || rx.xfer != xfer {
		return // of a transfer abandoned already
	}
	if off != rx.off {
		s.failRx(fmt.Errorf("%w: data at stream offset %d, expected %d", snapshot.ErrTruncated, off, rx.off))
		return
	}
	if _, err := rx.pw.Write(b[snapDataHdr:]); err != nil {
		s.failRx(nil) // Stage stopped: its error says why
		return
	}
	rx.off += int64(len(b) - snapDataHdr)
	// The pipe's reader has copied it: the channel may reuse the buffer
	// for the next frame instead of leaving 256 KiB to the collector.
	syncchan.Recycle(b)
	// Staged: the ACTIVE may send more (snapWindow).
	f := s.snapFrame(tSnapProgress, xfer)
	f.Bytes = rx.off
	if err := s.sendSnap(f, 5*time.Second); err != nil {
		s.recordError("send snapshot progress to the peer: %v", err)
	}
}

// sendSnap sends a snapshot control frame, waiting out a full queue for
// at most wait (the channel ends itself if the peer stops reading).
func (s *Service) sendSnap(f snapFrame, wait time.Duration) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if s.send == nil {
		return errors.New("the sync channel to the peer is down")
	}
	var cancel atomic.Bool
	t := time.AfterFunc(wait, func() { cancel.Store(true) })
	defer t.Stop()
	w := &snapWriter{send: s.send, cancel: &cancel}
	return w.sendRetry(b)
}

func (s *Service) onSnapEnd(f snapFrame) {
	rx := s.snap.rx
	if rx == nil || rx.xfer != f.Xfer {
		s.snapReply(f.Xfer, snapshot.NewResult(s.node, snapshot.Manifest{}, errors.New("no snapshot transfer in progress here (abandoned earlier)"), s.now()), false)
		return
	}
	if f.Bytes != rx.off {
		s.failRx(fmt.Errorf("%w: received %d stream bytes, the ACTIVE sent %d", snapshot.ErrTruncated, rx.off, f.Bytes))
		return
	}
	s.snap.rx = nil
	rx.pw.Close()
	res := <-rx.done
	if res.err != nil {
		s.finishRx(rx, res.st.Manifest(), res.err, false)
		return
	}
	m, stale, err := s.install(res.st, rx.from)
	s.finishRx(rx, m, err, stale)
}

// failRx ends the transfer in progress with an error (nil: Stage's own)
// and tells the ACTIVE.
func (s *Service) failRx(err error) {
	rx := s.snap.rx
	s.snap.rx = nil
	if err != nil {
		rx.pw.CloseWithError(err)
	} else {
		rx.pw.Close()
	}
	res := <-rx.done
	res.st.Discard()
	if err == nil {
		err = res.err
	}
	if err == nil {
		err = errors.New("stream longer than the snapshot")
	}
	s.finishRx(rx, res.st.Manifest(), err, false)
}

// abortRx abandons the transfer in progress without an answer (the
// channel is gone or a new transfer replaces it).
func (s *Service) abortRx(why error) {
	rx := s.snap.rx
	if rx == nil {
		return
	}
	s.snap.rx = nil
	rx.pw.CloseWithError(fmt.Errorf("%w: %v", snapshot.ErrTruncated, why))
	res := <-rx.done
	res.st.Discard()
	s.log.Info("config sync: snapshot transfer abandoned; the database is unchanged", "from", rx.from, "why", why)
	s.noteRx(rx, res.st.Manifest(), fmt.Errorf("transfer abandoned: %v", why), false)
	s.setInFlight(false)
}

func (s *Service) finishRx(rx *snapRx, m snapshot.Manifest, err error, stale bool) {
	m.Duration = s.now().Sub(rx.start)
	r := snapshot.NewResult(s.node, m, err, s.now())
	s.noteRx(rx, m, err, stale)
	s.setInFlight(false)
	switch {
	case err == nil:
		s.log.Info("config sync: snapshot installed", "from", rx.from, "id", m.IDString(), "size", m.Size, "duration", m.Duration)
	case stale:
		s.log.Info("config sync: stale snapshot not installed", "from", rx.from, "err", err)
	default:
		s.recordError("snapshot from %s not installed; the database is unchanged: %v", rx.from, err)
	}
	s.snapReply(rx.xfer, r, stale)
	if err == nil {
		// The ACTIVE learns the new head (and sends what it lacks).
		if err := s.sendFrames(s.standbyFrame(tAck)); err != nil {
			s.recordError("acknowledge the snapshot: %v", err)
		}
	}
}

func (s *Service) noteRx(rx *snapRx, m snapshot.Manifest, err error, stale bool) {
	now := s.now().UTC()
	v := &SnapshotView{ID: m.IDString(), At: now, OK: err == nil, Stale: stale, Size: m.Size, Bytes: m.StreamBytes, DurationMs: ms(now.Sub(rx.start))}
	if m.ID == ([16]byte{}) {
		v.ID = ""
	}
	if err != nil {
		v.Error = err.Error()
	} else {
		v.Head, _ = s.store.Head()
	}
	s.mu.Lock()
	s.st.snap.last = v
	if err == nil {
		s.st.snap.count++
	}
	s.mu.Unlock()
}

func (s *Service) snapReply(xfer uint64, r snapshot.Result, stale bool) {
	f := s.snapFrame(tSnapResult, xfer)
	f.Head, _ = s.store.Head()
	f.Result, f.Stale = &r, stale
	b, err := json.Marshal(f)
	if err == nil {
		if s.send == nil {
			err = errors.New("the sync channel to the peer is down")
		} else {
			// The ACTIVE waits for this one: wait out a full queue (the
			// channel ends itself if the peer stops reading).
			var cancel atomic.Bool
			time.AfterFunc(10*time.Second, func() { cancel.Store(true) })
			w := &snapWriter{send: s.send, cancel: &cancel}
			err = w.sendRetry(b)
		}
	}
	if err != nil {
		s.recordError("send the snapshot restore notification: %v", err)
	}
}

// install puts a staged snapshot in place of the live database. It
// refuses a stale snapshot (older than the local head of the same
// history), sets a diverged local history aside as conflicts first,
// carries this unit's conflicts and apply outcomes over, and swaps the
// store with the store lock held. The staged file is gone afterwards,
// installed or not.
func (s *Service) install(st *snapshot.Staged, from string) (m snapshot.Manifest, stale bool, err error) {
	defer st.Discard()
	m = st.Manifest()
	if s.active.Load() {
		return m, false, errors.New("this unit is ACTIVE now: a snapshot is only installed on a STANDBY")
	}
	recv, err := configstore.OpenReceived(st.Path())
	if err != nil {
		return m, false, err
	}
	snapHead, _ := recv.Head()
	cur := s.store.get()
	localHead, _ := cur.Head()
	top := min(localHead, snapHead)
	mine, ok1 := cur.HashAt(top)
	theirs, ok2 := recv.HashAt(top)
	switch same := ok1 && ok2 && mine == theirs; {
	case same && snapHead < localHead:
		recv.Close()
		return m, true, fmt.Errorf("stale snapshot: its head is revision %d and this unit already holds revision %d of the same history", snapHead, localHead)
	case !same:
		d, derr := cur.Divergent(snapHead, recv.HashAt)
		if derr != nil && !errors.Is(derr, configstore.ErrApply) {
			recv.Close()
			return m, false, fmt.Errorf("set the diverged local history aside before installing: %w", derr)
		}
		if len(d.Moved) > 0 {
			s.recordError("history diverged from the ACTIVE %s's snapshot after revision %d: %d local revision(s) set aside as conflicts (see `tandem config conflicts`)", from, d.Ancestor, len(d.Moved))
		}
	}
	recv.Close()
	local, err := cur.Local()
	if err != nil {
		return m, false, fmt.Errorf("read this unit's conflicts: %w", err)
	}
	var needApply bool
	rec := configstore.AuditRecord{Time: s.now(), Origin: from, Revision: snapHead,
		Message: fmt.Sprintf("installed management-database snapshot %s from %s (head %d, %d bytes); kept %d local conflict(s)", m.IDString(), from, snapHead, m.Size, local.Conflicts())}
	err = st.Patch(func(tx *bbolt.Tx) error {
		var err error
		needApply, err = configstore.CarryOver(tx, local, rec)
		return err
	})
	if err != nil {
		return m, false, err
	}

	s.storeMu.Lock()
	if s.active.Load() {
		s.storeMu.Unlock()
		return m, false, errors.New("this unit became ACTIVE during the install: not installed")
	}
	if h, _ := cur.Head(); h != local.Head() {
		s.storeMu.Unlock()
		return m, false, fmt.Errorf("the database moved from revision %d to %d during the install: not installed", local.Head(), h)
	}
	var reopened *configstore.Store
	reopen := func() error {
		ns, err := configstore.Open(s.path, s.storeOpts)
		if err != nil {
			return err
		}
		ns.SetReadOnly(true)
		reopened = ns
		return nil
	}
	err = st.Install(s.path, snapshot.Swap{Close: cur.Close, Reopen: reopen})
	if reopened == nil {
		// The store was closed (or failed to close) and not reopened: try
		// once more rather than serve nothing.
		time.Sleep(100 * time.Millisecond)
		if rerr := reopen(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("reopen the config store: %w", rerr))
			s.log.Error("config sync: the config store could not be reopened after a snapshot install", "err", err)
		}
	}
	if reopened != nil {
		s.store.p.Store(reopened)
		reopened.SetReadOnly(!s.active.Load())
	}
	s.storeMu.Unlock()
	if err != nil {
		return m, false, err
	}
	if needApply {
		if _, err := s.store.get().ApplyPending(); err != nil && !errors.Is(err, configstore.ErrApply) {
			s.recordError("apply the documents of snapshot %s: %v", m.IDString(), err)
		}
	}
	return m, false, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// snapView fills a peer's snapshot fields. Callers hold s.mu.
func (s *Service) snapView(pv *PeerView) {
	pv.Snapshots, pv.SnapshotInFlight = s.st.snap.count, s.st.snap.inFlight
	if v := s.st.snap.last; v != nil {
		c := *v
		pv.LastSnapshot = &c
	}
}
