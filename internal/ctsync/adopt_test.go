package ctsync

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// TestSinkAdoptsAfterRestart: a standby's daemon restarts with its kernel
// table intact. The full copy that follows is reconciled with the kernel:
// entries the kernel holds as replicated are not written again, a changed
// one is, and neither one the copy lacks nor the unit's own connection is
// deleted, even at promotion. The negative control is the first life:
// there every entry is written.
func TestSinkAdoptsAfterRestart(t *testing.T) {
	b := newNS(t, "adopt")
	for _, args := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "addr", "add", "10.250.0.1/32", "dev", "lo"}} {
		if _, err := b.Exec(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	cb := ctConn(t, b.NsHandle)
	fl := sampleFlows()
	replicated := append(genFlows(400, 0), fl["tcp4-snat"], fl["tcp4-dnat-snat-mark"], fl["udp6-zone"], fl["icmp4-snat"], fl["sctp"], fl["gre"])
	put := func(k *Sink, flows []conntrack.Flow) {
		for _, f := range flows {
			k.Put(TableConntrack, Key(f), EncodeFlow(nil, f))
		}
	}
	open := func() *Sink {
		k, err := OpenSink(b.NsHandle, testLogger(t), SinkOptions{Mode: Inject})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	// First life: the full copy is written.
	first := open()
	first.Reset(TableConntrack)
	put(first, replicated)
	if err := first.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := first.Stats(); s.Created != uint64(len(replicated)) || s.Unchanged != 0 || s.Failed != 0 {
		t.Fatalf("first life: %+v, want %d created", s, len(replicated))
	}
	first.Close()

	// Meanwhile: the unit's own connection, and an entry the copy will
	// not bring (one the ACTIVE lacks: ended meanwhile, or never known to a
	// half-synchronised ACTIVE).
	own := conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured, netip.MustParseAddr("10.250.0.1"),
		netip.MustParseAddr("10.250.0.2"), 7481, 40000, 600, 0)
	own.ProtoInfo = tcpInfo(3, 7, 0x03, 0x03)
	unsent := genFlows(1, 9000)
	createFlows(t, cb, append(unsent, own))

	// Second life: the same copy, one entry changed.
	second := open()
	defer second.Close()
	second.Reset(TableConntrack)
	changed := replicated[7]
	changed.Mark = 0x42
	again := append([]conntrack.Flow{}, replicated...)
	again[7] = changed
	put(second, again)
	if err := second.Flush(); err != nil {
		t.Fatal(err)
	}
	s := second.Stats()
	t.Logf("second life: %+v", s)
	if s.Adopted != uint64(len(replicated)+1) {
		t.Errorf("adopted %d kernel entries, want %d (the replicated ones and the unsent one, not the unit's own)", s.Adopted, len(replicated)+1)
	}
	if s.Unchanged != uint64(len(replicated)-1) || s.Created+s.Updated+s.Recreated != 1 || s.Failed != 0 {
		t.Errorf("second life wrote %d/%d/%d (created/updated/recreated), left %d unchanged; want 1 written, %d unchanged",
			s.Created, s.Updated, s.Recreated, s.Unchanged, len(replicated)-1)
	}
	if got := dumpFlows(t, cb)[string(Key(changed))]; got.Mark != 0x42 {
		t.Errorf("the changed entry has mark %#x in the kernel, want 0x42", got.Mark)
	}

	// The copy is complete, then the unit is promoted: the entry the copy
	// did not bring back is left alone (this run did not write it).
	second.CopyComplete()
	if err := second.Flush(); err != nil {
		t.Fatal(err)
	}
	ps, err := second.Promote(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ps.Deleted != 0 {
		t.Errorf("promotion deleted %d entries, want 0", ps.Deleted)
	}
	if err := second.Flush(); err != nil {
		t.Fatal(err)
	}
	want := keyed(again)
	want[string(Key(own))] = own
	want[string(Key(unsent[0]))] = unsent[0]
	if d := diffTables(want, dumpFlows(t, cb)); d != "" {
		t.Fatalf("table after promotion (-want +got):\n%s", d)
	}
	// Adopted entries get their replicated timeouts at promotion too.
	for k, f := range dumpFlows(t, cb) {
		if k != string(Key(own)) && f.Timeout > max(want[k].Timeout, 30)+60 {
			t.Errorf("entry %v kept the standby timeout (%d s) after promotion", f.TupleOrig, f.Timeout)
			break
		}
	}
}

// BenchmarkSinkAdopt: the dump that reconciles a full copy, on a table of
// 200,000 connections; "raw" only reads the kernel's dump (its own cost).
//
//	go test ./internal/ctsync -run '^$' -bench SinkAdopt -benchtime 3x
func BenchmarkSinkAdopt(b *testing.B) {
	ns := newNS(b, "badopt")
	createFlows(b, ctConn(b, ns.NsHandle), genFlows(200000, 0))
	k, err := OpenSink(ns.NsHandle, testLogger(b), SinkOptions{Mode: Inject})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	b.Run("raw", func(b *testing.B) {
		for range b.N {
			var m msgBuf
			c := k.conns[0]
			seq := c.nextSeq()
			appendDump(&m, seq, subsysCT)
			n := 0
			if err := c.dump(m.b, seq, func(nlMsg) error { n++; return nil }); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*b.N), "ns/entry")
		}
	})
	b.Run("adopt", func(b *testing.B) {
		for range b.N {
			st, err := k.adoptKernel()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(st.len()*b.N), "ns/entry")
		}
	})
}

// BenchmarkSinkFullCopy: a standby's daemon restarted with 200,000
// connections in its kernel receives them all again (Reset, Puts) and
// flushes: the dump, the comparison, no write.
//
//	go test ./internal/ctsync -run '^$' -bench SinkFullCopy -benchtime 3x
func BenchmarkSinkFullCopy(b *testing.B) {
	ns := newNS(b, "bcopy")
	flows := genFlows(200000, 0)
	createFlows(b, ctConn(b, ns.NsHandle), flows)
	keys, vals := make([][]byte, len(flows)), make([][]byte, len(flows))
	for i, f := range flows {
		keys[i], vals[i] = Key(f), EncodeFlow(nil, f)
	}
	b.ResetTimer()
	for range b.N {
		k, err := OpenSink(ns.NsHandle, testLogger(b), SinkOptions{Mode: Inject})
		if err != nil {
			b.Fatal(err)
		}
		k.Reset(TableConntrack)
		for i := range keys {
			k.Put(TableConntrack, keys[i], vals[i])
		}
		if err := k.Flush(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if s := k.Stats(); s.Unchanged != uint64(len(flows)) {
			b.Fatalf("stats %+v: want every entry unchanged", s)
		}
		k.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(len(flows)*b.N), "ns/entry")
}

// TestSinkAdoptsPublished: the unit was ACTIVE a moment ago and becomes a
// standby. The full copy from the new ACTIVE is reconciled with the table
// its own Source last reported, without reading the kernel's table: the
// entries it reported are not written again, a changed one and one it
// never reported are. Negative control: a record too old to trust is not
// used, and the kernel's table is dumped as before.
func TestSinkAdoptsPublished(t *testing.T) {
	b := newNS(t, "adoptpub")
	cb := ctConn(t, b.NsHandle)
	reported := genFlows(300, 0)
	createFlows(t, cb, reported)

	src, err := OpenSource(b.NsHandle, testLogger(t), SourceOptions{ResyncInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	ready := make(chan struct{})
	src.opts.Ready = func() { close(ready) }
	if src.Published() != nil {
		t.Fatal("Published before Run: want nil")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, st.apply) }()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the Source never said its initial dump was in")
	}
	if n := st.len(TableConntrack); n != len(reported) {
		t.Fatalf("Ready with %d of %d entries handed over", n, len(reported))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pub := src.Published()
	_ = src.Close()
	if pub == nil || pub.Len() != len(reported) {
		t.Fatalf("Published: %v, want %d entries", pub, len(reported))
	}

	// The copy: what the Source reported, one entry changed, one new.
	copyOf := func() (keys, vals [][]byte) {
		st.mu.Lock()
		defer st.mu.Unlock()
		for k, v := range st.tables[TableConntrack] {
			keys, vals = append(keys, []byte(k)), append(vals, []byte(v))
		}
		return keys, vals
	}
	changed := reported[11]
	changed.Mark = 0x42
	fresh := genFlows(1, 9000)[0]
	run := func(p *Published) SinkStats {
		k, err := OpenSink(b.NsHandle, testLogger(t), SinkOptions{Mode: Inject})
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		k.AdoptPublished(p)
		k.Reset(TableConntrack)
		// The changed entry replaces its reported value in the copy (one
		// Put per key, as a copy sends: two would be merged or written
		// one after the other, depending on when the writer wakes).
		keys, vals := copyOf()
		for i := range keys {
			if string(keys[i]) == string(Key(changed)) {
				vals[i] = EncodeFlow(nil, changed)
			}
			k.Put(TableConntrack, keys[i], vals[i])
		}
		k.Put(TableConntrack, Key(fresh), EncodeFlow(nil, fresh))
		if err := k.Flush(); err != nil {
			t.Fatal(err)
		}
		return k.Stats()
	}

	s := run(pub)
	t.Logf("with the published record: %+v", s)
	if s.KernelDumps != 0 {
		t.Errorf("the kernel's table was read %d times, want 0", s.KernelDumps)
	}
	if s.Unchanged != uint64(len(reported)-1) || s.Created+s.Updated+s.Recreated != 2 || s.Failed != 0 {
		t.Errorf("wrote %d/%d/%d (created/updated/recreated), %d unchanged, %d failed; want 2 written, %d unchanged",
			s.Created, s.Updated, s.Recreated, s.Unchanged, s.Failed, len(reported)-1)
	}
	kernel := dumpFlows(t, cb)
	if got, ok := kernel[string(Key(changed))]; !ok || got.Mark != 0x42 {
		t.Errorf("the changed entry is %+v in the kernel, want mark 0x42", got)
	}
	if _, ok := kernel[string(Key(fresh))]; !ok {
		t.Error("the entry the record lacked was not written")
	}

	// Negative control: too old, so the kernel is read.
	pub.at = time.Now().Add(-2 * publishedMaxAge)
	if s := run(pub); s.KernelDumps != 1 {
		t.Errorf("an old record: the kernel's table was read %d times, want 1 (%+v)", s.KernelDumps, s)
	}
}
