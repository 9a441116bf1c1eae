package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/control"
)

func loopbackConfig(t *testing.T, role string, port int) *config.Config {
	t.Helper()
	name := map[string]string{"primary": "fw-a", "secondary": "fw-b"}[role]
	cfg, err := config.Parse(fmt.Appendf(nil, `cluster: {id: 9, auth_key_file: /k, preempt: true, preempt_delay: 100ms}
node: {name: %s, role: %s, realtime_priority: 0}
ha_link: {interface: lo, primary_address: 127.0.0.1/8, secondary_address: 127.0.0.2/8, port: %d, heartbeat_interval: 20ms, dead_interval: 200ms}
`, name, role, port))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// recorder is a data plane that records what the loop asked of it.
type recorder struct{ calls []string }

func (r *recorder) Acquire() error { r.calls = append(r.calls, "acquire"); return nil }
func (r *recorder) Release() error { r.calls = append(r.calls, "release"); return nil }
func (r *recorder) Reannounce()    { r.calls = append(r.calls, "reannounce") }

// TestDaemonsInProcess runs both units in this process, checks the
// election and the data-plane calls, and that stopping them leaves no
// goroutine behind.
func TestDaemonsInProcess(t *testing.T) {
	before := runtime.NumGoroutine()
	port := 30000 + rand.IntN(20000)
	key := []byte(strings.Repeat("k", 32))
	ctx, cancel := context.WithCancel(context.Background())
	type unit struct {
		d    *Daemon
		dp   *recorder
		done chan error
	}
	var units []*unit
	for _, role := range []string{"primary", "secondary"} {
		dp := &recorder{}
		d, err := New(loopbackConfig(t, role, port), key, Options{DataPlane: dp})
		if err != nil {
			t.Fatal(err)
		}
		u := &unit{d: d, dp: dp, done: make(chan error, 1)}
		go func() { u.done <- d.Run(ctx) }()
		units = append(units, u)
	}
	state := func(u *unit) string {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := u.d.Control(c, control.Request{Op: "status"})
		if err != nil {
			return err.Error()
		}
		return st.(Status).State
	}
	deadline := time.Now().Add(5 * time.Second)
	for state(units[0]) != "ACTIVE" || state(units[1]) != "STANDBY" {
		if time.Now().After(deadline) {
			t.Fatalf("no election: %s %s", state(units[0]), state(units[1]))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := units[0].d.Control(ctx, control.Request{Op: "nonsense"}); err == nil {
		t.Fatal("an unknown operation must be refused")
	}
	cancel()
	for _, u := range units {
		if err := <-u.done; err != nil {
			t.Fatal(err)
		}
	}
	// Start: release leftovers; ACTIVE: acquire; shutdown: release.
	if got := strings.Join(units[0].dp.calls, ","); got != "release,acquire,release" {
		t.Errorf("primary data plane calls %q", got)
	}
	if got := strings.Join(units[1].dp.calls, ","); got != "release" {
		t.Errorf("secondary data plane calls %q", got)
	}
	deadline = time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines leaked: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
