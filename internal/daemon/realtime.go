package daemon

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetRealtime runs every thread of this process under SCHED_RR at prio, so
// that heartbeats go out and deadlines fire on time while other work
// saturates the CPUs — with a 5 ms heartbeat, a few milliseconds of run
// queue delay is the difference between a steady pair and a false failover.
// Threads the Go runtime starts later inherit the policy from the thread
// that creates them. The kernel's RT throttling (sched_rt_runtime_us) keeps
// a runaway daemon from starving the machine.
func SetRealtime(prio int) error {
	if prio <= 0 {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("realtime priority: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			return fmt.Errorf("realtime priority %d for thread %d (set node.realtime_priority: 0 to run without): %w", prio, tid, err)
		}
	}
	return nil
}
