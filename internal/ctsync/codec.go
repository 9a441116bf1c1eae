package ctsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/ti-mo/conntrack"
)

// Value format (version 1). Integers are big-endian; "uvarint" is
// encoding/binary's unsigned varint.
//
//	flow:   0xC1 uvarint(presence) tuple(orig) reply status:uvarint timeout:uvarint [optional fields in presence-bit order]
//	expect: 0xE1 uvarint(presence) tuple(master) tuple(expected) tuple(mask) timeout:uvarint [optional fields]
//	tuple:  proto:u8 src:addr dst:addr l4
//	l4:     ICMP (proto 1) and ICMPv6 (proto 58): id:u16 type:u8 code:u8; others: sport:u16 dport:u16
//	addr:   4 bytes, or 16 when the presence bit pV6 is set (all addresses of the entry)
//	reply:  bits:u8, then only the parts of the reply tuple that differ from the
//	        inverse of the original tuple (a NATed address or port), plus ICMP type and code
//
// A TCP/IPv4 entry with SNAT takes about 31 bytes.
const (
	magicFlow   = 0xC1
	magicExpect = 0xE1
)

// Presence bits of a flow value.
const (
	pV6         = 1 << 0
	pZone       = 1 << 1
	pMark       = 1 << 2
	pTCP        = 1 << 3
	pSCTP       = 1 << 4
	pDCCP       = 1 << 5
	pHelper     = 1 << 6
	pLabels     = 1 << 7
	pMaster     = 1 << 8
	pSeqAdjOrig = 1 << 9
	pSeqAdjRepl = 1 << 10
	pSynProxy   = 1 << 11
	pOrigZone   = 1 << 12
	pReplyZone  = 1 << 13
	pFlowAll    = 1<<14 - 1
)

// Presence bits of an expectation value.
const (
	eV6       = 1 << 0
	eZone     = 1 << 1
	eHelpName = 1 << 2
	eFunction = 1 << 3
	eFlags    = 1 << 4
	eClass    = 1 << 5
	eNAT      = 1 << 6
	eExpAll   = 1<<7 - 1
)

// Bits of the reply byte: which parts of the reply tuple are spelled out.
const (
	rSrc   = 1 << 0 // reply source address (DNAT target)
	rDst   = 1 << 1 // reply destination address (SNAT address)
	rSport = 1 << 2 // reply source port (DNAT port), ICMP id
	rDport = 1 << 3 // reply destination port (SNAT port)
	rProto = 1 << 4 // reply protocol differs (never from the kernel)
	rAll   = 1<<5 - 1
)

// StatusSyncMask is the part of a connection's status that is synchronised:
// what the other unit needs (seen reply, assured, NAT, sequence adjustment,
// expected, fixed timeout, helper). Kernel-internal bits (confirmed, NAT
// done, dying, template, untracked, offload and anything newer) are
// stripped: they describe this kernel's bookkeeping, not the connection,
// and user space cannot set them.
const StatusSyncMask = conntrack.StatusExpected | conntrack.StatusSeenReply | conntrack.StatusAssured |
	conntrack.StatusSrcNAT | conntrack.StatusDstNAT | conntrack.StatusSeqAdjust |
	conntrack.StatusFixedTimeout | conntrack.StatusHelper

// maxString bounds helper names, expectation function names, helper data
// and labels in a value: the kernel's own limits are far below (helper
// names 16 bytes, labels 16 bytes).
const maxString = 255

var (
	errShort    = errors.New("ctsync: value truncated")
	errMagic    = errors.New("ctsync: not a ctsync value (bad magic or version)")
	errTrailing = errors.New("ctsync: trailing bytes after value")
	errPresence = errors.New("ctsync: unknown field bits (value from a newer version?)")
	errTooLong  = errors.New("ctsync: string field too long")
)

func isICMP(proto uint8) bool { return proto == 1 || proto == 58 }

// tupleFilled is conntrack's own test for a tuple worth sending: both
// addresses and a protocol.
func tupleFilled(t conntrack.Tuple) bool {
	return t.IP.SourceAddress.IsValid() && t.IP.DestinationAddress.IsValid() && t.Proto.Protocol != 0
}

// v6 reports whether any of the addresses is not a plain IPv4 address; then
// every address of the entry is written with 16 bytes.
func v6(addrs ...netip.Addr) bool {
	for _, a := range addrs {
		if a.IsValid() && !a.Is4() {
			return true
		}
	}
	return false
}

func putAddr(dst []byte, a netip.Addr, six bool) []byte {
	if six {
		b := a.As16() // zero Addr gives ::
		return append(dst, b[:]...)
	}
	if !a.Is4() {
		return append(dst, 0, 0, 0, 0)
	}
	b := a.As4()
	return append(dst, b[:]...)
}

func putL4(dst []byte, p conntrack.ProtoTuple) []byte {
	if isICMP(p.Protocol) {
		dst = binary.BigEndian.AppendUint16(dst, p.ICMPID)
		return append(dst, p.ICMPType, p.ICMPCode)
	}
	dst = binary.BigEndian.AppendUint16(dst, p.SourcePort)
	return binary.BigEndian.AppendUint16(dst, p.DestinationPort)
}

func putTuple(dst []byte, t conntrack.Tuple, six bool) []byte {
	dst = append(dst, t.Proto.Protocol)
	dst = putAddr(dst, t.IP.SourceAddress, six)
	dst = putAddr(dst, t.IP.DestinationAddress, six)
	return putL4(dst, t.Proto)
}

func putString(dst []byte, s []byte) []byte {
	if len(s) > maxString {
		s = s[:maxString]
	}
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func putSeqAdj(dst []byte, s conntrack.SequenceAdjust) []byte {
	dst = binary.BigEndian.AppendUint32(dst, s.Position)
	dst = binary.BigEndian.AppendUint32(dst, s.OffsetBefore)
	return binary.BigEndian.AppendUint32(dst, s.OffsetAfter)
}

func seqAdjSet(s conntrack.SequenceAdjust) bool {
	return s.Position != 0 || s.OffsetBefore != 0 || s.OffsetAfter != 0
}

// Key identifies a connection: its original tuple and zone, the same as the
// kernel's lookup. It is the key of the "conntrack" table: 14 bytes for
// TCP/UDP over IPv4, 38 over IPv6, 2 more with a zone.
func Key(f conntrack.Flow) []byte {
	return appendKey(make([]byte, 0, 40), f.TupleOrig, f.Zone)
}

// ExpectKey identifies an expectation: its expected tuple and zone (the
// kernel refuses two expectations that clash on them). It is the key of
// the "expect" table.
func ExpectKey(e conntrack.Expect) []byte {
	return appendKey(make([]byte, 0, 40), e.Tuple, e.Zone)
}

// Key layout: kind:u8 (4 or 6, 0x80 set when a zone follows) then the tuple
// without its redundant family, then zone:u16.
func appendKey(dst []byte, t conntrack.Tuple, zone uint16) []byte {
	six := v6(t.IP.SourceAddress, t.IP.DestinationAddress)
	kind := byte(4)
	if six {
		kind = 6
	}
	if zone != 0 {
		kind |= 0x80
	}
	dst = append(dst, kind)
	dst = putTuple(dst, t, six)
	if zone != 0 {
		dst = binary.BigEndian.AppendUint16(dst, zone)
	}
	return dst
}

// decodeKey is the inverse of appendKey.
func decodeKey(b []byte) (conntrack.Tuple, uint16, error) {
	r := reader{b: b}
	kind := r.u8()
	if r.err != nil {
		return conntrack.Tuple{}, 0, r.err
	}
	var six bool
	switch kind &^ 0x80 {
	case 4:
	case 6:
		six = true
	default:
		return conntrack.Tuple{}, 0, fmt.Errorf("ctsync: bad key kind %#x", kind)
	}
	t := r.tuple(six)
	var zone uint16
	if kind&0x80 != 0 {
		if zone = r.u16(); zone == 0 && r.err == nil {
			r.err = errors.New("ctsync: key with an explicit zone 0")
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errTrailing
	}
	return t, zone, r.err
}

// EncodeFlow appends the compact encoding of f to dst and returns the
// extended slice. It keeps everything the other unit needs to recreate the
// connection: both tuples (so SNAT and DNAT mappings are preserved),
// status (masked with StatusSyncMask), timeout, mark, zone and tuple
// zones, TCP/SCTP/DCCP protocol state, helper name and data, labels,
// master tuple, sequence adjustments and SYN proxy data. Of TCP's flags it
// keeps those another kernel accepts (window scale, SACK permitted, close
// init, be liberal, simultaneous open): the others (data unacked, max ack
// set, challenge ack) describe window tracking in progress on this kernel,
// and the flag masks are always zero in the kernel's reports. A value
// thus does not change with them, and a standby's kernel holds exactly
// it (see adopt.go). It drops what only describes this kernel's copy: ID,
// use count, counters, timestamps, security context, labels mask.
//
// Addresses of an entry are all written as 4 bytes or all as 16; a flow
// mixing families (the kernel never makes one) comes back with IPv4
// addresses as IPv4-mapped IPv6. EncodeFlow never fails.
func EncodeFlow(dst []byte, f conntrack.Flow) []byte {
	six := v6(f.TupleOrig.IP.SourceAddress, f.TupleOrig.IP.DestinationAddress,
		f.TupleReply.IP.SourceAddress, f.TupleReply.IP.DestinationAddress)
	if tupleFilled(f.TupleMaster) {
		six = six || v6(f.TupleMaster.IP.SourceAddress, f.TupleMaster.IP.DestinationAddress)
	}
	var p uint64
	if six {
		p |= pV6
	}
	if f.Zone != 0 {
		p |= pZone
	}
	if f.Mark != 0 {
		p |= pMark
	}
	switch {
	case f.ProtoInfo.TCP != nil:
		p |= pTCP
	case f.ProtoInfo.SCTP != nil:
		p |= pSCTP
	case f.ProtoInfo.DCCP != nil:
		p |= pDCCP
	}
	if f.Helper.Name != "" || len(f.Helper.Info) != 0 {
		p |= pHelper
	}
	if len(f.Labels) != 0 {
		p |= pLabels
	}
	if tupleFilled(f.TupleMaster) {
		p |= pMaster
	}
	if seqAdjSet(f.SeqAdjOrig) {
		p |= pSeqAdjOrig
	}
	if seqAdjSet(f.SeqAdjReply) {
		p |= pSeqAdjRepl
	}
	if f.SynProxy.ISN != 0 || f.SynProxy.ITS != 0 || f.SynProxy.TSOff != 0 {
		p |= pSynProxy
	}
	if f.TupleOrig.Zone != 0 {
		p |= pOrigZone
	}
	if f.TupleReply.Zone != 0 {
		p |= pReplyZone
	}

	dst = append(dst, magicFlow)
	dst = binary.AppendUvarint(dst, p)
	o, r := f.TupleOrig, f.TupleReply
	dst = putTuple(dst, o, six)

	// Reply tuple: only what differs from the inverse of the original.
	var rb byte
	if r.IP.SourceAddress != o.IP.DestinationAddress {
		rb |= rSrc
	}
	if r.IP.DestinationAddress != o.IP.SourceAddress {
		rb |= rDst
	}
	if r.Proto.Protocol != o.Proto.Protocol {
		rb |= rProto
	}
	icmp := isICMP(o.Proto.Protocol)
	if icmp {
		if r.Proto.ICMPID != o.Proto.ICMPID {
			rb |= rSport
		}
	} else {
		if r.Proto.SourcePort != o.Proto.DestinationPort {
			rb |= rSport
		}
		if r.Proto.DestinationPort != o.Proto.SourcePort {
			rb |= rDport
		}
	}
	dst = append(dst, rb)
	if rb&rProto != 0 {
		dst = append(dst, r.Proto.Protocol)
	}
	if rb&rSrc != 0 {
		dst = putAddr(dst, r.IP.SourceAddress, six)
	}
	if rb&rDst != 0 {
		dst = putAddr(dst, r.IP.DestinationAddress, six)
	}
	if icmp {
		if rb&rSport != 0 {
			dst = binary.BigEndian.AppendUint16(dst, r.Proto.ICMPID)
		}
		dst = append(dst, r.Proto.ICMPType, r.Proto.ICMPCode)
	} else {
		if rb&rSport != 0 {
			dst = binary.BigEndian.AppendUint16(dst, r.Proto.SourcePort)
		}
		if rb&rDport != 0 {
			dst = binary.BigEndian.AppendUint16(dst, r.Proto.DestinationPort)
		}
	}

	dst = binary.AppendUvarint(dst, uint64(f.Status&StatusSyncMask))
	dst = binary.AppendUvarint(dst, uint64(f.Timeout))
	if p&pZone != 0 {
		dst = binary.BigEndian.AppendUint16(dst, f.Zone)
	}
	if p&pMark != 0 {
		dst = binary.AppendUvarint(dst, uint64(f.Mark))
	}
	switch {
	case p&pTCP != 0:
		t := f.ProtoInfo.TCP
		dst = append(dst, t.State, t.OriginalWindowScale, t.ReplyWindowScale,
			byte(t.OriginalFlags>>8)&tcpFlagsInjectable, byte(t.ReplyFlags>>8)&tcpFlagsInjectable)
	case p&pSCTP != 0:
		s := f.ProtoInfo.SCTP
		dst = append(dst, s.State)
		dst = binary.BigEndian.AppendUint32(dst, s.VTagOriginal)
		dst = binary.BigEndian.AppendUint32(dst, s.VTagReply)
	case p&pDCCP != 0:
		d := f.ProtoInfo.DCCP
		dst = append(dst, d.State, d.Role)
		dst = binary.BigEndian.AppendUint64(dst, d.HandshakeSeq)
	}
	if p&pHelper != 0 {
		dst = putString(dst, []byte(f.Helper.Name))
		dst = putString(dst, f.Helper.Info)
	}
	if p&pLabels != 0 {
		dst = putString(dst, f.Labels)
	}
	if p&pMaster != 0 {
		dst = putTuple(dst, f.TupleMaster, six)
	}
	if p&pSeqAdjOrig != 0 {
		dst = putSeqAdj(dst, f.SeqAdjOrig)
	}
	if p&pSeqAdjRepl != 0 {
		dst = putSeqAdj(dst, f.SeqAdjReply)
	}
	if p&pSynProxy != 0 {
		dst = binary.BigEndian.AppendUint32(dst, f.SynProxy.ISN)
		dst = binary.BigEndian.AppendUint32(dst, f.SynProxy.ITS)
		dst = binary.BigEndian.AppendUint32(dst, f.SynProxy.TSOff)
	}
	if p&pOrigZone != 0 {
		dst = binary.BigEndian.AppendUint16(dst, f.TupleOrig.Zone)
	}
	if p&pReplyZone != 0 {
		dst = binary.BigEndian.AppendUint16(dst, f.TupleReply.Zone)
	}
	return dst
}

// DecodeFlow decodes a value made by EncodeFlow. It never panics; a
// truncated, overlong or unknown value gives an error. The flow's TCP flag
// masks are zero, as in the kernel's own reports (the injector sets them).
func DecodeFlow(b []byte) (conntrack.Flow, error) {
	var f conntrack.Flow
	r := reader{b: b}
	if r.u8() != magicFlow {
		if r.err != nil {
			return f, r.err
		}
		return f, errMagic
	}
	p := r.uvarint()
	if r.err != nil {
		return f, r.err
	}
	if p&^pFlowAll != 0 {
		return f, errPresence
	}
	six := p&pV6 != 0
	o := r.tuple(six)
	rb := r.u8()
	if rb&^rAll != 0 && r.err == nil {
		r.err = errPresence
	}
	rep := conntrack.Tuple{
		IP: conntrack.IPTuple{SourceAddress: o.IP.DestinationAddress, DestinationAddress: o.IP.SourceAddress},
	}
	rep.Proto.Protocol = o.Proto.Protocol
	if rb&rProto != 0 {
		rep.Proto.Protocol = r.u8()
	}
	if rb&rSrc != 0 {
		rep.IP.SourceAddress = r.addr(six)
	}
	if rb&rDst != 0 {
		rep.IP.DestinationAddress = r.addr(six)
	}
	if isICMP(o.Proto.Protocol) {
		rep.Proto.ICMPID = o.Proto.ICMPID
		if rb&rSport != 0 {
			rep.Proto.ICMPID = r.u16()
		}
		rep.Proto.ICMPType = r.u8()
		rep.Proto.ICMPCode = r.u8()
	} else {
		rep.Proto.SourcePort = o.Proto.DestinationPort
		rep.Proto.DestinationPort = o.Proto.SourcePort
		if rb&rSport != 0 {
			rep.Proto.SourcePort = r.u16()
		}
		if rb&rDport != 0 {
			rep.Proto.DestinationPort = r.u16()
		}
	}
	setICMPFlags(&rep.Proto)
	f.TupleOrig, f.TupleReply = o, rep

	st := r.uvarint()
	if st&^uint64(StatusSyncMask) != 0 {
		if r.err == nil {
			r.err = fmt.Errorf("ctsync: status %#x has bits outside the synchronised set", st)
		}
	}
	f.Status = conntrack.Status(st)
	f.Timeout = r.u32varint()
	if p&pZone != 0 {
		f.Zone = r.u16()
	}
	if p&pMark != 0 {
		f.Mark = r.u32varint()
	}
	nproto := 0
	for _, bit := range []uint64{pTCP, pSCTP, pDCCP} {
		if p&bit != 0 {
			nproto++
		}
	}
	if nproto > 1 && r.err == nil {
		r.err = errors.New("ctsync: more than one protocol info")
	}
	switch {
	case p&pTCP != 0:
		t := &conntrack.ProtoInfoTCP{State: r.u8(), OriginalWindowScale: r.u8(), ReplyWindowScale: r.u8()}
		t.OriginalFlags = uint16(r.u8()&tcpFlagsInjectable) << 8
		t.ReplyFlags = uint16(r.u8()&tcpFlagsInjectable) << 8
		f.ProtoInfo.TCP = t
	case p&pSCTP != 0:
		f.ProtoInfo.SCTP = &conntrack.ProtoInfoSCTP{State: r.u8(), VTagOriginal: r.u32(), VTagReply: r.u32()}
	case p&pDCCP != 0:
		f.ProtoInfo.DCCP = &conntrack.ProtoInfoDCCP{State: r.u8(), Role: r.u8(), HandshakeSeq: r.u64()}
	}
	if p&pHelper != 0 {
		f.Helper.Name = string(r.str())
		if info := r.str(); len(info) != 0 {
			f.Helper.Info = info
		}
	}
	if p&pLabels != 0 {
		f.Labels = r.str()
	}
	if p&pMaster != 0 {
		if f.TupleMaster = r.tuple(six); f.TupleMaster.Proto.Protocol == 0 && r.err == nil {
			r.err = errors.New("ctsync: master tuple without protocol")
		}
	}
	if p&pSeqAdjOrig != 0 {
		f.SeqAdjOrig = r.seqAdj(false)
	}
	if p&pSeqAdjRepl != 0 {
		f.SeqAdjReply = r.seqAdj(true)
	}
	if p&pSynProxy != 0 {
		f.SynProxy = conntrack.SynProxy{ISN: r.u32(), ITS: r.u32(), TSOff: r.u32()}
	}
	if p&pOrigZone != 0 {
		f.TupleOrig.Zone = r.u16()
	}
	if p&pReplyZone != 0 {
		f.TupleReply.Zone = r.u16()
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errTrailing
	}
	if r.err != nil {
		return conntrack.Flow{}, r.err
	}
	return f, nil
}

// EncodeExpect appends the compact encoding of an expectation to dst:
// master, expected and mask tuples, timeout, zone, helper, function,
// flags, class and NAT direction and tuple. ID is dropped. Tuple zones are
// not kept (the kernel does not report them for expectations).
func EncodeExpect(dst []byte, e conntrack.Expect) []byte {
	six := v6(e.TupleMaster.IP.SourceAddress, e.TupleMaster.IP.DestinationAddress,
		e.Tuple.IP.SourceAddress, e.Tuple.IP.DestinationAddress,
		e.Mask.IP.SourceAddress, e.Mask.IP.DestinationAddress)
	if tupleFilled(e.NAT.Tuple) {
		six = six || v6(e.NAT.Tuple.IP.SourceAddress, e.NAT.Tuple.IP.DestinationAddress)
	}
	var p uint64
	if six {
		p |= eV6
	}
	if e.Zone != 0 {
		p |= eZone
	}
	if e.HelpName != "" {
		p |= eHelpName
	}
	if e.Function != "" {
		p |= eFunction
	}
	if e.Flags != 0 {
		p |= eFlags
	}
	if e.Class != 0 {
		p |= eClass
	}
	if tupleFilled(e.NAT.Tuple) {
		p |= eNAT
	}
	dst = append(dst, magicExpect)
	dst = binary.AppendUvarint(dst, p)
	dst = putTuple(dst, e.TupleMaster, six)
	dst = putTuple(dst, e.Tuple, six)
	dst = putTuple(dst, e.Mask, six)
	dst = binary.AppendUvarint(dst, uint64(e.Timeout))
	if p&eZone != 0 {
		dst = binary.BigEndian.AppendUint16(dst, e.Zone)
	}
	if p&eHelpName != 0 {
		dst = putString(dst, []byte(e.HelpName))
	}
	if p&eFunction != 0 {
		dst = putString(dst, []byte(e.Function))
	}
	if p&eFlags != 0 {
		dst = binary.AppendUvarint(dst, uint64(e.Flags))
	}
	if p&eClass != 0 {
		dst = binary.AppendUvarint(dst, uint64(e.Class))
	}
	if p&eNAT != 0 {
		var dir byte
		if e.NAT.Direction {
			dir = 1
		}
		dst = append(dst, dir)
		dst = putTuple(dst, e.NAT.Tuple, six)
	}
	return dst
}

// DecodeExpect decodes a value made by EncodeExpect. It never panics.
func DecodeExpect(b []byte) (conntrack.Expect, error) {
	var e conntrack.Expect
	r := reader{b: b}
	if r.u8() != magicExpect {
		if r.err != nil {
			return e, r.err
		}
		return e, errMagic
	}
	p := r.uvarint()
	if r.err != nil {
		return e, r.err
	}
	if p&^eExpAll != 0 {
		return e, errPresence
	}
	six := p&eV6 != 0
	e.TupleMaster = r.tuple(six)
	e.Tuple = r.tuple(six)
	e.Mask = r.tuple(six)
	e.Timeout = r.u32varint()
	if p&eZone != 0 {
		e.Zone = r.u16()
	}
	if p&eHelpName != 0 {
		e.HelpName = string(r.str())
	}
	if p&eFunction != 0 {
		e.Function = string(r.str())
	}
	if p&eFlags != 0 {
		e.Flags = r.u32varint()
	}
	if p&eClass != 0 {
		e.Class = r.u32varint()
	}
	if p&eNAT != 0 {
		switch r.u8() {
		case 0:
		case 1:
			e.NAT.Direction = true
		default:
			if r.err == nil {
				r.err = errors.New("ctsync: bad expectation NAT direction")
			}
		}
		if e.NAT.Tuple = r.tuple(six); e.NAT.Tuple.Proto.Protocol == 0 && r.err == nil {
			r.err = errors.New("ctsync: expectation NAT tuple without protocol")
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errTrailing
	}
	if r.err != nil {
		return conntrack.Expect{}, r.err
	}
	return e, nil
}

// setICMPFlags mirrors ti-mo/conntrack's decoder, which marks ICMP tuples
// by protocol number.
func setICMPFlags(p *conntrack.ProtoTuple) {
	p.ICMPv4 = p.Protocol == 1
	p.ICMPv6 = p.Protocol == 58
}

// reader is a bounds-checked cursor; the first error sticks and every
// later read returns zero.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errShort
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		if n < 0 {
			r.err = errors.New("ctsync: varint overflow")
		}
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u32varint() uint32 {
	v := r.uvarint()
	if v > 1<<32-1 && r.err == nil {
		r.err = errors.New("ctsync: varint out of range")
	}
	return uint32(v)
}

func (r *reader) str() []byte {
	n := r.uvarint()
	if n > maxString {
		if r.err == nil {
			r.err = errTooLong
		}
		return nil
	}
	v := r.take(int(n))
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}

func (r *reader) addr(six bool) netip.Addr {
	if six {
		if v := r.take(16); v != nil {
			return netip.AddrFrom16([16]byte(v))
		}
		return netip.Addr{}
	}
	if v := r.take(4); v != nil {
		return netip.AddrFrom4([4]byte(v))
	}
	return netip.Addr{}
}

func (r *reader) tuple(six bool) conntrack.Tuple {
	var t conntrack.Tuple
	t.Proto.Protocol = r.u8()
	t.IP.SourceAddress = r.addr(six)
	t.IP.DestinationAddress = r.addr(six)
	if isICMP(t.Proto.Protocol) {
		t.Proto.ICMPID = r.u16()
		t.Proto.ICMPType = r.u8()
		t.Proto.ICMPCode = r.u8()
	} else {
		t.Proto.SourcePort = r.u16()
		t.Proto.DestinationPort = r.u16()
	}
	setICMPFlags(&t.Proto)
	return t
}

func (r *reader) seqAdj(reply bool) conntrack.SequenceAdjust {
	return conntrack.SequenceAdjust{Direction: reply, Position: r.u32(), OffsetBefore: r.u32(), OffsetAfter: r.u32()}
}
