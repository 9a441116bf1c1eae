package syncchan

import (
	"testing"
	"unsafe"
)

// A large data frame given back is the next one's buffer; small frames and
// buffers the pool did not make never enter it.
func TestRecycleReusesLargeFrames(t *testing.T) {
	b := dataBuffer(256 << 10)
	if cap(b) != pooledCap {
		t.Fatalf("a 256 KiB frame got a buffer of cap %d, want %d", cap(b), pooledCap)
	}
	// As statesync hands configsync a frame: after its kind byte. The
	// pool may drop what it is given (always possible; often under the
	// race detector): try a few times.
	reused := false
	for range 20 {
		body := dataBuffer(256 << 10)[1:]
		Recycle(body)
		if c := dataBuffer(200 << 10); unsafe.SliceData(c) == unsafe.SliceData(body) {
			reused = true
			break
		}
	}
	if !reused {
		t.Errorf("a recycled frame buffer was never handed out again")
	}
	for _, n := range []int{1000, 64<<10 + 1} { // state sync's frames: exact
		if s := dataBuffer(n); cap(s) != n {
			t.Errorf("a %d-byte frame came with a buffer of cap %d", n, cap(s))
		}
	}
	foreign := make([]byte, 300<<10) // not of the pool's making: not taken
	Recycle(foreign)
	for range 10 {
		if c := dataBuffer(200 << 10); unsafe.SliceData(c) == unsafe.SliceData(foreign) {
			t.Fatal("a buffer the pool did not make was handed out as a frame")
		}
	}
}
