package ctsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Tables of the replicated store.
const (
	TableConntrack = "conntrack" // key: Key, value: EncodeFlow
	TableExpect    = "expect"    // key: ExpectKey, value: EncodeExpect
)

// ChangeKind says whether a Change sets or removes an entry.
type ChangeKind uint8

const (
	Put    ChangeKind = 1 // the entry Key now has Value
	Delete ChangeKind = 2 // the entry Key is gone
)

func (k ChangeKind) String() string {
	switch k {
	case Put:
		return "put"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("ChangeKind(%d)", uint8(k))
}

// Change is one change of the kernel's tables, as the replication engine
// carries it: opaque key and value bytes in a named table.
type Change struct {
	Kind  ChangeKind
	Table string // TableConntrack or TableExpect
	Key   []byte
	Value []byte // nil for Delete
}

// SourceOptions tune a Source. The zero value is usable.
type SourceOptions struct {
	// ReadBuffer is the event socket's receive buffer in bytes, set with
	// SO_RCVBUFFORCE (the process is root). Default 64 MiB.
	ReadBuffer int
	// BatchSize is the largest batch handed to out. Default 1024.
	BatchSize int
	// MaxQueue bounds the bytes of events read from the kernel but not yet
	// processed (out is slow). Past it they are dropped and the table is
	// dumped again, as after a kernel overrun. Default 256 MiB.
	MaxQueue int
	// IgnorePrefixes: a connection with any address (original or reply
	// tuple) inside one of them is not synchronised (say, the HA link).
	IgnorePrefixes []netip.Prefix
	// IgnorePorts: a TCP, UDP, SCTP, DCCP or UDP-Lite connection with one
	// of these ports on either side is not synchronised (say, the
	// heartbeat and sync ports).
	IgnorePorts []uint16
	// IgnoreFlow, when set, is asked about every connection the other
	// rules let through; true means do not synchronise it. f is only
	// valid during the call.
	IgnoreFlow func(f *conntrack.Flow) bool
	// IgnoreExpect is the same for expectations (the address and port
	// rules are applied to their master and expected tuples first).
	IgnoreExpect func(e *conntrack.Expect) bool
	// SyncLoopback synchronises connections from or to a loopback
	// address, which are skipped by default: they belong to the unit.
	SyncLoopback bool
	// NoExpectations leaves the expectation table out.
	NoExpectations bool
	// ResyncInterval is how often the tables are dumped again to catch
	// what no event reported: a Put for every entry whose state differs
	// from what was last reported (the timeout aside) and a Delete for
	// every entry that is gone. The kernel gives a connection events only
	// if a listener existed, or net.netfilter.nf_conntrack_events was 1,
	// when it was created: connections from before the daemon started
	// never report updates or their end. Default 10 minutes; negative
	// turns it off.
	ResyncInterval time.Duration
	// Ready, when set, is called on Run's goroutine once the initial
	// dump has been handed to out: from then on what out has received is
	// the whole table, and a copy of it may be served to a standby.
	Ready func()
	// DumpOnRequest makes the initial dump wait for RequestDump (or an
	// overrun, or the first periodic resync); changes are reported
	// meanwhile. A unit that has just become ACTIVE then publishes its
	// table when a standby asks for it rather than during the takeover: a
	// dump walks every bucket of the kernel's conntrack hash, however few
	// entries it holds, and the kernel does not give the CPU up meanwhile
	// (7 ms for 262,144 buckets on this 2-vCPU VM, with every user-space
	// thread queued on that CPU waiting, realtime or not).
	DumpOnRequest bool
	// KnownKeys are connections this unit already mirrors (a standby's
	// record at its promotion). With DumpOnRequest, the first
	// RequestDump publishes them by looking each one up — short system
	// calls, no bucket walk — when there are at most MaxLookupPublish;
	// the full dump, which also finds what the record lacks and what is
	// gone, follows RequestFullDump (or the first periodic resync).
	KnownKeys [][]byte
}

// MaxLookupPublish bounds KnownKeys published by lookups: above it a dump
// is cheaper (a lookup costs about what a dump pays per bucket and entry
// together several times over).
const MaxLookupPublish = 20000

func (o *SourceOptions) defaults() {
	if o.ReadBuffer <= 0 {
		o.ReadBuffer = 64 << 20
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1024
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 256 << 20
	}
	if o.ResyncInterval == 0 {
		o.ResyncInterval = 10 * time.Minute
	}
}

// SourceStats are counters since OpenSource.
type SourceStats struct {
	Events       uint64 // netlink event messages received
	Overruns     uint64 // event losses (kernel ENOBUFS or MaxQueue), each repaired by a dump
	Dumps        uint64 // full dumps: the initial one, one per overrun, periodic resyncs
	Resyncs      uint64 // periodic resyncs (among Dumps)
	Live         int    // connections currently known (and synchronised)
	LiveExpect   int    // expectations currently known
	Puts         uint64 // Put changes emitted
	Deletes      uint64 // Delete changes emitted
	Batches      uint64 // calls to out
	Filtered     uint64 // entries skipped by the ignore rules
	Refetches    uint64 // incomplete update events completed by reading the entry
	DecodeErrors uint64 // messages that could not be decoded (skipped)
	ReadBuffer   int    // the event socket's receive buffer as the kernel reports it
}

// Source reads a namespace's conntrack and expectation tables and reports
// every change. It is meant for the ACTIVE unit.
type Source struct {
	log  *slog.Logger
	opts SourceOptions
	nsh  netns.NsHandle // our own duplicate of the caller's handle
	q    *nlConn        // dumps and gets; only the Run goroutine uses it
	pset map[uint16]bool

	running atomic.Bool
	stopped atomic.Bool // Run has returned: live is no longer touched
	dumpReq chan struct{}
	fullReq chan struct{}

	evMu     sync.Mutex
	ev       *nlConn
	stopping bool

	live    *keyMap[liveInfo] // reported connections
	liveExp *keyMap[liveInfo] // reported expectations
	kbuf    []byte
	hbuf    []byte
	dec     flowDecoder   // connection events
	later   []recheckItem // connections to read again, by due time

	events, overruns, dumps, resyncs, puts, deletes, batches atomic.Uint64
	filtered, refetches, decodeErrors                        atomic.Uint64
	nLive, nLiveExp                                          atomic.Int64
	rcvbuf                                                   atomic.Int64
}

// liveInfo is what a Source remembers of a reported entry: flags, and a
// hash of its last reported value without the timeout (periodic resyncs
// report only entries whose hash changed).
type liveInfo struct {
	flags uint8
	hash  uint32
	fp    uint32 // fingerprint of the reply tuple (connections only), for AdoptPublished
}

// Flags of a live connection: attributes the kernel only reports in an
// update event when they change, so an event without them means "read
// the entry" rather than "they are gone".
const (
	lfLabels   = 1 << 0
	lfSynProxy = 1 << 1
)

// OpenSource opens the netlink sockets of a Source inside the namespace
// nsh (netns.None() means the caller's own). It keeps its own duplicate of
// nsh, so the caller may close its handle.
func OpenSource(nsh netns.NsHandle, logger *slog.Logger, opts SourceOptions) (*Source, error) {
	opts.defaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dup, err := dupNS(nsh)
	if err != nil {
		return nil, err
	}
	q, err := dialNetfilter(dup, 0)
	if err != nil {
		dup.Close()
		return nil, fmt.Errorf("ctsync: open source: %w", err)
	}
	s := &Source{
		log:     logger.With("component", "ctsync-source"),
		opts:    opts,
		nsh:     dup,
		q:       q,
		pset:    map[uint16]bool{},
		live:    newKeyMap[liveInfo](0),
		liveExp: newKeyMap[liveInfo](0),
		dumpReq: make(chan struct{}, 1),
		fullReq: make(chan struct{}, 1),
	}
	if v, err := readSysctl(dup, "net/netfilter/nf_conntrack_events"); err == nil && v != "1" {
		s.log.Warn("net.netfilter.nf_conntrack_events is not 1: connections created while no daemon listens never report updates or their end; only the periodic resync catches those",
			"nf_conntrack_events", v, "resync_interval", opts.ResyncInterval)
	}
	for _, p := range opts.IgnorePorts {
		s.pset[p] = true
	}
	return s, nil
}

// dupNS duplicates a namespace handle (netns.None() stays None).
func dupNS(nsh netns.NsHandle) (netns.NsHandle, error) {
	if !nsh.IsOpen() {
		return netns.None(), nil
	}
	fd, err := unix.FcntlInt(uintptr(nsh), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("ctsync: duplicate namespace handle: %w", err)
	}
	return netns.NsHandle(fd), nil
}

// Close releases the sockets. Call it after Run has returned.
func (s *Source) Close() error {
	err := s.q.Close()
	if s.nsh.IsOpen() {
		_ = s.nsh.Close()
	}
	return err
}

// RequestDump publishes the table of a Source opened with DumpOnRequest
// (nothing if it is published or under way): by looking up KnownKeys, or
// by a dump. Safe from any goroutine.
func (s *Source) RequestDump() {
	select {
	case s.dumpReq <- struct{}{}:
	default:
	}
}

// RequestFullDump makes a Source opened with DumpOnRequest dump its table
// if it has not yet: what lookups published is completed and corrected.
// Safe from any goroutine.
func (s *Source) RequestFullDump() {
	select {
	case s.fullReq <- struct{}{}:
	default:
	}
}

// lookupPublish reports the KnownKeys connections the kernel still holds,
// each read on its own, and the expectation table (a dump: its hash is
// small). What the keys lack is found by the full dump that follows.
func (s *Source) lookupPublish(ctx context.Context, em *emitter) error {
	start := time.Now()
	keys := s.opts.KnownKeys
	s.opts.KnownKeys = nil
	var y sched.Yielder
	found := 0
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return nil
		}
		y.Pause()
		t, zone, err := decodeKey(k)
		if err != nil {
			continue
		}
		f, err := s.get(t, zone)
		if err != nil || s.ignoreFlow(f) {
			continue // gone since (ENOENT), or not synchronised
		}
		s.kbuf = appendKey(s.kbuf[:0], f.TupleOrig, f.Zone)
		if !s.live.has(s.kbuf) {
			s.nLive.Add(1)
		}
		s.live.set(s.kbuf, liveInfo{flags: liveFlags(f), hash: em.stageFlow(s.kbuf, f), fp: fingerprint(f)})
		em.commit(TableConntrack)
		found++
	}
	if !s.opts.NoExpectations {
		if _, err := s.dumpExpect(ctx, em, true); err != nil {
			return err
		}
	}
	s.log.Info("published the connections this unit mirrored, by lookup; the full dump follows", "known", len(keys), "found", found, "took", time.Since(start))
	return nil
}

// Published is what this Source last reported of every connection, for a
// Sink that takes over this unit's kernel table (Sink.AdoptPublished):
// nil until Run has returned. The Source must not be used afterwards.
func (s *Source) Published() *Published {
	if !s.stopped.Load() {
		return nil
	}
	return &Published{live: s.live, at: time.Now()}
}

// Published is a Source's record of the connections it reported, taken
// when it stopped: key and value hash (the timeout left out), as a Sink's
// dump of the kernel table would record them (adopt.go).
type Published struct {
	live *keyMap[liveInfo]
	at   time.Time
}

// Len is the number of connections recorded.
func (p *Published) Len() int { return p.live.len() }

// Stats returns the counters; safe to call at any time.
func (s *Source) Stats() SourceStats {
	return SourceStats{
		Events:       s.events.Load(),
		Overruns:     s.overruns.Load(),
		Dumps:        s.dumps.Load(),
		Resyncs:      s.resyncs.Load(),
		Live:         int(s.nLive.Load()),
		LiveExpect:   int(s.nLiveExp.Load()),
		Puts:         s.puts.Load(),
		Deletes:      s.deletes.Load(),
		Batches:      s.batches.Load(),
		Filtered:     s.filtered.Load(),
		Refetches:    s.refetches.Load(),
		DecodeErrors: s.decodeErrors.Load(),
		ReadBuffer:   int(s.rcvbuf.Load()),
	}
}

func (s *Source) openEvents() (*nlConn, error) {
	groups := []uint32{1, 2, 3} // NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
	if !s.opts.NoExpectations {
		groups = append(groups, 4, 5, 6) // NFNLGRP_CONNTRACK_EXP_NEW, _UPDATE, _DESTROY
	}
	c, err := dialNetfilter(s.nsh, s.opts.ReadBuffer, groups...)
	if err != nil {
		return nil, fmt.Errorf("ctsync: subscribe to conntrack events: %w", err)
	}
	s.rcvbuf.Store(int64(c.rcvbuf()))
	return c, nil
}

// Run reports the namespace's tables to out until ctx ends (it then
// returns nil) or the event socket fails for good.
//
// It first subscribes to the conntrack and expectation events (new,
// update, destroy), then dumps both tables and emits a Put for every
// entry, so a unit that has just become ACTIVE publishes its whole table;
// then it emits a Put for every new or updated entry and a Delete for
// every destroyed one. When the kernel reports an overrun (events were
// lost because the socket buffer was full), Run subscribes again on a
// fresh socket, dumps the tables again and emits a Put for every entry
// present and a Delete for every entry it had reported that is gone: no
// state is lost, only the repair costs a dump. Changes are handed to out
// in batches (every change pending when out is called, up to BatchSize).
// out runs on Run's goroutine; it may keep the batch and its slices, which
// are never reused. Run may be called once.
func (s *Source) Run(ctx context.Context, out func(batch []Change)) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("ctsync: Source.Run called twice")
	}
	defer s.stopped.Store(true)
	ev, err := s.openEvents()
	if err != nil {
		return err
	}
	s.ev = ev
	q := newEvQueue(s.opts.MaxQueue)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		s.readLoop(q)
	}()
	defer func() {
		s.evMu.Lock()
		s.stopping = true
		_ = s.ev.Close()
		s.evMu.Unlock()
		<-readerDone
	}()

	em := &emitter{src: s, out: out, max: s.opts.BatchSize}
	// published: what out has received stands for the table (Ready
	// said so); dumped: a full dump has confirmed it.
	published, dumped := false, false
	markPublished := func() {
		if !published {
			published = true
			if s.opts.Ready != nil {
				s.opts.Ready()
			}
		}
	}
	// dumpAll reports every entry (all) or what differs from what was
	// reported, and the end of what is gone.
	dumpAll := func(all bool) error {
		em.flush()
		if err := s.resync(ctx, em, all); err != nil {
			return err
		}
		em.flush()
		dumped = true
		markPublished()
		return nil
	}
	if !s.opts.DumpOnRequest {
		if err := dumpAll(true); err != nil {
			return err
		}
	}

	var tick <-chan time.Time
	if s.opts.ResyncInterval > 0 { // negative: off
		t := time.NewTicker(s.opts.ResyncInterval)
		defer t.Stop()
		tick = t.C
	}
	var done []evItem // the queue's last batch, handled
	var y sched.Yielder
	for {
		var due <-chan time.Time
		if len(s.later) > 0 {
			due = time.After(time.Until(s.later[0].at))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-due:
			s.recheck(em)
			em.flush()
		case <-q.notify:
		case <-s.dumpReq:
			switch n := len(s.opts.KnownKeys); {
			case published:
			case n > 0 && n <= MaxLookupPublish:
				if err := s.lookupPublish(ctx, em); err != nil {
					return err
				}
				em.flush()
				markPublished()
			default:
				if err := dumpAll(true); err != nil {
					return err
				}
			}
		case <-s.fullReq:
			if !dumped {
				if err := dumpAll(!published); err != nil {
					return err
				}
			}
		case <-tick:
			s.resyncs.Add(1)
			if err := dumpAll(!published); err != nil {
				return err
			}
		}
		for {
			all, qerr := q.take(done)
			done = all
			// Everything before the last overrun is superseded by the dump
			// that follows it: a dump reports every entry present and the
			// end of every reported entry that is gone.
			items := all
			for i := len(items) - 1; i > 0; i-- {
				if items[i].overrun {
					for j := range items[:i] {
						items[j].release()
					}
					items = items[i:]
					break
				}
			}
			for k := range items {
				if ctx.Err() != nil {
					return nil
				}
				it := &items[k]
				if it.overrun {
					if err := dumpAll(true); err != nil {
						return err
					}
					continue
				}
				em.hint = len(items) - k
				s.handle(it.b, em)
				em.hint = 0
				it.release()
				y.Pause()
			}
			em.flush()
			if qerr != nil {
				return qerr
			}
			if len(items) == 0 {
				break
			}
		}
	}
}

// readLoop moves events from the kernel to q as fast as it can, so the
// socket buffer only has to absorb bursts shorter than a scheduling delay.
func (s *Source) readLoop(q *evQueue) {
	r := newEvReader()
	var y sched.Yielder
	for {
		y.Pause()
		s.evMu.Lock()
		c, stopping := s.ev, s.stopping
		s.evMu.Unlock()
		if stopping {
			return
		}
		items, err := r.read(c)
		if len(items) > 0 {
			for range q.push(items) {
				s.overruns.Add(1)
				s.log.Warn("conntrack events pile up faster than they are handled: dropped, dumping the table again", "max_queue", s.opts.MaxQueue)
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Events were lost. What is still queued on this socket is
			// older than the loss and would undo the repair if applied
			// after the dump: start over on a fresh socket, and let the
			// Run goroutine dump once it reaches the marker.
			s.overruns.Add(1)
			nc, derr := s.openEvents()
			s.evMu.Lock()
			if s.stopping {
				s.evMu.Unlock()
				if nc != nil {
					_ = nc.Close()
				}
				return
			}
			if derr != nil {
				s.evMu.Unlock()
				q.fail(derr)
				return
			}
			s.ev = nc
			s.evMu.Unlock()
			_ = c.Close()
			q.pushOverrun()
			s.log.Warn("conntrack event overrun: events lost, dumping the table again", "read_buffer", c.rcvbuf())
			continue
		}
		s.evMu.Lock()
		stopping = s.stopping
		s.evMu.Unlock()
		if stopping {
			return
		}
		q.fail(fmt.Errorf("ctsync: read conntrack events: %w", err))
		return
	}
}

// handle processes one datagram of events.
func (s *Source) handle(b []byte, em *emitter) {
	_ = eachMsg(b, func(m nlMsg) error {
		subsys := m.typ >> 8
		if subsys != subsysCT && subsys != subsysCTExp {
			return nil
		}
		s.events.Add(1)
		destroy := uint8(m.typ) == msgDelete
		var ev conntrack.Event
		var err error
		if subsys == subsysCT {
			// Into the same Flow every time: nothing keeps it.
			ev.Flow, err = s.dec.decode(m)
		} else {
			ev, err = decodeEvent(m)
		}
		if err != nil {
			s.decodeErrors.Add(1)
			s.log.Debug("skip undecodable conntrack event", "err", err)
			return nil
		}
		switch {
		case ev.Flow != nil:
			s.flowEvent(destroy, ev.Flow, em)
		case ev.Expect != nil:
			s.expectEvent(destroy, ev.Expect, em)
		}
		return nil
	})
}

func (s *Source) flowEvent(destroy bool, f *conntrack.Flow, em *emitter) {
	if s.ignoreFlow(f) {
		s.filtered.Add(1)
		return
	}
	s.kbuf = appendKey(s.kbuf[:0], f.TupleOrig, f.Zone)
	if destroy {
		if _, ok := s.live.del(s.kbuf); ok {
			s.nLive.Add(-1)
			em.del(TableConntrack, s.kbuf)
		}
		return
	}
	had, known := s.live.get(s.kbuf)
	if incomplete(f, had.flags, known) {
		s.refetches.Add(1)
		full, err := s.get(f.TupleOrig, f.Zone)
		switch {
		case errors.Is(err, unix.ENOENT):
			return // destroyed since; its destroy event follows
		case err != nil:
			s.log.Debug("read incomplete conntrack entry", "err", err)
		default:
			f = full
		}
	}
	if !known {
		s.nLive.Add(1)
	}
	// One encoding serves the output and the hash.
	h := em.stageFlow(s.kbuf, f)
	s.live.set(s.kbuf, liveInfo{flags: liveFlags(f), hash: h, fp: fingerprint(f)})
	em.commit(TableConntrack)
}

func (s *Source) expectEvent(destroy bool, e *conntrack.Expect, em *emitter) {
	if s.opts.NoExpectations {
		return
	}
	if s.ignoreExpect(e) {
		s.filtered.Add(1)
		return
	}
	s.kbuf = appendKey(s.kbuf[:0], e.Tuple, e.Zone)
	if destroy {
		if _, ok := s.liveExp.del(s.kbuf); ok {
			s.nLiveExp.Add(-1)
			em.del(TableExpect, s.kbuf)
		}
		return
	}
	if !s.liveExp.has(s.kbuf) {
		s.nLiveExp.Add(1)
	}
	s.recheckMaster(e)
	h := em.stageExpect(s.kbuf, e)
	s.liveExp.set(s.kbuf, liveInfo{hash: h})
	em.commit(TableExpect)
}

// recheckDelay is how long after an expectation appears its master is
// read again: the helper rewrites the packet right after creating it.
const recheckDelay = 50 * time.Millisecond

type recheckItem struct {
	t    conntrack.Tuple
	zone uint16
	at   time.Time
}

// recheckMaster schedules a read of e's master. A NAT helper creates an
// expectation when it rewrites a command (FTP PORT, say), and the rewrite
// changes the master's sequence adjustment without any event.
func (s *Source) recheckMaster(e *conntrack.Expect) {
	s.later = append(s.later, recheckItem{t: e.TupleMaster, zone: e.Zone, at: time.Now().Add(recheckDelay)})
}

// recheck reads the connections whose recheck is due and reports those
// that changed.
func (s *Source) recheck(em *emitter) {
	now := time.Now()
	n := 0
	for _, it := range s.later {
		if it.at.After(now) {
			break
		}
		n++
		f, err := s.get(it.t, it.zone)
		if err != nil || s.ignoreFlow(f) {
			continue
		}
		s.refetches.Add(1)
		s.kbuf = appendKey(s.kbuf[:0], f.TupleOrig, f.Zone)
		info := liveInfo{flags: liveFlags(f), hash: em.stageFlow(s.kbuf, f), fp: fingerprint(f)}
		old, known := s.live.get(s.kbuf)
		if known && old.hash == info.hash {
			em.unstage()
			continue
		}
		if !known {
			s.nLive.Add(1)
		}
		s.live.set(s.kbuf, info)
		em.commit(TableConntrack)
	}
	s.later = append(s.later[:0], s.later[n:]...)
}

// incomplete reports whether an update event lacks attributes the kernel
// only includes when they change (protocol state, sequence adjustment,
// master, labels), so the entry must be read to report it whole.
func incomplete(f *conntrack.Flow, had uint8, known bool) bool {
	switch f.TupleOrig.Proto.Protocol {
	case 6:
		if f.ProtoInfo.TCP == nil {
			return true
		}
	case 132:
		if f.ProtoInfo.SCTP == nil {
			return true
		}
	case 33:
		if f.ProtoInfo.DCCP == nil {
			return true
		}
	}
	if f.Status&conntrack.StatusSeqAdjust != 0 && !seqAdjSet(f.SeqAdjOrig) && !seqAdjSet(f.SeqAdjReply) {
		return true
	}
	if f.Status&conntrack.StatusExpected != 0 && !tupleFilled(f.TupleMaster) {
		return true
	}
	if known {
		if had&lfLabels != 0 && len(f.Labels) == 0 {
			return true
		}
		if had&lfSynProxy != 0 && f.SynProxy == (conntrack.SynProxy{}) {
			return true
		}
	}
	return false
}

func liveFlags(f *conntrack.Flow) uint8 {
	var v uint8
	if len(f.Labels) != 0 {
		v |= lfLabels
	}
	if f.SynProxy != (conntrack.SynProxy{}) {
		v |= lfSynProxy
	}
	return v
}

func (s *Source) ignoreAddr(a netip.Addr) bool {
	if !s.opts.SyncLoopback && a.IsLoopback() {
		return true
	}
	for _, p := range s.opts.IgnorePrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (s *Source) ignoreTuple(t conntrack.Tuple) bool {
	if s.ignoreAddr(t.IP.SourceAddress) || s.ignoreAddr(t.IP.DestinationAddress) {
		return true
	}
	if len(s.pset) != 0 && hasPorts(t.Proto.Protocol) && t.Proto.Protocol != 47 {
		return s.pset[t.Proto.SourcePort] || s.pset[t.Proto.DestinationPort]
	}
	return false
}

func (s *Source) ignoreFlow(f *conntrack.Flow) bool {
	if f.Status&(conntrack.StatusTemplate|conntrack.StatusUntracked) != 0 {
		return true
	}
	if s.ignoreTuple(f.TupleOrig) || s.ignoreTuple(f.TupleReply) {
		return true
	}
	return s.opts.IgnoreFlow != nil && s.opts.IgnoreFlow(f)
}

func (s *Source) ignoreExpect(e *conntrack.Expect) bool {
	if s.ignoreTuple(e.TupleMaster) || s.ignoreAddr(e.Tuple.IP.SourceAddress) || s.ignoreAddr(e.Tuple.IP.DestinationAddress) {
		return true
	}
	return s.opts.IgnoreExpect != nil && s.opts.IgnoreExpect(e)
}

// get reads one connection from the kernel.
func (s *Source) get(t conntrack.Tuple, zone uint16) (*conntrack.Flow, error) {
	return getFlow(s.q, t, zone)
}

// getFlow reads one connection from the kernel (ENOENT: not there).
func getFlow(c *nlConn, t conntrack.Tuple, zone uint16) (*conntrack.Flow, error) {
	var m msgBuf
	seq := c.nextSeq()
	appendFlowGet(&m, seq, t, zone)
	var got *conntrack.Flow
	err := c.request(m.b, seq, func(m nlMsg) error {
		if ev, err := decodeAs(m, subsysCT); err == nil && ev.Flow != nil {
			got = ev.Flow
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got == nil {
		return nil, unix.ENOENT
	}
	return got, nil
}

// flowHash hashes f's value without its timeout.
func (s *Source) flowHash(f *conntrack.Flow) uint32 {
	c := *f
	c.Timeout = 0
	s.hbuf = EncodeFlow(s.hbuf[:0], c)
	return fnv32(s.hbuf)
}

func (s *Source) expectHash(e *conntrack.Expect) uint32 {
	c := *e
	c.Timeout = 0
	s.hbuf = EncodeExpect(s.hbuf[:0], c)
	return fnv32(s.hbuf)
}

func fnv32(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}

// resync dumps both tables and emits a Put for every entry (all) or for
// every entry not reported as it is now (!all), and a Delete for every
// previously reported entry that is gone. A failed dump is retried.
func (s *Source) resync(ctx context.Context, em *emitter, all bool) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.dumpAll(ctx, em, all); err == nil || ctx.Err() != nil {
			return nil
		}
		s.log.Warn("conntrack dump failed; retrying", "err", err, "attempt", attempt+1)
		// An interrupted dump leaves the kernel mid-dump on this socket;
		// a new one starts clean.
		if q, derr := dialNetfilter(s.nsh, 0); derr == nil {
			_ = s.q.Close()
			s.q = q
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	return fmt.Errorf("ctsync: dump conntrack table: %w", err)
}

func (s *Source) dumpAll(ctx context.Context, em *emitter, all bool) error {
	s.dumps.Add(1)
	start := time.Now()
	live := newKeyMap[liveInfo](s.live.len())
	var m msgBuf
	seq := s.q.nextSeq()
	appendDump(&m, seq, subsysCT)
	err := s.q.dump(m.b, seq, func(m nlMsg) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ev, err := decodeAs(m, subsysCT)
		if err != nil || ev.Flow == nil {
			s.decodeErrors.Add(1)
			return nil
		}
		f := ev.Flow
		if s.ignoreFlow(f) {
			s.filtered.Add(1)
			return nil
		}
		s.kbuf = appendKey(s.kbuf[:0], f.TupleOrig, f.Zone)
		info := liveInfo{flags: liveFlags(f), hash: em.stageFlow(s.kbuf, f), fp: fingerprint(f)}
		live.set(s.kbuf, info)
		if old, ok := s.live.get(s.kbuf); all || !ok || old.hash != info.hash {
			em.commit(TableConntrack)
		} else {
			em.unstage()
		}
		return nil
	})
	if err != nil {
		return err
	}
	gone := 0
	s.live.each(func(k []byte, _ liveInfo) bool {
		if !live.has(k) {
			em.del(TableConntrack, k)
			gone++
		}
		return true
	})
	s.live = live
	s.nLive.Store(int64(live.len()))

	goneExp := 0
	if !s.opts.NoExpectations {
		if goneExp, err = s.dumpExpect(ctx, em, all); err != nil {
			return err
		}
	}
	s.log.Debug("conntrack table dumped", "entries", s.live.len(), "expectations", s.liveExp.len(),
		"gone", gone, "gone_expectations", goneExp, "took", time.Since(start))
	return nil
}

// dumpExpect is dumpAll for the expectation table.
func (s *Source) dumpExpect(ctx context.Context, em *emitter, all bool) (goneExp int, err error) {
	liveExp := newKeyMap[liveInfo](s.liveExp.len())
	var m msgBuf
	seq := s.q.nextSeq()
	appendDump(&m, seq, subsysCTExp)
	err = s.q.dump(m.b, seq, func(m nlMsg) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ev, err := decodeAs(m, subsysCTExp)
		if err != nil || ev.Expect == nil {
			s.decodeErrors.Add(1)
			return nil
		}
		e := ev.Expect
		if s.ignoreExpect(e) {
			s.filtered.Add(1)
			return nil
		}
		s.kbuf = appendKey(s.kbuf[:0], e.Tuple, e.Zone)
		info := liveInfo{hash: em.stageExpect(s.kbuf, e)}
		liveExp.set(s.kbuf, info)
		if old, ok := s.liveExp.get(s.kbuf); all || !ok || old.hash != info.hash {
			em.commit(TableExpect)
			if !ok {
				s.recheckMaster(e)
			}
		} else {
			em.unstage()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.liveExp.each(func(k []byte, _ liveInfo) bool {
		if !liveExp.has(k) {
			em.del(TableExpect, k)
			goneExp++
		}
		return true
	})
	s.liveExp = liveExp
	s.nLiveExp.Store(int64(liveExp.len()))
	return goneExp, nil
}

// decodeAs decodes an answer to a get or dump, whatever message type the
// kernel gave it, as a "new" event of the subsystem.
func decodeAs(m nlMsg, subsys uint16) (conntrack.Event, error) {
	m.typ = subsys<<8 | msgNew
	m.flags &^= nlmFCreate | nlmFExcl
	return decodeEvent(m)
}

// emitter gathers changes into batches for out. Every batch has its own
// arena, so out may keep what it is given.
type emitter struct {
	src    *Source
	out    func([]Change)
	max    int
	batch  []Change
	arena  []byte
	sa, sb int // the staged entry: key at arena[sa:sb], value after
	// hint, when set, is how many changes to expect before the next
	// flush: Run knows how many events it holds, and a batch and arena
	// sized for BatchSize changes, made for a few, cost more to allocate
	// (and clear) than the changes themselves.
	hint int
}

func (e *emitter) grow() {
	if e.arena == nil {
		n := e.max
		if e.hint > 0 && e.hint < n {
			n = e.hint
		}
		e.arena = make([]byte, 0, n*48)
		e.batch = make([]Change, 0, n)
	}
}

// stageFlow encodes key and f at the end of the arena and returns the
// hash of the value without its timeout (what flowHash returns). commit
// or unstage follows before anything else is added.
func (e *emitter) stageFlow(key []byte, f *conntrack.Flow) uint32 {
	e.grow()
	e.sa = len(e.arena)
	e.arena = append(e.arena, key...)
	e.sb = len(e.arena)
	e.arena = EncodeFlow(e.arena, *f)
	return e.src.flowValueHash(e.arena[e.sb:], f)
}

// stageExpect is stageFlow for an expectation.
func (e *emitter) stageExpect(key []byte, x *conntrack.Expect) uint32 {
	e.grow()
	e.sa = len(e.arena)
	e.arena = append(e.arena, key...)
	e.sb = len(e.arena)
	e.arena = EncodeExpect(e.arena, *x)
	return e.src.expectValueHash(e.arena[e.sb:], x)
}

// commit emits the staged entry as a Put in table.
func (e *emitter) commit(table string) {
	a, b, c := e.sa, e.sb, len(e.arena)
	e.batch = append(e.batch, Change{Kind: Put, Table: table, Key: e.arena[a:b:b], Value: e.arena[b:c:c]})
	e.src.puts.Add(1)
	e.full()
}

// unstage drops the staged entry.
func (e *emitter) unstage() {
	e.arena = e.arena[:e.sa]
}

func (e *emitter) del(table string, key []byte) {
	e.grow()
	a := len(e.arena)
	e.arena = append(e.arena, key...)
	b := len(e.arena)
	e.batch = append(e.batch, Change{Kind: Delete, Table: table, Key: e.arena[a:b:b]})
	e.src.deletes.Add(1)
	e.full()
}

func (e *emitter) full() {
	if len(e.batch) >= e.max {
		e.flush()
	}
}

func (e *emitter) flush() {
	if len(e.batch) == 0 {
		return
	}
	b := e.batch
	e.batch, e.arena = nil, nil
	e.src.batches.Add(1)
	e.out(b)
}

// evQueue carries raw event datagrams from the reader to Run.
type evQueue struct {
	mu     sync.Mutex
	items  []evItem
	bytes  int
	max    int
	err    error
	notify chan struct{}
}

// evItem is a datagram (a slice of a chunk, released once handled) or an
// overrun marker.
type evItem struct {
	b       []byte
	c       *chunk
	overrun bool
}

// release gives the item's bytes back to their chunk.
func (it *evItem) release() {
	if it.c != nil {
		it.c.release()
		it.c = nil
	}
}

func newEvQueue(max int) *evQueue {
	return &evQueue{max: max, notify: make(chan struct{}, 1)}
}

func (q *evQueue) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// push queues datagrams, in order; it returns how many times the queue
// was full, each time its content replaced by an overrun marker.
func (q *evQueue) push(items []evItem) (full int) {
	q.mu.Lock()
	for _, it := range items {
		if q.bytes+len(it.b) > q.max {
			full++
			// Run is too slow: drop what waits (the dump will cover it) and
			// mark the loss at this point of the stream.
			for i := range q.items {
				q.items[i].release()
			}
			clear(q.items)
			q.items = append(q.items[:0], evItem{overrun: true})
			q.bytes = 0
		}
		q.items = append(q.items, it)
		q.bytes += len(it.b)
	}
	q.mu.Unlock()
	q.signal()
	return full
}

func (q *evQueue) pushOverrun() {
	q.mu.Lock()
	q.items = append(q.items, evItem{overrun: true})
	q.mu.Unlock()
	q.signal()
}

func (q *evQueue) fail(err error) {
	q.mu.Lock()
	q.err = err
	q.mu.Unlock()
	q.signal()
}

// take returns everything queued, and the reader's error once the queue
// is empty. done is what take returned last time, all of it handled: its
// array is reused.
func (q *evQueue) take(done []evItem) ([]evItem, error) {
	clear(done)
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		if cap(q.items) == 0 {
			q.items = done[:0]
		}
		return nil, q.err
	}
	items := q.items
	q.items = done[:0]
	q.bytes = 0
	return items, nil
}
