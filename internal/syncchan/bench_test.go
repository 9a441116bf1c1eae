package syncchan

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// BenchmarkLink measures one direction of a link over loopback, TLS
// included: the primary sends b.N frames (several per Send call), the
// secondary's consumer receives them all. MB/s counts user payload.
//
//	go test -run '^$' -bench Link -benchtime 3s ./internal/syncchan/
func BenchmarkLink(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 10} {
		b.Run(fmt.Sprintf("frame=%dKiB", size>>10), func(b *testing.B) { benchLink(b, size) })
	}
}

func benchLink(b *testing.B, size int) {
	p, s := startPair(b, func(c *Config) { c.IdleTimeout = 2 * time.Second }, func(c *Config) {
		c.IdleTimeout = 2 * time.Second
		c.EventBuffer = 1024
	})
	waitUp(b, p, s)
	batch := max(1, (256<<10)/size)
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = make([]byte, size)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()

	errc := make(chan error, 1)
	go func() {
		for sent := 0; sent < b.N; {
			n := min(batch, b.N-sent)
			err := p.l.Send(frames[:n]...)
			switch {
			case err == nil:
				sent += n
			case errors.Is(err, ErrBackpressure):
				<-p.l.Writable()
			default:
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for got := 0; got < b.N; {
		ev := <-s.l.Events()
		if ev.Kind != Frame {
			b.Fatalf("%v event: %v", ev.Kind, ev.Err)
		}
		got++
	}
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}
