package repl

import (
	"bytes"
	"testing"
)

// FuzzParseFrame feeds ParseFrame arbitrary bytes. It must not panic nor
// modify its input, whatever it accepts must re-encode to the same bytes,
// and a sink and a source handed the bytes must not panic either (a sink
// whose store was touched by a rejected frame is caught by the store
// check).
func FuzzParseFrame(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(AppendFrame(nil, fr))
	}
	f.Add([]byte("TR\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		fr, err := ParseFrame(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("ParseFrame modified its input")
		}
		if err == nil {
			if re := AppendFrame(nil, fr); !bytes.Equal(re, b) {
				t.Fatalf("accepted frame re-encodes differently:\n got %x\nwant %x", re, b)
			}
		}

		// A sink in every mode: a rejected frame leaves its store alone.
		store := NewMapStore()
		k := NewSink(SinkConfig{SinkID: 1}, store)
		k.Connected(t0)
		k.Handle(t0, AppendFrame(nil, Frame{Type: FrameSnapshotBegin, SourceID: 0x51, Seq: 999, Tables: []string{"conntrack"}}))
		k.Handle(t0, AppendFrame(nil, Frame{Type: FrameEntries, Tables: []string{"conntrack"}, Ops: []Op{{Kind: OpPut, Key: []byte("a"), Value: []byte("b")}}}))
		before := store.Snapshot()
		if herr := k.Handle(t0, b); herr != nil {
			if len(store.Snapshot()["conntrack"]) != len(before["conntrack"]) || store.Snapshot()["conntrack"]["a"] != "b" {
				t.Fatalf("a rejected frame (%v) changed the store", herr)
			}
		}
		k.Poll(t0, nil)

		s := NewSource(SourceConfig{SourceID: 5})
		s.Put(t0, "conntrack", []byte("k"), []byte("v"))
		s.Connected(t0)
		s.Handle(t0, b)
		s.Poll(t0, nil)
	})
}
