package ctsync

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// ftpPair returns an FTP control connection with the ftp helper and an
// expectation of its data connection (as nf_nat_ftp makes for PORT).
func ftpPair() (conntrack.Flow, conntrack.Expect) {
	f := sampleFlows()["ftp-control"]
	f.TupleOrig.Zone, f.TupleReply.Zone, f.Zone = 0, 0, 0
	f.Labels = nil
	f.Timeout = 3600
	e := sampleExpects()["ftp-port-nat"]
	e.TupleMaster = f.TupleOrig
	return f, e
}

func createExpect(t testing.TB, c *nlConn, e conntrack.Expect) {
	t.Helper()
	var m msgBuf
	seq := c.nextSeq()
	appendExpectMsg(&m, seq, &e, true)
	if err := c.request(m.b, seq, nil); err != nil {
		t.Fatalf("create expectation: %v", err)
	}
}

// TestSourceReportsEveryChange: the initial dump, then new, updated and
// destroyed entries, with ignored ones left out. With
// nf_conntrack_events=1 the events say it all; with the default (2,
// "only when someone listens") the entries made before the Source
// subscribed never report a change, and the periodic resync catches up.
func TestSourceReportsEveryChange(t *testing.T) {
	for _, events := range []string{"1", "2"} {
		t.Run("nf_conntrack_events="+events, func(t *testing.T) { testSourceReports(t, events) })
	}
}

func testSourceReports(t *testing.T, events string) {
	ns := newNS(t, "src")
	if _, err := ns.Exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events="+events); err != nil {
		t.Fatal(err)
	}
	c := ctConn(t, ns.NsHandle)
	fl := sampleFlows()
	ftp, exp := ftpPair()
	initial := []conntrack.Flow{fl["tcp4-snat"], fl["udp6-snat"], fl["icmp4-snat"], ftp}
	lo := conntrack.NewFlow(6, conntrack.StatusSeenReply, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1"), 5000, 6000, 100, 0)
	ha := conntrack.NewFlow(17, conntrack.StatusSeenReply, netip.MustParseAddr("169.254.77.1"), netip.MustParseAddr("169.254.77.2"), 7480, 7480, 100, 0)
	hb := conntrack.NewFlow(17, conntrack.StatusSeenReply, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 40000, 7481, 100, 0)
	createFlows(t, c, append(initial, lo, ha, hb))
	createExpect(t, c, exp)

	resync := time.Duration(-1)
	if events != "1" {
		resync = 300 * time.Millisecond
	}
	src, err := OpenSource(ns.NsHandle, testLogger(t), SourceOptions{
		IgnorePrefixes: []netip.Prefix{netip.MustParsePrefix("169.254.77.0/30")},
		IgnorePorts:    []uint16{7481},
		ResyncInterval: resync,
	})
	if err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	var batches atomic.Int64
	runSource(t, src, func(b []Change) { batches.Add(1); st.apply(b) })

	// The initial dump: everything but the ignored flows.
	waitFor(t, "the initial dump", 5*time.Second, func() bool {
		return st.len(TableConntrack) == len(initial) && st.len(TableExpect) == 1
	})
	if d := diffTables(keyed(initial), st.flows(t)); d != "" {
		t.Fatalf("store after the initial dump (-kernel +store):\n%s", d)
	}
	if v, ok := st.get(TableExpect, string(ExpectKey(exp))); !ok {
		t.Fatal("expectation not reported")
	} else if e, err := DecodeExpect([]byte(v)); err != nil || e.HelpName != "ftp" || e.Function != "nat-follow-master" || !e.NAT.Direction {
		t.Fatalf("expectation reported as %+v (%v)", e, err)
	}
	if got := src.Stats(); got.Dumps < 1 || got.Filtered < 3 || got.Live != len(initial) || got.LiveExpect != 1 {
		t.Errorf("stats after the initial dump: %+v", got)
	}

	// New, updated and destroyed entries.
	more := genFlows(50, 0)
	createFlows(t, c, more)
	upd := fl["tcp4-snat"]
	upd.Mark = 0x77
	upd.ProtoInfo.TCP.State = 5 // CLOSE_WAIT
	var m msgBuf
	seq := c.nextSeq()
	appendFlowMsg(&m, seq, &upd, flowMsgOpts{timeout: 60, ack: true})
	if err := c.request(m.b, seq, nil); err != nil {
		t.Fatalf("update: %v", err)
	}
	deleteFlows(t, c, []conntrack.Flow{fl["icmp4-snat"], more[7]})

	want := func() map[string]conntrack.Flow {
		k := dumpFlows(t, c)
		delete(k, string(Key(lo)))
		delete(k, string(Key(ha)))
		delete(k, string(Key(hb)))
		return k
	}
	waitFor(t, "the changes", 5*time.Second, func() bool {
		return sameTables(want(), st.flows(t))
	})
	f := st.flows(t)[string(Key(upd))]
	if f.Mark != 0x77 || f.ProtoInfo.TCP == nil || f.ProtoInfo.TCP.State != 5 {
		t.Errorf("updated flow reported as mark %#x tcp %+v", f.Mark, f.ProtoInfo.TCP)
	}

	// Destroying the master takes its expectation away.
	deleteFlows(t, c, []conntrack.Flow{ftp})
	waitFor(t, "the expectation delete", 5*time.Second, func() bool { return st.len(TableExpect) == 0 })

	if events != "1" {
		// The periodic resync (every 300 ms here) is what catches what no
		// event reported; on a quick machine the test gets here first.
		waitFor(t, "a periodic resync", 5*time.Second, func() bool { return src.Stats().Resyncs > 0 })
	}
	s := src.Stats()
	t.Logf("stats: %+v, batches %d", s, batches.Load())
	if s.Overruns != 0 || s.DecodeErrors != 0 || events == "1" && s.Dumps != 1 || events != "1" && s.Resyncs == 0 {
		t.Errorf("unexpected stats %+v", s)
	}
	if s.Batches >= s.Puts+s.Deletes {
		t.Errorf("%d batches for %d changes: not batched", s.Batches, s.Puts+s.Deletes)
	}
}

func keyed(flows []conntrack.Flow) map[string]conntrack.Flow {
	out := map[string]conntrack.Flow{}
	for _, f := range flows {
		out[string(Key(f))] = f
	}
	return out
}

// TestSourceOverrun overflows the event socket (a tiny receive buffer) and
// the user-space queue (a slow consumer) and checks that the replicated
// copy still ends up equal to the kernel's table.
func TestSourceOverrun(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts SourceOptions
		slow time.Duration
	}{
		{"kernel", SourceOptions{ReadBuffer: 4096, BatchSize: 64}, 0},
		{"queue", SourceOptions{MaxQueue: 32 << 10, BatchSize: 64}, 2 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t, "ovr")
			c := ctConn(t, ns.NsHandle)
			base := genFlows(2000, 0)
			createFlows(t, c, base)

			src, err := OpenSource(ns.NsHandle, testLogger(t), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			st := newMemStore()
			runSource(t, src, func(b []Change) {
				st.apply(b)
				if tc.slow > 0 {
					time.Sleep(tc.slow)
				}
			})
			waitFor(t, "the initial dump", 5*time.Second, func() bool { return st.len(TableConntrack) == len(base) })

			// A storm: create, then delete half of the old and half of
			// the new entries, as fast as the kernel takes them.
			more := genFlows(20000, 2000)
			createFlows(t, c, more)
			gone := append(append([]conntrack.Flow{}, base[:1000]...), more[5000:15000]...)
			deleteFlows(t, c, gone)

			waitFor(t, "the copy to match the kernel", 30*time.Second, func() bool {
				return src.Stats().Overruns > 0 && sameTables(dumpFlows(t, c), st.flows(t))
			})
			s := src.Stats()
			t.Logf("stats: %+v", s)
			if s.Dumps < 2 {
				t.Errorf("%d dumps after %d overruns", s.Dumps, s.Overruns)
			}
		})
	}
}

func TestSourceRunTwice(t *testing.T) {
	ns := newNS(t, "twice")
	src, err := OpenSource(ns.NsHandle, nil, SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, src, func([]Change) {})
	waitFor(t, "Run to start", 2*time.Second, func() bool { return src.Stats().Dumps > 0 })
	if err := src.Run(context.Background(), func([]Change) {}); err == nil {
		t.Fatal("a second Run was accepted")
	}
}

// TestIncomplete: which update events must be completed by reading the
// entry (the kernel leaves out what did not change).
func TestIncomplete(t *testing.T) {
	fl := sampleFlows()
	full := fl["tcp4-snat"]
	noTCP := full
	noTCP.ProtoInfo = conntrack.ProtoInfo{}
	seq := fl["ftp-control"]
	seqNoAdj := seq
	seqNoAdj.SeqAdjOrig, seqNoAdj.SeqAdjReply = conntrack.SequenceAdjust{}, conntrack.SequenceAdjust{}
	related := fl["ftp-data"]
	relatedNoMaster := related
	relatedNoMaster.TupleMaster = conntrack.Tuple{}
	sctpNoInfo := fl["sctp"]
	sctpNoInfo.ProtoInfo = conntrack.ProtoInfo{}
	for _, tc := range []struct {
		name  string
		f     conntrack.Flow
		had   uint8
		known bool
		want  bool
	}{
		{"complete TCP", full, 0, true, false},
		{"TCP without protocol info", noTCP, 0, true, true},
		{"UDP", fl["udp6-snat"], 0, false, false},
		{"SCTP without protocol info", sctpNoInfo, 0, true, true},
		{"sequence adjusted, with adjustment", seq, lfLabels, true, false},
		{"sequence adjusted, without adjustment", seqNoAdj, 0, true, true},
		{"related with master", related, 0, false, false},
		{"related without master", relatedNoMaster, 0, false, true},
		{"labels gone from the event", full, lfLabels, true, true},
		{"labels never seen", full, lfLabels, false, false},
	} {
		if got := incomplete(&tc.f, tc.had, tc.known); got != tc.want {
			t.Errorf("%s: incomplete = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSourcePublishesKnownByLookup: a unit that has just become ACTIVE
// publishes the connections it mirrored as a standby by looking each one
// up — no dump, so no walk over every bucket of the kernel's hash during
// the takeover — and the full dump that follows completes the table (a
// connection the record lacked) and ends one that is gone. Negative
// control: a record too large for lookups is published by a dump.
func TestSourcePublishesKnownByLookup(t *testing.T) {
	ns := newNS(t, "lookup")
	c := ctConn(t, ns.NsHandle)
	flows := genFlows(40, 0)
	createFlows(t, c, flows)
	known := [][]byte{}
	for _, f := range flows[:30] {
		known = append(known, Key(f))
	}
	known = append(known, Key(genFlows(1, 5000)[0])) // not in the kernel

	run := func(known [][]byte) (*Source, *memStore, chan struct{}) {
		ready := make(chan struct{})
		src, err := OpenSource(ns.NsHandle, testLogger(t), SourceOptions{ResyncInterval: -1, DumpOnRequest: true,
			KnownKeys: known, Ready: func() { close(ready) }})
		if err != nil {
			t.Fatal(err)
		}
		st := newMemStore()
		runSource(t, src, st.apply)
		return src, st, ready
	}
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
		}
	}

	src, st, ready := run(known)
	time.Sleep(50 * time.Millisecond)
	if n := st.len(TableConntrack); n != 0 || src.Stats().Dumps != 0 {
		t.Fatalf("before any request: %d entries published, %d dumps; want nothing", n, src.Stats().Dumps)
	}
	src.RequestDump()
	wait(ready, "the publication by lookup")
	if n, d := st.len(TableConntrack), src.Stats().Dumps; n != 30 || d != 0 {
		t.Fatalf("published %d connections with %d dumps, want the 30 known ones by lookup and no dump", n, d)
	}
	deleteFlows(t, c, flows[:1])
	src.RequestFullDump()
	waitFor(t, "the full dump", 5*time.Second, func() bool { return st.len(TableConntrack) == 39 })
	if d := diffTables(keyed(flows[1:]), st.flows(t)); d != "" {
		t.Fatalf("after the full dump (-kernel +published):\n%s", d)
	}

	// Negative control.
	big := make([][]byte, MaxLookupPublish+1)
	for i := range big {
		big[i] = known[i%len(known)]
	}
	src2, st2, ready2 := run(big)
	src2.RequestDump()
	wait(ready2, "the publication by dump")
	if n, d := st2.len(TableConntrack), src2.Stats().Dumps; n != 39 || d != 1 {
		t.Fatalf("a record too large for lookups: %d published with %d dumps, want 39 by one dump", n, d)
	}
}
