package ctsync

import (
	"context"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// TestSinkMirrorsSource replicates a table with every kind of entry from
// one namespace into another through Source → store → Sink, in both sink
// modes, then checks the copy entry by entry (tuples, NAT, status, mark,
// zone, TCP state, helper, master, sequence adjustment, expectations),
// follows changes, and promotes.
func TestSinkMirrorsSource(t *testing.T) {
	for _, mode := range []SinkMode{Inject, Hold} {
		t.Run(mode.String(), func(t *testing.T) { testSinkMirrors(t, mode) })
	}
}

func testSinkMirrors(t *testing.T, mode SinkMode) {
	a, b := newNS(t, "sa"), newNS(t, "sb")
	if _, err := a.Exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"); err != nil {
		t.Fatal(err)
	}
	ca, cb := ctConn(t, a.NsHandle), ctConn(t, b.NsHandle)
	fl := sampleFlows()
	ftp, exp := ftpPair()
	data := fl["ftp-data"]
	data.TupleMaster = ftp.TupleOrig
	data.SynProxy = conntrack.SynProxy{}
	data.Helper = conntrack.Helper{}
	mixed := []conntrack.Flow{fl["tcp4"], fl["tcp4-snat"], fl["tcp4-dnat-snat-mark"], fl["udp6-zone"], fl["udp6-snat"],
		fl["icmp4-snat"], fl["icmp6"], fl["sctp"], fl["gre"], ftp, data}
	createFlows(t, ca, mixed)
	createFlows(t, ca, genFlows(500, 0))
	createExpect(t, ca, exp)

	sink, err := OpenSink(b.NsHandle, testLogger(t), SinkOptions{Mode: mode, StandbyTimeout: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	src, err := OpenSource(a.NsHandle, testLogger(t), SourceOptions{ResyncInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	runSource(t, src, fanOut(st.apply, toSink(sink)))
	waitFor(t, "the initial dump", 5*time.Second, func() bool { return st.len(TableConntrack) == len(mixed)+500 })

	// More changes while the copy runs.
	createFlows(t, ca, genFlows(300, 500))
	deleteFlows(t, ca, genFlows(100, 0))
	upd := fl["tcp4"]
	upd.Mark = 0x99
	var m msgBuf
	seq := ca.nextSeq()
	appendFlowMsg(&m, seq, &upd, flowMsgOpts{timeout: 100, ack: true})
	if err := ca.request(m.b, seq, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the store to catch up", 5*time.Second, func() bool { return sameTables(dumpFlows(t, ca), st.flows(t)) })

	if mode == Inject {
		if err := sink.Flush(); err != nil {
			t.Fatal(err)
		}
		// Injected while standby: at least StandbyTimeout.
		for k, f := range dumpFlows(t, cb) {
			if f.Timeout < 47*3600 {
				t.Errorf("standby entry %x has timeout %d, want about 48h", k, f.Timeout)
				break
			}
		}
		s := sink.Stats()
		if s.Injected != st.len(TableConntrack) || s.InjectedExpect != 1 || s.Failed != 0 {
			t.Errorf("stats before promotion: %+v", s)
		}
	} else {
		if got := dumpFlows(t, cb); len(got) != 0 {
			t.Errorf("hold mode wrote %d entries before promotion", len(got))
		}
		if s := sink.Stats(); s.Held != st.len(TableConntrack) || s.HeldExpect != 1 {
			t.Errorf("stats before promotion: %+v", s)
		}
	}

	ps, err := sink.Promote(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("promote: %+v", ps)
	if ps.Failed != 0 || mode == Hold && ps.Expectations != 1 {
		t.Errorf("promote: %+v", ps)
	}
	// Timeouts are set after Promote returns, while the unit serves.
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if mode == Hold && ps.Created != len(mixed)+700+1 {
		t.Errorf("promote created %d entries, want %d", ps.Created, len(mixed)+700+1)
	}
	ka, kb := dumpFlows(t, ca), dumpFlows(t, cb)
	if d := diffTables(ka, kb); d != "" {
		t.Fatalf("standby table after promotion (-active +standby):\n%s", d)
	}
	for k, f := range kb {
		if f.Timeout > 3700 && ka[k].Timeout < 3600 {
			t.Errorf("entry %v kept its standby timeout %d after promotion", f.TupleOrig, f.Timeout)
			break
		}
		if f.TupleOrig.Proto.Protocol == 6 {
			if fl := f.ProtoInfo.TCP.OriginalFlags >> 8; fl&tcpFlagBeLiberal == 0 {
				t.Errorf("injected TCP entry %v is not liberal (flags %#x)", f.TupleOrig, fl)
				break
			}
		}
	}
	xa, xb := dumpExpects(t, ca), dumpExpects(t, cb)
	if len(xb) != 1 || len(xa) != 1 {
		t.Fatalf("expectations: active %d, standby %d", len(xa), len(xb))
	}
	for k, e := range xa {
		g, ok := xb[k]
		if !ok || g.HelpName != e.HelpName || g.Function != e.Function || g.NAT.Direction != e.NAT.Direction ||
			g.NAT.Tuple.IP.SourceAddress != e.NAT.Tuple.IP.SourceAddress || g.NAT.Tuple.Proto.SourcePort != e.NAT.Tuple.Proto.SourcePort {
			t.Errorf("expectation on the standby %+v, active %+v", g, e)
		}
	}

	// After promotion changes go straight to the kernel.
	createFlows(t, ca, genFlows(10, 5000))
	waitFor(t, "the store to catch up", 5*time.Second, func() bool { return sameTables(dumpFlows(t, ca), st.flows(t)) })
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if d := diffTables(dumpFlows(t, ca), dumpFlows(t, cb)); d != "" {
		t.Fatalf("standby table after promotion and more changes (-active +standby):\n%s", d)
	}
	t.Logf("sink stats: %+v", sink.Stats())
}

// TestSinkReset: after a Reset, only what is replicated again survives
// promotion.
func TestSinkReset(t *testing.T) {
	for _, mode := range []SinkMode{Inject, Hold} {
		t.Run(mode.String(), func(t *testing.T) {
			b := newNS(t, "rst")
			cb := ctConn(t, b.NsHandle)
			sink, err := OpenSink(b.NsHandle, testLogger(t), SinkOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			all := genFlows(400, 0)
			for _, f := range all {
				sink.Put(TableConntrack, Key(f), EncodeFlow(nil, f))
			}
			if err := sink.Flush(); err != nil {
				t.Fatal(err)
			}
			sink.Reset(TableConntrack)
			keep := all[100:250]
			for _, f := range keep {
				sink.Put(TableConntrack, Key(f), EncodeFlow(nil, f))
			}
			sink.Delete(TableConntrack, Key(keep[0]))
			keep = keep[1:]
			ps, err := sink.Promote(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("promote: %+v", ps)
			if d := diffTables(keyed(keep), dumpFlows(t, cb)); d != "" {
				t.Fatalf("table after Reset and promotion (-want +got):\n%s", d)
			}
			if mode == Inject && ps.Deleted != 250 {
				t.Errorf("promotion deleted %d stale entries, want 250", ps.Deleted)
			}
		})
	}
}

// TestSinkRecreate: a Put for a connection that exists with another NAT
// mapping or a status the kernel cannot clear replaces the entry.
func TestSinkRecreate(t *testing.T) {
	b := newNS(t, "rec")
	cb := ctConn(t, b.NsHandle)
	sink, err := OpenSink(b.NsHandle, testLogger(t), SinkOptions{Mode: Inject})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	f := sampleFlows()["tcp4-snat"]
	sink.Put(TableConntrack, Key(f), EncodeFlow(nil, f))
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	// A new connection with the same original tuple: SYN_SENT, not
	// assured, another SNAT port.
	g := f
	g.Status = conntrack.StatusSrcNAT
	g.TupleReply.Proto.DestinationPort++
	g.ProtoInfo = tcpInfo(1, 0, 0x03, 0) // window scales are known once both sides have sent a SYN
	sink.Put(TableConntrack, Key(g), EncodeFlow(nil, g))
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if d := diffTables(keyed([]conntrack.Flow{g}), dumpFlows(t, cb)); d != "" {
		t.Fatalf("after a new connection on the same tuple (-want +got):\n%s", d)
	}
	// Same NAT, but the kernel's entry is assured and the new one is not.
	h := g
	h.Status |= conntrack.StatusAssured | conntrack.StatusSeenReply
	sink.Put(TableConntrack, Key(h), EncodeFlow(nil, h))
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	sink.Put(TableConntrack, Key(g), EncodeFlow(nil, g))
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if d := diffTables(keyed([]conntrack.Flow{g}), dumpFlows(t, cb)); d != "" {
		t.Fatalf("after a status regression (-want +got):\n%s", d)
	}
	s := sink.Stats()
	t.Logf("stats %+v", s)
	if s.Recreated != 2 || s.Failed != 0 {
		t.Errorf("stats %+v, want 2 recreated", s)
	}
	// Garbage never reaches the kernel and is counted.
	sink.Put(TableConntrack, []byte{4}, []byte{1, 2, 3})
	sink.Put("nat", []byte{4}, []byte{1, 2, 3})
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := sink.Stats(); s.Failed != 1 || s.Ignored != 1 {
		t.Errorf("stats after garbage %+v", s)
	}
}
