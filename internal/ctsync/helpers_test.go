package ctsync

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// memStore is an in-memory replicated store, as internal/repl keeps it:
// the last value of every key.
type memStore struct {
	mu     sync.Mutex
	tables map[string]map[string]string
	puts   int
	dels   int
}

func newMemStore() *memStore {
	return &memStore{tables: map[string]map[string]string{TableConntrack: {}, TableExpect: {}}}
}

func (s *memStore) apply(batch []Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range batch {
		switch c.Kind {
		case Put:
			s.tables[c.Table][string(c.Key)] = string(c.Value)
			s.puts++
		case Delete:
			delete(s.tables[c.Table], string(c.Key))
			s.dels++
		}
	}
}

func (s *memStore) len(table string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tables[table])
}

func (s *memStore) get(table, key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.tables[table][key]
	return v, ok
}

// flows decodes the store's conntrack table.
func (s *memStore) flows(t testing.TB) map[string]conntrack.Flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]conntrack.Flow{}
	for k, v := range s.tables[TableConntrack] {
		f, err := DecodeFlow([]byte(v))
		if err != nil {
			t.Fatalf("store holds an undecodable value: %v", err)
		}
		out[k] = f
	}
	return out
}

// toSink returns an out function feeding a Sink.
func toSink(k *Sink) func([]Change) {
	return func(batch []Change) {
		for _, c := range batch {
			switch c.Kind {
			case Put:
				k.Put(c.Table, c.Key, c.Value)
			case Delete:
				k.Delete(c.Table, c.Key)
			}
		}
	}
}

func fanOut(outs ...func([]Change)) func([]Change) {
	return func(b []Change) {
		for _, o := range outs {
			o(b)
		}
	}
}

// runSource starts s.Run and stops it when the test ends.
func runSource(t testing.TB, s *Source, out func([]Change)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Source.Run: %v", err)
		}
		_ = s.Close()
	})
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ctConn opens a raw ctnetlink socket in ns for test setup.
func ctConn(t testing.TB, nsh netns.NsHandle) *nlConn {
	t.Helper()
	c, err := dialNetfilter(nsh, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// createFlows creates flows directly in the kernel (test setup), in
// batches; it fails the test on any error.
func createFlows(t testing.TB, c *nlConn, flows []conntrack.Flow) {
	t.Helper()
	const batch = 256
	var m msgBuf
	for i := 0; i < len(flows); i += batch {
		m.b = m.b[:0]
		part := flows[i:min(i+batch, len(flows))]
		var first uint32
		for j := range part {
			seq := c.nextSeq()
			if j == 0 {
				first = seq
			}
			appendFlowMsg(&m, seq, &part[j], flowMsgOpts{create: true, timeout: part[j].Timeout, liberal: false})
		}
		setAck(m.b)
		var ferr error
		err := c.batch(m.b, first, first+uint32(len(part))-1, func(seq uint32, e syscall.Errno) {
			if ferr == nil {
				ferr = fmt.Errorf("create %v: %w", part[seq-first].TupleOrig, e)
			}
		})
		if err == nil {
			err = ferr
		}
		if err != nil {
			t.Fatalf("create flows: %v", err)
		}
	}
}

func deleteFlows(t testing.TB, c *nlConn, flows []conntrack.Flow) {
	t.Helper()
	var m msgBuf
	const batch = 256
	for i := 0; i < len(flows); i += batch {
		m.b = m.b[:0]
		part := flows[i:min(i+batch, len(flows))]
		var first uint32
		for j := range part {
			seq := c.nextSeq()
			if j == 0 {
				first = seq
			}
			appendFlowDelete(&m, seq, part[j].TupleOrig, part[j].Zone, false)
		}
		setAck(m.b)
		if err := c.batch(m.b, first, first+uint32(len(part))-1, func(uint32, syscall.Errno) {}); err != nil {
			t.Fatalf("delete flows: %v", err)
		}
	}
}

// dumpFlows reads a namespace's conntrack table, keyed like the store.
func dumpFlows(t testing.TB, c *nlConn) map[string]conntrack.Flow {
	t.Helper()
	out := map[string]conntrack.Flow{}
	var m msgBuf
	seq := c.nextSeq()
	appendDump(&m, seq, subsysCT)
	err := c.dump(m.b, seq, func(m nlMsg) error {
		ev, err := decodeAs(m, subsysCT)
		if err != nil {
			return err
		}
		out[string(Key(*ev.Flow))] = *ev.Flow
		return nil
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

func dumpExpects(t testing.TB, c *nlConn) map[string]conntrack.Expect {
	t.Helper()
	out := map[string]conntrack.Expect{}
	var m msgBuf
	seq := c.nextSeq()
	appendDump(&m, seq, subsysCTExp)
	err := c.dump(m.b, seq, func(m nlMsg) error {
		ev, err := decodeAs(m, subsysCTExp)
		if err != nil {
			return err
		}
		out[string(ExpectKey(*ev.Expect))] = *ev.Expect
		return nil
	})
	if err != nil {
		t.Fatalf("dump expectations: %v", err)
	}
	return out
}

// essence is what must be equal between a unit's entry and its copy on
// the other unit: tuples (hence NAT), status as synchronised, mark, zone,
// TCP state and window scales, helper, master, sequence adjustments.
type essence struct {
	Orig, Reply, Master     conntrack.Tuple
	Status                  conntrack.Status
	Mark                    uint32
	Zone                    uint16
	TCPState, WSOrig, WSRep uint8
	Helper                  string
	SeqAdjOrig, SeqAdjReply conntrack.SequenceAdjust
}

func essenceOf(f conntrack.Flow) essence {
	n := normalize(f)
	e := essence{Orig: n.TupleOrig, Reply: n.TupleReply, Master: n.TupleMaster, Status: n.Status &^ conntrack.StatusHelper,
		Mark: n.Mark, Zone: n.Zone, Helper: n.Helper.Name, SeqAdjOrig: n.SeqAdjOrig, SeqAdjReply: n.SeqAdjReply}
	if t := n.ProtoInfo.TCP; t != nil {
		e.TCPState, e.WSOrig, e.WSRep = t.State, t.OriginalWindowScale, t.ReplyWindowScale
	}
	return e
}

// sameTables is diffTables(want, got) == "", fast enough to poll.
func sameTables(want, got map[string]conntrack.Flow) bool {
	if len(want) != len(got) {
		return false
	}
	for k, f := range want {
		g, ok := got[k]
		if !ok || essenceOf(f) != essenceOf(g) {
			return false
		}
	}
	return true
}

func diffTables(want, got map[string]conntrack.Flow) string {
	w, g := map[string]essence{}, map[string]essence{}
	for k, f := range want {
		w[k] = essenceOf(f)
	}
	for k, f := range got {
		g[k] = essenceOf(f)
	}
	return cmp.Diff(w, g, addrCmp)
}

// genFlows makes n distinct established TCP/IPv4 connections, every
// third one source-NATed (to a pool, so reply tuples never clash).
func genFlows(n int, base int) []conntrack.Flow {
	out := make([]conntrack.Flow, n)
	for i := range out {
		j := base + i
		c := netip.AddrFrom4([4]byte{10, 200, byte(j >> 16), byte(j >> 8)})
		s := netip.AddrFrom4([4]byte{10, 201, 0, byte(j % 7)})
		f := conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured, c, s, uint16(1024+j%60000), 443, 3600, 0)
		f.ProtoInfo = tcpInfo(3, 7, 0x23, 0x23)
		if j%3 == 0 {
			f.TupleReply.IP.DestinationAddress = netip.AddrFrom4([4]byte{198, 19, byte(j >> 16), byte(j >> 8)})
			f.TupleReply.Proto.DestinationPort = uint16(20000 + j&0xff)
			f.Status |= conntrack.StatusSrcNAT
		}
		out[i] = f
	}
	return out
}

func newNS(t testing.TB, name string) *netnstest.NS {
	netnstest.RequireRoot(t)
	return netnstest.New(t, netnstest.Prefix(), name)
}
