package sched

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSetRealtimeReachesEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sets SCHED_RR on this test process")
	}
	procs := runtime.GOMAXPROCS(0)
	if err := SetRealtime(5); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mu.Lock()
		priority = 0
		on.Store(false)
		mu.Unlock()
		runtime.GOMAXPROCS(procs)
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, tk := range tasks {
			var tid int
			for _, c := range tk.Name() {
				tid = tid*10 + int(c-'0')
			}
			_ = unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}, 0)
		}
	})
	if got := runtime.GOMAXPROCS(0); got < procs+BulkReserve {
		t.Errorf("GOMAXPROCS %d after SetRealtime, want at least %d", got, procs+BulkReserve)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks {
		var tid int
		for _, c := range tk.Name() {
			tid = tid*10 + int(c-'0')
		}
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue // ended meanwhile
		}
		if a.Policy != unix.SCHED_RR || a.Priority != 5 {
			t.Errorf("thread %d: policy %d priority %d, want SCHED_RR 5", tid, a.Policy, a.Priority)
		}
	}
}

func TestPauseYieldsOnlyAfterYieldEvery(t *testing.T) {
	on.Store(true)
	defer on.Store(false)
	var y Yielder
	y.Pause() // starts the clock
	start := y.since
	y.Pause()
	if y.since != start {
		t.Fatal("Pause yielded before YieldEvery")
	}
	time.Sleep(YieldEvery + time.Millisecond)
	y.Pause()
	if !y.since.After(start) {
		t.Fatal("Pause did not yield after YieldEvery")
	}
}
