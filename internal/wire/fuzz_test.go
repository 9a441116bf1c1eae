package wire_test

import (
	"bytes"
	"testing"

	"github.com/tandem-ha/tandem/internal/wire"
)

// FuzzParse feeds Parse arbitrary bytes. Parse must not panic nor modify
// its input, and whatever it accepts must re-encode to the same bytes.
//
// Random bytes almost never carry a valid MAC, so when resign is set the
// fuzzer's bytes get a correct MAC first: that lets it reach the checks
// that run after authentication (cluster id, field values).
func FuzzParse(f *testing.F) {
	seed := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	f.Add(seed.Append(nil, &hb), false)
	f.Add(seed.Append(nil, &wire.Heartbeat{NodeID: wire.NodePrimary, State: wire.StateInit, ClusterID: testCluster}), false)
	bad := fullHeartbeat()
	bad.State = 0
	f.Add(rawPacket(&bad), true)
	f.Add(append(rawBody(&hb), make([]byte, 32)...), true) // zero MAC, fixed by resign
	f.Add([]byte("TDHB\x01"), false)
	f.Add([]byte{}, false)

	f.Fuzz(func(t *testing.T, pkt []byte, resign bool) {
		s := wire.NewSigner(testKey)
		if resign && len(pkt) >= wire.HeartbeatSize {
			// The engine's bytes must not be modified: sign a copy.
			body := pkt[:wire.HeartbeatSize-32]
			pkt = append(signRaw(testKey, body), pkt[wire.HeartbeatSize:]...)
		}
		orig := bytes.Clone(pkt)

		var got wire.Heartbeat
		err := s.Parse(pkt, testCluster, &got)
		if !bytes.Equal(pkt, orig) {
			t.Fatalf("Parse modified its input")
		}
		if err != nil {
			if got != (wire.Heartbeat{}) {
				t.Fatalf("Parse returned %v but filled hb: %+v", err, got)
			}
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("Parse accepted a heartbeat that fails Validate: %v", err)
		}
		if re := s.Append(nil, &got); !bytes.Equal(re, pkt) {
			t.Fatalf("accepted packet re-encodes differently:\n got %x\nwant %x", re, pkt)
		}
	})
}
