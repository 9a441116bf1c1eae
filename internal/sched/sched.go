// Package sched keeps the HA path ahead of bulk work on the CPU.
//
// A unit must send its heartbeats and notice its peer's death on time even
// while it replicates a million connections. The daemon therefore runs
// under SCHED_RR (node.realtime_priority), as keepalived does — but only
// the threads that serve the HA path (the event loop, the heartbeat
// sockets, the Go runtime's own threads) at that priority. Bulk work
// (decoding and injecting conntrack entries, encoding and encrypting sync
// frames, nft set polling, configuration snapshots) runs on goroutines that
// call Bulk first: each is wired to an OS thread of its own at the lowest
// realtime priority (SCHED_RR 1), which the kernel preempts the moment a
// heartbeat thread — or any other realtime work on the box — wants the CPU. Measured before this split: a 1M-entry burst kept
// every daemon thread busy at the heartbeat's priority, equal-priority
// threads take turns in 100 ms quanta, and the pair fell into a storm of
// false failovers (BENCHMARKS.md, state sync findings).
//
// Why not normal priority for bulk work: the Go runtime stops the world for
// its garbage collector, and a stop waits for every running goroutine —
// including a bulk one whose thread an ordinary CPU hog has pushed off the
// CPU. Tried: with bulk threads at SCHED_OTHER and both CPUs busy with
// normal-priority loops, those stops held the event loop past the fast
// profile's 15 ms dead interval about once a minute (88 false failovers in
// 10 minutes). At realtime priority 1, bulk threads still run ahead of
// ordinary processes, so a stop completes at once. Tried too: one step
// below the HA path (49); then bulk work at a takeover kept both CPUs from
// the failover benchmark's probe agent (SCHED_RR 10) for up to 13 ms.
//
// Because a bulk goroutine that the kernel has preempted still holds one of
// the Go runtime's Ps, SetRealtime also raises GOMAXPROCS by BulkReserve so
// that the HA goroutines always find a free P — not more, because the
// garbage collector dedicates a quarter of the Ps to marking, at the HA
// path's priority: NumCPU+4 leaves it one on a 2-CPU machine.
//
// What it must never do: give a bulk thread the HA path's priority, or
// leave a bulk thread in the runtime's pool — a bulk goroutine never calls
// runtime.UnlockOSThread, so its thread ends with it. It makes no decision
// about HA state.
package sched

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// BulkReserve is how many Ps SetRealtime adds to GOMAXPROCS: about the
// number of bulk goroutines busy at once on one unit (ACTIVE: event
// reader, decoder, sync loop, channel writer; STANDBY: channel reader,
// sync loop, conntrack writer and injectors).
const BulkReserve = 4

var (
	mu       sync.Mutex
	priority int              // realtime priority in force; 0 = off
	bulk     = map[int]bool{} // thread ids that stay at normal priority
	raisedTo int              // GOMAXPROCS set by SetRealtime, 0 if never
)

// SetRealtime runs every thread of this process under SCHED_RR at prio,
// except the bulk threads. It may be called again at any time — threads
// the runtime starts while it walks the list are caught by the next call.
// prio 0 turns nothing on and changes nothing.
func SetRealtime(prio int) error {
	if prio <= 0 {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	if priority == 0 {
		raisedTo = max(runtime.GOMAXPROCS(0), runtime.NumCPU()) + BulkReserve
		runtime.GOMAXPROCS(raisedTo)
	}
	priority = prio
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("realtime priority: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil || bulk[tid] {
			continue
		}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("realtime priority %d for thread %d (set node.realtime_priority: 0 to run without): %w", prio, tid, err)
		}
	}
	return nil
}

// Bulk wires the calling goroutine to an OS thread of its own at
// BulkPriority. Call it first thing in a goroutine that does
// bulk work and let the goroutine end afterwards: the thread is never
// handed back to the runtime and ends with the goroutine. The returned
// function forgets the thread; defer it.
//
// When realtime is off, Bulk does nothing: every thread is at normal
// priority already and a dedicated thread would only cost one.
func Bulk() (done func()) {
	mu.Lock()
	defer mu.Unlock()
	if priority == 0 {
		return func() {}
	}
	runtime.LockOSThread()
	tid := unix.Gettid()
	bulk[tid] = true
	// A failure leaves the thread at the HA path's priority: slower
	// heartbeats under load, nothing worse, never an error for the caller.
	_ = unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: BulkPriority}, 0)
	return func() {
		mu.Lock()
		delete(bulk, tid)
		mu.Unlock()
	}
}

// BulkPriority is the realtime priority of bulk threads: the lowest there
// is.
const BulkPriority = 1

// Policy reports the scheduling policy of the calling thread (for tests).
func Policy() (policy uint32, prio uint32, err error) {
	a, err := unix.SchedGetAttr(unix.Gettid(), 0)
	if err != nil {
		return 0, 0, err
	}
	return a.Policy, a.Priority, nil
}
