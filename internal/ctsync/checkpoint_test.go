package ctsync

import (
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
