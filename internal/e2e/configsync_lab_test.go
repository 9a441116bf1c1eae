package e2e

// Configuration sync on the lab, with real daemons and the real kernel: a
// policy published on the ACTIVE is enforced by the standby after a
// failover (and, as the negative control, not without the publish); a cut
// HA link lets the standby fall behind and it converges, without a
// restart, when the link returns; a full partition in which both units
// accept changes heals to one ACTIVE with the yielding unit's revisions
// kept as conflicts; and an OUT_OF_SYNC standby is refused as a failover
// target unless --force.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/daemon"
	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/netnstest"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// Server ports of the policy test: the policy drops new connections to
// policyBlockedPort; policyOpenPort is the control flow it leaves alone.
const (
	policyBlockedPort = 8081
	policyOpenPort    = 8082
	policyTable       = "tandem_policy"
)

// policyDoc is the policies document of TestLabConfigPolicyEnforcedAfterFailover:
// its own table, re-created whole on every apply (nft applies the script
// atomically), with a forward chain that runs before the lab's firewall
// (inet tandem_fw, priority filter = 0) and drops TCP to one server port.
var policyDoc = []byte(fmt.Sprintf(`# edge policy: nothing reaches the server on port %[1]d
table inet %[2]s
delete table inet %[2]s
table inet %[2]s {
	chain forward {
		type filter hook forward priority -10; policy accept;
		tcp dport %[1]d counter drop
	}
}
`, policyBlockedPort, policyTable))

// cliCommand is the tandem binary with args, for a client subcommand. A
// binary built with -race sleeps a second at exit (the race runtime's
// atexit_sleep_ms) unless told not to, which would make every poll of
// `tandem status` take a second.
func cliCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(tandemBin, args...)
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// cli runs a tandem client subcommand against node's control socket and
// returns its combined output and exit code.
func (l *testLab) cli(node string, args ...string) (string, int) {
	l.t.Helper()
	out, err := cliCommand(append(args, "--socket", l.socket(node))...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		l.t.Fatal(err)
	}
	return string(out), 0
}

// haStatus is node's `tandem status -o json`.
func (l *testLab) haStatus(node string) (daemon.Status, error) {
	out, code := l.cli(node, "status", "-o", "json")
	var st daemon.Status
	if code != 0 {
		return st, fmt.Errorf("tandem status on %s: exit %d: %s", node, code, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("tandem status on %s: %w: %s", node, err, out)
	}
	return st, nil
}

// mustHAStatus is haStatus failing the test on error.
func (l *testLab) mustHAStatus(node string) daemon.Status {
	l.t.Helper()
	st, err := l.haStatus(node)
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

// configStatus is node's `tandem config status`.
func (l *testLab) configStatus(node string) (configsync.Status, error) {
	out, code := l.cli(node, "config", "status")
	var st configsync.Status
	if code != 0 {
		return st, fmt.Errorf("tandem config status on %s: exit %d: %s", node, code, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("tandem config status on %s: %w: %s", node, err, out)
	}
	if len(st.Peers) != 1 {
		return st, fmt.Errorf("tandem config status on %s: want one peer: %s", node, out)
	}
	return st, nil
}

func (l *testLab) mustConfigStatus(node string) configsync.Status {
	l.t.Helper()
	st, err := l.configStatus(node)
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

// publishDoc publishes content as category/name on node with `tandem config
// publish` and returns the revision number it reports; a refusal fails the
// test.
func (l *testLab) publishDoc(node, category, name string, content []byte, msg string) uint64 {
	l.t.Helper()
	f, err := os.CreateTemp(l.Dir(), "doc-*")
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := f.Write(content); err != nil {
		l.t.Fatal(err)
	}
	f.Close()
	out, code := l.cli(node, "config", "publish", "--category", category, "--name", name, "--file", f.Name(), "-m", msg)
	m := regexp.MustCompile(`published \S+ as revision (\d+) `).FindStringSubmatch(out)
	if code != 0 || m == nil {
		l.t.Fatalf("tandem config publish %s/%s on %s: exit %d: %s", category, name, node, code, out)
	}
	rev, _ := strconv.ParseUint(m[1], 10, 64)
	return rev
}

// configGet is `tandem config get` on node: the document's bytes exactly
// (standard output only).
func (l *testLab) configGet(node, category, name string, rev uint64) ([]byte, error) {
	args := []string{"config", "get", "--socket", l.socket(node), "--category", category, "--name", name}
	if rev != 0 {
		args = append(args, "--rev", strconv.FormatUint(rev, 10))
	}
	cmd := cliCommand(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("tandem config get %s/%s on %s: %w: %s", category, name, node, err, stderr.String())
	}
	return out, nil
}

// waitDoc waits until node serves category/name with exactly content.
func (l *testLab) waitDoc(node, category, name string, content []byte, timeout time.Duration) {
	l.t.Helper()
	var last []byte
	var lastErr error
	deadline := time.Now().Add(timeout)
	for {
		last, lastErr = l.configGet(node, category, name, 0)
		if lastErr == nil && string(last) == string(content) {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s does not serve %s/%s byte for byte after %v: got %q, err %v; want %q", node, category, name, timeout, last, lastErr, content)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pids are the lab's daemon PIDs, fw-a then fw-b.
func (l *testLab) pids() [2]int {
	st := l.Status(context.Background())
	return [2]int{st.Nodes[0].PID, st.Nodes[1].PID}
}

// dialPort opens a new TCP connection from the client to the server's port
// through the firewall pair and checks one echo.
func (l *testLab) dialPort(port int, timeout time.Duration) error {
	var c net.Conn
	if err := l.Do(lab.RoleClient, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), uint16(port)).String())
		return
	}); err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "to port "+strconv.Itoa(port), timeout)
}

// policyDrops is the drop counter of the policy's rule in node's kernel;
// -1 when the table is not there.
func (l *testLab) policyDrops(node string) int {
	l.t.Helper()
	out, err := l.Exec(context.Background(), node, "nft", "list", "table", "inet", policyTable)
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`tcp dport ` + strconv.Itoa(policyBlockedPort) + ` counter packets (\d+) `).FindStringSubmatch(string(out))
	if m == nil {
		l.t.Fatalf("%s: the policy table has no counting drop rule for port %d:\n%s", node, policyBlockedPort, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// nftScript loads an nft script into role's kernel.
func (l *testLab) nftScript(role, script string) {
	l.t.Helper()
	f, err := os.CreateTemp(l.Dir(), "nft-*")
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := f.WriteString(script); err != nil {
		l.t.Fatal(err)
	}
	f.Close()
	l.sh(role, "nft", "-f", f.Name())
}

// haLine summarises a `tandem status` for a failure message.
func haLine(st daemon.Status) string {
	s := fmt.Sprintf("%s %s epoch %d sync %s; peer %s alive=%v sync %s", st.Node, st.State, st.Epoch, st.Sync, st.Peer.State, st.Peer.Alive, st.Peer.Sync)
	if c := st.Config; c != nil {
		s += fmt.Sprintf("; config rev %d (%s), peer %d (%s), differ=%v", c.Revision, c.Hash, c.PeerRevision, c.PeerHash, c.Differ)
	}
	if n := len(st.History); n > 0 {
		t := st.History[n-1]
		s += fmt.Sprintf("; last transition %s->%s %q", t.From, t.To, t.Reason)
	}
	if len(st.Warnings) > 0 {
		s += fmt.Sprintf("; warnings %q", st.Warnings)
	}
	return s
}

// configLine summarises a `tandem config status` for a failure message.
func configLine(st configsync.Status) string {
	s := fmt.Sprintf("%s %s head %d (%s) sync %s link_up=%v conflicts %d apply_errors %q", st.Node, st.Role, st.Head, st.Hash, st.Sync, st.LinkUp, st.Conflicts, st.ApplyErrors)
	for _, p := range st.Peers {
		s += fmt.Sprintf("; peer %s %s head %d: %q %s", p.Peer, p.Role, p.Head, p.Status, p.LastError)
	}
	if n := len(st.Errors); n > 0 {
		s += fmt.Sprintf("; last error %q", st.Errors[n-1])
	}
	return s
}

// waitHA polls both units' `tandem status -o json` until cond holds and
// returns when it did; on timeout it fails showing what each unit said last.
func (l *testLab) waitHA(timeout time.Duration, what string, cond func(a, b daemon.Status) bool) time.Time {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a, errA := l.haStatus("fw-a")
		b, errB := l.haStatus("fw-b")
		if errA == nil && errB == nil && cond(a, b) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("timed out after %v waiting for %s; last status:\n  %s %v\n  %s %v", timeout, what, haLine(a), errA, haLine(b), errB)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConfig is waitHA for `tandem config status`.
func (l *testLab) waitConfig(timeout time.Duration, what string, cond func(a, b configsync.Status) bool) time.Time {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a, errA := l.configStatus("fw-a")
		b, errB := l.configStatus("fw-b")
		if errA == nil && errB == nil && cond(a, b) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("timed out after %v waiting for %s; last config status:\n  %s %v\n  %s %v", timeout, what, configLine(a), errA, configLine(b), errB)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLabConfigPolicyEnforcedAfterFailover: an nftables policy published on
// the ACTIVE fw-a (category policies) is applied there, reaches the standby
// fw-b byte for byte and is loaded in fw-b's kernel; after `tandem failover`
// the traffic it blocks is blocked through fw-b (fw-b's rule counts the
// drops) while a control flow to another port passes. The negative
// control: without the publish, the same traffic passes through fw-b.
func TestLabConfigPolicyEnforcedAfterFailover(t *testing.T) {
	requireLabNft(t)
	for _, withPolicy := range []bool{true, false} {
		name := "published"
		if !withPolicy {
			name = "without-publish"
		}
		t.Run(name, func(t *testing.T) {
			l := newLab(t, "default")
			waitBothInSync(t, l)
			l.requireUnmoved()
			l.echoServer(policyBlockedPort)
			l.echoServer(policyOpenPort)
			waitFor(t, 5*time.Second, "both ports reachable through fw-a before any policy", func() bool {
				return l.dialPort(policyBlockedPort, time.Second) == nil && l.dialPort(policyOpenPort, time.Second) == nil
			})

			if withPolicy {
				rev := l.publishDoc("fw-a", "policies", "edge", policyDoc, "block port 8081")
				if rev != 1 {
					t.Fatalf("the first publish is revision %d, want 1", rev)
				}
				// Applied on the ACTIVE: enforced through fw-a already.
				if n := l.policyDrops("fw-a"); n != 0 {
					t.Fatalf("fw-a's policy table: %d drops before any blocked traffic (want a fresh table)", n)
				}
				if err := l.dialPort(policyBlockedPort, 1500*time.Millisecond); err == nil {
					t.Fatalf("port %d still reachable through fw-a after the policy was published and applied there", policyBlockedPort)
				}
				if err := l.dialPort(policyOpenPort, 2*time.Second); err != nil {
					t.Fatalf("the control port %d is blocked through fw-a by a policy that only names %d: %v", policyOpenPort, policyBlockedPort, err)
				}
				// Replicated: byte for byte, applied in fw-b's kernel, no
				// apply error reported by either unit.
				l.waitDoc("fw-b", "policies", "edge", policyDoc, 5*time.Second)
				waitFor(t, 5*time.Second, "the policy table in fw-b's kernel", func() bool { return l.policyDrops("fw-b") == 0 })
				l.waitConfig(5*time.Second, "both units at config revision 1, same hash, peer Synchronized", func(a, b configsync.Status) bool {
					return a.Head == 1 && b.Head == 1 && a.Hash == b.Hash &&
						a.Sync == "IN_SYNC" && b.Sync == "IN_SYNC" && a.Peers[0].Status == snapshot.StatusSynchronized
				})
				if b := l.mustConfigStatus("fw-b"); len(b.ApplyErrors) != 0 {
					t.Fatalf("fw-b reports apply errors for the policy: %v", b.ApplyErrors)
				}
			} else if out, err := l.Exec(context.Background(), "fw-b", "nft", "list", "table", "inet", policyTable); err == nil {
				t.Fatalf("fw-b has table inet %s without any publish:\n%s", policyTable, out)
			}

			out, code := l.cli("fw-a", "failover")
			if code != 0 {
				t.Fatalf("tandem failover on fw-a: exit %d: %s", code, out)
			}
			l.waitStates(5*time.Second, "STANDBY", "ACTIVE")
			lanB, wanB := l.mac("fw-b", "lan0").String(), l.mac("fw-b", "wan0").String()
			waitFor(t, 5*time.Second, "the client and the server sending to fw-b", func() bool {
				return l.neighMAC(lab.RoleClient, lab.LANVIP.Addr()) == lanB && l.neighMAC(lab.RoleServer, lab.WANVIP.Addr()) == wanB
			})
			// The path through fw-b carries new connections (control flow).
			waitFor(t, 5*time.Second, fmt.Sprintf("a new connection to port %d through fw-b", policyOpenPort), func() bool {
				return l.dialPort(policyOpenPort, time.Second) == nil
			})

			err := l.dialPort(policyBlockedPort, 1500*time.Millisecond)
			if !withPolicy {
				if err != nil {
					t.Fatalf("negative control: without the policy, port %d must be reachable through fw-b: %v", policyBlockedPort, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("port %d reachable through fw-b after the failover: the replicated policy is not enforced", policyBlockedPort)
			}
			if n := l.policyDrops("fw-b"); n < 1 {
				t.Fatalf("fw-b's policy rule counted %d drops: the blocked connection did not die at fw-b's policy", n)
			}
			if err := l.dialPort(policyOpenPort, 2*time.Second); err != nil {
				t.Fatalf("the control port %d is blocked through fw-b: %v", policyOpenPort, err)
			}
			t.Logf("through fw-b after the failover: port %d dropped by the replicated policy (%d packets counted), port %d open", policyBlockedPort, l.policyDrops("fw-b"), policyOpenPort)
		})
	}
}

// TestLabConfigHALinkCutConvergence: only the HA link is cut. Heartbeats go
// on over LAN and WAN (no failover), but the sync channel rides the HA link:
// publishes on the ACTIVE are accepted while the standby falls behind, and
// both units say so. When the link returns the standby converges to the
// same revision and hash, with the same daemons (PIDs, boot ids).
func TestLabConfigHALinkCutConvergence(t *testing.T) {
	requireLabNft(t)
	l := newLab(t, "default")
	waitBothInSync(t, l)
	pids := l.pids()
	bootA, bootB := l.mustHAStatus("fw-a").BootID, l.mustHAStatus("fw-b").BootID

	docs := []struct {
		cat, name string
		content   []byte
	}{
		{"system", "dns", []byte("nameserver 192.0.2.53\n")},
		{"system", "ntp", []byte("server 192.0.2.123 iburst\n")},
		{"users", "admins", []byte("alice\nbob\n")},
	}
	l.publishDoc("fw-a", docs[0].cat, docs[0].name, docs[0].content, "before the cut")
	l.waitDoc("fw-b", docs[0].cat, docs[0].name, docs[0].content, 5*time.Second)

	if err := l.SetLink("fw-a", "ha0", false); err != nil {
		t.Fatal(err)
	}
	l.waitConfig(5*time.Second, "the config sync channel down on both units", func(a, b configsync.Status) bool {
		return !a.LinkUp && !b.LinkUp
	})
	for i, d := range docs[1:] {
		if rev := l.publishDoc("fw-a", d.cat, d.name, d.content, "during the cut"); rev != uint64(i+2) {
			t.Fatalf("publish during the cut: revision %d, want %d", rev, i+2)
		}
	}
	// The standby lags, and both units' `tandem status` say so (the heads
	// travel in the heartbeats, which still flow on LAN and WAN).
	l.waitHA(5*time.Second, "both units' status showing the configuration differs", func(a, b daemon.Status) bool {
		return a.Config != nil && b.Config != nil &&
			a.Config.Revision == 3 && a.Config.PeerRevision == 1 && a.Config.Differ &&
			b.Config.Revision == 1 && b.Config.PeerRevision == 3 && b.Config.Differ &&
			hasWarning(a, "configuration differs") && hasWarning(b, "configuration differs")
	})
	if out, code := l.cli("fw-b", "status"); code != 0 || !strings.Contains(out, "revision 1 (") ||
		!strings.Contains(out, "peer revision 3 (") || !strings.Contains(out, "DIFFERS from the peer") {
		t.Fatalf("fw-b's `tandem status` should show its configuration lagging (revision 1, the peer 3): exit %d:\n%s", code, out)
	}
	if _, err := l.configGet("fw-b", docs[1].cat, docs[1].name, 0); err == nil {
		t.Fatalf("fw-b serves %s/%s published while the sync channel was cut", docs[1].cat, docs[1].name)
	}
	a := l.mustConfigStatus("fw-a")
	if a.Head != 3 || a.Peers[0].Head != 1 || a.Peers[0].Status != snapshot.StatusCommunication {
		t.Fatalf("fw-a's config status during the cut: head %d, peer head %d, peer status %q; want 3, 1, %q",
			a.Head, a.Peers[0].Head, a.Peers[0].Status, snapshot.StatusCommunication)
	}
	if st := l.mustHAStatus("fw-b"); st.State != "STANDBY" || st.Paths[0].Alive || !st.Paths[1].Alive {
		t.Fatalf("fw-b during the cut: %s, paths %+v; want STANDBY hearing fw-a on lan0 only", st.State, st.Paths)
	}

	cutEnd := time.Now()
	if err := l.SetLink("fw-a", "ha0", true); err != nil {
		t.Fatal(err)
	}
	converged := l.waitConfig(15*time.Second, "both units at revision 3 with the same hash, peer Synchronized", func(a, b configsync.Status) bool {
		return a.Head == 3 && b.Head == 3 && a.Hash == b.Hash && a.Peers[0].Status == snapshot.StatusSynchronized && b.Sync == "IN_SYNC"
	})
	l.waitHA(5*time.Second, "both units' status showing the same configuration", func(a, b daemon.Status) bool {
		return !a.Config.Differ && !b.Config.Differ && a.Config.PeerRevision == 3 && b.Config.PeerRevision == 3
	})
	t.Logf("the standby converged %v after the HA link returned", converged.Sub(cutEnd).Round(time.Millisecond))
	for _, d := range docs {
		l.waitDoc("fw-b", d.cat, d.name, d.content, time.Second)
	}
	if got := l.pids(); got != pids {
		t.Fatalf("daemon PIDs changed: %v, were %v", got, pids)
	}
	if a, b := l.mustHAStatus("fw-a"), l.mustHAStatus("fw-b"); a.BootID != bootA || b.BootID != bootB {
		t.Fatalf("a daemon restarted: boot ids %d/%d, were %d/%d", a.BootID, b.BootID, bootA, bootB)
	}
	l.waitHA(3*time.Second, "the configuration warning gone", func(a, b daemon.Status) bool {
		return !hasWarning(a, "configuration differs") && !hasWarning(b, "configuration differs")
	})
	// Heartbeats kept flowing on LAN and WAN: no failover at any point.
	l.requireUnmoved()
}

func hasWarning(st daemon.Status, sub string) bool {
	for _, w := range st.Warnings {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

// partitionScript cuts fw-b off from fw-a without touching a link (a link
// down would put the unit in FAULT): heartbeats (UDP 7480, on every path)
// dropped both ways, and, unless heartbeatsOnly, the sync channel (TCP
// 7481) too. The client and the server still reach both units.
func partitionScript(heartbeatsOnly bool) string {
	rules := "udp dport 7480 drop\n"
	if !heartbeatsOnly {
		rules += "tcp dport 7481 drop\ntcp sport 7481 drop\n"
	}
	return fmt.Sprintf(`table inet tandem_partition
delete table inet tandem_partition
table inet tandem_partition {
	chain input {
		type filter hook input priority -300; policy accept;
		%[1]s
	}
	chain output {
		type filter hook output priority -300; policy accept;
		%[1]s
	}
}
`, rules)
}

// conflictIDs parses `tandem config conflicts` into document -> conflict id.
func conflictIDs(t *testing.T, out string) map[string]uint64 {
	t.Helper()
	ids := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		// ID DATE TIME ANCESTOR LOCALREV DOCUMENT AUTHOR MESSAGE...
		if len(f) < 7 {
			t.Fatalf("unexpected conflicts line %q in:\n%s", line, out)
		}
		id, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			t.Fatalf("unexpected conflicts line %q: %v", line, err)
		}
		ids[f[5]] = id
	}
	return ids
}

// TestLabConfigPartitionConflict: every heartbeat path and the sync channel
// are cut; both units become ACTIVE (`tandem status`) and both accept a
// publish of the same document with different content (and fw-a one more).
// The sync channel returns first while the heartbeats stay cut: both units
// still ACTIVE, their config status shows the Collision and nothing is
// exchanged. Then the heartbeats return: the state machine keeps one ACTIVE
// (the later takeover, fw-b, by epoch), fw-a yields, keeps its divergent
// revisions as conflicts (listed, and their content readable byte for
// byte), and adopts fw-b's history: same head and hash on both.
func TestLabConfigPartitionConflict(t *testing.T) {
	requireLabNft(t)
	l := newLab(t, "default")
	waitBothInSync(t, l)
	l.requireUnmoved()
	base := []byte("shared before the partition\n")
	l.publishDoc("fw-a", "system", "motd", base, "base")
	l.waitDoc("fw-b", "system", "motd", base, 5*time.Second)

	l.nftScript("fw-b", partitionScript(false))
	l.waitHA(5*time.Second, "`tandem status` on both units showing ACTIVE, neither hearing the other", func(a, b daemon.Status) bool {
		return a.State == "ACTIVE" && b.State == "ACTIVE" && !a.Peer.Alive && !b.Peer.Alive
	})
	l.waitConfig(5*time.Second, "the config sync channel down on both units", func(a, b configsync.Status) bool {
		return !a.LinkUp && !b.LinkUp
	})

	motdA := []byte("fw-a's message of the day, written during the partition\n")
	motdB := []byte("fw-b's message of the day, written during the partition\n")
	onlyA := []byte("only fw-a has this one\n")
	if rev := l.publishDoc("fw-a", "system", "motd", motdA, "fw-a during the partition"); rev != 2 {
		t.Fatalf("fw-a's publish during the partition: revision %d, want 2", rev)
	}
	if rev := l.publishDoc("fw-a", "users", "operators", onlyA, "fw-a only"); rev != 3 {
		t.Fatalf("fw-a's second publish during the partition: revision %d, want 3", rev)
	}
	if rev := l.publishDoc("fw-b", "system", "motd", motdB, "fw-b during the partition"); rev != 2 {
		t.Fatalf("fw-b's publish during the partition: revision %d, want 2", rev)
	}
	for _, n := range []string{"fw-a", "fw-b"} {
		if st := l.mustConfigStatus(n); st.Peers[0].Status != snapshot.StatusCommunication {
			t.Fatalf("%s's config status during the partition: peer %q, want %q", n, st.Peers[0].Status, snapshot.StatusCommunication)
		}
	}

	// The sync channel returns, the heartbeats do not: two ACTIVE units
	// that see each other only on the sync channel. Configuration sync
	// shows the Collision on both and exchanges nothing.
	l.nftScript("fw-b", partitionScript(true))
	l.waitConfig(10*time.Second, "both units' config status showing the peer ACTIVE: Collision", func(a, b configsync.Status) bool {
		return a.LinkUp && b.LinkUp &&
			a.Peers[0].Role == "ACTIVE" && b.Peers[0].Role == "ACTIVE" &&
			a.Peers[0].Status == snapshot.StatusCollision && b.Peers[0].Status == snapshot.StatusCollision
	})
	if a, b := l.states(); a != "ACTIVE" || b != "ACTIVE" {
		t.Fatalf("with the heartbeats still cut: fw-a %s, fw-b %s; want both ACTIVE", a, b)
	}
	a, b := l.mustConfigStatus("fw-a"), l.mustConfigStatus("fw-b")
	if a.Head != 3 || b.Head != 2 {
		t.Fatalf("during the collision: heads fw-a %d, fw-b %d; want 3 and 2 (nothing exchanged)", a.Head, b.Head)
	}
	if !strings.Contains(strings.Join(a.Errors, "\n"), "collision: the peer fw-b is ACTIVE too") {
		t.Fatalf("fw-a's config status does not report the collision: %q", a.Errors)
	}

	// Heal: the heartbeats return.
	epochA, epochB := l.mustHAStatus("fw-a").Epoch, l.mustHAStatus("fw-b").Epoch
	if epochB <= epochA {
		t.Fatalf("epochs fw-a %d, fw-b %d: fw-b's takeover should have the higher one", epochA, epochB)
	}
	l.sh("fw-b", "nft", "delete", "table", "inet", "tandem_partition")
	l.waitHA(5*time.Second, "exactly one ACTIVE unit", func(a, b daemon.Status) bool {
		return (a.State == "ACTIVE") != (b.State == "ACTIVE") && (a.State == "STANDBY" || b.State == "STANDBY")
	})
	// The lower epoch yielded: fw-a, by the collision rule.
	var yielded bool
	for _, tr := range l.mustHAStatus("fw-a").History {
		if tr.From == "ACTIVE" && tr.To == "STANDBY" && strings.HasPrefix(tr.Reason, "collision:") {
			yielded = true
		}
	}
	if !yielded {
		t.Fatalf("fw-a (epoch %d against %d) did not yield by the collision rule: %+v", epochA, epochB, l.mustHAStatus("fw-a").History)
	}
	for _, tr := range l.mustHAStatus("fw-b").History {
		if strings.HasPrefix(tr.Reason, "collision:") {
			t.Fatalf("fw-b (the higher epoch) yielded too: %+v", tr)
		}
	}

	// fw-a adopted fw-b's history and set its own two revisions aside.
	l.waitConfig(10*time.Second, "both units at revision 2 with the same hash, fw-a holding 2 conflicts", func(a, b configsync.Status) bool {
		return a.Head == 2 && b.Head == 2 && a.Hash == b.Hash && a.Conflicts == 2 && b.Conflicts == 0
	})
	l.waitDoc("fw-a", "system", "motd", motdB, time.Second)
	for _, n := range []string{"fw-a", "fw-b"} {
		if c, err := l.configGet(n, "users", "operators", 0); err == nil {
			t.Fatalf("%s serves users/operators (%q): fw-a's divergent revision must be set aside, not adopted", n, c)
		}
	}
	out, code := l.cli("fw-b", "config", "conflicts")
	if code != 0 || strings.TrimSpace(out) != "no conflicts" {
		t.Fatalf("fw-b (the unit that stayed ACTIVE) conflicts: exit %d: %s", code, out)
	}
	out, code = l.cli("fw-a", "config", "conflicts")
	if code != 0 {
		t.Fatalf("tandem config conflicts on fw-a: exit %d: %s", code, out)
	}
	ids := conflictIDs(t, out)
	if len(ids) != 2 || !strings.Contains(out, "fw-a during the partition") || !strings.Contains(out, "fw-a only") {
		t.Fatalf("fw-a's conflicts should list its 2 divergent revisions with their messages:\n%s", out)
	}
	// Nothing is silently dropped: the divergent content is readable.
	for doc, want := range map[string][]byte{"system/motd": motdA, "users/operators": onlyA} {
		id, ok := ids[doc]
		if !ok {
			t.Fatalf("fw-a's conflicts do not list %s:\n%s", doc, out)
		}
		cmd := cliCommand("config", "conflicts", "--socket", l.socket("fw-a"), "--id", strconv.FormatUint(id, 10))
		got, err := cmd.Output()
		if err != nil || string(got) != string(want) {
			t.Fatalf("tandem config conflicts --id %d on fw-a (%s): %q, %v; want %q", id, doc, got, err, want)
		}
	}
	t.Logf("fw-a's conflicts after the heal:\n%s", out)

	// One ACTIVE for good (fw-a, the primary, may take it back by preempt),
	// and replication goes on from it.
	time.Sleep(3 * time.Second) // past the preempt delay (2s)
	sa, sb := l.states()
	active, standby := "fw-a", "fw-b"
	switch {
	case sa == "ACTIVE" && sb == "STANDBY":
	case sa == "STANDBY" && sb == "ACTIVE":
		active, standby = "fw-b", "fw-a"
	default:
		t.Fatalf("after the heal: fw-a %s, fw-b %s; want one ACTIVE and one STANDBY", sa, sb)
	}
	after := []byte("published after the heal\n")
	l.publishDoc(active, "system", "banner", after, "after the heal")
	l.waitDoc(standby, "system", "banner", after, 5*time.Second)
	if a := l.mustConfigStatus("fw-a"); a.Conflicts != 2 {
		t.Fatalf("fw-a lost its conflicts: %d left", a.Conflicts)
	}
}

// TestLabFailoverRefusedWhenOutOfSync: with the HA link cut the sync
// channel is down and the standby is OUT_OF_SYNC (heartbeats still flow on
// LAN and WAN). `tandem failover` is refused on both units, naming
// OUT_OF_SYNC, and nothing moves: same states, epochs, history, virtual
// IPs. `tandem failover --force` moves ACTIVE to fw-b. The control: with
// the link back and both IN_SYNC, a plain `tandem failover` is accepted.
func TestLabFailoverRefusedWhenOutOfSync(t *testing.T) {
	requireLabNft(t)
	l := newLab(t, "default")
	waitBothInSync(t, l)
	l.requireUnmoved()
	if err := l.SetLink("fw-a", "ha0", false); err != nil {
		t.Fatal(err)
	}
	l.waitHA(5*time.Second, "fw-b OUT_OF_SYNC, as fw-a sees it too", func(a, b daemon.Status) bool {
		return b.Sync == "OUT_OF_SYNC" && a.Peer.Sync == "OUT_OF_SYNC" && a.Peer.Alive && b.Peer.Alive
	})
	before := [2]daemon.Status{l.mustHAStatus("fw-a"), l.mustHAStatus("fw-b")}

	for _, c := range []struct{ node, want string }{
		{"fw-a", "the peer is OUT_OF_SYNC"},  // on the ACTIVE: the target is the peer
		{"fw-b", "this unit is OUT_OF_SYNC"}, // on the STANDBY: the target is itself
	} {
		out, code := l.cli(c.node, "failover")
		if code == 0 || !strings.Contains(out, "failover refused") || !strings.Contains(out, c.want) || !strings.Contains(out, "--force") {
			t.Fatalf("tandem failover on %s with fw-b OUT_OF_SYNC: exit %d: %s\nwant it refused naming %q and --force", c.node, code, out, c.want)
		}
		t.Logf("tandem failover on %s: exit %d: %s", c.node, code, strings.TrimSpace(out))
	}
	// Nothing moved, not even a moment later.
	time.Sleep(time.Second)
	for i, n := range []string{"fw-a", "fw-b"} {
		st := l.mustHAStatus(n)
		if st.State != before[i].State || st.Epoch != before[i].Epoch || len(st.History) != len(before[i].History) {
			why := "the pair moved on its own (no operator reason; machine overloaded?), so the test proves nothing"
			for _, tr := range st.History[min(len(before[i].History), len(st.History)):] {
				if strings.Contains(tr.Reason, "operator") {
					why = "a refused failover moved it"
				}
			}
			t.Fatalf("%s moved after the refused failovers: %s: %s epoch %d history %+v; was %s epoch %d", n, why, st.State, st.Epoch, st.History, before[i].State, before[i].Epoch)
		}
	}
	if got := l.vips("fw-a"); len(got) != len(allVIPs) {
		t.Fatalf("fw-a must still hold every virtual IP after the refused failovers, holds %v", got)
	}
	if got := l.vips("fw-b"); len(got) != 0 {
		t.Fatalf("fw-b holds %v after the refused failovers", got)
	}

	out, code := l.cli("fw-a", "failover", "--force")
	if code != 0 {
		t.Fatalf("tandem failover --force on fw-a: exit %d: %s", code, out)
	}
	l.waitStates(5*time.Second, "STANDBY", "ACTIVE")
	waitFor(t, 3*time.Second, "every virtual IP on fw-b, none on fw-a", func() bool {
		return len(l.vips("fw-b")) == len(allVIPs) && len(l.vips("fw-a")) == 0
	})
	t.Logf("tandem failover --force: %s", strings.TrimSpace(out))

	// Control: the refusal was about OUT_OF_SYNC. With the sync channel
	// back and both IN_SYNC, a plain failover is accepted.
	if err := l.SetLink("fw-a", "ha0", true); err != nil {
		t.Fatal(err)
	}
	waitBothInSync(t, l)
	out, code = l.cli("fw-b", "failover")
	if code != 0 {
		t.Fatalf("control: tandem failover on fw-b with both IN_SYNC: exit %d: %s", code, out)
	}
	l.waitStates(5*time.Second, "ACTIVE", "STANDBY")
}

// requireLabNft skips, as every lab test does, when not root, and when the
// nft tool (the policies category's apply hook) is missing.
func requireLabNft(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: the nft tool (nftables) is not installed; the policies category applies documents with it")
	}
}
