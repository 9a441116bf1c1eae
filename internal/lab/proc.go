package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// procRecord identifies a daemon process beyond its PID, so that a recycled
// PID is never signalled: the command line must still be the recorded one and
// the start time (clock ticks after boot, /proc/PID/stat field 22) unchanged.
type procRecord struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"start_time"`
	Argv      []string `json:"argv"`
	Netns     string   `json:"netns"`
}

// procStat returns the state letter and start time of pid.
func procStat(pid int) (state byte, start uint64, err error) {
	return statFile(fmt.Sprintf("/proc/%d/stat", pid), pid)
}

// threadStates returns the state letter of every thread of pid.
func threadStates(pid int) ([]byte, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, t := range tasks {
		st, _, err := statFile(dir+"/"+t.Name()+"/stat", pid)
		if err != nil {
			continue // the thread ended meanwhile
		}
		out = append(out, st)
	}
	return out, nil
}

func statFile(path string, pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything;
	// the fields after the last ')' start with field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

func procCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// matches reports whether cmdline is the recorded daemon: either the daemon
// itself, or "ip netns exec <ns> <daemon...>" in the instant before ip execs.
func (r procRecord) matches(cmdline []string) bool {
	if len(r.Argv) == 0 {
		return false
	}
	if slices.Equal(cmdline, r.Argv) {
		return true
	}
	pre := []string{"ip", "netns", "exec", r.Netns}
	return len(cmdline) == len(pre)+len(r.Argv) &&
		slices.Equal(cmdline[:len(pre)], pre) && slices.Equal(cmdline[len(pre):], r.Argv)
}

// alive reports whether the recorded process still runs (zombies do not).
func (r procRecord) alive() bool {
	if r.PID <= 0 {
		return false
	}
	state, start, err := procStat(r.PID)
	if err != nil || state == 'Z' || state == 'X' {
		return false
	}
	if r.StartTime != 0 && start != r.StartTime {
		return false
	}
	cmd, err := procCmdline(r.PID)
	return err == nil && r.matches(cmd)
}

// signal sends sig to the recorded process if, and only if, it is still the
// recorded process.
func (r procRecord) signal(sig syscall.Signal) error {
	if !r.alive() {
		return errNotRunning
	}
	if err := syscall.Kill(r.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, r.PID, err)
	}
	return nil
}

var errNotRunning = errors.New("not running")

// exited reports whether every thread of the recorded process has ended.
// A zombie thread-group leader is not enough: the other threads of a Go
// process still run their exit, holding the process's sockets and file
// locks, until they get the CPU — seconds beside busy realtime neighbours,
// and a daemon restarted meanwhile cannot bind its ports (BENCHMARKS.md,
// finding 8).
func (r procRecord) exited() bool {
	if r.PID <= 0 {
		return true
	}
	state, start, err := procStat(r.PID)
	if err != nil || r.StartTime != 0 && start != r.StartTime {
		return true // reaped, or the PID is another process's now
	}
	if state != 'Z' && state != 'X' {
		return !r.alive()
	}
	states, err := threadStates(r.PID)
	if err != nil {
		return true
	}
	for _, st := range states {
		if st != 'Z' && st != 'X' {
			return false
		}
	}
	return true
}

// waitStopped polls until every thread of the process is stopped (SIGSTOP
// takes effect asynchronously: kill(2) returns before the threads stop).
func (r procRecord) waitStopped(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		states, err := threadStates(r.PID)
		if err != nil {
			return false
		}
		stopped := true
		for _, st := range states {
			if st != 'T' && st != 't' && st != 'Z' && st != 'X' {
				stopped = false
				break
			}
		}
		if stopped {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// waitGone polls until every thread of the process has ended or timeout
// passes.
func (r procRecord) waitGone(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !r.exited() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// stop asks the processes to terminate (SIGTERM), waits up to grace, then
// kills what is left (SIGKILL) and waits for it.
func stop(recs []procRecord, grace time.Duration) error {
	for _, r := range recs {
		_ = r.signal(syscall.SIGTERM)
	}
	var errs []error
	for _, r := range recs {
		if r.waitGone(grace) {
			continue
		}
		_ = r.signal(syscall.SIGKILL)
		if !r.waitGone(5 * time.Second) {
			errs = append(errs, fmt.Errorf("pid %d (%s) did not exit after SIGKILL", r.PID, strings.Join(r.Argv, " ")))
		}
	}
	return errors.Join(errs...)
}

// strays finds processes running inside namespace nsFull whose command line
// names config as its --config: daemons of this lab that were started but
// not recorded (the recording process crashed). Only a process that is both
// inside the lab's own namespace and runs the lab's own config qualifies.
func strays(nsFull, config string) ([]procRecord, error) {
	h, err := netns.GetFromName(nsFull)
	if err != nil {
		return nil, nil // no namespace, nobody in it
	}
	defer h.Close()
	var want syscall.Stat_t
	if err := syscall.Fstat(int(h), &want); err != nil {
		return nil, fmt.Errorf("stat namespace %s: %w", nsFull, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []procRecord
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err != nil ||
			st.Dev != want.Dev || st.Ino != want.Ino {
			continue
		}
		cmd, err := procCmdline(pid)
		if err != nil {
			continue
		}
		i := slices.Index(cmd, "--config")
		if i < 0 || i+1 >= len(cmd) || cmd[i+1] != config {
			continue
		}
		_, start, err := procStat(pid)
		if err != nil {
			continue
		}
		out = append(out, procRecord{PID: pid, StartTime: start, Argv: cmd, Netns: nsFull})
	}
	return out, nil
}
