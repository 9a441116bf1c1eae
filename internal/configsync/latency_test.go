package configsync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestRevFrameBinary: a revision's content travels raw after its JSON
// header, and a malformed binary frame is refused.
func TestRevFrameBinary(t *testing.T) {
	content := []byte("any bytes \x00\xff{\"t\":\"x\"}")
	w := wireRev{Number: 7, Author: "a", Category: "system", Name: "dns", Hash: make([]byte, 32)}
	b, err := encodeFrame(frame{V: frameVersion, Schema: 3, Type: tRev, Head: 7, Rev: &w, Chunk: 0, Chunks: 1, Content: content})
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != revTag || !bytes.HasSuffix(b, content) {
		t.Fatalf("encoded %q: want the tag, then the JSON, then the content raw", b)
	}
	var f frame
	if err := decodeFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.Type != tRev || f.Rev == nil || f.Rev.Number != 7 || f.Chunks != 1 || !bytes.Equal(f.Content, content) {
		t.Fatalf("decoded %+v", f)
	}
	// Other frames stay plain JSON.
	if b, _ := encodeFrame(frame{V: frameVersion, Type: tHello}); b[0] != '{' {
		t.Fatalf("hello encoded as %q", b)
	}
	hdr, _ := json.Marshal(frame{V: frameVersion, Type: tHello})
	for name, bad := range map[string][]byte{
		"short":           {revTag, 0, 0},
		"header too long": append([]byte{revTag, 0, 0, 1, 0}, hdr...),
		"not a rev":       append(append([]byte{revTag, 0, 0, 0, byte(len(hdr))}, hdr...), "x"...),
		"bad json":        {revTag, 0, 0, 0, 1, '{'},
	} {
		if err := decodeFrame(bad, &frame{}); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestRevJumpsSnapshotFrames: a revision frame is handled before the
// snapshot frames queued ahead of it, and only those.
func TestRevJumpsSnapshotFrames(t *testing.T) {
	var s Service
	js := func(typ string) []byte {
		b, _ := json.Marshal(snapFrame{frame: frame{V: frameVersion, Type: typ}, Xfer: 1})
		return b
	}
	rev := func(n uint64) []byte {
		b, _ := encodeFrame(frame{V: frameVersion, Type: tRev, Head: n, Rev: &wireRev{Number: n}, Chunks: 1, Content: []byte("c")})
		return b
	}
	data := func(i byte) []byte { return []byte{snapDataTag, i} }
	in := [][]byte{js(tSnapBegin), data(1), data(2), rev(1), js(tHello), data(3), rev(2), js(tSnapEnd)}
	names := map[string]string{}
	for i, n := range []string{"begin", "D1", "D2", "rev1", "hello", "D3", "rev2", "end"} {
		names[string(in[i])] = n
	}
	for _, b := range in {
		s.queue = append(s.queue, event{kind: evFrame, b: b})
	}
	s.queue = append(s.queue, event{kind: evKick})
	var got []string
	for {
		ev, ok := s.next()
		if !ok {
			break
		}
		if ev.kind == evKick {
			got = append(got, "kick")
			continue
		}
		got = append(got, names[string(ev.b)])
	}
	want := "[rev1 begin D1 D2 hello rev2 D3 end kick]"
	if fmt.Sprint(got) != want {
		t.Fatalf("order %v, want %s", got, want)
	}
}

// snapTimingPair is snapPair with the given debounce and max delay; begins
// counts the snapshot transfers the ACTIVE starts.
func snapTimingPair(t *testing.T, debounce, maxDelay time.Duration) (a, b *Service, begins *atomic.Int64) {
	t.Helper()
	open := func(node string) *Service {
		s, err := OpenWith(Options{Path: filepath.Join(t.TempDir(), "config.db"), Node: node, HA: true, NoSync: true,
			SnapshotDebounce: debounce, SnapshotMaxDelay: maxDelay})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b = open("fw-a"), open("fw-b")
	a.SetActive(true)
	begins = new(atomic.Int64)
	connectTap(a, b, func(_ *memLink, to *Service, f []byte) []byte {
		if to == b && frameType(f) == tSnapBegin {
			begins.Add(1)
		}
		return f
	})
	snapshotsOK(t, a, true, 1) // the standby's first snapshot
	return a, b, begins
}

// TestSnapshotTrailingDebounce: a burst of publishes gets its snapshot
// once publishing has been quiet for the debounce, not during the burst.
func TestSnapshotTrailingDebounce(t *testing.T) {
	a, b, begins := snapTimingPair(t, 300*time.Millisecond, 10*time.Second)
	before := begins.Load()
	for i := range 10 {
		publish(t, a, "system", "dns", fmt.Appendf(nil, "doc %d", i))
		time.Sleep(40 * time.Millisecond) // 400 ms of publishing, never 300 ms quiet
	}
	if n := begins.Load() - before; n != 0 {
		t.Fatalf("%d snapshot(s) started during the burst, want none before it is quiet", n)
	}
	waitFor(t, "the snapshot after the burst", func() bool { return begins.Load() == before+1 })
	snapshotsOK(t, a, true, 2)
	time.Sleep(400 * time.Millisecond)
	if n := begins.Load() - before; n != 1 {
		t.Fatalf("%d snapshots after one burst, want 1", n)
	}
	if h, _ := b.Head(); h != 10 {
		t.Fatalf("standby head %d, want 10", h)
	}
}

// TestSnapshotMaxDelay: continuous publishing still gets snapshots, one at
// the latest maxDelay after the first publish not in a snapshot.
func TestSnapshotMaxDelay(t *testing.T) {
	a, _, begins := snapTimingPair(t, 200*time.Millisecond, 400*time.Millisecond)
	before := begins.Load()
	start := time.Now()
	for i := 0; time.Since(start) < 1500*time.Millisecond; i++ {
		publish(t, a, "system", "dns", fmt.Appendf(nil, "doc %d", i))
		time.Sleep(40 * time.Millisecond)
	}
	if n := begins.Load() - before; n < 2 {
		t.Fatalf("%d snapshot(s) during 1.5 s of continuous publishing with a max delay of 400ms, want at least 2", n)
	}
}

// TestSnapshotWindow: the ACTIVE keeps at most snapWindow snapshot bytes
// ahead of what the standby has staged, and the snapshot still installs.
func TestSnapshotWindow(t *testing.T) {
	defer func(w int) { snapWindow = w }(snapWindow)
	snapWindow = 32 << 10
	a := openSnap(t, "fw-a", 0, nil)
	b := openSnap(t, "fw-b", 0, nil)
	a.SetActive(true)
	fill(t, a, 20, 16<<10, 1)
	var sent, acked, worst atomic.Int64
	connectTap(a, b, func(_ *memLink, to *Service, f []byte) []byte {
		switch {
		case to == b && isData(f):
			n := sent.Add(int64(len(f) - snapDataHdr))
			if d := n - acked.Load(); d > worst.Load() {
				worst.Store(d)
			}
		case to == a && frameType(f) == tSnapProgress:
			var sf snapFrame
			if err := json.Unmarshal(f, &sf); err == nil && sf.Bytes > acked.Load() {
				acked.Store(sf.Bytes)
			}
		}
		return f
	})
	snapshotsOK(t, a, true, 1)
	if sent.Load() < 4*int64(snapWindow) {
		t.Fatalf("only %d stream bytes sent: the test needs a database larger than the window", sent.Load())
	}
	if w := worst.Load(); w > int64(snapWindow) {
		t.Fatalf("%d stream bytes were unacknowledged at once, the window is %d", w, snapWindow)
	}
	if ha, _ := a.Head(); ha != 20 {
		t.Fatalf("head %d", ha)
	}
	if hb, _ := b.Head(); hb != 20 {
		t.Fatalf("standby head %d, want 20", hb)
	}
}
