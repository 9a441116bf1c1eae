package configsync

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/syncchan"
)

// TestCatchUpUnderBackpressure: a standby that lacks a long history is
// caught up through a channel that pushes back (its send queue full, as
// syncchan says with ErrBackpressure). The ACTIVE stops at the
// backpressure without calling it an error, goes on from where it stopped
// once the channel takes frames again, sends no revision twice, and a
// head the standby reports meanwhile (after the snapshot the ACTIVE sends
// a connecting standby) never makes it send again what is already on its
// way. (Before: each stop was recorded as an error, and
// every later publish read the whole missing history into memory again.)
func TestCatchUpUnderBackpressure(t *testing.T) {
	a := open(t, "fw-a", nil, 0)
	b := open(t, "fw-b", nil, 0)
	a.SetActive(true)
	doc := make([]byte, 256<<10)
	const revs = 30
	for i := range revs {
		doc[0] = byte(i)
		publish(t, a, "network", fmt.Sprint("doc", i%3), doc)
	}

	var mu sync.Mutex
	credit := 2 << 20 // bytes the channel takes before pushing back
	ready := false
	var held []func()
	sent := map[uint64]int{} // revision → times its first chunk was sent
	var toA, toB func(...[]byte) error
	deliver := func(dst *Service, f []byte, back *func(...[]byte) error) {
		d := func() { dst.Frame(f, *back) }
		if !ready {
			held = append(held, d)
			return
		}
		d()
	}
	toB = func(fs ...[]byte) error {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, f := range fs {
			n += len(f)
		}
		if n > credit {
			return syncchan.ErrBackpressure
		}
		credit -= n
		for _, f := range fs {
			var fr frame
			if len(f) > 0 && f[0] == revTag && decodeFrame(f, &fr) == nil && fr.Chunk == 0 {
				sent[fr.Rev.Number]++
			}
			deliver(b, append([]byte(nil), f...), &toA)
		}
		return nil
	}
	toA = func(fs ...[]byte) error {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range fs {
			deliver(a, append([]byte(nil), f...), &toB)
		}
		return nil
	}
	a.Up(toB)
	b.Up(toA)
	mu.Lock()
	ready = true
	for _, d := range held {
		d()
	}
	held = nil
	mu.Unlock()

	// The queue fills: part of the history crosses, then nothing.
	waitFor(t, "the channel to push back", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return credit < 300<<10
	})
	time.Sleep(300 * time.Millisecond)
	head, _ := a.store.Head()
	if got, _ := b.store.Head(); got >= head {
		t.Fatalf("fw-b reached revision %d of %d through a channel that took 2 MiB: the backpressure was not exercised", got, head)
	}
	// The channel drains.
	mu.Lock()
	credit = 1 << 30
	mu.Unlock()
	waitFor(t, "fw-b to catch up", func() bool { return sameHead(a, b) })

	if errs := a.Status(true).Errors; len(errs) > 0 {
		t.Errorf("backpressure recorded as errors: %q", errs)
	}
	mu.Lock()
	defer mu.Unlock()
	if sent[1] != 1 {
		t.Errorf("revision 1 sent %d times, want once: the catch-up did not start with the revisions", sent[1])
	}
	// The rest arrives as revisions or, once the standby has installed
	// the snapshot the ACTIVE sends a connecting standby, not at all.
	for n := uint64(1); n <= revs; n++ {
		if sent[n] > 1 {
			t.Errorf("revision %d sent %d times, want at most once", n, sent[n])
		}
	}
}
