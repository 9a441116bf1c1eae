package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/control"
)

// BenchmarkLoopbackPublishApplied100KB: two real daemons on loopback (the
// sync channel over TCP+TLS on 127.0.0.1/.2, as on an HA link); each
// iteration publishes a different 100 KB document on the ACTIVE through its
// control socket and waits until the STANDBY's configuration head has
// reached the new revision — stored and applied there (hooks included) —
// polling it every 200 µs. Reported: p50, p99 and max of publish-to-applied.
//
//	go test ./internal/e2e -run '^$' -bench PublishApplied -benchtime 200x
func BenchmarkLoopbackPublishApplied100KB(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipped: needs root (the daemons run SCHED_RR, as in production)")
	}
	p := newPair(b, 50*time.Millisecond, 150*time.Millisecond, time.Hour)
	p.start(b, "fw-a")
	time.Sleep(300 * time.Millisecond) // fw-a ACTIVE first: it holds the configuration
	p.start(b, "fw-b")
	p.waitElected(b)
	ctx := context.Background()
	head := func(n string) uint64 {
		var st configsync.Status
		if err := control.Call(ctx, p.socket(n), control.Request{Op: "config.status"}, &st); err != nil {
			b.Fatal(err)
		}
		return st.Head
	}
	rng := rand.New(rand.NewPCG(1, 2))
	doc := make([]byte, 100<<10)
	var lat, call, daemon []time.Duration
	b.ResetTimer()
	for i := range b.N {
		for j := range doc { // text-like, different every time
			doc[j] = byte('a' + rng.IntN(26))
			if j%80 == 79 {
				doc[j] = '\n'
			}
		}
		// As `tandem config publish` sends it: the document as the
		// request's payload, after the JSON arguments.
		args, _ := json.Marshal(configsync.PublishArgs{Category: "definitions", Name: fmt.Sprintf("objects-%d", i%10), Author: "bench"})
		start := time.Now()
		var r configsync.PublishResult
		if err := control.Call(ctx, p.socket("fw-a"), control.Request{Op: "config.publish", Args: args, Payload: doc}, &r); err != nil {
			b.Fatal(err)
		}
		call = append(call, time.Since(start))
		daemon = append(daemon, time.Duration(r.DurationMs*float64(time.Millisecond)))
		for head("fw-b") < r.Revision.Number {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("revision %d not applied on fw-b after 10 s", r.Revision.Number)
			}
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(call)
	slices.Sort(daemon)
	b.ReportMetric(msAt(lat, 0.5), "ms-p50")
	b.ReportMetric(msAt(lat, 0.99), "ms-p99")
	b.ReportMetric(msAt(lat, 1), "ms-max")
	// The publish call alone (control socket, ACTIVE commit and apply):
	// the part of the latency before replication starts.
	b.ReportMetric(msAt(call, 0.5), "ms-publish-p50")
	b.ReportMetric(msAt(call, 0.99), "ms-publish-p99")
	b.ReportMetric(msAt(daemon, 0.5), "ms-daemon-p50")
	b.ReportMetric(msAt(daemon, 0.99), "ms-daemon-p99")
}

// msAt is the f-quantile (0..1) of sorted latencies, in milliseconds.
func msAt(sorted []time.Duration, f float64) float64 {
	return float64(sorted[min(len(sorted)-1, int(float64(len(sorted))*f))]) / float64(time.Millisecond)
}
