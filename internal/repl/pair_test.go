package repl

import (
	"fmt"
	"maps"
	"testing"
	"time"
)

var t0 = time.Unix(1_000_000, 0)

// pair is a source and a sink joined by an instant, lossless channel.
type pair struct {
	t     testing.TB
	src   *Source
	sink  *Sink
	store *MapStore
	now   time.Time
	a, b  [][]byte
	up    bool
}

func newPair(t testing.TB, scfg SourceConfig, kcfg SinkConfig) *pair {
	if scfg.SourceID == 0 {
		scfg.SourceID = 0xabc
	}
	store := NewMapStore()
	return &pair{t: t, src: NewSource(scfg), sink: NewSink(kcfg, store), store: store, now: t0}
}

func (p *pair) connect() {
	p.src.Connected(p.now)
	p.sink.Connected(p.now)
	p.up = true
}

func (p *pair) disconnect() {
	p.src.Disconnected(p.now)
	p.sink.Disconnected(p.now)
	p.up = false
}

// pump exchanges frames until neither side has anything to send now.
func (p *pair) pump() {
	for range 1_000_000 {
		p.a = p.src.Poll(p.now, p.a[:0])
		p.b = p.sink.Poll(p.now, p.b[:0])
		if len(p.a) == 0 && len(p.b) == 0 {
			return
		}
		if !p.up {
			continue
		}
		for _, f := range p.a {
			if err := p.sink.Handle(p.now, f); err != nil {
				p.t.Fatalf("sink.Handle: %v", err)
			}
		}
		for _, f := range p.b {
			if err := p.src.Handle(p.now, f); err != nil {
				p.t.Fatalf("src.Handle: %v", err)
			}
		}
	}
	p.t.Fatal("pump does not converge")
}

// advance moves the clock by d, pumping at every deadline on the way.
func (p *pair) advance(d time.Duration) {
	end := p.now.Add(d)
	for {
		p.pump()
		next := end
		for _, dl := range []time.Time{p.src.NextDeadline(p.now), p.sink.NextDeadline(p.now)} {
			if !dl.IsZero() && dl.Before(next) {
				next = dl
			}
		}
		if !next.After(p.now) {
			next = p.now.Add(time.Millisecond)
		}
		if next.After(end) {
			p.now = end
			p.pump()
			return
		}
		p.now = next
	}
}

func sourceContent(s *Source) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, n := range s.Tables() {
		m := map[string]string{}
		s.Range(n, func(k, v []byte) bool { m[string(k)] = string(v); return true })
		if len(m) > 0 {
			out[n] = m
		}
	}
	return out
}

func (p *pair) checkEqual() {
	p.t.Helper()
	want, got := sourceContent(p.src), p.store.Snapshot()
	if !maps.EqualFunc(want, got, func(a, b map[string]string) bool { return maps.Equal(a, b) }) {
		p.t.Fatalf("sink store differs from source:\n%s", diffContent(want, got))
	}
}

func diffContent(want, got map[string]map[string]string) string {
	s := ""
	n := 0
	for tb, m := range want {
		for k, v := range m {
			if g, ok := got[tb][k]; !ok || g != v {
				if n++; n <= 10 {
					s += fmt.Sprintf("  %s[%q]: source %q, sink %q (present %v)\n", tb, k, v, g, ok)
				}
			}
		}
	}
	for tb, m := range got {
		for k, v := range m {
			if _, ok := want[tb][k]; !ok {
				if n++; n <= 10 {
					s += fmt.Sprintf("  %s[%q]: only on the sink (%q)\n", tb, k, v)
				}
			}
		}
	}
	return fmt.Sprintf("%d differences\n%s", n, s)
}

func TestPairBasic(t *testing.T) {
	p := newPair(t, SourceConfig{Tables: []string{"conntrack"}}, SinkConfig{})
	for i := range 1000 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "v%d", i))
	}
	p.connect()
	for i := range 500 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "w%d", i))
		p.src.Delete(p.now, "conntrack", fmt.Appendf(nil, "k%d", i+500))
		p.src.Put(p.now, "expect", fmt.Appendf(nil, "e%d", i), fmt.Appendf(nil, "x%d", i))
		if i%50 == 0 {
			p.pump()
		}
	}
	p.advance(2 * time.Second)
	p.checkEqual()
	if s := p.sink.Status(); s != SyncInSync {
		t.Fatalf("status %v, stats %+v", s, p.sink.Stats())
	}
	if s := p.src.Stats(p.now); s.PeerStatus != SyncInSync || s.LagEntries != 0 {
		t.Fatalf("source stats %+v", s)
	}
	// A short disconnection resumes without a copy.
	p.disconnect()
	for i := range 100 {
		p.src.Put(p.now, "conntrack", fmt.Appendf(nil, "k%d", i), fmt.Appendf(nil, "z%d", i))
	}
	p.advance(time.Second)
	p.connect()
	p.advance(2 * time.Second)
	p.checkEqual()
	if st := p.sink.Stats(); st.Snapshots != 1 || st.Resumes != 1 || st.Status != SyncInSync {
		t.Fatalf("after a short disconnection: %+v", st)
	}
}
