package repl

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

// restartSink replaces the pair's sink by a new one over the same store
// (a standby daemon restarted while its kernel kept the table), resumed
// from pos when resume is set.
func (p *pair) restartSink(pos Position, resume bool) {
	p.t.Helper()
	p.disconnect()
	p.sink = NewSink(SinkConfig{SinkID: 2}, p.store)
	if resume {
		if err := p.sink.Resume(pos); err != nil {
			p.t.Fatalf("Resume: %v", err)
		}
	}
}

func syncedPair(t *testing.T, cfg SourceConfig) (*pair, Position) {
	p := newPair(t, cfg, SinkConfig{})
	p.connect()
	for i := range 2000 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "v%d", i))
		if i%3 == 0 {
			p.src.Put(p.now, "expect", fmt.Appendf(nil, "e%d", i), fmt.Appendf(nil, "x%d", i))
		}
	}
	p.advance(2 * time.Second)
	p.checkEqual()
	pos, ok := p.sink.Position()
	if !ok {
		t.Fatalf("no position from a sink that is %v", p.sink.Status())
	}
	return p, pos
}

// A restarted sink whose store kept the state resumes the stream: the
// changes made while it was down arrive, no copy is sent, and it is
// IN_SYNC at the source's first digest.
func TestSinkResumesFromPosition(t *testing.T) {
	p, pos := syncedPair(t, SourceConfig{})
	b := AppendPosition(nil, pos)
	pos2, err := ParsePosition(b)
	if err != nil || !reflect.DeepEqual(pos, pos2) {
		t.Fatalf("position round trip: %v\n%+v\n%+v", err, pos, pos2)
	}
	p.restartSink(pos2, true)
	if st := p.sink.Status(); st != SyncOutOfSync {
		t.Fatalf("a resumed sink says %v before the source's digest", st)
	}
	for i := range 300 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "w%d", i))
		p.src.Delete(p.now, "expect", fmt.Appendf(nil, "e%d", i*3))
	}
	snaps := p.src.Stats(p.now).Snapshots
	p.connect()
	p.pump() // no time passes: the digest comes with the resumed stream
	p.checkEqual()
	st := p.sink.Stats()
	if st.Status != SyncInSync || st.Snapshots != 0 || st.Resumes != 1 {
		t.Fatalf("resumed sink: %+v", st)
	}
	if s := p.src.Stats(p.now); s.Snapshots != snaps || s.Resumes != 1 {
		t.Fatalf("source after the resume: %+v", s)
	}
}

// Negative controls: a position the source cannot continue, or whose
// digests are not the source's, ends in a full copy — and the store ends
// equal to the source's either way.
func TestSinkResumeRefused(t *testing.T) {
	cases := []struct {
		name   string
		cfg    SourceConfig
		change func(p *pair, pos *Position)
	}{
		{"another source run", SourceConfig{}, func(p *pair, pos *Position) { pos.SourceID++ }},
		{"digest of another state", SourceConfig{}, func(p *pair, pos *Position) { pos.Tables[0].Sum ^= 1 }},
		{"a seq the source never sent", SourceConfig{}, func(p *pair, pos *Position) { pos.Seq += 10 }},
		{"changes sent since, no longer kept", SourceConfig{RetransmitBytes: 4096}, func(p *pair, pos *Position) {
			for i := range 2000 {
				p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "again%d", i))
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, pos := syncedPair(t, c.cfg)
			c.change(p, &pos)
			p.advance(time.Second) // the old sink still receives
			p.restartSink(pos, false)
			if err := p.sink.Resume(pos); err != nil {
				t.Fatal(err)
			}
			p.connect()
			p.advance(2 * time.Second)
			p.checkEqual()
			if st := p.sink.Stats(); st.Status != SyncInSync || st.Snapshots != 1 {
				t.Fatalf("sink: %+v", st)
			}
		})
	}
}

func TestSinkPositionOnlyWhenInSync(t *testing.T) {
	p := newPair(t, SourceConfig{}, SinkConfig{})
	if _, ok := p.sink.Position(); ok {
		t.Fatal("a new sink has a position")
	}
	p.src.Put(p.now, "conntrack", []byte("k"), []byte("v"))
	p.connect()
	p.advance(2 * time.Second)
	if _, ok := p.sink.Position(); !ok {
		t.Fatal("no position when IN_SYNC")
	}
	if err := p.sink.Resume(Position{SourceID: 1}); err == nil {
		t.Fatal("Resume accepted by a running sink")
	}
	p.disconnect()
	p.advance(10 * time.Second) // OUT_OF_SYNC after OutOfSyncAfter
	if _, ok := p.sink.Position(); ok {
		t.Fatalf("a position from a sink that is %v", p.sink.Status())
	}
	if err := NewSink(SinkConfig{}, NewMapStore()).Resume(Position{}); err == nil {
		t.Fatal("Resume accepted a position of source 0")
	}
}

func TestParsePositionErrors(t *testing.T) {
	good := AppendPosition(nil, Position{SourceID: 7, Seq: 300, Tables: []TableDigest{{"conntrack", 5, 9}}})
	for i := range len(good) {
		if _, err := ParsePosition(good[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", i)
		}
	}
	if _, err := ParsePosition(append(good, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

func FuzzParsePosition(f *testing.F) {
	f.Add(AppendPosition(nil, Position{SourceID: 7, Seq: 300, Tables: []TableDigest{{"conntrack", 5, 9}, {"expect", 0, 0}}}))
	f.Add([]byte("TP\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePosition(b)
		if err != nil {
			return
		}
		if again := AppendPosition(nil, p); string(again) != string(b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
	})
}
