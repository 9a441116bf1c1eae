package ctsync

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

func checkpointSync(t *testing.T, k *Sink, path string, pos []byte) (CheckpointInfo, error) {
	t.Helper()
	type res struct {
		info CheckpointInfo
		err  error
	}
	ch := make(chan res, 1)
	k.Checkpoint(path, pos, func(i CheckpointInfo, err error) { ch <- res{i, err} })
	select {
	case r := <-ch:
		return r.info, r.err
	case <-time.After(30 * time.Second):
		t.Fatal("checkpoint: no answer")
		return CheckpointInfo{}, nil
	}
}

// TestSinkCheckpointResume: a standby's daemon restarts with its kernel
// table intact and loads the checkpoint its previous daemon wrote: it
// knows every entry without reading the kernel's table, a replayed entry
// of the same value is not written again, a changed one is. The negative
// controls: a torn or damaged file, another namespace, a kernel whose
// entries hold other values, and a flushed table are each refused, and the
// sink stays empty.
func TestSinkCheckpointResume(t *testing.T) {
	b := newNS(t, "ckpt")
	cb := ctConn(t, b.NsHandle)
	fl := sampleFlows()
	replicated := append(genFlows(300, 0), fl["tcp4-snat"], fl["tcp4-dnat-snat-mark"], fl["udp6-zone"], fl["icmp4-snat"])
	put := func(k *Sink, flows []conntrack.Flow) {
		for _, f := range flows {
			k.Put(TableConntrack, Key(f), EncodeFlow(nil, f))
		}
	}
	openIn := func(opts SinkOptions) *Sink {
		k, err := OpenSink(b.NsHandle, testLogger(t), opts)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "conntrack.checkpoint")

	first := openIn(SinkOptions{Mode: Inject})
	first.Reset(TableConntrack)
	put(first, replicated)
	info, err := checkpointSync(t, first, path, []byte("position-1"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Flows != len(replicated) || info.Bytes == 0 {
		t.Fatalf("checkpoint %+v, want %d flows", info, len(replicated))
	}
	if s := first.Stats(); s.Created != uint64(len(replicated)) || s.Failed != 0 {
		t.Fatalf("the checkpoint was taken before every queued entry was written: %+v", s)
	}
	first.Close()
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// Second life: resumes.
	second := openIn(SinkOptions{Mode: Inject})
	pos, li, err := second.LoadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(pos) != "position-1" || li.Flows != len(replicated) {
		t.Fatalf("loaded %q, %+v", pos, li)
	}
	if s := second.Stats(); s.Injected != len(replicated) || s.KernelDumps != 0 {
		t.Fatalf("after the load: %+v", s)
	}
	changed := replicated[5]
	changed.Mark = 0x42
	again := append([]conntrack.Flow{}, replicated...)
	again[5] = changed
	put(second, again) // the stream since the position (here: everything again)
	if err := second.Flush(); err != nil {
		t.Fatal(err)
	}
	s := second.Stats()
	if s.Unchanged != uint64(len(replicated)-1) || s.Created+s.Updated+s.Recreated != 1 || s.Failed != 0 || s.KernelDumps != 0 {
		t.Errorf("resumed sink wrote %d/%d/%d (created/updated/recreated), %d unchanged, %d dumps; want 1 write, %d unchanged, no dump",
			s.Created, s.Updated, s.Recreated, s.Unchanged, s.KernelDumps, len(replicated)-1)
	}
	if got := dumpFlows(t, cb)[string(Key(changed))]; got.Mark != 0x42 {
		t.Errorf("the changed entry has mark %#x in the kernel", got.Mark)
	}
	// A loaded sink refuses a second load.
	if _, _, err := second.LoadCheckpoint(path); err == nil {
		t.Error("LoadCheckpoint accepted on a sink that has started")
	}
	second.Close()

	refused := func(name, wantErr string, k *Sink, file []byte) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, file, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := k.LoadCheckpoint(p)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: LoadCheckpoint error %v, want one saying %q", name, err, wantErr)
		}
		if s := k.Stats(); s.Injected != 0 {
			t.Errorf("%s: the refused checkpoint left %d entries recorded", name, s.Injected)
		}
		k.Close()
	}
	// The checkpoint of the second life's state (mark 0x42) is what the
	// kernel holds now.
	third := openIn(SinkOptions{Mode: Inject})
	third.Reset(TableConntrack)
	put(third, again)
	if _, err := checkpointSync(t, third, path, []byte("position-2")); err != nil {
		t.Fatal(err)
	}
	third.Close()
	good, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	refused("torn", "checksum", openIn(SinkOptions{Mode: Inject}), good[:len(good)/2])
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x10
	refused("flipped", "checksum", openIn(SinkOptions{Mode: Inject}), flipped)
	refused("magic", "not a tandem", openIn(SinkOptions{Mode: Inject}), []byte("hello world, not a checkpoint"))

	other := newNS(t, "ckpt2")
	ko, err := OpenSink(other.NsHandle, testLogger(t), SinkOptions{Mode: Inject})
	if err != nil {
		t.Fatal(err)
	}
	refused("other-ns", "another network namespace", ko, good)

	// The kernel's entries changed behind the sink's back (every one, so
	// the sample cannot miss them).
	w := openIn(SinkOptions{Mode: Inject})
	for i := range again {
		again[i].Mark = 0x77
	}
	put(w, again)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	refused("other-values", "another value", openIn(SinkOptions{Mode: Inject}), good)

	// Flushed.
	deleteFlows(t, cb, again)
	refused("flushed", "flushed", openIn(SinkOptions{Mode: Inject}), good)

	// Hold mode neither saves nor loads.
	h := openIn(SinkOptions{Mode: Hold})
	if _, err := checkpointSync(t, h, path, nil); err == nil {
		t.Error("a holding sink wrote a checkpoint")
	}
	if _, _, err := h.LoadCheckpoint(path); err == nil {
		t.Error("a holding sink loaded a checkpoint")
	}
	h.Close()
}

func testCheckpointMaps(n int) [4]*keyMap[entryMeta] {
	var maps [4]*keyMap[entryMeta]
	for i := range maps {
		maps[i] = newKeyMap[entryMeta](0)
	}
	for i, f := range genFlows(n, 0) {
		maps[i%7/6*2].set(Key(f), entryMeta{timeout: uint32(i), fp: uint32(i * 3), vh: uint32(i * 5)})
	}
	maps[1].set([]byte("an expectation key longer than sixteen bytes"), entryMeta{timeout: 30})
	return maps
}

func encodeTest(t testing.TB, boot string, ns uint64, saved time.Time, pos []byte, maps [4]*keyMap[entryMeta]) []byte {
	var buf bytes.Buffer
	if err := encodeCheckpoint(&buf, boot, ns, saved, pos, maps, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCheckpointEncoding(t *testing.T) {
	maps := testCheckpointMaps(1000)
	saved := time.Unix(1_800_000_000, 42)
	b := encodeTest(t, "boot-1", 0x1234, saved, []byte("pos"), maps)
	c, err := parseCheckpoint(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.boot != "boot-1" || c.ns != 0x1234 || !c.saved.Equal(saved) || string(c.pos) != "pos" {
		t.Fatalf("header %+v", c)
	}
	var got [4]*keyMap[entryMeta]
	for i := range got {
		got[i] = newKeyMap[entryMeta](0)
	}
	if err := c.walk(func(i int, k []byte, e entryMeta) { got[i].set(k, e) }); err != nil {
		t.Fatal(err)
	}
	for i := range maps {
		if c.counts[i] != maps[i].len() || got[i].len() != maps[i].len() {
			t.Fatalf("map %d: %d entries (%d counted), want %d", i, got[i].len(), c.counts[i], maps[i].len())
		}
		maps[i].each(func(k []byte, e entryMeta) bool {
			if got, ok := got[i].get(k); !ok || got != e {
				t.Fatalf("map %d key %x: %+v %v, want %+v", i, k, got, ok, e)
			}
			return true
		})
	}
	// A promotion or Close abandons a checkpoint being written.
	var buf bytes.Buffer
	if err := encodeCheckpoint(&buf, "b", 1, saved, nil, testCheckpointMaps(3000), func() bool { return true }); err != errCheckpointAborted {
		t.Errorf("aborted encoding: %v", err)
	}
	for _, cut := range []int{0, 5, len(b) / 2, len(b) - 1} {
		if _, err := parseCheckpoint(b[:cut]); err == nil {
			t.Errorf("cut to %d bytes: accepted", cut)
		}
	}
}

// FuzzParseCheckpoint: a checkpoint is read from a file another process
// may have damaged; parsing never panics. The CRC is recomputed over the
// fuzzed body so that the parser behind it is exercised too.
func FuzzParseCheckpoint(f *testing.F) {
	f.Add(encodeTest(f, "b", 1, time.Unix(1, 0), []byte("p"), testCheckpointMaps(20)))
	f.Add([]byte("TCKP\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseCheckpoint(b)
		if len(b) >= 4 {
			body := b[:len(b)-4]
			fixed := binary.BigEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, crcTable))
			_, _ = parseCheckpoint(fixed)
		}
	})
}

// BenchmarkParseCheckpoint: what a restarted standby spends reading a
// checkpoint of N connections (-ctsync.n) and rebuilding its record.
func BenchmarkParseCheckpoint(b *testing.B) {
	n := *benchN
	buf := encodeTest(b, "boot", 1, time.Now(), []byte("pos"), testCheckpointMaps(n))
	b.ReportMetric(float64(len(buf))/float64(n), "bytes/entry")
	b.ResetTimer()
	for b.Loop() {
		c, err := parseCheckpoint(buf)
		if err != nil {
			b.Fatal(err)
		}
		var k Sink
		k.log = testLogger(b)
		k.buildLoaded(c)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/entry")
}

// BenchmarkEncodeCheckpoint: the sink's writer time a checkpoint of N
// connections (-ctsync.n) costs, the file write left out.
func BenchmarkEncodeCheckpoint(b *testing.B) {
	n := *benchN
	maps := testCheckpointMaps(n)
	var size int
	for b.Loop() {
		var c countingWriter
		c.w = io.Discard
		if err := encodeCheckpoint(&c, "boot", 1, time.Now(), []byte("pos"), maps, nil); err != nil {
			b.Fatal(err)
		}
		size = c.n
	}
	b.ReportMetric(float64(size)/float64(n), "bytes/entry")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/entry")
}
