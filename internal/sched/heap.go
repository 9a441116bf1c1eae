package sched

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
// virtual size, not to the resident set). At a million connections the
// live heap is hundreds of megabytes and the reserve changes little.
// Call once, at start.
func ReserveHeap() {
	if heapReserve == nil {
		heapReserve = make([]byte, HeapReserve)
	}
}
