package cli

import (
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// configPeerCells is one peer's configuration sync for `tandem status`:
// its status, the last successful sync, the last database snapshot (and
// the last error while not synchronized), as tab-separated cells.
func configPeerCells(p configsync.PeerView, now time.Time) string {
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" }
	sync := "never synchronized"
	if p.LastSync != nil {
		sync = "last sync " + ago(*p.LastSync)
	}
	snap := "no snapshot yet"
	switch s := p.LastSnapshot; {
	case p.SnapshotInFlight:
		snap = "snapshot in transfer"
	case s == nil:
	case s.OK:
		snap = fmt.Sprintf("snapshot %s (%.1f MB) in %.0fms, %s", shortID(s.ID), float64(s.Size)/(1<<20), s.DurationMs, ago(s.At))
	case s.Stale:
		snap = "last snapshot stale (the standby was ahead), " + ago(s.At)
	default:
		snap = fmt.Sprintf("snapshot FAILED %s: %s", ago(s.At), s.Error)
	}
	line := fmt.Sprintf("%s: %s\t%s\t%s", p.Peer, p.Status, sync, snap)
	if p.LastError != "" && p.Status != snapshot.StatusSynchronized {
		line += "\terror: " + p.LastError
	}
	return line
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
