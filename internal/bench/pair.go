package bench

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/daemon"
	"github.com/tandem-ha/tandem/internal/lab"
)

// The ways of failing the ACTIVE unit.
const (
	ModeCrash    = "crash"    // power failure: daemon frozen, every link down, daemon killed
	ModeSigkill  = "sigkill"  // the daemon is SIGKILLed; the box and its links stay up
	ModeSigterm  = "sigterm"  // graceful stop of the daemon
	ModeLinkdown = "linkdown" // the watched LAN link of the unit goes down
)

// Modes lists every mode, in the order they run.
var Modes = []string{ModeCrash, ModeSigkill, ModeSigterm, ModeLinkdown}

// pair is an HA implementation running on the lab's two firewall units.
type pair interface {
	// name is "tandem" or "keepalived".
	name() string
	// steady reports whether the pair is in its steady state: the
	// preferred unit fw-a ACTIVE, fw-b STANDBY, the virtual IPs in fw-a's
	// kernel only. why says what is missing; gen changes with every state
	// change of either unit (so a flap between two polls is seen).
	steady(ctx context.Context) (ok bool, why, gen string)
	// active is the unit that says it holds the role now ("" if none, "fw-a+fw-b" if both).
	active(ctx context.Context) string
	// fail fails unit node in mode; reset repairs it.
	fail(ctx context.Context, mode, node string) error
	reset(ctx context.Context, mode, node string) error
	// pids are the processes of the pair, for their scheduling policies.
	pids() map[string][]int
}

// tandemPair is the lab's own two tandem daemons.
type tandemPair struct{ l *lab.Lab }

func (tandemPair) name() string { return "tandem" }

func (p tandemPair) status(ctx context.Context, node string) (*daemon.Status, error) {
	socket := ""
	for _, n := range p.l.Status(ctx).Nodes {
		if n.Name == node {
			if !n.Running {
				return nil, fmt.Errorf("%s daemon is %s", node, n.State)
			}
			socket = n.ControlSocket
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var st daemon.Status
	if err := control.Call(ctx, socket, control.Request{Op: "status"}, &st); err != nil {
		return nil, fmt.Errorf("%s status: %w", node, err)
	}
	return &st, nil
}

func (p tandemPair) steady(ctx context.Context) (bool, string, string) {
	var why []string
	var gen strings.Builder
	for _, n := range units {
		st, err := p.status(ctx, n)
		if err != nil {
			return false, err.Error(), ""
		}
		fmt.Fprintf(&gen, "%s %d %d;", n, st.BootID, len(st.History))
		if k := len(st.History); k > 0 {
			fmt.Fprintf(&gen, "%d;", st.History[k-1].At.UnixNano())
		}
		want := "ACTIVE"
		if n != lab.RoleFwA {
			want = "STANDBY"
		}
		if st.State != want {
			why = append(why, fmt.Sprintf("%s is %s", n, st.State))
		}
		if st.Preempting {
			why = append(why, n+" is preempting")
		}
	}
	why = append(why, dataPlaneWhy(p.l)...)
	return len(why) == 0, strings.Join(why, "; "), gen.String()
}

// dataPlaneWhy says what keeps the data plane from its steady state: the
// VIPs in fw-a's kernel only, and the hosts sending to fw-a.
func dataPlaneWhy(l *lab.Lab) []string {
	holders, exactly, err := vipHolders(l, lab.RoleFwA)
	if err != nil {
		return []string{err.Error()}
	}
	var why []string
	if !exactly {
		why = append(why, fmt.Sprintf("virtual IPs held by %v", holders))
	}
	via, err := trafficVia(l)
	switch {
	case err != nil:
		why = append(why, err.Error())
	case via != lab.RoleFwA:
		why = append(why, fmt.Sprintf("the hosts' neighbour entries for the VIPs point to %q, not fw-a", via))
	}
	return why
}

func (p tandemPair) active(ctx context.Context) string {
	var act []string
	for _, n := range units {
		if st, err := p.status(ctx, n); err == nil && st.State == "ACTIVE" {
			act = append(act, n)
		}
	}
	return strings.Join(act, "+")
}

func (p tandemPair) fail(_ context.Context, mode, node string) error {
	switch mode {
	case ModeCrash:
		return p.l.Crash(node)
	case ModeSigkill:
		return p.l.KillDaemon(node, syscall.SIGKILL)
	case ModeSigterm:
		return p.l.KillDaemon(node, syscall.SIGTERM)
	case ModeLinkdown:
		return p.l.SetLink(node, lab.IfLAN, false)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func (p tandemPair) reset(ctx context.Context, mode, node string) error {
	switch mode {
	case ModeCrash:
		return p.l.Restore(ctx, node)
	case ModeSigkill, ModeSigterm:
		return p.l.StartDaemon(node)
	case ModeLinkdown:
		return p.l.SetLink(node, lab.IfLAN, true)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func (p tandemPair) pids() map[string][]int {
	out := map[string][]int{}
	for _, n := range p.l.Status(context.Background()).Nodes {
		if n.Running {
			out[n.Name] = []int{n.PID}
		}
	}
	return out
}

// stopTandem stops both tandem daemons gracefully (SIGTERM: the ACTIVE hands
// over and releases its virtual IPs) and checks that no VIP is left.
func stopTandem(ctx context.Context, l *lab.Lab) error {
	notRunning := map[string]bool{}
	for _, n := range l.Status(ctx).Nodes {
		notRunning[n.Name] = !n.Running
	}
	for _, n := range []string{lab.RoleFwB, lab.RoleFwA} {
		if err := l.KillDaemon(n, syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "not running") {
			return err
		}
	}
	for _, n := range units {
		held, err := heldVIPs(l, n)
		if err != nil {
			return err
		}
		switch {
		case len(held) > 0 && notRunning[n]:
			return fmt.Errorf("the tandem daemon of %s had exited before the SIGTERM (see its log) and left virtual IPs %v behind", n, held)
		case len(held) > 0:
			return fmt.Errorf("after SIGTERM the tandem daemon of %s left virtual IPs %v behind", n, held)
		}
	}
	return ctx.Err()
}
