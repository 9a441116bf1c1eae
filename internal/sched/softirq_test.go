package sched

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIsSoftirqThread(t *testing.T) {
	for comm, want := range map[string]bool{
		"ksoftirqd/0\n": true, "ksoftirqd/17": true, "ksoftirqd/": false, "ksoftirqd/x": false,
		"ksoftirqd": false, "kworker/0:1": false, "xksoftirqd/0": false,
	} {
		if got := isSoftirqThread(comm); got != want {
			t.Errorf("isSoftirqThread(%q) = %v, want %v", comm, got, want)
		}
	}
}

// TestBoostSoftirq changes the machine's ksoftirqd threads (root only) and
// checks their policy; it puts back the policy each had.
func TestBoostSoftirq(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to change kernel threads' scheduling")
	}
	type saved struct {
		pid  int
		attr *unix.SchedAttr
	}
	var before []saved
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + p.Name() + "/comm"); err == nil && isSoftirqThread(string(comm)) {
			a, err := unix.SchedGetAttr(pid, 0)
			if err != nil {
				t.Fatal(err)
			}
			before = append(before, saved{pid, a})
		}
	}
	if len(before) == 0 {
		t.Skip("skipped: no ksoftirqd thread visible")
	}
	t.Cleanup(func() {
		for _, s := range before {
			_ = unix.SchedSetAttr(s.pid, s.attr, 0)
		}
	})
	n, err := BoostSoftirq(7)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(before) {
		t.Errorf("changed %d threads, want %d", n, len(before))
	}
	for _, s := range before {
		a, err := unix.SchedGetAttr(s.pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		if a.Policy != unix.SCHED_FIFO || a.Priority != 7 {
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(s.pid) + "/comm")
			t.Errorf("%s: policy %d priority %d, want SCHED_FIFO 7", strings.TrimSpace(string(comm)), a.Policy, a.Priority)
		}
	}
	if n, err := BoostSoftirq(0); n != 0 || err != nil {
		t.Errorf("BoostSoftirq(0) = %d, %v; want nothing done", n, err)
	}
}
