package nftsets

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Timing of a Sink's worker.
const (
	// sinkGather is how long the worker waits after the first queued change
	// for more, so that a burst becomes one transaction.
	sinkGather = 2 * time.Millisecond
	// resetQuiet and resetMaxDefer: after a Reset the worker converges the
	// set on what was Put since (deleting what is left over) once no change
	// has come for resetQuiet, or resetMaxDefer after the Reset, or at
	// Flush. Until then only the new Puts are applied, so a
	// resynchronisation never empties the set.
	resetQuiet    = 100 * time.Millisecond
	resetMaxDefer = 2 * time.Second
	// retryMin and retryMax bound the backoff after a failed transaction.
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// minLife: an element with less life left is not added.
	minLife = 5 * time.Millisecond
	// checkEvery: how often the worker checks that no set was created anew
	// behind its back (a ruleset reload on this unit empties the sets).
	checkEvery = time.Second
	// auditEvery: how often a set that has been resynchronised (Reset) is
	// listed and converged on what the source says, whatever happened to
	// it.
	auditEvery = time.Minute
)

var errSinkClosed = errors.New("nftsets: sink is closed")

// Sink applies replicated changes to the configured sets of one namespace.
// Its Put, Delete and Reset are internal/repl's Store interface: they only
// queue (a map update under a mutex) and return; a worker goroutine applies
// what is queued as one nftables transaction per batch, a few milliseconds
// after the first change, or at Flush. (A batch is split into several
// transactions only beyond the socket's send buffer: 16 MiB with
// CAP_NET_ADMIN, about 400,000 elements.)
//
// An element gets its timeout and, as its expiry, the remaining time the
// source encoded less the time since ([Element.RemainingAt]); one whose
// time has run out is not added (or is deleted).
//
// The Sink keeps the content it was told (per key, the element and its
// expiry) and what it believes the kernel holds. A failed transaction (an
// element that expired under it on a kernel without DESTROYSETELEM, a set
// reloaded behind its back) makes it list the kernel's set and converge on
// the told content, retrying with a backoff; an element the kernel still
// refuses (e.g. a key of the wrong length because the units' sets differ)
// is found by halving, logged and dropped.
//
// The Sink also notices a set created anew on this unit (a ruleset reload
// empties it) within a second, and lists every resynchronised set once a
// minute, converging it on what the source says (an element removed by
// hand on this unit comes back, one added by hand goes). Until the first
// Reset of a set, what it held when the Sink opened is kept.
type Sink struct {
	log  *slog.Logger
	conn *nlConn // the worker's
	sets map[string]*sinkSet

	mu        sync.Mutex
	cond      *sync.Cond
	closed    bool
	flushReq  uint64 // Flush calls so far
	flushDone uint64 // flushReq covered by the last finished cycle
	flushErr  error  // that cycle's error
	unknown   map[string]bool
	badValues int
	lastSweep time.Time
	nextCheck time.Time // worker only

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

type sinkSet struct {
	ref SetRef

	// Under Sink.mu.
	desired   map[string]*want // what the source says, by canonical key
	dirty     map[string]struct{}
	reconcile bool      // converge on desired by listing the kernel
	resetAt   time.Time // last Reset (zero if none pending)
	touched   time.Time // last change
	retryAt   time.Time // after a failure
	backoff   time.Duration
	synced    bool      // a Reset made desired the whole truth
	auditAt   time.Time // next audit of a synced set

	// Worker only.
	info    setInfo
	table   uint64           // the handle of the set's table
	applied map[string]*seen // what the kernel holds, as far as the Sink knows
	misfit  bool             // logged that an element does not fit the set
}

// want is an element as told by the source, with its expiry on this unit's
// monotonic clock (zero when it never expires).
type want struct {
	e        Element
	deadline time.Time
}

func (w *want) seen() *seen {
	return &seen{timeout: w.e.Timeout, deadline: w.deadline, data: string(w.e.Data), udata: string(w.e.UserData)}
}

// OpenSink checks that every set exists in the namespace nsh and returns a
// Sink that writes into them. nsh must stay open until Close.
func OpenSink(nsh netns.NsHandle, sets []SetRef, logger *slog.Logger) (*Sink, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c, err := dial(nsh)
	if err != nil {
		return nil, err
	}
	k := &Sink{
		log: logger, conn: c, sets: map[string]*sinkSet{}, unknown: map[string]bool{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	k.cond = sync.NewCond(&k.mu)
	for _, ref := range sets {
		if err := ref.validate(); err != nil {
			c.close()
			return nil, fmt.Errorf("nft set %s: %w", ref, err)
		}
		if k.sets[ref.ReplTable()] != nil {
			c.close()
			return nil, fmt.Errorf("nft set %s is listed twice in sync.nft_sets", ref)
		}
		info, err := checkSet(c, ref)
		if err != nil {
			c.close()
			return nil, err
		}
		st := &sinkSet{ref: ref, info: info, desired: map[string]*want{}, dirty: map[string]struct{}{}}
		// What the set holds already is kept until a Reset says otherwise
		// (the replication link may not be up yet), but the Sink must know
		// it to delete from it.
		if err := k.readApplied(st); err != nil {
			c.close()
			return nil, err
		}
		k.sets[ref.ReplTable()] = st
	}
	k.nextCheck = time.Now().Add(checkEvery)
	go k.worker()
	return k, nil
}

func (k *Sink) signal() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// set returns the configured set of a replication table, or nil (logged
// once per table) for a table the Sink was not configured with.
func (k *Sink) set(table string) *sinkSet {
	st := k.sets[table]
	if st == nil && !k.unknown[table] {
		k.unknown[table] = true
		k.log.Warn("nft set sync: changes for a set that is not configured on this unit are dropped", "table", table)
	}
	return st
}

// Put implements internal/repl's Store: the element of key gets value. An
// element whose timeout has already run out is deleted instead. A value
// that cannot be decoded is logged and dropped.
func (k *Sink) Put(table string, key, value []byte) {
	now := time.Now()
	e, err := DecodeElement(key, value)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	st := k.set(table)
	if st == nil {
		return
	}
	if err != nil {
		k.badValues++
		if k.badValues == 1 || k.badValues%1000 == 0 {
			k.log.Error("nft set sync: dropping an element that cannot be decoded", "table", table, "count", k.badValues, "err", err)
		}
		return
	}
	ck := string(EncodeKey(e))
	w := &want{e: e}
	if e.Timeout > 0 {
		left := e.RemainingAt(now)
		if left < minLife {
			delete(st.desired, ck)
			k.touch(st, ck, now)
			return
		}
		w.deadline = now.Add(left)
	}
	st.desired[ck] = w
	k.touch(st, ck, now)
}

// Delete implements internal/repl's Store: the element of key is removed.
func (k *Sink) Delete(table string, key []byte) {
	now := time.Now()
	var e Element
	err := decodeKey(&e, key)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	st := k.set(table)
	if st == nil || err != nil {
		return
	}
	ck := string(EncodeKey(e))
	delete(st.desired, ck)
	k.touch(st, ck, now)
}

func (k *Sink) touch(st *sinkSet, ck string, now time.Time) {
	st.dirty[ck] = struct{}{}
	st.touched = now
	k.signal()
}

// Reset implements internal/repl's Store: the set is to be emptied, and
// refilled by the Puts that follow. The Sink does not flush the kernel's
// set at once: it applies the new Puts and then removes what was not Put
// again, once the set has been quiet for 100 ms (at most 2 s after the
// Reset) or at Flush. The set thus ends equal to the source's without ever
// dropping an element both units have.
func (k *Sink) Reset(table string) {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	st := k.set(table)
	if st == nil {
		return
	}
	st.desired = map[string]*want{}
	st.dirty = map[string]struct{}{}
	st.reconcile, st.synced = true, true
	st.resetAt, st.touched = now, now
	k.signal()
}

// Flush applies everything queued before the call, including pending
// Resets, and returns the error of that attempt (nil once the kernel holds
// it). A failed attempt is retried in the background.
func (k *Sink) Flush() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errSinkClosed
	}
	k.flushReq++
	my := k.flushReq
	k.signal()
	for k.flushDone < my && !k.closed {
		k.cond.Wait()
	}
	if k.flushDone < my {
		return errSinkClosed
	}
	return k.flushErr
}

// Close applies what is queued (one attempt), stops the worker and closes
// the netlink socket. Later calls to Put, Delete and Reset do nothing. The
// elements stay in the kernel's sets.
func (k *Sink) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.flushReq++
	my := k.flushReq
	k.signal()
	for k.flushDone < my {
		k.cond.Wait()
	}
	err := k.flushErr
	k.closed = true
	k.cond.Broadcast()
	k.mu.Unlock()
	close(k.stop)
	<-k.done
	return errors.Join(err, k.conn.close())
}

// job is one set's share of a worker cycle.
type job struct {
	st   *sinkSet
	full bool             // converge on desired (a copy) by listing the kernel
	want map[string]*want // the keys to apply (nil value: absent); all of desired when full
	// authoritative: when full, what the kernel holds beyond want is
	// deleted (the set has been resynchronised).
	authoritative bool
}

func (k *Sink) worker() {
	defer close(k.done)
	timer := time.NewTimer(checkEvery)
	defer timer.Stop()
	var y sched.Yielder
	for {
		y.Pause()
		select {
		case <-k.stop:
			return
		case <-k.wake:
			select {
			case <-k.stop:
				return
			case <-time.After(sinkGather):
			}
		case <-timer.C:
		}
		next := k.cycle()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), time.Millisecond))
		}
	}
}

// cycle applies what is due and returns when the next deferred work is due
// (zero if none).
func (k *Sink) cycle() time.Time {
	now := time.Now()
	if !now.Before(k.nextCheck) {
		k.nextCheck = now.Add(checkEvery)
		k.checkSets(now)
	}
	k.mu.Lock()
	req := k.flushReq
	force := req > k.flushDone
	if now.Sub(k.lastSweep) > 10*time.Second {
		// Forget what has expired: the kernel has dropped it too.
		k.lastSweep = now
		for _, st := range k.sets {
			for key, w := range st.desired {
				if !w.deadline.IsZero() && w.deadline.Before(now) {
					delete(st.desired, key)
				}
			}
		}
	}
	var jobs []job
	for _, st := range k.sets {
		due := st.reconcile && (force || !now.Before(st.reconcileDue()))
		audit := st.synced && !now.Before(st.auditAt)
		switch {
		case due || audit:
			jobs = append(jobs, job{st: st, full: true, want: maps.Clone(st.desired), authoritative: st.synced})
			st.reconcile, st.resetAt = false, time.Time{}
			st.auditAt = now.Add(auditEvery)
		case len(st.dirty) > 0:
			j := job{st: st, want: make(map[string]*want, len(st.dirty))}
			for key := range st.dirty {
				j.want[key] = st.desired[key]
			}
			jobs = append(jobs, j)
		default:
			continue
		}
		st.dirty = map[string]struct{}{}
	}
	k.mu.Unlock()

	err := k.apply(jobs, now)
	if len(jobs) > 0 {
		k.log.Debug("nft set sync: applied", "sets", len(jobs), "took", time.Since(now), "err", err)
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	next := k.nextCheck
	for _, st := range k.sets {
		if st.reconcile {
			if d := st.reconcileDue(); d.Before(next) {
				next = d
			}
		}
		if st.synced && st.auditAt.Before(next) {
			next = st.auditAt
		}
	}
	if force {
		k.flushDone, k.flushErr = req, err
		k.cond.Broadcast()
	}
	return next
}

// checkSets reads the sets' definitions and schedules a convergence for a
// set that was created anew since the Sink last read it.
func (k *Sink) checkSets(now time.Time) {
	for _, st := range k.sets {
		th, err := k.conn.tableHandle(st.ref)
		if err != nil {
			continue // a missing set fails the next transaction
		}
		info, err := k.conn.getSet(st.ref)
		if err != nil || (info.handle == st.info.handle && th == st.table) {
			continue
		}
		k.log.Warn("nft set sync: set was created anew on this unit; refilling it", "set", st.ref.String())
		st.info, st.table = info, th
		k.mu.Lock()
		st.reconcile, st.retryAt = true, now
		k.mu.Unlock()
	}
}

func (st *sinkSet) reconcileDue() time.Time {
	due := st.retryAt
	if !st.resetAt.IsZero() {
		quiet := st.touched.Add(resetQuiet)
		if limit := st.resetAt.Add(resetMaxDefer); limit.Before(quiet) {
			quiet = limit
		}
		if quiet.After(due) {
			due = quiet
		}
	}
	return due
}

// failed schedules a set for convergence after a failure.
func (k *Sink) failed(st *sinkSet, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st.backoff = min(max(2*st.backoff, retryMin), retryMax)
	st.reconcile = true
	st.retryAt = now.Add(st.backoff)
}

func (k *Sink) succeeded(st *sinkSet) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !st.reconcile {
		st.backoff = 0
		st.retryAt = time.Time{}
	}
}

// op is one element change, in transaction order (deletes, then adds).
type op struct {
	st   *sinkSet
	kind opKind
	key  string
	e    Element
	have *seen // applied state after an add
}

// apply turns the jobs into element operations and commits them: one
// transaction for the incremental jobs, and per converging set its own
// (halved on failure to isolate elements the kernel refuses).
func (k *Sink) apply(jobs []job, now time.Time) error {
	var errs []error
	var incr []op
	var incrSets []*sinkSet
	for _, j := range jobs {
		if !j.full {
			incr = append(incr, k.diff(j, now)...)
			incrSets = append(incrSets, j.st)
			continue
		}
		retry, err := k.converge(j, now)
		if err != nil {
			errs = append(errs, err)
		}
		if retry {
			k.failed(j.st, now)
		} else {
			k.succeeded(j.st)
		}
	}
	if len(incr) > 0 {
		if err := k.commitOps(incr); err != nil {
			// Unknown which set failed, or why (an element that expired
			// under a delete on a kernel without DESTROYSETELEM): converge
			// them all on what they should hold.
			k.log.Debug("nft set sync: transaction failed; converging", "err", err)
			for _, st := range incrSets {
				k.mu.Lock()
				want, synced := maps.Clone(st.desired), st.synced
				k.mu.Unlock()
				retry, err := k.converge(job{st: st, full: true, want: want, authoritative: synced}, time.Now())
				if err != nil {
					errs = append(errs, err)
				}
				if retry {
					k.failed(st, now)
				}
			}
		}
	}
	for _, st := range incrSets {
		k.succeeded(st)
	}
	return errors.Join(errs...)
}

// readApplied reads the set's definition and content from the kernel into
// st.info and st.applied.
func (k *Sink) readApplied(st *sinkSet) error {
	th, err := k.conn.tableHandle(st.ref)
	if err == nil {
		st.table = th
	}
	info, err := k.conn.getSet(st.ref)
	if errors.Is(err, errSetMissing) {
		return fmt.Errorf("nft set %s does not exist: create it or remove it from sync.nft_sets", st.ref)
	}
	if err != nil {
		return err
	}
	if err := info.check(); err != nil {
		return fmt.Errorf("nft set %s cannot be synchronised: %v", st.ref, err)
	}
	st.info = info
	elems, _, _, err := k.conn.listElements(st.ref, info, nil)
	if err != nil {
		return err
	}
	listed := time.Now()
	st.applied = make(map[string]*seen, len(elems))
	for i := range elems {
		e := &elems[i]
		h := &seen{timeout: e.Timeout, data: string(e.Data), udata: string(e.UserData)}
		if e.Timeout > 0 {
			h.deadline = listed.Add(e.Expires)
		}
		st.applied[string(EncodeKey(*e))] = h
	}
	return nil
}

// converge lists the kernel's set and applies the difference with j.want.
// Element changes the kernel refuses are dropped (logged) and reported in
// the error, but do not make the set retry (retry is false).
func (k *Sink) converge(j job, now time.Time) (retry bool, err error) {
	if err := k.readApplied(j.st); err != nil {
		return true, err
	}
	if j.authoritative {
		for key := range j.st.applied {
			if _, ok := j.want[key]; !ok {
				j.want[key] = nil
			}
		}
	}
	ops := k.diff(j, now)
	if len(ops) == 0 {
		return false, nil
	}
	if err := k.commitOps(ops); err == nil {
		return false, nil
	}
	return false, k.bisect(ops)
}

// diff returns the operations that take the kernel from st.applied to
// j.want for the keys of j.want.
func (k *Sink) diff(j job, now time.Time) []op {
	st := j.st
	if st.applied == nil {
		st.applied = map[string]*seen{}
	}
	var dels, adds []op
	for key, w := range j.want {
		if w != nil && !w.deadline.IsZero() && w.deadline.Sub(now) < minLife {
			w = nil // expired meanwhile
		}
		if w != nil {
			if err := st.info.fits(&w.e); err != nil {
				if !st.misfit {
					st.misfit = true
					k.log.Error("nft set sync: element does not fit the set on this unit; are both units' sets defined alike?", "set", st.ref.String(), "err", err)
				}
				w = nil
			}
		}
		h := st.applied[key]
		switch {
		case w != nil && h == nil:
			adds = append(adds, op{st: st, kind: opAdd, key: key, e: w.e, have: w.seen()})
		case w != nil && !h.sameAs(w.seen()):
			dels = append(dels, op{st: st, kind: opDelete, key: key, e: w.e})
			adds = append(adds, op{st: st, kind: opAdd, key: key, e: w.e, have: w.seen()})
		case w == nil && h != nil:
			if !h.deadline.IsZero() && h.deadline.Before(now) {
				delete(st.applied, key) // the kernel has expired it
				continue
			}
			var e Element
			_ = decodeKey(&e, []byte(key))
			dels = append(dels, op{st: st, kind: opDelete, key: key, e: e})
		}
	}
	// In key order, as nft sends them: an interval set (rbtree) refuses
	// some orders of start and end elements with EEXIST.
	slices.SortFunc(dels, op.compare)
	slices.SortFunc(adds, op.compare)
	return append(dels, adds...)
}

// compare orders elements by key, an interval end before a start of the
// same key, then by key end.
func (o op) compare(p op) int {
	if c := bytes.Compare(o.e.Key, p.e.Key); c != 0 {
		return c
	}
	if o.e.IntervalEnd != p.e.IntervalEnd {
		if o.e.IntervalEnd {
			return -1
		}
		return 1
	}
	return bytes.Compare(o.e.KeyEnd, p.e.KeyEnd)
}

// fits reports why the kernel would refuse e in a set like i.
func (i setInfo) fits(e *Element) error {
	switch {
	case !e.Catchall && uint32(len(e.Key)) != i.keyLen:
		return fmt.Errorf("key of %d bytes, the set's are %d", len(e.Key), i.keyLen)
	case len(e.KeyEnd) > 0 && uint32(len(e.KeyEnd)) != i.keyLen:
		return fmt.Errorf("key end of %d bytes, the set's are %d", len(e.KeyEnd), i.keyLen)
	case i.flags&unix.NFT_SET_MAP != 0 && !e.Catchall && uint32(len(e.Data)) != i.dataLen:
		return fmt.Errorf("data of %d bytes, the map's are %d", len(e.Data), i.dataLen)
	case i.flags&unix.NFT_SET_MAP == 0 && len(e.Data) > 0:
		return errors.New("element has data but the set is not a map")
	case e.Timeout > 0 && !i.hasTimeout():
		return errors.New("element has a timeout but the set has no timeout flag")
	}
	return nil
}

// commitOps commits ops (in order) as one transaction when they fit, and
// records the result in the sets' applied state.
func (k *Sink) commitOps(ops []op) error {
	now := time.Now()
	var groups []setOps
	for i := range ops {
		o := &ops[i]
		e := o.e
		if o.kind == opAdd && e.Timeout > 0 {
			e.Expires = o.have.deadline.Sub(now)
			if e.Expires < time.Millisecond {
				e.Expires = time.Millisecond
			}
		}
		if n := len(groups); n > 0 && groups[n-1].ref == o.st.ref && groups[n-1].kind == o.kind {
			groups[n-1].elems = append(groups[n-1].elems, e)
			continue
		}
		groups = append(groups, setOps{ref: o.st.ref, kind: o.kind, elems: []Element{e}})
	}
	if err := k.conn.commit(groups); err != nil {
		return err
	}
	for _, o := range ops {
		if o.kind == opDelete {
			delete(o.st.applied, o.key)
		} else {
			o.st.applied[o.key] = o.have
		}
	}
	return nil
}

// bisect commits ops in halves to isolate the operations the kernel
// refuses, which are logged and dropped. It returns an error when some
// were.
func (k *Sink) bisect(ops []op) error {
	if err := k.commitOps(ops); err == nil {
		return nil
	} else if len(ops) == 1 {
		o := ops[0]
		if o.kind == opDelete && errors.Is(err, unix.ENOENT) {
			delete(o.st.applied, o.key) // expired meanwhile
			return nil
		}
		k.log.Error("nft set sync: the kernel refuses an element change; dropped", "set", o.st.ref.String(), "delete", o.kind == opDelete, "err", err)
		if o.kind == opDelete {
			// Probably gone already; forget it either way.
			delete(o.st.applied, o.key)
		}
		return err
	}
	h := len(ops) / 2
	return errors.Join(k.bisect(ops[:h]), k.bisect(ops[h:]))
}
