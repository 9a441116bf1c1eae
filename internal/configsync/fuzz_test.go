package configsync

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzStandbyFrame feeds arbitrary frames from the ACTIVE to a standby's
// handler (JSON frames, binary rev frames, snapshot data): it never
// panics, and a frame that is not a well-formed revision changes nothing
// stored.
func FuzzStandbyFrame(f *testing.F) {
	w := wireRev{Number: 1, Author: "a", Category: "system", Name: "dns", Hash: make([]byte, 32)}
	rev, _ := encodeFrame(frame{V: frameVersion, Type: tRev, Active: true, Head: 1, Rev: &w, Chunks: 1, Content: []byte("x")})
	hello, _ := json.Marshal(frame{V: frameVersion, Type: tHello, Node: "fw-a", Active: true, Head: 3})
	hashes, _ := json.Marshal(frame{V: frameVersion, Type: tHashes, Active: true, Head: 2, From: 1, Hashes: make([]byte, 64)})
	for _, seed := range [][]byte{rev, hello, hashes, []byte("{}"), {revTag}, {snapDataTag, 0, 0, 0, 0, 0, 0, 0, 1}, []byte(`{"v":2,"t":"snap-begin","xfer":1}`)} {
		f.Add(seed)
	}
	dir, err := os.MkdirTemp("", "tandem-fuzz-configsync-")
	if err != nil {
		f.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := OpenWith(Options{Path: filepath.Join(dir, "config.db"), Node: "fw-b", HA: true, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	s.send = func(...[]byte) error { return nil }
	s.onFrame(hello) // the peer is the ACTIVE: its frames are handled
	f.Fuzz(func(t *testing.T, b []byte) {
		before, _ := s.store.Head()
		s.onFrame(b)
		after, _ := s.store.Head()
		if after > before+1 {
			t.Fatalf("one frame moved the head from %d to %d", before, after)
		}
	})
}
