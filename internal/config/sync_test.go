package config

import (
	"strings"
	"testing"
	"time"
)

// TestSnapshotTiming: config_sync.snapshot_debounce and snapshot_max_delay
// parse, default to 0 (internal/configsync's defaults), and a bad value is
// reported with the field, the value and the fix.
func TestSnapshotTiming(t *testing.T) {
	v4 := readTestdata(t, "valid-v4.yaml")
	with := func(lines string) string {
		return edit(t, v4, "state_dir: /var/lib/tandem", "state_dir: /var/lib/tandem\nconfig_sync:\n"+lines)
	}
	c, err := Parse([]byte(with("  snapshot_debounce: 200ms\n  snapshot_max_delay: 5s\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.ConfigSync.SnapshotDebounce.Duration != 200*time.Millisecond || c.ConfigSync.SnapshotMaxDelay.Duration != 5*time.Second {
		t.Fatalf("parsed %+v", c.ConfigSync)
	}
	c, err = Parse([]byte(v4))
	if err != nil {
		t.Fatal(err)
	}
	if c.ConfigSync.SnapshotDebounce.Duration != 0 || c.ConfigSync.SnapshotMaxDelay.Duration != 0 {
		t.Fatalf("defaults %+v, want 0 (configsync's defaults)", c.ConfigSync)
	}
	for _, tc := range []struct {
		lines, path, value, fix string
	}{
		{"  snapshot_debounce: 1ms\n", "config_sync.snapshot_debounce", "1ms", "must be between 10ms and 1m"},
		{"  snapshot_debounce: 2m\n", "config_sync.snapshot_debounce", "2m", "must be between 10ms and 1m"},
		{"  snapshot_max_delay: 10ms\n", "config_sync.snapshot_max_delay", "10ms", "must be between 100ms and 1h"},
		{"  snapshot_max_delay: 300ms\n", "config_sync.snapshot_max_delay", "300ms", "at least 500ms"},
		{"  snapshot_debounce: 20s\n", "config_sync.snapshot_max_delay", "10s", "at least 20s"},
		{"  snapshot_debounce: 2s\n  snapshot_max_delay: 1s\n", "config_sync.snapshot_max_delay", "1s", "at least 2s"},
	} {
		_, err := Parse([]byte(with(tc.lines)))
		p := problemsOf(t, err)
		found := false
		for _, pr := range p {
			if pr.Path == tc.path && pr.Value == tc.value && strings.Contains(pr.Message, tc.fix) {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: problems %v, want %s = %s: ...%s...", tc.lines, p, tc.path, tc.value, tc.fix)
		}
	}
}
