package repl

import (
	"encoding/binary"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The benchmarks use conntrack-sized entries: 24-byte keys, 80-byte
// values.
const (
	benchKey = 24
	benchVal = 80
	million  = 1_000_000
)

func benchEntry(key, val []byte, i, gen uint64) {
	binary.BigEndian.PutUint64(key, i)
	binary.BigEndian.PutUint64(key[8:], i*0x9e3779b97f4a7c15)
	binary.BigEndian.PutUint64(val, gen)
	binary.BigEndian.PutUint64(val[72:], i)
}

// streamingSource returns a source whose (empty) copy is done: what it is
// told next goes out as Changes frames.
func streamingSource(b testing.TB, cfg SourceConfig) *Source {
	if cfg.SourceID == 0 {
		cfg.SourceID = 1
	}
	s := NewSource(cfg)
	s.Connected(t0)
	if err := s.Handle(t0, AppendFrame(nil, Frame{Type: FrameHello, SinkID: 2, Full: true})); err != nil {
		b.Fatal(err)
	}
	s.Poll(t0, nil) // SnapshotBegin, SnapshotEnd
	if s.snap.active {
		b.Fatal("copy not done")
	}
	return s
}

// ackAll acknowledges everything the source sent, as a sink would.
func ackAll(s *Source, buf []byte) []byte {
	buf = AppendFrame(buf[:0], Frame{Type: FrameAck, Seq: s.seq, Received: s.sent})
	s.Handle(t0, buf)
	return buf
}

// BenchmarkSourcePutPoll: one op is one Put of a conntrack-sized entry
// (new keys for the first million, then updates of them), with a Poll
// every 64 Puts that encodes the Changes frames, and an Ack after it.
func BenchmarkSourcePutPoll(b *testing.B) {
	s := streamingSource(b, SourceConfig{})
	key, val := make([]byte, benchKey), make([]byte, benchVal)
	var out [][]byte
	var ack []byte
	var i uint64
	bytes := 0
	b.ReportAllocs()
	b.SetBytes(benchKey + benchVal)
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		benchEntry(key, val, i%million, i/million)
		s.Put(t0, "conntrack", key, val)
		i++
		if i%64 == 0 {
			out = s.Poll(t0, out[:0])
			for _, f := range out {
				bytes += len(f)
			}
			ack = ackAll(s, ack)
		}
	}
	b.ReportMetric(float64(bytes)/float64(i), "frame-B/op")
}

// changesStream records the frames of a source told n Puts of new keys,
// after an empty copy: SnapshotBegin and SnapshotEnd first.
func changesStream(b testing.TB, n int) [][]byte {
	s := NewSource(SourceConfig{SourceID: 1})
	s.Connected(t0)
	s.Handle(t0, AppendFrame(nil, Frame{Type: FrameHello, SinkID: 2, Full: true}))
	var frames [][]byte
	for _, f := range s.Poll(t0, nil) {
		frames = append(frames, slices.Clone(f))
	}
	key, val := make([]byte, benchKey), make([]byte, benchVal)
	var out [][]byte
	var ack []byte
	for i := range n {
		benchEntry(key, val, uint64(i), 0)
		s.Put(t0, "conntrack", key, val)
		if i%256 == 255 || i == n-1 {
			out = s.Poll(t0, out[:0])
			for _, f := range out {
				frames = append(frames, slices.Clone(f))
			}
			ack = ackAll(s, ack)
		}
	}
	return frames
}

var (
	benchStreamOnce sync.Once
	benchStream     [][]byte
	benchStreamOps  []int
	benchSourceOnce sync.Once
	benchSource     *Source
)

// BenchmarkSinkHandle: one op is one change (a Put of a new key) decoded
// from a Changes frame and applied to a MapStore; the store grows to a
// million entries, then a new sink starts over.
func BenchmarkSinkHandle(b *testing.B) {
	benchStreamOnce.Do(func() {
		benchStream = changesStream(b, million)
		benchStreamOps = make([]int, len(benchStream))
		for i, f := range benchStream {
			if fr, _ := ParseFrame(f); fr.Type == FrameChanges {
				benchStreamOps[i] = len(fr.Ops)
			}
		}
	})
	frames, ops := benchStream, benchStreamOps
	var k *Sink
	next := len(frames)
	newSink := func() {
		k = NewSink(SinkConfig{}, NewMapStore())
		k.Connected(t0)
		k.Poll(t0, nil)
		k.Handle(t0, frames[0]) // SnapshotBegin
		k.Handle(t0, frames[1]) // SnapshotEnd
		next = 2
	}
	b.ReportAllocs()
	b.SetBytes(benchKey + benchVal)
	var out [][]byte
	b.ResetTimer()
	c0 := cpuTime()
	for done := 0; done < b.N; {
		if next == len(frames) {
			b.StopTimer()
			p0 := cpuTime()
			k = nil
			runtime.GC()
			newSink()
			c0 += cpuTime() - p0 // not the engine's
			b.StartTimer()
		}
		if err := k.Handle(t0, frames[next]); err != nil {
			b.Fatal(err)
		}
		out = k.Poll(t0, out[:0])
		done += ops[next]
		next++
	}
	reportCPU(b, c0)
	if k.Status() != SyncInSync || k.Stats().Gaps != 0 {
		b.Fatalf("sink %+v", k.Stats())
	}
}

// millionSource returns a source holding a million conntrack-sized
// entries, never connected.
func millionSource(b testing.TB, n int) *Source {
	s := NewSource(SourceConfig{SourceID: 9, Tables: []string{"conntrack"}})
	key, val := make([]byte, benchKey), make([]byte, benchVal)
	for i := range n {
		benchEntry(key, val, uint64(i), 0)
		s.Put(t0, "conntrack", key, val)
	}
	return s
}

// BenchmarkSnapshot1M: one op is a full copy of a million entries from a
// source to a new sink and MapStore, frames handed over in memory, acks
// flowing back, until the sink is IN_SYNC.
func BenchmarkSnapshot1M(b *testing.B) {
	benchSourceOnce.Do(func() { benchSource = millionSource(b, million) })
	s := benchSource
	b.ReportAllocs()
	b.SetBytes(million * (benchKey + benchVal))
	var out, back [][]byte
	c0 := cpuTime()
	defer func() { reportCPU(b, c0) }()
	for b.Loop() {
		b.StopTimer()
		p0 := cpuTime()
		runtime.GC()
		c0 += cpuTime() - p0
		b.StartTimer()
		k := NewSink(SinkConfig{SinkID: 3}, NewMapStore())
		s.Connected(t0)
		k.Connected(t0)
		for k.Status() != SyncInSync {
			back = k.Poll(t0, back[:0])
			for _, f := range back {
				s.Handle(t0, f)
			}
			out = s.Poll(t0, out[:0])
			if len(out) == 0 && len(back) == 0 {
				b.Fatalf("stalled: %+v", k.Stats())
			}
			for _, f := range out {
				if err := k.Handle(t0, f); err != nil {
					b.Fatal(err)
				}
			}
		}
		if n := k.Stats().Entries; n != million {
			b.Fatalf("sink holds %d entries", n)
		}
	}
	b.ReportMetric(float64(million)/(b.Elapsed().Seconds()/float64(b.N)), "entries/s")
}

// cpuTime is the CPU time the process used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per op since c0 (the machine
// may be shared: wall time per op then overstates the engine's cost).
// Time the benchmark spent stopped is included, so it is for benchmarks
// whose setup is outside the measured run.
func reportCPU(b *testing.B, c0 time.Duration) {
	if b.N > 0 {
		b.ReportMetric(float64((cpuTime()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// heapAfterGC is the live heap.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkMapStoreMemory reports what a MapStore (the standby's copy)
// costs per entry at a million conntrack-sized entries, measured by the
// live heap (runtime.MemStats), and the time per Put.
func BenchmarkMapStoreMemory(b *testing.B) {
	key, val := make([]byte, benchKey), make([]byte, benchVal)
	var perEntry float64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		before := heapAfterGC()
		b.StartTimer()
		m := NewMapStore()
		for i := range million {
			benchEntry(key, val, uint64(i), 0)
			m.Put("conntrack", key, val)
		}
		b.StopTimer()
		perEntry = float64(heapAfterGC()-before) / million
		runtime.KeepAlive(m)
		b.StartTimer()
	}
	b.ReportMetric(perEntry, "heap-B/entry")
	b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N)/million, "ns/put")
}

// BenchmarkSourceMemory reports what the source's tables cost per entry at
// a million conntrack-sized entries.
func BenchmarkSourceMemory(b *testing.B) {
	var perEntry float64
	for b.Loop() {
		b.StopTimer()
		before := heapAfterGC()
		b.StartTimer()
		s := millionSource(b, million)
		b.StopTimer()
		perEntry = float64(heapAfterGC()-before) / million
		runtime.KeepAlive(s)
		b.StartTimer()
	}
	b.ReportMetric(perEntry, "heap-B/entry")
}

// BenchmarkLag plays a million conntrack creations arriving at 300,000 per
// second (wall clock) through a source and a sink, each in its own event
// loop (goroutine) as on two units, frames copied between them as a
// channel would. It reports the delay from a change's arrival at the
// source to its application on the sink: the engine's share of the
// replication lag (no network, no syscalls). Tables are sized up front
// (SizeHints, MapStore.Reserve), as the daemon does from nf_conntrack_max.
func BenchmarkLag(b *testing.B) {
	const rate = 300_000
	const n = million
	var p50, p99, pmax time.Duration
	var cpu time.Duration
	for b.Loop() {
		c0 := cpuTime()
		p50, p99, pmax = runLag(b, rate, n)
		cpu = cpuTime() - c0
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/change")
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(pmax.Microseconds()), "max-µs")
}

func runLag(b *testing.B, rate float64, n int) (p50, p99, pmax time.Duration) {
	s := NewSource(SourceConfig{SourceID: 1, Tables: []string{"conntrack"}, SizeHints: map[string]int{"conntrack": n}})
	store := NewMapStore()
	store.Reserve("conntrack", n)
	k := NewSink(SinkConfig{}, store)
	toSink := make(chan []byte, 4096)
	toSource := make(chan []byte, 4096)
	lags := make([]time.Duration, 0, n)
	var start time.Time
	arrival := func(i int) time.Time { return start.Add(time.Duration(float64(i) / rate * 1e9)) }
	started := make(chan struct{})

	// The standby's loop.
	done := make(chan struct{})
	go func() {
		defer close(done)
		var parsed Frame
		var back [][]byte
		k.Connected(t0)
		for _, f := range k.Poll(t0, nil) {
			toSource <- slices.Clone(f)
		}
		for f := range toSink {
			now := time.Now()
			if err := k.Handle(now, f); err != nil {
				panic(err)
			}
			if parseFrame(f, &parsed, func(p []byte) string { return string(p) }) == nil && parsed.Type == FrameChanges {
				<-started
				for j := range parsed.Ops {
					lags = append(lags, now.Sub(arrival(int(parsed.Seq)+j-1)))
				}
			}
			back = k.Poll(now, back[:0])
			for _, a := range back {
				toSource <- slices.Clone(a)
			}
			if len(lags) == n {
				return
			}
		}
	}()

	// The active's loop.
	key, val := make([]byte, benchKey), make([]byte, benchVal)
	var out [][]byte
	s.Connected(t0)
	handshake := true
	put := 0
	for {
		select {
		case <-done:
			close(toSink)
			slices.Sort(lags)
			return lags[n/2], lags[n*99/100], lags[n-1]
		case a := <-toSource:
			s.Handle(time.Now(), a)
		default:
		}
		now := time.Now()
		if !handshake {
			for put < n && !arrival(put).After(now) {
				benchEntry(key, val, uint64(put), 0)
				s.Put(now, "conntrack", key, val)
				put++
			}
		}
		out = s.Poll(now, out[:0])
		for _, f := range out {
			toSink <- slices.Clone(f)
		}
		if handshake && s.hello && !s.snap.active {
			handshake = false // the (empty) copy is out: start the clock
			start = time.Now()
			close(started)
		}
		if len(out) == 0 && put < n && !handshake {
			if d := arrival(put).Sub(time.Now()); d > 0 {
				time.Sleep(min(d, 200*time.Microsecond))
			}
		}
	}
}
