package ctsync

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ti-mo/conntrack"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func tcpInfo(state uint8, ws uint8, of, rf uint8) conntrack.ProtoInfo {
	return conntrack.ProtoInfo{TCP: &conntrack.ProtoInfoTCP{State: state, OriginalWindowScale: ws, ReplyWindowScale: ws,
		OriginalFlags: uint16(of) << 8, ReplyFlags: uint16(rf) << 8}}
}

// sampleFlows are flows as the kernel reports them, one per feature.
func sampleFlows() map[string]conntrack.Flow {
	c4, s4, v4 := ip("198.18.0.10"), ip("198.19.0.10"), ip("198.19.255.1")
	c6, s6, v6a := ip("2001:db8:1::10"), ip("2001:db8:2::10"), ip("2001:db8:2::1")
	out := map[string]conntrack.Flow{}

	f := conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured|conntrack.StatusConfirmed, c4, s4, 40000, 443, 431999, 0)
	f.ProtoInfo = tcpInfo(3, 7, 0x23, 0x33)
	f.ID, f.Use = 12345, 1
	f.CountersOrig = conntrack.Counter{Packets: 10, Bytes: 1000}
	f.Timestamp.Start = time.Unix(1700000000, 0)
	out["tcp4"] = f

	f = conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured|conntrack.StatusConfirmed|
		conntrack.StatusSrcNAT|conntrack.StatusSrcNATDone|conntrack.StatusDstNATDone, c4, s4, 40001, 80, 300, 0)
	f.TupleReply.IP.DestinationAddress = v4
	f.TupleReply.Proto.DestinationPort = 61000
	f.ProtoInfo = tcpInfo(3, 7, 0x27, 0x23)
	out["tcp4-snat"] = f

	f = conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusDstNAT|conntrack.StatusSrcNAT, c4, v4, 40002, 8080, 120, 0x55)
	f.TupleReply.IP.SourceAddress = ip("10.0.0.5")
	f.TupleReply.Proto.SourcePort = 80
	f.TupleReply.IP.DestinationAddress = ip("10.0.0.1")
	f.TupleReply.Proto.DestinationPort = 40002
	f.ProtoInfo = tcpInfo(1, 0, 0, 0)
	out["tcp4-dnat-snat-mark"] = f

	f = conntrack.NewFlow(17, conntrack.StatusSeenReply|conntrack.StatusAssured, c6, s6, 5353, 53, 180, 0)
	f.Zone = 7
	out["udp6-zone"] = f

	f = conntrack.NewFlow(17, conntrack.StatusSrcNAT, c6, s6, 123, 123, 30, 0)
	f.TupleReply.IP.DestinationAddress = v6a
	f.TupleReply.Proto.DestinationPort = 1123
	out["udp6-snat"] = f

	f = conntrack.Flow{Timeout: 29, Status: conntrack.StatusSeenReply | conntrack.StatusSrcNAT}
	f.TupleOrig = conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: c4, DestinationAddress: s4},
		Proto: conntrack.ProtoTuple{Protocol: 1, ICMPv4: true, ICMPID: 77, ICMPType: 8}}
	f.TupleReply = conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: s4, DestinationAddress: v4},
		Proto: conntrack.ProtoTuple{Protocol: 1, ICMPv4: true, ICMPID: 1077, ICMPType: 0}}
	out["icmp4-snat"] = f

	f = conntrack.Flow{Timeout: 29}
	f.TupleOrig = conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: c6, DestinationAddress: s6},
		Proto: conntrack.ProtoTuple{Protocol: 58, ICMPv6: true, ICMPID: 9, ICMPType: 128}}
	f.TupleReply = conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: s6, DestinationAddress: c6},
		Proto: conntrack.ProtoTuple{Protocol: 58, ICMPv6: true, ICMPID: 9, ICMPType: 129}}
	out["icmp6"] = f

	f = conntrack.NewFlow(132, conntrack.StatusAssured, c4, s4, 2905, 2905, 210, 0)
	f.ProtoInfo.SCTP = &conntrack.ProtoInfoSCTP{State: 3, VTagOriginal: 0xdeadbeef, VTagReply: 0xfeedface}
	out["sctp"] = f

	f = conntrack.NewFlow(33, 0, c4, s4, 1, 2, 100, 0)
	f.ProtoInfo.DCCP = &conntrack.ProtoInfoDCCP{State: 4, Role: 1, HandshakeSeq: 1 << 40}
	out["dccp"] = f

	f = conntrack.NewFlow(47, 0, c4, s4, 0, 0, 100, 0)
	out["gre"] = f

	// An FTP control connection through SNAT with a mangled PORT command,
	// and its data connection.
	f = conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured|conntrack.StatusSrcNAT|
		conntrack.StatusSeqAdjust|conntrack.StatusHelper, c4, s4, 40003, 21, 431000, 0)
	f.TupleReply.IP.DestinationAddress = v4
	f.ProtoInfo = tcpInfo(3, 7, 0x27, 0x23)
	f.Helper = conntrack.Helper{Name: "ftp"}
	f.SeqAdjOrig = conntrack.SequenceAdjust{Position: 0x1234567, OffsetBefore: 0, OffsetAfter: 1}
	f.SeqAdjReply = conntrack.SequenceAdjust{Direction: true, Position: 99, OffsetBefore: 3, OffsetAfter: 4}
	f.Labels = []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80}
	f.TupleOrig.Zone, f.TupleReply.Zone, f.Zone = 3, 4, 5
	out["ftp-control"] = f

	f = conntrack.NewFlow(6, conntrack.StatusExpected|conntrack.StatusSeenReply|conntrack.StatusDstNAT, s4, v4, 20, 50000, 100, 0)
	f.TupleReply.IP.SourceAddress = c4
	f.TupleReply.Proto.SourcePort = 50001
	f.TupleMaster = conntrack.NewFlow(6, 0, c4, s4, 40003, 21, 0, 0).TupleOrig
	f.ProtoInfo = tcpInfo(2, 0, 0, 0)
	f.SynProxy = conntrack.SynProxy{ISN: 1, ITS: 2, TSOff: 3}
	f.Helper.Info = []byte{9, 9}
	out["ftp-data"] = f
	return out
}

// normalize is what a flow should look like after a round trip.
func normalize(f conntrack.Flow) conntrack.Flow {
	f.ID, f.Use = 0, 0
	f.Timestamp = conntrack.Timestamp{}
	f.CountersOrig, f.CountersReply = conntrack.Counter{}, conntrack.Counter{}
	f.SecurityContext = ""
	f.LabelsMask = nil
	f.Status &= StatusSyncMask
	if len(f.Labels) == 0 {
		f.Labels = nil
	}
	if len(f.Helper.Info) == 0 {
		f.Helper.Info = nil
	}
	if t := f.ProtoInfo.TCP; t != nil {
		c := *t
		c.OriginalFlags &= tcpFlagsInjectable << 8
		c.ReplyFlags &= tcpFlagsInjectable << 8
		f.ProtoInfo.TCP = &c
	}
	fix := func(s *conntrack.SequenceAdjust, reply bool) {
		if seqAdjSet(*s) {
			s.Direction = reply
		} else {
			*s = conntrack.SequenceAdjust{}
		}
	}
	fix(&f.SeqAdjOrig, false)
	fix(&f.SeqAdjReply, true)
	for _, t := range []*conntrack.Tuple{&f.TupleOrig, &f.TupleReply, &f.TupleMaster} {
		if t == &f.TupleMaster && !tupleFilled(*t) {
			*t = conntrack.Tuple{}
			continue
		}
		setICMPFlags(&t.Proto)
		if isICMP(t.Proto.Protocol) {
			t.Proto.SourcePort, t.Proto.DestinationPort = 0, 0
		} else {
			t.Proto.ICMPID, t.Proto.ICMPType, t.Proto.ICMPCode = 0, 0, 0
		}
	}
	f.TupleMaster.Zone = 0
	return f
}

func TestFlowRoundTrip(t *testing.T) {
	for name, f := range sampleFlows() {
		t.Run(name, func(t *testing.T) {
			b := EncodeFlow(nil, f)
			got, err := DecodeFlow(b)
			if err != nil {
				t.Fatalf("DecodeFlow: %v", err)
			}
			if d := cmp.Diff(normalize(f), got, addrCmp); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
			if again := EncodeFlow(nil, got); !bytes.Equal(again, b) {
				t.Errorf("re-encoding differs:\n%x\n%x", b, again)
			}
			// Appending keeps the prefix.
			pre := []byte("prefix")
			if ab := EncodeFlow(pre, f); !bytes.Equal(ab[:6], []byte("prefix")) || !bytes.Equal(ab[6:], b) {
				t.Errorf("EncodeFlow(dst) does not append")
			}
		})
	}
}

// TestFlowSize pins the compactness of the common entries.
func TestFlowSize(t *testing.T) {
	fl := sampleFlows()
	for name, max := range map[string]int{"tcp4": 32, "tcp4-snat": 38, "udp6-zone": 45, "icmp4-snat": 30} {
		n := len(EncodeFlow(nil, fl[name]))
		t.Logf("%s: %d bytes, key %d bytes", name, n, len(Key(fl[name])))
		if n > max {
			t.Errorf("%s encodes to %d bytes, want at most %d", name, n, max)
		}
	}
	if n := len(Key(fl["tcp4"])); n != 14 {
		t.Errorf("TCP/IPv4 key is %d bytes, want 14", n)
	}
}

func TestKey(t *testing.T) {
	fl := sampleFlows()
	a := fl["tcp4-snat"]
	b := a
	b.TupleReply.Proto.DestinationPort++
	b.Status = 0
	b.Timeout = 1
	if !bytes.Equal(Key(a), Key(b)) {
		t.Error("Key depends on more than the original tuple and zone")
	}
	b.Zone = 9
	if bytes.Equal(Key(a), Key(b)) {
		t.Error("Key ignores the zone")
	}
	seen := map[string]string{}
	for name, f := range fl {
		k := Key(f)
		if other, dup := seen[string(k)]; dup {
			t.Errorf("%s and %s have the same key", name, other)
		}
		seen[string(k)] = name
		tu, zone, err := decodeKey(k)
		if err != nil {
			t.Fatalf("%s: decodeKey: %v", name, err)
		}
		want := normalize(f).TupleOrig
		want.Zone = 0
		if d := cmp.Diff(want, tu, addrCmp); d != "" || zone != f.Zone {
			t.Errorf("%s: decodeKey: zone %d, want %d; tuple (-want +got):\n%s", name, zone, f.Zone, d)
		}
	}
	if _, _, err := decodeKey(append(Key(a), 0)); err == nil {
		t.Error("decodeKey accepts trailing bytes")
	}
}

func TestDecodeFlowRejects(t *testing.T) {
	for name, f := range sampleFlows() {
		b := EncodeFlow(nil, f)
		for i := range len(b) {
			if _, err := DecodeFlow(b[:i]); err == nil {
				t.Errorf("%s: truncated to %d of %d bytes decodes", name, i, len(b))
			}
		}
		if _, err := DecodeFlow(append(b, 0)); err == nil {
			t.Errorf("%s: trailing byte accepted", name)
		}
	}
	for _, b := range [][]byte{nil, {0}, {magicExpect, 0}, {magicFlow, 0xff, 0xff, 0xff, 0x7f}} {
		if _, err := DecodeFlow(b); err == nil {
			t.Errorf("DecodeFlow(%x) succeeds", b)
		}
	}
}

func sampleExpects() map[string]conntrack.Expect {
	c4, s4, v4 := ip("198.18.0.10"), ip("198.19.0.10"), ip("198.19.255.1")
	master := conntrack.NewFlow(6, 0, c4, s4, 40003, 21, 0, 0).TupleOrig
	out := map[string]conntrack.Expect{}
	out["ftp-port-nat"] = conntrack.Expect{
		Timeout:     299,
		TupleMaster: master,
		Tuple: conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: s4, DestinationAddress: v4},
			Proto: conntrack.ProtoTuple{Protocol: 6, DestinationPort: 50000}},
		Mask: conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: ip("255.255.255.255"), DestinationAddress: ip("255.255.255.255")},
			Proto: conntrack.ProtoTuple{Protocol: 6, DestinationPort: 0xffff}},
		HelpName: "ftp", Function: "nat-follow-master", Flags: 0, Class: 0,
		NAT: conntrack.ExpectNAT{Direction: true, Tuple: conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: c4, DestinationAddress: ip("0.0.0.0")},
			Proto: conntrack.ProtoTuple{Protocol: 6, SourcePort: 50001}}},
	}
	c6, s6 := ip("2001:db8:1::10"), ip("2001:db8:2::10")
	out["ftp6-zone"] = conntrack.Expect{
		Timeout:     12,
		TupleMaster: conntrack.NewFlow(6, 0, c6, s6, 1, 21, 0, 0).TupleOrig,
		Tuple: conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: s6, DestinationAddress: c6},
			Proto: conntrack.ProtoTuple{Protocol: 6, DestinationPort: 2000}},
		Mask: conntrack.Tuple{IP: conntrack.IPTuple{SourceAddress: ip("ffff:ffff::"), DestinationAddress: ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
			Proto: conntrack.ProtoTuple{Protocol: 6, DestinationPort: 0xffff}},
		Zone: 4, HelpName: "ftp", Flags: 3, Class: 1,
	}
	return out
}

func TestExpectRoundTrip(t *testing.T) {
	for name, e := range sampleExpects() {
		t.Run(name, func(t *testing.T) {
			b := EncodeExpect(nil, e)
			t.Logf("%d bytes, key %d bytes", len(b), len(ExpectKey(e)))
			got, err := DecodeExpect(b)
			if err != nil {
				t.Fatal(err)
			}
			want := e
			want.ID = 0
			for _, tp := range []*conntrack.Tuple{&want.TupleMaster, &want.Tuple, &want.Mask, &want.NAT.Tuple} {
				setICMPFlags(&tp.Proto)
			}
			if d := cmp.Diff(want, got, addrCmp); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
			for i := range len(b) {
				if _, err := DecodeExpect(b[:i]); err == nil {
					t.Errorf("truncated to %d bytes decodes", i)
				}
			}
			if _, err := DecodeFlow(b); err == nil {
				t.Error("an expectation decodes as a flow")
			}
		})
	}
}

// fuzzSeeds adds the encodings of the sample entries.
func fuzzSeeds(f *testing.F) {
	for _, fl := range sampleFlows() {
		f.Add(EncodeFlow(nil, fl))
	}
	for _, e := range sampleExpects() {
		f.Add(EncodeExpect(nil, e))
	}
	f.Add([]byte{})
	f.Add([]byte{magicFlow})
}

// FuzzDecodeFlow: DecodeFlow never panics, and what it accepts encodes to
// a canonical value that decodes to the same flow.
func FuzzDecodeFlow(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := DecodeFlow(b)
		if err != nil {
			return
		}
		enc := EncodeFlow(nil, fl)
		again, err := DecodeFlow(enc)
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v\nin  %x\nout %x", err, b, enc)
		}
		if d := cmp.Diff(fl, again, addrCmp); d != "" {
			t.Fatalf("decode(encode(decode(b))) != decode(b):\n%s", d)
		}
		if enc2 := EncodeFlow(nil, again); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not canonical: %x vs %x", enc, enc2)
		}
		_ = Key(fl)
		var m msgBuf
		appendFlowMsg(&m, 1, &fl, flowMsgOpts{create: true, timeout: 1})
		appendFlowMsg(&m, 2, &fl, flowMsgOpts{})
	})
}

// FuzzDecodeExpect is FuzzDecodeFlow for expectations.
func FuzzDecodeExpect(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeExpect(b)
		if err != nil {
			return
		}
		enc := EncodeExpect(nil, e)
		again, err := DecodeExpect(enc)
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if d := cmp.Diff(e, again, addrCmp); d != "" {
			t.Fatalf("decode(encode(decode(b))) != decode(b):\n%s", d)
		}
		_ = ExpectKey(e)
		var m msgBuf
		appendExpectMsg(&m, 1, &e, true)
	})
}

// FuzzDecodeKey: decodeKey never panics and accepts only canonical keys.
func FuzzDecodeKey(f *testing.F) {
	for _, fl := range sampleFlows() {
		f.Add(Key(fl))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tu, zone, err := decodeKey(b)
		if err != nil {
			return
		}
		if again := appendKey(nil, tu, zone); !bytes.Equal(again, b) {
			t.Fatalf("key %x decodes and re-encodes as %x", b, again)
		}
	})
}
