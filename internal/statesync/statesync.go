// Package statesync runs tandem's state synchronization on one unit: the
// authenticated sync channel to the peer (internal/syncchan) and, depending
// on the HA role the daemon gives it, either a replication source fed by
// this unit's kernel (the ACTIVE: conntrack entries, expectations, dynamic
// nftables set elements) or a replication sink that writes the peer's
// state into this unit's kernel (the STANDBY).
//
// It runs its own loop, beside the HA event loop, because a burst of a
// million connection changes must never delay a heartbeat; the two loops
// talk through channels (SetRole in, Status out). The replication logic is
// internal/repl's (pure, simulated); the kernel work is internal/ctsync's
// and internal/nftsets'. This package only wires them and must never decide
// HA state or hold replication logic of its own.
//
// Frames on the channel carry a one-byte kind so that other kinds of state
// (configuration revisions, database snapshots, the stats exchange) share
// the one authenticated connection.
//
// A role change reads no kernel table while the takeover is under way. A
// conntrack dump walks every bucket of the kernel's hash however few
// entries it holds, and the kernel keeps the CPU meanwhile (7 ms for
// 262,144 buckets on the 2-vCPU test VM, whose kernel is not preemptible:
// every thread queued on that CPU waits, realtime or not). So the new
// ACTIVE publishes its table only when a standby asks for a copy, by
// looking up each connection it mirrored as a standby (short system calls;
// ctsync.SourceOptions.KnownKeys), or by a dump when it mirrored many; it
// serves no copy before (a standby would otherwise take an empty table for
// the ACTIVE's and say IN_SYNC); the full dump that completes the table
// runs publishAfter the takeover. The former ACTIVE, now a sink, reconciles
// the copy it receives with the table it last published itself
// (ctsync.Sink.AdoptPublished) instead of dumping its kernel.
//
// A standby checkpoints its conntrack record with its replication
// position, and a restarted daemon resumes the stream from it instead of
// taking a full copy (checkpoint.go).
package statesync

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/ctsync"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/nftsets"
	"github.com/tandem-ha/tandem/internal/repl"
	"github.com/tandem-ha/tandem/internal/sched"
	"github.com/tandem-ha/tandem/internal/syncchan"
)

// Frame kinds on the sync channel.
const (
	KindRepl  byte = 'R' // internal/repl frames
	KindStats byte = 'S' // the peer's stats summary, for `tandem stats --compare`
	KindExtra byte = 'X' // frames of an Extra handler (config sync)
	KindRole  byte = 'A' // "I am now the source" / "I am now a sink"
)

// Config is what a unit needs to synchronize state.
type Config struct {
	Link syncchan.Config
	// NS is the network namespace whose kernel tables are synchronized.
	NS netns.NsHandle
	// Conntrack synchronizes connections and expectations; Mode is the
	// sink's (inject or hold).
	Conntrack bool
	Mode      ctsync.SinkMode
	// IgnorePrefixes and IgnorePorts keep the HA link's own traffic out.
	IgnorePrefixes []netip.Prefix
	IgnorePorts    []uint16
	NftSets        []nftsets.SetRef
	MaxRateBytes   int
	MaxRateEntries int
	OutOfSyncAfter time.Duration
	Logger         *slog.Logger
	// Extra, when set, handles KindExtra frames (configuration sync).
	Extra Extra
	// CheckpointPath, when set, is where a standby saves its record of the
	// conntrack entries it wrote with its replication position, and where
	// its next daemon finds them to resume the stream instead of asking for
	// a full copy (checkpoint.go).
	CheckpointPath string
}

// Extra is another kind of state carried on the same channel.
type Extra interface {
	// Frame handles a frame from the peer; send queues frames back.
	Frame(b []byte, send func(...[]byte) error)
	// Up and Down follow the channel.
	Up(send func(...[]byte) error)
	Down()
}

// Status is this unit's view of state sync.
type Status struct {
	Role string `json:"role"` // "source" (ACTIVE) or "sink"
	// Sync is the pair's sync status as this unit sees it: on the sink its
	// own; on the source the sink's, as last reported.
	Sync        repl.SyncStatus `json:"-"`
	SyncText    string          `json:"sync"`
	LinkUp      bool            `json:"link_up"`
	LinkSince   time.Time       `json:"link_since"`
	Connections int             `json:"connections"`
	Expects     int             `json:"expectations"`
	SetElements map[string]int  `json:"set_elements"`
	Seq         uint64          `json:"seq"`
	AckedSeq    uint64          `json:"acked_seq,omitempty"`
	LagEntries  uint64          `json:"lag_entries"`
	LagMs       float64         `json:"lag_ms"`
	Snapshots   uint64          `json:"snapshots"`
	Promotions  int             `json:"promotions"`
	LastPromote *PromoteReport  `json:"last_promote,omitempty"`
	Link        syncchan.Stats  `json:"-"`
	Errors      []string        `json:"errors"`
}

// PromoteReport is what the last promotion did.
type PromoteReport struct {
	At       time.Time `json:"at"`
	Flows    int       `json:"flows"`
	Failed   int       `json:"failed"`
	Duration float64   `json:"duration_ms"`
}

// Engine is the sync loop of one unit.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	link *syncchan.Link

	roleCh   chan bool
	statusCh chan ha.SyncStatus
	changes  chan []change
	frames   chan []byte

	mu        sync.Mutex
	status    Status
	peerStats json.RawMessage

	// Owned by the loop.
	active   bool
	src      *repl.Source
	sink     *repl.Sink
	store    *store
	session  uint64
	linkUp   bool
	downAt   time.Time
	reported bool // hasync_connection_failed_timeout logged for this outage
	feeds    context.CancelFunc
	feedWG   sync.WaitGroup
	pending  [][]byte
	lastSync repl.SyncStatus
	// settleGen is the sink's kernel-writer generation that must be
	// written before a standby says IN_SYNC (0: none pending; see
	// sinkStatus).
	settleGen uint64
	settled   bool
	// srcReady: the conntrack feed has published the table (by lookups
	// or a dump), so the source's tables stand for the unit's state and a
	// copy of them may be served. Until then the source neither connects nor answers a Hello:
	// a standby would otherwise take a copy of an empty table for the
	// ACTIVE's and say IN_SYNC.
	srcReady bool
	// published is the conntrack record of this unit's last source, set
	// by its feed when it stops (read after stopFeeds): the next sink
	// adopts it instead of dumping the kernel's table (ctsync.AdoptPublished).
	published *ctsync.Published
	// ctSrc is the running conntrack feed (loop only): it publishes the
	// table when a standby asks for a copy (requestPublish), and dumps it
	// publishAfter the takeover (publishTimer).
	ctSrc        *ctsync.Source
	publishTimer *time.Timer
	// known: the connections the sink had mirrored, for the source that
	// follows it to publish by lookup (set in becomeSource, used once).
	known [][]byte
	// ckpt: the standby's checkpoints (checkpoint.go).
	ckpt     checkpointState
	ckptDone chan checkpointResult
}

// publishAfter is when a new ACTIVE dumps its conntrack table, well after
// the takeover: it completes a publication by lookups (connections the
// standby did not mirror, entries gone since), or publishes the table if
// no standby asked (so that counts are whole and a returning peer is
// served at once).
const publishAfter = 5 * time.Second

type change struct {
	ready             bool // the conntrack feed has published the table (no entry)
	put               bool
	table             string
	key, value        []byte
	elements, flowsDl int
}

// New prepares the engine; Run starts it.
func New(cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	link, err := syncchan.NewLink(cfg.Link)
	if err != nil {
		return nil, fmt.Errorf("sync channel: %w", err)
	}
	if cfg.Conntrack {
		// Without events for every connection, ones created while no
		// listener existed never report their end (see internal/ctsync).
		if err := setConntrackEvents(); err != nil {
			cfg.Logger.Warn("could not set net.netfilter.nf_conntrack_events=1; connections created before tandem started may not sync their end", "err", err)
		}
	}
	e := &Engine{
		cfg: cfg, log: cfg.Logger, link: link,
		roleCh:   make(chan bool, 1),
		statusCh: make(chan ha.SyncStatus, 1),
		changes:  make(chan []change, 64),
		frames:   make(chan []byte, 1),
		ckptDone: make(chan checkpointResult, 1),
	}
	e.status.Role = "sink"
	e.status.SyncText = repl.SyncUnknown.String()
	return e, nil
}

func setConntrackEvents() error {
	const p = "/proc/sys/net/netfilter/nf_conntrack_events"
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	return os.WriteFile(p, []byte("1\n"), 0o644)
}

// SetRole tells the engine whether this unit is ACTIVE. The latest call
// wins; it never blocks.
func (e *Engine) SetRole(active bool) {
	select {
	case <-e.roleCh:
	default:
	}
	e.roleCh <- active
}

// StatusChanges delivers the unit's sync status whenever it changes (the
// latest only); the daemon feeds it to the HA state machine.
func (e *Engine) StatusChanges() <-chan ha.SyncStatus { return e.statusCh }

// PeerStarted tells the engine that the peer has just (re)started: the
// channel connects again now instead of after its backoff.
func (e *Engine) PeerStarted() { e.link.Redial() }

// Status returns a snapshot of this unit's sync state.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.status
	st.Link = e.link.Stats()
	st.SetElements = cloneMap(st.SetElements)
	st.Errors = append([]string(nil), st.Errors...)
	return st
}

// Stats returns this unit's Status and the peer's last report (the JSON of
// its Status, nil when never received).
func (e *Engine) Stats() (any, []byte) {
	st := e.Status()
	e.mu.Lock()
	defer e.mu.Unlock()
	return st, e.peerStats
}

func cloneMap(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Run runs the channel and the loop until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	linkDone := make(chan error, 1)
	go func() { linkDone <- e.link.Run(ctx) }()
	defer func() {
		e.stopFeeds()
		if e.store != nil {
			e.store.close()
		}
	}()
	e.downAt = time.Now() // the channel is down until it first comes up
	e.becomeSink(e.downAt)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	statsTick := time.NewTicker(time.Second)
	defer statsTick.Stop()
	events := e.link.Events()
	var y sched.Yielder // the loop encodes and decodes every change
	for {
		y.Pause()
		now := time.Now()
		e.flush(now)
		e.publish(now)
		e.maybeCheckpoint(now)
		if d := e.nextDeadline(now); !d.IsZero() {
			timer.Reset(max(time.Until(d), 0))
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			e.finalCheckpoint(time.Now())
			<-linkDone
			return nil
		case active := <-e.roleCh:
			if active != e.active {
				if active {
					e.becomeSource(time.Now())
				} else {
					e.downAt = time.Now() // the channel is down until it first comes up
					e.becomeSink(e.downAt)
				}
			}
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			e.onLink(time.Now(), ev)
		case batch := <-e.changes:
			e.apply(time.Now(), batch)
		case <-timer.C:
		case <-statsTick.C:
			e.sendStats()
		case r := <-e.ckptDone:
			e.checkpointDone(r)
		case <-e.writable():
		}
	}
}

// writable wakes the loop when the channel can take pending frames again;
// nil (never) when nothing is pending.
func (e *Engine) writable() <-chan struct{} {
	if len(e.pending) == 0 {
		return nil
	}
	return e.link.Writable()
}

func (e *Engine) nextDeadline(now time.Time) time.Time {
	var d time.Time
	switch {
	case e.src != nil:
		d = e.src.NextDeadline(now)
	case e.sink != nil:
		d = e.sink.NextDeadline(now)
	}
	if e.sink != nil && e.settleGen != 0 && !e.settled {
		// Waiting for the kernel writer (sinkStatus): look again soon.
		if t := now.Add(20 * time.Millisecond); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	if t := e.checkpointDue(); !t.IsZero() && (d.IsZero() || t.Before(d)) {
		d = t
	}
	if !e.linkUp && !e.reported && e.active {
		if t := e.downAt.Add(e.outOfSyncAfter()); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	return d
}

func (e *Engine) outOfSyncAfter() time.Duration {
	if e.cfg.OutOfSyncAfter > 0 {
		return e.cfg.OutOfSyncAfter
	}
	return time.Second
}

func newID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1
}

// becomeSource: this unit is ACTIVE. A held table is committed to the
// kernel first (in inject mode it is already there), then the kernel's
// tables become the source of truth, published from a full dump.
func (e *Engine) becomeSource(now time.Time) {
	e.active = true
	if e.store != nil {
		rep := e.store.promote(e.log)
		e.mu.Lock()
		e.status.Promotions++
		e.status.LastPromote = rep
		e.mu.Unlock()
		e.store.close()
		if e.store.ct != nil && e.cfg.Mode == ctsync.Inject {
			e.known = e.store.ct.KnownKeys()
		}
		e.store = nil
	}
	e.sink = nil
	e.dropCheckpoint()
	tables := []string{ctsync.TableConntrack, ctsync.TableExpect}
	for _, s := range e.cfg.NftSets {
		tables = append(tables, s.ReplTable())
	}
	e.src = repl.NewSource(repl.SourceConfig{SourceID: newID(), Tables: tables,
		MaxRateBytes: e.cfg.MaxRateBytes, MaxRateEntries: e.cfg.MaxRateEntries})
	e.srcReady = false
	e.log.Info("state sync: source (ACTIVE)")
	if !e.startFeeds() {
		e.sourceReady(now)
		return
	}
	// A sink that said Hello while this unit was a sink too asks again.
	e.announceRole()
}

// requestPublish: a standby wants a copy, so the conntrack table is
// published now (the ACTIVE publishes on demand:
// ctsync.SourceOptions.DumpOnRequest).
func (e *Engine) requestPublish() {
	if e.ctSrc != nil && !e.srcReady {
		e.ctSrc.RequestDump()
	}
}

// sourceReady: the source's tables hold the unit's whole state; it
// connects, and the peer's sink is told to ask it for a copy.
func (e *Engine) sourceReady(now time.Time) {
	if e.src == nil || e.srcReady {
		return
	}
	e.srcReady = true
	if e.linkUp {
		e.src.Connected(now)
	}
	e.announceRole()
	e.log.Info("state sync: source ready")
}

// becomeSink: this unit is not ACTIVE; it asks the ACTIVE for everything.
func (e *Engine) becomeSink(now time.Time) {
	e.active = false
	e.stopFeeds()
	e.src, e.srcReady = nil, false
	first := e.store == nil && e.published == nil && !e.ckpt.started
	e.ckpt.started = true
	if e.store == nil {
		st, err := openStore(e.cfg)
		if err != nil {
			e.recordError(fmt.Sprintf("open state sink: %v", err))
			e.log.Error("state sync: cannot open the sink; this unit will not hold the ACTIVE's state", "err", err)
			st = &store{log: e.log}
		}
		e.store = st
	}
	if e.published != nil && e.store.ct != nil {
		e.store.ct.AdoptPublished(e.published)
	}
	e.published = nil
	e.settleGen, e.settled = 0, false
	e.sink = repl.NewSink(repl.SinkConfig{SinkID: newID(), OutOfSyncAfter: e.outOfSyncAfter(), RetryAfter: time.Second}, e.store)
	if first {
		e.resumeFromCheckpoint()
	}
	if e.linkUp {
		e.sink.Connected(now)
	}
	e.announceRole()
	e.log.Info("state sync: sink (standby)")
}

// startFeeds subscribes to this unit's kernel tables. It reports whether a
// feed will say when it has published the table (a ready change); false:
// the source is ready at once.
func (e *Engine) startFeeds() (waitReady bool) {
	ctx, cancel := context.WithCancel(context.Background())
	e.feeds = cancel
	emit := func(batch []change) {
		select {
		case e.changes <- batch:
		case <-ctx.Done():
		}
	}
	if e.cfg.Conntrack {
		src, err := ctsync.OpenSource(e.cfg.NS, e.log, ctsync.SourceOptions{IgnorePrefixes: e.cfg.IgnorePrefixes, IgnorePorts: e.cfg.IgnorePorts,
			DumpOnRequest: true, KnownKeys: e.known, Ready: func() { emit([]change{{ready: true}}) }})
		e.known = nil
		if err != nil {
			e.recordError(fmt.Sprintf("conntrack source: %v", err))
			e.log.Error("state sync: conntrack source", "err", err)
		} else {
			waitReady = true
			e.ctSrc = src
			e.publishTimer = time.AfterFunc(publishAfter, src.RequestFullDump)
			e.feedWG.Go(func() {
				defer func() {
					e.published = src.Published()
					src.Close()
					// Failed before it published: serve the other
					// tables rather than nothing (no-op if ready).
					emit([]change{{ready: true}})
				}()
				err := src.Run(ctx, func(b []ctsync.Change) {
					out := make([]change, len(b))
					for i, c := range b {
						out[i] = change{put: c.Kind == ctsync.Put, table: c.Table, key: c.Key, value: c.Value}
					}
					emit(out)
				})
				if err != nil && ctx.Err() == nil {
					e.log.Error("state sync: conntrack source stopped", "err", err)
				}
			})
		}
	}
	if len(e.cfg.NftSets) > 0 {
		src, err := nftsets.OpenSource(e.cfg.NS, e.cfg.NftSets, e.log)
		if err != nil {
			e.recordError(fmt.Sprintf("nft set source: %v", err))
			e.log.Error("state sync: nft set source", "err", err)
		} else {
			e.feedWG.Go(func() {
				err := src.Run(ctx, func(b []nftsets.Change) {
					out := make([]change, len(b))
					for i, c := range b {
						out[i] = change{put: c.Put, table: c.Table, key: c.Key, value: c.Value}
					}
					emit(out)
				})
				if err != nil && ctx.Err() == nil {
					e.log.Error("state sync: nft set source stopped", "err", err)
				}
			})
		}
	}
	return waitReady
}

func (e *Engine) stopFeeds() {
	e.ctSrc = nil
	if e.publishTimer != nil {
		e.publishTimer.Stop()
		e.publishTimer = nil
	}
	if e.feeds == nil {
		return
	}
	e.feeds()
	// Drain what the feeds are trying to hand over so they can stop.
	done := make(chan struct{})
	go func() { e.feedWG.Wait(); close(done) }()
	for {
		select {
		case <-e.changes:
		case <-done:
			e.feeds = nil
			return
		}
	}
}

func (e *Engine) apply(now time.Time, batch []change) {
	if e.src == nil {
		return // a late batch from a feed of the previous role
	}
	for _, c := range batch {
		if c.ready {
			e.sourceReady(now)
			continue
		}
		var err error
		if c.put {
			err = e.src.Put(now, c.table, c.key, c.value)
		} else {
			err = e.src.Delete(now, c.table, c.key)
		}
		if err != nil {
			e.log.Warn("state sync: change refused", "table", c.table, "err", err)
		}
	}
}

func (e *Engine) onLink(now time.Time, ev syncchan.Event) {
	switch ev.Kind {
	case syncchan.Up:
		e.linkUp, e.session, e.pending = true, ev.Session, nil
		if e.reported {
			e.log.Info("hasync_connection_restored", "peer_role", ev.Peer.Role)
		}
		e.reported = false
		e.mu.Lock()
		e.status.LinkUp, e.status.LinkSince = true, now
		e.mu.Unlock()
		switch {
		case e.src != nil && e.srcReady:
			e.src.Connected(now)
		case e.sink != nil:
			e.sink.Connected(now)
		}
		if e.cfg.Extra != nil {
			e.cfg.Extra.Up(e.extraSender(ev.Session))
		}
	case syncchan.Down:
		if e.linkUp {
			e.downAt = now
		}
		e.linkUp, e.pending = false, nil
		e.mu.Lock()
		e.status.LinkUp, e.status.LinkSince = false, now
		e.mu.Unlock()
		switch {
		case e.src != nil && e.srcReady:
			e.src.Disconnected(now)
		case e.sink != nil:
			e.sink.Disconnected(now)
		}
		if e.cfg.Extra != nil {
			e.cfg.Extra.Down()
		}
		e.log.Warn("state sync channel down", "err", ev.Err)
	case syncchan.AuthFailed, syncchan.Refused:
		e.recordError(fmt.Sprintf("%s from %s: %v", ev.Kind, ev.Remote, ev.Err))
		e.log.Warn("state sync: peer refused", "kind", ev.Kind, "remote", ev.Remote, "err", ev.Err)
	case syncchan.Frame:
		if ev.Session != e.session || len(ev.Frame) == 0 {
			return
		}
		kind, body := ev.Frame[0], ev.Frame[1:]
		switch kind {
		case KindRepl:
			var err error
			switch {
			case e.src != nil && !e.srcReady:
				// Not serving yet: publish, and the sink asks again
				// when told this unit's role (sourceReady).
				e.requestPublish()
			case e.src != nil:
				err = e.src.Handle(now, body)
			case e.sink != nil:
				err = e.sink.Handle(now, body)
			}
			switch {
			case err == nil:
			case strings.Contains(err.Error(), "sent by a"):
				// Both units in the same role for a moment (a role change
				// in flight): the frame is not for us.
				e.log.Debug("state sync: frame for the other role", "err", err)
			default:
				e.log.Warn("state sync: bad frame from the peer", "err", err)
			}
		case KindRole:
			if len(body) == 1 && body[0] == 1 && e.sink != nil {
				// The peer just became the source: start over with it.
				e.sink.Disconnected(now)
				e.sink.Connected(now)
			}
		case KindStats:
			e.mu.Lock()
			e.peerStats = append(json.RawMessage(nil), body...)
			e.mu.Unlock()
		case KindExtra:
			if e.cfg.Extra != nil {
				e.cfg.Extra.Frame(body, e.extraSender(e.session))
			}
		}
	}
}

// announceRole tells the peer this unit's replication role, so that a sink
// whose Hello reached the peer while it was a sink too says it again to the
// new source at once.
func (e *Engine) announceRole() {
	if e.linkUp {
		_ = e.link.SendOn(e.session, []byte{KindRole, b2byte(e.active)})
	}
}

func b2byte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// extraSender sends an Extra handler's frames on one session. The session
// is bound now, so the handler may call it from its own goroutine: it never
// reads the loop's state, and frames for an ended session are refused.
func (e *Engine) extraSender(session uint64) func(...[]byte) error {
	return func(frames ...[]byte) error {
		return e.link.SendOnTagged(session, KindExtra, frames...)
	}
}

func (e *Engine) sendStats() {
	if !e.linkUp {
		return
	}
	b, err := json.Marshal(e.Status())
	if err != nil {
		return
	}
	_ = e.link.SendOn(e.session, append([]byte{KindStats}, b...))
}

// flush polls the replication engine and sends what it has; frames the
// channel cannot take yet wait in pending.
func (e *Engine) flush(now time.Time) {
	if len(e.pending) == 0 {
		var out [][]byte
		switch {
		case e.src != nil:
			out = e.src.Poll(now, nil)
		case e.sink != nil:
			out = e.sink.Poll(now, nil)
		}
		for _, f := range out {
			e.pending = append(e.pending, append([]byte{KindRepl}, f...))
		}
	}
	if len(e.pending) == 0 || !e.linkUp {
		e.pending = nil
		return
	}
	for len(e.pending) > 0 {
		err := e.link.SendOn(e.session, e.pending[0])
		if errors.Is(err, syncchan.ErrBackpressure) {
			return
		}
		if err != nil {
			e.pending = nil
			return
		}
		e.pending = e.pending[1:]
	}
}

// publish updates the status snapshot and reports sync-status changes.
func (e *Engine) publish(now time.Time) {
	var st repl.SyncStatus
	e.mu.Lock()
	switch {
	case e.src != nil:
		s := e.src.Stats(now)
		e.status.Role = "source"
		st = s.PeerStatus
		if !s.Connected && !e.linkUp && now.Sub(e.downAt) >= e.outOfSyncAfter() {
			st = repl.SyncOutOfSync
		}
		e.status.Seq, e.status.AckedSeq = s.Seq, s.AckedSeq
		e.status.LagEntries, e.status.LagMs = s.LagEntries, float64(s.LagAge)/1e6
		e.status.Snapshots = s.Snapshots
		e.fillCounts(s.Tables)
	case e.sink != nil:
		s := e.sink.Stats()
		e.status.Role = "sink"
		st = e.sinkStatus(s.Status)
		e.status.Seq, e.status.AckedSeq, e.status.LagEntries, e.status.LagMs = s.Seq, 0, 0, 0
		e.ckpt.held = streamPos{s.SourceID, s.Seq}
		e.fillCounts(s.Tables)
	}
	e.status.Sync, e.status.SyncText = st, st.String()
	e.mu.Unlock()

	if e.active && !e.linkUp && !e.reported && now.Sub(e.downAt) >= e.outOfSyncAfter() {
		// Seed 003's name: the ACTIVE lost its sync peer (a cut sync link,
		// or a standby that is down or restarting).
		e.log.Error("hasync_connection_failed_timeout", "down_for", now.Sub(e.downAt).Round(time.Millisecond))
		e.reported = true
	}
	if st != e.lastSync {
		e.lastSync = st
		select {
		case <-e.statusCh:
		default:
		}
		e.statusCh <- st
	}
}

// sinkStatus is the standby's sync status: the replication engine's, but
// IN_SYNC only once the kernel holds what the engine held when it first
// said so. After a full copy of a million entries the engine has them in
// seconds, the kernel (ctnetlink creates are serialised) several seconds
// later — and a standby must not look electable, or accept `tandem
// failover`, before its kernel can carry the connections. Once settled,
// the live stream's normal few-millisecond backlog does not count.
func (e *Engine) sinkStatus(st repl.SyncStatus) repl.SyncStatus {
	if st != repl.SyncInSync {
		e.settleGen, e.settled = 0, false
		return st
	}
	if e.store == nil || e.store.ct == nil || e.settled {
		return st
	}
	queued, written := e.store.ct.Backlog()
	if e.settleGen == 0 {
		e.settleGen = max(queued, 1)
	}
	if written >= e.settleGen || queued-written <= settleSlack {
		e.settled = true
		e.store.ct.CopyComplete() // its reconciliation record can go
		return st
	}
	return repl.SyncOutOfSync
}

// settleSlack is the kernel writer's backlog (changes) that does not hold
// IN_SYNC back: about 10 ms of ctnetlink writes. Without it a unit that
// starts beside its peer said OUT_OF_SYNC for the instant its (empty)
// first copy took to reach the kernel, and lost the election for it.
const settleSlack = 1024

func (e *Engine) fillCounts(tables []repl.TableStats) {
	e.status.Connections, e.status.Expects = 0, 0
	e.status.SetElements = map[string]int{}
	for _, t := range tables {
		switch {
		case t.Name == ctsync.TableConntrack:
			e.status.Connections = t.Entries
		case t.Name == ctsync.TableExpect:
			e.status.Expects = t.Entries
		case strings.HasPrefix(t.Name, nftsets.ReplTablePrefix):
			if ref, err := nftsets.ParseReplTable(t.Name); err == nil {
				e.status.SetElements[ref.String()] = t.Entries
			}
		}
	}
}

func (e *Engine) recordError(msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status.Errors = append(e.status.Errors, time.Now().Format(time.RFC3339)+" "+msg)
	if len(e.status.Errors) > 20 {
		e.status.Errors = e.status.Errors[len(e.status.Errors)-20:]
	}
}
