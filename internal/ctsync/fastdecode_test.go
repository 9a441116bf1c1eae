package ctsync

import (
	"encoding/binary"
	"fmt"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ti-mo/conntrack"
)

// Differential tests of decodeEventFast against ti-mo's decoder
// (decodeEventTiMo): on every message, both fail or both succeed with
// reflect.DeepEqual results.

// kernelFlowOpts says which optional attributes appendKernelFlow writes.
type kernelFlowOpts struct {
	acct      bool // counters and timestamps (destroy events, dumps)
	secctx    string
	labelMask bool
	natRange  bool // a CTA_NAT_SRC, which ti-mo ignores
	extra     bool // attributes ti-mo ignores (mark mask, status mask, secmark)
}

// appendKernelFlow appends a ctnetlink conntrack message laid out as the
// kernel's ctnetlink_conntrack_event and ctnetlink_fill_info write it,
// with every attribute of f that ti-mo decodes.
func appendKernelFlow(m *msgBuf, typ uint8, flags uint16, seq uint32, f *conntrack.Flow, o kernelFlowOpts) {
	off := m.begin(subsysCT, typ, flags, seq, family(f.TupleOrig.IP.SourceAddress))
	m.tuple(ctaTupleOrig, f.TupleOrig)
	m.tuple(ctaTupleReply, f.TupleReply)
	if f.Zone != 0 {
		m.be16(ctaZone, f.Zone)
	}
	m.be32(ctaID, f.ID)
	m.be32(ctaStatus, uint32(f.Status))
	if o.acct {
		for i, c := range []conntrack.Counter{f.CountersOrig, f.CountersReply} {
			n := m.nest(uint16(ctaCountersOrig + i))
			m.be64(ctaCountersPackets, c.Packets)
			m.be64(ctaCountersBytes, c.Bytes)
			m.endNest(n)
		}
		if !f.Timestamp.Start.IsZero() {
			n := m.nest(ctaTimestamp)
			m.be64(ctaTimestampStart, uint64(f.Timestamp.Start.UnixNano()))
			if !f.Timestamp.Stop.IsZero() {
				m.be64(ctaTimestampStop, uint64(f.Timestamp.Stop.UnixNano()))
			}
			m.endNest(n)
		}
	}
	m.be32(ctaTimeout, f.Timeout)
	switch pi := f.ProtoInfo; {
	case pi.TCP != nil:
		p := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoTCP)
		m.u8(ctaTCPState, pi.TCP.State)
		m.u8(ctaTCPWscaleOrig, pi.TCP.OriginalWindowScale)
		m.u8(ctaTCPWscaleRepl, pi.TCP.ReplyWindowScale)
		m.be16(ctaTCPFlagsOrig, pi.TCP.OriginalFlags)
		m.be16(ctaTCPFlagsRepl, pi.TCP.ReplyFlags)
		m.endNest(n)
		m.endNest(p)
	case pi.SCTP != nil:
		p := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoSCTP)
		m.u8(ctaSCTPState, pi.SCTP.State)
		m.be32(ctaSCTPVtagOrig, pi.SCTP.VTagOriginal)
		m.be32(ctaSCTPVtagRepl, pi.SCTP.VTagReply)
		m.endNest(n)
		m.endNest(p)
	case pi.DCCP != nil:
		p := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoDCCP)
		m.u8(ctaDCCPState, pi.DCCP.State)
		m.u8(ctaDCCPRole, pi.DCCP.Role)
		m.be64(ctaDCCPHandSeq, pi.DCCP.HandshakeSeq)
		m.endNest(n)
		m.endNest(p)
	}
	if f.Helper.Name != "" || len(f.Helper.Info) != 0 {
		n := m.nest(ctaHelp)
		m.cstr(ctaHelpName, f.Helper.Name)
		if len(f.Helper.Info) != 0 {
			m.attr(ctaHelpInfo, f.Helper.Info)
		}
		m.endNest(n)
	}
	if o.secctx != "" {
		n := m.nest(ctaSecCtx)
		m.cstr(ctaSecCtxName, o.secctx)
		m.endNest(n)
	}
	if f.Mark != 0 {
		m.be32(ctaMark, f.Mark)
	}
	if len(f.Labels) != 0 {
		m.attr(ctaLabels, f.Labels)
		if o.labelMask {
			m.attr(ctaLabelsMask, f.LabelsMask)
		}
	}
	if tupleFilled(f.TupleMaster) {
		m.tuple(ctaTupleMaster, f.TupleMaster)
	}
	for i, s := range []conntrack.SequenceAdjust{f.SeqAdjOrig, f.SeqAdjReply} {
		if s.Position == 0 && s.OffsetBefore == 0 && s.OffsetAfter == 0 {
			continue
		}
		n := m.nest(uint16(ctaSeqAdjOrig + i))
		m.be32(ctaSeqAdjPos, s.Position)
		m.be32(ctaSeqAdjBefore, s.OffsetBefore)
		m.be32(ctaSeqAdjAfter, s.OffsetAfter)
		m.endNest(n)
	}
	if f.SynProxy != (conntrack.SynProxy{}) {
		n := m.nest(ctaSynproxy)
		m.be32(ctaSynproxyISN, f.SynProxy.ISN)
		m.be32(ctaSynproxyITS, f.SynProxy.ITS)
		m.be32(ctaSynproxyTSOff, f.SynProxy.TSOff)
		m.endNest(n)
	}
	if o.natRange {
		m.natRange(ctaNatSrc, f.TupleReply.IP.DestinationAddress, f.TupleReply.Proto.DestinationPort, true)
	}
	if o.extra {
		m.be32(21, 0xffffffff) // CTA_MARK_MASK
		m.be32(26, 0xffffffff) // CTA_STATUS_MASK
		m.be32(17, 7)          // CTA_SECMARK
		m.attr(0, nil)         // CTA_UNSPEC, empty
	}
	m.be32(ctaUse, f.Use)
	m.end(off)
}

// appendKernelExpect appends a ctnetlink expectation message laid out as
// ctnetlink_exp_dump_expect writes it.
func appendKernelExpect(m *msgBuf, typ uint8, flags uint16, seq uint32, e *conntrack.Expect) {
	off := m.begin(subsysCTExp, typ, flags, seq, family(e.TupleMaster.IP.SourceAddress))
	m.tuple(ctaExpTuple, e.Tuple)
	m.tuple(ctaExpMask, e.Mask)
	m.tuple(ctaExpMaster, e.TupleMaster)
	if tupleFilled(e.NAT.Tuple) {
		n := m.nest(ctaExpNAT)
		var dir uint32
		if e.NAT.Direction {
			dir = 1
		}
		m.be32(ctaExpNATDir, dir)
		m.tuple(ctaExpNATTuple, e.NAT.Tuple)
		m.endNest(n)
	}
	m.be32(ctaExpTimeout, e.Timeout)
	m.be32(ctaExpID, e.ID)
	m.be32(ctaExpFlags, e.Flags)
	m.be32(ctaExpClass, e.Class)
	if e.HelpName != "" {
		m.cstr(ctaExpHelpName, e.HelpName)
	}
	if e.Function != "" {
		m.cstr(ctaExpFn, e.Function)
	}
	if e.Zone != 0 {
		m.be16(ctaExpZone, e.Zone)
	}
	m.end(off)
}

// richFlows are sampleFlows with the attributes only the kernel reports
// (IDs, counters, timestamps) filled in.
func richFlows() map[string]conntrack.Flow {
	out := map[string]conntrack.Flow{}
	i := 0
	for name, f := range sampleFlows() {
		i++
		f.ID, f.Use = uint32(0x9e3779b9*i), uint32(i%3+1)
		f.CountersOrig = conntrack.Counter{Packets: uint64(i), Bytes: uint64(i) << 33}
		f.CountersReply = conntrack.Counter{Direction: true, Packets: 3, Bytes: 180}
		f.Timestamp.Start = time.Unix(1700000000, int64(i))
		f.Timestamp.Stop = time.Unix(1700000100, 5)
		if len(f.Labels) != 0 {
			f.LabelsMask = make([]byte, len(f.Labels))
			for j := range f.LabelsMask {
				f.LabelsMask[j] = 0xff
			}
		}
		out[name] = f
	}
	f := benchDecodeFlow()
	out["bench"] = f
	return out
}

// benchDecodeFlow is a typical TCP/IPv4 connection behind SNAT.
func benchDecodeFlow() conntrack.Flow {
	f := benchFlow(3)
	f.Status |= conntrack.StatusConfirmed | conntrack.StatusSrcNATDone | conntrack.StatusDstNATDone
	f.ID, f.Use = 0x1234abcd, 1
	f.Timeout = 431999
	return f
}

// decodeCorpus returns ctnetlink messages of every kind the package sees:
// kernel-like events and dump answers of every sample flow and
// expectation (with and without accounting and the attributes ti-mo
// ignores), and the package's own requests (creates with NAT ranges,
// updates, timeouts, deletes, gets, dumps), each under every message type
// and flag combination that matters.
func decodeCorpus() []nlMsg {
	var m msgBuf
	seq := uint32(100)
	for _, f := range richFlows() {
		for _, o := range []kernelFlowOpts{{}, {acct: true, secctx: "system_u:object_r:unlabeled_t:s0", labelMask: true, natRange: true, extra: true}} {
			for _, typ := range []uint8{msgNew, msgDelete} {
				seq++
				appendKernelFlow(&m, typ, 0, seq, &f, o)
			}
		}
		seq++
		appendFlowMsg(&m, seq, &f, flowMsgOpts{create: true, timeout: 30, liberal: true, ack: true})
		seq++
		appendFlowMsg(&m, seq, &f, flowMsgOpts{timeout: 30})
		seq++
		appendFlowTimeout(&m, seq, f.TupleOrig, f.Zone, 60, false)
		seq++
		appendFlowDelete(&m, seq, f.TupleOrig, f.Zone, true)
		seq++
		appendFlowGet(&m, seq, f.TupleOrig, f.Zone)
	}
	for _, e := range sampleExpects() {
		e.ID = 0xabcdef
		seq++
		appendKernelExpect(&m, msgNew, 0, seq, &e)
		seq++
		appendKernelExpect(&m, msgDelete, 0, seq, &e)
		seq++
		appendExpectMsg(&m, seq, &e, true)
		seq++
		appendExpectDelete(&m, seq, e.Tuple, e.Zone, false)
	}
	seq++
	appendDump(&m, seq, subsysCT)
	seq++
	appendDump(&m, seq, subsysCTExp)

	var out []nlMsg
	_ = eachMsg(m.b, func(msg nlMsg) error {
		msg.data = append([]byte(nil), msg.data...)
		out = append(out, msg)
		// The same attributes as every message type and flag
		// combination: new/update/destroy/get of either subsystem, and
		// another subsystem.
		for _, typ := range []uint16{subsysCT<<8 | msgNew, subsysCT<<8 | msgGet, subsysCT<<8 | msgDelete,
			subsysCTExp<<8 | msgNew, subsysCTExp<<8 | msgDelete, subsysCTExp<<8 | msgGet, 3<<8 | msgNew} {
			for _, flags := range []uint16{nlmFRequest, nlmFMulti, nlmFCreate | nlmFExcl} {
				if typ == msg.typ && flags == msg.flags {
					continue
				}
				c := msg
				c.typ, c.flags = typ, flags
				out = append(out, c)
			}
		}
		return nil
	})
	return out
}

// sameDecode decodes m both ways and reports how they differ ("" when
// both fail, or both succeed with reflect.DeepEqual events).
func sameDecode(m nlMsg) string {
	want, werr := decodeEventTiMo(m)
	got, gerr := decodeEventFast(m)
	if (werr == nil) != (gerr == nil) {
		return fmt.Sprintf("ti-mo error %v, fast error %v", werr, gerr)
	}
	if werr != nil || reflect.DeepEqual(want, got) {
		return ""
	}
	d := cmp.Diff(want, got, addrCmp)
	if d == "" { // time.Time's Equal method hides a location
		d = fmt.Sprintf("%#v\n%#v", want, got)
	}
	return "events differ (-ti-mo +fast):\n" + d
}

func TestDecodeEventCorpus(t *testing.T) {
	ok, failed := 0, 0
	for _, m := range decodeCorpus() {
		if d := sameDecode(m); d != "" {
			t.Errorf("type %#x flags %#x data %x:\n%s", m.typ, m.flags, m.data, d)
			continue
		}
		if _, err := decodeEventFast(m); err == nil {
			ok++
		} else {
			failed++
		}
	}
	t.Logf("%d messages decoded, %d refused, by both decoders", ok, failed)
	if ok < 100 || failed < 100 {
		t.Errorf("corpus too thin: %d decoded, %d refused", ok, failed)
	}
}

// TestDecodeEventValues checks the fast decoder against the values that
// were encoded, not only against ti-mo.
func TestDecodeEventValues(t *testing.T) {
	for name, f := range richFlows() {
		var m msgBuf
		appendKernelFlow(&m, msgDelete, 0, 1, &f, kernelFlowOpts{acct: true, secctx: "ctx", labelMask: true, natRange: true, extra: true})
		var ev conntrack.Event
		var err error
		_ = eachMsg(m.b, func(msg nlMsg) error { ev, err = decodeEventFast(msg); return nil })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := f
		want.SecurityContext = "ctx\x00" // ti-mo keeps the NUL
		want.CountersReply.Direction = true
		if ev.Type != conntrack.EventDestroy || ev.Flow == nil {
			t.Fatalf("%s: decoded as %+v", name, ev)
		}
		if !reflect.DeepEqual(*ev.Flow, want) {
			t.Errorf("%s (-want +got):\n%s", name, cmp.Diff(want, *ev.Flow, addrCmp))
		}
	}
	for name, e := range sampleExpects() {
		var m msgBuf
		appendKernelExpect(&m, msgNew, 0, 1, &e)
		var ev conntrack.Event
		var err error
		_ = eachMsg(m.b, func(msg nlMsg) error { ev, err = decodeEventFast(msg); return nil })
		if err != nil || ev.Type != conntrack.EventExpNew || ev.Expect == nil {
			t.Fatalf("%s: decoded as %+v, %v", name, ev, err)
		}
		if !reflect.DeepEqual(*ev.Expect, e) {
			t.Errorf("%s (-want +got):\n%s", name, cmp.Diff(e, *ev.Expect, addrCmp))
		}
	}
}

// TestDecodeEventMalformed: every truncation of every corpus message, and
// every byte of it replaced by a few values, decode the same way (or fail
// both ways).
func TestDecodeEventMalformed(t *testing.T) {
	corpus := decodeCorpus()
	n, bad, decoded := 0, 0, 0
	check := func(m nlMsg, what string) {
		n++
		if _, err := decodeEventFast(m); err == nil {
			decoded++
		}
		if d := sameDecode(m); d != "" {
			bad++
			if bad <= 10 {
				t.Errorf("%s: type %#x flags %#x data %x:\n%s", what, m.typ, m.flags, m.data, d)
			}
		}
	}
	buf := make([]byte, 0, 4096)
	seen := map[string]bool{}
	for _, m := range corpus {
		if seen[string(m.data)] { // a type variant of a message done
			continue
		}
		seen[string(m.data)] = true
		for l := range len(m.data) {
			c := m
			c.data = m.data[:l]
			check(c, fmt.Sprintf("truncated to %d", l))
		}
		for p := range len(m.data) {
			orig := m.data[p]
			for _, v := range []byte{0, 0xff, orig ^ 0x80, orig + 1, orig - 4} {
				if v == orig {
					continue
				}
				buf = append(buf[:0], m.data...)
				buf[p] = v
				c := m
				c.data = buf
				check(c, fmt.Sprintf("byte %d = %#x", p, v))
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d malformed messages decoded differently", bad, n)
	}
	t.Logf("%d malformed messages decoded alike (%d of them without error)", n, decoded)
}

// TestDecodeEventEdgeCases covers what ti-mo does with odd but well-formed
// layouts.
func TestDecodeEventEdgeCases(t *testing.T) {
	f := benchDecodeFlow()
	tuple := func(typ uint16, tu conntrack.Tuple) []byte {
		var m msgBuf
		m.tuple(typ, tu)
		return m.b
	}
	raw := func(typ uint16, data []byte) []byte {
		var m msgBuf
		m.attr(typ, data)
		return m.b
	}
	nested := func(typ uint16, children ...[]byte) []byte {
		var m msgBuf
		n := m.nest(typ)
		for _, c := range children {
			m.b = append(m.b, c...)
		}
		m.endNest(n)
		return m.b
	}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	zeroLen := func(typ uint16) []byte { // an attribute header with length 0
		return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, 0), typ)
	}
	tcp := nested(ctaProtoinfo, nested(ctaProtoinfoTCP, raw(ctaTCPState, []byte{3})))
	cases := map[string][][]byte{
		"minimal":                   {tuple(ctaTupleOrig, f.TupleOrig)},
		"empty":                     {},
		"tuple repeated":            {tuple(ctaTupleOrig, f.TupleOrig), tuple(ctaTupleOrig, f.TupleReply)},
		"tuple zone kept":           {tuple(ctaTupleOrig, conntrack.Tuple{IP: f.TupleOrig.IP, Proto: f.TupleOrig.Proto, Zone: 9}), tuple(ctaTupleOrig, f.TupleReply)},
		"tuple not nested":          {raw(ctaTupleOrig, tuple(ctaTupleIP, f.TupleOrig)[4:])},
		"tuple one child":           {nested(ctaTupleOrig, raw(ctaTupleZone, []byte{0, 1}))},
		"type above 255":            {raw(0x100|ctaTimeout, be32(5))},
		"type flags":                {raw(0x4000|ctaTimeout, be32(5)), raw(0x8000|ctaMark, be32(6))},
		"protoinfo twice":           {tcp, tcp},
		"protoinfo extra child":     {nested(ctaProtoinfo, zeroLen(7), nested(ctaProtoinfoTCP, raw(ctaTCPState, []byte{3})))},
		"protoinfo zero-len first":  {nested(ctaProtoinfo, zeroLen(ctaProtoinfoTCP), nested(ctaProtoinfoTCP, raw(ctaTCPState, []byte{3})))},
		"helper empty":              {nested(ctaHelp)},
		"helper info empty":         {nested(ctaHelp, raw(ctaHelpInfo, nil))},
		"helper name NULs":          {nested(ctaHelp, raw(ctaHelpName, []byte("ftp\x00\x00\x00")))},
		"helper odd name":           {nested(ctaHelp, raw(ctaHelpName, []byte("x\x00y\x00")))},
		"labels empty":              {raw(ctaLabels, nil)},
		"labels zero-len":           {zeroLen(ctaLabels)},
		"timeout zero-len":          {zeroLen(ctaTimeout)},
		"timeout wrong size":        {raw(ctaTimeout, []byte{1, 2})},
		"unknown zero-len":          {zeroLen(99)},
		"counter reply not nested":  {raw(ctaCountersReply, nil)},
		"counter pad":               {nested(ctaCountersOrig, raw(ctaCountersPad, []byte{1}), raw(ctaCountersPackets, make([]byte, 8)))},
		"counter one child":         {nested(ctaCountersOrig, raw(ctaCountersPackets, make([]byte, 8)))},
		"timestamp pad":             {nested(ctaTimestamp, raw(3, nil))},
		"seqadj reply empty":        {nested(ctaSeqAdjReply)},
		"seqadj reply":              {nested(ctaSeqAdjReply, raw(ctaSeqAdjPos, be32(1)))},
		"secctx two":                {nested(ctaSecCtx, raw(ctaSecCtxName, []byte("a")), raw(ctaSecCtxName, []byte("bb\x00")))},
		"ip tuple three":            {nested(ctaTupleOrig, nested(ctaTupleIP, raw(ctaIPv4Src, []byte{1, 2, 3, 4}), raw(ctaIPv4Dst, []byte{1, 2, 3, 4}), raw(ctaIPv4Dst, []byte{1, 2, 3, 5})), raw(ctaTupleZone, []byte{0, 1}))},
		"ip tuple mixed":            {nested(ctaTupleOrig, nested(ctaTupleIP, raw(ctaIPv4Src, make([]byte, 16)), raw(ctaIPv6Dst, []byte{1, 2, 3, 4})), raw(ctaTupleZone, []byte{0, 1}))},
		"ip tuple one plus zerolen": {nested(ctaTupleOrig, nested(ctaTupleIP, raw(ctaIPv4Src, []byte{1, 2, 3, 4}), zeroLen(ctaIPv4Dst)), raw(ctaTupleZone, []byte{0, 1}))},
		"proto icmp then icmpv6":    {nested(ctaTupleOrig, nested(ctaTupleProto, raw(ctaProtoNum, []byte{1}), raw(ctaProtoNum, []byte{58})), raw(ctaTupleZone, []byte{0, 1}))},
		"unpadded last":             {raw(ctaLabels, []byte{1})[:5]},
		"short header at end":       {raw(ctaMark, be32(1)), {4, 0}},
		"length past end":           {{200, 0, ctaMark, 0, 1, 2, 3, 4}},
		"length 2":                  {{2, 0, ctaMark, 0}},
	}
	for name, attrs := range cases {
		for _, typ := range []uint16{subsysCT<<8 | msgNew, subsysCTExp<<8 | msgNew} {
			data := []byte{afInet, 0, 0, 0}
			for _, a := range attrs {
				data = append(data, a...)
			}
			m := nlMsg{typ: typ, flags: nlmFCreate, data: data}
			if d := sameDecode(m); d != "" {
				t.Errorf("%s (type %#x): %s", name, typ, d)
			}
		}
	}
}

// TestDecodeEventAllocs: one allocation per typical connection event
// (ti-mo makes dozens).
func TestDecodeEventAllocs(t *testing.T) {
	m := benchDecodeMsg()
	if n := testing.AllocsPerRun(1000, func() { _, _ = decodeEventFast(m) }); n > 1 {
		t.Errorf("decodeEventFast allocates %v times per event, want 1", n)
	}
}

// benchDecodeMsg is the update event of a typical TCP/IPv4 connection
// behind SNAT, as the kernel sends it.
func benchDecodeMsg() nlMsg {
	f := benchDecodeFlow()
	var m msgBuf
	appendKernelFlow(&m, msgNew, 0, 0, &f, kernelFlowOpts{})
	var out nlMsg
	_ = eachMsg(m.b, func(msg nlMsg) error { out = msg; return nil })
	return out
}

// BenchmarkDecodeEvent compares the decoders on a typical TCP/IPv4 NAT
// event:
//
//	go test ./internal/ctsync -run '^$' -bench DecodeEvent -benchmem
func BenchmarkDecodeEvent(b *testing.B) {
	m := benchDecodeMsg()
	for _, d := range []struct {
		name string
		fn   func(nlMsg) (conntrack.Event, error)
	}{{"fast", decodeEventFast}, {"ti-mo", decodeEventTiMo}} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(m.data) + nlmsgHdrLen))
			for b.Loop() {
				ev, err := d.fn(m)
				if err != nil || ev.Flow == nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzDecodeEvent: decodeEventFast never panics, fails exactly when ti-mo
// fails, and otherwise decodes to the same event.
func FuzzDecodeEvent(f *testing.F) {
	for i, m := range decodeCorpus() {
		if i%4 == 0 {
			f.Add(m.typ, m.flags, m.data)
		}
	}
	f.Fuzz(func(t *testing.T, typ, flags uint16, data []byte) {
		if d := sameDecode(nlMsg{typ: typ, flags: flags, data: data}); d != "" {
			t.Fatal(d)
		}
	})
}

// TestDecodeEventKernel captures what a real kernel sends (events of new,
// updated and destroyed connections and expectations with accounting and
// timestamps on, dump answers, get answers; entries made through
// ctnetlink and by real traffic) and decodes every message both ways.
func TestDecodeEventKernel(t *testing.T) {
	ns := newNS(t, "dec")
	if _, err := ns.Exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1",
		"net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"); err != nil {
		t.Fatal(err)
	}
	ev, err := dialNetfilter(ns.NsHandle, 8<<20, 1, 2, 3, 4, 5, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	c := ctConn(t, ns.NsHandle)

	var msgs []nlMsg
	keep := func(m nlMsg) error {
		if s := m.typ >> 8; s == subsysCT || s == subsysCTExp {
			m.data = append([]byte(nil), m.data...)
			msgs = append(msgs, m)
		}
		return nil
	}

	// Entries made through ctnetlink: the sample flows this kernel takes
	// (one at a time: some need modules the kernel may lack), an
	// expectation, and more connections.
	fl := sampleFlows()
	ftp, exp := ftpPair()
	var made []conntrack.Flow
	for name, f := range fl {
		if name == "ftp-control" || name == "ftp-data" {
			continue
		}
		var m msgBuf
		seq := c.nextSeq()
		appendFlowMsg(&m, seq, &f, flowMsgOpts{create: true, timeout: f.Timeout, ack: true})
		if err := c.request(m.b, seq, nil); err != nil {
			t.Logf("kernel refused %s: %v", name, err)
			continue
		}
		made = append(made, f)
	}
	more := genFlows(20, 0)
	createFlows(t, c, append([]conntrack.Flow{ftp}, more...))
	made = append(append(made, ftp), more...)
	createExpect(t, c, exp)

	// Updates.
	upd := fl["tcp4-snat"]
	upd.Mark = 0x77
	upd.ProtoInfo.TCP.State = 5
	var m msgBuf
	seq := c.nextSeq()
	appendFlowMsg(&m, seq, &upd, flowMsgOpts{timeout: 60, ack: true})
	if err := c.request(m.b, seq, nil); err != nil {
		t.Fatalf("update: %v", err)
	}

	// Real traffic, on loopback (tracked once a ct rule registers the
	// conntrack hooks in the namespace), with counters.
	_, nftErr := exec.LookPath("nft")
	_, pingErr := exec.LookPath("ping")
	traffic := nftErr == nil && pingErr == nil
	if traffic {
		if _, err := ns.Exec("nft", "add table inet dec; add chain inet dec out { type filter hook output priority 0; }; add rule inet dec out ct state new counter"); err != nil {
			t.Fatal(err)
		}
		_, _ = ns.Exec("ping", "-c", "2", "-i", "0.2", "-W", "1", "127.0.0.1")
		_, _ = ns.Exec("ping", "-6", "-c", "1", "-W", "1", "::1")
	}

	// Dumps and gets.
	for _, subsys := range []uint8{subsysCT, subsysCTExp} {
		m.b = m.b[:0]
		seq := c.nextSeq()
		appendDump(&m, seq, subsys)
		if err := c.dump(m.b, seq, keep); err != nil {
			t.Fatalf("dump: %v", err)
		}
	}
	for _, f := range made {
		m.b = m.b[:0]
		seq := c.nextSeq()
		appendFlowGet(&m, seq, f.TupleOrig, f.Zone)
		if err := c.request(m.b, seq, keep); err != nil {
			t.Fatalf("get %v: %v", f.TupleOrig, err)
		}
	}

	// Destroy events (with counters and timestamps), the expectation's
	// with the master's.
	deleteFlows(t, c, made)

	ev.setReadDeadline(time.Now().Add(time.Second))
	for {
		b, err := ev.recv()
		if err != nil {
			break
		}
		if err := eachMsg(b, keep); err != nil {
			t.Fatal(err)
		}
	}

	kinds := map[string]int{}
	for _, m := range msgs {
		d := sameDecode(m)
		if d != "" {
			t.Errorf("type %#x flags %#x data %x:\n%s", m.typ, m.flags, m.data, d)
			continue
		}
		// Answers to dumps and gets are decoded through decodeAs.
		for _, subsys := range []uint16{subsysCT, subsysCTExp} {
			a := m
			a.typ = subsys<<8 | msgNew
			a.flags &^= nlmFCreate | nlmFExcl
			if d := sameDecode(a); d != "" {
				t.Errorf("as %d: type %#x flags %#x data %x:\n%s", subsys, m.typ, m.flags, m.data, d)
			}
		}
		e, err := decodeEventFast(m)
		if err != nil {
			t.Errorf("kernel message type %#x refused: %v (%x)", m.typ, err, m.data)
			continue
		}
		kinds[e.Type.String()]++
		if f := e.Flow; f != nil {
			if f.CountersOrig.Packets != 0 {
				kinds["with counters"]++
			}
			if !f.Timestamp.Start.IsZero() {
				kinds["with timestamps"]++
			}
			if f.Helper.Name != "" {
				kinds["with helper"]++
			}
			if f.ProtoInfo.TCP != nil {
				kinds["with TCP info"]++
			}
		}
	}
	t.Logf("%d kernel messages decoded alike: %v", len(msgs), kinds)
	for _, k := range []string{"EventNew", "EventUpdate", "EventDestroy", "EventExpNew", "EventExpDestroy", "with timestamps", "with helper", "with TCP info", "with counters"} {
		if kinds[k] == 0 && (k != "with counters" || traffic) {
			t.Errorf("no kernel message %s captured", k)
		}
	}
}
