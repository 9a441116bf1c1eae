package ctsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A small NETLINK_NETFILTER socket layer. ti-mo/conntrack's Conn cannot be
// used for the hot paths: its Listen workers stop at the first ENOBUFS, its
// Dump gathers the whole table in memory (gigabytes at a million entries),
// it sends one request per syscall and waits for each ack, and its Flow
// marshaller cannot express NAT (CTA_NAT_SRC/DST), which a NATed
// connection needs to be recreated. Messages are decoded by fastdecode.go
// into ti-mo's Flow and Expect types, exactly as ti-mo's Event.Unmarshal
// would (tested against it), at a fifth of the cost.

const (
	nlmsgHdrLen = 16
	nfgenLen    = 4

	nlmError   = 2
	nlmDone    = 3
	nlmOverrun = 4

	nlmFRequest = 0x1
	nlmFMulti   = 0x2
	nlmFAck     = 0x4
	nlmFDump    = 0x300
	nlmFExcl    = 0x200
	nlmFCreate  = 0x400

	nlaFNested = 0x8000

	subsysCT    = 1
	subsysCTExp = 2

	msgNew    = 0
	msgGet    = 1
	msgDelete = 2

	netlinkCapAck = 10 // NETLINK_CAP_ACK
)

// nlConn is one netlink socket of the netfilter family, opened inside a
// network namespace and driven through the Go runtime poller (so Close and
// deadlines interrupt a blocked read).
type nlConn struct {
	f   *os.File
	rc  syscall.RawConn
	seq uint32
	buf []byte
}

// inNS runs fn on a locked thread switched into the namespace nsh (the
// caller's own when nsh is not open). If switching back fails the thread
// stays locked and is discarded when its goroutine ends, so no other
// goroutine ever runs in the wrong namespace.
func inNS(nsh netns.NsHandle, fn func() error) error {
	if !nsh.IsOpen() {
		return fn()
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(nsh); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("enter netns: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// readSysctl reads /proc/sys/<path> as seen from the namespace nsh.
func readSysctl(nsh netns.NsHandle, path string) (string, error) {
	var f *os.File
	err := inNS(nsh, func() error {
		var err error
		f, err = os.Open("/proc/sys/" + path)
		return err
	})
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 64)
	n, err := f.Read(b)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b[:n])), nil
}

// dialNetfilter opens a NETLINK_NETFILTER socket in nsh, with a receive
// buffer of rcvbuf bytes (SO_RCVBUFFORCE, falling back to SO_RCVBUF) when
// rcvbuf > 0, joined to the given multicast groups.
func dialNetfilter(nsh netns.NsHandle, rcvbuf int, groups ...uint32) (*nlConn, error) {
	var fd int
	err := inNS(nsh, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	fail := func(what string, err error) (*nlConn, error) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("netlink %s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	// Acks without the echoed request keep the receive queue small when a
	// batch of hundreds of requests is answered.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, netlinkCapAck, 1)
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
				return fail("set receive buffer", err)
			}
		}
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			return fail(fmt.Sprintf("join group %d", g), err)
		}
	}
	f := os.NewFile(uintptr(fd), "netlink-netfilter")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &nlConn{f: f, rc: rc, seq: uint32(time.Now().UnixNano()), buf: make([]byte, 64<<10)}, nil
}

func (c *nlConn) Close() error { return c.f.Close() }

func (c *nlConn) nextSeq() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq++
	}
	return c.seq
}

// rcvbuf returns the socket's receive buffer size as the kernel reports it.
func (c *nlConn) rcvbuf() int {
	var n int
	_ = c.rc.Control(func(fd uintptr) {
		n, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	return n
}

// send writes b (one or more netlink messages) to the kernel, which
// processes them before the call returns.
func (c *nlConn) send(b []byte) error {
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

// recv reads one datagram. The returned slice is valid until the next
// recv. An overrun of the receive buffer is returned as unix.ENOBUFS.
func (c *nlConn) recv() ([]byte, error) { return c.recvInto(c.buf) }

// recvInto reads one datagram into buf.
func (c *nlConn) recvInto(buf []byte) ([]byte, error) {
	var (
		n     int
		flags int
		rerr  error
	)
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, flags, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	if flags&unix.MSG_TRUNC != 0 {
		return nil, errors.New("netlink message truncated")
	}
	return buf[:n], nil
}

func (c *nlConn) setReadDeadline(t time.Time) { _ = c.f.SetReadDeadline(t) }

// nlMsg is one netlink message; data excludes the 16-byte header.
type nlMsg struct {
	typ, flags uint16
	seq        uint32
	data       []byte
}

// eachMsg calls fn for every message of a datagram.
func eachMsg(b []byte, fn func(m nlMsg) error) error {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlmsgHdrLen || l > len(b) {
			return errors.New("netlink: malformed message length")
		}
		m := nlMsg{
			typ:   binary.NativeEndian.Uint16(b[4:6]),
			flags: binary.NativeEndian.Uint16(b[6:8]),
			seq:   binary.NativeEndian.Uint32(b[8:12]),
			data:  b[nlmsgHdrLen:l],
		}
		if err := fn(m); err != nil {
			return err
		}
		al := (l + 3) &^ 3
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	return nil
}

// errno returns the error code of an NLMSG_ERROR or NLMSG_DONE message (0
// for an ack).
func (m nlMsg) errno() syscall.Errno {
	if len(m.data) < 4 {
		return 0
	}
	e := int32(binary.NativeEndian.Uint32(m.data[:4]))
	if e < 0 {
		return syscall.Errno(-e)
	}
	return 0
}

// dump sends a dump request (already built, with sequence number seq) and
// calls fn for each answer until the end of the dump.
func (c *nlConn) dump(req []byte, seq uint32, fn func(m nlMsg) error) error {
	if err := c.send(req); err != nil {
		return fmt.Errorf("send dump request: %w", err)
	}
	for {
		b, err := c.recv()
		if err != nil {
			return fmt.Errorf("receive dump: %w", err)
		}
		if done, err := dumpDatagram(b, seq, fn); done || err != nil {
			return err
		}
	}
}

// dumpPipelined is dump with the kernel's work and fn's on two threads: a
// reader goroutine receives datagrams while fn handles the previous ones.
// The kernel fills a dump in the recvmsg call, so a plain dump does the
// two in turn. On an error the socket may be left mid-dump, with the
// reader still on it: the caller must close it.
func (c *nlConn) dumpPipelined(req []byte, seq uint32, fn func(m nlMsg) error) error {
	if err := c.send(req); err != nil {
		return fmt.Errorf("send dump request: %w", err)
	}
	type datagram struct {
		b   []byte
		err error
	}
	const depth = 8
	full := make(chan datagram, depth)
	free := make(chan []byte, depth+1)
	for range depth + 1 {
		free <- make([]byte, len(c.buf))
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			b, err := c.recvInto(buf)
			select {
			case full <- datagram{b, err}:
			case <-stop:
				return
			}
			if err != nil || dumpEnds(b, seq) {
				return
			}
		}
	}()
	for d := range full {
		if d.err != nil {
			return fmt.Errorf("receive dump: %w", d.err)
		}
		done, err := dumpDatagram(d.b, seq, fn)
		if done || err != nil {
			return err
		}
		free <- d.b[:cap(d.b)]
	}
	return nil
}

// dumpDatagram hands the answers to seq in datagram b to fn; done reports
// the end of the dump (err: the kernel's error, if any).
func dumpDatagram(b []byte, seq uint32, fn func(m nlMsg) error) (done bool, err error) {
	var derr error
	err = eachMsg(b, func(m nlMsg) error {
		if m.seq != seq || done {
			return nil // a late answer to an earlier request
		}
		switch m.typ {
		case nlmDone, nlmError:
			done = true
			if e := m.errno(); e != 0 {
				derr = e
			}
			return nil
		case nlmOverrun:
			done = true
			derr = unix.ENOBUFS
			return nil
		}
		return fn(m)
	})
	if err != nil {
		return true, err
	}
	return done, derr
}

// dumpEnds reports whether datagram b ends the dump seq.
func dumpEnds(b []byte, seq uint32) bool {
	end := false
	_ = eachMsg(b, func(m nlMsg) error {
		if m.seq == seq && (m.typ == nlmDone || m.typ == nlmError || m.typ == nlmOverrun) {
			end = true
		}
		return nil
	})
	return end
}

// request sends one request with NLM_F_ACK and returns the data messages
// that answer it (a get returns one), or the error the kernel acked.
func (c *nlConn) request(req []byte, seq uint32, fn func(m nlMsg) error) error {
	if err := c.send(req); err != nil {
		return err
	}
	c.setReadDeadline(time.Now().Add(10 * time.Second))
	defer c.setReadDeadline(time.Time{})
	for {
		b, err := c.recv()
		if err != nil {
			return err
		}
		done := false
		var rerr error
		err = eachMsg(b, func(m nlMsg) error {
			if m.seq != seq || done {
				return nil
			}
			if m.typ == nlmError {
				done = true
				if e := m.errno(); e != 0 {
					rerr = e
				}
				return nil
			}
			if fn != nil {
				return fn(m)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			return rerr
		}
	}
}

// batch sends a buffer of requests numbered first..last (only the last one
// asks for an ack; the kernel answers every failed one with an error
// anyway) and reports each failure to fail. It returns once the last one
// is answered. A lost answer (overrun) or a timeout returns an error: the
// outcome of the requests without a reported error is then unknown.
func (c *nlConn) batch(b []byte, first, last uint32, fail func(seq uint32, e syscall.Errno)) error {
	if err := c.send(b); err != nil {
		return fmt.Errorf("send batch: %w", err)
	}
	c.setReadDeadline(time.Now().Add(30 * time.Second))
	defer c.setReadDeadline(time.Time{})
	for {
		rb, err := c.recv()
		if err != nil {
			return fmt.Errorf("receive acks: %w", err)
		}
		done := false
		_ = eachMsg(rb, func(m nlMsg) error {
			if m.typ != nlmError || m.seq-first > last-first {
				return nil
			}
			if e := m.errno(); e != 0 {
				fail(m.seq, e)
			}
			if m.seq == last {
				done = true
			}
			return nil
		})
		if done {
			return nil
		}
	}
}

// msgBuf builds netfilter netlink messages.
type msgBuf struct {
	b []byte
}

// begin starts a message and returns its offset for end.
func (m *msgBuf) begin(subsys, typ uint8, flags uint16, seq uint32, family uint8) int {
	off := len(m.b)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0)
	m.b = binary.NativeEndian.AppendUint16(m.b, uint16(subsys)<<8|uint16(typ))
	m.b = binary.NativeEndian.AppendUint16(m.b, flags)
	m.b = binary.NativeEndian.AppendUint32(m.b, seq)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0)
	m.b = append(m.b, family, 0, 0, 0) // nfgenmsg: family, version 0, res_id 0
	return off
}

func (m *msgBuf) end(off int) {
	binary.NativeEndian.PutUint32(m.b[off:], uint32(len(m.b)-off))
}

func (m *msgBuf) attr(typ uint16, data []byte) {
	m.b = binary.NativeEndian.AppendUint16(m.b, uint16(4+len(data)))
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = append(m.b, data...)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *msgBuf) nest(typ uint16) int {
	off := len(m.b)
	m.b = binary.NativeEndian.AppendUint16(m.b, 0)
	m.b = binary.NativeEndian.AppendUint16(m.b, typ|nlaFNested)
	return off
}

func (m *msgBuf) endNest(off int) {
	binary.NativeEndian.PutUint16(m.b[off:], uint16(len(m.b)-off))
}

func (m *msgBuf) u8(typ uint16, v uint8) { m.attr(typ, []byte{v}) }

func (m *msgBuf) be16(typ uint16, v uint16) {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	m.attr(typ, b[:])
}

func (m *msgBuf) be32(typ uint16, v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	m.attr(typ, b[:])
}

func (m *msgBuf) be64(typ uint16, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	m.attr(typ, b[:])
}

// cstr writes a NUL-terminated string, as the kernel's NLA_NUL_STRING
// policy requires.
func (m *msgBuf) cstr(typ uint16, s string) {
	m.b = binary.NativeEndian.AppendUint16(m.b, uint16(4+len(s)+1))
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = append(m.b, s...)
	m.b = append(m.b, 0)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}
