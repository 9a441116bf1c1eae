package nftsets

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestParseSetRef(t *testing.T) {
	good := map[string]SetRef{
		"inet/filter/blocklist": {"inet", "filter", "blocklist"},
		"ip6/t.x/s-1_a":         {"ip6", "t.x", "s-1_a"},
		"netdev/x/y":            {"netdev", "x", "y"},
	}
	for in, want := range good {
		got, err := ParseSetRef(in)
		if err != nil || got != want {
			t.Errorf("ParseSetRef(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("%v.String() = %q", got, got.String())
		}
		back, err := ParseReplTable(got.ReplTable())
		if err != nil || back != got {
			t.Errorf("ParseReplTable(%q) = %v, %v", got.ReplTable(), back, err)
		}
	}
	if got := (SetRef{"inet", "filter", "blocklist"}).ReplTable(); got != "nftset:inet:filter:blocklist" {
		t.Errorf("ReplTable = %q", got)
	}
	for _, in := range []string{"", "blocklist", "inet/filter", "inet/filter/bl/x", "inet//bl", "foo/filter/bl", "inet/fil ter/bl", "inet/filter/", "inet/f:x/bl"} {
		_, err := ParseSetRef(in)
		if err == nil {
			t.Errorf("ParseSetRef(%q): no error", in)
			continue
		}
		if !strings.Contains(err.Error(), `"`+in+`"`) || !strings.Contains(err.Error(), "inet/filter/blocklist") {
			t.Errorf("ParseSetRef(%q) error %q should name the value and the expected form", in, err)
		}
	}
	for _, in := range []string{"", "nftset:", "nftset:inet:filter", "x:inet:filter:bl", "nftset:inet:filter:bl:x", "nftset:foo:a:b"} {
		if _, err := ParseReplTable(in); err == nil {
			t.Errorf("ParseReplTable(%q): no error", in)
		}
	}
}

var stamp = time.UnixMilli(1_750_000_000_123)

func sampleElements() []Element {
	return []Element{
		{Key: []byte{10, 0, 0, 1}},
		{Key: []byte{10, 0, 0, 2}, Timeout: time.Hour, Expires: 30 * time.Minute, UserData: CommentUserData("blocked by ips")},
		{Key: bytes.Repeat([]byte{0x20}, 16), Timeout: 5 * time.Second, Expires: 1234 * time.Millisecond},
		{Key: []byte{10, 0, 0, 3, 0, 80, 0, 0}, Timeout: time.Minute, Expires: time.Second},
		{Key: []byte{10, 0, 0, 4}, Data: []byte{0, 0, 0, 42}},
		{Key: []byte{10, 0, 0, 0}, IntervalEnd: true},
		{Key: []byte{10, 0, 0, 0, 0, 0, 0, 0}, KeyEnd: []byte{10, 0, 0, 255, 0, 0, 0xff, 0xff}},
		{Catchall: true, Data: []byte{1, 2, 3, 4}},
		{Key: bytes.Repeat([]byte{1}, MaxKeyLen), KeyEnd: bytes.Repeat([]byte{2}, MaxKeyLen), Data: bytes.Repeat([]byte{3}, MaxDataLen), UserData: bytes.Repeat([]byte{4}, MaxUserDataLen), Timeout: time.Duration(maxMillis) * time.Millisecond, Expires: time.Duration(maxMillis) * time.Millisecond},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for i, e := range sampleElements() {
		key, val := EncodeKey(e), EncodeValue(e, stamp)
		got, err := DecodeElement(key, val)
		if err != nil {
			t.Fatalf("%d: DecodeElement: %v", i, err)
		}
		want := e
		want.EncodedAt = stamp
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%d: round trip (-want +got):\n%s", i, diff)
		}
		if !bytes.Equal(EncodeKey(got), key) || !bytes.Equal(EncodeValue(got, got.EncodedAt), val) {
			t.Errorf("%d: re-encoding differs", i)
		}
	}
	// Without a time: no stamp.
	e := Element{Key: []byte{1, 2, 3, 4}}
	got, err := DecodeElement(EncodeKey(e), EncodeValue(e, time.Time{}))
	if err != nil || !got.EncodedAt.IsZero() {
		t.Errorf("no stamp: %+v, %v", got, err)
	}
	if n := len(EncodeValue(e, time.Time{})); n != 2 {
		t.Errorf("permanent element value is %d bytes, want 2", n)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := Element{Key: []byte{10, 0, 0, 1}, Timeout: time.Second, Expires: time.Second}
	k, v := EncodeKey(good), EncodeValue(good, stamp)
	cases := map[string][2][]byte{
		"empty key":          {nil, v},
		"empty value":        {k, nil},
		"bad version":        {k, append([]byte{2}, v[1:]...)},
		"unknown key flag":   {append([]byte{0x80}, k[1:]...), v},
		"unknown field":      {k, []byte{1, 0x40}},
		"trailing value":     {k, append(bytes.Clone(v), 0)},
		"trailing key":       {append(bytes.Clone(k), 9), v},
		"key too long":       {EncodeKey(Element{Key: make([]byte, MaxKeyLen+1)}), v},
		"zero key":           {[]byte{0, 0}, v},
		"catch-all with key": {[]byte{kCatchall, 1, 1}, v},
		"key end missing":    {[]byte{kKeyEnd, 1, 1}, v},
		"truncated data":     {k, []byte{1, vData, 5, 1, 2}},
		"zero data":          {k, []byte{1, vData, 0}},
		"zero timeout":       {k, []byte{1, vTimeout, 0, 0}},
		"huge timeout":       {k, []byte{1, vTimeout, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1}},
		"bad varint":         {k, []byte{1, 0xff}},
	}
	for name, c := range cases {
		if _, err := DecodeElement(c[0], c[1]); err == nil || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: DecodeElement error = %v, want ErrMalformed", name, err)
		}
	}
}

func TestRemainingAt(t *testing.T) {
	e := Element{Key: []byte{1, 1, 1, 1}, Timeout: time.Hour, Expires: 10 * time.Minute, EncodedAt: stamp}
	cases := []struct {
		now  time.Time
		want time.Duration
	}{
		{stamp, 10 * time.Minute},
		{stamp.Add(-time.Minute), 10 * time.Minute}, // receiver clock behind
		{stamp.Add(4 * time.Minute), 6 * time.Minute},
		{stamp.Add(10 * time.Minute), -1},
	}
	for _, c := range cases {
		if got := e.RemainingAt(c.now); got != c.want {
			t.Errorf("RemainingAt(%v) = %v, want %v", c.now.Sub(stamp), got, c.want)
		}
	}
	if got := (Element{Key: []byte{1}}).RemainingAt(stamp); got != 0 {
		t.Errorf("no timeout: %v", got)
	}
}

func TestComment(t *testing.T) {
	e := Element{UserData: CommentUserData("hello")}
	if e.Comment() != "hello" {
		t.Errorf("Comment() = %q", e.Comment())
	}
	// A record before the comment, and truncated garbage after.
	e.UserData = append([]byte{1, 2, 0xaa, 0xbb}, append(CommentUserData("x"), 0, 9)...)
	if e.Comment() != "x" {
		t.Errorf("Comment() = %q", e.Comment())
	}
	long := strings.Repeat("c", 400)
	if u := CommentUserData(long); len(u) > MaxUserDataLen {
		t.Errorf("CommentUserData of 400 bytes is %d bytes", len(u))
	}
}

func FuzzDecodeElement(f *testing.F) {
	for _, e := range sampleElements() {
		f.Add(EncodeKey(e), EncodeValue(e, stamp))
	}
	f.Add([]byte{}, []byte{})
	f.Add([]byte{kCatchall, 0}, []byte{1, 0})
	f.Fuzz(func(t *testing.T, key, value []byte) {
		e, err := DecodeElement(key, value)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// What decodes re-encodes to something that decodes the same.
		k2, v2 := EncodeKey(e), EncodeValue(e, e.EncodedAt)
		e2, err := DecodeElement(k2, v2)
		if err != nil {
			t.Fatalf("re-encoded element does not decode: %v", err)
		}
		if diff := cmp.Diff(e, e2); diff != "" {
			t.Fatalf("re-encoding changed the element (-first +second):\n%s", diff)
		}
		if len(e.Key) > MaxKeyLen || len(e.Data) > MaxDataLen || len(e.UserData) > MaxUserDataLen {
			t.Fatalf("limits not enforced: %+v", e)
		}
		_ = e.Comment()
		_ = e.RemainingAt(stamp)
	})
}

// elemMsg builds a NEWSETELEM message body as the kernel sends it.
func elemMsg(elems []Element) []byte {
	var list []byte
	for i := range elems {
		list = appendAttr(list, unix.NFTA_LIST_ELEM|netlink.Nested, marshalElem(&elems[i], opAdd))
	}
	return append(nfgen(unix.NFPROTO_INET, 0), encodeAttrs(func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, "filter")
		ae.String(unix.NFTA_SET_ELEM_LIST_SET, "blocklist")
		ae.Bytes(unix.NFTA_SET_ELEM_LIST_ELEMENTS|netlink.Nested, list)
	})...)
}

func TestParseElemMsg(t *testing.T) {
	in := sampleElements()
	table, set, got, bad, err := parseElemMsg(elemMsg(in))
	if err != nil || table != "filter" || set != "blocklist" || bad != 0 {
		t.Fatalf("parseElemMsg: %q %q bad=%d err=%v", table, set, bad, err)
	}
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("elements (-sent +parsed):\n%s", diff)
	}
}

func FuzzParseElemMsg(f *testing.F) {
	f.Add([]byte{2, 0, 0, 0})
	f.Add(elemMsg(sampleElements()))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, elems, _, err := parseElemMsg(b)
		if err != nil {
			return
		}
		for _, e := range elems {
			if len(e.Key) > MaxKeyLen || len(e.Data) > MaxDataLen || len(e.UserData) > MaxUserDataLen {
				t.Fatalf("limits not enforced: %+v", e)
			}
		}
	})
}
