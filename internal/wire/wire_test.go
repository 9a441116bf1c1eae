package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/wire"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

const testCluster = 42

// fullHeartbeat returns a heartbeat with every field set to a distinct,
// non-zero value.
func fullHeartbeat() wire.Heartbeat {
	return wire.Heartbeat{
		Version:         wire.Version,
		ClusterID:       testCluster,
		NodeID:          wire.NodeSecondary,
		State:           wire.StateActive,
		Flags:           wire.FlagTakeover | wire.FlagForce,
		Priority:        200,
		Sync:            wire.SyncOutOfSync,
		FailedLinks:     3,
		Epoch:           0x0102030405060708,
		ConfigVersion:   0x1112131415161718,
		ConfigHash:      [8]byte{0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28},
		SchemaVersion:   0x3132,
		SoftwareVersion: [3]uint8{1, 4, 7},
		BootID:          0x4142434445464748,
		Seq:             0x5152535455565758,
		SentAtNanos:     -2,
	}
}

// rawBody encodes hb by hand, following the table in doc.go rather than
// the package's encoder, and without any validation: Version is written as
// given.
func rawBody(hb *wire.Heartbeat) []byte {
	be := binary.BigEndian
	b := []byte("TDHB")
	b = append(b, hb.Version, hb.ClusterID, hb.NodeID, byte(hb.State),
		byte(hb.Flags), hb.Priority, byte(hb.Sync), hb.FailedLinks)
	b = be.AppendUint64(b, hb.Epoch)
	b = be.AppendUint64(b, hb.ConfigVersion)
	b = append(b, hb.ConfigHash[:]...)
	b = be.AppendUint16(b, hb.SchemaVersion)
	b = append(b, hb.SoftwareVersion[:]...)
	b = be.AppendUint64(b, hb.BootID)
	b = be.AppendUint64(b, hb.Seq)
	b = be.AppendUint64(b, uint64(hb.SentAtNanos))
	return b
}

// signRaw returns body followed by its HMAC-SHA256 under key, computed
// with crypto/hmac directly.
func signRaw(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(bytes.Clone(body))
}

// rawPacket signs hb without going through Signer.Append, so that it can
// carry values Append would never write (another version, undefined
// states).
func rawPacket(hb *wire.Heartbeat) []byte {
	return signRaw(testKey, rawBody(hb))
}

func TestRoundTrip(t *testing.T) {
	s := wire.NewSigner(testKey)
	want := fullHeartbeat()
	pkt := s.Append(nil, &want)
	if len(pkt) != wire.HeartbeatSize {
		t.Fatalf("len = %d, want %d", len(pkt), wire.HeartbeatSize)
	}
	var got wire.Heartbeat
	if err := s.Parse(pkt, testCluster, &got); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestHeartbeatSize(t *testing.T) {
	if wire.HeartbeatSize != 97 {
		t.Errorf("HeartbeatSize = %d, want 97 (see doc.go)", wire.HeartbeatSize)
	}
}

// TestLayout pins the byte layout documented in doc.go.
func TestLayout(t *testing.T) {
	hb := fullHeartbeat()
	const wantBody = "54444842" + // magic "TDHB"
		"01" + // version
		"2a" + // cluster id 42
		"02" + // node id
		"03" + // state ACTIVE
		"0a" + // flags TAKEOVER|FORCE
		"c8" + // priority 200
		"02" + // sync OUT_OF_SYNC
		"03" + // failed links
		"0102030405060708" + // epoch
		"1112131415161718" + // config version
		"2122232425262728" + // config hash
		"3132" + // schema version
		"010407" + // software version 1.4.7
		"4142434445464748" + // boot id
		"5152535455565758" + // seq
		"fffffffffffffffe" // sent at -2
	body, err := hex.DecodeString(wantBody)
	if err != nil {
		t.Fatal(err)
	}
	want := signRaw(testKey, body)

	got := wire.NewSigner(testKey).Append(nil, &hb)
	if !bytes.Equal(got, want) {
		t.Errorf("Append =\n%x\nwant\n%x", got, want)
	}
	if raw := rawPacket(&hb); !bytes.Equal(raw, want) {
		t.Errorf("rawPacket disagrees with the golden layout:\n%x\nwant\n%x", raw, want)
	}
}

func TestAppendKeepsPrefixAndStampsVersion(t *testing.T) {
	s := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	hb.Version = 0 // Append writes Version regardless
	prefix := []byte("prefix")
	buf := s.Append(bytes.Clone(prefix), &hb)
	if !bytes.HasPrefix(buf, prefix) {
		t.Fatalf("prefix lost: %q", buf)
	}
	hb.Version = wire.Version
	if want := rawPacket(&hb); !bytes.Equal(buf[len(prefix):], want) {
		t.Errorf("Append after prefix =\n%x\nwant\n%x", buf[len(prefix):], want)
	}

	// Appending twice into a reused buffer gives the same bytes.
	again := s.Append(buf[:len(prefix)], &hb)
	if !bytes.Equal(again, buf) {
		t.Errorf("second Append differs")
	}
}

func TestParseErrors(t *testing.T) {
	valid := fullHeartbeat()
	with := func(edit func(*wire.Heartbeat)) []byte {
		hb := fullHeartbeat()
		edit(&hb)
		return rawPacket(&hb)
	}
	good := rawPacket(&valid)

	type parseCase struct {
		name string
		pkt  []byte
		want error
	}
	tests := []parseCase{
		{"nil", nil, wire.ErrTruncated},
		{"bad magic", append([]byte("XDHB"), good[4:]...), wire.ErrBadMagic},
		{"bad magic short", []byte("HTTP/1.1"), wire.ErrBadMagic},
		{"version 0", with(func(h *wire.Heartbeat) { h.Version = 0 }), wire.ErrBadVersion},
		{"version 2", with(func(h *wire.Heartbeat) { h.Version = 2 }), wire.ErrBadVersion},
		{"version 2 longer packet", append(with(func(h *wire.Heartbeat) { h.Version = 2 }), 0, 0, 0), wire.ErrBadVersion},
		{"version 2 shorter packet", with(func(h *wire.Heartbeat) { h.Version = 2 })[:40], wire.ErrBadVersion},
		{"oversize by one", append(bytes.Clone(good), 0), wire.ErrMalformed},
		{"oversize double", append(bytes.Clone(good), good...), wire.ErrMalformed},
		{"wrong cluster", with(func(h *wire.Heartbeat) { h.ClusterID = testCluster + 1 }), wire.ErrWrongCluster},
		{"wrong key", signRaw([]byte("another key"), rawBody(&valid)), wire.ErrBadMAC},
		{"empty key", signRaw(nil, rawBody(&valid)), wire.ErrBadMAC},
		{"zeroed MAC", append(rawBody(&valid), make([]byte, sha256.Size)...), wire.ErrBadMAC},
		{"state 0", with(func(h *wire.Heartbeat) { h.State = 0 }), wire.ErrMalformed},
		{"state 5", with(func(h *wire.Heartbeat) { h.State = 5 }), wire.ErrMalformed},
		{"state 255", with(func(h *wire.Heartbeat) { h.State = 255 }), wire.ErrMalformed},
		{"sync 3", with(func(h *wire.Heartbeat) { h.Sync = 3 }), wire.ErrMalformed},
		{"sync 255", with(func(h *wire.Heartbeat) { h.Sync = 255 }), wire.ErrMalformed},
		{"node 0", with(func(h *wire.Heartbeat) { h.NodeID = 0 }), wire.ErrMalformed},
		{"node 3", with(func(h *wire.Heartbeat) { h.NodeID = 3 }), wire.ErrMalformed},
		{"node 255", with(func(h *wire.Heartbeat) { h.NodeID = 255 }), wire.ErrMalformed},
	}
	for n := range wire.HeartbeatSize {
		tests = append(tests, parseCase{"truncated to " + strconv.Itoa(n), good[:n], wire.ErrTruncated})
	}

	s := wire.NewSigner(testKey)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRejected(t, s, tt.pkt, tt.want)
		})
	}
}

// checkRejected asserts that Parse fails with want, leaves hb untouched and
// does not modify pkt.
func checkRejected(t *testing.T, s *wire.Signer, pkt []byte, want error) {
	t.Helper()
	orig := bytes.Clone(pkt)
	hb := wire.Heartbeat{Seq: 12345}
	err := s.Parse(pkt, testCluster, &hb)
	if !errors.Is(err, want) {
		t.Errorf("Parse = %v, want %v", err, want)
	}
	if diff := cmp.Diff(wire.Heartbeat{Seq: 12345}, hb); diff != "" {
		t.Errorf("Parse changed hb on error (-want +got):\n%s", diff)
	}
	if !bytes.Equal(pkt, orig) {
		t.Errorf("Parse modified pkt")
	}
}

// TestParseFlippedBit flips every bit of a valid packet in turn. No flip
// may be accepted; the error tells which part was hit.
func TestParseFlippedBit(t *testing.T) {
	s := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	good := s.Append(nil, &hb)
	for i := range good {
		want := wire.ErrBadMAC
		switch {
		case i < 4:
			want = wire.ErrBadMagic
		case i == 4:
			want = wire.ErrBadVersion
		}
		for bit := range 8 {
			pkt := bytes.Clone(good)
			pkt[i] ^= 1 << bit
			var got wire.Heartbeat
			if err := s.Parse(pkt, testCluster, &got); !errors.Is(err, want) {
				t.Errorf("byte %d bit %d: Parse = %v, want %v", i, bit, err, want)
			}
		}
	}
}

func TestParseAcceptsUnknownFlags(t *testing.T) {
	s := wire.NewSigner(testKey)
	want := fullHeartbeat()
	want.Flags = 0xff
	pkt := s.Append(nil, &want)
	var got wire.Heartbeat
	if err := s.Parse(pkt, testCluster, &got); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got.Flags != 0xff {
		t.Errorf("Flags = %#x, want 0xff", uint8(got.Flags))
	}
}

func TestParseZeroValues(t *testing.T) {
	// The smallest valid heartbeat: every unrestricted field zero.
	s := wire.NewSigner(testKey)
	want := wire.Heartbeat{Version: wire.Version, ClusterID: 0, NodeID: wire.NodePrimary, State: wire.StateInit}
	var got wire.Heartbeat
	if err := s.Parse(s.Append(nil, &want), 0, &got); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestValidate(t *testing.T) {
	hb := fullHeartbeat()
	if err := hb.Validate(); err != nil {
		t.Errorf("Validate(valid) = %v", err)
	}
	for _, edit := range []func(*wire.Heartbeat){
		func(h *wire.Heartbeat) { h.NodeID = 0 },
		func(h *wire.Heartbeat) { h.State = 0 },
		func(h *wire.Heartbeat) { h.Sync = 9 },
	} {
		hb := fullHeartbeat()
		edit(&hb)
		if err := hb.Validate(); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("Validate(%+v) = %v, want ErrMalformed", hb, err)
		}
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		got  interface{ String() string }
		want string
	}{
		{wire.State(0), "State(0)"},
		{wire.StateInit, "INIT"},
		{wire.StateStandby, "STANDBY"},
		{wire.StateActive, "ACTIVE"},
		{wire.StateFault, "FAULT"},
		{wire.State(5), "State(5)"},
		{wire.SyncUnknown, "UNKNOWN"},
		{wire.SyncInSync, "IN_SYNC"},
		{wire.SyncOutOfSync, "OUT_OF_SYNC"},
		{wire.SyncStatus(3), "SyncStatus(3)"},
		{wire.Flags(0), "NONE"},
		{wire.FlagResigning, "RESIGNING"},
		{wire.FlagTakeover | wire.FlagForce, "TAKEOVER|FORCE"},
		{wire.FlagResigning | wire.FlagTakeover | wire.FlagYield | wire.FlagForce, "RESIGNING|TAKEOVER|YIELD|FORCE"},
		{wire.FlagYield | 0x80, "YIELD|0x80"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("String() = %q, want %q", s, tt.want)
		}
	}
}

func TestValid(t *testing.T) {
	for v := range 256 {
		if got, want := wire.State(v).Valid(), v >= 1 && v <= 4; got != want {
			t.Errorf("State(%d).Valid() = %v", v, got)
		}
		if got, want := wire.SyncStatus(v).Valid(), v <= 2; got != want {
			t.Errorf("SyncStatus(%d).Valid() = %v", v, got)
		}
	}
	if !(wire.FlagTakeover | wire.FlagForce).Has(wire.FlagForce) || wire.FlagYield.Has(wire.FlagForce) {
		t.Error("Flags.Has")
	}
}

func TestSentinelsDistinct(t *testing.T) {
	errs := []error{wire.ErrTruncated, wire.ErrBadMagic, wire.ErrBadVersion,
		wire.ErrWrongCluster, wire.ErrBadMAC, wire.ErrReplay, wire.ErrMalformed}
	for i, a := range errs {
		if !strings.HasPrefix(a.Error(), "wire: ") {
			t.Errorf("%q lacks the package prefix", a)
		}
		for _, b := range errs[i+1:] {
			if errors.Is(a, b) {
				t.Errorf("%v matches %v", a, b)
			}
		}
	}
}
