package daemon

import (
	"testing"
	"time"
)

func TestParseSteal(t *testing.T) {
	good := []byte("cpu  3072652 151420 886028 1325473 17736 0 100131 36732 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
	if d, ok := parseSteal(good); !ok || d != 367320*time.Millisecond {
		t.Errorf("parseSteal = %v, %v; want 367.32s", d, ok)
	}
	for _, bad := range []string{"", "cpu 1 2 3", "intr 1 2 3 4 5 6 7 8 9", "cpu 1 2 3 4 5 6 7 x 9"} {
		if _, ok := parseSteal([]byte(bad)); ok {
			t.Errorf("parseSteal(%q) ok", bad)
		}
	}
}

func TestStealMeter(t *testing.T) {
	steal := time.Duration(0)
	m := stealMeter{read: func() (time.Duration, bool) { return steal, true }, interval: 10 * time.Millisecond}
	t0 := time.Unix(1000, 0)
	if m.since() != 0 {
		t.Fatal("stolen time before any sample")
	}
	m.sample(t0)
	steal += 4 * time.Millisecond
	m.sample(t0.Add(5 * time.Millisecond)) // too soon: the older sample stays
	steal += 20 * time.Millisecond
	if got := m.since(); got != 24*time.Millisecond {
		t.Errorf("since = %v, want 24ms", got)
	}
	m.sample(t0.Add(10 * time.Millisecond))
	if got := m.since(); got != 0 {
		t.Errorf("since after a new sample = %v, want 0", got)
	}
}
