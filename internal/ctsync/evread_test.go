package ctsync

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// checkFlowHash checks that the hash the emitter takes from the encoded
// value is the one flowHash/expectHash compute by encoding again, and
// that the staged value is EncodeFlow's.
func checkFlowHash(t *testing.T, name string, f conntrack.Flow) {
	t.Helper()
	s := &Source{}
	em := &emitter{src: s, max: 4}
	key := Key(f)
	for _, to := range []uint32{0, 1, 127, 128, 3600, 1 << 20, 1<<32 - 1} {
		f.Timeout = to
		h := em.stageFlow(key, &f)
		if want := s.flowHash(&f); h != want {
			t.Errorf("%s timeout %d: staged hash %#x, flowHash %#x", name, to, h, want)
		}
		if v := em.arena[em.sb:]; !bytes.Equal(v, EncodeFlow(nil, f)) {
			t.Errorf("%s: staged value differs from EncodeFlow", name)
		}
		em.unstage()
		if len(em.arena) != 0 {
			t.Fatalf("unstage left %d bytes", len(em.arena))
		}
	}
}

func checkExpectHash(t *testing.T, name string, e conntrack.Expect) {
	t.Helper()
	s := &Source{}
	em := &emitter{src: s, max: 4}
	key := ExpectKey(e)
	for _, to := range []uint32{0, 1, 127, 128, 300, 1<<32 - 1} {
		e.Timeout = to
		h := em.stageExpect(key, &e)
		if want := s.expectHash(&e); h != want {
			t.Errorf("%s timeout %d: staged hash %#x, expectHash %#x", name, to, h, want)
		}
		em.unstage()
	}
}

func TestValueHashMatchesEncoding(t *testing.T) {
	for name, f := range richFlows() {
		checkFlowHash(t, name, f)
	}
	for i, f := range genFlows(50, 0) {
		checkFlowHash(t, "gen"+string(rune('a'+i%26)), f)
	}
	for j := range 50 {
		checkFlowHash(t, "bench", benchFlow(j*7919))
	}
	for name, e := range sampleExpects() {
		checkExpectHash(t, name, e)
	}
	for _, m := range decodeCorpus() {
		ev, err := decodeEvent(m)
		if err != nil {
			continue
		}
		if ev.Flow != nil {
			checkFlowHash(t, "corpus", *ev.Flow)
		}
		if ev.Expect != nil {
			checkExpectHash(t, "corpus", *ev.Expect)
		}
	}
}

// FuzzValueHash: for every value DecodeFlow or DecodeExpect accepts, the
// hash taken from the encoding equals the hash of a second encoding.
func FuzzValueHash(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if fl, err := DecodeFlow(b); err == nil {
			checkFlowHash(t, "fuzz", fl)
		}
		if e, err := DecodeExpect(b); err == nil {
			checkExpectHash(t, "fuzz", e)
		}
	})
}

func TestTimeoutSpanRefuses(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {magicFlow}, {magicFlow, 0x80}, {magicFlow, 0}, {magicExpect, 0, 6}, {0x00}} {
		if _, _, ok := flowTimeoutSpan(b); ok {
			t.Errorf("flowTimeoutSpan(%x) ok", b)
		}
		if _, _, ok := expectTimeoutSpan(b); ok {
			t.Errorf("expectTimeoutSpan(%x) ok", b)
		}
	}
}

// dgramConn is a datagram socket pair, the reading end as an nlConn.
func dgramConn(t *testing.T) (*nlConn, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	f := os.NewFile(uintptr(fds[0]), "dgram")
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close(); _ = unix.Close(fds[1]) })
	return &nlConn{f: f, rc: rc}, fds[1]
}

func datagram(i, n int) []byte {
	b := make([]byte, n)
	for k := range b {
		b[k] = byte(i*31 + k)
	}
	return b
}

// TestEvReader: datagrams come out whole, in order, packed into chunks
// that are reused once released; a truncated one ends the batch.
func TestEvReader(t *testing.T) {
	c, w := dgramConn(t)
	r := newEvReader()
	var q evQueue
	q.max = 1 << 30
	sent, got := 0, 0
	var held []evItem
	chunks := map[*chunk]bool{}
	for round := range 40 {
		for range 100 {
			n := 200 + (sent*37)%900
			if sent%97 == 0 {
				n = 20000
			}
			if err := unix.Send(w, datagram(sent, n), 0); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		for got < sent {
			items, err := r.read(c)
			if err != nil {
				t.Fatal(err)
			}
			if len(items) > evBatch {
				t.Fatalf("%d items from one read", len(items))
			}
			q.push(items)
			all, _ := q.take(nil)
			for _, it := range all {
				n := 200 + (got*37)%900
				if got%97 == 0 {
					n = 20000
				}
				if !bytes.Equal(it.b, datagram(got, n)) {
					t.Fatalf("datagram %d: wrong content (%d bytes)", got, len(it.b))
				}
				chunks[it.c] = true
				got++
				held = append(held, it)
			}
		}
		// Release all but the last round's items.
		if round%2 == 1 {
			for i := range held {
				held[i].release()
			}
			held = held[:0]
		}
	}
	// About 40*100*2.5 KB = 10 MB passed through; with releases, chunks
	// were reused.
	if len(chunks) > 2*evFreeKeep {
		t.Errorf("%d chunks for %d datagrams: not reused", len(chunks), sent)
	}

	// Two datagrams, then one larger than a slot.
	for i, n := range []int{100, 200, evSlot + 10, 300} {
		if err := unix.Send(w, datagram(i, n), 0); err != nil {
			t.Fatal(err)
		}
	}
	items, err := r.read(c)
	if !errors.Is(err, errTruncated) || len(items) != 2 || len(items[1].b) != 200 {
		t.Fatalf("truncated datagram: %d items, err %v", len(items), err)
	}
}

// TestEvQueueOverflow: a full queue is replaced by an overrun marker, and
// the dropped datagrams give their bytes back.
func TestEvQueueOverflow(t *testing.T) {
	free := make(chan *chunk, 1)
	ch := &chunk{buf: make([]byte, 100), free: free}
	ch.refs.Store(1)
	q := newEvQueue(25)
	mk := func(n int) evItem {
		ch.refs.Add(1)
		return evItem{b: ch.buf[:n], c: ch}
	}
	if full := q.push([]evItem{mk(10), mk(10)}); full != 0 {
		t.Fatalf("full %d", full)
	}
	// 20+10 > 25: marker, 3rd; 4th fits; 5th does not: marker, 5th, 6th.
	if full := q.push([]evItem{mk(10), mk(10), mk(10), mk(10)}); full != 2 {
		t.Fatalf("full %d, want 2", full)
	}
	items, err := q.take(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1+2 || !items[0].overrun {
		t.Fatalf("queue after overflow: %d items, first overrun %v", len(items), items[0].overrun)
	}
	if got := ch.refs.Load(); got != 1+2 {
		t.Fatalf("chunk refs %d, want 3 (reader + 2 queued)", got)
	}
	for i := range items {
		items[i].release()
	}
	ch.release()
	select {
	case c := <-free:
		if c != ch {
			t.Fatal("wrong chunk freed")
		}
	default:
		t.Fatal("chunk not freed")
	}
	if items, err := q.take(items); items != nil || err != nil {
		t.Fatalf("empty queue gave %d items, %v", len(items), err)
	}
	q.fail(errors.New("boom"))
	if _, err := q.take(nil); err == nil {
		t.Fatal("no error from a failed queue")
	}
}

// TestFlowDecoderMatches: the reusing decoder gives what decodeEvent gives
// for every connection message of the corpus, corrupted ones included, in
// any order (nothing of one message leaks into the next).
func TestFlowDecoderMatches(t *testing.T) {
	var d flowDecoder
	corpus := decodeCorpus()
	var msgs []nlMsg
	for _, m := range corpus {
		if m.typ>>8 != subsysCT {
			continue
		}
		msgs = append(msgs, m)
		for _, cut := range []int{0, 3, 4, 9, len(m.data) / 2, len(m.data) - 1} {
			if cut >= 0 && cut < len(m.data) {
				c := m
				c.data = m.data[:cut]
				msgs = append(msgs, c)
			}
		}
	}
	n := 0
	for pass := range 2 {
		for i := range msgs {
			m := msgs[i]
			if pass == 1 {
				m = msgs[len(msgs)-1-i]
			}
			want, werr := decodeEvent(m)
			got, gerr := d.decode(m)
			if werr != gerr {
				t.Fatalf("message %d: decodeEvent error %v, flowDecoder %v", i, werr, gerr)
			}
			if werr != nil {
				continue
			}
			n++
			if !reflect.DeepEqual(*want.Flow, *got) {
				t.Fatalf("message %d: %s", i, cmp.Diff(*want.Flow, *got, addrCmp))
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d messages decoded", n)
	}
	m := benchDecodeMsg()
	if a := testing.AllocsPerRun(1000, func() { _, _ = d.decode(m) }); a != 0 {
		t.Errorf("flowDecoder allocates %v times per event", a)
	}
}
