package ctsync

import (
	"log/slog"
	"testing"
)

// BenchmarkSourceHandle is the Run goroutine's share of an event, without
// a kernel: a new-connection event of a typical TCP/IPv4 connection
// (a third SNATed, each connection distinct) decoded, filtered, recorded
// in the live set and emitted in batches. ns/op is per event.
//
//	go test ./internal/ctsync -run '^$' -bench SourceHandle -benchmem
func BenchmarkSourceHandle(b *testing.B) {
	const n = 1 << 16
	dgrams := make([][]byte, n)
	for j := range dgrams {
		f := benchFlow(j)
		f.ID = uint32(j)
		var m msgBuf
		appendKernelFlow(&m, msgNew, nlmFCreate|nlmFExcl, 0, &f, kernelFlowOpts{})
		dgrams[j] = m.b
	}
	s := &Source{
		log:     slog.New(slog.DiscardHandler),
		pset:    map[uint16]bool{},
		live:    newKeyMap[liveInfo](n),
		liveExp: newKeyMap[liveInfo](0),
	}
	s.opts.defaults()
	changes := 0
	em := &emitter{src: s, out: func(c []Change) { changes += len(c) }, max: s.opts.BatchSize}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.handle(dgrams[i], em)
		if i++; i == n {
			i = 0
		}
	}
	em.flush()
	if st := s.Stats(); st.DecodeErrors != 0 || changes == 0 {
		b.Fatalf("stats %+v, %d changes", st, changes)
	}
}
