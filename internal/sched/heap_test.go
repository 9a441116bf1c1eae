package sched

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// With the reserve, allocating a few megabytes does not start a
// collection; without it (the control) it starts several.
func TestReserveHeapSpacesCollections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	cycles := func() uint32 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 200 {
			sink = make([]byte, 64<<10) // 12.5 MB in all
		}
		runtime.ReadMemStats(&after)
		return after.NumGC - before.NumGC
	}
	dropReserve() // a clean start (-count): no reserve, and allowed again
	reserveMu.Lock()
	reserveDropped = false
	reserveMu.Unlock()
	without := cycles()
	ReserveHeap()
	with := cycles()
	t.Logf("collections while allocating 12.5 MB: %d without the reserve, %d with it", without, with)
	if without < 2 {
		t.Skipf("the control did not collect (%d cycles): the test heap is not small here", without)
	}
	if with != 0 {
		t.Errorf("%d collections with a %d MB reserve, want none", with, HeapReserve>>20)
	}

	// A live heap larger than the threshold: the reserve goes.
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	dropAbove.Store(ms.HeapAlloc + 8<<20)
	defer dropAbove.Store(HeapReserve + 16<<20)
	keep = make([]*[1 << 20]byte, 16)
	for i := range keep {
		keep[i] = new([1 << 20]byte)
	}
	runtime.GC() // the live heap is known after a collection, as in the daemon
	deadline := time.Now().Add(10 * time.Second)
	for {
		reserveMu.Lock()
		dropped := reserveDropped && heapReserve == nil
		reserveMu.Unlock()
		if dropped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reserve was kept with a live heap above the threshold")
		}
		time.Sleep(50 * time.Millisecond)
	}
	keep = nil
}

var keep []*[1 << 20]byte

var sink []byte

// The reserve stays virtual when taken at a process's start, as the
// daemon does: measured in a fresh process (this binary again), since
// this one's heap has reused memory that would need zeroing.
func TestReserveHeapStaysVirtual(t *testing.T) {
	if os.Getenv(reserveEnv) != "" {
		t.Skip("the child's side")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReserveHeapChild$", "-test.v")
	cmd.Env = append(os.Environ(), reserveEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var grown int64 = -1
	for _, line := range strings.Split(string(out), "\n") {
		if _, v, ok := strings.Cut(line, "grown="); ok {
			grown, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if grown < 0 {
		t.Fatalf("the child did not report:\n%s", out)
	}
	t.Logf("resident set grown by %d KB with a %d MB reserve", grown>>10, HeapReserve>>20)
	if grown > 8<<20 {
		t.Errorf("the resident set grew by %d MB with the reserve: it must stay virtual", grown>>20)
	}
}

const reserveEnv = "TANDEM_SCHED_TEST_RESERVE_CHILD"

func TestReserveHeapChild(t *testing.T) {
	if os.Getenv(reserveEnv) == "" {
		t.Skip("run by TestReserveHeapStaysVirtual")
	}
	rss := residentBytes(t)
	ReserveHeap()
	fmt.Printf("grown=%d\n", residentBytes(t)-rss)
}

// residentBytes is this process's resident set (/proc/self/statm).
func residentBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}
