package daemon

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/config"
)

// stallDaemon is the part of a Daemon that stalled and noteSend use, at
// the fast profile's 5/15 ms, with no stolen time.
func stallDaemon() *Daemon {
	cfg := &config.Config{}
	cfg.HALink.HeartbeatInterval = config.Duration{Duration: 5 * time.Millisecond}
	cfg.HALink.DeadInterval = config.Duration{Duration: 15 * time.Millisecond}
	return &Daemon{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		steal: stealMeter{read: func() (time.Duration, bool) { return 0, true }, interval: 15 * time.Millisecond}}
}

// TestHeldLoopGivesTheDeadlineGrace: a deadline that fires on time right
// after this unit's loop was held (its heartbeats went out late) is held
// back one dead interval, as a late deadline is — the peer, frozen with
// this unit, had no chance to be heard. Seen in the stability runs: both
// units' loops held 13-18 ms at once, and the one whose deadline then
// fired on time took over (BENCHMARKS.md, finding 19). Once only: the
// deadline after the grace is judged.
func TestHeldLoopGivesTheDeadlineGrace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const hb = 5 * time.Millisecond

	// Negative control: heartbeats on time, the deadline on time — judged.
	d := stallDaemon()
	for i := range 5 {
		d.noteSend(t0.Add(time.Duration(i) * hb))
	}
	d.next = t0.Add(21 * time.Millisecond)
	if d.stalled(d.next) {
		t.Fatal("a deadline on time after heartbeats on time was held back")
	}

	// The loop held 14 ms: the heartbeat after the one at 20 ms went out at 39 ms.
	d = stallDaemon()
	for i := range 5 {
		d.noteSend(t0.Add(time.Duration(i) * hb))
	}
	d.noteSend(t0.Add(39 * time.Millisecond))
	d.next = t0.Add(40 * time.Millisecond)
	if !d.stalled(d.next) {
		t.Fatal("a deadline right after a held loop was judged at once")
	}
	if want := t0.Add(55 * time.Millisecond); !d.next.Equal(want) {
		t.Errorf("deadline moved to %v, want a dead interval later (%v)", d.next.Sub(t0), want.Sub(t0))
	}
	if d.stalled(d.next) {
		t.Error("the deadline after the grace was held back again")
	}

	// Held right now: the deadline fires on time but a heartbeat is overdue.
	d = stallDaemon()
	d.noteSend(t0)
	d.next = t0.Add(9 * time.Millisecond)
	if !d.stalled(d.next) {
		t.Error("a deadline while a heartbeat is overdue was judged at once")
	}
}
