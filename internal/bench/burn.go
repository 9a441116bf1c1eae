package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// Burn keeps one CPU busy until d has passed or ctx ends. It is what each
// `tandem bench burn` child runs.
func Burn(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	x := uint64(1)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for i := range 1 << 20 {
			x = x*6364136223846793005 + uint64(i)
		}
	}
	sink = x
}

var sink uint64

// burners are the CPU-burning children of a stability run.
type burners struct{ cmds []*exec.Cmd }

// startBurners starts n copies of argv, each bounded by its own duration
// argument, in their own process group, and killed by the kernel if this
// process dies first (Pdeathsig). stop kills them by PID.
func startBurners(argv []string, n int) (*burners, error) {
	if len(argv) == 0 {
		return nil, errors.New("no burner command")
	}
	b := &burners{}
	for range n {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.stop()
			return nil, fmt.Errorf("start CPU burner: %w", err)
		}
		b.cmds = append(b.cmds, cmd)
	}
	return b, nil
}

// stop kills every burner still running (by its pidfd-backed handle, so a
// recycled PID is never hit) and reaps them; it is idempotent.
func (b *burners) stop() {
	if b == nil {
		return
	}
	for _, c := range b.cmds {
		_ = c.Process.Kill()
	}
	for _, c := range b.cmds {
		_ = c.Wait()
	}
	b.cmds = nil
}
