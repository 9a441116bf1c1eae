package daemon

import (
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/ha"
)

// worseSync combines two sync statuses: OUT_OF_SYNC if either is, else
// UNKNOWN if either is, else IN_SYNC. The unit advertises the combination
// of state sync's status and configuration sync's, so a standby whose
// configuration failed to apply is OUT_OF_SYNC even when every connection
// is synchronized (and `tandem failover` to it needs --force).
func worseSync(a, b ha.SyncStatus) ha.SyncStatus {
	switch {
	case a == ha.SyncOutOfSync || b == ha.SyncOutOfSync:
		return ha.SyncOutOfSync
	case a == ha.SyncUnknown || b == ha.SyncUnknown:
		return ha.SyncUnknown
	}
	return ha.SyncInSync
}

// setSync gives the machine the combination of the two sync statuses.
func (d *Daemon) setSync(now time.Time) {
	st := worseSync(d.stateSync, d.configSync)
	d.log.Info("sync status", "sync", st, "state_sync", d.stateSync, "config_sync", d.configSync)
	if st == ha.SyncOutOfSync {
		d.log.Warn("out_of_sync")
	}
	d.apply(now, d.m.SetSync(now, st))
}

func (d *Daemon) configSyncChanges() <-chan ha.SyncStatus {
	if d.opts.Config == nil {
		return nil
	}
	return d.opts.Config.SyncChanges()
}

// withConfigPeers adds configuration sync's per-peer status (last sync,
// last snapshot) to `tandem status`. It runs beside the loop, as
// configuration requests do.
func (d *Daemon) withConfigPeers(st Status) Status {
	if d.opts.Config == nil || st.Config == nil {
		return st
	}
	active := st.State == ha.StateActive.String()
	d.opts.Config.SetPeerActive(active && st.Peer.Alive && st.Peer.State == ha.StateActive.String())
	v, err := d.opts.Config.HandleRequest("config.status", nil, nil, active, "", "")
	if cs, ok := v.(configsync.Status); ok && err == nil {
		st.Config.Sync, st.Config.Peers = cs.Sync, cs.Peers
	}
	return st
}
