package nftsets

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Element is one element of an nftables set as it travels between the
// units.
//
// The key part (Key, KeyEnd, IntervalEnd, Catchall) identifies the element
// and is carried in the replication key ([EncodeKey]); the rest is the
// replication value ([EncodeValue]).
type Element struct {
	// Key is the key as the kernel stores it: the raw bytes, in the set's
	// byte order; in a concatenation ("ipv4_addr . inet_service") every
	// field is padded to a multiple of 4 bytes. Empty only for Catchall.
	Key []byte
	// KeyEnd is the end of the range of an element of a concatenated
	// interval set; nil otherwise.
	KeyEnd []byte
	// IntervalEnd marks the element that closes an interval in an interval
	// set (the kernel lists interval sets as start and end elements).
	IntervalEnd bool
	// Catchall is the catch-all element "*" (no key).
	Catchall bool

	// Data is a map element's value (e.g. "ipv4_addr : mark"). Verdict
	// maps and object maps are not carried.
	Data []byte
	// Timeout is the element's timeout (its own or the set's default);
	// zero for an element that never expires.
	Timeout time.Duration
	// Expires is the element's remaining life when it was encoded; only
	// meaningful when Timeout is not zero.
	Expires time.Duration
	// UserData is the element's userdata: type-length-value records, of
	// which nft writes the comment ([Element.Comment]).
	UserData []byte
	// EncodedAt is the sender's wall clock when the value was encoded (zero
	// when the value does not say). See [Element.RemainingAt].
	EncodedAt time.Time
}

// Limits of the kernel (NFT_DATA_VALUE_MAXLEN, NFT_USERDATA_MAXLEN) that the
// codec enforces.
const (
	MaxKeyLen      = 64
	MaxDataLen     = 64
	MaxUserDataLen = 256
	// maxMillis keeps every duration inside time.Duration (about 278 years).
	maxMillis = 1 << 43
)

// Key flags (first byte of a replication key).
const (
	kIntervalEnd = 1 << 0
	kKeyEnd      = 1 << 1
	kCatchall    = 1 << 2
	kAll         = 1<<3 - 1
)

// Value format. Integers are encoding/binary unsigned varints.
//
//	0x01 presence [timeout_ms expires_ms] [encoded_at_unix_ms] [len data] [len userdata]
//
// The presence bits say which optional fields follow, in this order.
const (
	valueVersion = 0x01

	vTimeout  = 1 << 0
	vStamp    = 1 << 1
	vData     = 1 << 2
	vUserData = 1 << 3
	vAll      = 1<<4 - 1
)

// ErrMalformed is wrapped by every error of [DecodeElement].
var ErrMalformed = errors.New("malformed nft set element")

// EncodeKey returns the replication key of e: one flag byte, the length of
// Key as a varint, Key, then KeyEnd if any. The same element always gives
// the same bytes.
func EncodeKey(e Element) []byte {
	return appendKey(make([]byte, 0, 2+len(e.Key)+len(e.KeyEnd)), &e)
}

func appendKey(b []byte, e *Element) []byte {
	var flags byte
	if e.IntervalEnd {
		flags |= kIntervalEnd
	}
	if len(e.KeyEnd) > 0 {
		flags |= kKeyEnd
	}
	if e.Catchall {
		flags |= kCatchall
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(e.Key)))
	b = append(b, e.Key...)
	return append(b, e.KeyEnd...)
}

// EncodeValue returns the replication value of e: its timeout and the
// remaining life (e.Expires), the time of encoding now (the sender's wall
// clock, for [Element.RemainingAt]), the map data and the userdata. Fields
// that e does not have take no room: a permanent set element is 3 bytes
// plus the time.
func EncodeValue(e Element, now time.Time) []byte {
	var pres uint64
	if e.Timeout > 0 {
		pres |= vTimeout
	}
	if !now.IsZero() {
		pres |= vStamp
	}
	if len(e.Data) > 0 {
		pres |= vData
	}
	if len(e.UserData) > 0 {
		pres |= vUserData
	}
	b := make([]byte, 0, 24+len(e.Data)+len(e.UserData))
	b = append(b, valueVersion)
	b = binary.AppendUvarint(b, pres)
	if pres&vTimeout != 0 {
		b = binary.AppendUvarint(b, millis(e.Timeout))
		b = binary.AppendUvarint(b, millis(e.Expires))
	}
	if pres&vStamp != 0 {
		b = binary.AppendUvarint(b, uint64(max(now.UnixMilli(), 0)))
	}
	if pres&vData != 0 {
		b = binary.AppendUvarint(b, uint64(len(e.Data)))
		b = append(b, e.Data...)
	}
	if pres&vUserData != 0 {
		b = binary.AppendUvarint(b, uint64(len(e.UserData)))
		b = append(b, e.UserData...)
	}
	return b
}

// millis rounds d to milliseconds within the codec's range; a positive
// duration under 1 ms becomes 1 ms so that it stays "has a timeout".
func millis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	ms := uint64((d + time.Millisecond - 1) / time.Millisecond)
	return min(ms, maxMillis)
}

// DecodeElement decodes a replication key and value made by [EncodeKey] and
// [EncodeValue]. The returned slices are copies. It never panics; anything
// malformed or beyond the kernel's limits is an error wrapping
// [ErrMalformed].
func DecodeElement(key, value []byte) (Element, error) {
	var e Element
	if err := decodeKey(&e, key); err != nil {
		return Element{}, fmt.Errorf("%w: key: %v", ErrMalformed, err)
	}
	if err := decodeValue(&e, value); err != nil {
		return Element{}, fmt.Errorf("%w: value: %v", ErrMalformed, err)
	}
	return e, nil
}

func decodeKey(e *Element, key []byte) error {
	if len(key) < 2 {
		return errors.New("too short")
	}
	flags := key[0]
	if flags&^kAll != 0 {
		return fmt.Errorf("unknown flags %#x", flags)
	}
	n, w := binary.Uvarint(key[1:])
	if w <= 0 || n > MaxKeyLen || int(n) > len(key)-1-w {
		return errors.New("bad key length")
	}
	k := key[1+w : 1+w+int(n)]
	end := key[1+w+int(n):]
	switch {
	case flags&kCatchall != 0:
		if len(k) != 0 || len(end) != 0 || flags != kCatchall {
			return errors.New("catch-all element with a key")
		}
	case len(k) == 0:
		return errors.New("empty key")
	case flags&kKeyEnd != 0:
		if len(end) == 0 || len(end) > MaxKeyLen {
			return errors.New("bad key end length")
		}
	case len(end) != 0:
		return errors.New("trailing bytes")
	}
	e.IntervalEnd = flags&kIntervalEnd != 0
	e.Catchall = flags&kCatchall != 0
	if len(k) > 0 {
		e.Key = bytes.Clone(k)
	}
	if len(end) > 0 {
		e.KeyEnd = bytes.Clone(end)
	}
	return nil
}

func decodeValue(e *Element, v []byte) error {
	if len(v) < 2 {
		return errors.New("too short")
	}
	if v[0] != valueVersion {
		return fmt.Errorf("unknown version %#x", v[0])
	}
	r := reader{b: v[1:]}
	pres := r.uvarint()
	if pres&^vAll != 0 {
		return fmt.Errorf("unknown fields %#x", pres)
	}
	if pres&vTimeout != 0 {
		t, x := r.uvarint(), r.uvarint()
		if t == 0 || t > maxMillis || x > maxMillis {
			return errors.New("bad timeout")
		}
		e.Timeout = time.Duration(t) * time.Millisecond
		e.Expires = time.Duration(x) * time.Millisecond
	}
	if pres&vStamp != 0 {
		ms := r.uvarint()
		if ms > maxMillis {
			return errors.New("bad time")
		}
		e.EncodedAt = time.UnixMilli(int64(ms))
	}
	if pres&vData != 0 {
		e.Data = r.bytes(MaxDataLen)
	}
	if pres&vUserData != 0 {
		e.UserData = r.bytes(MaxUserDataLen)
	}
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return errors.New("trailing bytes")
	}
	return nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	n, w := binary.Uvarint(r.b)
	if w <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b = r.b[w:]
	return n
}

func (r *reader) bytes(limit int) []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n == 0 || n > uint64(limit) || n > uint64(len(r.b)) {
		r.err = errors.New("bad length")
		return nil
	}
	b := bytes.Clone(r.b[:n])
	r.b = r.b[n:]
	return b
}

// RemainingAt returns how long the element has left to live at now (the
// receiver's wall clock): Expires less the time since EncodedAt. A value
// replayed long after it was encoded (a resynchronisation from the
// replication log) thus gets its true remaining time. A receiver clock
// behind the sender's counts as no time elapsed; one ahead by d shortens
// the element's life by d, so the units' clocks must be synchronised (NTP).
// It returns 0 for an element without timeout and a negative duration for
// one that has expired.
func (e Element) RemainingAt(now time.Time) time.Duration {
	if e.Timeout <= 0 {
		return 0
	}
	left := e.Expires
	if !e.EncodedAt.IsZero() {
		if elapsed := now.Sub(e.EncodedAt); elapsed > 0 {
			left -= elapsed
		}
	}
	if left <= 0 {
		return -1
	}
	return left
}

// NFTNL_UDATA_SET_ELEM_COMMENT: the userdata record nft writes a comment in.
const udataElemComment = 0

// Comment returns the element's comment ("comment" in nft), if any.
func (e Element) Comment() string {
	u := e.UserData
	for len(u) >= 2 {
		typ, n := u[0], int(u[1])
		if len(u) < 2+n {
			break
		}
		if typ == udataElemComment {
			return string(bytes.TrimRight(u[2:2+n], "\x00"))
		}
		u = u[2+n:]
	}
	return ""
}

// CommentUserData returns the userdata that holds comment as nft writes it
// (NUL-terminated), for building an [Element]; nil for an empty comment.
// A comment is cut to the 253 bytes that fit the kernel's limit.
func CommentUserData(comment string) []byte {
	if comment == "" {
		return nil
	}
	if len(comment) > MaxUserDataLen-3 {
		comment = comment[:MaxUserDataLen-3]
	}
	b := []byte{udataElemComment, byte(len(comment) + 1)}
	b = append(b, comment...)
	return append(b, 0)
}
