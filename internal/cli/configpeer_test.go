package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
)

func TestConfigPeerCells(t *testing.T) {
	now := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	at := now.Add(-3 * time.Second)
	ok := configsync.PeerView{Peer: "fw-b", Status: "Synchronized", LastSync: &at,
		LastSnapshot: &configsync.SnapshotView{ID: "0123456789abcdef", At: at, OK: true, Size: 3 << 20, DurationMs: 420}}
	if got, want := configPeerCells(ok, now), "fw-b: Synchronized\tlast sync 3s ago\tsnapshot 01234567 (3.0 MB) in 420ms, 3s ago"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	bad := configsync.PeerView{Peer: "fw-b", Status: "Some servers could not be synchronized", LastError: "snapshot corrupt",
		LastSnapshot: &configsync.SnapshotView{At: at, Error: "snapshot corrupt: chunk 3"}}
	got := configPeerCells(bad, now)
	for _, want := range []string{"never synchronized", "snapshot FAILED 3s ago: snapshot corrupt: chunk 3", "error: snapshot corrupt"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
}
