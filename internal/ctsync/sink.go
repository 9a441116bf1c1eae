package ctsync

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/sched"
)

// SinkMode is how a Sink keeps the replicated entries until promotion.
type SinkMode uint8

const (
	// Inject writes every change into the standby's kernel table as it
	// arrives. Promotion then only sweeps entries left over from before a
	// Reset and gives the injected entries their real timeouts.
	Inject SinkMode = iota
	// Hold keeps the entries in the process's memory and writes them all
	// into the kernel table when promoted.
	Hold
)

func (m SinkMode) String() string {
	switch m {
	case Inject:
		return "inject"
	case Hold:
		return "hold"
	}
	return fmt.Sprintf("SinkMode(%d)", uint8(m))
}

// SinkOptions tune a Sink. The zero value is usable (Inject mode).
type SinkOptions struct {
	Mode SinkMode
	// Workers is the number of netlink sockets written in parallel when
	// many entries are injected at once. Default 2.
	Workers int
	// BatchSize is the number of requests sent to the kernel in one
	// system call. Default 256.
	BatchSize int
	// StandbyTimeout (Inject mode) is the least timeout an entry gets in
	// the standby's table. The ACTIVE unit reports a connection's timeout
	// only when the connection changes state, while its own copy is
	// refreshed by every packet: an idle-looking UDP flow or a long quiet
	// TCP connection would otherwise expire on the standby alone. The
	// standby does not need its own expiry (the ACTIVE reports every
	// destroyed entry); promotion puts the replicated timeouts back.
	// Default 120h (TCP's established timeout).
	StandbyTimeout time.Duration
	// MinTimeout is the least timeout given to an entry at promotion (and
	// to entries written after it), so a connection gets time to send its
	// next packet through the new ACTIVE unit. Default 30s.
	MinTimeout time.Duration
	// TCPWindowTracking keeps the kernel's TCP window checks on injected
	// TCP connections. The default (false) marks them
	// IP_CT_TCP_FLAG_BE_LIBERAL in both directions, for those connections
	// only (see the package documentation for why).
	TCPWindowTracking bool
}

func (o *SinkOptions) defaults() {
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 256
	}
	if o.StandbyTimeout <= 0 {
		o.StandbyTimeout = 120 * time.Hour
	}
	if o.MinTimeout <= 0 {
		o.MinTimeout = 30 * time.Second
	}
}

// PromoteStats describe one promotion.
type PromoteStats struct {
	Mode         SinkMode
	Flows        int // connections written (created, updated or refreshed)
	Expectations int // expectations created
	Created      int // entries created
	Updated      int // existing entries updated
	Refreshed    int // injected entries given their replicated timeout
	// Refreshing is how many timeouts are set after Promote returns,
	// while the unit already serves (see injectPromoteOps).
	Refreshing int
	Deleted    int // stale entries (injected before a Reset, not replicated since) removed
	Failed     int // entries that could not be written
	Duration   time.Duration
}

// SinkStats are counters since OpenSink.
type SinkStats struct {
	Mode           SinkMode
	Promoted       bool
	Held           int // Hold: connections in memory
	HeldExpect     int // Hold: expectations in memory
	Injected       int // Inject: connections this sink wrote into the kernel (and did not delete)
	InjectedExpect int
	Pending        int // changes waiting to be written
	Stale          int // entries written before a Reset and not replicated since
	Puts           uint64
	Deletes        uint64
	Resets         uint64
	Created        uint64
	Updated        uint64
	Recreated      uint64 // deleted and created again (NAT or status could not be updated in place)
	Deleted        uint64
	Refreshed      uint64
	Failed         uint64
	Ignored        uint64 // changes of an unknown table
	// Adopted counts kernel entries found by the dump that reconciles a
	// full copy (see adopt.go); Unchanged the puts not written because
	// the kernel already held the value.
	Adopted   uint64
	Unchanged uint64
	// KernelDumps counts the reads of the kernel's whole table that
	// reconciled a full copy (none when this unit's own last published
	// table was adopted instead: AdoptPublished).
	KernelDumps uint64
}

const (
	tCT  = 0
	tExp = 1
)

func tableIndex(name string) int {
	switch name {
	case TableConntrack:
		return tCT
	case TableExpect:
		return tExp
	}
	return -1
}

type pendOp struct {
	del bool
	val string
	gen uint64 // enqGen when queued: the writer goes in this order
}

// entryMeta is what an injecting sink remembers of an entry it wrote: its
// replicated timeout (given back at promotion) and a fingerprint of its
// reply tuple (a changed NAT mapping cannot be updated in place).
type entryMeta struct {
	timeout uint32
	fp      uint32
	vh      uint32 // valueHash of what the kernel holds (0: unknown)
}

// Sink writes replicated entries into a standby unit's kernel tables. Its
// Put, Delete and Reset match internal/repl's Store interface; they copy
// what they keep and never wait for the kernel.
type Sink struct {
	log   *slog.Logger
	opts  SinkOptions
	nsh   netns.NsHandle
	conns []*nlConn
	// work feeds the injector goroutines, one per conn. Closed by Close
	// after the loop has stopped.
	work chan func()

	// Under mu: what Put, Delete and Reset touch, all O(1) for them.
	mu       sync.Mutex
	cond     *sync.Cond
	promoted bool
	closed   bool
	busy     bool
	job      *promoteJob
	refresh  []*op              // timeouts still to set after a promotion (loop only, under mu)
	release  bool               // CopyComplete asked: drop the adopted entries
	ckpt     *checkpointJob     // Checkpoint asked (checkpoint.go)
	load     *checkpointFile    // LoadCheckpoint's record, for the writer to build first
	held     [2]*keyMap[string] // Hold: key → value
	pending  [2]*keyMap[pendOp] // Inject: changes not yet written
	reset    [2]bool            // Inject: a Reset came before the pending changes
	enqGen   uint64
	doneGen  uint64
	loopDone chan struct{}

	// Owned by the writer goroutine (loop).
	meta   [2]*keyMap[entryMeta] // entries this sink wrote
	stale  [2]*keyMap[entryMeta] // written before a Reset, not replicated since
	failed [2]*keyMap[string]    // puts that failed, to retry
	// orphans are related connections whose master was not in the
	// kernel yet (a dump lists entries in hash order): retried when more
	// connections arrive and at promotion, so they keep their relation.
	orphans *keyMap[string]
	// adopted are the kernel's connections found by the dump at the last
	// Reset (adopt.go), with the hash of their value: a put of the same
	// value is recorded, not written. Never deleted for being there:
	// this sink did not write them in this run.
	adopted     *keyMap[entryMeta]
	adoptedSize int
	// published, under mu: this unit's own Source's record of the table,
	// handed over when the unit stopped being ACTIVE; the next Reset
	// adopts it instead of dumping the kernel (AdoptPublished).
	published *Published

	// stopWriting: a promotion or Close is waiting, so a checkpoint being
	// written gives up (checkpoint.go).
	stopWriting atomic.Bool

	nMeta  [2]atomic.Int64
	nStale atomic.Int64

	puts, deletes, resets, ignored                               atomic.Uint64
	created, updated, recreated, deleted, refreshed, failedCount atomic.Uint64
	nAdopted, unchanged, kernelDumps                             atomic.Uint64
	failLog                                                      atomic.Int64
}

// OpenSink opens the netlink sockets of a Sink inside the namespace nsh
// (netns.None() means the caller's own) and starts its writer. It keeps
// its own duplicate of nsh.
func OpenSink(nsh netns.NsHandle, logger *slog.Logger, opts SinkOptions) (*Sink, error) {
	opts.defaults()
	if opts.Mode != Inject && opts.Mode != Hold {
		return nil, fmt.Errorf("ctsync: unknown sink mode %d", opts.Mode)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dup, err := dupNS(nsh)
	if err != nil {
		return nil, err
	}
	k := &Sink{
		log:      logger.With("component", "ctsync-sink", "mode", opts.Mode.String()),
		opts:     opts,
		nsh:      dup,
		loopDone: make(chan struct{}),
	}
	for i := 0; i < opts.Workers; i++ {
		c, err := dialNetfilter(dup, 8<<20)
		if err != nil {
			for _, c := range k.conns {
				_ = c.Close()
			}
			if dup.IsOpen() {
				_ = dup.Close()
			}
			return nil, fmt.Errorf("ctsync: open sink: %w", err)
		}
		k.conns = append(k.conns, c)
	}
	k.cond = sync.NewCond(&k.mu)
	for t := range 2 {
		k.held[t] = newKeyMap[string](0)
		k.pending[t] = newKeyMap[pendOp](0)
		k.meta[t] = newKeyMap[entryMeta](0)
		k.stale[t] = newKeyMap[entryMeta](0)
		k.failed[t] = newKeyMap[string](0)
	}
	k.orphans = newKeyMap[string](0)
	k.adopted = newKeyMap[entryMeta](0)
	k.work = make(chan func(), len(k.conns))
	for range k.conns {
		go func() {
			for f := range k.work {
				f()
			}
		}()
	}
	go k.loop()
	return k, nil
}

func (k *Sink) holding() bool { return k.opts.Mode == Hold && !k.promoted }

// Put sets the entry key of table to value (a copy is kept).
func (k *Sink) Put(table string, key, value []byte) {
	t := tableIndex(table)
	if t < 0 {
		k.ignored.Add(1)
		return
	}
	k.puts.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	if k.holding() {
		k.held[t].set(key, string(value))
		return
	}
	k.enqGen++
	k.pending[t].set(key, pendOp{val: string(value), gen: k.enqGen})
	k.cond.Broadcast()
}

// Delete removes the entry key of table.
func (k *Sink) Delete(table string, key []byte) {
	t := tableIndex(table)
	if t < 0 {
		k.ignored.Add(1)
		return
	}
	k.deletes.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	if k.holding() {
		k.held[t].del(key)
		return
	}
	k.enqGen++
	k.pending[t].set(key, pendOp{del: true, gen: k.enqGen})
	k.cond.Broadcast()
}

// Reset forgets table: a full copy follows. Held entries are dropped; in
// the kernel, entries this sink wrote stay until promotion, when those not
// replicated again since the Reset are deleted.
func (k *Sink) Reset(table string) {
	t := tableIndex(table)
	if t < 0 {
		k.ignored.Add(1)
		return
	}
	k.resets.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	if k.holding() {
		k.held[t] = newKeyMap[string](0)
		return
	}
	k.pending[t] = newKeyMap[pendOp](0)
	k.reset[t] = true
	k.enqGen++
	k.cond.Broadcast()
}

// CopyComplete tells the sink that the full copy since the last Reset is
// complete (the replication engine is IN_SYNC): the record of the
// kernel's entries taken to reconcile it (adopt.go) is dropped, and after
// a big copy the memory it used goes back to the system. Nothing in the
// kernel changes.
func (k *Sink) CopyComplete() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || k.opts.Mode != Inject {
		return
	}
	k.release = true
	k.cond.Broadcast()
}

// bigCopy is the size of a reconciled table (entries) whose transient
// memory is handed back to the system once the copy is complete.
const bigCopy = 1 << 16

// dropAdopted forgets the adopted entries the copy did not bring back,
// and empty stale maps: a Go map never shrinks, and after a reconciled
// copy of a million entries it would hold tens of megabytes.
func (k *Sink) dropAdopted() {
	big := k.adoptedSize > bigCopy
	k.adopted, k.adoptedSize = newKeyMap[entryMeta](0), 0
	for t := range 2 {
		if k.stale[t].len() == 0 {
			k.stale[t] = newKeyMap[entryMeta](0)
		}
	}
	if big {
		debug.FreeOSMemory()
	}
}

// Flush waits until every change queued so far is written (Inject mode,
// or after promotion), and the timeouts of a promotion are set.
func (k *Sink) Flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	gen := k.enqGen
	for !k.closed && (k.doneGen < gen || k.busy || k.job != nil || len(k.refresh) > 0 || k.release) {
		k.cond.Wait()
	}
	if k.closed {
		return errors.New("ctsync: sink closed")
	}
	return nil
}

// Backlog reports the writer's progress: the generation of the last change
// queued and of the last one written to the kernel. written >= a queued
// value seen earlier means everything queued then is in the kernel (or
// failed, which Stats counts).
func (k *Sink) Backlog() (queued, written uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.enqGen, k.doneGen
}

// Stats returns the counters; safe to call at any time.
func (k *Sink) Stats() SinkStats {
	k.mu.Lock()
	st := SinkStats{
		Mode:           k.opts.Mode,
		Promoted:       k.promoted,
		Held:           k.held[tCT].len(),
		HeldExpect:     k.held[tExp].len(),
		Injected:       int(k.nMeta[tCT].Load()),
		InjectedExpect: int(k.nMeta[tExp].Load()),
		Pending:        k.pending[tCT].len() + k.pending[tExp].len(),
		Stale:          int(k.nStale.Load()),
	}
	k.mu.Unlock()
	st.Puts, st.Deletes, st.Resets, st.Ignored = k.puts.Load(), k.deletes.Load(), k.resets.Load(), k.ignored.Load()
	st.Created, st.Updated, st.Recreated = k.created.Load(), k.updated.Load(), k.recreated.Load()
	st.Deleted, st.Refreshed, st.Failed = k.deleted.Load(), k.refreshed.Load(), k.failedCount.Load()
	st.Adopted, st.Unchanged, st.KernelDumps = k.nAdopted.Load(), k.unchanged.Load(), k.kernelDumps.Load()
	return st
}

// Close stops the writer (after the batch it is writing) and releases the
// sockets. Changes not yet written are dropped.
func (k *Sink) Close() error {
	k.stopWriting.Store(true)
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.cond.Broadcast()
	k.mu.Unlock()
	<-k.loopDone
	close(k.work)
	for _, c := range k.conns {
		_ = c.Close()
	}
	if k.nsh.IsOpen() {
		_ = k.nsh.Close()
	}
	return nil
}

type promoteJob struct {
	ctx   context.Context
	held  [2]*keyMap[string]
	stats PromoteStats
	err   error
	done  chan struct{}
}

// Promote makes sure every replicated entry is in the kernel's tables,
// with the replicated timeouts (at least MinTimeout), and returns what it
// did. Hold mode writes every held entry (parallel sockets, batched
// requests); Inject mode writes what is still queued, retries what failed,
// deletes stale entries and gives the injected entries their replicated
// timeouts back. Afterwards every Put and Delete is written at once.
// Cancelling ctx stops the promotion between two batches.
func (k *Sink) Promote(ctx context.Context) (PromoteStats, error) {
	start := time.Now()
	k.stopWriting.Store(true)
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return PromoteStats{}, errors.New("ctsync: sink closed")
	}
	if k.promoted {
		k.mu.Unlock()
		return PromoteStats{Mode: k.opts.Mode}, nil
	}
	j := &promoteJob{ctx: ctx, done: make(chan struct{})}
	j.stats.Mode = k.opts.Mode
	if k.opts.Mode == Hold {
		j.held = k.held
		k.held = [2]*keyMap[string]{newKeyMap[string](0), newKeyMap[string](0)}
	}
	k.promoted = true // from now on Put and Delete are queued for the writer
	k.job = j
	k.cond.Broadcast()
	k.mu.Unlock()
	<-j.done
	j.stats.Duration = time.Since(start)
	k.log.Info("promoted: conntrack state written", "flows", j.stats.Flows, "expectations", j.stats.Expectations,
		"created", j.stats.Created, "updated", j.stats.Updated, "refreshed", j.stats.Refreshed,
		"deleted", j.stats.Deleted, "failed", j.stats.Failed, "took", j.stats.Duration)
	return j.stats, j.err
}

// loop is the only writer to the kernel: queued changes first, then a
// promotion.
func (k *Sink) loop() {
	defer close(k.loopDone)
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		for !k.closed && k.job == nil && !k.hasPending() && len(k.refresh) == 0 && !k.release && k.ckpt == nil && k.load == nil {
			k.cond.Wait()
		}
		if k.closed {
			if k.job != nil {
				k.job.err = errors.New("ctsync: sink closed")
				close(k.job.done)
				k.job = nil
			}
			if k.ckpt != nil {
				go k.ckpt.done(CheckpointInfo{}, errors.New("ctsync: sink closed"))
				k.ckpt = nil
			}
			return
		}
		if c := k.load; c != nil {
			// A loaded checkpoint's record goes first: every later
			// decision consults it.
			k.unlocked(func() { k.buildLoaded(c) })
			k.load = nil
			continue
		}
		if k.hasPending() {
			pending, reset, gen, standby := k.pending, k.reset, k.enqGen, !k.promoted
			for t := range 2 {
				k.pending[t] = newKeyMap[pendOp](0)
				k.reset[t] = false
			}
			k.busy = true
			k.mu.Unlock()
			ops := k.queuedOps(pending, reset, standby)
			k.apply(context.Background(), ops)
			k.mergeQueued(ops)
			k.mu.Lock()
			k.doneGen = gen
			k.busy = false
			k.cond.Broadcast()
			continue
		}
		if k.ckpt != nil && k.doneGen >= k.ckpt.gen && !k.release {
			// Everything queued before the request is written (and a
			// finished copy's adopted entries dropped first).
			j := k.ckpt
			k.ckpt = nil
			if k.promoted {
				go j.done(CheckpointInfo{}, errors.New("ctsync: checkpoint refused: the sink was promoted"))
				continue
			}
			k.unlocked(func() { k.takeCheckpoint(j) })
			continue
		}
		if k.job == nil && k.release {
			k.release = false
			k.unlocked(k.dropAdopted)
			continue
		}
		if k.job == nil {
			// Timeouts after a promotion, a chunk at a time so that
			// changes queued meanwhile go first.
			n := min(len(k.refresh), refreshChunk)
			ops := k.refresh[:n:n]
			k.refresh = k.refresh[n:]
			k.busy = true
			k.mu.Unlock()
			k.apply(context.Background(), ops)
			var st PromoteStats
			k.mergePromote(ops, &st)
			k.mu.Lock()
			if len(k.refresh) == 0 {
				k.refresh = nil
			}
			k.busy = false
			k.cond.Broadcast()
			continue
		}
		j := k.job
		k.busy = true
		k.mu.Unlock()
		var ops, refresh []*op
		if k.opts.Mode == Hold {
			ops = k.holdPromoteOps(j)
		} else {
			ops, refresh = k.injectPromoteOps()
		}
		j.err = k.apply(j.ctx, ops)
		k.mergePromote(ops, &j.stats)
		j.stats.Refreshing = len(refresh)
		k.mu.Lock()
		k.refresh = refresh
		k.job = nil
		k.busy = false
		close(j.done)
		k.cond.Broadcast()
	}
}

// unlocked runs fn on the writer without mu, marked busy so that Flush
// waits for it; called, and returning, with mu held.
func (k *Sink) unlocked(fn func()) {
	k.busy = true
	k.mu.Unlock()
	fn()
	k.mu.Lock()
	k.busy = false
	k.cond.Broadcast()
}

// refreshChunk is how many timeouts the writer sets between looks at the
// queue of live changes.
const refreshChunk = 4096

func (k *Sink) hasPending() bool {
	return k.reset[tCT] || k.reset[tExp] || k.pending[tCT].len()+k.pending[tExp].len() > 0
}

// queuedOps turns a batch of queued changes into operations. A Reset in
// the batch came before all of its changes: what this sink wrote so far
// becomes stale. Expectations that failed for want of their master are
// tried again whenever connections arrive: replicated changes need not
// come in order (an expectation found by a dump precedes its master's
// event).
func (k *Sink) queuedOps(pending [2]*keyMap[pendOp], reset [2]bool, standby bool) []*op {
	for t := range 2 {
		if !reset[t] {
			continue
		}
		k.meta[t].each(func(key []byte, m entryMeta) bool {
			k.stale[t].set(key, m)
			return true
		})
		k.meta[t] = newKeyMap[entryMeta](0)
		k.failed[t] = newKeyMap[string](0)
		if t == tCT {
			k.orphans = newKeyMap[string](0)
			k.adopted, k.adoptedSize = newKeyMap[entryMeta](0), 0
			k.mu.Lock()
			pub := k.published
			k.published = nil
			k.mu.Unlock()
			if standby && k.opts.Mode == Inject {
				// What the kernel holds need not be written again
				// (adopt.go).
				if a := k.adoptPublished(pub); a != nil {
					k.adopted, k.adoptedSize = a, a.len()
				} else if a, err := k.adoptKernel(); err == nil {
					k.adopted, k.adoptedSize = a, a.len()
				} else {
					k.log.Warn("full copy: the kernel's table could not be read; every entry is written again", "err", err)
				}
			}
		}
	}
	if pending[tCT].len() > 0 && k.orphans.len() > 0 {
		// New connections may include the orphans' masters.
		k.orphans.each(func(key []byte, v string) bool {
			if !pending[tCT].has(key) {
				pending[tCT].set(key, pendOp{val: v})
			}
			return true
		})
		k.orphans = newKeyMap[string](0)
	}
	if pending[tCT].len() > 0 && k.failed[tExp].len() > 0 {
		k.failed[tExp].each(func(key []byte, v string) bool {
			if !pending[tExp].has(key) {
				pending[tExp].set(key, pendOp{val: v})
			}
			return true
		})
		k.failed[tExp] = newKeyMap[string](0)
	}
	ops := make([]*op, 0, pending[tCT].len()+pending[tExp].len())
	var slab []op // in chunks: most puts of a reconciled copy need none
	unchanged := 0
	for t := range 2 {
		pending[t].each(func(key []byte, p pendOp) bool {
			// Written since the Reset, or seen in the kernel by its dump:
			// known to be there. Stale (written before the Reset): only
			// believed to be.
			m, ok := k.meta[t].get(key)
			if !ok && t == tCT {
				m, ok = k.adopted.get(key)
			}
			known := ok
			if !ok {
				m, ok = k.stale[t].get(key)
			}
			var vh uint32
			if t == tCT && !p.del {
				vh = valueHash(bytesOf(p.val))
				if known && standby && vh != 0 && m.vh == vh {
					// The kernel holds this value already: record it.
					k.recordInKernel(t, key, entryMeta{timeout: flowTimeout(bytesOf(p.val)), fp: m.fp, vh: vh})
					unchanged++
					return true
				}
			}
			if len(slab) == cap(slab) {
				slab = make([]op, 0, min(4096, cap(ops)-len(ops)))
			}
			slab = slab[:len(slab)+1]
			o := &slab[len(slab)-1]
			o.table, o.key, o.val, o.standby, o.vh, o.gen = uint8(t), string(key), p.val, standby, vh, p.gen
			if p.del {
				o.kind = opDel
			}
			if ok {
				o.existing, o.prevFP = true, m.fp
			}
			ops = append(ops, o)
			return true
		})
	}
	k.unchanged.Add(uint64(unchanged))
	k.countMeta()
	if len(ops) <= fifoMax {
		// Oldest first: a map hands them over in random order, and a
		// change queued first but written last waits a whole round more
		// (the standby's replication lag doubles in its tail).
		slices.SortFunc(ops, func(a, b *op) int { return cmp.Compare(a.gen, b.gen) })
	}
	return ops
}

// fifoMax is the largest round of changes put in queue order; a bigger one
// is a copy, where the order does not matter and sorting would cost.
const fifoMax = 1 << 16

func (k *Sink) countMeta() {
	for t := range 2 {
		k.nMeta[t].Store(int64(k.meta[t].len()))
	}
	k.nStale.Store(int64(k.stale[tCT].len() + k.stale[tExp].len()))
}

// mergeQueued records the outcome of written changes.
func (k *Sink) mergeQueued(ops []*op) {
	for _, o := range ops {
		t := o.table
		key := bytesOf(o.key)
		switch o.kind {
		case opDel:
			k.failed[t].del(key)
			if t == tCT {
				k.orphans.del(key)
				k.adopted.del(key)
			}
			if o.stage == stDone {
				k.meta[t].del(key)
				k.stale[t].del(key)
			} else if m, ok := k.meta[t].del(key); ok {
				k.stale[t].set(key, m) // swept at promotion
			}
		case opPut:
			if o.stage == stOrphan {
				k.orphans.set(key, o.val)
				continue
			}
			if t == tCT {
				k.orphans.del(key)
			}
			if o.stage != stDone {
				k.failed[t].set(key, o.val)
				continue
			}
			k.recordInKernel(int(t), key, entryMeta{timeout: o.repTimeout, fp: o.fp, vh: o.vh})
		}
	}
	k.countMeta()
}

// recordInKernel notes that the kernel holds key's replicated value: it
// is neither stale, failed, an orphan nor merely adopted any more.
func (k *Sink) recordInKernel(t int, key []byte, m entryMeta) {
	k.failed[t].del(key)
	k.stale[t].del(key)
	if t == tCT {
		k.orphans.del(key)
		k.adopted.del(key)
	}
	k.meta[t].set(key, m)
}

// injectPromoteOps lists what promotion of an injecting sink has to do:
// delete stale entries and retry failed writes before the unit is ACTIVE;
// give entries their replicated timeouts (refresh) afterwards. The entries
// already pass traffic with their longer standby timeout, and a packet
// sets a live connection's timeout anyway, so the refresh only shortens
// the life of connections that ended — at a million entries it takes
// seconds (ctnetlink updates are serialised), which must not be outage.
func (k *Sink) injectPromoteOps() (ops, refresh []*op) {
	standby := uint32(k.opts.StandbyTimeout / time.Second)
	k.adopted = newKeyMap[entryMeta](0) // left as they are
	for t := range 2 {
		k.stale[t].each(func(key []byte, _ entryMeta) bool {
			ops = append(ops, &op{table: uint8(t), kind: opDel, key: string(key), existing: true})
			return true
		})
		k.failed[t].each(func(key []byte, v string) bool {
			ops = append(ops, &op{table: uint8(t), kind: opPut, key: string(key), val: v})
			return true
		})
		if t == tCT {
			// Last try with the master; unrelated if it is still missing.
			k.orphans.each(func(key []byte, v string) bool {
				ops = append(ops, &op{table: uint8(t), kind: opPut, key: string(key), val: v})
				return true
			})
			k.orphans = newKeyMap[string](0)
			k.meta[t].each(func(key []byte, m entryMeta) bool {
				if m.timeout < standby {
					refresh = append(refresh, &op{table: uint8(t), kind: opTimeout, key: string(key), repTimeout: m.timeout})
				}
				return true
			})
		}
	}
	return ops, refresh
}

// holdPromoteOps lists every held entry.
func (k *Sink) holdPromoteOps(j *promoteJob) []*op {
	n := j.held[tCT].len() + j.held[tExp].len()
	ops := make([]*op, 0, n)
	slab := make([]op, n)
	for t := range 2 {
		j.held[t].each(func(_ []byte, v string) bool {
			o := &slab[len(ops)]
			o.table, o.kind, o.val = uint8(t), opPut, v
			ops = append(ops, o)
			return true
		})
		j.held[t] = nil
	}
	return ops
}

// mergePromote records the outcome of a promotion.
func (k *Sink) mergePromote(ops []*op, st *PromoteStats) {
	for _, o := range ops {
		t := o.table
		switch {
		case o.stage != stDone:
			st.Failed++
			if o.kind == opPut && o.key != "" {
				k.failed[t].set(bytesOf(o.key), o.val)
			}
			continue
		case o.kind == opDel:
			st.Deleted++
			k.stale[t].del(bytesOf(o.key))
			continue
		case o.kind == opTimeout:
			st.Refreshed++
		case o.outcome == outCreated:
			st.Created++
		default:
			st.Updated++
		}
		if t == tExp {
			st.Expectations++
		} else {
			st.Flows++
		}
		if o.kind == opPut && o.key != "" {
			k.failed[t].del(bytesOf(o.key))
			k.meta[t].set(bytesOf(o.key), entryMeta{timeout: o.repTimeout, fp: o.fp, vh: o.vh})
		}
	}
	k.countMeta()
}

// Operations on the kernel's tables, each a small state machine driven by
// the kernel's answers.
type opKind uint8

const (
	opPut opKind = iota
	opDel
	opTimeout
)

type opStage uint8

const (
	stInit     opStage = iota
	stCreate           // create (flow: with NAT, helper, master)
	stUpdate           // update in place
	stRecreate         // delete, then create
	stDelete           // delete
	stTimeout          // set the timeout
	stDone
	stFailed
	stOrphan // standby: the master is not in the kernel yet (see Sink.orphans)
)

type outcome uint8

const (
	outNone outcome = iota
	outCreated
	outUpdated
)

// errUnknown marks a request whose answer was lost.
const errUnknown = syscall.EIO

type op struct {
	table    uint8
	kind     opKind
	existing bool   // the entry is believed to be in the kernel
	standby  bool   // written while standby (StandbyTimeout applies)
	key      string // empty for held entries (the value has it)
	val      string
	prevFP   uint32
	vh       uint32 // valueHash(val) of a connection put
	gen      uint64 // when it was queued (pendOp.gen)

	stage                        opStage
	recreated                    bool
	outcome                      outcome
	hasMaster, hasHelper, hasLab bool
	noMaster, noHelper, noLabels bool
	decoded                      bool
	fp, repTimeout               uint32
	errno                        syscall.Errno
	tries                        uint8
}

// bytesOf views a string's bytes without copying; the decoders only read.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func fingerprint(f *conntrack.Flow) uint32 {
	var b [48]byte
	return fnv32Add(fnvOffset32, putTuple(b[:0], f.TupleReply, v6(f.TupleReply.IP.SourceAddress, f.TupleReply.IP.DestinationAddress)))
}

// apply writes ops into the kernel: connections without a master first,
// then related connections (their master must exist), then expectations
// (their master too); each group is spread over the worker sockets.
func (k *Sink) apply(ctx context.Context, ops []*op) error {
	if len(ops) == 0 {
		return nil
	}
	var groups [3][]*op
	for _, o := range ops {
		switch {
		case o.table == tExp:
			groups[2] = append(groups[2], o)
		case o.kind == opPut && valueHasMaster(o.val):
			groups[1] = append(groups[1], o)
		default:
			groups[0] = append(groups[0], o)
		}
	}
	for _, g := range groups {
		if len(g) == 0 {
			continue
		}
		w := min(len(k.conns), (len(g)+k.opts.BatchSize-1)/k.opts.BatchSize)
		per := (len(g) + w - 1) / w
		var wg sync.WaitGroup
		for i := range w {
			part := g[min(i*per, len(g)):min((i+1)*per, len(g))]
			wg.Add(1)
			c := k.conns[i]
			k.work <- func() {
				defer wg.Done()
				k.run(ctx, c, part)
			}
		}
		wg.Wait()
	}
	for _, o := range ops {
		switch {
		case o.stage == stOrphan:
		case o.stage != stDone:
			k.failedCount.Add(1)
		case o.kind == opDel:
			k.deleted.Add(1)
		case o.kind == opTimeout:
			k.refreshed.Add(1)
		case o.outcome == outCreated && o.recreated:
			k.recreated.Add(1)
		case o.outcome == outCreated:
			k.created.Add(1)
		default:
			k.updated.Add(1)
		}
	}
	return ctx.Err()
}

// valueHasMaster peeks at a flow value's presence bits.
func valueHasMaster(v string) bool {
	if len(v) < 2 || v[0] != magicFlow {
		return false
	}
	r := reader{b: bytesOf(v)[1:]}
	return r.uvarint()&pMaster != 0
}

// run drives ops to completion on one socket, in rounds of batches.
func (k *Sink) run(ctx context.Context, c *nlConn, ops []*op) {
	var m msgBuf
	var y sched.Yielder
	sent := make([]*op, 0, k.opts.BatchSize)
	pend := ops
	for round := 0; len(pend) > 0 && round < 8; round++ {
		for i := 0; i < len(pend); {
			y.Pause()
			if ctx.Err() != nil {
				for _, o := range pend[i:] {
					o.stage = stFailed
				}
				break
			}
			m.b = m.b[:0]
			sent = sent[:0]
			var first uint32
			for ; i < len(pend) && len(sent) < k.opts.BatchSize; i++ {
				o := pend[i]
				if o.stage == stDone || o.stage == stFailed || o.stage == stOrphan {
					continue
				}
				seq := c.nextSeq()
				if len(sent) == 0 {
					first = seq
				}
				if !k.build(&m, seq, o) {
					o.stage = stFailed
					c.seq-- // nothing sent under this number
					continue
				}
				o.errno = 0
				sent = append(sent, o)
			}
			if len(sent) == 0 {
				continue
			}
			// Ask for an ack on the last request only: the kernel answers
			// every failed request anyway, so one ack closes the batch.
			setAck(m.b)
			last := first + uint32(len(sent)) - 1
			err := c.batch(m.b, first, last, func(seq uint32, e syscall.Errno) {
				sent[seq-first].errno = e
			})
			if err != nil {
				k.logFailure("netlink batch", err)
				for _, o := range sent {
					if o.errno == 0 {
						o.errno = errUnknown
					}
				}
			}
			for _, o := range sent {
				k.advance(o)
			}
		}
		next := pend[:0:0]
		for _, o := range pend {
			if o.stage != stDone && o.stage != stFailed && o.stage != stOrphan {
				next = append(next, o)
			}
		}
		pend = next
	}
	for _, o := range pend {
		o.stage = stFailed
	}
}

// setAck sets NLM_F_ACK on the last message of a batch buffer.
func setAck(b []byte) {
	last := -1
	for off := 0; off+nlmsgHdrLen <= len(b); {
		l := int(binary.NativeEndian.Uint32(b[off:]))
		if l < nlmsgHdrLen {
			break
		}
		last = off
		off += (l + 3) &^ 3
	}
	if last >= 0 {
		flags := binary.NativeEndian.Uint16(b[last+6:])
		binary.NativeEndian.PutUint16(b[last+6:], flags|nlmFAck)
	}
}

// build appends the request of o's current stage. It returns false when o
// cannot be written at all (an undecodable value).
func (k *Sink) build(m *msgBuf, seq uint32, o *op) bool {
	if o.stage == stInit {
		switch o.kind {
		case opDel:
			o.stage = stDelete
		case opTimeout:
			o.stage = stTimeout
		default:
			o.stage = stCreate
			if o.existing && o.table == tCT {
				o.stage = stUpdate
			}
		}
	}
	if o.table == tExp {
		return k.buildExpect(m, seq, o)
	}
	switch o.stage {
	case stDelete, stTimeout:
		t, zone, err := decodeKey(bytesOf(o.key))
		if err != nil {
			k.logFailure("bad key", err)
			return false
		}
		if o.stage == stDelete {
			appendFlowDelete(m, seq, t, zone, false)
		} else {
			appendFlowTimeout(m, seq, t, zone, max(o.repTimeout, uint32(k.opts.MinTimeout/time.Second)), false)
		}
		return true
	}
	f, err := DecodeFlow(bytesOf(o.val))
	if err != nil {
		k.logFailure("bad conntrack value", err)
		return false
	}
	if !o.decoded {
		o.decoded = true
		o.fp, o.repTimeout = fingerprint(&f), f.Timeout
		o.hasMaster, o.hasHelper, o.hasLab = tupleFilled(f.TupleMaster), f.Helper.Name != "", len(f.Labels) != 0
		if o.stage == stUpdate && o.fp != o.prevFP {
			// The NAT mapping changed (a new connection with the same
			// original tuple): only a new entry can have it.
			o.stage = stRecreate
		}
	}
	switch o.stage {
	case stRecreate:
		appendFlowDelete(m, seq, f.TupleOrig, f.Zone, false)
	case stCreate, stUpdate:
		appendFlowMsg(m, seq, &f, flowMsgOpts{
			create:   o.stage == stCreate,
			noMaster: o.noMaster,
			noHelper: o.noHelper,
			noLabels: o.noLabels,
			timeout:  k.timeoutFor(o.standby, f.Timeout),
			liberal:  !k.opts.TCPWindowTracking,
		})
	default:
		return false
	}
	return true
}

func (k *Sink) buildExpect(m *msgBuf, seq uint32, o *op) bool {
	if o.stage == stDelete {
		t, zone, err := decodeKey(bytesOf(o.key))
		if err != nil {
			k.logFailure("bad expectation key", err)
			return false
		}
		appendExpectDelete(m, seq, t, zone, false)
		return true
	}
	e, err := DecodeExpect(bytesOf(o.val))
	if err != nil {
		k.logFailure("bad expectation value", err)
		return false
	}
	o.repTimeout = e.Timeout
	switch o.stage {
	case stRecreate:
		appendExpectDelete(m, seq, e.Tuple, e.Zone, false)
	case stCreate:
		appendExpectMsg(m, seq, &e, false)
	default:
		return false
	}
	return true
}

func (k *Sink) timeoutFor(standby bool, rep uint32) uint32 {
	t := rep
	if standby {
		t = max(t, uint32(k.opts.StandbyTimeout/time.Second))
	} else {
		t = max(t, uint32(k.opts.MinTimeout/time.Second))
	}
	return t
}

// advance moves o to its next stage after the kernel's answer.
func (k *Sink) advance(o *op) {
	e := o.errno
	retry := func() {
		o.tries++
		if o.tries > 4 {
			k.fail(o)
		}
	}
	if e == errUnknown || e == unix.EAGAIN || e == unix.EINTR || e == unix.ENOBUFS || e == unix.ENOMEM && o.tries < 2 {
		retry()
		return
	}
	switch o.stage {
	case stCreate:
		switch {
		case e == 0:
			o.stage, o.outcome = stDone, outCreated
		case e == unix.EEXIST && o.table == tCT:
			o.stage = stUpdate
		case e == unix.EEXIST && o.table == tExp:
			o.stage = stRecreate
		case e == unix.ENOENT && o.hasMaster && !o.noMaster && o.standby:
			o.stage = stOrphan // its master comes later: retried then
		case e == unix.ENOENT && o.hasMaster && !o.noMaster:
			o.noMaster = true // master not replicated: keep the connection unrelated
		case e == unix.EOPNOTSUPP && o.hasHelper && !o.noHelper:
			o.noHelper = true // helper not available on this unit
		case e == unix.ENOSPC && o.hasLab && !o.noLabels:
			o.noLabels = true // no connlabel in this unit's ruleset
		default:
			k.fail(o)
		}
	case stUpdate:
		switch e {
		case 0:
			o.stage, o.outcome = stDone, outUpdated
		case unix.ENOENT:
			o.stage = stCreate
		case unix.EBUSY, unix.EOPNOTSUPP, unix.EINVAL:
			// The entry cannot take this state in place (a status bit
			// would be cleared: a new connection with the same tuple).
			o.stage = stRecreate
		default:
			k.fail(o)
		}
	case stRecreate:
		if e == 0 || e == unix.ENOENT {
			o.stage, o.recreated = stCreate, true
			o.tries++
			if o.tries > 4 {
				k.fail(o)
			}
			return
		}
		k.fail(o)
	case stDelete:
		if e == 0 || e == unix.ENOENT {
			o.stage = stDone
			return
		}
		k.fail(o)
	case stTimeout:
		if e == 0 {
			o.stage = stDone
			return
		}
		k.fail(o)
	}
}

func (k *Sink) fail(o *op) {
	o.stage = stFailed
	what := "write conntrack entry"
	if o.table == tExp {
		what = "write expectation"
	}
	k.logFailure(what, o.errno)
}

// logFailure logs at most a few failures a second.
func (k *Sink) logFailure(what string, err error) {
	now := time.Now().Unix()
	if last := k.failLog.Load(); last != now && k.failLog.CompareAndSwap(last, now) {
		k.log.Warn("ctsync: "+what+" failed", "err", err)
	}
}
