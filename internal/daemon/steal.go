package daemon

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// Steal time: the CPU time the hypervisor gave other guests while this
// virtual machine wanted to run (/proc/stat, the "steal" column, summed
// over CPUs). A unit that was not running cannot tell a silent peer from
// one it could not hear, nor could a peer on a CPU the host took away send
// — on the lab's VM, 17% of CPU time is stolen, in pauses long enough to
// silence a unit for more than the fast profile's 15 ms dead interval.
// stalled (daemon.go) therefore gives the peer one more dead interval
// when at least a dead interval's worth of CPU time was stolen since the
// last sample.

// userHZ is the unit of /proc/stat's times (USER_HZ, 100 on every Linux
// architecture Go supports).
const userHZ = 100

// readSteal returns the machine's total steal time so far; ok is false
// where /proc/stat has no steal column (not Linux, or a kernel without it).
func readSteal() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	return parseSteal(b)
}

// parseSteal reads the steal column of /proc/stat's "cpu" line.
func parseSteal(b []byte) (time.Duration, bool) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, false
	}
	ticks, err := strconv.ParseUint(string(f[8]), 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(ticks) * time.Second / userHZ, true
}

// stealMeter samples the steal time at most once per interval and
// reports how much was stolen since the sample before the current one.
type stealMeter struct {
	read     func() (time.Duration, bool)
	interval time.Duration
	at       time.Time     // when the last sample was taken
	last     time.Duration // the last sample
}

// sample records the steal time if the last sample is older than the
// interval (called on every heartbeat sent: cheap when it does nothing).
func (m *stealMeter) sample(now time.Time) {
	if m.read == nil || now.Sub(m.at) < m.interval {
		return
	}
	if s, ok := m.read(); ok {
		m.at, m.last = now, s
	}
}

// since returns the time stolen since the last sample (0 if unknown).
func (m *stealMeter) since() time.Duration {
	if m.read == nil || m.at.IsZero() {
		return 0
	}
	s, ok := m.read()
	if !ok || s < m.last {
		return 0
	}
	return s - m.last
}
