package daemon

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/ctsync"
	"github.com/tandem-ha/tandem/internal/nftsets"
	"github.com/tandem-ha/tandem/internal/statesync"
	"github.com/tandem-ha/tandem/internal/syncchan"
	"github.com/tandem-ha/tandem/internal/version"
)

// newStateSync builds the state-sync engine of a configuration: the sync
// channel between the HA addresses, the conntrack and nft set adapters.
func newStateSync(cfg *config.Config, key []byte, nsh netns.NsHandle, logger *slog.Logger, extra statesync.Extra) (*statesync.Engine, error) {
	port := uint16(cfg.Sync.Port)
	role := uint8(1)
	if cfg.Node.Role == config.RoleSecondary {
		role = 2
	}
	var sets []nftsets.SetRef
	for _, s := range cfg.Sync.NftSets {
		ref, err := nftsets.ParseSetRef(s)
		if err != nil {
			return nil, err
		}
		sets = append(sets, ref)
	}
	mode := ctsync.Inject
	if cfg.Sync.ConntrackMode == "hold" {
		mode = ctsync.Hold
	}
	// The channel is dead when nothing arrived for three dead intervals
	// (it pings when idle), bounded so a slow profile still notices a cut
	// well before the out-of-sync timeout.
	idle := min(max(3*cfg.HALink.DeadInterval.Duration, 100*time.Millisecond), cfg.Sync.OutOfSyncAfter.Duration)
	return statesync.New(statesync.Config{
		Link: syncchan.Config{
			Key: key, ClusterID: uint8(cfg.Cluster.ID), Role: role,
			Local:       netip.AddrPortFrom(Scoped(cfg.LocalHAAddress().Addr(), cfg.HALink.Interface), port),
			Peer:        netip.AddrPortFrom(Scoped(cfg.PeerHAAddress().Addr(), cfg.HALink.Interface), port),
			IdleTimeout: idle,
			Hello:       syncchan.Hello{ClusterID: uint8(cfg.Cluster.ID), Role: role, Software: version.Bytes(), Schema: version.Schema},
			Logger:      logger,
		},
		NS:             nsh,
		Conntrack:      cfg.Sync.Conntrack,
		Mode:           mode,
		IgnorePrefixes: ownFlows(cfg),
		NftSets:        sets,
		MaxRateBytes:   int(cfg.Sync.MaxRate.BytesPerSec),
		MaxRateEntries: int(cfg.Sync.MaxRate.EntriesPerSec),
		OutOfSyncAfter: cfg.Sync.OutOfSyncAfter.Duration,
		Logger:         logger,
		Extra:          extra,
		CheckpointPath: checkpointPath(cfg),
	})
}

// checkpointPath is where a standby keeps its record of the conntrack
// entries it wrote (ctsync.Sink.Checkpoint), so that its next daemon
// resumes the stream instead of reconciling a full copy; "" without a
// state directory.
func checkpointPath(cfg *config.Config) string {
	if cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(cfg.StateDir, "conntrack.checkpoint")
}

// ownFlows are the units' own addresses: the HA subnet and each unit's
// address on every interface (heartbeats on the watched paths). Their flows
// belong to the units and are not synchronized. Ports are not used to tell
// them apart: a forwarded connection NATed to the VIP may well use port
// 7480 (BENCHMARKS.md: such connections were silently never synchronized).
func ownFlows(cfg *config.Config) []netip.Prefix {
	out := []netip.Prefix{cfg.LocalHAAddress().Masked()}
	for _, ifc := range cfg.Interfaces {
		for _, p := range []netip.Prefix{ifc.PrimaryIP, ifc.SecondaryIP} {
			out = append(out, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		}
	}
	return out
}
