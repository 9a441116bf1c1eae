package daemon

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/version"
	"github.com/tandem-ha/tandem/internal/wire"
)

// Status is what `tandem status` shows; it is the JSON of `-o json`, so its
// field names are a stable interface.
type Status struct {
	Node        string            `json:"node"`
	Role        string            `json:"role"`
	Priority    uint8             `json:"priority"`
	ClusterID   int               `json:"cluster_id"`
	State       string            `json:"state"`
	Epoch       uint64            `json:"epoch"`
	Sync        string            `json:"sync"`
	Flags       string            `json:"flags"`
	Version     string            `json:"version"`
	Schema      int               `json:"schema"`
	BootID      uint64            `json:"boot_id"`
	UptimeMs    int64             `json:"uptime_ms"`
	Preempt     bool              `json:"preempt"`
	Preempting  bool              `json:"preempting"`
	HoldsVIPs   bool              `json:"holds_virtual_ips"`
	FailedLinks map[string]string `json:"failed_links"`
	Heartbeat   Timing            `json:"timing"`
	Peer        PeerStatus        `json:"peer"`
	Paths       []PathStatus      `json:"paths"`
	Config      *ConfigHeads      `json:"config,omitempty"`
	Warnings    []string          `json:"warnings"`
	History     []TransitionView  `json:"history"`
}

// ConfigHeads are both units' configuration revisions and truncated
// content hashes (the peer's from its last heartbeat).
type ConfigHeads struct {
	Revision     uint64 `json:"revision"`
	Hash         string `json:"hash"`
	PeerRevision uint64 `json:"peer_revision"`
	PeerHash     string `json:"peer_hash"`
	PeerKnown    bool   `json:"peer_known"`
	Differ       bool   `json:"differ"`
	// Sync is configuration sync's status on this unit (IN_SYNC, or
	// OUT_OF_SYNC when a document failed to apply) and Peers each peer's
	// synchronization status, last sync and last database snapshot, as
	// `tandem config status` shows them.
	Sync  string                `json:"sync,omitempty"`
	Peers []configsync.PeerView `json:"peers,omitempty"`
}

// Timing echoes the configured intervals.
type Timing struct {
	HeartbeatMs float64 `json:"heartbeat_interval_ms"`
	DeadMs      float64 `json:"dead_interval_ms"`
}

// PeerStatus is this unit's view of the peer.
type PeerStatus struct {
	Known    bool   `json:"known"`
	Alive    bool   `json:"alive"`
	Resigned bool   `json:"resigned"`
	State    string `json:"state"`
	Role     string `json:"role"`
	Priority uint8  `json:"priority"`
	Epoch    uint64 `json:"epoch"`
	Sync     string `json:"sync"`
	Flags    string `json:"flags"`
	Version  string `json:"version"`
	Schema   int    `json:"schema"`
	BootID   uint64 `json:"boot_id"`
}

// PathStatus is one heartbeat path.
type PathStatus struct {
	Name        string            `json:"name"`
	Local       string            `json:"local"`
	Peer        string            `json:"peer"`
	Alive       bool              `json:"alive"`
	LastHeardMs *float64          `json:"last_heard_ms"` // age of the last heartbeat; null when never heard
	Drops       wire.DropCounters `json:"drops"`
	Reflected   uint64            `json:"reflected"`
	SendErrors  uint64            `json:"send_errors"`
}

// TransitionView is one recorded transition.
type TransitionView struct {
	At     time.Time `json:"at"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

func (d *Daemon) status(now time.Time) Status {
	ms := d.m.Status(now)
	dead := d.cfg.HALink.DeadInterval.Duration
	st := Status{
		Node:        d.cfg.Node.Name,
		Role:        d.role.String(),
		Priority:    ms.Advert.Priority,
		ClusterID:   d.cfg.Cluster.ID,
		State:       ms.Advert.State.String(),
		Epoch:       ms.Advert.Epoch,
		Sync:        ms.Advert.Sync.String(),
		Flags:       wire.Flags(ms.Advert.Flags).String(),
		Version:     version.String(),
		Schema:      version.Schema,
		BootID:      d.bootID,
		UptimeMs:    now.Sub(d.start).Milliseconds(),
		Preempt:     d.cfg.Cluster.Preempt,
		Preempting:  ms.Preempting,
		HoldsVIPs:   d.holding,
		FailedLinks: ms.FailedLinks,
		Heartbeat: Timing{
			HeartbeatMs: float64(d.cfg.HALink.HeartbeatInterval.Duration) / 1e6,
			DeadMs:      float64(dead) / 1e6,
		},
		Warnings: []string{},
	}
	if p := ms.Peer; p.Known {
		st.Peer = PeerStatus{
			Known: true, Alive: p.Alive, Resigned: p.Resigned,
			State: p.Advert.State.String(), Role: p.Advert.Role.String(), Priority: p.Advert.Priority,
			Epoch: p.Advert.Epoch, Sync: p.Advert.Sync.String(), Flags: wire.Flags(p.Advert.Flags).String(),
			BootID: p.Advert.BootID,
		}
		if d.lastRx != nil {
			st.Peer.Version = version.Format(d.lastRx.SoftwareVersion)
			st.Peer.Schema = int(d.lastRx.SchemaVersion)
		}
		if p.Alive && p.Advert.Role == d.role {
			st.Warnings = append(st.Warnings, "the peer is configured with the same role ("+d.role.String()+"); set node.role to primary on one unit and secondary on the other")
		}
		if p.Alive && p.Advert.State == ha.StateActive && ms.Advert.State == ha.StateActive {
			st.Warnings = append(st.Warnings, "collision: both units claim ACTIVE; the lower epoch yields at the next heartbeat")
		}
		if st.Peer.Version != "" && st.Peer.Version != st.Version {
			st.Warnings = append(st.Warnings, "the peer runs tandem "+st.Peer.Version+", this unit "+st.Version+"; run the same version on both units")
		}
		if st.Peer.Schema != 0 && st.Peer.Schema != st.Schema {
			st.Warnings = append(st.Warnings, "the peer reads configuration schema "+itoa(st.Peer.Schema)+", this unit "+itoa(st.Schema)+"; configuration sync is refused until both match")
		}
	} else {
		st.Peer.State = "UNKNOWN"
	}
	if d.opts.Config != nil {
		rev, hash := d.opts.Config.Head()
		ch := &ConfigHeads{Revision: rev, Hash: hex.EncodeToString(hash[:])}
		if d.lastRx != nil {
			ch.PeerKnown = true
			ch.PeerRevision, ch.PeerHash = d.lastRx.ConfigVersion, hex.EncodeToString(d.lastRx.ConfigHash[:])
			ch.Differ = rev != d.lastRx.ConfigVersion || hash != d.lastRx.ConfigHash
		}
		st.Config = ch
		// A publish reaches the standby within a heartbeat or two; longer
		// means replication is stuck (see `tandem config status`).
		if ch.Differ && ms.Peer.Alive && !d.cfgDiffSince.IsZero() && now.Sub(d.cfgDiffSince) > 10*d.cfg.HALink.HeartbeatInterval.Duration+time.Second {
			st.Warnings = append(st.Warnings, fmt.Sprintf("configuration differs: this unit is at revision %d (%s), the peer at %d (%s) since %s; see `tandem config status`",
				rev, ch.Hash, ch.PeerRevision, ch.PeerHash, now.Sub(d.cfgDiffSince).Round(time.Second)))
		}
	}
	stats := d.tr.Stats()
	for i, p := range d.paths {
		ps := PathStatus{Name: p.Name, Local: p.Local.String(), Peer: p.Peer.String(),
			Drops: stats[i].Drops, Reflected: stats[i].Reflected, SendErrors: stats[i].SendErrors}
		if i < len(ms.Peer.LastHeard) && !ms.Peer.LastHeard[i].IsZero() {
			age := float64(now.Sub(ms.Peer.LastHeard[i])) / 1e6
			ps.LastHeardMs = &age
			ps.Alive = now.Sub(ms.Peer.LastHeard[i]) < dead && !ms.Peer.Resigned
		}
		st.Paths = append(st.Paths, ps)
	}
	for _, t := range ms.History {
		st.History = append(st.History, TransitionView{At: t.At, From: t.From.String(), To: t.To.String(), Epoch: t.Epoch, Reason: t.Reason})
	}
	return st
}

func itoa(i int) string { return strconv.Itoa(i) }
