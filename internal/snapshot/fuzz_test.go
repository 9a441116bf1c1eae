package snapshot_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

// FuzzStage feeds Stage arbitrary streams, seeded with a valid one and
// mutations of it: it must never panic, accept only a stream that
// verifies, and leave no file behind on a rejection.
func FuzzStage(f *testing.F) {
	src := build(f, f.TempDir(), storeSpec{docs: 3, revisions: 4, size: 3000}, 11)
	stream, _ := takeBytes(f, src, snapshot.Options{ChunkSize: 4 << 10})
	src.Close()
	f.Add(stream)
	f.Add(stream[:len(stream)/2])
	for _, i := range []int{10, 60, 100, len(stream) - 30} {
		b := slices.Clone(stream)
		b[i] ^= 1
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		st, err := snapshot.Stage(bytes.NewReader(data), dir, snapshot.Options{})
		if err != nil {
			if names := onlyFiles(t, dir); len(names) != 0 {
				t.Fatalf("rejected (%v), left %v", err, names)
			}
			return
		}
		defer st.Discard()
		// Accepted: a whole snapshot (each fuzzing process takes its own
		// seed, with its own id, so "it is the seed" cannot be checked
		// here; TestCorruptStreamRejected does that).
		if m := st.Manifest(); m.StreamBytes > int64(len(data)) || m.Chunks == 0 {
			t.Fatalf("accepted %+v from %d bytes", m, len(data))
		}
	})
}
