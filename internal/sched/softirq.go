package sched

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// BoostSoftirq runs the kernel's softirq threads (ksoftirqd/N) under
// SCHED_FIFO at prio and returns how many it changed.
//
// Why: a packet sent from one namespace to another over a veth, or
// received by a NIC, is delivered by the NET_RX softirq. The kernel runs
// softirqs right away, unless their load makes it hand them to ksoftirqd —
// a normal-priority thread that then waits its turn behind every busy
// process on that CPU. With both CPUs saturated, the heartbeats of a
// realtime daemon were delayed past the 15 ms dead interval while neither
// daemon's event loop was late (BENCHMARKS.md, finding 13): the receiving
// daemon runs on time but the packet it waits for does not arrive. On a
// PREEMPT_RT kernel softirqs are threads at realtime priority already;
// this does the same for ksoftirqd.
//
// The change is system-wide and outlives the daemon (kernel threads are
// shared by every namespace): the caller logs it, and
// node.realtime_softirq: false leaves the threads alone. prio 0 changes
// nothing.
func BoostSoftirq(prio int) (int, error) {
	if prio <= 0 {
		return 0, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("softirq threads: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(prio)}
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + p.Name() + "/comm")
		if err != nil || !isSoftirqThread(string(comm)) {
			continue
		}
		if err := unix.SchedSetAttr(pid, attr, 0); err != nil {
			if err == unix.ESRCH {
				continue
			}
			return n, fmt.Errorf("softirq thread %d to SCHED_FIFO %d (set node.realtime_softirq: false to leave them): %w", pid, prio, err)
		}
		n++
	}
	return n, nil
}

// isSoftirqThread reports whether comm (as /proc/PID/comm gives it) names
// a ksoftirqd thread.
func isSoftirqThread(comm string) bool {
	comm = strings.TrimSpace(comm)
	rest, ok := strings.CutPrefix(comm, "ksoftirqd/")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.Atoi(rest)
	return err == nil
}
