package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/control"
)

// BenchmarkLoopbackSnapshot200MB: the snapshot figure measured the
// way it happens in production — two real daemons (SCHED_RR, their own
// processes) on loopback, a ~240 MB management database on the ACTIVE, the
// STANDBY started empty so that the ACTIVE sends it the whole database,
// and meanwhile a writer publishing a 100 KB document on the ACTIVE every
// 20 ms through the control socket (`tandem config publish`). The same
// writer then runs as long again with no snapshot in flight.
//
// Reported: snapshot-s (the transfer as the ACTIVE timed it: taken, sent,
// received, fsynced and installed), e2e-s (from the standby's start until
// it is Synchronized), the writer's publish latency p50/p99/max during the
// transfer and alone, and blocked-ms: the worst publish during the
// transfer minus the worst alone — how long the snapshot held a writer
// beyond what its own commit costs.
//
//	go test ./internal/e2e -run '^$' -bench LoopbackSnapshot200MB -benchtime 1x
func BenchmarkLoopbackSnapshot200MB(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipped: needs root (the daemons run SCHED_RR, as in production)")
	}
	p := newPair(b, 50*time.Millisecond, 150*time.Millisecond, time.Hour)
	buildStore(b, p.dbPath("fw-a"), 240, 1<<20)
	p.start(b, "fw-a")
	waitFor(b, 10*time.Second, "fw-a ACTIVE alone", func() bool { return p.state(b, "fw-a") == "ACTIVE" })

	w := startWriter(b, p.socket("fw-a"), 20*time.Millisecond)
	time.Sleep(time.Second) // the writer's first publishes, before any peer
	b.ResetTimer()
	start := time.Now()
	p.start(b, "fw-b")
	var snap *configsync.SnapshotView
	var synced time.Time
	waitFor(b, 120*time.Second, "fw-b Synchronized by a snapshot", func() bool {
		st, err := configStatus(b, p.socket("fw-a"))
		if err != nil || len(st.Peers) != 1 || st.Peers[0].LastSnapshot == nil || !st.Peers[0].LastSnapshot.OK {
			return false
		}
		snap, synced = st.Peers[0].LastSnapshot, time.Now()
		return true
	})
	b.StopTimer()
	// The transfer ran from snap.At-duration to snap.At; publishes that
	// overlap it are "during".
	end := snap.At
	begin := end.Add(-time.Duration(snap.DurationMs * float64(time.Millisecond)))
	during := w.stop().overlapping(begin, end)
	if w.err != nil {
		b.Fatalf("a publish during the transfer failed: %v", w.err)
	}

	// Let the snapshot that the writer's publishes asked for (debounced)
	// go through, then measure the writer alone for as long.
	quiet := func() bool {
		st, err := configStatus(b, p.socket("fw-a"))
		return err == nil && len(st.Peers) == 1 && !st.Peers[0].SnapshotInFlight
	}
	time.Sleep(time.Second)
	waitFor(b, 120*time.Second, "no snapshot in flight", quiet)
	aloneFor := min(end.Sub(begin), 5*time.Second) // under snapshot_max_delay
	w = startWriter(b, p.socket("fw-a"), 20*time.Millisecond)
	time.Sleep(aloneFor)
	alone := w.stop().all()
	if w.err != nil {
		b.Fatalf("a publish failed: %v", w.err)
	}
	if !quiet() {
		b.Fatal("a snapshot ran while the writer was measured alone: the baseline is void")
	}
	if len(during) == 0 || len(alone) == 0 {
		b.Fatalf("publishes during the transfer: %d, alone: %d", len(during), len(alone))
	}
	q := func(l []time.Duration, f float64) float64 {
		return float64(l[min(len(l)-1, int(float64(len(l))*f))]) / float64(time.Millisecond)
	}
	b.ReportMetric(snap.DurationMs/1000, "snapshot-s")
	b.ReportMetric(synced.Sub(start).Seconds(), "e2e-s")
	b.ReportMetric(float64(snap.Size)/(1<<20), "MB")
	b.ReportMetric(q(during, 0.5), "during-p50-ms")
	b.ReportMetric(q(during, 0.99), "during-p99-ms")
	b.ReportMetric(q(during, 1), "during-max-ms")
	b.ReportMetric(q(alone, 0.5), "alone-p50-ms")
	b.ReportMetric(q(alone, 1), "alone-max-ms")
	b.ReportMetric(q(during, 1)-q(alone, 1), "blocked-ms")
	b.Logf("%d publishes during the %.2f s transfer, %d alone", len(during), snap.DurationMs/1000, len(alone))
}

// writer publishes a 100 KB document on a unit every interval through its
// control socket and records each call's start and latency.
type writer struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	calls  []writerCall
	err    error
}

type writerCall struct {
	at  time.Time
	lat time.Duration
}

func startWriter(t testing.TB, socket string, every time.Duration) *writer {
	w := &writer{stopCh: make(chan struct{})}
	doc := make([]byte, 100<<10)
	for i := range doc {
		doc[i] = byte('a' + i%26)
	}
	w.wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-w.stopCh:
				return
			case <-tick.C:
			}
			doc[i%len(doc)]++
			args, _ := json.Marshal(configsync.PublishArgs{Category: "definitions", Name: fmt.Sprintf("writer-%d", i%10), Content: string(doc), Author: "bench"})
			at := time.Now()
			var r configsync.PublishResult
			err := control.Call(context.Background(), socket, control.Request{Op: "config.publish", Args: args}, &r)
			w.mu.Lock()
			if err != nil && w.err == nil {
				w.err = err
			}
			w.calls = append(w.calls, writerCall{at, time.Since(at)})
			w.mu.Unlock()
		}
	})
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *writer) stop() *writer {
	select {
	case <-w.stopCh:
	default:
		close(w.stopCh)
	}
	w.wg.Wait()
	return w
}

// overlapping returns the sorted latencies of the calls that overlap
// [begin, end]; it fails on a publish error.
func (w *writer) overlapping(begin, end time.Time) []time.Duration {
	var l []time.Duration
	for _, c := range w.calls {
		if c.at.Before(end) && c.at.Add(c.lat).After(begin) {
			l = append(l, c.lat)
		}
	}
	slices.Sort(l)
	return l
}

func (w *writer) all() []time.Duration {
	return w.overlapping(time.Time{}, time.Now().Add(time.Hour))
}
