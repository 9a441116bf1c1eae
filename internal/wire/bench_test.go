package wire_test

import (
	"testing"

	"github.com/tandem-ha/tandem/internal/wire"
)

func BenchmarkAppendParse(b *testing.B) {
	s := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	buf := make([]byte, 0, wire.HeartbeatSize)

	b.Run("Append", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(wire.HeartbeatSize)
		for b.Loop() {
			buf = s.Append(buf[:0], &hb)
		}
	})
	b.Run("Parse", func(b *testing.B) {
		pkt := s.Append(nil, &hb)
		var got wire.Heartbeat
		b.ReportAllocs()
		b.SetBytes(wire.HeartbeatSize)
		for b.Loop() {
			if err := s.Parse(pkt, testCluster, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestHotPathAllocs guards the promise in doc.go: no allocation per packet.
func TestHotPathAllocs(t *testing.T) {
	s := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	buf := make([]byte, 0, wire.HeartbeatSize)
	pkt := s.Append(nil, &hb)
	badMAC := append([]byte(nil), pkt...)
	badMAC[20] ^= 1
	var got wire.Heartbeat

	for name, fn := range map[string]func(){
		"Append":        func() { buf = s.Append(buf[:0], &hb) },
		"Parse":         func() { _ = s.Parse(pkt, testCluster, &got) },
		"Parse bad MAC": func() { _ = s.Parse(badMAC, testCluster, &got) },
		"Parse short":   func() { _ = s.Parse(pkt[:50], testCluster, &got) },
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, n)
		}
	}
}
