package lab

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

// TestMain doubles as a stand-in for the tandem daemon, which is not part of
// these tests: the lab runs `<binary> run --config <file>`, and with the test
// binary as <binary> that lands in standIn. `go test` never calls a test
// binary like that.
func TestMain(m *testing.M) {
	if len(os.Args) == 4 && os.Args[1] == "run" && os.Args[2] == "--config" {
		os.Exit(standIn(os.Args[3]))
	}
	// Stand-ins built with -race would otherwise sleep 1s when they exit.
	if os.Getenv("GORACE") == "" {
		_ = os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

// standIn reads its config, answers every connection to the control socket
// with "standin <interfaces>" (which proves which namespace it runs in) and
// exits 0 on SIGTERM.
func standIn(config string) int {
	b, err := os.ReadFile(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stand-in:", err)
		return 2
	}
	var cfg struct {
		Control struct {
			Socket string `yaml:"socket"`
		} `yaml:"control"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil || cfg.Control.Socket == "" {
		fmt.Fprintln(os.Stderr, "stand-in: bad config:", err)
		return 2
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	_ = os.Remove(cfg.Control.Socket)
	ln, err := net.Listen("unix", cfg.Control.Socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stand-in:", err)
		return 2
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var names []string
			ifs, _ := net.Interfaces()
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			fmt.Fprintf(c, "standin %s\n", strings.Join(names, ","))
			c.Close()
		}
	}()
	fmt.Println("stand-in: running with", config)
	<-sigs
	ln.Close()
	fmt.Println("stand-in: stopping")
	return 0
}

// queryStandIn is the NodeState of the tests.
func queryStandIn(ctx context.Context, socket string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// newOpts returns options for a fresh lab with a unique name, removed (and
// checked to be gone) when the test ends.
func newOpts(t *testing.T) Options {
	t.Helper()
	netnstest.RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Name:      netnstest.Prefix(),
		Profile:   "fast",
		Binary:    exe,
		RunDir:    t.TempDir(),
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		NodeState: queryStandIn,
	}
	t.Cleanup(func() {
		_ = Down(o)
		requireNoNamespaces(t, o.Name)
	})
	return o
}

// requireNoNamespaces fails if any namespace "<name>-..." exists.
func requireNoNamespaces(t *testing.T, name string) {
	t.Helper()
	all, err := listNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		if strings.HasPrefix(n, name+"-") {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
