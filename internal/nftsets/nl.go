package nftsets

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The netlink messages are built here rather than with google/nftables:
// v0.3.0 cannot give an added element its remaining life
// (NFTA_SET_ELEM_EXPIRATION) besides its timeout, has no DESTROYSETELEM, and
// its monitor events do not say which set an element event is for.

// Kernel values missing from golang.org/x/sys/unix.
const (
	nftMsgDestroySetElem = 0x1e // NFT_MSG_DESTROYSETELEM, Linux 6.3
	nftSetElemCatchall   = 0x2  // NFT_SET_ELEM_CATCHALL
	nftSetConcat         = 0x80 // NFT_SET_CONCAT
	nftaSetElemKeyEnd    = 0xa  // NFTA_SET_ELEM_KEY_END
	nftaSetElemExprs     = 0xb  // NFTA_SET_ELEM_EXPRESSIONS
	nftaTableName        = 0x1  // NFTA_TABLE_NAME
	nftaSetHandle        = 0x10 // NFTA_SET_HANDLE
	nftaTableHandle      = 0x4  // NFTA_TABLE_HANDLE
)

// maxListAttr bounds the element list of one message: a netlink attribute's
// length is 16 bits.
const maxListAttr = 60000

var errSetMissing = errors.New("set does not exist")

// errUnsupported marks an element the package cannot carry (verdict or
// object map data); it is skipped.
var errUnsupported = errors.New("unsupported element")

// setInfo is what the package needs of a set's definition.
type setInfo struct {
	flags    uint32
	keyLen   uint32
	dataType uint32
	dataLen  uint32
	timeout  time.Duration // the set's default element timeout
	handle   uint64        // changes when the set is created anew
}

func (i setInfo) hasTimeout() bool { return i.flags&unix.NFT_SET_TIMEOUT != 0 }

// check reports why the package cannot synchronise a set like i.
func (i setInfo) check() error {
	switch {
	case i.flags&unix.NFT_SET_CONSTANT != 0:
		return errors.New("it is constant: its elements never change")
	case i.flags&unix.NFT_SET_OBJECT != 0:
		return errors.New("object maps are not supported")
	case i.flags&unix.NFT_SET_MAP != 0 && i.dataType == unix.NFT_DATA_VERDICT:
		return errors.New("verdict maps are not supported")
	}
	return nil
}

// nlConn is a NETLINK_NETFILTER socket in one namespace. It is used by one
// goroutine at a time.
type nlConn struct {
	c          *netlink.Conn
	rbuf       []byte // dump read buffer
	maxBatch   int    // bytes one transaction may take (the socket's send buffer)
	useDestroy bool   // DESTROYSETELEM is accepted (Linux 6.3+)
}

// nsFD turns a namespace handle into netlink's NetNS field: 0 means the
// calling thread's namespace.
func nsFD(nsh netns.NsHandle) int {
	if !nsh.IsOpen() {
		return 0
	}
	return int(nsh)
}

func dial(nsh netns.NsHandle) (*nlConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD(nsh)})
	if err != nil {
		return nil, fmt.Errorf("open netlink (netfilter): %w", err)
	}
	// Errors need not echo the (large) request. (Extended acks are left
	// off: mdlayher/netlink misreads them in capped acks.)
	_ = c.SetOption(netlink.CapAcknowledge, true)
	_ = c.SetReadBuffer(4 << 20)
	n := &nlConn{c: c, useDestroy: true, maxBatch: 200 << 10}
	n.maxBatch = growSendBuffer(c, 8<<20)
	return n, nil
}

// growSendBuffer raises the socket's send buffer (one transaction is one
// sendmsg, which the buffer bounds) and returns the usable size.
func growSendBuffer(c *netlink.Conn, want int) int {
	usable := 200 << 10 // the kernel default (wmem_default) is 208 KiB
	rc, err := c.SyscallConn()
	if err != nil {
		return usable
	}
	_ = rc.Control(func(fd uintptr) {
		// SO_SNDBUFFORCE passes wmem_max with CAP_NET_ADMIN.
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, want) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, want)
		}
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && v > 64<<10 {
			usable = v - 32<<10
		}
	})
	return usable
}

func (n *nlConn) close() error { return n.c.Close() }

func nfgen(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

func msgType(t int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | t)
}

func encodeAttrs(fn func(ae *netlink.AttributeEncoder)) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	fn(ae)
	b, err := ae.Encode()
	if err != nil {
		// Only attributes longer than 64 KiB fail, which the callers rule out.
		panic(fmt.Sprintf("nftsets: encode netlink attributes: %v", err))
	}
	return b
}

// getSet reads a set's definition; a missing table or set is errSetMissing.
func (n *nlConn) getSet(ref SetRef) (setInfo, error) {
	req := netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETSET), Flags: netlink.Request},
		Data: append(nfgen(ref.family(), 0), encodeAttrs(func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_SET_TABLE, ref.Table)
			ae.String(unix.NFTA_SET_NAME, ref.Set)
		})...),
	}
	msgs, err := n.c.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return setInfo{}, errSetMissing
		}
		return setInfo{}, fmt.Errorf("get nft set %s: %w", ref, err)
	}
	for _, m := range msgs {
		if m.Header.Type != msgType(unix.NFT_MSG_NEWSET) {
			continue
		}
		info, err := parseSet(m.Data)
		if err != nil {
			return setInfo{}, fmt.Errorf("get nft set %s: %w", ref, err)
		}
		return info, nil
	}
	return setInfo{}, fmt.Errorf("get nft set %s: no reply", ref)
}

// tableHandle returns the handle of the set's table: unique in the
// namespace, it changes when the table is created anew (set handles are
// counted per table, so a set in a new table may get its old handle).
func (n *nlConn) tableHandle(ref SetRef) (uint64, error) {
	req := netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETTABLE), Flags: netlink.Request},
		Data: append(nfgen(ref.family(), 0), encodeAttrs(func(ae *netlink.AttributeEncoder) {
			ae.String(nftaTableName, ref.Table)
		})...),
	}
	msgs, err := n.c.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, errSetMissing
		}
		return 0, fmt.Errorf("get nft table %s %s: %w", ref.Family, ref.Table, err)
	}
	var h uint64
	for _, m := range msgs {
		if m.Header.Type != msgType(unix.NFT_MSG_NEWTABLE) || len(m.Data) < 4 {
			continue
		}
		err := walkAttrs(m.Data[4:], func(typ uint16, v []byte) error {
			var err error
			if typ == nftaTableHandle {
				h, err = be64(v)
			}
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	return h, nil
}

func parseSet(b []byte) (setInfo, error) {
	var info setInfo
	if len(b) < 4 {
		return info, errMalformedAttr
	}
	err := walkAttrs(b[4:], func(typ uint16, v []byte) error {
		var err error
		switch typ {
		case unix.NFTA_SET_FLAGS:
			info.flags, err = be32(v)
		case unix.NFTA_SET_KEY_LEN:
			info.keyLen, err = be32(v)
		case unix.NFTA_SET_DATA_TYPE:
			info.dataType, err = be32(v)
		case unix.NFTA_SET_DATA_LEN:
			info.dataLen, err = be32(v)
		case unix.NFTA_SET_TIMEOUT:
			var ms uint64
			ms, err = be64(v)
			info.timeout = msDuration(ms)
		case nftaSetHandle:
			info.handle, err = be64(v)
		}
		return err
	})
	return info, err
}

var errMalformedAttr = errors.New("malformed netlink attributes")

// walkAttrs calls fn for each netlink attribute in b, with its type (flags
// masked off) and its data, which points into b.
func walkAttrs(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return errMalformedAttr
		}
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (netlink.Nested | netlink.NetByteOrder)
		if l < 4 || l > len(b) {
			return errMalformedAttr
		}
		if err := fn(typ, b[4:l:l]); err != nil {
			return err
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return nil
}

func be32(v []byte) (uint32, error) {
	if len(v) != 4 {
		return 0, errMalformedAttr
	}
	return binary.BigEndian.Uint32(v), nil
}

func be64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, errMalformedAttr
	}
	return binary.BigEndian.Uint64(v), nil
}

func attrString(v []byte) string {
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}

func msDuration(ms uint64) time.Duration {
	return time.Duration(min(ms, maxMillis)) * time.Millisecond
}

// listElements dumps the elements of a set. Elements the package cannot
// carry are counted in skipped. An element without its own timeout but with
// an expiration gets the set's default timeout. The elements' slices point
// into the received messages. The elements are appended to buf[:0], which
// a caller that lists often passes back to save allocations.
//
// The kernel dumps a set in parts, one per read, walking the set anew for
// each and skipping what it sent: elements inserted or removed meanwhile (by
// the packet path, by expiry) can make it miss some. parts says how many
// there were; a listing of one part is consistent.
func (n *nlConn) listElements(ref SetRef, info setInfo, buf []Element) (elems []Element, skipped, parts int, err error) {
	elems = buf[:0]
	req := netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Dump},
		Data: append(nfgen(ref.family(), 0), encodeAttrs(func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, ref.Table)
			ae.String(unix.NFTA_SET_ELEM_LIST_SET, ref.Set)
		})...),
	}
	for attempt := 0; ; attempt++ {
		elems, skipped, parts = elems[:0], 0, 0
		intr, err := n.dump(req, func(h netlink.Header, data []byte) error {
			if h.Type != msgType(unix.NFT_MSG_NEWSETELEM) {
				return nil
			}
			parts++
			var bad int
			_, _, elems, bad, err = appendElemMsg(elems, data)
			skipped += bad
			return err
		})
		if errors.Is(err, unix.ENOENT) {
			return elems, 0, 0, errSetMissing
		}
		if err != nil {
			return elems, 0, 0, fmt.Errorf("list nft set %s: %w", ref, err)
		}
		// The ruleset changed during the dump: the listing may miss
		// elements or hold some twice. Try again.
		if intr {
			if attempt < 3 {
				continue
			}
			return elems, 0, 0, fmt.Errorf("list nft set %s: the ruleset kept changing during the listing", ref)
		}
		for i := range elems {
			if elems[i].Timeout == 0 && elems[i].Expires > 0 {
				elems[i].Timeout = max(info.timeout, elems[i].Expires)
			}
		}
		return elems, skipped, parts, nil
	}
}

// dump sends a dump request and calls fn with the header and payload of
// each reply message until the dump is done. It reads with a large buffer
// (mdlayher/netlink reads a page at a time, which makes the kernel answer
// in 4 KiB pieces); the payloads stay valid after the call. intr reports a
// dump the kernel flagged as interrupted by a change.
func (n *nlConn) dump(req netlink.Message, fn func(h netlink.Header, data []byte) error) (intr bool, err error) {
	sent, err := n.c.Send(req)
	if err != nil {
		return false, err
	}
	rc, err := n.c.SyscallConn()
	if err != nil {
		return false, err
	}
	_ = n.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer func() { _ = n.c.SetReadDeadline(time.Time{}) }()
	if n.rbuf == nil {
		n.rbuf = make([]byte, 128<<10)
	}
	for {
		var nr, rflags int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			for {
				nr, _, rflags, _, rerr = unix.Recvmsg(int(fd), n.rbuf, nil, 0)
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		}); err != nil {
			return intr, err
		}
		if rerr != nil {
			return intr, rerr
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return intr, errors.New("netlink reply truncated")
		}
		buf := bytes.Clone(n.rbuf[:nr])
		for len(buf) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(buf))
			if l < unix.NLMSG_HDRLEN || l > len(buf) {
				return intr, errMalformedAttr
			}
			h := netlink.Header{
				Length:   uint32(l),
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(buf[4:])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(buf[6:])),
				Sequence: binary.NativeEndian.Uint32(buf[8:]),
				PID:      binary.NativeEndian.Uint32(buf[12:]),
			}
			data := buf[unix.NLMSG_HDRLEN:l:l]
			buf = buf[min((l+3)&^3, len(buf)):]
			if h.Sequence != sent.Header.Sequence {
				continue // a stale answer to an earlier request
			}
			switch h.Type {
			case netlink.Done, netlink.Error:
				if len(data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(data)); code < 0 {
						return intr, syscall.Errno(-code)
					}
				}
				if h.Type == netlink.Done {
					return intr, nil
				}
				continue
			}
			intr = intr || h.Flags&netlink.DumpInterrupted != 0
			if err := fn(h, data); err != nil {
				return intr, err
			}
		}
	}
}

// parseElemMsg decodes a NEWSETELEM/DELSETELEM message (after the netlink
// header): its table, set and elements, whose slices point into b. Elements
// the package cannot carry are counted in bad.
func parseElemMsg(b []byte) (table, set string, elems []Element, bad int, err error) {
	return appendElemMsg(nil, b)
}

// appendElemMsg is parseElemMsg appending to elems.
func appendElemMsg(elems []Element, b []byte) (table, set string, _ []Element, bad int, err error) {
	if len(b) < 4 {
		return "", "", elems, 0, errMalformedAttr
	}
	err = walkAttrs(b[4:], func(typ uint16, v []byte) error {
		switch typ {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			table = attrString(v)
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = attrString(v)
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			return walkAttrs(v, func(_ uint16, item []byte) error {
				elems = append(elems, Element{})
				perr := parseElem(item, &elems[len(elems)-1])
				if perr != nil {
					elems = elems[:len(elems)-1]
				}
				switch {
				case errors.Is(perr, errUnsupported):
					bad++
				case perr != nil:
					return perr
				}
				return nil
			})
		}
		return nil
	})
	return table, set, elems, bad, err
}

func parseElem(b []byte, e *Element) error {
	unsupported := false
	err := walkAttrs(b, func(typ uint16, v []byte) error {
		var err error
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			e.Key, err = parseData(v)
		case nftaSetElemKeyEnd:
			e.KeyEnd, err = parseData(v)
		case unix.NFTA_SET_ELEM_DATA:
			e.Data, err = parseData(v)
		case unix.NFTA_SET_ELEM_FLAGS:
			var f uint32
			f, err = be32(v)
			e.IntervalEnd = f&unix.NFT_SET_ELEM_INTERVAL_END != 0
			e.Catchall = f&nftSetElemCatchall != 0
		case unix.NFTA_SET_ELEM_TIMEOUT:
			var ms uint64
			ms, err = be64(v)
			e.Timeout = msDuration(ms)
		case unix.NFTA_SET_ELEM_EXPIRATION:
			var ms uint64
			ms, err = be64(v)
			e.Expires = msDuration(ms)
		case unix.NFTA_SET_ELEM_USERDATA:
			e.UserData = v
		case unix.NFTA_SET_ELEM_OBJREF:
			unsupported = true
		}
		if errors.Is(err, errUnsupported) {
			unsupported = true
			err = nil
		}
		return err
	})
	switch {
	case err != nil:
		return err
	case unsupported,
		len(e.Key) > MaxKeyLen, len(e.KeyEnd) > MaxKeyLen, len(e.Data) > MaxDataLen, len(e.UserData) > MaxUserDataLen,
		!e.Catchall && len(e.Key) == 0:
		return errUnsupported
	}
	if len(e.UserData) == 0 {
		e.UserData = nil
	}
	return nil
}

// parseData decodes an nft_data: a value, or a verdict (not carried).
func parseData(b []byte) ([]byte, error) {
	var v []byte
	err := walkAttrs(b, func(typ uint16, d []byte) error {
		switch typ {
		case unix.NFTA_DATA_VALUE:
			v = d
		case unix.NFTA_DATA_VERDICT:
			return errUnsupported
		}
		return nil
	})
	if len(v) == 0 {
		v = nil
	}
	return v, err
}

// opKind orders the operations of a transaction: deletes first, so that a
// changed element is deleted and added again.
type opKind int

const (
	opDelete opKind = iota
	opAdd
)

// setOps is one kind of change to one set's elements.
type setOps struct {
	ref   SetRef
	kind  opKind
	elems []Element // for opAdd, Expires is the life to give the element
}

// marshalElem encodes one element of an element list.
func marshalElem(e *Element, kind opKind) []byte {
	return encodeAttrs(func(ae *netlink.AttributeEncoder) {
		var flags uint32
		if e.IntervalEnd {
			flags |= unix.NFT_SET_ELEM_INTERVAL_END
		}
		if e.Catchall {
			flags |= nftSetElemCatchall
		}
		if flags != 0 {
			ae.Uint32(unix.NFTA_SET_ELEM_FLAGS, flags)
		}
		if !e.Catchall {
			ae.Nested(unix.NFTA_SET_ELEM_KEY, func(n *netlink.AttributeEncoder) error {
				n.Bytes(unix.NFTA_DATA_VALUE, e.Key)
				return nil
			})
		}
		if len(e.KeyEnd) > 0 {
			ae.Nested(nftaSetElemKeyEnd, func(n *netlink.AttributeEncoder) error {
				n.Bytes(unix.NFTA_DATA_VALUE, e.KeyEnd)
				return nil
			})
		}
		if kind == opDelete {
			return
		}
		if e.Timeout > 0 {
			ae.Uint64(unix.NFTA_SET_ELEM_TIMEOUT, millis(e.Timeout))
			if e.Expires > 0 {
				ae.Uint64(unix.NFTA_SET_ELEM_EXPIRATION, millis(min(e.Expires, e.Timeout)))
			}
		}
		if len(e.Data) > 0 {
			ae.Nested(unix.NFTA_SET_ELEM_DATA, func(n *netlink.AttributeEncoder) error {
				n.Bytes(unix.NFTA_DATA_VALUE, e.Data)
				return nil
			})
		}
		if len(e.UserData) > 0 {
			ae.Bytes(unix.NFTA_SET_ELEM_USERDATA, e.UserData)
		}
	})
}

// commit applies ops in as few transactions as the socket's send buffer
// allows: one, unless the changes take more than maxBatch bytes (several
// MiB). It returns the first error; a failed transaction changes nothing.
func (n *nlConn) commit(ops []setOps) error {
	var (
		batch []netlink.Message
		size  int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := n.sendBatch(batch)
		batch, size = nil, 0
		return err
	}
	for _, g := range ops {
		if len(g.elems) == 0 {
			continue
		}
		typ, flags := unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create
		if g.kind == opDelete {
			typ, flags = unix.NFT_MSG_DELSETELEM, netlink.Request|netlink.Acknowledge
			if n.useDestroy {
				typ = nftMsgDestroySetElem
			}
		}
		head := encodeAttrs(func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, g.ref.Table)
			ae.String(unix.NFTA_SET_ELEM_LIST_SET, g.ref.Set)
		})
		var list []byte
		emit := func() error {
			if len(list) == 0 {
				return nil
			}
			data := append(nfgen(g.ref.family(), 0), head...)
			data = append(data, encodeAttrs(func(ae *netlink.AttributeEncoder) {
				ae.Bytes(unix.NFTA_SET_ELEM_LIST_ELEMENTS|netlink.Nested, list)
			})...)
			if size+len(data)+64 > n.maxBatch {
				if err := flush(); err != nil {
					return err
				}
			}
			batch = append(batch, netlink.Message{Header: netlink.Header{Type: msgType(typ), Flags: flags}, Data: data})
			size += len(data) + 16
			list = nil
			return nil
		}
		for i := range g.elems {
			item := marshalElem(&g.elems[i], g.kind)
			if len(list)+len(item)+4 > maxListAttr {
				if err := emit(); err != nil {
					return err
				}
			}
			list = appendAttr(list, unix.NFTA_LIST_ELEM|netlink.Nested, item)
		}
		if err := emit(); err != nil {
			return err
		}
	}
	return flush()
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for l%4 != 0 {
		b = append(b, 0)
		l++
	}
	return b
}

// sendBatch sends msgs as one nftables transaction and waits for the
// kernel's answer to each message.
func (n *nlConn) sendBatch(msgs []netlink.Message) error {
	full := make([]netlink.Message, 0, len(msgs)+2)
	full = append(full, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})
	full = append(full, msgs...)
	full = append(full, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})
	if _, err := n.c.SendMessages(full); err != nil {
		return fmt.Errorf("send nftables transaction: %w", err)
	}
	// The kernel processes the batch within sendmsg, so every answer is
	// queued by now; after an error, the rest is drained quickly (a failed
	// commit answers once for the whole batch).
	var first error
	got := 0
	deadline := time.Now().Add(time.Minute)
	for got < len(msgs) {
		if first != nil {
			deadline = time.Now().Add(20 * time.Millisecond)
		}
		_ = n.c.SetReadDeadline(deadline)
		replies, err := n.c.Receive()
		if err == nil {
			got += len(replies)
			continue
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			got++
			if first == nil {
				first = err
				if (errno == unix.EINVAL || errno == unix.EOPNOTSUPP) && n.useDestroy && hasDestroy(msgs) {
					// A kernel before 6.3: use DELSETELEM from now on.
					n.useDestroy = false
				}
			}
			continue
		}
		if first == nil {
			first = err
		}
		break
	}
	_ = n.c.SetReadDeadline(time.Time{})
	if first != nil {
		return fmt.Errorf("nftables transaction: %w", first)
	}
	return nil
}

func hasDestroy(msgs []netlink.Message) bool {
	for _, m := range msgs {
		if m.Header.Type == msgType(nftMsgDestroySetElem) {
			return true
		}
	}
	return false
}

// monitor is a netlink socket subscribed to nftables events, used only as a
// hint that a configured set may have changed.
type monitor struct {
	c *netlink.Conn
}

func openMonitor(nsh netns.NsHandle) (*monitor, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFD(nsh)})
	if err != nil {
		return nil, err
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadBuffer(4 << 20)
	return &monitor{c: c}, nil
}

func (m *monitor) close() { _ = m.c.Close() }

// eventKind is what an nftables event is about.
type eventKind int

const (
	evElements eventKind = iota // elements added or deleted over netlink
	evSet                       // a set created or deleted
	evTable                     // a table created or deleted (set is "")
	evLost                      // events were lost (receive overrun)
)

// run calls fn for every element, set and table event, and with evLost
// after a receive overrun. It returns when the socket is closed.
func (m *monitor) run(fn func(kind eventKind, family uint8, table, set string)) {
	fails := 0
	for {
		msgs, err := m.c.Receive()
		if err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) && errno == unix.ENOBUFS && fails < 1000 {
				fails++
				fn(evLost, 0, "", "")
				continue
			}
			return // closed, or broken: polling goes on without hints
		}
		fails = 0
		for _, msg := range msgs {
			if kind, fam, table, set, ok := parseEvent(msg); ok {
				fn(kind, fam, table, set)
			}
		}
	}
}

// parseEvent decodes the nftables events that may change a set.
func parseEvent(msg netlink.Message) (kind eventKind, family uint8, table, set string, ok bool) {
	if msg.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(msg.Data) < 4 {
		return 0, 0, "", "", false
	}
	var tableAttr, setAttr uint16
	switch int(msg.Header.Type & 0xff) {
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM, nftMsgDestroySetElem:
		kind, tableAttr, setAttr = evElements, unix.NFTA_SET_ELEM_LIST_TABLE, unix.NFTA_SET_ELEM_LIST_SET
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
		kind, tableAttr, setAttr = evSet, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
		kind, tableAttr = evTable, nftaTableName
	default:
		return 0, 0, "", "", false
	}
	err := walkAttrs(msg.Data[4:], func(typ uint16, v []byte) error {
		switch {
		case typ == tableAttr:
			table = attrString(v)
		case setAttr != 0 && typ == setAttr:
			set = attrString(v)
		}
		return nil
	})
	if err != nil {
		return 0, 0, "", "", false
	}
	return kind, msg.Data[0], table, set, true
}
