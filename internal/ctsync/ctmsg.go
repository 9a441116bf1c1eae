package ctsync

import (
	"net/netip"

	"github.com/ti-mo/conntrack"
)

// ctnetlink attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig   = 1
	ctaTupleReply  = 2
	ctaStatus      = 3
	ctaProtoinfo   = 4
	ctaHelp        = 5
	ctaNatSrc      = 6
	ctaTimeout     = 7
	ctaMark        = 8
	ctaNatDst      = 13
	ctaTupleMaster = 14
	ctaSeqAdjOrig  = 15
	ctaSeqAdjReply = 16
	ctaZone        = 18
	ctaLabels      = 22
	ctaSynproxy    = 24

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaTupleZone  = 3

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum      = 1
	ctaProtoSrcPort  = 2
	ctaProtoDstPort  = 3
	ctaProtoICMPID   = 4
	ctaProtoICMPType = 5
	ctaProtoICMPCode = 6
	ctaProtoICMP6ID  = 7
	ctaProtoICMP6Typ = 8
	ctaProtoICMP6Cod = 9

	ctaProtoinfoTCP  = 1
	ctaProtoinfoDCCP = 2
	ctaProtoinfoSCTP = 3

	ctaTCPState      = 1
	ctaTCPWscaleOrig = 2
	ctaTCPWscaleRepl = 3
	ctaTCPFlagsOrig  = 4
	ctaTCPFlagsRepl  = 5

	ctaDCCPState   = 1
	ctaDCCPRole    = 2
	ctaDCCPHandSeq = 3

	ctaSCTPState    = 1
	ctaSCTPVtagOrig = 2
	ctaSCTPVtagRepl = 3

	ctaHelpName = 1
	ctaHelpInfo = 2

	ctaNatV4Min = 1
	ctaNatV4Max = 2
	ctaNatProto = 3
	ctaNatV6Min = 4
	ctaNatV6Max = 5

	ctaProtoNatPortMin = 1
	ctaProtoNatPortMax = 2

	ctaSeqAdjPos    = 1
	ctaSeqAdjBefore = 2
	ctaSeqAdjAfter  = 3

	ctaSynproxyISN   = 1
	ctaSynproxyITS   = 2
	ctaSynproxyTSOff = 3

	ctaExpMaster   = 1
	ctaExpTuple    = 2
	ctaExpMask     = 3
	ctaExpTimeout  = 4
	ctaExpHelpName = 6
	ctaExpZone     = 7
	ctaExpFlags    = 8
	ctaExpClass    = 9
	ctaExpNAT      = 10
	ctaExpFn       = 11

	ctaExpNATDir   = 1
	ctaExpNATTuple = 2
)

const (
	afInet  = 2
	afInet6 = 10
)

// TCP window-tracking flag bits (IP_CT_TCP_FLAG_*).
const (
	tcpFlagWindowScale   = 0x01
	tcpFlagSackPerm      = 0x02
	tcpFlagCloseInit     = 0x04
	tcpFlagBeLiberal     = 0x08
	tcpFlagDataUnacked   = 0x10
	tcpFlagMaxAckSet     = 0x20
	tcpFlagChallengeAck  = 0x40
	tcpFlagSimultaneous  = 0x80
	tcpFlagsInjectable   = tcpFlagWindowScale | tcpFlagSackPerm | tcpFlagCloseInit | tcpFlagBeLiberal | tcpFlagSimultaneous
	statusInjectSettable = conntrack.StatusSeenReply | conntrack.StatusAssured | conntrack.StatusFixedTimeout
)

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return afInet
	}
	return afInet6
}

// hasPorts reports whether the kernel keys the protocol's tuples by the
// port attributes (and NAT can map them).
func hasPorts(proto uint8) bool {
	switch proto {
	case 6, 17, 33, 47, 132, 136: // TCP, UDP, DCCP, GRE (keys), SCTP, UDP-Lite
		return true
	}
	return false
}

func (m *msgBuf) tuple(typ uint16, t conntrack.Tuple) {
	n := m.nest(typ)
	ip := m.nest(ctaTupleIP)
	if t.IP.SourceAddress.Is4() && t.IP.DestinationAddress.Is4() {
		s, d := t.IP.SourceAddress.As4(), t.IP.DestinationAddress.As4()
		m.attr(ctaIPv4Src, s[:])
		m.attr(ctaIPv4Dst, d[:])
	} else {
		s, d := t.IP.SourceAddress.As16(), t.IP.DestinationAddress.As16()
		m.attr(ctaIPv6Src, s[:])
		m.attr(ctaIPv6Dst, d[:])
	}
	m.endNest(ip)
	p := m.nest(ctaTupleProto)
	m.u8(ctaProtoNum, t.Proto.Protocol)
	switch {
	case t.Proto.Protocol == 1:
		m.be16(ctaProtoICMPID, t.Proto.ICMPID)
		m.u8(ctaProtoICMPType, t.Proto.ICMPType)
		m.u8(ctaProtoICMPCode, t.Proto.ICMPCode)
	case t.Proto.Protocol == 58:
		m.be16(ctaProtoICMP6ID, t.Proto.ICMPID)
		m.u8(ctaProtoICMP6Typ, t.Proto.ICMPType)
		m.u8(ctaProtoICMP6Cod, t.Proto.ICMPCode)
	default:
		m.be16(ctaProtoSrcPort, t.Proto.SourcePort)
		m.be16(ctaProtoDstPort, t.Proto.DestinationPort)
	}
	m.endNest(p)
	if t.Zone != 0 {
		m.be16(ctaTupleZone, t.Zone)
	}
	m.endNest(n)
}

// natRange writes CTA_NAT_SRC or CTA_NAT_DST mapping to exactly addr and
// (for protocols with ports or ICMP ids) port.
func (m *msgBuf) natRange(typ uint16, addr netip.Addr, port uint16, withPort bool) {
	n := m.nest(typ)
	if addr.Is4() {
		a := addr.As4()
		m.attr(ctaNatV4Min, a[:])
		m.attr(ctaNatV4Max, a[:])
	} else {
		a := addr.As16()
		m.attr(ctaNatV6Min, a[:])
		m.attr(ctaNatV6Max, a[:])
	}
	if withPort {
		p := m.nest(ctaNatProto)
		m.be16(ctaProtoNatPortMin, port)
		m.be16(ctaProtoNatPortMax, port)
		m.endNest(p)
	}
	m.endNest(n)
}

// inverse returns the reply tuple of an un-NATed connection with original
// tuple o; ICMP keeps the reply type and code the kernel reported.
func inverse(o, r conntrack.Tuple) conntrack.Tuple {
	var t conntrack.Tuple
	t.IP.SourceAddress, t.IP.DestinationAddress = o.IP.DestinationAddress, o.IP.SourceAddress
	t.Proto = o.Proto
	if isICMP(o.Proto.Protocol) {
		t.Proto.ICMPType, t.Proto.ICMPCode = r.Proto.ICMPType, r.Proto.ICMPCode
	} else {
		t.Proto.SourcePort, t.Proto.DestinationPort = o.Proto.DestinationPort, o.Proto.SourcePort
	}
	t.Zone = r.Zone
	return t
}

// natOf derives the NAT of a connection from its tuples: DNAT when the
// reply's source is not the original destination, SNAT when the reply's
// destination is not the original source.
func natOf(f *conntrack.Flow) (snat, dnat bool) {
	o, r := f.TupleOrig, f.TupleReply
	if isICMP(o.Proto.Protocol) {
		dnat = r.IP.SourceAddress != o.IP.DestinationAddress
		snat = r.IP.DestinationAddress != o.IP.SourceAddress || (r.Proto.ICMPID != o.Proto.ICMPID && !dnat)
		return snat, dnat
	}
	dnat = r.IP.SourceAddress != o.IP.DestinationAddress || r.Proto.SourcePort != o.Proto.DestinationPort
	snat = r.IP.DestinationAddress != o.IP.SourceAddress || r.Proto.DestinationPort != o.Proto.SourcePort
	return snat, dnat
}

// flowMsgOpts shape a create or update request.
type flowMsgOpts struct {
	create   bool   // create (with NAT, helper, master) rather than update
	noMaster bool   // leave out the master tuple (the master is not there)
	noHelper bool   // leave out the helper (not available on this kernel)
	noLabels bool   // leave out labels (no label extension on this kernel)
	timeout  uint32 // the timeout to set
	liberal  bool   // mark TCP directions IP_CT_TCP_FLAG_BE_LIBERAL
	ack      bool
}

// appendFlowMsg appends an IPCTNL_MSG_CT_NEW request for f.
//
// A create sends the original tuple, the un-NATed reply tuple and the NAT
// as CTA_NAT_DST/CTA_NAT_SRC pinned to the replicated addresses and ports:
// the kernel then computes exactly the replicated reply tuple and sets the
// NAT status and NAT-done bits itself, which it does not do for a reply
// tuple simply handed to it. An update sends what ctnetlink lets change on
// an existing entry: status, timeout, protocol info, mark, sequence
// adjustments, SYN proxy, labels.
func appendFlowMsg(m *msgBuf, seq uint32, f *conntrack.Flow, o flowMsgOpts) {
	flags := uint16(nlmFRequest)
	if o.create {
		flags |= nlmFCreate | nlmFExcl
	}
	if o.ack {
		flags |= nlmFAck
	}
	off := m.begin(subsysCT, msgNew, flags, seq, family(f.TupleOrig.IP.SourceAddress))
	m.tuple(ctaTupleOrig, f.TupleOrig)
	if o.create {
		m.tuple(ctaTupleReply, inverse(f.TupleOrig, f.TupleReply))
		snat, dnat := natOf(f)
		ports := hasPorts(f.TupleOrig.Proto.Protocol) || isICMP(f.TupleOrig.Proto.Protocol)
		r := f.TupleReply
		if dnat {
			port := r.Proto.SourcePort
			if isICMP(f.TupleOrig.Proto.Protocol) {
				port = r.Proto.ICMPID
			}
			m.natRange(ctaNatDst, r.IP.SourceAddress, port, ports)
		}
		if snat {
			port := r.Proto.DestinationPort
			if isICMP(f.TupleOrig.Proto.Protocol) {
				port = r.Proto.ICMPID
			}
			m.natRange(ctaNatSrc, r.IP.DestinationAddress, port, ports)
		}
		if f.Helper.Name != "" && !o.noHelper {
			h := m.nest(ctaHelp)
			m.cstr(ctaHelpName, f.Helper.Name)
			if len(f.Helper.Info) != 0 {
				m.attr(ctaHelpInfo, f.Helper.Info)
			}
			m.endNest(h)
		}
		if tupleFilled(f.TupleMaster) && !o.noMaster {
			m.tuple(ctaTupleMaster, f.TupleMaster)
		}
	}
	// CONFIRMED is always set on a table entry; old kernels refuse a status
	// that would clear it.
	m.be32(ctaStatus, uint32(f.Status&statusInjectSettable|conntrack.StatusConfirmed))
	timeout := o.timeout
	if timeout == 0 {
		timeout = 1
	}
	m.be32(ctaTimeout, timeout)
	if f.Mark != 0 {
		m.be32(ctaMark, f.Mark)
	}
	if f.Zone != 0 {
		m.be16(ctaZone, f.Zone)
	}
	switch {
	case f.ProtoInfo.TCP != nil:
		t := f.ProtoInfo.TCP
		of, rf := uint8(t.OriginalFlags>>8)&tcpFlagsInjectable, uint8(t.ReplyFlags>>8)&tcpFlagsInjectable
		if o.liberal {
			of |= tcpFlagBeLiberal
			rf |= tcpFlagBeLiberal
		}
		pi := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoTCP)
		m.u8(ctaTCPState, t.State)
		m.u8(ctaTCPWscaleOrig, t.OriginalWindowScale)
		m.u8(ctaTCPWscaleRepl, t.ReplyWindowScale)
		// struct nf_ct_tcp_flags {flags, mask}: the kernel reports mask 0;
		// a mask of 0xff sets the flags to exactly this value.
		m.attr(ctaTCPFlagsOrig, []byte{of, 0xff})
		m.attr(ctaTCPFlagsRepl, []byte{rf, 0xff})
		m.endNest(n)
		m.endNest(pi)
	case f.ProtoInfo.SCTP != nil:
		s := f.ProtoInfo.SCTP
		pi := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoSCTP)
		m.u8(ctaSCTPState, s.State)
		m.be32(ctaSCTPVtagOrig, s.VTagOriginal)
		m.be32(ctaSCTPVtagRepl, s.VTagReply)
		m.endNest(n)
		m.endNest(pi)
	case f.ProtoInfo.DCCP != nil:
		d := f.ProtoInfo.DCCP
		pi := m.nest(ctaProtoinfo)
		n := m.nest(ctaProtoinfoDCCP)
		m.u8(ctaDCCPState, d.State)
		m.u8(ctaDCCPRole, d.Role)
		m.be64(ctaDCCPHandSeq, d.HandshakeSeq)
		m.endNest(n)
		m.endNest(pi)
	}
	for i, s := range []conntrack.SequenceAdjust{f.SeqAdjOrig, f.SeqAdjReply} {
		if !seqAdjSet(s) {
			continue
		}
		n := m.nest(uint16(ctaSeqAdjOrig + i))
		m.be32(ctaSeqAdjPos, s.Position)
		m.be32(ctaSeqAdjBefore, s.OffsetBefore)
		m.be32(ctaSeqAdjAfter, s.OffsetAfter)
		m.endNest(n)
	}
	if sp := f.SynProxy; sp.ISN != 0 || sp.ITS != 0 || sp.TSOff != 0 {
		n := m.nest(ctaSynproxy)
		m.be32(ctaSynproxyISN, sp.ISN)
		m.be32(ctaSynproxyITS, sp.ITS)
		m.be32(ctaSynproxyTSOff, sp.TSOff)
		m.endNest(n)
	}
	if len(f.Labels) != 0 && !o.noLabels {
		m.attr(ctaLabels, f.Labels)
	}
	m.end(off)
}

// appendFlowTimeout appends an update that only sets the timeout.
func appendFlowTimeout(m *msgBuf, seq uint32, t conntrack.Tuple, zone uint16, timeout uint32, ack bool) {
	flags := uint16(nlmFRequest)
	if ack {
		flags |= nlmFAck
	}
	off := m.begin(subsysCT, msgNew, flags, seq, family(t.IP.SourceAddress))
	m.tuple(ctaTupleOrig, t)
	m.be32(ctaTimeout, max(timeout, 1))
	if zone != 0 {
		m.be16(ctaZone, zone)
	}
	m.end(off)
}

// appendFlowDelete appends a delete of the connection with original tuple t.
func appendFlowDelete(m *msgBuf, seq uint32, t conntrack.Tuple, zone uint16, ack bool) {
	flags := uint16(nlmFRequest)
	if ack {
		flags |= nlmFAck
	}
	off := m.begin(subsysCT, msgDelete, flags, seq, family(t.IP.SourceAddress))
	m.tuple(ctaTupleOrig, t)
	if zone != 0 {
		m.be16(ctaZone, zone)
	}
	m.end(off)
}

// appendFlowGet appends a get of the connection with original tuple t.
func appendFlowGet(m *msgBuf, seq uint32, t conntrack.Tuple, zone uint16) {
	off := m.begin(subsysCT, msgGet, nlmFRequest|nlmFAck, seq, family(t.IP.SourceAddress))
	m.tuple(ctaTupleOrig, t)
	if zone != 0 {
		m.be16(ctaZone, zone)
	}
	m.end(off)
}

// appendDump appends a dump request of the conntrack (subsysCT) or
// expectation (subsysCTExp) table, both families.
func appendDump(m *msgBuf, seq uint32, subsys uint8) {
	off := m.begin(subsys, msgGet, nlmFRequest|nlmFDump, seq, 0)
	m.end(off)
}

// appendExpectMsg appends a create of expectation e.
func appendExpectMsg(m *msgBuf, seq uint32, e *conntrack.Expect, ack bool) {
	flags := uint16(nlmFRequest | nlmFCreate | nlmFExcl)
	if ack {
		flags |= nlmFAck
	}
	off := m.begin(subsysCTExp, msgNew, flags, seq, family(e.TupleMaster.IP.SourceAddress))
	m.tuple(ctaExpMaster, e.TupleMaster)
	m.tuple(ctaExpTuple, e.Tuple)
	m.tuple(ctaExpMask, e.Mask)
	m.be32(ctaExpTimeout, max(e.Timeout, 1))
	if e.Zone != 0 {
		m.be16(ctaExpZone, e.Zone)
	}
	if e.HelpName != "" {
		m.cstr(ctaExpHelpName, e.HelpName)
	}
	if e.Flags != 0 {
		m.be32(ctaExpFlags, e.Flags)
	}
	if e.Class != 0 {
		m.be32(ctaExpClass, e.Class)
	}
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
	if e.Function != "" {
		m.cstr(ctaExpFn, e.Function)
	}
	m.end(off)
}

// appendExpectDelete appends a delete of the expectation with expected
// tuple t.
func appendExpectDelete(m *msgBuf, seq uint32, t conntrack.Tuple, zone uint16, ack bool) {
	flags := uint16(nlmFRequest)
	if ack {
		flags |= nlmFAck
	}
	off := m.begin(subsysCTExp, msgDelete, flags, seq, family(t.IP.SourceAddress))
	m.tuple(ctaExpTuple, t)
	if zone != 0 {
		m.be16(ctaExpZone, zone)
	}
	m.end(off)
}
