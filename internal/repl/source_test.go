package repl

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// TestThrottleBytes: with MaxRateBytes set, the frame bytes sent in any
// one-second window never exceed the rate plus one frame, and the link is
// used: a long copy with changes on top goes at about the rate.
func TestThrottleBytes(t *testing.T) {
	const rate = 200_000
	p := newPair(t, SourceConfig{MaxRateBytes: rate, MaxFrame: 16 << 10, Tables: []string{"conntrack"}}, SinkConfig{})
	key := make([]byte, 24)
	val := make([]byte, 80)
	for i := range 20_000 { // ~2.3 MB: a copy of ~11 s at the rate
		binary.BigEndian.PutUint64(key, uint64(i))
		p.src.Put(p.now, "conntrack", key, val)
	}
	p.connect()
	var log []sentFrame
	end := p.now.Add(15 * time.Second)
	i := 0
	for p.now.Before(end) {
		// Changes keep arriving: 2000 per second, a tenth on one hot key.
		for range 2 {
			i++
			k := uint64(i % 50_000)
			if i%10 == 0 {
				k = 7
			}
			binary.BigEndian.PutUint64(key, k)
			binary.BigEndian.PutUint64(val, uint64(i))
			p.src.Put(p.now, "conntrack", key, val)
		}
		p.a = p.src.Poll(p.now, p.a[:0])
		for _, f := range p.a {
			log = append(log, sentFrame{at: p.now, bytes: len(f)})
			if err := p.sink.Handle(p.now, f); err != nil {
				t.Fatal(err)
			}
		}
		p.b = p.sink.Poll(p.now, p.b[:0])
		for _, f := range p.b {
			if err := p.src.Handle(p.now, f); err != nil {
				t.Fatal(err)
			}
		}
		p.now = p.now.Add(time.Millisecond)
	}
	if err := checkRate(log, p.src.cfg); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, f := range log {
		total += f.bytes
	}
	if got := float64(total) / 15; got < 0.9*rate {
		t.Errorf("sent %.0f B/s, want about %d: the throttle starves the link", got, rate)
	}
	st := p.src.Stats(p.now)
	if st.ThrottledWaits == 0 {
		t.Error("ThrottledWaits = 0")
	}
	t.Logf("%d bytes in 15 s (%.0f B/s, limit %d); queued %d; copy %d/%d", total, float64(total)/15, rate, st.Queued, st.SnapshotSent, st.SnapshotTotal)
	// Lift the load; everything arrives.
	p.advance(30 * time.Second)
	p.checkEqual()
	if p.sink.Status() != SyncInSync {
		t.Fatalf("status %v", p.sink.Status())
	}
}

// TestThrottleEntries: the same for MaxRateEntries.
func TestThrottleEntries(t *testing.T) {
	const rate = 1000
	p := newPair(t, SourceConfig{MaxRateEntries: rate}, SinkConfig{})
	p.connect()
	var log []sentFrame
	var parsed Frame
	for ms := range 5000 {
		for j := range 3 {
			p.src.Put(p.now, "t", fmt.Appendf(nil, "k%d-%d", ms, j), []byte("v"))
		}
		p.a = p.src.Poll(p.now, p.a[:0])
		for _, f := range p.a {
			if err := parseFrame(f, &parsed, func(b []byte) string { return string(b) }); err != nil {
				t.Fatal(err)
			}
			log = append(log, sentFrame{at: p.now, bytes: len(f), entries: len(parsed.Ops)})
			p.sink.Handle(p.now, f)
		}
		p.b = p.sink.Poll(p.now, p.b[:0])
		for _, f := range p.b {
			p.src.Handle(p.now, f)
		}
		p.now = p.now.Add(time.Millisecond)
	}
	if err := checkRate(log, p.src.cfg); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range log {
		n += f.entries
	}
	if n < 4500 || n > 5000+rate/10 {
		t.Errorf("%d entries in 5 s at %d/s", n, rate)
	}
}

// TestHotKeyCoalesces: while the source cannot send, changes to one key
// keep one queue item, not one per change.
func TestHotKeyCoalesces(t *testing.T) {
	p := newPair(t, SourceConfig{}, SinkConfig{})
	p.connect()
	p.advance(time.Second)
	p.disconnect()
	for i := range 100_000 {
		p.src.Put(p.now, "conntrack", []byte("hot"), fmt.Appendf(nil, "v%d", i))
	}
	p.src.Put(p.now, "conntrack", []byte("gone"), []byte("x"))
	p.src.Delete(p.now, "conntrack", []byte("gone"))
	if q := p.src.Stats(p.now).Queued; q != 2 {
		t.Fatalf("queue holds %d items after 100k changes to one key and a put+delete of another", q)
	}
	if m := p.src.queue.memory(); m > 4096 {
		t.Errorf("queue memory %d", m)
	}
	p.connect()
	p.advance(2 * time.Second)
	p.checkEqual()
	st := p.src.Stats(p.now)
	if st.Seq != 1 || p.sink.Stats().Resumes != 1 {
		t.Errorf("want one change sent on resume (the hot key's last value; the put+delete merged away): seq %d, %+v", st.Seq, p.sink.Stats())
	}
}

// TestManyCopies runs more copies than the generation counter has values,
// with changes during each, so the counter wraps.
func TestManyCopies(t *testing.T) {
	p := newPair(t, SourceConfig{MaxFrame: 600, Tables: []string{"a", "b"}}, SinkConfig{})
	for i := range 300 {
		p.src.Put(p.now, "a", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "v%d", i))
	}
	p.connect()
	p.pump()
	for round := range 300 {
		// Ask for a copy, change things while it runs.
		p.src.Handle(p.now, AppendFrame(nil, Frame{Type: FrameResync, Reason: ReasonMismatch}))
		p.a = p.src.Poll(p.now, p.a[:0])
		for _, f := range p.a[:min(len(p.a), 3)] {
			p.sink.Handle(p.now, f)
		}
		rest := len(p.a) - 3
		for i := range 20 {
			k := fmt.Appendf(nil, "k%d", (round*7+i*13)%400)
			if i%3 == 0 {
				p.src.Delete(p.now, "a", k)
			} else {
				p.src.Put(p.now, []string{"a", "b"}[i%2], k, fmt.Appendf(nil, "r%d", round))
			}
		}
		if rest > 0 {
			for _, f := range p.a[3:] {
				p.sink.Handle(p.now, f)
			}
		}
		p.advance(50 * time.Millisecond)
	}
	p.advance(2 * time.Second)
	p.checkEqual()
	if p.src.gen > 60 || p.sink.Status() != SyncInSync {
		t.Fatalf("gen %d status %v", p.src.gen, p.sink.Status())
	}
}

// TestOversizedPut: an entry that cannot fit in a frame is refused.
func TestOversizedPut(t *testing.T) {
	s := NewSource(SourceConfig{MaxFrame: 1024})
	if err := s.Put(t0, "t", make([]byte, 100), make([]byte, 1000)); err == nil {
		t.Fatal("a 1100-byte entry accepted with 1 KiB frames")
	}
	if err := s.Put(t0, "", []byte("k"), nil); err != ErrTableName {
		t.Fatalf("empty table name: %v", err)
	}
	if err := s.Put(t0, "t", make([]byte, 100), make([]byte, 800)); err != nil {
		t.Fatal(err)
	}
}

// TestHotPathAllocs: no allocation per change once the buffers have grown.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector")
	}
	p := newPair(t, SourceConfig{}, SinkConfig{})
	p.connect()
	p.pump()
	key := make([]byte, 24)
	val := make([]byte, 80)
	i := 0
	step := func() {
		for range 64 {
			i++
			binary.BigEndian.PutUint64(key, uint64(i%5000))
			binary.BigEndian.PutUint64(val, uint64(i))
			p.src.Put(p.now, "conntrack", key, val)
			if i%3 == 0 {
				binary.BigEndian.PutUint64(key, uint64((i*7)%5000))
				p.src.Delete(p.now, "conntrack", key)
			}
		}
		p.a = p.src.Poll(p.now, p.a[:0])
		for _, f := range p.a {
			p.sink.Handle(p.now, f)
		}
		p.b = p.sink.Poll(p.now, p.b[:0])
		for _, f := range p.b {
			p.src.Handle(p.now, f)
		}
	}
	for range 2000 { // grow everything
		step()
	}
	if n := testing.AllocsPerRun(200, step); n > 0.5 {
		t.Errorf("%.2f allocations per 64 changes end to end", n)
	}
}
