package repl

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestKVTableModel drives the arena table with random puts, deletes and
// value-size changes and compares it with a Go map after every step; small
// keyspaces force collisions, growth, moves and chunk compaction.
func TestKVTableModel(t *testing.T) {
	seeds := uint64(30)
	if raceEnabled || testing.Short() {
		seeds = 6
	}
	for seed := uint64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		kv := newKVTable()
		kv.rehashHome = seed%3 == 0 // the path of tables beyond 2^24 slots
		model := map[string]string{}
		keys := 1 + rng.IntN(3000)
		steps := 20000
		for step := range steps {
			k := fmt.Sprintf("key-%d", rng.IntN(keys))
			if rng.IntN(10) == 0 {
				k += string(make([]byte, rng.IntN(40)))
			}
			l := kv.find([]byte(k))
			if _, ok := model[k]; (l.ref != 0) != ok {
				t.Fatalf("seed %d step %d: find(%q) present=%v, model disagrees", seed, step, k, l.ref != 0)
			}
			switch rng.IntN(3) {
			case 0, 1:
				v := make([]byte, rng.IntN(120))
				for i := range v {
					v[i] = byte(rng.Uint32())
				}
				if l.ref == 0 {
					kv.insert(l, 0, 0, []byte(k), v)
				} else {
					kv.setValue(l, 0, 0, v)
				}
				model[k] = string(v)
			case 2:
				if l.ref != 0 {
					kv.remove(l)
				}
				delete(model, k)
			}
			if step%997 == 0 || step == steps-1 {
				checkKV(t, kv, model, fmt.Sprintf("seed %d step %d", seed, step))
			}
		}
	}
}

func checkKV(t *testing.T, kv *kvTable, model map[string]string, where string) {
	t.Helper()
	if kv.live != len(model) {
		t.Fatalf("%s: live=%d, model has %d", where, kv.live, len(model))
	}
	seen := 0
	kv.each(func(ref uint64, _, _ byte, k, v []byte) bool {
		seen++
		if mv, ok := model[string(k)]; !ok || mv != string(v) {
			t.Fatalf("%s: arena holds %q=%x, model %q (present %v)", where, k, v, mv, ok)
		}
		if l := kv.find(k); l.ref != ref {
			t.Fatalf("%s: index of %q points to %d, record is %d", where, k, l.ref, ref)
		}
		return true
	})
	if seen != len(model) {
		t.Fatalf("%s: arena has %d live records, model %d", where, seen, len(model))
	}
	for k, v := range model {
		l := kv.find([]byte(k))
		if l.ref == 0 {
			t.Fatalf("%s: %q missing", where, k)
		}
		if _, _, _, got := kv.record(l.ref); string(got) != v {
			t.Fatalf("%s: %q = %x, want %x", where, k, got, v)
		}
	}
	// Every chunk but the tail and the pinned one is at most half garbage.
	for i, id := range kv.order {
		if i == len(kv.order)-1 {
			break
		}
		if kv.garbage[id]*2 > len(kv.chunks[id]) && int(id)+1 != kv.pinned {
			t.Fatalf("%s: chunk %d is %d/%d garbage", where, id, kv.garbage[id], len(kv.chunks[id]))
		}
	}
}
