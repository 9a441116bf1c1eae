package daemon

import (
	"log/slog"
	"net/netip"
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
			Local:       netip.AddrPortFrom(cfg.LocalHAAddress().Addr(), port),
			Peer:        netip.AddrPortFrom(cfg.PeerHAAddress().Addr(), port),
			IdleTimeout: idle,
			Hello:       syncchan.Hello{ClusterID: uint8(cfg.Cluster.ID), Role: role, Software: version.Bytes(), Schema: version.Schema},
			Logger:      logger,
		},
		NS:             nsh,
		Conntrack:      cfg.Sync.Conntrack,
		Mode:           mode,
		IgnorePrefixes: []netip.Prefix{cfg.LocalHAAddress().Masked()},
		IgnorePorts:    []uint16{uint16(cfg.HALink.Port), port},
		NftSets:        sets,
		MaxRateBytes:   int(cfg.Sync.MaxRate.BytesPerSec),
		MaxRateEntries: int(cfg.Sync.MaxRate.EntriesPerSec),
		OutOfSyncAfter: cfg.Sync.OutOfSyncAfter.Duration,
		Logger:         logger,
		Extra:          extra,
	})
}
