package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/internal/announce"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/linkwatch"
	"github.com/tandem-ha/tandem/internal/snapshot"
	"github.com/tandem-ha/tandem/internal/statesync"
	"github.com/tandem-ha/tandem/internal/vip"
)

// Adapters builds the OS adapters a configuration needs, in the daemon's
// own network namespace: virtual IPs and their announcements on every
// interface, conflict detection on the wire, and watching of the watched
// links. An interface that does not exist is an error before anything is
// started. The returned cleanup stops what it started.
func Adapters(ctx context.Context, cfg *config.Config, key []byte, logger *slog.Logger) (Options, func(), error) {
	o := Options{Logger: logger}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	cleanup := func() { cancel(); wg.Wait() }

	nsh, err := netns.Get()
	if err != nil {
		cleanup()
		return o, nil, fmt.Errorf("open own network namespace: %w", err)
	}
	wg.Go(func() { <-ctx.Done(); nsh.Close() })
	var extra statesync.Extra
	if cfg.StateDir != "" {
		// Configuration sync. The HA daemon runs without it rather than
		// not at all: a unit that cannot open its store still fails over.
		svc, err := configsync.Open(cfg, logger, snapshotWorker(logger))
		if err != nil {
			logger.Error("configuration sync is off: cannot open the config store", "err", err)
		} else {
			o.Config, extra = svc, svc
			inner := cleanup
			cleanup = func() {
				inner()
				if err := svc.Close(); err != nil {
					logger.Warn("close config store", "err", err)
				}
			}
		}
	}
	if cfg.Sync.Enabled {
		eng, err := newStateSync(cfg, key, nsh, logger, extra)
		if err != nil {
			cleanup()
			return o, nil, err
		}
		o.Sync = eng
		wg.Go(func() {
			if err := eng.Run(ctx); err != nil {
				logger.Error("state sync stopped", "err", err)
			}
		})
	}
	if len(cfg.Interfaces) == 0 {
		return o, cleanup, nil
	}
	dp, err := newVIPDataPlane(cfg, nsh, logger)
	if err != nil {
		cleanup()
		return o, nil, err
	}
	o.DataPlane = dp

	var watched []string
	for _, ifc := range mergeInterfaces(cfg) {
		if ifc.Watch {
			watched = append(watched, ifc.Name)
		}
	}
	links := make(chan LinkEvent, 16)
	o.Links = links
	if len(watched) > 0 {
		raw := make(chan linkwatch.Event, 16)
		wg.Go(func() {
			if err := linkwatch.Watch(ctx, nsh, watched, raw); err != nil && ctx.Err() == nil {
				logger.Error("link watch stopped", "err", err)
			}
		})
		wg.Go(func() {
			for {
				select {
				case ev := <-raw:
					select {
					case links <- LinkEvent{Name: ev.Name, Up: ev.Up, Reason: ev.Reason}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		})
	}
	conflicts := make(chan struct{}, 1)
	o.Conflicts = conflicts
	raw := make(chan announce.Conflict, 16)
	for _, ifc := range dp.ifaces {
		wg.Go(func() {
			err := announce.WatchConflicts(ctx, ifc.ifi, ifc.mac, dp.owned, raw)
			if err != nil && ctx.Err() == nil {
				logger.Error("conflict watch stopped", "interface", ifc.ifi.Name, "err", err)
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case c := <-raw:
				logger.Warn("virtual IP claimed by another host", "interface", c.Interface, "addr", c.Addr, "their_mac", c.TheirMAC.String())
				select {
				case conflicts <- struct{}{}:
				default: // one pending is enough
				}
			case <-ctx.Done():
				return
			}
		}
	})
	return o, func() { cleanup(); dp.close() }, nil
}

// vipDataPlane holds the virtual IPs of every interface and announces them.
type vipDataPlane struct {
	mgr    *vip.Manager
	log    *slog.Logger
	count  int
	every  time.Duration
	ifaces []*dpIface

	mu        sync.Mutex
	holding   []netip.Addr
	stop      context.CancelFunc // ends the running announcement bursts
	lastBurst time.Time
}

type dpIface struct {
	ifi   *net.Interface
	mac   net.HardwareAddr
	addrs []netip.Addr
	ann   *announce.Announcer
}

func newVIPDataPlane(cfg *config.Config, nsh netns.NsHandle, logger *slog.Logger) (*vipDataPlane, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	merged := mergeInterfaces(cfg)
	var ifs []vip.Interface
	for _, ifc := range merged {
		ifs = append(ifs, vip.Interface{Name: ifc.Name, VIPs: ifc.VirtualIPs, VirtualMAC: ifc.VirtualMAC})
	}
	mgr, err := vip.New(h, ifs, vip.Options{ClusterID: uint8(cfg.Cluster.ID), Logger: logger, NetNS: &nsh})
	if err != nil {
		h.Close()
		return nil, err
	}
	dp := &vipDataPlane{mgr: mgr, log: logger, count: cfg.HALink.AnnounceCount, every: cfg.HALink.AnnounceInterval.Duration}
	for _, ifc := range merged {
		ifi, err := net.InterfaceByName(ifc.Name)
		if err != nil {
			dp.close()
			return nil, fmt.Errorf("interfaces: %s: %w (check interfaces[].name)", ifc.Name, err)
		}
		mac := ifi.HardwareAddr
		if ifc.VirtualMAC {
			mac = vip.VirtualMAC(uint8(cfg.Cluster.ID), len(ifc.VirtualIPs) > 0 && ifc.VirtualIPs[0].Addr().Is4())
			if vifi, err := net.InterfaceByName(vip.MacvlanName(ifc.Name)); err == nil {
				ifi = vifi
			}
		}
		ann, err := announce.NewAnnouncer(ifi, logger)
		if err != nil {
			dp.close()
			return nil, err
		}
		d := &dpIface{ifi: ifi, mac: mac, ann: ann}
		for _, p := range ifc.VirtualIPs {
			d.addrs = append(d.addrs, p.Addr())
		}
		dp.ifaces = append(dp.ifaces, d)
	}
	return dp, nil
}

// owned is the set of addresses this unit answers for now (conflict watch).
func (dp *vipDataPlane) owned() []netip.Addr {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.holding
}

func (dp *vipDataPlane) Acquire() error {
	if _, err := dp.mgr.Acquire(); err != nil {
		return err
	}
	dp.mu.Lock()
	dp.holding = nil
	for _, d := range dp.ifaces {
		dp.holding = append(dp.holding, d.addrs...)
	}
	dp.mu.Unlock()
	dp.burst(dp.count)
	return nil
}

// burst announces every held address count times, interval apart, beside
// the event loop; a newer burst replaces a running one.
func (dp *vipDataPlane) burst(count int) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.stop != nil {
		dp.stop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	dp.stop = cancel
	dp.lastBurst = time.Now()
	for _, d := range dp.ifaces {
		go func() {
			if err := d.ann.Announce(ctx, d.addrs, d.mac, count, dp.every); err != nil && ctx.Err() == nil {
				dp.log.Warn("announce failed", "interface", d.ifi.Name, "err", err)
			}
		}()
	}
}

func (dp *vipDataPlane) Release() error {
	dp.mu.Lock()
	if dp.stop != nil {
		dp.stop()
		dp.stop = nil
	}
	dp.holding = nil
	dp.mu.Unlock()
	return dp.mgr.Release()
}

// Reannounce answers another host's claim at once; bursts are at least
// 10 ms apart so a chatty stale owner cannot make us flood the segment.
func (dp *vipDataPlane) Reannounce() {
	dp.mu.Lock()
	held, recent := len(dp.holding) > 0, time.Since(dp.lastBurst) < 10*time.Millisecond
	dp.mu.Unlock()
	if held && !recent {
		dp.burst(dp.count)
	}
}

func (dp *vipDataPlane) close() {
	var errs []error
	for _, d := range dp.ifaces {
		errs = append(errs, d.ann.Close())
	}
	if err := errors.Join(errs...); err != nil {
		dp.log.Debug("close announcers", "err", err)
	}
}

// mergeInterfaces folds the per-family entries of one interface (a
// dual-stack LAN is listed once for IPv4 and once for IPv6) into one.
func mergeInterfaces(cfg *config.Config) []config.Interface {
	var out []config.Interface
	at := map[string]int{}
	for _, ifc := range cfg.Interfaces {
		i, seen := at[ifc.Name]
		if !seen {
			at[ifc.Name] = len(out)
			ifc.VirtualIPs = slices.Clone(ifc.VirtualIPs)
			out = append(out, ifc)
			continue
		}
		out[i].VirtualIPs = append(out[i].VirtualIPs, ifc.VirtualIPs...)
		out[i].VirtualMAC = out[i].VirtualMAC || ifc.VirtualMAC
	}
	return out
}

// snapshotWorker runs the configuration snapshots' bulk work in child
// processes of this binary (`tandem snapshot-worker`), below the daemon's
// realtime priority and outside its heap (snapshot.Worker). Without the
// binary's path they run in the daemon, as before.
func snapshotWorker(logger *slog.Logger) snapshot.Runner {
	exe, err := os.Executable()
	if err != nil {
		logger.Warn("configuration snapshots run inside the daemon: cannot find its binary for the worker process", "err", err)
		return snapshot.InProcess
	}
	return &snapshot.Worker{Command: []string{exe, "snapshot-worker"}}
}
