package repl

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

func fillPair(p *pair, n int) {
	for i := range n {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "key-%04d", i), fmt.Appendf(nil, "value-%d", i))
	}
}

// TestStatusLifecycle: UNKNOWN before the first connection, OUT_OF_SYNC
// during the copy, IN_SYNC after it, still IN_SYNC during a short cut,
// OUT_OF_SYNC once the cut outlasts the timeout, IN_SYNC again after a
// resume; the source knows the peer's status.
func TestStatusLifecycle(t *testing.T) {
	p := newPair(t, SourceConfig{MaxFrame: 1024, Window: 2048}, SinkConfig{OutOfSyncAfter: 2 * time.Second})
	fillPair(p, 500)
	if s := p.sink.Status(); s != SyncUnknown {
		t.Fatalf("before connecting: %v", s)
	}
	p.connect()
	// One round trip: Hello, then the beginning of the copy.
	p.b = p.sink.Poll(p.now, p.b[:0])
	for _, f := range p.b {
		p.src.Handle(p.now, f)
	}
	p.a = p.src.Poll(p.now, p.a[:0])
	for _, f := range p.a {
		p.sink.Handle(p.now, f)
	}
	if st := p.sink.Stats(); st.Status != SyncOutOfSync || !st.Snapshot {
		t.Fatalf("during the copy: %+v", st)
	}
	p.advance(time.Second)
	if s := p.sink.Status(); s != SyncInSync {
		t.Fatalf("after the copy: %v", s)
	}
	if s := p.src.Stats(p.now).PeerStatus; s != SyncInSync {
		t.Fatalf("source's view: %v", s)
	}
	p.disconnect()
	p.advance(1500 * time.Millisecond)
	if s := p.sink.Status(); s != SyncInSync {
		t.Fatalf("1.5 s into a cut (timeout 2 s): %v", s)
	}
	if d := p.sink.NextDeadline(p.now); !d.Equal(p.now.Add(500 * time.Millisecond)) {
		t.Fatalf("NextDeadline %v, want the timeout in 500 ms", d.Sub(p.now))
	}
	p.advance(time.Second)
	if s := p.sink.Status(); s != SyncOutOfSync {
		t.Fatalf("2.5 s into a cut: %v", s)
	}
	p.src.Put(p.now, "conntrack", []byte("new"), []byte("entry"))
	p.connect()
	p.advance(time.Second)
	if st := p.sink.Stats(); st.Status != SyncInSync || st.Resumes != 1 || st.Snapshots != 1 {
		t.Fatalf("after the reconnection: %+v", st)
	}
	p.checkEqual()
}

// TestRestartedSinkGetsEverything: a new Sink asks for a full copy, and
// the copy clears what a reused store held.
func TestRestartedSinkGetsEverything(t *testing.T) {
	p := newPair(t, SourceConfig{Tables: []string{"conntrack", "expect"}}, SinkConfig{})
	fillPair(p, 300)
	p.connect()
	p.advance(time.Second)
	p.disconnect()
	p.store.Put("expect", []byte("stale"), []byte("left over"))
	p.sink = NewSink(SinkConfig{SinkID: 2}, p.store) // restarted, same store
	p.src.Delete(p.now, "conntrack", []byte("key-0001"))
	p.connect()
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Snapshots != 1 || st.Status != SyncInSync {
		t.Fatalf("%+v", st)
	}
	if st := p.src.Stats(p.now); st.Snapshots != 2 || st.Resumes != 0 {
		t.Fatalf("source: %+v", st)
	}
}

// TestNewSourceIDGetsACopy: a restarted source (new SourceID) sends a full
// copy even to a sink that holds state.
func TestNewSourceIDGetsACopy(t *testing.T) {
	p := newPair(t, SourceConfig{SourceID: 1}, SinkConfig{})
	fillPair(p, 100)
	p.connect()
	p.advance(time.Second)
	p.disconnect()
	p.src = NewSource(SourceConfig{SourceID: 2})
	fillPair(p, 50) // the new run knows fewer entries
	p.connect()
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Snapshots != 2 || st.SourceID != 2 || st.Status != SyncInSync {
		t.Fatalf("%+v", st)
	}
}

// TestResumeWindowTooOld: a sink whose last seq is no longer in the
// retransmit window gets a full copy.
func TestResumeWindowTooOld(t *testing.T) {
	p := newPair(t, SourceConfig{RetransmitBytes: 2000, MaxFrame: 600}, SinkConfig{})
	fillPair(p, 100)
	p.connect()
	p.advance(time.Second)
	// The sink misses the end of a burst: cut the link right after the
	// source sent it.
	for i := range 200 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "key-%04d", i), []byte("burst"))
	}
	p.src.Poll(p.now, nil) // sent into the void
	p.disconnect()
	p.connect()
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Snapshots != 2 {
		t.Fatalf("want a second copy: %+v", st)
	}
}

// TestMalformedFrame: a malformed frame is an error, leaves the store as it
// was, and makes the sink ask for a full copy, which repairs everything.
func TestMalformedFrame(t *testing.T) {
	p := newPair(t, SourceConfig{}, SinkConfig{})
	fillPair(p, 50)
	p.connect()
	p.advance(time.Second)
	p.src.Put(p.now, "conntrack", []byte("key-0001"), []byte("changed"))
	p.a = p.src.Poll(p.now, p.a[:0])
	if len(p.a) != 1 {
		t.Fatalf("%d frames", len(p.a))
	}
	bad := bytes.Clone(p.a[0])
	bad = bad[:len(bad)-3] // truncated
	before := p.store.Snapshot()
	if err := p.sink.Handle(p.now, bad); err == nil {
		t.Fatal("truncated frame accepted")
	}
	if !contentEqual(before, p.store.Snapshot()) {
		t.Fatal("the rejected frame changed the store")
	}
	if st := p.sink.Stats(); st.Status != SyncOutOfSync || st.Malformed != 1 {
		t.Fatalf("%+v", st)
	}
	b := p.sink.Poll(p.now, nil)
	if fr, _ := ParseFrame(b[0]); fr.Type != FrameResync || fr.Reason != ReasonMalformed {
		t.Fatalf("first frame after a malformed one: %+v", fr)
	}
	for _, f := range b {
		p.src.Handle(p.now, f)
	}
	p.advance(time.Second)
	p.checkEqual()
	if p.sink.Status() != SyncInSync {
		t.Fatal(p.sink.Stats())
	}
}

// TestDamagedValueRepaired: a change whose value was altered on the way
// (the frame still parses) is caught by the next digest and repaired by a
// full copy the sink asks for on its own.
func TestDamagedValueRepaired(t *testing.T) {
	p := newPair(t, SourceConfig{DigestEvery: 100 * time.Millisecond}, SinkConfig{})
	fillPair(p, 50)
	p.connect()
	p.advance(time.Second)
	p.src.Put(p.now, "conntrack", []byte("key-0001"), []byte("the true value"))
	p.a = p.src.Poll(p.now, p.a[:0])
	f := bytes.Clone(p.a[0])
	i := bytes.Index(f, []byte("true"))
	copy(f[i:], "fake")
	if err := p.sink.Handle(p.now, f); err != nil {
		t.Fatal(err)
	}
	if v, _ := p.store.Get("conntrack", []byte("key-0001")); string(v) != "the fake value" {
		t.Fatalf("store holds %q", v)
	}
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Mismatches != 1 || st.Snapshots != 2 || st.Status != SyncInSync {
		t.Fatalf("%+v", st)
	}
}

// TestCorruptedStoreRepaired: a store changed behind the sink's back is
// caught by the audit at a digest and repaired by a full copy.
func TestCorruptedStoreRepaired(t *testing.T) {
	p := newPair(t, SourceConfig{DigestEvery: 100 * time.Millisecond}, SinkConfig{AuditEvery: 300 * time.Millisecond})
	fillPair(p, 200)
	p.connect()
	p.advance(time.Second)
	p.store.Delete("conntrack", []byte("key-0007"))
	p.store.Put("conntrack", []byte("key-0008"), []byte("garbled"))
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.AuditMismatches != 1 || st.Snapshots != 2 || st.Status != SyncInSync {
		t.Fatalf("%+v", st)
	}
	// Without audits the sink's own digest cannot see it (it follows what
	// the sink applied): that is what AuditEvery is for.
	q := newPair(t, SourceConfig{DigestEvery: 100 * time.Millisecond}, SinkConfig{})
	fillPair(q, 200)
	q.connect()
	q.advance(time.Second)
	q.store.Delete("conntrack", []byte("key-0007"))
	q.advance(time.Second)
	if st := q.sink.Stats(); st.Snapshots != 1 || st.Status != SyncInSync {
		t.Fatalf("without audits: %+v", st)
	}
}

// TestGapAsksResync: a Changes frame that skips sequence numbers makes
// the sink ask for a full copy and ignore the stream until it begins.
func TestGapAsksResync(t *testing.T) {
	p := newPair(t, SourceConfig{}, SinkConfig{})
	fillPair(p, 10)
	p.connect()
	p.advance(time.Second)
	p.src.Put(p.now, "conntrack", []byte("a"), []byte("1"))
	p.src.Poll(p.now, nil) // lost
	p.src.Put(p.now, "conntrack", []byte("b"), []byte("2"))
	p.a = p.src.Poll(p.now, p.a[:0])
	for _, f := range p.a {
		if err := p.sink.Handle(p.now, f); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := p.store.Get("conntrack", []byte("b")); ok {
		t.Fatal("a change after a gap was applied")
	}
	st := p.sink.Stats()
	if st.Gaps != 1 || st.Status != SyncOutOfSync || st.Valid {
		t.Fatalf("%+v", st)
	}
	b := p.sink.Poll(p.now, nil)
	if fr, _ := ParseFrame(b[0]); fr.Type != FrameResync || fr.Reason != ReasonGap {
		t.Fatalf("%+v", fr)
	}
	for _, f := range b {
		p.src.Handle(p.now, f)
	}
	p.advance(time.Second)
	p.checkEqual()
}

// TestChangesDuringCopy: a copy sent in many small frames while every key
// keeps changing, deletes and re-inserts included, ends with exactly the
// source's state.
func TestChangesDuringCopy(t *testing.T) {
	p := newPair(t, SourceConfig{MaxFrame: 512, Window: 1024}, SinkConfig{})
	fillPair(p, 2000)
	p.connect()
	for round := 0; p.sink.Status() != SyncInSync || round < 50; round++ {
		if round > 10000 {
			t.Fatal("no convergence")
		}
		for i := range 30 {
			k := fmt.Appendf(nil, "key-%04d", (round*37+i*101)%2500)
			switch i % 4 {
			case 0:
				p.src.Delete(p.now, "conntrack", k)
			case 1:
				p.src.Put(p.now, "conntrack", k, fmt.Appendf(nil, "r%d-%s", round, bytes.Repeat([]byte("x"), i)))
			default:
				p.src.Put(p.now, "conntrack", k, fmt.Appendf(nil, "r%d", round))
			}
		}
		p.a = p.src.Poll(p.now, p.a[:0])
		for _, f := range p.a {
			if err := p.sink.Handle(p.now, f); err != nil {
				t.Fatal(err)
			}
		}
		p.b = p.sink.Poll(p.now, p.b[:0])
		for _, f := range p.b {
			p.src.Handle(p.now, f)
		}
		p.now = p.now.Add(10 * time.Millisecond)
	}
	p.advance(time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Snapshots != 1 || st.Mismatches != 0 {
		t.Fatalf("%+v", st)
	}
}
