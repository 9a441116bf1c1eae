package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/daemon"
)

// tandemBin is the binary under test, built once by TestMain.
var tandemBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tandem-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tandemBin = filepath.Join(dir, "tandem")
	args := []string{"build", "-o", tandemBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/tandem-ha/tandem/cmd/tandem")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tandem:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a daemon this test started; Cleanup kills it by PID.
type proc struct {
	cmd *exec.Cmd
	log string
}

func startDaemon(t testing.TB, config, log string) *proc {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--config", config, "--log-level", "debug"}
	// TANDEM_E2E_CPUPROFILE=dir: each daemon writes a CPU profile there,
	// and is stopped with SIGTERM so that the profile is complete.
	profDir := os.Getenv("TANDEM_E2E_CPUPROFILE")
	if profDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(profDir, fmt.Sprintf("%s-%d.cpu", filepath.Base(config), time.Now().UnixNano())))
	}
	cmd := exec.Command(tandemBin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := &proc{cmd: cmd, log: log}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if profDir != "" {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("log of %s:\n%s", config, b)
		}
	})
	return p
}

func status(t testing.TB, socket string) (daemon.Status, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var st daemon.Status
	err := control.Call(ctx, socket, control.Request{Op: "status"}, &st)
	return st, err
}

// waitFor polls cond every 2 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runCLI runs the tandem binary with args and returns its combined output
// and exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(tandemBin, args...)
	// A -race binary sleeps 1 s at exit by default: a second per CLI call.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}
