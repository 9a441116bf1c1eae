package wire_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/wire"
)

func TestDropCounters(t *testing.T) {
	tests := []struct {
		err  error
		want wire.DropCounters
	}{
		{wire.ErrTruncated, wire.DropCounters{Truncated: 1}},
		{wire.ErrBadMagic, wire.DropCounters{BadMagic: 1}},
		{wire.ErrBadVersion, wire.DropCounters{BadVersion: 1}},
		{wire.ErrWrongCluster, wire.DropCounters{WrongCluster: 1}},
		{wire.ErrBadMAC, wire.DropCounters{BadMAC: 1}},
		{wire.ErrReplay, wire.DropCounters{Replay: 1}},
		{wire.ErrMalformed, wire.DropCounters{Malformed: 1}},
		{fmt.Errorf("%w: state 9", wire.ErrMalformed), wire.DropCounters{Malformed: 1}},
		{nil, wire.DropCounters{}},
		{errors.New("unrelated"), wire.DropCounters{}},
	}
	for _, tt := range tests {
		var c wire.DropCounters
		c.Count(tt.err)
		if diff := cmp.Diff(tt.want, c); diff != "" {
			t.Errorf("Count(%v) (-want +got):\n%s", tt.err, diff)
		}
	}
}

// TestDropCountersFromParse feeds the counters the errors Parse really
// returns.
func TestDropCountersFromParse(t *testing.T) {
	s := wire.NewSigner(testKey)
	hb := fullHeartbeat()
	good := s.Append(nil, &hb)
	bad := fullHeartbeat()
	bad.State = 0

	var c wire.DropCounters
	for _, pkt := range [][]byte{
		good[:10],
		[]byte("GET / HTTP/1.1"),
		rawPacket(&wire.Heartbeat{Version: 9}),
		wire.NewSigner([]byte("other")).Append(nil, &hb),
		s.Append(nil, &bad),
	} {
		var got wire.Heartbeat
		c.Count(s.Parse(pkt, testCluster, &got))
	}
	c.Count(s.Parse(good, testCluster+1, &hb))
	var g wire.ReplayGuard
	g.Accept(hb.BootID, hb.Seq)
	c.Count(g.Check(hb.BootID, hb.Seq))

	want := wire.DropCounters{Truncated: 1, BadMagic: 1, BadVersion: 1, WrongCluster: 1, BadMAC: 1, Replay: 1, Malformed: 1}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	if c.Total() != 7 {
		t.Errorf("Total() = %d, want 7", c.Total())
	}
}
