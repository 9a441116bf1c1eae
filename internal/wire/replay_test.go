package wire_test

import (
	"errors"
	"testing"

	"github.com/tandem-ha/tandem/internal/wire"
)

func TestReplayGuard(t *testing.T) {
	type pkt struct{ boot, seq uint64 }
	tests := []struct {
		name     string
		accepted []pkt // fed through Check and Accept first
		next     pkt
		wantErr  error
	}{
		{"first packet any pair", nil, pkt{7, 0}, nil},
		{"first packet zero pair", nil, pkt{0, 0}, nil},
		{"next seq", []pkt{{10, 5}}, pkt{10, 6}, nil},
		{"seq gap", []pkt{{10, 5}}, pkt{10, 500}, nil},
		{"same seq twice", []pkt{{10, 5}}, pkt{10, 5}, wire.ErrReplay},
		{"lower seq", []pkt{{10, 5}}, pkt{10, 4}, wire.ErrReplay},
		{"higher boot id, lower seq", []pkt{{10, 5}}, pkt{11, 0}, nil},
		{"lower boot id", []pkt{{10, 5}}, pkt{9, 6}, wire.ErrReplay},
		{"lower boot id, huge seq", []pkt{{10, 5}}, pkt{9, ^uint64(0)}, wire.ErrReplay},
		{"old boot after restart", []pkt{{10, 5}, {11, 0}}, pkt{10, 6}, wire.ErrReplay},
		{"max seq is final", []pkt{{10, ^uint64(0)}}, pkt{10, ^uint64(0)}, wire.ErrReplay},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g wire.ReplayGuard
			for _, p := range tt.accepted {
				if err := g.Check(p.boot, p.seq); err != nil {
					t.Fatalf("setup Check(%d, %d) = %v", p.boot, p.seq, err)
				}
				g.Accept(p.boot, p.seq)
			}
			if err := g.Check(tt.next.boot, tt.next.seq); !errors.Is(err, tt.wantErr) {
				t.Errorf("Check(%d, %d) = %v, want %v", tt.next.boot, tt.next.seq, err, tt.wantErr)
			}
		})
	}
}

func TestReplayGuardCheckDoesNotRecord(t *testing.T) {
	var g wire.ReplayGuard
	g.Accept(10, 5)
	for range 3 {
		if err := g.Check(10, 9); err != nil {
			t.Fatalf("Check(10, 9) = %v", err)
		}
	}
	// A lower seq than the checked (but not accepted) 9 is still new.
	if err := g.Check(10, 6); err != nil {
		t.Errorf("Check(10, 6) after unrecorded Check(10, 9) = %v", err)
	}
	if boot, seq, ok := g.Last(); boot != 10 || seq != 5 || !ok {
		t.Errorf("Last() = %d, %d, %v; want 10, 5, true", boot, seq, ok)
	}
}

func TestReplayGuardReset(t *testing.T) {
	var g wire.ReplayGuard
	if _, _, ok := g.Last(); ok {
		t.Error("zero guard reports a last pair")
	}
	g.Accept(10, 5)
	if err := g.Check(3, 1); !errors.Is(err, wire.ErrReplay) {
		t.Fatalf("Check(3, 1) = %v, want ErrReplay", err)
	}
	g.Reset()
	if _, _, ok := g.Last(); ok {
		t.Error("Last() ok after Reset")
	}
	if err := g.Check(3, 1); err != nil {
		t.Errorf("Check(3, 1) after Reset = %v", err)
	}
}
