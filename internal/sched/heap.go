package sched

import (
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// heapReserve is never read or written: it only counts toward the heap
// the Go collector paces itself by.
var heapReserve []byte

// HeapReserve is how much ReserveHeap sets aside.
const HeapReserve = 64 << 20

// ReserveHeap makes the collector run every ~HeapReserve bytes allocated
// rather than every few megabytes. The daemon's live heap is 2-3 MB
// outside a large state sync, so the collector ran 40-50 times a second
// while publishes or a snapshot moved data through it — and each cycle's
// mark workers are realtime threads like every other here, which hold a
// CPU until the cycle ends (BENCHMARKS.md, finding 26). The reserve is a
// pointer-free allocation that is never touched: the collector never
// scans it and the kernel never backs it with memory (it adds to the
// virtual size, not to the resident set). Once the live heap besides it
// passes 16 MB (state sync of some 100,000 connections), the reserve is
// dropped: there it would only let 64 MB more garbage stay resident
// between collections — kept to 32 MB it made a standby holding a
// million connections 20 B/entry larger (finding 26).
// Call once, at start.
func ReserveHeap() {
	reserveMu.Lock()
	defer reserveMu.Unlock()
	if heapReserve != nil || reserveDropped {
		return
	}
	heapReserve = make([]byte, HeapReserve)
	go func() {
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			time.Sleep(time.Second)
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 && sample[0].Value.Uint64() > dropAbove.Load() {
				dropReserve()
				return
			}
		}
	}()
}

var (
	reserveMu      sync.Mutex
	reserveDropped bool
	// dropAbove is the live heap, reserve included, above which the
	// reserve goes: 16 MB of live data besides it (a variable for the test).
	dropAbove atomic.Uint64
)

func init() { dropAbove.Store(HeapReserve + 16<<20) }

func dropReserve() {
	reserveMu.Lock()
	heapReserve, reserveDropped = nil, true
	reserveMu.Unlock()
}
