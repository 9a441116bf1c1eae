// Package daemon is tandem's event loop: it wires the OS adapters (heartbeat
// sockets, link watching, virtual IPs, the control socket) to the pure HA
// state machine.
//
// One goroutine — Run's — owns the machine. Adapters turn the world into
// events on channels; the loop feeds them to the machine and hands the
// machine's decisions back to adapters: send a heartbeat now, acquire or
// release the virtual IPs, log the transition with its cause.
//
// It must never contain a decision of its own: who is ACTIVE, and why, is
// internal/ha's to say. It must also never block the loop on slow work: a
// takeover's announcements run beside it.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/heartbeat"
	"github.com/tandem-ha/tandem/internal/version"
	"github.com/tandem-ha/tandem/internal/wire"
)

// DataPlane owns what the ACTIVE unit holds: the virtual IPs and their
// announcements. Its methods are called from the event loop only.
type DataPlane interface {
	// Acquire adds every virtual IP and starts announcing them; it is on the
	// failover path and must be fast and idempotent.
	Acquire() error
	// Release removes every virtual IP; idempotent. Called at start (a
	// crashed daemon's leftovers), on leaving ACTIVE and at shutdown.
	Release() error
	// Reannounce sends the announcements again at once: another unit was
	// seen answering for our addresses.
	Reannounce()
}

// LinkEvent is a watched link going down or up.
type LinkEvent struct {
	Name   string
	Up     bool
	Reason string
}

// Options are the adapters and knobs a daemon runs with. Nil adapters get
// defaults: no data plane (HA only), no link watching.
type Options struct {
	Logger    *slog.Logger
	DataPlane DataPlane
	// Links delivers watched-link events; the daemon reads it until ctx ends.
	Links <-chan LinkEvent
	// Conflicts delivers "another unit answers for our addresses" reports.
	Conflicts <-chan struct{}
	// Sync is state synchronization, when enabled.
	Sync Syncer
	// Config is configuration sync (the replicated config store), when a
	// state directory is set.
	Config ConfigService
}

// ConfigService is configuration sync as the daemon sees it: it answers
// the "config.*" and "sync.force" control operations, follows the HA role
// and reports the store's head for the heartbeats. Implemented by
// internal/configsync.
type ConfigService interface {
	// HandleRequest answers one operation; payload is the request's
	// binary payload (a published document). active says whether this
	// unit is ACTIVE; activeName and activeAddr name the ACTIVE unit (""
	// when not known) for the refusal of a write on the STANDBY.
	HandleRequest(op string, args json.RawMessage, payload []byte, active bool, activeName, activeAddr string) (any, error)
	// SetActive follows the role: writes are accepted only while active.
	SetActive(active bool)
	// Head is the config revision and truncated content hash.
	Head() (rev uint64, hash [8]byte)
	// SyncChanges delivers the configuration's sync status for the HA
	// machine (OUT_OF_SYNC: a document failed to apply on this STANDBY);
	// the loop combines it with state sync's, the worse winning.
	SyncChanges() <-chan ha.SyncStatus
	// SetPeerActive says whether the peer claims ACTIVE while this unit
	// does too (the "Collision" status).
	SetPeerActive(both bool)
}

// Syncer is state synchronization as the event loop sees it: it is told
// the role and reports the unit's sync status. Implemented by
// internal/statesync.
type Syncer interface {
	SetRole(active bool)
	// PeerStarted is called when a heartbeat shows a new run of the
	// peer, so the sync channel reconnects without waiting.
	PeerStarted()
	StatusChanges() <-chan ha.SyncStatus
	// Stats is what `tandem stats` shows: this unit's view and the peer's
	// last report (raw JSON, nil if none).
	Stats() (local any, peer []byte)
}

// Daemon is one running unit.
type Daemon struct {
	cfg    *config.Config
	key    []byte
	log    *slog.Logger
	opts   Options
	role   ha.Role
	bootID uint64
	// peerBoot is the boot id of the peer's last heartbeat: a new one is
	// a restarted peer (Syncer.PeerStarted).
	peerBoot uint64
	start    time.Time
	seq      uint64
	lastSend time.Time // when send last ran, to report a held loop
	heldAt   time.Time // when a held loop last sent again (noteSend)

	m       *ha.Machine
	tr      *heartbeat.Transport
	paths   []heartbeat.Path
	lastRx  *wire.Heartbeat // latest heartbeat from the peer, for status
	ctl     chan ctlCall
	holding bool      // the data plane holds the virtual IPs
	next    time.Time // when the machine next wants a Tick (zero: nothing pending)
	// graceUntil holds Ticks back after this loop was itself stalled
	// (see stalled).
	graceUntil time.Time
	// deadNow is the dead interval in force as last logged (the machine
	// stretches it after the peer's late heartbeats: ha/tolerance.go).
	deadNow time.Duration
	steal   stealMeter

	cfgDiffSince time.Time // when the units' config heads started to differ (zero: they agree)

	// The sync status of each source, combined for the machine (syncstatus.go).
	stateSync, configSync ha.SyncStatus
}

type ctlCall struct {
	req   control.Request
	reply chan ctlReply
}

type ctlReply struct {
	data any
	err  error
}

// New prepares a unit from a validated configuration and its key. It binds
// the heartbeat sockets; Run starts everything else.
func New(cfg *config.Config, key []byte, o Options) (*Daemon, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DataPlane == nil {
		o.DataPlane = nopDataPlane{}
	}
	role := ha.RolePrimary
	if cfg.Node.Role == config.RoleSecondary {
		role = ha.RoleSecondary
	}
	d := &Daemon{
		cfg: cfg, key: key, opts: o, role: role,
		log:   o.Logger.With("node", cfg.Node.Name),
		start: time.Now(),
		// The boot id grows across restarts (it is the start time), so the
		// peer's replay guard accepts a restarted unit and rejects replays
		// of an older run.
		bootID: uint64(time.Now().UnixNano()),
		ctl:    make(chan ctlCall),
		// Configuration sync has no objection until it says otherwise.
		configSync: ha.SyncInSync,
	}
	d.paths = Paths(cfg)
	tr, err := heartbeat.Open(d.paths, heartbeat.Options{
		Key: key, ClusterID: uint8(cfg.Cluster.ID), NodeID: uint8(role), Logger: d.log,
	})
	if err != nil {
		return nil, err
	}
	d.tr = tr
	return d, nil
}

// Paths lists the heartbeat paths of a configuration: the HA link first,
// then every watched interface.
func Paths(cfg *config.Config) []heartbeat.Path {
	port := uint16(cfg.HALink.Port)
	path := func(ifname string, local, peer netip.Prefix) heartbeat.Path {
		return heartbeat.Path{Name: ifname,
			Local: netip.AddrPortFrom(Scoped(local.Addr(), ifname), port),
			Peer:  netip.AddrPortFrom(Scoped(peer.Addr(), ifname), port)}
	}
	paths := []heartbeat.Path{path(cfg.HALink.Interface, cfg.LocalHAAddress(), cfg.PeerHAAddress())}
	for _, ifc := range cfg.Interfaces {
		if ifc.Watch {
			paths = append(paths, path(ifc.Name, ifc.LocalIP(cfg.Node.Role), ifc.PeerIP(cfg.Node.Role)))
		}
	}
	return paths
}

// Scoped gives an IPv6 link-local address the zone of the interface it
// lives on: without it the kernel cannot tell which link fe80::2 is on, and
// binding or sending fails.
func Scoped(a netip.Addr, ifname string) netip.Addr {
	if a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "" {
		return a.WithZone(ifname)
	}
	return a
}

func (d *Daemon) machineConfig() ha.Config {
	names := make([]string, len(d.paths))
	for i, p := range d.paths {
		names[i] = p.Name
	}
	return ha.Config{
		Role:              d.role,
		Priority:          d.cfg.EffectivePriority(),
		Preempt:           d.cfg.Cluster.Preempt,
		PreemptDelay:      d.cfg.Cluster.PreemptDelay.Duration,
		HeartbeatInterval: d.cfg.HALink.HeartbeatInterval.Duration,
		DeadInterval:      d.cfg.HALink.DeadInterval.Duration,
		DeadIntervalMax:   d.cfg.HALink.DeadIntervalMax.Duration,
		LinkHolddown:      d.cfg.HALink.LinkHolddown.Duration,
		Paths:             names,
		BootID:            d.bootID,
	}
}

// Run runs the unit until ctx ends, then resigns: an ACTIVE unit tells its
// peer to take over at once and releases its virtual IPs.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.tr.Close()
	// A crashed daemon may have left virtual IPs behind; a unit that is not
	// ACTIVE must not answer for them, so they go before anything else.
	if err := d.opts.DataPlane.Release(); err != nil {
		d.log.Warn("release leftover virtual IPs", "err", err)
	}

	rxCtx, stopRx := context.WithCancel(context.Background())
	rx := make(chan heartbeat.Received, 64)
	rxDone := make(chan struct{})
	go func() { d.tr.Receive(rxCtx, rx); close(rxDone) }()
	defer func() { stopRx(); <-rxDone }()

	now := time.Now()
	d.steal = stealMeter{read: readSteal, interval: d.cfg.HALink.DeadInterval.Duration}
	d.m = ha.New(d.machineConfig(), now)
	d.log.Info("starting", "role", d.role, "priority", d.cfg.EffectivePriority(), "paths", len(d.paths),
		"heartbeat_interval", d.cfg.HALink.HeartbeatInterval.Duration, "dead_interval", d.cfg.HALink.DeadInterval.Duration,
		"version", version.String(), "boot_id", d.bootID)
	d.apply(now, d.m.Start(now))

	hb := time.NewTicker(d.cfg.HALink.HeartbeatInterval.Duration)
	defer hb.Stop()
	deadline := time.NewTimer(time.Hour)
	defer deadline.Stop()

	for {
		// d.next was computed with the very instant of the last machine
		// step, as the simulator does: recomputing it here with a later
		// clock would skip deadlines that fell in between (a peer heard on
		// several paths a few µs apart would never be declared dead). A
		// deadline already past fires at once.
		if !d.next.IsZero() {
			deadline.Reset(time.Until(d.next))
		} else {
			deadline.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			return d.shutdown()
		case r := <-rx:
			d.lastRx = &r.HB
			if r.HB.BootID != d.peerBoot {
				d.peerBoot = r.HB.BootID
				if d.opts.Sync != nil {
					d.opts.Sync.PeerStarted()
				}
			}
			d.trackConfig(r.At)
			d.apply(r.At, d.m.HeartbeatReceived(r.At, r.Path, advertOf(&r.HB)))
			d.logDeadInterval(r.At)
		case <-hb.C:
			d.send()
		case <-deadline.C:
			now := time.Now()
			if d.stalled(now) {
				continue
			}
			d.apply(now, d.m.Tick(now))
			d.logDeadInterval(now)
		case ev := <-d.opts.Links:
			now := time.Now()
			d.log.Info("watched link", "link", ev.Name, "up", ev.Up, "reason", ev.Reason)
			d.apply(now, d.m.LinkChanged(now, ev.Name, ev.Up, ev.Reason))
		case st := <-d.syncChanges():
			d.stateSync = st
			d.setSync(time.Now())
		case st := <-d.configSyncChanges():
			d.configSync = st
			d.setSync(time.Now())
		case <-d.opts.Conflicts:
			if d.holding {
				d.log.Warn("another unit answers for our virtual IPs; announcing again")
				d.opts.DataPlane.Reannounce()
			}
		case c := <-d.ctl:
			data, err := d.handle(c.req)
			c.reply <- ctlReply{data, err}
		}
	}
}

// apply carries out a machine result: log, data plane, heartbeat. Every
// machine step goes through it, so it also records when the machine wants
// its next Tick, computed with the step's own instant.
func (d *Daemon) apply(now time.Time, r ha.Result) {
	d.next = d.m.NextDeadline(now)
	for _, t := range r.Transitions {
		lvl := slog.LevelInfo
		if t.To == ha.StateFault {
			lvl = slog.LevelWarn
		}
		d.log.Log(context.Background(), lvl, "transition", "from", t.From, "state", t.To, "epoch", d.m.Epoch(), "reason", t.Reason)
	}
	active := d.m.State() == ha.StateActive
	switch {
	case active && !d.holding:
		// The heartbeat goes first: the peer learns of the takeover while
		// the addresses are being added.
		if r.SendNow {
			d.send()
			r.SendNow = false
		}
		if err := d.opts.DataPlane.Acquire(); err != nil {
			d.log.Error("acquire virtual IPs", "err", err)
		}
		d.holding = true
		if d.opts.Sync != nil {
			d.opts.Sync.SetRole(true)
		}
		if d.opts.Config != nil {
			d.opts.Config.SetActive(true)
		}
	case !active && d.holding:
		if err := d.opts.DataPlane.Release(); err != nil {
			d.log.Error("release virtual IPs", "err", err)
		}
		d.holding = false
		if d.opts.Sync != nil {
			d.opts.Sync.SetRole(false)
		}
		if d.opts.Config != nil {
			d.opts.Config.SetActive(false)
		}
	}
	if r.SendNow {
		d.send()
	}
}

// stalled holds a deadline back for one heartbeat interval when it fired
// late: this loop was not running (a CPU hog above it, a paused virtual
// machine), so the peer's heartbeats may be waiting unread in the sockets,
// and a peer that was frozen with us — the other VM on the same host —
// has had no chance to send one. Measured on the lab's VM: 20-30 ms
// freezes of everything, each a false failover for both keepalived and
// tandem at the fast profile's 15 ms dead interval, with both units
// declaring the other dead within a few ms of the thaw. The machine still
// decides; this only makes sure it hears first what arrived. A peer that
// is really dead is declared so one dead interval later, and only
// after a stall of this unit. A stall is a deadline fired late, a
// heartbeat of this unit overdue or sent late within the last dead
// interval (noteSend: a hold can end just before a deadline that then
// fires on time), or a dead interval of CPU time stolen by the host.
func (d *Daemon) stalled(now time.Time) bool {
	if now.Before(d.graceUntil) {
		d.next = d.graceUntil
		return true
	}
	hb := d.cfg.HALink.HeartbeatInterval.Duration
	late := now.Sub(d.next)
	if d.next.IsZero() || !d.graceUntil.Before(d.next) {
		return false
	}
	dead := d.cfg.HALink.DeadInterval.Duration
	switch stolen := d.steal.since(); {
	case late > d.stallSlack():
		d.log.Info("event loop stalled; reading the peer's heartbeats before judging its deadline", "late", late.Round(time.Microsecond))
	case !d.lastSend.IsZero() && now.Sub(d.lastSend) > hb+d.stallSlack():
		// A heartbeat is overdue: the loop is being held right now.
		d.log.Info("event loop held (a heartbeat is overdue); reading the peer's heartbeats before judging its deadline", "since_send", now.Sub(d.lastSend).Round(time.Microsecond))
	case !d.heldAt.IsZero() && now.Sub(d.heldAt) < dead:
		d.log.Info("event loop held within the dead interval; reading the peer's heartbeats before judging its deadline", "ago", now.Sub(d.heldAt).Round(time.Microsecond))
	case stolen >= dead:
		// See steal.go: the host did not let this machine (and maybe
		// the peer, beside it) run.
		d.log.Info("the hypervisor held this machine's CPUs; reading the peer's heartbeats before judging its deadline", "stolen", stolen)
	default:
		return false
	}
	// The peer gets a whole dead interval to be heard again, as if the
	// listening had only started now: after a freeze of the machine the
	// peer thaws a few ms after this unit, or later.
	d.graceUntil = now.Add(dead)
	d.next = d.graceUntil
	return true
}

// logDeadInterval says when the dead interval in force changes.
func (d *Daemon) logDeadInterval(now time.Time) {
	di := d.m.DeadInterval(now)
	if d.deadNow == 0 {
		d.deadNow = d.cfg.HALink.DeadInterval.Duration
	}
	if di == d.deadNow {
		return
	}
	if di > d.cfg.HALink.DeadInterval.Duration {
		d.log.Warn("the peer's heartbeats came late: dead interval stretched for 30 s", "dead_interval", di, "configured", d.cfg.HALink.DeadInterval.Duration, "max", d.cfg.HALink.DeadIntervalMax.Duration)
	} else {
		d.log.Info("dead interval back to its configured value", "dead_interval", di)
	}
	d.deadNow = di
}

// stallSlack is how late a deadline may fire, or a heartbeat go out,
// before this loop counts as stalled: half a heartbeat.
func (d *Daemon) stallSlack() time.Duration {
	return max(d.cfg.HALink.HeartbeatInterval.Duration/2, time.Millisecond)
}

// noteSend records a heartbeat going out at now. A gap of more than
// heartbeat + stallSlack means this loop was held: stalled then gives the
// peer a dead interval, as after a late deadline — a hold can end just
// before a deadline that then fires on time (BENCHMARKS.md, finding 19).
// A gap the peer cannot wait out is logged: a peer that declares this
// unit dead while this unit's deadlines all fired on time leaves no other
// trace here (finding 16).
func (d *Daemon) noteSend(now time.Time) {
	hb := d.cfg.HALink.HeartbeatInterval.Duration
	if gap := now.Sub(d.lastSend); !d.lastSend.IsZero() && gap > hb+d.stallSlack() {
		d.heldAt = now
		if gap > hb+d.cfg.HALink.DeadInterval.Duration/2 {
			d.log.Warn("no heartbeat sent for longer than the peer can wait: this unit's event loop was held", "gap", gap.Round(time.Microsecond))
		}
	}
	d.lastSend = now
}

func (d *Daemon) send() {
	now := time.Now()
	d.steal.sample(now)
	d.noteSend(now)
	a := d.m.Advert()
	d.seq++
	var cfgRev uint64
	var cfgHash [8]byte
	if d.opts.Config != nil {
		cfgRev, cfgHash = d.opts.Config.Head()
	}
	d.tr.Send(&wire.Heartbeat{
		Version:         wire.Version,
		ClusterID:       uint8(d.cfg.Cluster.ID),
		NodeID:          uint8(d.role),
		State:           wire.State(a.State),
		Flags:           wire.Flags(a.Flags),
		Priority:        a.Priority,
		Sync:            wire.SyncStatus(a.Sync),
		FailedLinks:     a.FailedLinks,
		Epoch:           a.Epoch,
		SchemaVersion:   version.Schema,
		SoftwareVersion: version.Bytes(),
		BootID:          d.bootID,
		Seq:             d.seq,
		SentAtNanos:     int64(time.Since(d.start)),
		ConfigVersion:   cfgRev,
		ConfigHash:      cfgHash,
	})
}

func advertOf(hb *wire.Heartbeat) ha.Advert {
	return ha.Advert{
		Role:        ha.Role(hb.NodeID),
		State:       ha.State(hb.State),
		Flags:       ha.Flags(hb.Flags),
		Priority:    hb.Priority,
		Sync:        ha.SyncStatus(hb.Sync),
		FailedLinks: hb.FailedLinks,
		Epoch:       hb.Epoch,
		BootID:      hb.BootID,
		Seq:         hb.Seq,
	}
}

// shutdown resigns: the resigning heartbeat goes out three times (a single
// lost packet must not cost the peer a dead interval), then the virtual IPs
// are released.
func (d *Daemon) shutdown() error {
	now := time.Now()
	d.apply(now, d.m.Shutdown(now))
	for range 2 {
		time.Sleep(time.Millisecond)
		d.send()
	}
	var err error
	if d.holding {
		err = d.opts.DataPlane.Release()
		d.holding = false
	}
	d.log.Info("stopped")
	return err
}

func (d *Daemon) syncChanges() <-chan ha.SyncStatus {
	if d.opts.Sync == nil {
		return nil
	}
	return d.opts.Sync.StatusChanges()
}

// Control answers one control request through the event loop.
// Configuration operations only ask the loop for the role: they run here,
// beside it, because a publish runs validate and apply hooks (nft) that
// must never delay a heartbeat.
func (d *Daemon) Control(ctx context.Context, req control.Request) (any, error) {
	if isConfigOp(req.Op) && d.opts.Config != nil {
		v, err := d.call(ctx, control.Request{Op: opConfigRole})
		if err != nil {
			return nil, err
		}
		r := v.(configRole)
		d.opts.Config.SetPeerActive(r.bothActive)
		return d.opts.Config.HandleRequest(req.Op, req.Args, req.Payload, r.active, r.name, r.addr)
	}
	v, err := d.call(ctx, req)
	if st, ok := v.(Status); ok && req.Op == "status" && err == nil {
		v = d.withConfigPeers(st)
	}
	return v, err
}

func (d *Daemon) call(ctx context.Context, req control.Request) (any, error) {
	reply := make(chan ctlReply, 1)
	select {
	case d.ctl <- ctlCall{req, reply}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-reply:
		return r.data, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (d *Daemon) handle(req control.Request) (any, error) {
	now := time.Now()
	switch req.Op {
	case "status":
		return d.status(now), nil
	case "stats":
		if d.opts.Sync == nil {
			return nil, errors.New("state sync is off on this unit (sync.enabled: false)")
		}
		local, peer := d.opts.Sync.Stats()
		return map[string]any{"node": d.cfg.Node.Name, "state": d.m.State().String(), "local": local, "peer": json.RawMessage(orNull(peer))}, nil
	case "failover":
		r, err := d.m.RequestFailover(now, req.Force)
		d.apply(now, r) // a refused request still let the machine evaluate
		if err != nil {
			return nil, fmt.Errorf("failover refused: %w", err)
		}
		d.log.Info("operator failover", "force", req.Force, "state", d.m.State())
		return d.status(now), nil
	case opConfigRole:
		return d.configRole(), nil
	case "promote":
		if !req.Force {
			return nil, errors.New("promote makes this unit ACTIVE whatever the peer says; it is for disaster recovery when the old ACTIVE is gone for good. Confirm with --force")
		}
		r, err := d.m.Promote(now)
		d.apply(now, r)
		if err != nil {
			return nil, fmt.Errorf("promote refused: %w", err)
		}
		d.log.Warn("operator promote --force")
		return d.status(now), nil
	}
	if isConfigOp(req.Op) {
		if d.opts.Config == nil {
			return nil, fmt.Errorf("configuration sync is off on this unit (no state_dir, or its config store could not be opened: see the daemon's log)")
		}
		r := d.configRole()
		return d.opts.Config.HandleRequest(req.Op, req.Args, req.Payload, r.active, r.name, r.addr)
	}
	return nil, fmt.Errorf("unknown operation %q (this daemon is tandem %s)", req.Op, version.String())
}

// opConfigRole is the loop-internal request behind configuration operations.
const opConfigRole = "internal.config-role"

func isConfigOp(op string) bool { return strings.HasPrefix(op, "config.") || op == "sync.force" }

// configRole is what a configuration operation needs from the machine.
type configRole struct {
	active     bool
	name, addr string // the ACTIVE unit, when it is the peer or this unit
	bothActive bool   // this unit and the peer both claim ACTIVE
}

func (d *Daemon) configRole() configRole {
	r := configRole{active: d.m.State() == ha.StateActive}
	if r.active {
		r.name, r.addr = d.cfg.Node.Name, d.cfg.LocalHAAddress().Addr().String()
		p := d.m.Status(time.Now()).Peer
		r.bothActive = p.Known && p.Alive && p.Advert.State == ha.StateActive
		return r
	}
	ms := d.m.Status(time.Now())
	if ms.Peer.Known && ms.Peer.Alive && ms.Peer.Advert.State == ha.StateActive {
		// The heartbeat does not carry names: configsync fills it in from
		// the peer's hello on the sync channel.
		r.addr = d.cfg.PeerHAAddress().Addr().String()
	}
	return r
}

// trackConfig notes since when the two units' configuration heads differ.
func (d *Daemon) trackConfig(now time.Time) {
	if d.opts.Config == nil || d.lastRx == nil {
		return
	}
	rev, hash := d.opts.Config.Head()
	if rev == d.lastRx.ConfigVersion && hash == d.lastRx.ConfigHash {
		d.cfgDiffSince = time.Time{}
	} else if d.cfgDiffSince.IsZero() {
		d.cfgDiffSince = now
	}
}

func orNull(b []byte) []byte {
	if len(b) == 0 {
		return []byte("null")
	}
	return b
}

type nopDataPlane struct{}

func (nopDataPlane) Acquire() error { return nil }
func (nopDataPlane) Release() error { return nil }
func (nopDataPlane) Reannounce()    {}
