package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// ForeignRT is the CPU time that realtime (SCHED_FIFO/SCHED_RR) processes
// not started by this benchmark used during a run. The benchmark's daemons
// run at a realtime priority too, so such processes (another lab's daemons,
// say) take the CPU from them the way nothing at normal priority can: a
// result measured beside them says little about the daemon under test.
type ForeignRT struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	// Top lists the busiest, e.g. "tandem run --config /run/tandem/lab/x/fw-a.yaml (pid 123, SCHED_RR/50): 41.2 s".
	Top []string `json:"top,omitempty"`
}

// rtWatch samples /proc every interval and adds up the CPU time of foreign
// realtime processes.
type rtWatch struct {
	l    *lab.Lab
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	ticks map[int]uint64 // pid -> last utime+stime seen
	used  map[int]uint64 // pid -> ticks used since the start
	desc  map[int]string
}

func startRTWatch(l *lab.Lab, interval time.Duration) *rtWatch {
	w := &rtWatch{l: l, stop: make(chan struct{}), done: make(chan struct{}),
		ticks: map[int]uint64{}, used: map[int]uint64{}, desc: map[int]string{}}
	w.sample(true)
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				w.sample(false)
				return
			case <-t.C:
				w.sample(false)
			}
		}
	}()
	return w
}

// result stops the watch and returns what it saw.
func (w *rtWatch) result() *ForeignRT {
	if w == nil {
		return nil
	}
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	const hz = 100 // USER_HZ
	r := &ForeignRT{}
	type e struct {
		pid int
		t   uint64
	}
	var es []e
	for pid, t := range w.used {
		r.CPUSeconds += float64(t) / hz
		if t > 0 {
			es = append(es, e{pid, t})
		}
	}
	r.CPUSeconds = round2(r.CPUSeconds)
	sort.Slice(es, func(i, j int) bool { return es[i].t > es[j].t })
	for i, x := range es {
		if i == 5 {
			break
		}
		r.Top = append(r.Top, fmt.Sprintf("%s (pid %d): %.1f s", w.desc[x.pid], x.pid, float64(x.t)/hz))
	}
	return r
}

// ours reports whether pid belongs to this benchmark: this process, a
// process in one of the lab's namespaces, or the lab's probe agent.
func (w *rtWatch) ours(pid int, labNS map[uint64]bool, cmd string) bool {
	if pid == os.Getpid() {
		return true
	}
	var st syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && labNS[st.Ino] {
		return true
	}
	return strings.Contains(cmd, "bench probe-agent --lab "+w.l.Name())
}

func (w *rtWatch) sample(first bool) {
	labNS := map[uint64]bool{}
	for _, role := range []string{lab.RoleClient, lab.RoleFwA, lab.RoleFwB, lab.RoleServer, lab.RoleSwitch} {
		if h, err := w.l.NsHandle(role); err == nil {
			var st syscall.Stat_t
			if syscall.Fstat(int(h), &st) == nil {
				labNS[st.Ino] = true
			}
			h.Close()
		}
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fs := strings.Fields(string(b[i+1:]))
		if len(fs) < 39 {
			continue
		}
		pol, _ := strconv.Atoi(fs[38])
		if pol != 1 && pol != 2 { // SCHED_FIFO, SCHED_RR
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		ut, _ := strconv.ParseUint(fs[11], 10, 64)
		stt, _ := strconv.ParseUint(fs[12], 10, 64)
		cmdb, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmd := strings.TrimSpace(strings.ReplaceAll(string(cmdb), "\x00", " "))
		if cmd == "" || w.ours(pid, labNS, cmd) {
			continue // kernel threads (migration, watchdog) and ours
		}
		t := ut + stt
		if last, ok := w.ticks[pid]; ok && t >= last {
			w.used[pid] += t - last
		} else if !first && !ok {
			w.used[pid] += 0 // first seen now: count from here
		}
		w.ticks[pid] = t
		if _, ok := w.desc[pid]; !ok {
			prio, _ := strconv.Atoi(fs[37])
			if len(cmd) > 90 {
				cmd = cmd[:90] + "..."
			}
			w.desc[pid] = fmt.Sprintf("%s [%s/%d]", cmd, map[int]string{1: "SCHED_FIFO", 2: "SCHED_RR"}[pol], prio)
		}
	}
}
