package repl

// The deterministic simulator of replication: a real Source and a real Sink
// joined by a simulated channel (delay, bandwidth, in order within one
// connection), under a fake clock, with random puts and deletes on several
// tables, disconnections, sink and source restarts, throttling, a channel
// that drops or damages frames (a bug of the layer below, which the engine
// must survive), and a store damaged behind the sink's back. Everything
// random comes from one seed, so a failure replays exactly:
//
//	go test ./internal/repl -run 'TestSimScenarios$' -sim.seed=N -v

import (
	"container/heap"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	flagSimN    = flag.Int("sim.n", 3000, "number of seeded scenarios TestSimScenarios runs")
	flagSimBase = flag.Uint64("sim.base", 1, "first seed; scenarios use base .. base+n-1")
	flagSimSeed = flag.Uint64("sim.seed", 0, "replay this one seed with a full trace")
)

// simFamilies are the scenario kinds, drawn by seed.
var simFamilies = []string{"plain", "throttled", "lossy", "restarts", "corrupt", "small"}

type simOptions struct {
	trace  func(string)
	mutate func(*Sink) // plants a bug in every sink
	family string      // play only this family ("": drawn by seed)
}

type simOutcome struct {
	seed    uint64
	family  string
	events  int
	summary string
	err     error
}

func (o simOutcome) String() string {
	return fmt.Sprintf("seed %d (%s, %d events; %s)", o.seed, o.family, o.events, o.summary)
}

type simParams struct {
	family       string
	tables       []string
	keys         int // keyspace per table
	maxVal       int
	burst        int           // ops per workload burst, at most
	burstEvery   time.Duration // mean time between bursts
	active       time.Duration // the phase with load and faults
	src          SourceConfig
	sink         SinkConfig
	delay        time.Duration // one way, per connection at most
	bandwidth    float64       // bytes per second; 0: unlimited
	disconnects  int
	sinkRestarts int
	srcRestarts  int
	storeDamage  int
	frameDamage  int
	dropPhases   int
}

func randomParams(rng *rand.Rand, family string) simParams {
	pick := func(ds ...time.Duration) time.Duration { return ds[rng.IntN(len(ds))] }
	p := simParams{
		family:     family,
		tables:     simTables[:1+rng.IntN(3)],
		keys:       []int{4, 20, 100, 400}[rng.IntN(4)],
		maxVal:     []int{0, 8, 40, 100}[rng.IntN(4)],
		burst:      1 + rng.IntN(12),
		burstEvery: pick(10*time.Millisecond, 30*time.Millisecond, 100*time.Millisecond),
		active:     time.Duration(1+rng.IntN(3)) * time.Second,
		delay:      pick(0, time.Millisecond, 10*time.Millisecond, 40*time.Millisecond),
		bandwidth:  []float64{0, 1e6, 1e8}[rng.IntN(3)],
	}
	p.src = SourceConfig{
		MaxFrame:        []int{0, 1024, 8192}[rng.IntN(3)],
		Window:          []int{0, 4096, 64 << 10}[rng.IntN(3)],
		RetransmitBytes: []int{0, -1, 2048, 64 << 10}[rng.IntN(4)],
		DigestEvery:     pick(100*time.Millisecond, 300*time.Millisecond, time.Second),
		Tables:          p.tables,
	}
	p.sink = SinkConfig{
		OutOfSyncAfter: pick(200*time.Millisecond, time.Second, 3*time.Second),
		AckEvery:       pick(100*time.Millisecond, time.Second),
		RetryAfter:     pick(500*time.Millisecond, 2*time.Second),
	}
	p.disconnects = rng.IntN(3)
	switch family {
	case "throttled":
		p.src.MaxRateBytes = []int{20_000, 100_000, 1_000_000}[rng.IntN(3)]
		if rng.IntN(2) == 0 {
			p.src.MaxRateEntries = []int{200, 2000, 20000}[rng.IntN(3)]
		}
	case "lossy":
		p.dropPhases = 1 + rng.IntN(3)
	case "restarts":
		p.sinkRestarts = rng.IntN(3)
		p.srcRestarts = rng.IntN(3)
		if p.sinkRestarts+p.srcRestarts == 0 {
			p.sinkRestarts = 1
		}
	case "corrupt":
		p.sink.AuditEvery = pick(200*time.Millisecond, time.Second)
		p.storeDamage = rng.IntN(3)
		p.frameDamage = rng.IntN(3)
		if p.storeDamage+p.frameDamage == 0 {
			p.storeDamage = 1
		}
	case "small":
		p.src.MaxFrame = 512 + rng.IntN(1024)
		p.src.Window = 1 + rng.IntN(3000)
		p.src.RetransmitBytes = []int{-1, 700, 5000}[rng.IntN(3)]
		p.maxVal = min(p.maxVal, 60)
		if rng.IntN(2) == 0 {
			p.src.MaxRateBytes = 5000 + rng.IntN(50_000)
		}
		p.sinkRestarts = rng.IntN(2)
	}
	return p
}

// runSim plays the scenario of seed.
func runSim(seed uint64, o simOptions) simOutcome {
	rng := rand.New(rand.NewPCG(seed, 0x7e91))
	family := simFamilies[rng.IntN(len(simFamilies))]
	if o.family != "" {
		family = o.family
	}
	p := randomParams(rng, family)
	w := &simWorld{p: p, rng: rng, now: t0, opts: o, seed: seed, truth: map[string]map[string]string{}}
	out := simOutcome{seed: seed, family: family}
	err := w.run()
	out.events, out.err = w.n, err
	out.summary = w.summary()
	return out
}

type simWorld struct {
	p    simParams
	rng  *rand.Rand
	now  time.Time
	opts simOptions
	seed uint64

	events simHeap
	order  uint64
	n      int

	src    *Source
	srcRun int
	sink   *Sink
	store  *simStore
	sinkID uint64

	truth map[string]map[string]string

	conn, conns    int // current connection (0: down), connections made
	srcUp, sinkUp  bool
	sinkDownAt     time.Time
	sinkEver       bool // the current sink was connected once
	reconnectAt    time.Time
	txFree         [2]time.Time
	dropP          float64
	damageNext     bool
	wake           [2]time.Time
	model          streamModel
	tainted        bool // the sink's store may differ from what it claims (damage not yet repaired)
	beginsSent     int
	beginDelivered int
	rateLog        []sentFrame
	rateLogs       [][]sentFrame
	buf            [][]byte
	parsed         Frame

	stats struct{ drops, damaged, handleErrs, ops int }
}

type sentFrame struct {
	at      time.Time
	bytes   int
	entries int
}

const (
	evDeliver = iota
	evWake
	evFunc
)

type simEvent struct {
	at      time.Time
	order   uint64
	kind    int
	conn    int
	dir     int // 0: source → sink, 1: sink → source
	frame   []byte
	begin   int  // the number of a SnapshotBegin frame
	damaged bool // the frame was damaged on the way
	node    int
	fn      func()
}

type simHeap []*simEvent

func (h simHeap) Len() int { return len(h) }
func (h simHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].order < h[j].order
}
func (h simHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *simHeap) Push(x any)   { *h = append(*h, x.(*simEvent)) }
func (h *simHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (w *simWorld) push(e *simEvent) {
	w.order++
	e.order = w.order
	heap.Push(&w.events, e)
}

func (w *simWorld) at(t time.Time, fn func()) { w.push(&simEvent{at: t, kind: evFunc, fn: fn}) }

func (w *simWorld) tracef(format string, args ...any) {
	if w.opts.trace != nil {
		w.opts.trace(fmt.Sprintf("%8.3fs ", w.now.Sub(t0).Seconds()) + fmt.Sprintf(format, args...))
	}
}

func (w *simWorld) dur(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(w.rng.Int64N(int64(max) + 1))
}

// run plays the active phase, heals everything and waits for convergence.
func (w *simWorld) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(simFailure); ok {
				err = e.err
				return
			}
			panic(r)
		}
	}()
	w.newSource()
	w.newSink(newSimStore())
	// Some load before the first connection, so the first copy is not empty.
	for range w.rng.IntN(3) * w.p.burst {
		w.op()
	}
	w.at(w.now.Add(w.dur(200*time.Millisecond)), w.linkUp)
	w.at(w.now, w.work)
	end := t0.Add(w.p.active)
	faults := []struct {
		n  int
		fn func()
	}{
		{w.p.disconnects, func() { w.linkDown("disconnect"); w.reconnectLater(w.dur(2 * time.Second)) }},
		{w.p.sinkRestarts, w.restartSink},
		{w.p.srcRestarts, w.restartSource},
		{w.p.storeDamage, w.damageStore},
		{w.p.frameDamage, func() { w.damageNext = true }},
		{w.p.dropPhases, func() {
			w.dropP = []float64{0.01, 0.1, 0.3}[w.rng.IntN(3)]
			w.tracef("channel starts dropping %.0f%% of frames", 100*w.dropP)
			w.at(w.now.Add(w.dur(time.Second)), func() { w.dropP = 0; w.tracef("channel stops dropping") })
		}},
	}
	for _, f := range faults {
		for range f.n {
			w.at(t0.Add(w.dur(w.p.active)), f.fn)
		}
	}
	w.runUntil(end)

	// Heal: no load, no faults, the link up; the sink must converge.
	w.tracef("heal")
	w.dropP, w.damageNext = 0, false
	if w.conn == 0 && w.reconnectAt.Before(w.now) {
		w.at(w.now.Add(150*time.Millisecond), w.linkUp)
	}
	deadline := w.now.Add(90 * time.Second)
	for !w.converged() {
		if w.now.After(deadline) {
			w.fail("no convergence 90 s after healing: %s", w.describe())
		}
		w.runUntil(w.now.Add(50 * time.Millisecond))
	}
	if w.opts.trace != nil {
		w.tracef("converged: %s", w.describe())
	}
	// Quiet and converged: it stays so, at every digest.
	w.runUntil(w.now.Add(3 * w.p.src.withDefaults().DigestEvery))
	if !w.converged() {
		w.fail("converged, then diverged with nothing happening: %s", w.describe())
	}
	w.finalChecks()
	return nil
}

type simFailure struct{ err error }

func (w *simWorld) fail(format string, args ...any) {
	err := fmt.Errorf("%8.3fs: %s", w.now.Sub(t0).Seconds(), fmt.Sprintf(format, args...))
	w.tracef("FAIL: %v", err)
	panic(simFailure{err})
}

func (w *simWorld) runUntil(end time.Time) {
	for w.events.Len() > 0 && !w.events[0].at.After(end) {
		e := heap.Pop(&w.events).(*simEvent)
		w.now = e.at
		w.n++
		if w.n > 3_000_000 {
			w.fail("more than 3M events: livelock? %s", w.describe())
		}
		switch e.kind {
		case evDeliver:
			w.deliver(e)
		case evWake:
			if w.wake[e.node].Equal(e.at) {
				w.wake[e.node] = time.Time{}
				if e.node == 0 {
					w.pollSource()
				} else {
					w.pollSink()
				}
			}
		case evFunc:
			e.fn()
		}
		w.check()
	}
	if w.now.Before(end) {
		w.now = end
	}
}

// ---- nodes ----

func (w *simWorld) newSource() {
	w.srcRun++
	cfg := w.p.src
	cfg.SourceID = w.seed<<8 | uint64(w.srcRun)
	w.src = NewSource(cfg)
	w.model = streamModel{sourceID: cfg.SourceID, tables: map[string]*modelTable{}}
	w.beginsSent, w.beginDelivered = 0, 0
	if len(w.rateLog) > 0 {
		w.rateLogs = append(w.rateLogs, w.rateLog)
	}
	w.rateLog = nil
	// The new run learns the state (as the conntrack adapter dumps the
	// kernel table): every entry of the truth, in a fixed order.
	for _, tb := range sortedKeys(w.truth) {
		for _, k := range sortedKeys(w.truth[tb]) {
			w.mustPut(tb, k, w.truth[tb][k])
		}
	}
	w.tracef("source run %d (id %#x) with %d entries", w.srcRun, cfg.SourceID, w.truthLen())
}

func (w *simWorld) newSink(store *simStore) {
	w.sinkID++
	cfg := w.p.sink
	cfg.SinkID = w.sinkID
	w.store = store
	w.sink = NewSink(cfg, store)
	if w.opts.mutate != nil {
		w.opts.mutate(w.sink)
	}
	w.sinkEver = false
}

func (w *simWorld) restartSink() {
	if w.conn != 0 {
		w.linkDown("sink restart")
	}
	store := newSimStore()
	stale := w.rng.IntN(2) == 0
	if stale {
		store = w.store // the restarted sink finds the old content (as the kernel keeps it)
	}
	w.newSink(store)
	w.tracef("sink restarts (id %d, stale store %v)", w.sinkID, stale)
	w.reconnectLater(w.dur(time.Second))
}

func (w *simWorld) restartSource() {
	if w.conn != 0 {
		w.linkDown("source restart")
	}
	w.newSource()
	w.reconnectLater(w.dur(time.Second))
}

func (w *simWorld) mustPut(tb, k, v string) {
	if err := w.src.Put(w.now, tb, []byte(k), []byte(v)); err != nil {
		w.fail("Put: %v", err)
	}
}

// op is one random change, applied to the truth and the source.
func (w *simWorld) op() {
	tb := w.p.tables[w.rng.IntN(len(w.p.tables))]
	k := "k" + strconv.Itoa(w.rng.IntN(w.p.keys))
	if w.rng.IntN(3) == 0 {
		k += strings.Repeat("x", w.rng.IntN(20))
	}
	w.stats.ops++
	if w.truth[tb] == nil {
		w.truth[tb] = map[string]string{}
	}
	switch r := w.rng.IntN(10); {
	case r < 3:
		delete(w.truth[tb], k)
		if err := w.src.Delete(w.now, tb, []byte(k)); err != nil {
			w.fail("Delete: %v", err)
		}
	default:
		var v string
		if old, ok := w.truth[tb][k]; ok && r == 9 {
			v = old // the same value again
		} else if ok && r == 8 {
			v = strings.Map(func(c rune) rune { return c ^ 1 }, old) // same length
		} else {
			b := make([]byte, w.rng.IntN(w.p.maxVal+1))
			for i := range b {
				b[i] = byte('a' + w.rng.IntN(26))
			}
			v = string(b)
		}
		w.truth[tb][k] = v
		w.mustPut(tb, k, v)
	}
}

func (w *simWorld) work() {
	if !w.now.Before(t0.Add(w.p.active)) {
		return
	}
	for range 1 + w.rng.IntN(w.p.burst) {
		w.op()
	}
	w.pollSource()
	w.at(w.now.Add(1+w.dur(2*w.p.burstEvery)), w.work)
}

// ---- the channel ----

func (w *simWorld) linkUp() {
	if w.conn != 0 {
		return
	}
	w.conns++
	w.conn = w.conns
	w.txFree = [2]time.Time{w.now, w.now}
	w.tracef("link up (connection %d)", w.conn)
	w.src.Connected(w.now)
	w.sink.Connected(w.now)
	w.srcUp, w.sinkUp, w.sinkEver = true, true, true
	w.pollSource()
	w.pollSink()
}

// linkDown cuts the connection; each side notices within 100 ms, sending
// into the void meanwhile.
func (w *simWorld) linkDown(why string) {
	if w.conn == 0 {
		return
	}
	w.tracef("link down (%s)", why)
	w.conn = 0
	src, sink := w.src, w.sink
	w.at(w.now.Add(w.dur(100*time.Millisecond)), func() {
		if w.src == src && w.srcUp {
			w.srcUp = false
			src.Disconnected(w.now)
			w.pollSource()
		}
	})
	w.at(w.now.Add(w.dur(100*time.Millisecond)), func() {
		if w.sink == sink && w.sinkUp {
			w.sinkUp = false
			w.sinkDownAt = w.now
			sink.Disconnected(w.now)
			w.pollSink()
		}
	})
}

// reconnectLater brings the link up after d, once both sides noticed the
// cut (a new connection needs both ends).
func (w *simWorld) reconnectLater(d time.Duration) {
	t := w.now.Add(150*time.Millisecond + d)
	if t.After(w.reconnectAt) {
		w.reconnectAt = t
	}
	w.at(t, func() {
		if !w.now.Before(w.reconnectAt) {
			w.linkUp()
		}
	})
}

func (w *simWorld) send(dir int, frames [][]byte) {
	for _, f := range frames {
		if w.conn == 0 || (dir == 0 && !w.srcUp) || (dir == 1 && !w.sinkUp) {
			continue
		}
		e := &simEvent{kind: evDeliver, conn: w.conn, dir: dir, frame: slices.Clone(f)}
		if dir == 0 && FrameType(f[3]) == FrameSnapshotBegin {
			w.beginsSent++
			e.begin = w.beginsSent
		}
		if w.dropP > 0 && w.rng.Float64() < w.dropP {
			w.stats.drops++
			w.tracef("channel drops a %v frame (%d bytes) to the %s", FrameType(f[3]), len(f), []string{"sink", "source"}[dir])
			continue
		}
		if dir == 0 && w.damageNext {
			w.damageNext = false
			i := w.rng.IntN(len(e.frame))
			e.frame[i] ^= byte(1 + w.rng.IntN(255))
			e.damaged = true
			w.stats.damaged++
			w.tracef("channel damages byte %d of a %v frame", i, FrameType(f[3]))
		}
		start := w.txFree[dir]
		if start.Before(w.now) {
			start = w.now
		}
		if w.p.bandwidth > 0 {
			start = start.Add(time.Duration(float64(len(f)) / w.p.bandwidth * 1e9))
		}
		w.txFree[dir] = start
		e.at = start.Add(w.p.delay)
		w.push(e)
	}
}

func (w *simWorld) deliver(e *simEvent) {
	if e.conn != w.conn {
		return // the connection it was sent on is gone
	}
	if e.dir == 1 {
		if !w.srcUp {
			return
		}
		if err := w.src.Handle(w.now, e.frame); err != nil {
			w.fail("source rejects a sink frame: %v", err)
		}
		w.pollSource()
		return
	}
	if !w.sinkUp {
		return
	}
	before := w.sink.st.snapshots
	err := w.sink.Handle(w.now, e.frame)
	if err != nil {
		w.stats.handleErrs++
		w.tracef("sink rejects a frame: %v", err)
		if !e.damaged && !w.tainted {
			w.fail("sink rejects an undamaged frame: %v", err)
		}
	}
	if e.begin > 0 {
		w.beginDelivered = e.begin
	}
	if e.damaged {
		w.tainted = true // until a clean copy begins
	}
	if w.sink.st.snapshots > before && !e.damaged {
		w.tainted = false // a clean copy starts: the store is reset
	}
	w.pollSink()
}

func (w *simWorld) pollSource() {
	w.buf = w.src.Poll(w.now, w.buf[:0])
	for _, f := range w.buf {
		fr := &w.parsed
		if err := parseFrame(f, fr, func(b []byte) string { return string(b) }); err != nil {
			w.fail("source sent a malformed frame: %v", err)
		}
		if err := w.model.apply(fr); err != nil {
			w.fail("source stream is wrong: %v", err)
		}
		w.rateLog = append(w.rateLog, sentFrame{at: w.now, bytes: len(f), entries: len(fr.Ops)})
		w.tracef("source → %v seq %d, %d ops, %d bytes", fr.Type, fr.Seq, len(fr.Ops), len(f))
	}
	w.send(0, w.buf)
	w.schedule(0, w.src.NextDeadline(w.now))
}

func (w *simWorld) pollSink() {
	w.buf = w.sink.Poll(w.now, w.buf[:0])
	for _, f := range w.buf {
		if fr, err := ParseFrame(f); err != nil {
			w.fail("sink sent a malformed frame: %v", err)
		} else if fr.Type != FrameAck {
			w.tracef("sink → %v full=%v seq %d reason %v status %v", fr.Type, fr.Full, fr.Seq, fr.Reason, fr.Status)
		}
	}
	w.send(1, w.buf)
	w.schedule(1, w.sink.NextDeadline(w.now))
}

func (w *simWorld) schedule(node int, d time.Time) {
	if d.IsZero() {
		w.wake[node] = time.Time{}
		return
	}
	if !d.After(w.now) {
		w.fail("node %d: NextDeadline is now right after Poll (a busy loop): %s", node, w.describe())
	}
	if !w.wake[node].Equal(d) {
		w.wake[node] = d
		w.push(&simEvent{at: d, kind: evWake, node: node})
	}
}

// ---- damage ----

func (w *simWorld) damageStore() {
	tb := w.p.tables[w.rng.IntN(len(w.p.tables))]
	var keys []string
	w.store.MapStore.Range(tb, func(k, _ []byte) bool { keys = append(keys, string(k)); return true })
	w.tainted = true
	switch {
	case len(keys) == 0 || w.rng.IntN(3) == 0:
		w.store.Put(tb, []byte("bogus"), []byte("entry"))
		w.tracef("store damage: bogus entry in %s", tb)
	case w.rng.IntN(2) == 0:
		k := keys[w.rng.IntN(len(keys))]
		w.store.Delete(tb, []byte(k))
		w.tracef("store damage: %s[%q] lost", tb, k)
	default:
		k := keys[w.rng.IntN(len(keys))]
		w.store.Put(tb, []byte(k), []byte("garbled"))
		w.tracef("store damage: %s[%q] garbled", tb, k)
	}
}

// ---- invariants ----

func (w *simWorld) check() {
	k := w.sink
	// Down for longer than the timeout: OUT_OF_SYNC.
	if !w.sinkUp && w.sinkEver && w.now.Sub(w.sinkDownAt) > k.cfg.OutOfSyncAfter && k.Status() != SyncOutOfSync {
		w.fail("sink down since %v (timeout %v) but %v", w.sinkDownAt.Sub(t0), k.cfg.OutOfSyncAfter, k.Status())
	}
	if !w.sinkEver && k.Status() != SyncUnknown {
		w.fail("a sink never connected is %v", k.Status())
	}
	// A sink that claims to hold the stream's state at seq S holds exactly
	// that state, as the source sent it (checked by digest: the simStore
	// keeps the true digest of its content).
	if k.mode == modeStream && !w.tainted && k.sourceID == w.model.sourceID && k.seq == w.model.seq &&
		!w.model.inSnap && w.beginDelivered == w.beginsSent {
		for _, tb := range w.allTables() {
			m := w.model.tables[tb]
			var ms, mc uint64
			if m != nil {
				ms, mc = m.sum, uint64(len(m.kv))
			}
			if ss, sc := w.store.sum[tb], w.store.cnt[tb]; ss != ms || sc != mc {
				w.fail("sink claims source %#x at seq %d, but its table %s holds %d entries (digest %#x), the stream %d (%#x)",
					k.sourceID, k.seq, tb, sc, ss, mc, ms)
			}
		}
	}
}

// allTables is every table a scenario can use.
func (w *simWorld) allTables() []string { return simTables }

var simTables = []string{"conntrack", "expect", "nftset:blocklist"}

func (w *simWorld) converged() bool {
	if w.sink.Status() != SyncInSync || w.conn == 0 {
		return false
	}
	ss := w.src.Stats(w.now)
	if ss.PeerStatus != SyncInSync || ss.Queued != 0 || ss.LagEntries != 0 || ss.Snapshot {
		return false
	}
	return contentEqual(w.store.MapStore.Snapshot(), w.truthContent())
}

func (w *simWorld) finalChecks() {
	if got := sourceContent(w.src); !contentEqual(got, w.truthContent()) {
		w.fail("source content differs from the truth:\n%s", diffContent(w.truthContent(), got))
	}
	// The digests each side keeps match the content.
	for _, ts := range w.src.Stats(w.now).Tables {
		var sum uint64
		n := 0
		w.src.Range(ts.Name, func(k, v []byte) bool { sum ^= entryHash(k, v); n++; return true })
		if sum != ts.Digest || n != ts.Entries {
			w.fail("source table %s: stream digest %#x/%d, content %#x/%d", ts.Name, ts.Digest, ts.Entries, sum, n)
		}
	}
	for _, ts := range w.sink.Stats().Tables {
		if w.store.sum[ts.Name] != ts.Digest || w.store.cnt[ts.Name] != uint64(ts.Entries) {
			w.fail("sink table %s: digest %#x/%d, store %#x/%d", ts.Name, ts.Digest, ts.Entries, w.store.sum[ts.Name], w.store.cnt[ts.Name])
		}
	}
	// Throttling: no second carries more than the rate and one frame.
	if w.p.src.MaxRateBytes > 0 || w.p.src.MaxRateEntries > 0 {
		cfg := w.p.src.withDefaults()
		for _, log := range append(w.rateLogs, w.rateLog) {
			if err := checkRate(log, cfg); err != nil {
				w.fail("%v", err)
			}
		}
	}
}

// checkRate checks every one-second window of a source run's frames.
func checkRate(log []sentFrame, cfg SourceConfig) error {
	j, bytes, entries := 0, 0, 0
	for i := range log {
		for j < len(log) && log[j].at.Before(log[i].at.Add(time.Second)) {
			bytes += log[j].bytes
			entries += log[j].entries
			j++
		}
		if cfg.MaxRateBytes > 0 && bytes > cfg.MaxRateBytes+cfg.MaxFrame {
			return fmt.Errorf("%d bytes sent in the second from %v: rate %d B/s, frame %d", bytes, log[i].at.Sub(t0), cfg.MaxRateBytes, cfg.MaxFrame)
		}
		if cfg.MaxRateEntries > 0 && entries > cfg.MaxRateEntries+max(1, cfg.MaxRateEntries/10) {
			return fmt.Errorf("%d entries sent in the second from %v: rate %d/s", entries, log[i].at.Sub(t0), cfg.MaxRateEntries)
		}
		bytes -= log[i].bytes
		entries -= log[i].entries
	}
	return nil
}

func (w *simWorld) truthContent() map[string]map[string]string {
	out := map[string]map[string]string{}
	for tb, m := range w.truth {
		if len(m) > 0 {
			out[tb] = maps.Clone(m)
		}
	}
	return out
}

func (w *simWorld) truthLen() int {
	n := 0
	for _, m := range w.truth {
		n += len(m)
	}
	return n
}

func contentEqual(a, b map[string]map[string]string) bool {
	return maps.EqualFunc(a, b, func(x, y map[string]string) bool { return maps.Equal(x, y) })
}

func (w *simWorld) describe() string {
	ss := w.src.Stats(w.now)
	ks := w.sink.Stats()
	return fmt.Sprintf("link %d; source seq %d acked %d queued %d snapshot %v (%d/%d) peer %v lag %dB throttled %v; "+
		"sink %v valid %v seq %d snapshots %d gaps %d mismatches %d audits %d retries %d; store==truth %v",
		w.conn, ss.Seq, ss.AckedSeq, ss.Queued, ss.Snapshot, ss.SnapshotSent, ss.SnapshotTotal, ss.PeerStatus, ss.LagBytes, ss.Throttled,
		ks.Status, ks.Valid, ks.Seq, ks.Snapshots, ks.Gaps, ks.Mismatches, ks.AuditMismatches, ks.Retries,
		contentEqual(w.store.MapStore.Snapshot(), w.truthContent()))
}

func (w *simWorld) summary() string {
	ks := w.sink.Stats()
	return fmt.Sprintf("%d ops, %d entries, %d connections, sink copies %d resumes %d gaps %d mismatches %d audits %d, %d drops, %d damaged",
		w.stats.ops, w.truthLen(), w.conns, ks.Snapshots, ks.Resumes, ks.Gaps, ks.Mismatches, ks.AuditMismatches, w.stats.drops, w.stats.damaged)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := slices.Collect(maps.Keys(m))
	sort.Strings(ks)
	return ks
}

// ---- the reference model of the stream ----

// streamModel is what a perfect sink would hold after applying every frame
// the source sent, in order; it checks the source while doing so: old
// hashes, digests, gaps, keys copied twice.
type streamModel struct {
	sourceID uint64
	seq      uint64
	inSnap   bool
	tables   map[string]*modelTable
}

type modelTable struct {
	kv  map[string]string
	sum uint64
}

func (m *streamModel) table(name string) *modelTable {
	t := m.tables[name]
	if t == nil {
		t = &modelTable{kv: map[string]string{}}
		m.tables[name] = t
	}
	return t
}

func (t *modelTable) put(k, v string) {
	if old, ok := t.kv[k]; ok {
		t.sum ^= entryHash([]byte(k), []byte(old))
	}
	t.kv[k] = v
	t.sum ^= entryHash([]byte(k), []byte(v))
}

func (m *streamModel) apply(f *Frame) error {
	switch f.Type {
	case FrameSnapshotBegin:
		if f.SourceID != m.sourceID || f.Seq != m.seq {
			return fmt.Errorf("SnapshotBegin of %#x at seq %d, the stream is %#x at %d", f.SourceID, f.Seq, m.sourceID, m.seq)
		}
		m.tables = map[string]*modelTable{}
		m.inSnap = true
	case FrameEntries:
		if !m.inSnap {
			return fmt.Errorf("Entries outside a copy")
		}
		for _, op := range f.Ops {
			t := m.table(f.Tables[op.Table])
			if _, ok := t.kv[string(op.Key)]; ok {
				return fmt.Errorf("copy sends %s[%q] that the sink already holds", f.Tables[op.Table], op.Key)
			}
			t.put(string(op.Key), string(op.Value))
		}
	case FrameChanges:
		if f.SourceID != m.sourceID {
			return fmt.Errorf("Changes of %#x in the stream of %#x", f.SourceID, m.sourceID)
		}
		if f.Seq > m.seq+1 {
			return fmt.Errorf("Changes from seq %d after %d: the source left a gap", f.Seq, m.seq)
		}
		for i, op := range f.Ops {
			if f.Seq+uint64(i) <= m.seq {
				continue
			}
			t := m.table(f.Tables[op.Table])
			var want uint64
			if old, ok := t.kv[string(op.Key)]; ok {
				want = entryHash(op.Key, []byte(old))
			}
			if op.OldHash != want {
				return fmt.Errorf("seq %d %v %s[%q]: old hash %#x, the sink holds %#x", f.Seq+uint64(i), op.Kind, f.Tables[op.Table], op.Key, op.OldHash, want)
			}
			if op.Kind == OpPut {
				t.put(string(op.Key), string(op.Value))
			} else {
				if want == 0 {
					return fmt.Errorf("seq %d deletes %s[%q], which the sink does not hold", f.Seq+uint64(i), f.Tables[op.Table], op.Key)
				}
				t.sum ^= want
				delete(t.kv, string(op.Key))
			}
		}
		m.seq = max(m.seq, f.Seq+uint64(len(f.Ops))-1)
	case FrameSnapshotEnd, FrameDigest:
		if f.Type == FrameSnapshotEnd && !m.inSnap {
			return fmt.Errorf("SnapshotEnd outside a copy")
		}
		if f.Type == FrameDigest && m.inSnap != f.Copying {
			return fmt.Errorf("Digest copying=%v, but a copy in progress is %v", f.Copying, m.inSnap)
		}
		if f.SourceID != m.sourceID || f.Seq != m.seq {
			return fmt.Errorf("%v of %#x at seq %d, the stream is %#x at %d", f.Type, f.SourceID, f.Seq, m.sourceID, m.seq)
		}
		if f.Copying {
			if len(f.Digests) > 0 {
				return fmt.Errorf("Digest of a copy in progress carries tables")
			}
			return nil
		}
		listed := map[string]bool{}
		for _, d := range f.Digests {
			listed[d.Table] = true
			t := m.table(d.Table)
			if d.Sum != t.sum || d.Entries != uint64(len(t.kv)) {
				return fmt.Errorf("%v: table %s digest %#x/%d, the stream holds %#x/%d", f.Type, d.Table, d.Sum, d.Entries, t.sum, len(t.kv))
			}
		}
		for name, t := range m.tables {
			if !listed[name] && len(t.kv) > 0 {
				return fmt.Errorf("%v leaves out table %s", f.Type, name)
			}
		}
		m.inSnap = false
	}
	return nil
}

// simStore is a MapStore that also keeps the true digest of its content,
// so the simulator checks a sink's claims in constant time.
type simStore struct {
	*MapStore
	sum map[string]uint64
	cnt map[string]uint64
}

func newSimStore() *simStore {
	return &simStore{MapStore: NewMapStore(), sum: map[string]uint64{}, cnt: map[string]uint64{}}
}

func (s *simStore) Put(tb string, k, v []byte) {
	if old, ok := s.MapStore.Get(tb, k); ok {
		s.sum[tb] ^= entryHash(k, old)
	} else {
		s.cnt[tb]++
	}
	s.sum[tb] ^= entryHash(k, v)
	s.MapStore.Put(tb, k, v)
}

func (s *simStore) Delete(tb string, k []byte) {
	if old, ok := s.MapStore.Get(tb, k); ok {
		s.sum[tb] ^= entryHash(k, old)
		s.cnt[tb]--
	}
	s.MapStore.Delete(tb, k)
}

func (s *simStore) Reset(tb string) {
	s.sum[tb], s.cnt[tb] = 0, 0
	s.MapStore.Reset(tb)
}

// ---- tests ----

// TestSimScenarios runs thousands of seeded scenarios against the real
// source and sink. A failure prints its seed and the command that replays
// it with a trace.
func TestSimScenarios(t *testing.T) {
	if *flagSimSeed != 0 {
		o := runSim(*flagSimSeed, simOptions{trace: func(l string) { t.Log(l) }})
		t.Logf("%s", o)
		if o.err != nil {
			t.Fatalf("violation: %v", o.err)
		}
		return
	}
	n := *flagSimN
	if raceEnabled && !flagSet("sim.n") {
		n = 2000 // the race detector makes each scenario several times slower
	}
	if testing.Short() {
		n = 300
	}
	start := time.Now()
	outcomes := runSims(*flagSimBase, n, simOptions{})
	families := map[string]int{}
	failed, events := 0, 0
	for _, o := range outcomes {
		families[o.family]++
		events += o.events
		if o.err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("%s\n  violation: %v\n  replay: go test ./internal/repl -run 'TestSimScenarios$' -sim.seed=%d -v", o, o.err, o.seed)
			}
		}
	}
	t.Logf("repl sim: %d scenarios, seeds %d..%d, %v, %d events; families %v; %d failed",
		n, *flagSimBase, *flagSimBase+uint64(n)-1, time.Since(start).Round(time.Millisecond), events, families, failed)
	fmt.Printf("repl sim: %d scenarios, seeds %d..%d, %d failed\n", n, *flagSimBase, *flagSimBase+uint64(n)-1, failed)
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func runSims(base uint64, n int, o simOptions) []simOutcome {
	outcomes := make([]simOutcome, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				outcomes[i] = runSim(base+uint64(i), o)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return outcomes
}

// TestSimIsReproducible: the same seed plays the same scenario, event for
// event.
func TestSimIsReproducible(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		var a, b []string
		runSim(seed, simOptions{trace: func(l string) { a = append(a, l) }})
		runSim(seed, simOptions{trace: func(l string) { b = append(b, l) }})
		if len(a) == 0 || !slices.Equal(a, b) {
			t.Fatalf("seed %d: two runs differ (%d and %d trace lines)", seed, len(a), len(b))
		}
	}
}

// TestSimCatchesIgnoredGaps plants a broken rule — a sink that applies a
// Changes frame that does not follow the last one — and checks that the
// simulator catches it. A simulator that cannot fail proves nothing.
func TestSimCatchesIgnoredGaps(t *testing.T) {
	// Gaps need frames lost below the engine: the lossy family.
	outcomes := runSims(1, 200, simOptions{family: "lossy", mutate: func(k *Sink) { k.ignoreGaps = true }})
	caught := 0
	for _, o := range outcomes {
		if o.err != nil {
			caught++
			if caught == 1 {
				t.Logf("caught by %s: %v", o, o.err)
			}
		}
	}
	if caught == 0 {
		t.Fatal("the simulator did not notice a sink that ignores gaps")
	}
	t.Logf("the sink that ignores gaps failed %d of %d scenarios", caught, len(outcomes))
}
