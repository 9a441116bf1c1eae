package bench

// The state-sync benchmark's own netlink: just enough ctnetlink to create
// its connections on the ACTIVE unit as fast as the kernel takes them
// (batched requests, several sockets), to dump and count them on either
// unit, and to watch a sample of them appear on the standby. internal/ctsync
// exports no request builder (its requests are its own business), and the
// benchmark must not go through the code it measures anyway.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/lab"
)

// The benchmark's connections. Connection i is an established TCP/IPv4
// connection forwarded from a LAN client to a web server on the WAN and
// source-NATed to the WAN virtual IP, as the lab's firewall would make it:
//
//	client 172.16.0.0/12 : 32768+i%256  ->  server 203.0.113.(10+i/64512) : 80
//	reply: server : 80  ->  203.0.113.1 (WAN VIP) : 1024+i%64512
//
// (every NAT port of the pool, as a busy firewall's masquerading uses them;
// see connScheme to leave some out).
// 256 connections per client address; one server address per 64,512
// connections, so every NAT port of the VIP is used once per server and
// the reply tuples never clash. The first connection of every client
// (source port 32768) is a lag sample.
const (
	benchSPortBase = 32768
	benchPerClient = 256
	benchNATPorts  = 64512
	benchNATBase   = 1024
	benchDPort     = 80
	// MaxSyncEntries is the most connections the scheme above can make
	// distinct (server addresses 203.0.113.10 to .249).
	MaxSyncEntries = benchNATPorts * 240
)

var wanVIP = lab.WANVIP.Addr().As4()

func benchClient(i int) [4]byte {
	c := i / benchPerClient
	return [4]byte{172, byte(16 + c>>16), byte(c >> 8), byte(c)}
}

func benchServer(i int) [4]byte { return [4]byte{203, 0, 113, byte(10 + i/benchNATPorts)} }

// benchIndex inverts the scheme from an original tuple; ok is false for a
// connection that is not the benchmark's.
func benchIndex(src, dst [4]byte, sport, dport uint16) (int, bool) {
	if src[0] != 172 || src[1] < 16 || src[1] > 31 || dst != [4]byte{203, 0, 113, dst[3]} || dport != benchDPort ||
		sport < benchSPortBase || sport >= benchSPortBase+benchPerClient || dst[3] < 10 {
		return 0, false
	}
	c := int(src[1]-16)<<16 | int(src[2])<<8 | int(src[3])
	i := c*benchPerClient + int(sport-benchSPortBase)
	if i/benchNATPorts != int(dst[3])-10 {
		return 0, false
	}
	return i, true
}

// isSample says whether connection i is a lag sample.
func isSample(i int) bool { return i%benchPerClient == 0 }

// connScheme is the benchmark's connections with, optionally, some NAT
// ports never used: connection i whose port would be the k-th avoided one
// gets port 1023-k instead (below the pool, so still unique).
type connScheme struct {
	avoid map[uint16]uint16
}

func newConnScheme(avoid []uint16) (connScheme, error) {
	s := connScheme{avoid: map[uint16]uint16{}}
	for k, p := range avoid {
		if p < benchNATBase {
			return s, fmt.Errorf("NAT port %d is outside the pool %d-65535 anyway", p, benchNATBase)
		}
		if _, dup := s.avoid[p]; !dup {
			s.avoid[p] = uint16(benchNATBase - 1 - k)
		}
	}
	return s, nil
}

// natPort is the port connection i is translated to on the WAN VIP.
func (s connScheme) natPort(i int) uint16 {
	p := uint16(benchNATBase + i%benchNATPorts)
	if q, ok := s.avoid[p]; ok {
		return q
	}
	return p
}

// describe names connection i for messages.
func (s connScheme) describe(i int) string {
	c, srv := benchClient(i), benchServer(i)
	return fmt.Sprintf("#%d %s:%d -> %s:%d (SNAT %s:%d)", i, addrString(c), benchSPortBase+i%benchPerClient,
		addrString(srv), benchDPort, addrString(wanVIP), s.natPort(i))
}

// ctnetlink numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	nlHdrLen    = 16
	nfGenLen    = 4
	nlmError    = 2
	nlmDone     = 3
	nlmOverrun  = 4
	nlmRequest  = 0x1
	nlmAck      = 0x4
	nlmExcl     = 0x200
	nlmCreate   = 0x400
	nlmDump     = 0x300
	nlaNested   = 0x8000
	ctMsgNew    = 0
	ctMsgGet    = 1
	ctSubsys    = 1
	grpCTNew    = 1 // NFNLGRP_CONNTRACK_NEW
	solNetlink  = 270
	capAck      = 10 // NETLINK_CAP_ACK
	ctaOrig     = 1
	ctaReply    = 2
	ctaStatus   = 3
	ctaProto    = 4
	ctaNatSrc   = 6
	ctaTimeout  = 7
	ctaTupleIP  = 1
	ctaTuplePr  = 2
	ctaV4Src    = 1
	ctaV4Dst    = 2
	ctaPNum     = 1
	ctaPSrc     = 2
	ctaPDst     = 3
	ctaInfoTCP  = 1
	ctaTCPState = 1
	ctaTCPWsO   = 2
	ctaTCPWsR   = 3
	ctaTCPFlO   = 4
	ctaTCPFlR   = 5
	ctaNatV4Min = 1
	ctaNatV4Max = 2
	ctaNatProto = 3
	ctaNatPMin  = 1
	ctaNatPMax  = 2

	tcpEstablished = 3
	// SEEN_REPLY | ASSURED | CONFIRMED: what an established forwarded
	// connection has (the NAT bits follow from CTA_NAT_SRC).
	benchStatus = 1<<1 | 1<<2 | 1<<3
	// Window scaling and SACK permitted in both directions.
	benchTCPFlags = 0x01 | 0x02
)

// ctSock is a NETLINK_NETFILTER socket opened inside a lab namespace.
type ctSock struct {
	fd  int
	seq uint32
	buf []byte
}

// openCT opens a socket in the namespace of role, joined to groups, with a
// receive buffer of rcvbuf bytes when positive.
func openCT(l *lab.Lab, role string, rcvbuf int, groups ...uint32) (*ctSock, error) {
	fd := -1
	err := l.Do(role, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", role, err)
	}
	s := &ctSock{fd: fd, seq: uint32(time.Now().UnixNano()), buf: make([]byte, 1<<20)}
	fail := func(what string, err error) (*ctSock, error) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("netlink %s in %s: %w", what, role, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	_ = unix.SetsockoptInt(fd, solNetlink, capAck, 1)
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			return fail("receive buffer", err)
		}
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, solNetlink, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			return fail("join group", err)
		}
	}
	// A blocked read wakes at least every 200 ms, so Close is noticed.
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("receive timeout", err)
	}
	return s, nil
}

func (s *ctSock) close() { _ = unix.Close(s.fd) }

func (s *ctSock) nextSeq() uint32 {
	s.seq++
	if s.seq == 0 {
		s.seq++
	}
	return s.seq
}

// recv reads one datagram; EAGAIN is the receive timeout.
func (s *ctSock) recv() ([]byte, error) {
	for {
		n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		return s.buf[:n], nil
	}
}

// eachNlMsg calls fn with type, sequence number and payload (after the
// netlink header) of every message of a datagram.
func eachNlMsg(b []byte, fn func(typ uint16, seq uint32, data []byte)) {
	for len(b) >= nlHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlHdrLen || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[4:6]), binary.NativeEndian.Uint32(b[8:12]), b[nlHdrLen:l])
		b = b[min((l+3)&^3, len(b)):]
	}
}

func nlErrno(data []byte) syscall.Errno {
	if len(data) < 4 {
		return 0
	}
	if e := int32(binary.NativeEndian.Uint32(data[:4])); e < 0 {
		return syscall.Errno(-e)
	}
	return 0
}

// msg builds netlink messages.
type msg struct{ b []byte }

func (m *msg) begin(typ uint16, flags uint16, seq uint32) int {
	off := len(m.b)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0)
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = binary.NativeEndian.AppendUint16(m.b, flags)
	m.b = binary.NativeEndian.AppendUint32(m.b, seq)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0)
	m.b = append(m.b, unix.AF_INET, 0, 0, 0)
	return off
}

func (m *msg) end(off int) { binary.NativeEndian.PutUint32(m.b[off:], uint32(len(m.b)-off)) }

func (m *msg) attr(typ uint16, data ...byte) {
	m.b = binary.NativeEndian.AppendUint16(m.b, uint16(4+len(data)))
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = append(m.b, data...)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *msg) be16(typ, v uint16) { m.attr(typ, byte(v>>8), byte(v)) }
func (m *msg) be32(typ uint16, v uint32) {
	m.attr(typ, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func (m *msg) nest(typ uint16) int {
	off := len(m.b)
	m.b = binary.NativeEndian.AppendUint16(m.b, 0)
	m.b = binary.NativeEndian.AppendUint16(m.b, typ|nlaNested)
	return off
}

func (m *msg) endNest(off int) { binary.NativeEndian.PutUint16(m.b[off:], uint16(len(m.b)-off)) }

func (m *msg) tuple(typ uint16, src, dst [4]byte, sport, dport uint16) {
	n := m.nest(typ)
	ip := m.nest(ctaTupleIP)
	m.attr(ctaV4Src, src[:]...)
	m.attr(ctaV4Dst, dst[:]...)
	m.endNest(ip)
	p := m.nest(ctaTuplePr)
	m.attr(ctaPNum, unix.IPPROTO_TCP)
	m.be16(ctaPSrc, sport)
	m.be16(ctaPDst, dport)
	m.endNest(p)
	m.endNest(n)
}

// appendCreate appends the create request of connection i. The reply tuple
// is the un-NATed inverse and CTA_NAT_SRC pins the mapping to the VIP and
// port: ctnetlink then computes the NATed reply tuple and sets the NAT
// status bits itself, as for a connection the firewall translated.
func (cs connScheme) appendCreate(m *msg, seq uint32, i int, timeout uint32, ack bool) {
	flags := uint16(nlmRequest | nlmCreate | nlmExcl)
	if ack {
		flags |= nlmAck
	}
	c, s := benchClient(i), benchServer(i)
	sport := uint16(benchSPortBase + i%benchPerClient)
	off := m.begin(ctSubsys<<8|ctMsgNew, flags, seq)
	m.tuple(ctaOrig, c, s, sport, benchDPort)
	m.tuple(ctaReply, s, c, benchDPort, sport)
	nat := m.nest(ctaNatSrc)
	m.attr(ctaNatV4Min, wanVIP[:]...)
	m.attr(ctaNatV4Max, wanVIP[:]...)
	np := m.nest(ctaNatProto)
	port := cs.natPort(i)
	m.be16(ctaNatPMin, port)
	m.be16(ctaNatPMax, port)
	m.endNest(np)
	m.endNest(nat)
	m.be32(ctaStatus, benchStatus)
	m.be32(ctaTimeout, timeout)
	pi := m.nest(ctaProto)
	t := m.nest(ctaInfoTCP)
	m.attr(ctaTCPState, tcpEstablished)
	m.attr(ctaTCPWsO, 7)
	m.attr(ctaTCPWsR, 7)
	m.attr(ctaTCPFlO, benchTCPFlags, 0xff)
	m.attr(ctaTCPFlR, benchTCPFlags, 0xff)
	m.endNest(t)
	m.endNest(pi)
	m.end(off)
}

// createBatch creates connections first..first+n-1 in one system call
// (only the last request asks for an ack; the kernel answers every failed
// one anyway) and returns how many failed, with the first error.
func (s *ctSock) createBatch(cs connScheme, m *msg, first, n int, timeout uint32) (failed int, ferr error, err error) {
	m.b = m.b[:0]
	seq0 := s.seq + 1
	for k := range n {
		cs.appendCreate(m, s.nextSeq(), first+k, timeout, k == n-1)
	}
	last := s.seq
	if err := unix.Sendto(s.fd, m.b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, nil, fmt.Errorf("send creates: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := s.recv()
		if err == unix.EAGAIN {
			if time.Now().After(deadline) {
				return failed, ferr, errors.New("no ack for a batch of creates after 30s")
			}
			continue
		}
		if err != nil {
			return failed, ferr, fmt.Errorf("receive acks: %w", err)
		}
		done := false
		eachNlMsg(b, func(typ uint16, seq uint32, data []byte) {
			if typ != nlmError || seq-seq0 > last-seq0 {
				return
			}
			if e := nlErrno(data); e != 0 {
				failed++
				if ferr == nil {
					ferr = fmt.Errorf("create connection %d: %w", first+int(seq-seq0), e)
				}
			}
			done = done || seq == last
		})
		if done {
			return failed, ferr, nil
		}
	}
}

// origTuple extracts the IPv4/TCP original tuple of a ctnetlink message
// (after the netlink header).
func origTuple(data []byte) (src, dst [4]byte, sport, dport uint16, ok bool) {
	if len(data) < nfGenLen {
		return
	}
	orig := nlaFind(data[nfGenLen:], ctaOrig)
	ip, pr := nlaFind(orig, ctaTupleIP), nlaFind(orig, ctaTuplePr)
	s, d := nlaFind(ip, ctaV4Src), nlaFind(ip, ctaV4Dst)
	p, sp, dp := nlaFind(pr, ctaPNum), nlaFind(pr, ctaPSrc), nlaFind(pr, ctaPDst)
	if len(s) != 4 || len(d) != 4 || len(p) < 1 || p[0] != unix.IPPROTO_TCP || len(sp) != 2 || len(dp) != 2 {
		return
	}
	copy(src[:], s)
	copy(dst[:], d)
	return src, dst, binary.BigEndian.Uint16(sp), binary.BigEndian.Uint16(dp), true
}

// nlaFind returns the payload of attribute typ among attrs (nil if absent).
func nlaFind(attrs []byte, typ uint16) []byte {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		t := binary.NativeEndian.Uint16(attrs[2:4]) &^ nlaNested
		if l < 4 || l > len(attrs) {
			return nil
		}
		if t == typ {
			return attrs[4:l]
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return nil
}

// dumpBench dumps the conntrack table of the socket's namespace and marks
// every benchmark connection present in seen (index i, if i < len(seen)).
// It returns how many of them it found and how many other entries.
func (s *ctSock) dumpBench(seen []bool) (found, others int, err error) {
	var m msg
	seq := s.nextSeq()
	off := m.begin(ctSubsys<<8|ctMsgGet, nlmRequest|nlmDump, seq)
	m.end(off)
	if err := unix.Sendto(s.fd, m.b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("send dump request: %w", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		b, rerr := s.recv()
		if rerr == unix.EAGAIN {
			if time.Now().After(deadline) {
				return found, others, errors.New("dump did not finish in 5 minutes")
			}
			continue
		}
		if rerr != nil {
			return found, others, fmt.Errorf("receive dump: %w", rerr)
		}
		done := false
		var derr error
		eachNlMsg(b, func(typ uint16, mseq uint32, data []byte) {
			if mseq != seq || done {
				return
			}
			switch typ {
			case nlmDone, nlmError:
				done = true
				if e := nlErrno(data); e != 0 {
					derr = e
				}
				return
			case nlmOverrun:
				done, derr = true, unix.ENOBUFS
				return
			}
			src, dst, sp, dp, ok := origTuple(data)
			if !ok {
				others++
				return
			}
			i, ok := benchIndex(src, dst, sp, dp)
			if !ok || i >= len(seen) {
				others++
				return
			}
			if !seen[i] {
				seen[i] = true
				found++
			}
		})
		if done {
			return found, others, derr
		}
	}
}

// sampleFilter is a socket filter for the standby's event socket that
// lets through only the benchmark's lag samples (original source port
// benchSPortBase), so the watcher costs the measured unit almost nothing.
// It relies on the kernel's fixed layout of an IPv4 conntrack event:
// netlink header (16), nfgenmsg (4), CTA_TUPLE_ORIG (4), CTA_TUPLE_IP (4),
// source and destination addresses (8 each), CTA_TUPLE_PROTO (4), protocol
// number (8), then CTA_PROTO_SRC_PORT: its header at offset 56 and its value
// at 60. Everything that passes is decoded and checked in full.
func sampleFilter() ([]unix.SockFilter, error) {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 58, Size: 2}, // nla_type of the source port attribute (native order)
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(htons(ctaPSrc)), SkipTrue: 3},
		bpf.LoadAbsolute{Off: 60, Size: 2}, // the port (network order, as BPF loads)
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: benchSPortBase, SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		out[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return out, nil
}

// htons returns v as BPF's big-endian load sees a native-order uint16.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func (s *ctSock) attachFilter(f []unix.SockFilter) error {
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(s.fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		uintptr(unsafe.Pointer(&prog)), unsafe.Sizeof(prog), 0)
	if e != 0 {
		return e
	}
	return nil
}

// sysctlFile is a /proc/sys file opened inside a lab namespace (the
// namespace is bound at open), read again and again.
type sysctlFile struct{ f *os.File }

func openSysctl(l *lab.Lab, role, path string) (*sysctlFile, error) {
	var f *os.File
	err := l.Do(role, func() error {
		var err error
		f, err = os.Open("/proc/sys/" + path)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &sysctlFile{f: f}, nil
}

func (s *sysctlFile) read() (int, error) {
	var b [32]byte
	n, err := s.f.ReadAt(b[:], 0)
	if n == 0 && err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b[:n])))
}

func (s *sysctlFile) close() { _ = s.f.Close() }

// addrString formats a 4-byte address for messages.
func addrString(a [4]byte) string { return netip.AddrFrom4(a).String() }
