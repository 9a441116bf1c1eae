package repl

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sampleFrames has one frame of every type with every field it uses set
// to a distinct value.
func sampleFrames() []Frame {
	return []Frame{
		{Type: FrameHello, SinkID: 0x1112131415161718, Full: false, SourceID: 0x2122232425262728, Seq: 300},
		{Type: FrameHello, SinkID: 7, Full: true},
		{Type: FrameSnapshotBegin, SourceID: 0x31, Seq: 1 << 40, Tables: []string{"conntrack", "expect", "nftset:blocklist"}},
		{Type: FrameEntries, Tables: []string{"conntrack", "expect"}, Ops: []Op{
			{Kind: OpPut, Table: 0, Key: []byte("k1"), Value: []byte("value one")},
			{Kind: OpPut, Table: 1, Key: []byte{}, Value: []byte{}},
			{Kind: OpPut, Table: 0, Key: bytes.Repeat([]byte{0xee}, 200), Value: bytes.Repeat([]byte{0xdd}, 300)},
		}},
		{Type: FrameSnapshotEnd, SourceID: 0x41, Seq: 12, Sent: 1 << 20, Digests: []TableDigest{{"conntrack", 3, 0xdeadbeef}, {"expect", 0, 0}}},
		{Type: FrameChanges, SourceID: 0x51, Seq: 1000, Tables: []string{"conntrack", "nftset:x"}, Ops: []Op{
			{Kind: OpPut, Table: 1, Key: []byte("a"), Value: []byte("b"), OldHash: 0x0102030405060708},
			{Kind: OpDelete, Table: 0, Key: []byte("c"), OldHash: 99},
			{Kind: OpPut, Table: 0, Key: []byte("d"), Value: []byte{}, OldHash: 0},
		}},
		{Type: FrameAck, Seq: 77, Received: 1 << 33},
		{Type: FrameDigest, SourceID: 0x61, Seq: 0, Sent: 5, Digests: []TableDigest{{"t", 1 << 50, 1}}},
		{Type: FrameDigest, SourceID: 0x62, Seq: 9, Sent: 300, Copying: true},
		{Type: FrameResync, Reason: ReasonAudit},
		{Type: FrameStatus, Status: SyncInSync, SourceID: 0x71, Seq: 5, Entries: 1_000_000},
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, want := range sampleFrames() {
		b := AppendFrame(nil, want)
		got, err := ParseFrame(b)
		if err != nil {
			t.Fatalf("%v: ParseFrame: %v", want.Type, err)
		}
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b []byte) bool { return bytes.Equal(a, b) })); diff != "" {
			t.Errorf("%v: round trip (-want +got):\n%s", want.Type, diff)
		}
		if re := AppendFrame([]byte("prefix"), got); !bytes.Equal(re[6:], b) || string(re[:6]) != "prefix" {
			t.Errorf("%v: re-encoding differs", want.Type)
		}
	}
}

// TestFrameLayout pins the bytes documented in doc.go.
func TestFrameLayout(t *testing.T) {
	cases := []struct {
		f    Frame
		want string
	}{
		{Frame{Type: FrameHello, SinkID: 0x0102030405060708, Full: true, SourceID: 0x1112131415161718, Seq: 300},
			"5452" + "01" + "01" + "0102030405060708" + "01" + "1112131415161718" + "ac02"},
		{Frame{Type: FrameChanges, SourceID: 9, Seq: 5, Tables: []string{"ct"}, Ops: []Op{
			{Kind: OpPut, Table: 0, Key: []byte("k"), Value: []byte("vv"), OldHash: 0xaabb},
			{Kind: OpDelete, Table: 0, Key: []byte("z"), OldHash: 1},
		}},
			"5452" + "01" + "05" + "0000000000000009" + "05" + "01" + "02" + "6374" + "02" +
				"01" + "00" + "01" + "6b" + "02" + "7676" + "000000000000aabb" +
				"02" + "00" + "01" + "7a" + "0000000000000001"},
		{Frame{Type: FrameEntries, Tables: []string{"t"}, Ops: []Op{{Kind: OpPut, Key: []byte("a"), Value: []byte("b")}}},
			"5452" + "01" + "03" + "01" + "01" + "74" + "01" + "00" + "01" + "61" + "01" + "62"},
		{Frame{Type: FrameDigest, SourceID: 1, Seq: 2, Sent: 200, Digests: []TableDigest{{"t", 3, 4}}},
			"5452" + "01" + "07" + "0000000000000001" + "00" + "c801" + "02" + "01" + "01" + "74" + "03" + "0000000000000004"},
		{Frame{Type: FrameDigest, SourceID: 1, Seq: 2, Sent: 3, Copying: true},
			"5452" + "01" + "07" + "0000000000000001" + "01" + "03" + "02" + "00"},
		{Frame{Type: FrameAck, Seq: 1, Received: 128}, "5452" + "01" + "06" + "01" + "8001"},
		{Frame{Type: FrameResync, Reason: ReasonGap}, "5452" + "01" + "08" + "01"},
		{Frame{Type: FrameStatus, Status: SyncOutOfSync, SourceID: 2, Seq: 3, Entries: 4}, "5452" + "01" + "09" + "02" + "0000000000000002" + "03" + "04"},
	}
	for _, c := range cases {
		if got := hex.EncodeToString(AppendFrame(nil, c.f)); got != c.want {
			t.Errorf("%v:\n got %s\nwant %s", c.f.Type, got, c.want)
		}
	}
}

func TestParseFrameRejects(t *testing.T) {
	valid := map[FrameType][]byte{}
	for _, f := range sampleFrames() {
		valid[f.Type] = AppendFrame(nil, f)
	}
	// Every strict prefix of every valid frame is truncated, and one more
	// byte is trailing garbage.
	for typ, b := range valid {
		for n := range len(b) {
			if _, err := ParseFrame(b[:n]); err == nil {
				t.Errorf("%v: prefix of %d/%d bytes accepted", typ, n, len(b))
			} else if !errors.Is(err, ErrMalformed) {
				t.Errorf("%v: error %v does not wrap ErrMalformed", typ, err)
			}
		}
		if _, err := ParseFrame(append(bytes.Clone(b), 0)); err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("%v: trailing byte: %v", typ, err)
		}
	}
	changes := valid[FrameChanges]
	mod := func(i int, v byte) []byte { b := bytes.Clone(changes); b[i] = v; return b }
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"magic", mod(0, 'X'), "magic"},
		{"version", mod(2, 2), "version"},
		{"type", mod(3, 0), "unknown frame type"},
		{"type 10", mod(3, 10), "unknown frame type"},
		{"end flags", AppendFrame(nil, Frame{Type: FrameSnapshotEnd, Copying: true}), "flags"},
		{"hello flags", func() []byte { b := bytes.Clone(valid[FrameHello]); b[12] = 2; return b }(), "flags"},
		{"op kind", AppendFrame(nil, Frame{Type: FrameChanges, Tables: []string{"t"}, Ops: []Op{{Kind: 3, Key: []byte("k")}}}), "op kind"},
		{"table index", AppendFrame(nil, Frame{Type: FrameChanges, Tables: []string{"t"}, Ops: []Op{{Kind: OpDelete, Table: 1, Key: []byte("k")}}}), "table index"},
		{"no tables", AppendFrame(nil, Frame{Type: FrameEntries, Ops: []Op{{Kind: OpPut}}}), "table index"},
		{"empty name", AppendFrame(nil, Frame{Type: FrameEntries, Tables: []string{""}, Ops: []Op{{Kind: OpPut}}}), "empty table name"},
		{"non-minimal varint", []byte("TR\x01\x06\x80\x00\x00"), "non-minimal"},
		{"varint overflow", []byte("TR\x01\x06\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02\x00"), "overflows"},
		{"huge count", []byte("TR\x01\x03\x01\x01t\xff\xff\xff\xff\x0f"), "cannot fit"},
		{"resync reason", []byte("TR\x01\x08\x00"), "reason"},
		{"status", []byte("TR\x01\x09\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), "status"},
		{"key too long", AppendFrame(nil, Frame{Type: FrameEntries, Tables: []string{"t"}, Ops: []Op{{Key: make([]byte, MaxKeyLen+1)}}}), "exceeds the limit"},
		{"seq overflow", AppendFrame(nil, Frame{Type: FrameChanges, Seq: 1<<64 - 1, Tables: []string{"t"}, Ops: []Op{{Kind: OpDelete}, {Kind: OpDelete}}}), "overflow"},
	}
	for _, c := range cases {
		_, err := ParseFrame(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// The error names the frame, the item and the field.
	bad := AppendFrame(nil, Frame{Type: FrameChanges, Tables: []string{"t"}, Ops: []Op{
		{Kind: OpDelete, Key: []byte("a")}, {Kind: OpPut, Key: []byte("b"), Value: []byte("long value")}}})
	_, err := ParseFrame(bad[:len(bad)-12])
	if err == nil || !strings.Contains(err.Error(), "Changes item 2: value") {
		t.Errorf("truncated value: %v", err)
	}
}

func TestEntryHash(t *testing.T) {
	// Pinned values: both units must compute the same digests, so the
	// function may change only with the frame version.
	pins := []struct {
		k, v string
		h    uint64
	}{
		{"", "", 0xd4a387ad055f8585},
		{"key", "value", 0x7aed57a9bb27faf4},
		{strings.Repeat("k", 24), strings.Repeat("v", 80), 0x07f5464ec84df25b},
	}
	for _, p := range pins {
		if h := EntryHash([]byte(p.k), []byte(p.v)); h != p.h {
			t.Errorf("EntryHash(%q, %q) = %#016x, pinned %#016x", p.k, p.v, h, p.h)
		}
	}
	// Moving a value between keys, or bytes between key and value, changes it.
	if EntryHash([]byte("ab"), []byte("c")) == EntryHash([]byte("a"), []byte("bc")) {
		t.Error("key/value boundary not hashed")
	}
	seen := map[uint64]string{}
	var k, v [40]byte
	for i := range 200000 {
		n := i % 40
		k[i%7] = byte(i)
		v[i%11] = byte(i >> 3)
		h := EntryHash(k[:n], v[:(i/40)%40])
		if h == 0 {
			t.Fatal("EntryHash returned 0")
		}
		id := string(k[:n]) + "|" + string(v[:(i/40)%40])
		if prev, ok := seen[h]; ok && prev != id {
			t.Fatalf("collision after %d entries", i)
		}
		seen[h] = id
	}
	// Every bit of the input reaches the output.
	for n := 1; n <= 100; n += 7 {
		b := make([]byte, n)
		base := hash64(0, b)
		for i := range n * 8 {
			b[i/8] ^= 1 << (i % 8)
			if hash64(0, b) == base {
				t.Fatalf("len %d: flipping bit %d does not change the hash", n, i)
			}
			b[i/8] ^= 1 << (i % 8)
		}
	}
}
