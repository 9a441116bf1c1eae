package ctsync

import (
	"errors"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reading events in bulk. The kernel sends every conntrack event as its
// own datagram; reading them one system call each, and copying each into
// its own allocation for the queue, was half of the Source's CPU at a
// million new connections. The reader instead takes up to evBatch
// datagrams per recvmmsg into a scratch area, packs them into big pooled
// chunks and queues slices of those; Run hands the slices to the decoder
// (which copies whatever it keeps) and releases them, and a chunk is
// reused once every slice of it has been released.
//
// Each datagram gets a slot as large as nlConn's own receive buffer
// (64 KiB), so a datagram is truncated exactly when recv would have
// truncated it, and that fails the reader as before. Slots are only
// touched as far as the kernel writes, and the chunks hold the datagrams
// back to back, so the queue's memory stays close to the byte count
// MaxQueue bounds.

const (
	evBatch    = 64       // datagrams per recvmmsg
	evSlot     = 64 << 10 // room for each datagram, as nlConn.recv
	evChunk    = 1 << 20  // bytes of a queue chunk
	evFreeKeep = 8        // spare chunks kept for reuse
)

// mmsghdr is struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// chunk is a block of datagrams read from the kernel. refs counts the
// queued slices of it not yet released, plus one while the reader still
// fills it; at zero it goes back to free.
type chunk struct {
	buf  []byte
	refs atomic.Int32
	free chan *chunk
}

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 {
		select {
		case c.free <- c:
		default: // enough spares: let it go
		}
	}
}

// evReader is the reader goroutine's receive state.
type evReader struct {
	scratch []byte
	iovs    []unix.Iovec
	hdrs    []mmsghdr
	free    chan *chunk
	cur     *chunk // being filled; nil before the first datagram
	off     int    // end of the data in cur
	items   []evItem
}

func newEvReader() *evReader {
	r := &evReader{
		scratch: make([]byte, evBatch*evSlot),
		iovs:    make([]unix.Iovec, evBatch),
		hdrs:    make([]mmsghdr, evBatch),
		free:    make(chan *chunk, evFreeKeep),
	}
	for i := range r.hdrs {
		r.iovs[i].Base = &r.scratch[i*evSlot]
		r.iovs[i].SetLen(evSlot)
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.SetIovlen(1)
	}
	return r
}

var errTruncated = errors.New("netlink message truncated")

// read receives up to evBatch datagrams from c (waiting for the first) and
// returns them as queue items, valid until released. A truncated datagram
// ends the batch: the items before it are returned with errTruncated. An
// error of the socket (unix.ENOBUFS for an overrun) comes with no items;
// when it follows datagrams in the same call, the kernel keeps it for the
// next one.
func (r *evReader) read(c *nlConn) ([]evItem, error) {
	n, err := c.recvmmsg(r.hdrs)
	if err != nil {
		return nil, err
	}
	r.items = r.items[:0]
	for i := range n {
		h := &r.hdrs[i]
		if h.hdr.Flags&unix.MSG_TRUNC != 0 {
			err = errTruncated
			break
		}
		l := int(h.n)
		if r.cur == nil || len(r.cur.buf)-r.off < l {
			r.next()
		}
		b := r.cur.buf[r.off : r.off+l : r.off+l]
		copy(b, r.scratch[i*evSlot:i*evSlot+l])
		r.off += l
		r.cur.refs.Add(1)
		r.items = append(r.items, evItem{b: b, c: r.cur})
	}
	for i := range n {
		r.hdrs[i].hdr.Flags = 0
	}
	return r.items, err
}

// next moves to a fresh chunk.
func (r *evReader) next() {
	if r.cur != nil {
		r.cur.release() // the reader's own reference
	}
	select {
	case c := <-r.free:
		r.cur = c
	default:
		r.cur = &chunk{buf: make([]byte, evChunk), free: r.free}
	}
	r.cur.refs.Store(1)
	r.off = 0
}

// recvmmsg reads up to len(hs) datagrams, waiting for the first (through
// the runtime poller, so Close interrupts it).
func (c *nlConn) recvmmsg(hs []mmsghdr) (int, error) {
	var (
		n    int
		rerr error
	)
	err := c.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), 0, 0, 0)
		if e != 0 {
			n, rerr = 0, e
		} else {
			n, rerr = int(r), nil
		}
		return rerr != unix.EAGAIN
	})
	runtime.KeepAlive(hs)
	if err != nil {
		return 0, err
	}
	return n, rerr
}
