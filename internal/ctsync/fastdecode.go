package ctsync

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/ti-mo/conntrack"
)

// A hand-written ctnetlink decoder (see "Decoding" in the package
// documentation for why). decodeEventFast produces exactly the
// conntrack.Event that ti-mo/conntrack's Event.Unmarshal produces for the
// same message, and fails exactly when it fails: it walks the attributes
// the way mdlayher/netlink's AttributeDecoder does (same layout checks,
// zero-length attributes returned but not counted, attribute types
// truncated to 8 bits like ti-mo's enums, integers big-endian) and
// applies ti-mo's rules (child counts, nested flags, unknown children,
// repeated attributes merging into the same field). The differential
// tests and FuzzDecodeEvent hold it to that. Only the error values differ
// (sentinels here, wrapped descriptions there).
//
// A connection or expectation takes one allocation (a TCP connection's
// protocol info shares its Flow's). Only labels, helper data, the
// security context, names other than the kernel's helpers and DCCP or
// SCTP protocol info take more; payloads are copied, as ti-mo does (the
// caller's receive buffer is reused).

var (
	errCTShort  = errors.New("ctsync: ctnetlink message shorter than its nfgenmsg header")
	errCTType   = errors.New("ctsync: unknown ctnetlink message type")
	errCTNotCT  = errors.New("ctsync: not a conntrack or expectation message")
	errCTFlow   = errors.New("ctsync: malformed ctnetlink connection")
	errCTExpect = errors.New("ctsync: malformed ctnetlink expectation")
)

const nlaTypeNested = 0x8000 // NLA_F_NESTED

// nlAttrs iterates over a block of netlink attributes like
// netlink.AttributeDecoder, without allocating.
//
// AttributeDecoder first checks the block's layout and counts its
// attributes (Len), and ti-mo checks that count before reading them. Here
// a single pass does both: next counts, and the count is checked once the
// block has been read. As any error fails the whole message, and reading
// a whole block with next finds every fault of layout that
// NewAttributeDecoder would have found, the outcome is the same; only
// decodeProtoInfo, which reads one attribute of its block, checks the
// layout first (openAttrs).
type nlAttrs struct {
	b    []byte
	i    int
	n    int    // attributes read with a non-zero length
	typ  uint16 // the current attribute's type, flags included
	data []byte // the current attribute's payload (aliases b)
	bad  bool   // an error ended the iteration (AttributeDecoder.Err)
}

// openAttrs checks b's layout as netlink.NewAttributeDecoder does (every
// attribute header must be complete; lengths below 4 count as 4, lengths
// past the end are left for next to refuse) and returns the number of
// attributes with a non-zero length (AttributeDecoder.Len).
func openAttrs(b []byte) (int, bool) {
	n := 0
	for i := 0; i < len(b); {
		if len(b)-i < 4 {
			return 0, false
		}
		l := int(binary.NativeEndian.Uint16(b[i:]))
		if l != 0 {
			n++
		}
		if l < 4 {
			l = 4
		}
		i += (l + 3) &^ 3
	}
	return n, true
}

// next moves to the next attribute. A zero-length attribute is returned
// (with no payload); a length of 1 to 3 or past the end is an error.
func (a *nlAttrs) next() bool {
	if a.bad || a.i >= len(a.b) {
		return false
	}
	r := a.b[a.i:]
	if len(r) < 4 {
		a.bad = true
		return false
	}
	l := int(binary.NativeEndian.Uint16(r))
	a.typ = binary.NativeEndian.Uint16(r[2:])
	switch {
	case l > len(r), l != 0 && l < 4:
		a.bad = true
		return false
	case l == 0:
		a.data = r[4:4]
		a.i += 4
	default:
		a.data = r[4:l]
		a.i += (l + 3) &^ 3
		a.n++
	}
	return true
}

// kind is the attribute type as ti-mo matches it: flags masked off and
// truncated to its uint8 enums.
func (a *nlAttrs) kind() uint8 { return uint8(a.typ) }

func (a *nlAttrs) nested() bool { return a.typ&nlaTypeNested != 0 }

// The integer readers fail (end the iteration) on a payload of the wrong
// size, as AttributeDecoder's do.

func (a *nlAttrs) u8() uint8 {
	if len(a.data) != 1 {
		a.bad = true
		return 0
	}
	return a.data[0]
}

func (a *nlAttrs) u16() uint16 {
	if len(a.data) != 2 {
		a.bad = true
		return 0
	}
	return binary.BigEndian.Uint16(a.data)
}

func (a *nlAttrs) u32() uint32 {
	if len(a.data) != 4 {
		a.bad = true
		return 0
	}
	return binary.BigEndian.Uint32(a.data)
}

func (a *nlAttrs) u64() uint64 {
	if len(a.data) != 8 {
		a.bad = true
		return 0
	}
	return binary.BigEndian.Uint64(a.data)
}

// bytes copies the payload (never nil, as AttributeDecoder.Bytes).
func (a *nlAttrs) bytes() []byte {
	return append(make([]byte, 0, len(a.data)), a.data...)
}

// str is AttributeDecoder.String: the payload without trailing NULs.
// Names the kernel uses are not allocated again.
func (a *nlAttrs) str() string {
	b := a.data
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	if s, ok := knownNames[string(b)]; ok {
		return s
	}
	return string(b)
}

// knownNames are the conntrack helpers and expectation functions of
// Linux.
var knownNames = func() map[string]string {
	m := map[string]string{}
	for _, s := range []string{"", "ftp", "tftp", "irc", "sip", "amanda", "pptp", "sane", "snmp", "snmp_trap",
		"netbios-ns", "RAS", "Q.931", "H.245", "nat-follow-master"} {
		m[s] = s
	}
	return m
}()

// decodeEventFast decodes one ctnetlink message like decodeEventTiMo.
func decodeEventFast(m nlMsg) (conntrack.Event, error) {
	if len(m.data) < nfgenLen {
		return conntrack.Event{}, errCTShort
	}
	ad := nlAttrs{b: m.data[nfgenLen:]}
	var ev conntrack.Event
	switch m.typ >> 8 {
	case subsysCT:
		switch uint8(m.typ) {
		case msgNew:
			if m.flags&(nlmFCreate|nlmFExcl) != 0 {
				ev.Type = conntrack.EventNew
			} else {
				ev.Type = conntrack.EventUpdate
			}
		case msgDelete:
			ev.Type = conntrack.EventDestroy
		default:
			return conntrack.Event{}, errCTType
		}
		box := new(flowBox)
		if !box.decode(ad) {
			return conntrack.Event{}, errCTFlow
		}
		ev.Flow = &box.f
	case subsysCTExp:
		switch uint8(m.typ) {
		case msgNew:
			ev.Type = conntrack.EventExpNew
		case msgDelete:
			ev.Type = conntrack.EventExpDestroy
		default:
			return conntrack.Event{}, errCTType
		}
		x := new(conntrack.Expect)
		if !decodeExpectAttrs(x, ad) {
			return conntrack.Event{}, errCTExpect
		}
		ev.Expect = x
	default:
		return conntrack.Event{}, errCTNotCT
	}
	return ev, nil
}

// flowBox holds a Flow and the TCP protocol info it points to, in one
// allocation.
type flowBox struct {
	f   conntrack.Flow
	tcp conntrack.ProtoInfoTCP
}

// decode is ti-mo's Flow.unmarshal.
func (box *flowBox) decode(ad nlAttrs) bool {
	f := &box.f
	for ad.next() {
		ok := true
		switch ad.kind() {
		// Nested attributes (Flow.unmarshalNested).
		case ctaTupleOrig:
			ok = ad.nested() && decodeTuple(&f.TupleOrig, ad.data)
		case ctaTupleReply:
			ok = ad.nested() && decodeTuple(&f.TupleReply, ad.data)
		case ctaTupleMaster:
			ok = ad.nested() && decodeTuple(&f.TupleMaster, ad.data)
		case ctaProtoinfo:
			ok = ad.nested() && box.decodeProtoInfo(ad.data)
		case ctaHelp:
			ok = ad.nested() && decodeHelper(&f.Helper, ad.data)
		case ctaCountersOrig:
			ok = ad.nested() && decodeCounter(&f.CountersOrig, ad.data)
		case ctaCountersReply:
			f.CountersReply.Direction = true
			ok = ad.nested() && decodeCounter(&f.CountersReply, ad.data)
		case ctaSecCtx:
			ok = ad.nested() && decodeSecCtx(&f.SecurityContext, ad.data)
		case ctaTimestamp:
			ok = ad.nested() && decodeTimestamp(&f.Timestamp, ad.data)
		case ctaSeqAdjOrig:
			ok = ad.nested() && decodeSeqAdj(&f.SeqAdjOrig, ad.data)
		case ctaSeqAdjReply:
			f.SeqAdjReply.Direction = true
			ok = ad.nested() && decodeSeqAdj(&f.SeqAdjReply, ad.data)
		case ctaSynproxy:
			ok = ad.nested() && decodeSynProxy(&f.SynProxy, ad.data)
		// Plain attributes; the others (NAT ranges, mark mask...) are
		// ignored.
		case ctaTimeout:
			f.Timeout = ad.u32()
		case ctaID:
			f.ID = ad.u32()
		case ctaUse:
			f.Use = ad.u32()
		case ctaMark:
			f.Mark = ad.u32()
		case ctaZone:
			f.Zone = ad.u16()
		case ctaLabels:
			f.Labels = ad.bytes()
		case ctaLabelsMask:
			f.LabelsMask = ad.bytes()
		case ctaStatus:
			f.Status = conntrack.Status(ad.u32())
		}
		if !ok {
			return false
		}
	}
	return !ad.bad
}

// Attribute numbers not in ctmsg.go.
const (
	ctaCountersOrig  = 9
	ctaCountersReply = 10
	ctaUse           = 11
	ctaID            = 12
	ctaSecCtx        = 19
	ctaTimestamp     = 20
	ctaLabelsMask    = 23

	ctaCountersPackets = 1
	ctaCountersBytes   = 2
	ctaCountersPad     = 5

	ctaTimestampStart = 1
	ctaTimestampStop  = 2

	ctaSecCtxName = 1

	ctaExpID = 5
)

// decodeTuple is ti-mo's Tuple.unmarshal: into t (a repeated tuple
// attribute overwrites what it carries), at least two children, each an
// IP tuple, a protocol tuple or a zone.
func decodeTuple(t *conntrack.Tuple, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaTupleIP:
			var ip conntrack.IPTuple
			if !decodeIPTuple(&ip, ad.data) {
				return false
			}
			t.IP = ip
		case ctaTupleProto:
			var p conntrack.ProtoTuple
			if !decodeProtoTuple(&p, ad.data) {
				return false
			}
			t.Proto = p
		case ctaTupleZone:
			t.Zone = ad.u16()
		default:
			return false
		}
	}
	return !ad.bad && ad.n >= 2
}

// decodeIPTuple: exactly two counted children, every one a 4- or 16-byte
// address.
func decodeIPTuple(ip *conntrack.IPTuple, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		a, ok := netip.AddrFromSlice(ad.data)
		if !ok {
			return false
		}
		switch ad.kind() {
		case ctaIPv4Src, ctaIPv6Src:
			ip.SourceAddress = a
		case ctaIPv4Dst, ctaIPv6Dst:
			ip.DestinationAddress = a
		default:
			return false
		}
	}
	return !ad.bad && ad.n == 2
}

func decodeProtoTuple(p *conntrack.ProtoTuple, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaProtoNum:
			p.Protocol = ad.u8()
			switch p.Protocol {
			case 1:
				p.ICMPv4 = true
			case 58:
				p.ICMPv6 = true
			}
		case ctaProtoSrcPort:
			p.SourcePort = ad.u16()
		case ctaProtoDstPort:
			p.DestinationPort = ad.u16()
		case ctaProtoICMPID, ctaProtoICMP6ID:
			p.ICMPID = ad.u16()
		case ctaProtoICMPType, ctaProtoICMP6Typ:
			p.ICMPType = ad.u8()
		case ctaProtoICMPCode, ctaProtoICMP6Cod:
			p.ICMPCode = ad.u8()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

// decodeProtoInfo is ti-mo's ProtoInfo.unmarshal: once per flow, exactly
// one counted child, of which only the first attribute is read.
func (box *flowBox) decodeProtoInfo(b []byte) bool {
	pi := &box.f.ProtoInfo
	if pi.TCP != nil || pi.DCCP != nil || pi.SCTP != nil {
		return false
	}
	if n, ok := openAttrs(b); !ok || n != 1 {
		return false
	}
	ad := nlAttrs{b: b}
	if !ad.next() {
		return !ad.bad
	}
	switch ad.kind() {
	case ctaProtoinfoTCP:
		if !decodeTCPInfo(&box.tcp, ad.data) {
			return false
		}
		pi.TCP = &box.tcp
	case ctaProtoinfoDCCP:
		var d conntrack.ProtoInfoDCCP
		if !decodeDCCPInfo(&d, ad.data) {
			return false
		}
		pi.DCCP = &d
	case ctaProtoinfoSCTP:
		var s conntrack.ProtoInfoSCTP
		if !decodeSCTPInfo(&s, ad.data) {
			return false
		}
		pi.SCTP = &s
	default:
		return false
	}
	return true
}

func decodeTCPInfo(t *conntrack.ProtoInfoTCP, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaTCPState:
			t.State = ad.u8()
		case ctaTCPWscaleOrig:
			t.OriginalWindowScale = ad.u8()
		case ctaTCPWscaleRepl:
			t.ReplyWindowScale = ad.u8()
		case ctaTCPFlagsOrig:
			t.OriginalFlags = ad.u16()
		case ctaTCPFlagsRepl:
			t.ReplyFlags = ad.u16()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

func decodeDCCPInfo(d *conntrack.ProtoInfoDCCP, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaDCCPState:
			d.State = ad.u8()
		case ctaDCCPRole:
			d.Role = ad.u8()
		case ctaDCCPHandSeq:
			d.HandshakeSeq = ad.u64()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

func decodeSCTPInfo(s *conntrack.ProtoInfoSCTP, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaSCTPState:
			s.State = ad.u8()
		case ctaSCTPVtagOrig:
			s.VTagOriginal = ad.u32()
		case ctaSCTPVtagRepl:
			s.VTagReply = ad.u32()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

// decodeHelper accepts any number of children (none too).
func decodeHelper(h *conntrack.Helper, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaHelpName:
			h.Name = ad.str()
		case ctaHelpInfo:
			h.Info = ad.bytes()
		default:
			return false
		}
	}
	return !ad.bad
}

func decodeCounter(c *conntrack.Counter, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaCountersPackets:
			c.Packets = ad.u64()
		case ctaCountersBytes:
			c.Bytes = ad.u64()
		case ctaCountersPad:
		default:
			return false
		}
	}
	return !ad.bad && ad.n >= 2
}

func decodeTimestamp(t *conntrack.Timestamp, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaTimestampStart:
			t.Start = time.Unix(0, int64(ad.u64()))
		case ctaTimestampStop:
			t.Stop = time.Unix(0, int64(ad.u64()))
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

func decodeSecCtx(s *conntrack.Security, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaSecCtxName:
			*s = conntrack.Security(ad.data) // no NUL trimming, as ti-mo
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

func decodeSeqAdj(s *conntrack.SequenceAdjust, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaSeqAdjPos:
			s.Position = ad.u32()
		case ctaSeqAdjBefore:
			s.OffsetBefore = ad.u32()
		case ctaSeqAdjAfter:
			s.OffsetAfter = ad.u32()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

func decodeSynProxy(s *conntrack.SynProxy, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaSynproxyISN:
			s.ISN = ad.u32()
		case ctaSynproxyITS:
			s.ITS = ad.u32()
		case ctaSynproxyTSOff:
			s.TSOff = ad.u32()
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}

// decodeExpectAttrs is ti-mo's Expect.unmarshal.
func decodeExpectAttrs(x *conntrack.Expect, ad nlAttrs) bool {
	for ad.next() {
		ok := true
		switch ad.kind() {
		case ctaExpMaster:
			ok = ad.nested() && decodeTuple(&x.TupleMaster, ad.data)
		case ctaExpTuple:
			ok = ad.nested() && decodeTuple(&x.Tuple, ad.data)
		case ctaExpMask:
			ok = ad.nested() && decodeTuple(&x.Mask, ad.data)
		case ctaExpNAT:
			ok = ad.nested() && decodeExpectNAT(&x.NAT, ad.data)
		case ctaExpTimeout:
			x.Timeout = ad.u32()
		case ctaExpID:
			x.ID = ad.u32()
		case ctaExpHelpName:
			x.HelpName = ad.str()
		case ctaExpZone:
			x.Zone = ad.u16()
		case ctaExpFlags:
			x.Flags = ad.u32()
		case ctaExpClass:
			x.Class = ad.u32()
		case ctaExpFn:
			x.Function = ad.str()
		}
		if !ok {
			return false
		}
	}
	return !ad.bad
}

func decodeExpectNAT(n *conntrack.ExpectNAT, b []byte) bool {
	ad := nlAttrs{b: b}
	for ad.next() {
		switch ad.kind() {
		case ctaExpNATDir:
			n.Direction = ad.u32() == 1
		case ctaExpNATTuple:
			if !decodeTuple(&n.Tuple, ad.data) {
				return false
			}
		default:
			return false
		}
	}
	return !ad.bad && ad.n != 0
}
