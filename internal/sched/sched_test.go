package sched

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// policyOnLockedThread reports the policy of a thread that is not bulk.
func policyOnLockedThread(t *testing.T) uint32 {
	t.Helper()
	ch := make(chan uint32)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		p, _, err := Policy()
		if err != nil {
			t.Error(err)
		}
		ch <- p
	}()
	return <-ch
}

func TestBulkThreadsStayNormalWhileTheRestIsRealtime(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sets SCHED_RR on this test process")
	}
	procs := runtime.GOMAXPROCS(0)
	if err := SetRealtime(5); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Leave the process as we found it for any later test.
		mu.Lock()
		priority = 0
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
	if p := policyOnLockedThread(t); p != unix.SCHED_RR {
		t.Fatalf("ordinary thread policy %d, want SCHED_RR (%d)", p, unix.SCHED_RR)
	}

	inBulk := make(chan uint32)
	release := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer Bulk()()
		pol, prio, _ := Policy()
		if pol != unix.SCHED_RR {
			t.Errorf("bulk thread policy %d, want SCHED_RR", pol)
		}
		inBulk <- prio
		<-release
		// SetRealtime ran again meanwhile: still at the bulk priority.
		_, prio, _ = Policy()
		inBulk <- prio
	}()
	if p := <-inBulk; p != 1 {
		t.Fatalf("bulk thread priority %d, want 1 (below the HA path's 5)", p)
	}
	if err := SetRealtime(5); err != nil {
		t.Fatal(err)
	}
	close(release)
	if p := <-inBulk; p != 1 {
		t.Fatalf("bulk thread priority %d after a second SetRealtime, want 1", p)
	}
	<-exited
	mu.Lock()
	n := len(bulk)
	mu.Unlock()
	if n != 0 {
		t.Errorf("%d bulk threads still registered after their goroutines ended", n)
	}
}

func TestBulkIsFreeWhenRealtimeIsOff(t *testing.T) {
	mu.Lock()
	on := priority != 0
	mu.Unlock()
	if on {
		t.Skip("realtime is on in this process")
	}
	done := make(chan bool)
	go func() {
		defer Bulk()()
		mu.Lock()
		done <- len(bulk) == 0
		mu.Unlock()
	}()
	if !<-done {
		t.Error("Bulk registered a thread while realtime is off")
	}
}
