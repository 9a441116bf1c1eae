package bench

import (
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// masterDown is VRRPv3's Master_Down_Interval for a backup of priority
// prio: 3 adverts plus the skew (256-prio)/256 of one.
func masterDown(advert time.Duration, prio int) time.Duration {
	return 3*advert + time.Duration(int64(256-prio)*int64(advert)/256)
}

func advertDuration(hb time.Duration) time.Duration {
	cs := max(int64((hb+5*time.Millisecond)/(10*time.Millisecond)), 1)
	return time.Duration(cs) * 10 * time.Millisecond
}

func commonNotes(p lab.Profile, keepalived bool) []string {
	n := []string{
		"foreign_realtime is the CPU time used during the run by SCHED_FIFO/SCHED_RR processes this benchmark did not start (other labs' tandem daemons run at SCHED_RR 50, the same priority as the daemons under test, and take turns with them in 100 ms round-robin slices); when it is not zero the run was not alone on the machine.",
		"the probe agent (prober and echo server) runs in its own process at SCHED_RR 10, below the daemons, so normal-priority load does not delay the measurement.",
		fmt.Sprintf("tandem profile %s: heartbeat %v on every path (ha0, lan0, wan0), dead interval %v, preempt_delay %v, link_holddown %v, 3 GARP bursts 10 ms apart on takeover.",
			p.Name, p.Heartbeat, p.Dead, p.PreemptDelay, p.LinkHolddown),
	}
	if keepalived {
		adv := advertDuration(p.Heartbeat)
		n = append(n,
			fmt.Sprintf("keepalived: VRRPv3, instances LAN (lan0, VIP %s) and WAN (wan0, VIP %s) in one vrrp_sync_group, fw-a priority 200 / fw-b 100, both state BACKUP with preempt and preempt_delay %v, track_interface of the other side's link, advert_int %s (the profile's heartbeat %v; VRRPv3 counts in centiseconds, 10 ms minimum): fw-b declares the master down after 3 adverts + skew = %v. GARP settings are keepalived's defaults (5 at once on becoming MASTER, 5 more after 5 s).",
				lab.LANVIP, lab.WANVIP, p.PreemptDelay, advertInt(p.Heartbeat), p.Heartbeat, masterDown(adv, 100)),
			"keepalived: VRRPv3 has no authentication (RFC 5798 removed it), so its adverts are not authenticated; tandem's heartbeats are HMAC-SHA256 signed and replay-protected.",
			"keepalived: the lab source-NATs everything leaving wan0 to the WAN VIP (internal/nftfw), locally generated packets included; that breaks VRRPv3 on wan0 (the checksum covers the source address: \"Invalid VRRPv3 checksum\"; a MASTER's adverts fail with EPERM). The bench adds table inet bench_vrrp_notrack (IP protocol 112 notrack) to both units before starting keepalived, as an operator would.",
			"keepalived runs as `keepalived --vrrp --dont-fork --log-console --no-syslog --log-detail` with its config, pid files and log in the lab's run directory. sigkill freezes the parent first (so it cannot respawn the VRRP child), then SIGKILLs the child and the parent; crash freezes both, sets every link of the unit down, then SIGKILLs them (as lab.Crash does for tandem).",
		)
	}
	return n
}

// FailoverNotes explains a failover report.
func FailoverNotes(rep *FailoverReport) []string {
	p := lab.Profiles[rep.Profile]
	n := []string{
		"outage = the longest gap between consecutive answered UDP probes (client -> LAN VIP gateway -> fw -> SNAT to WAN VIP -> server echo, one probe per ms) that ends between the failure and the end of the observation; it includes the 1 ms probe interval.",
		fmt.Sprintf("every trial fails fw-a (the primary, ACTIVE in the steady state) after the pair has been steady for %v without any state change (fw-a ACTIVE/MASTER, fw-b STANDBY/BACKUP, the VIPs in fw-a's kernel only, the client's and the server's neighbour entries for the VIPs pointing to fw-a) with traffic flowing (no 50 ms gap) for 300 ms; the traffic is then watched for at least %v and until it has flowed for 300 ms again; a trial whose traffic is not back within 10 s is a failure. The repair (Restore, daemon restart, link up) and the preempt back to fw-a happen after the measurement and are not counted.", rep.Settle, rep.Observe),
		"loss_window_ms (per sample) is the longest run of lost probes on the sender's clock, max_send_gap_ms the longest pause of the prober, max_rtt_ms the longest round trip: a gap with no lost probe and a send gap as long is the measuring host stalling, not the network.",
		"sigkill: the daemon dies but the box stays up, so the killed unit's kernel keeps the VIPs (vips_on lists both units) until its daemon restarts and removes them; the peer takes over after the dead interval / master down interval.",
	}
	return append(n, commonNotes(p, rep.Keepalived != nil)...)
}

// StabilityNotes explains a stability report.
func StabilityNotes(rep *StabilityReport) []string {
	p := lab.Profiles[rep.Profile]
	n := []string{
		fmt.Sprintf("%d CPU burners (busy loops, nice 0, one per CPU) ran for the whole duration of each implementation's run, beside the prober; nothing failed, so every state change after the initial election is a false failover.", rep.Burners),
		"tandem transitions come from each daemon's status history (polled every 250 ms; restarts detected by boot id); keepalived's from its log lines \"(INSTANCE) Entering X STATE\" (one line per instance: a sync-group failover of one unit is 2 lines, of the pair 4).",
	}
	return append(n, commonNotes(p, rep.Keepalived != nil)...)
}
