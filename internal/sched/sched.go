// Package sched keeps the HA path ahead of bulk work on the CPU.
//
// A unit must send its heartbeats and notice its peer's death on time even
// while it replicates a million connections. The daemon therefore runs
// every thread under SCHED_RR (node.realtime_priority), as keepalived does,
// and bulk work (decoding and injecting conntrack entries, encoding and
// encrypting sync frames, nft set polling) gives the CPU back often: each
// bulk loop owns a Yielder and calls Pause between batches, which yields
// the CPU (sched_yield) to any other thread of the same priority — a
// heartbeat, a deadline — once it has run for YieldEvery. Without it,
// equal-priority SCHED_RR threads take turns in 100 ms quanta, and a
// 1M-entry burst made the pair fall into a storm of false failovers
// (BENCHMARKS.md, state sync findings).
//
// Why every thread at one priority: the Go runtime's garbage collector
// spin-waits on other threads (stopping the world, suspending a goroutine
// to scan its stack) and only yields with sched_yield, which never hands
// the CPU to a lower priority. Tried and measured: bulk goroutines wired
// to threads at normal priority, or at realtime priority 1 under the HA
// path's 50, each left a collector thread spinning at 50 for seconds while
// the goroutine it waited for could not run — the event loop stalled for
// up to 450 ms and the pair failed over again and again.
//
// Because a bulk goroutine the kernel has preempted still holds one of the
// Go runtime's Ps, SetRealtime also raises GOMAXPROCS by BulkReserve so the
// HA goroutines find a free P.
//
// BoostSoftirq puts the kernel's ksoftirqd threads, which deliver packets
// when the kernel defers them, just below the daemon (softirq.go).
//
// What it must never do: give threads of this process different
// priorities, or decide anything about HA state.
package sched

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// BulkReserve is how many Ps SetRealtime adds to GOMAXPROCS: about the
// number of bulk goroutines busy at once on one unit (ACTIVE: event
// reader, decoder, sync loop, channel writer; STANDBY: channel reader,
// sync loop, conntrack writer and injectors).
const BulkReserve = 4

// YieldEvery is how long a bulk loop may keep the CPU before Pause yields
// it: well under the fast profile's 5 ms heartbeat.
const YieldEvery = 500 * time.Microsecond

var (
	mu       sync.Mutex
	priority int // realtime priority in force; 0 = off
	on       atomic.Bool
)

// SetRealtime runs every thread of this process under SCHED_RR at prio.
// It may be called again at any time — threads the runtime starts while it
// walks the list are caught by the next call. prio 0 changes nothing.
func SetRealtime(prio int) error {
	if prio <= 0 {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	if priority == 0 {
		runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), runtime.NumCPU()) + BulkReserve)
	}
	priority = prio
	on.Store(true)
	err := setAllThreads(&unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)})
	if err != nil {
		return fmt.Errorf("realtime priority %d (set node.realtime_priority: 0 to run without): %w", prio, err)
	}
	return nil
}

// LeaveRealtime puts every thread of this process under SCHED_OTHER at
// nice n: for a helper process the realtime daemon starts (the snapshot
// worker), which inherits the daemon's policy. Twice, so that a thread the
// runtime starts during the first pass, from a thread still realtime, is
// caught by the second; threads started after inherit SCHED_OTHER.
func LeaveRealtime(n int) error {
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: schedOther, Nice: int32(n)}
	if err := setAllThreads(attr); err != nil {
		return err
	}
	return setAllThreads(attr)
}

// schedOther is SCHED_OTHER (SCHED_NORMAL), which x/sys/unix does not name.
const schedOther = 0

// setAllThreads applies attr to every thread of this process (Linux keeps
// scheduling attributes per thread; a new thread inherits its creator's).
func setAllThreads(attr *unix.SchedAttr) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}

// A Yielder is owned by one bulk loop. The zero value is ready.
type Yielder struct {
	since time.Time
}

// Pause yields the CPU if the loop has run for YieldEvery since its last
// pause and the process runs realtime; otherwise it costs a clock read.
func (y *Yielder) Pause() {
	if !on.Load() {
		return
	}
	now := time.Now()
	if y.since.IsZero() {
		y.since = now
		return
	}
	if now.Sub(y.since) < YieldEvery {
		return
	}
	// sched_yield(2); x/sys has no wrapper. RawSyscall: it never blocks.
	_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	y.since = time.Now()
}
