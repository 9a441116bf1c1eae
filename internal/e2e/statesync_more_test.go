package e2e

// More state-sync survival tests on the lab, each with a negative control
// that shows what breaks without state sync (or without the cluster key):
// a server-to-client UDP stream, an active-mode FTP data connection that
// only an expectation lets in, a blocklist element added at run time, and a
// forged sync peer on the HA link.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/ctsync"
	"github.com/tandem-ha/tandem/internal/lab"
	"github.com/tandem-ha/tandem/internal/nftfw"
	"github.com/tandem-ha/tandem/internal/repl"
	"github.com/tandem-ha/tandem/internal/statesync"
	"github.com/tandem-ha/tandem/internal/syncchan"
)

// syncStats is the JSON of `tandem stats --compare -o json`.
type syncStats struct {
	Node  string            `json:"node"`
	State string            `json:"state"`
	Local statesync.Status  `json:"local"`
	Peer  *statesync.Status `json:"peer"`
}

// compareStats runs `tandem stats --compare -o json` against socket.
func compareStats(t *testing.T, socket string) (syncStats, string, error) {
	t.Helper()
	out, code := runCLI(t, "stats", "--compare", "--socket", socket, "-o", "json")
	if code != 0 {
		return syncStats{}, out, fmt.Errorf("tandem stats --compare: exit %d: %s", code, out)
	}
	var s syncStats
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return syncStats{}, out, fmt.Errorf("tandem stats --compare: %w: %s", err, out)
	}
	return s, out, nil
}

// waitStats polls `tandem stats --compare -o json` on node until cond holds;
// on timeout it fails with the last answer.
func (l *testLab) waitStats(node string, timeout time.Duration, what string, cond func(syncStats) bool) syncStats {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, out, err := compareStats(l.t, l.socket(node))
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			if err != nil {
				out = err.Error()
			}
			l.t.Fatalf("timed out after %v waiting for %s; %s's last stats:\n%s", timeout, what, node, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitBothInSync is syncedLab's wait, for labs with extra configuration.
func waitBothInSync(t *testing.T, l *testLab) {
	t.Helper()
	waitFor(t, 10*time.Second, "both units IN_SYNC", func() bool {
		a, errA := status(t, l.socket("fw-a"))
		b, errB := status(t, l.socket("fw-b"))
		return errA == nil && errB == nil && a.Sync == "IN_SYNC" && b.Sync == "IN_SYNC"
	})
}

// sh runs a command in role's namespace and fails the test if it fails.
func (l *testLab) sh(role string, args ...string) string {
	l.t.Helper()
	out, err := l.Exec(context.Background(), role, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return string(out)
}

// conntrackLines lists role's conntrack table (or expectations, "expect")
// with the conntrack tool, and returns the entry lines containing every
// string of match.
func (l *testLab) conntrackLines(role, table string, match ...string) []string {
	l.t.Helper()
	out, err := l.Exec(context.Background(), role, "conntrack", "-L", table)
	if err != nil {
		l.t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "conntrack v") || strings.TrimSpace(line) == "" {
			continue // the tool's summary on stderr
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if ok {
			lines = append(lines, line)
		}
	}
	return lines
}

// requireUnmoved fails the test unless the pair is as it came up: fw-a
// ACTIVE and fw-b STANDBY, with no transition since newLab saw them so. A failover
// the test did not cause (on a machine too loaded for the lab's 150 ms dead
// interval) would make the test's flows and its crash prove nothing.
func (l *testLab) requireUnmoved() {
	l.t.Helper()
	a, errA := status(l.t, l.socket("fw-a"))
	b, errB := status(l.t, l.socket("fw-b"))
	if errA != nil || errB != nil {
		l.t.Fatal(errA, errB)
	}
	if a.State != "ACTIVE" || b.State != "STANDBY" || len(a.History) != l.histA || len(b.History) != l.histB {
		l.t.Fatalf("the pair moved on its own before the test's failure (machine overloaded?), so the test would prove nothing: fw-a %s %+v; fw-b %s %+v",
			a.State, a.History, b.State, b.History)
	}
}

// crashActive powers fw-a off, runs down (if not nil) as soon as fw-a's
// links are down, and waits for fw-b to be ACTIVE. It returns when the
// crash began.
func (l *testLab) crashActive(down func()) time.Time {
	l.t.Helper()
	l.requireUnmoved()
	at := time.Now()
	if err := l.Crash("fw-a"); err != nil {
		l.t.Fatal(err)
	}
	if down != nil {
		down()
	}
	// Generous: the takeover adds the virtual IPs through netlink, which
	// waits behind anything else holding the kernel's locks.
	l.waitStates(30*time.Second, "", "ACTIVE")
	return at
}

// ---------------------------------------------------------------------------
// 1. A UDP stream from the server to the client.

const (
	udpStreamPort = 5300  // the server's
	udpClientPort = 40123 // the client's, fixed: the subscription is its only datagram
	udpInterval   = 10 * time.Millisecond
)

type arrival struct {
	seq uint64
	at  time.Time
}

// udpStream: the client subscribes with one datagram from a fixed port; the
// server then sends a numbered datagram every 10 ms to the address and port
// it came from, which is the WAN virtual IP after the firewall's SNAT.
type udpStream struct {
	mu       sync.Mutex
	peer     net.Addr // the client as the server sees it
	sent     uint64   // datagrams the server sent
	arrivals []arrival
}

func (s *udpStream) counts() (sent uint64, got int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, len(s.arrivals)
}

// firstAfter is the first datagram received whose number is above seq.
func (s *udpStream) firstAfter(seq uint64) (arrival, int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, a := range s.arrivals {
		if a.seq > seq {
			return a, len(s.arrivals) - i, true
		}
	}
	return arrival{}, 0, false
}

func (l *testLab) udpStream() *udpStream {
	t := l.t
	t.Helper()
	var srv, cl net.PacketConn
	if err := l.Do(lab.RoleServer, func() (err error) {
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), udpStreamPort).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	if err := l.Do(lab.RoleClient, func() (err error) {
		cl, err = net.ListenPacket("udp4", netip.AddrPortFrom(lab.ClientAddr.Addr(), udpClientPort).String())
		return
	}); err != nil {
		srv.Close()
		t.Fatal(err)
	}
	s := &udpStream{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { // the server: wait for the subscription, then stream
		buf := make([]byte, 64)
		for {
			n, peer, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "subscribe" {
				s.mu.Lock()
				s.peer = peer
				s.mu.Unlock()
				break
			}
		}
		tick := time.NewTicker(udpInterval)
		defer tick.Stop()
		var msg [8]byte
		for seq := uint64(1); ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s.mu.Lock()
			peer := s.peer
			s.mu.Unlock()
			binary.BigEndian.PutUint64(msg[:], seq)
			_, _ = srv.WriteTo(msg[:], peer)
			s.mu.Lock()
			s.sent = seq
			s.mu.Unlock()
		}
	})
	wg.Go(func() { // the client: record what arrives
		buf := make([]byte, 64)
		for {
			n, _, err := cl.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == 8 {
				s.mu.Lock()
				s.arrivals = append(s.arrivals, arrival{binary.BigEndian.Uint64(buf[:8]), time.Now()})
				s.mu.Unlock()
			}
		}
	})
	t.Cleanup(func() { cancel(); srv.Close(); cl.Close(); wg.Wait() })

	// Subscribe; only until the stream flows (the first datagram may wait
	// for ARP). After that the client never sends again.
	server := &net.UDPAddr{IP: lab.ServerAddr.Addr().AsSlice(), Port: udpStreamPort}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := cl.WriteTo([]byte("subscribe"), server); err != nil {
			t.Fatal(err)
		}
		next := time.Now().Add(time.Second)
		for time.Now().Before(next) {
			if _, got := s.counts(); got > 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if _, got := s.counts(); got > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the UDP stream from the server never reached the client through fw-a")
		}
	}
	s.mu.Lock()
	peer := s.peer.String()
	s.mu.Unlock()
	if want := lab.WANVIP.Addr().String() + ":"; !strings.HasPrefix(peer, want) {
		t.Fatalf("the server sees the client as %s, want the WAN virtual IP %s (SNAT)", peer, lab.WANVIP.Addr())
	}
	waitFor(t, 10*time.Second, "50 datagrams of the stream through fw-a", func() bool { _, got := s.counts(); return got >= 50 })
	t.Logf("the server streams to %s (the WAN virtual IP: SNAT on fw-a)", peer)
	return s
}

// TestStateSyncUDPStreamSurvives: the server streams UDP datagrams to the
// client through the NAT'ed virtual IPs; the client sent one datagram, at
// the start. After a power failure of the ACTIVE, the stream resumes through
// fw-b with state sync: fw-b already holds the conntrack entry with its NAT
// mapping, so it de-NATs the server's datagrams to the client. Without
// state sync it never resumes: on fw-b the server's datagrams are addressed
// to the WAN virtual IP itself with no entry to de-NAT them, so fw-b takes
// them for itself (nothing listens there) and the client gets nothing.
func TestStateSyncUDPStreamSurvives(t *testing.T) {
	t.Run("sync", func(t *testing.T) {
		l := syncedLab(t, true)
		s := l.udpStream()
		clientPort := "dport=" + strconv.Itoa(udpClientPort)
		waitFor(t, 10*time.Second, "fw-b's kernel to hold the replicated UDP entry", func() bool {
			return len(l.conntrackLines("fw-b", "conntrack", "udp", "sport="+strconv.Itoa(udpClientPort), "dst="+lab.WANVIP.Addr().String(), clientPort)) == 1
		})
		t.Logf("fw-b before the crash: %s", l.conntrackLines("fw-b", "conntrack", "udp", clientPort)[0])
		// Datagrams numbered above mark were sent with fw-a's links down:
		// only fw-b can deliver them.
		var mark uint64
		crashed := l.crashActive(func() { mark, _ = s.counts() })
		waitFor(t, 15*time.Second, "the stream to resume through fw-b", func() bool {
			_, _, ok := s.firstAfter(mark)
			return ok
		})
		first, _, _ := s.firstAfter(mark)
		// It keeps flowing: another second of datagrams.
		waitFor(t, 10*time.Second, "a second of the stream through fw-b", func() bool {
			_, n, _ := s.firstAfter(first.seq)
			return n >= 100
		})
		sent, got := s.counts()
		t.Logf("with state sync: the stream resumed %v after the crash (datagram %d; %d datagrams were sent at the crash); %d of %d received in all",
			first.at.Sub(crashed).Round(time.Millisecond), first.seq, mark, got, sent)
		if gap := first.at.Sub(crashed); gap > 5*time.Second {
			t.Errorf("the stream resumed %v after the crash; want within a couple of seconds", gap)
		}
	})
	t.Run("without-sync", func(t *testing.T) {
		l := syncedLab(t, false)
		s := l.udpStream()
		if lines := l.conntrackLines("fw-b", "conntrack", "udp", "dport="+strconv.Itoa(udpClientPort)); len(lines) != 0 {
			t.Fatalf("fw-b holds the flow without state sync: %v", lines)
		}
		var mark uint64
		l.crashActive(func() { mark, _ = s.counts() })
		// Watch with fw-b ACTIVE for 5 s (longer than the stream took to
		// resume with state sync) and at least 200 datagrams (on a starved
		// machine the 10 ms ticker falls behind), at most a minute.
		start, _ := s.counts()
		began := time.Now()
		for {
			if a, _, ok := s.firstAfter(mark); ok {
				t.Fatalf("negative control: datagram %d reached the client through fw-b without state sync — the test would prove nothing", a.seq)
			}
			sent, _ := s.counts()
			if time.Since(began) >= 5*time.Second && sent-start >= 200 {
				break
			}
			if time.Since(began) > time.Minute {
				t.Fatalf("the server sent only %d datagrams in a minute after the takeover; the control proves nothing", sent-start)
			}
			time.Sleep(20 * time.Millisecond)
		}
		sent, got := s.counts()
		t.Logf("without state sync: %d datagrams sent after the takeover, none received (%d received before the crash); fw-b's own entries for them: %v",
			sent-start, got, l.conntrackLines("fw-b", "conntrack", "udp", "sport="+strconv.Itoa(udpStreamPort), "dport="+strconv.Itoa(udpClientPort)))
	})
}

// ---------------------------------------------------------------------------
// 2. An active-mode FTP data connection: only the expectation lets it in.

// ftp is an FTP control connection in active mode (PORT) from the client
// to the server through the firewall's FTP helper and NAT.
type ftp struct {
	ctrl, srv   net.Conn
	ctrlR, srvR *bufio.Reader
	dataLn      *net.TCPListener // the client's data listener
	told        string           // the PORT line the server read
	dataAddr    string           // where the server connects: what it read
}

func ftpLine(r *bufio.Reader, c net.Conn, d time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	s, err := r.ReadString('\n')
	return strings.TrimRight(s, "\r\n"), err
}

func (l *testLab) ftpSession() *ftp {
	t := l.t
	t.Helper()
	var ln net.Listener
	if err := l.Do(lab.RoleServer, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), 21).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f := &ftp{}
	if err := l.Do(lab.RoleClient, func() error {
		dl, err := net.Listen("tcp4", netip.AddrPortFrom(lab.ClientAddr.Addr(), 0).String())
		if err == nil {
			f.dataLn = dl.(*net.TCPListener)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.dataLn.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	if err := l.Do(lab.RoleClient, func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		f.ctrl, err = d.Dial("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), 21).String())
		return
	}); err != nil {
		t.Fatalf("FTP control connection through fw-a: %v", err)
	}
	t.Cleanup(func() { f.ctrl.Close() })
	select {
	case f.srv = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("FTP control connection not accepted")
	}
	t.Cleanup(func() { f.srv.Close() })
	f.ctrlR, f.srvR = bufio.NewReader(f.ctrl), bufio.NewReader(f.srv)
	say := func(c net.Conn, s string) {
		if _, err := c.Write([]byte(s + "\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(r *bufio.Reader, c net.Conn, prefix string) string {
		s, err := ftpLine(r, c, 10*time.Second)
		if err != nil || !strings.HasPrefix(s, prefix) {
			t.Fatalf("FTP: read %q (%v), want %q", s, err, prefix)
		}
		return s
	}
	// A line each way first: the helper parses a command only where an
	// earlier line ended.
	say(f.srv, "220 tandem e2e")
	expect(f.ctrlR, f.ctrl, "220")
	say(f.ctrl, "USER anonymous")
	expect(f.srvR, f.srv, "USER")
	say(f.srv, "331 go on")
	expect(f.ctrlR, f.ctrl, "331")
	a := lab.ClientAddr.Addr().As4()
	port := f.dataLn.Addr().(*net.TCPAddr).Port
	say(f.ctrl, fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], port>>8, port&0xff))
	f.told = expect(f.srvR, f.srv, "PORT ")
	var h [6]int
	parts := strings.Split(strings.TrimPrefix(f.told, "PORT "), ",")
	if len(parts) != 6 {
		t.Fatalf("FTP: malformed PORT line %q", f.told)
	}
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || v > 255 {
			t.Fatalf("FTP: malformed PORT line %q", f.told)
		}
		h[i] = v
	}
	f.dataAddr = fmt.Sprintf("%d.%d.%d.%d:%d", h[0], h[1], h[2], h[3], h[4]<<8|h[5])
	say(f.srv, "200 PORT ok")
	expect(f.ctrlR, f.ctrl, "200")
	return f
}

const ftpPayload = "file contents through the expectation\n"

// transfer: the server opens the data connection to the address and port
// it read in the PORT line and sends the payload; the client must receive
// it. One dial only: an expectation admits one connection, and the SYN's
// retransmissions (same tuple) cover a lost first SYN.
func (f *ftp) transfer(l *testLab, dialTimeout time.Duration) error {
	got := make(chan error, 1)
	go func() {
		_ = f.dataLn.SetDeadline(time.Now().Add(dialTimeout + 5*time.Second))
		c, err := f.dataLn.Accept()
		if err != nil {
			got <- fmt.Errorf("the client accepted no data connection: %w", err)
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err == nil && string(b) != ftpPayload {
			err = fmt.Errorf("the data connection carried %q", b)
		}
		got <- err
	}()
	var dc net.Conn
	err := l.Do(lab.RoleServer, func() (err error) {
		d := net.Dialer{Timeout: dialTimeout}
		dc, err = d.Dial("tcp4", f.dataAddr)
		return
	})
	if err != nil {
		_ = f.dataLn.SetDeadline(time.Now()) // stop the accept
		<-got
		return fmt.Errorf("the server cannot open the data connection to %s: %w", f.dataAddr, err)
	}
	_, werr := dc.Write([]byte(ftpPayload))
	dc.Close()
	if err := <-got; err != nil {
		return errors.Join(err, werr)
	}
	return nil
}

// finish completes the control dialogue after the transfer; through fw-b it
// needs the replicated sequence adjustment of the rewritten PORT line.
func (f *ftp) finish() error {
	if _, err := f.srv.Write([]byte("226 transfer complete\r\n")); err != nil {
		return err
	}
	if s, err := ftpLine(f.ctrlR, f.ctrl, 15*time.Second); err != nil || s != "226 transfer complete" {
		return fmt.Errorf("control connection, server to client: %q %v", s, err)
	}
	if _, err := f.ctrl.Write([]byte("QUIT\r\n")); err != nil {
		return err
	}
	if s, err := ftpLine(f.srvR, f.srv, 15*time.Second); err != nil || s != "QUIT" {
		return fmt.Errorf("control connection, client to server: %q %v", s, err)
	}
	return nil
}

// requireFTPHelper skips the test when fw-a's firewall has no FTP helper
// (nftfw installs the ruleset without it on a kernel lacking
// nf_conntrack_ftp).
func (l *testLab) requireFTPHelper() {
	l.t.Helper()
	nsh, err := l.NsHandle("fw-a")
	if err != nil {
		l.t.Fatal(err)
	}
	defer nsh.Close()
	ok, err := nftfw.HasFTPHelper(nsh)
	if err != nil {
		l.t.Fatal(err)
	}
	if !ok {
		l.t.Skip("skipped: this kernel has no FTP conntrack helper (nf_conntrack_ftp: `modprobe nf_conntrack_ftp nf_nat_ftp` failed or the module is not built), so the lab firewall tracks no FTP expectations")
	}
}

// TestStateSyncFTPExpectationSurvives: an active-mode FTP session through
// the NAT'ed virtual IPs. The client's PORT command makes fw-a's FTP helper
// create an expectation (and its NAT helper rewrite the address to the WAN
// virtual IP); the expectation is replicated to fw-b. The ACTIVE crashes,
// then the server opens the data connection: with state sync it is RELATED
// on fw-b through the replicated expectation, de-NATed to the client, and
// the control connection goes on (with the PORT rewrite's sequence
// adjustment). Without state sync fw-b has no expectation: the SYN to the
// WAN virtual IP is a new connection addressed to fw-b itself, which
// refuses it, and the client never sees a data connection.
func TestStateSyncFTPExpectationSurvives(t *testing.T) {
	// On a modular kernel the helpers may not be loaded yet (the lab's
	// ruleset asks for the ftp helper; the kernel may load it on demand).
	// Built in, or absent, modprobe fails: requireFTPHelper decides.
	if _, err := exec.LookPath("modprobe"); err == nil {
		for _, m := range []string{"nf_conntrack_ftp", "nf_nat_ftp"} {
			if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
				t.Logf("modprobe %s: %v: %s", m, err, strings.TrimSpace(string(out)))
			}
		}
	}
	t.Run("sync", func(t *testing.T) {
		l := syncedLab(t, true)
		l.requireFTPHelper()
		f := l.ftpSession()
		t.Logf("the client sent its LAN address, the server read %q", f.told)
		if !strings.HasPrefix(f.dataAddr, lab.WANVIP.Addr().String()+":") {
			t.Logf("the PORT line was not rewritten to the WAN virtual IP (no nf_nat_ftp?); the server connects to %s", f.dataAddr)
		}
		waitFor(t, 10*time.Second, "the FTP expectation on fw-a", func() bool {
			return len(l.conntrackLines("fw-a", "expect", "helper=ftp")) == 1
		})
		waitFor(t, 10*time.Second, "the FTP expectation replicated into fw-b's kernel", func() bool {
			return len(l.conntrackLines("fw-b", "expect", "helper=ftp")) == 1
		})
		t.Logf("fw-a: %s", l.conntrackLines("fw-a", "expect", "helper=ftp")[0])
		t.Logf("fw-b: %s", l.conntrackLines("fw-b", "expect", "helper=ftp")[0])
		st := l.waitStats("fw-a", 15*time.Second, "`tandem stats --compare` to count the expectation on both units", func(st syncStats) bool {
			return st.Local.Expects == 1 && st.Peer != nil && st.Peer.Expects == 1
		})
		t.Logf("tandem stats --compare -o json on fw-a before the crash: expectations %d on fw-a (%s, %s) and %d on fw-b (%s, %s)",
			st.Local.Expects, st.Local.Role, st.Local.SyncText, st.Peer.Expects, st.Peer.Role, st.Peer.SyncText)

		l.crashActive(nil)
		if err := f.transfer(l, 10*time.Second); err != nil {
			t.Fatalf("with state sync the data connection must come through fw-b: %v", err)
		}
		if err := f.finish(); err != nil {
			t.Fatalf("the FTP control connection after the failover: %v", err)
		}
		t.Logf("with state sync: the server's data connection to %s reached the client through fw-b, and the control connection went on", f.dataAddr)
	})
	t.Run("without-sync", func(t *testing.T) {
		l := syncedLab(t, false)
		l.requireFTPHelper()
		f := l.ftpSession()
		waitFor(t, 10*time.Second, "the FTP expectation on fw-a", func() bool {
			return len(l.conntrackLines("fw-a", "expect", "helper=ftp")) == 1
		})
		if e := l.conntrackLines("fw-b", "expect"); len(e) != 0 {
			t.Fatalf("fw-b holds expectations without state sync: %v", e)
		}
		l.crashActive(nil)
		err := f.transfer(l, 10*time.Second)
		if err == nil {
			t.Fatal("negative control: the data connection came through fw-b without the replicated expectation — the test would prove nothing")
		}
		t.Logf("without state sync: %v", err)
	})
}

// ---------------------------------------------------------------------------
// 3. A blocklist element added on the ACTIVE blocks on the standby.

const (
	blockPort  = 8091
	blockedSet = "inet/tandem_fw/blocklist"
)

// secondClient is a second address of the client, never blocked.
var secondClient = netip.MustParseAddr("172.16.121.11")

// echoServer accepts TCP connections on the server and echoes them.
func (l *testLab) echoServer(port int) {
	l.t.Helper()
	var ln net.Listener
	if err := l.Do(lab.RoleServer, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), uint16(port)).String())
		return
	}); err != nil {
		l.t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn // closed at cleanup: a blocked client's FIN never arrives
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				_, _ = io.Copy(c, c)
			})
		}
	})
	l.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// connectFrom opens a new TCP connection from the client's address src to
// the server's echo port and checks one echo.
func (l *testLab) connectFrom(src netip.Addr, timeout time.Duration) error {
	var c net.Conn
	if err := l.Do(lab.RoleClient, func() (err error) {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err = d.Dial("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), blockPort).String())
		return
	}); err != nil {
		return err
	}
	defer c.Close()
	return echo(c, "ping from "+src.String(), timeout)
}

func echo(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo mismatch: %q", buf)
	}
	return nil
}

// setElem is an element of the blocklist as `nft -j` shows it.
type setElem struct {
	Addr    string
	Timeout int // seconds; 0 = none
	Expires int // seconds left
}

// blocklist lists role's blocklist set.
func (l *testLab) blocklist(role string) []setElem {
	l.t.Helper()
	out := l.sh(role, "nft", "-j", "list", "set", "inet", nftfw.TableName, nftfw.BlocklistSet)
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		l.t.Fatalf("nft -j list set: %v: %s", err, out)
	}
	var elems []setElem
	for _, x := range doc.Nftables {
		if x.Set == nil {
			continue
		}
		for _, raw := range x.Set.Elem {
			// A plain address ("172.16.121.10"), or one with a timeout
			// ({"elem": {"val": ..., "timeout": 3600, "expires": 3599}}).
			var s string
			if json.Unmarshal(raw, &s) == nil {
				elems = append(elems, setElem{Addr: s})
				continue
			}
			var e struct {
				Elem struct {
					Val     string `json:"val"`
					Timeout int    `json:"timeout"`
					Expires int    `json:"expires"`
				} `json:"elem"`
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				l.t.Fatalf("nft -j list set: element %s: %v", raw, err)
			}
			elems = append(elems, setElem{Addr: e.Elem.Val, Timeout: e.Elem.Timeout, Expires: e.Elem.Expires})
		}
	}
	return elems
}

func findElem(elems []setElem, addr string) (setElem, bool) {
	for _, e := range elems {
		if e.Addr == addr {
			return e, true
		}
	}
	return setElem{}, false
}

var blockCounter = regexp.MustCompile(`ip saddr @blocklist counter packets (\d+)`)

// blockDrops is the packet counter of role's blocklist drop rule.
func (l *testLab) blockDrops(role string) int {
	l.t.Helper()
	out := l.sh(role, "nft", "list", "chain", "inet", nftfw.TableName, "forward")
	m := blockCounter.FindStringSubmatch(out)
	if m == nil {
		l.t.Fatalf("no blocklist rule in %s's forward chain:\n%s", role, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestStateSyncBlocklistSurvives: the lab firewall drops everything from the
// addresses in the dynamic set inet tandem_fw blocklist, synchronized with
// sync.nft_sets. The client's address is added on the ACTIVE only, with a
// 1-hour timeout of which 50 minutes are left; it reaches the standby with
// nearly the same remaining time (not a fresh hour). After
// a power failure of the ACTIVE, fw-b drops the client's new connections,
// while a second client address, not in the set, connects through fw-b
// (the lab, the failover and fw-b's forwarding work: only the set blocks).
// Without state sync the element never reaches fw-b and the blocked client
// connects through fw-b after the failover.
func TestStateSyncBlocklistSurvives(t *testing.T) {
	client := lab.ClientAddr.Addr()
	setup := func(t *testing.T, extra string) *testLab {
		l := newLabOpts(t, "default", extra)
		l.sh(lab.RoleClient, "ip", "addr", "add", netip.PrefixFrom(secondClient, lab.ClientAddr.Bits()).String(), "dev", lab.IfHost)
		l.echoServer(blockPort)
		for _, src := range []netip.Addr{client, secondClient} {
			if err := l.connectFrom(src, 5*time.Second); err != nil {
				t.Fatalf("%s cannot reach the server through fw-a before anything is blocked: %v", src, err)
			}
		}
		return l
	}
	// block adds the client on fw-a only and checks fw-a blocks it at
	// once, established connections included.
	block := func(t *testing.T, l *testLab) {
		var est net.Conn
		if err := l.Do(lab.RoleClient, func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: client.AsSlice()}}
			est, err = d.Dial("tcp4", netip.AddrPortFrom(lab.ServerAddr.Addr(), blockPort).String())
			return
		}); err != nil {
			t.Fatal(err)
		}
		defer est.Close()
		if err := echo(est, "before", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		l.sh("fw-a", "nft", "add", "element", "inet", nftfw.TableName, nftfw.BlocklistSet, "{ "+client.String()+" timeout 1h expires 50m }")
		if err := echo(est, "after", 2*time.Second); err == nil {
			t.Fatal("fw-a let an established connection of a blocked address through")
		}
		if err := l.connectFrom(client, time.Second); err == nil {
			t.Fatal("fw-a let a blocked address open a new connection")
		}
		if err := l.connectFrom(secondClient, 5*time.Second); err != nil {
			t.Fatalf("fw-a blocks %s, which is not in the set: %v", secondClient, err)
		}
	}

	t.Run("sync", func(t *testing.T) {
		l := setup(t, "sync: {nft_sets: ["+blockedSet+"]}\n")
		waitBothInSync(t, l)
		block(t, l)
		waitFor(t, 10*time.Second, "the element in fw-b's set", func() bool {
			_, ok := findElem(l.blocklist("fw-b"), client.String())
			return ok
		})
		a, _ := findElem(l.blocklist("fw-a"), client.String())
		b, _ := findElem(l.blocklist("fw-b"), client.String())
		t.Logf("the element on fw-a: timeout %ds, expires in %ds; on fw-b: timeout %ds, expires in %ds", a.Timeout, a.Expires, b.Timeout, b.Expires)
		// Added with 50 minutes left of a 1-hour timeout: fw-b must carry
		// the remaining time, not start the timeout afresh.
		if b.Timeout != 3600 || b.Expires <= 0 || b.Expires > 3000 {
			t.Errorf("the element on fw-b has timeout %ds and expires in %ds; want a timeout of 1h with at most 50m left", b.Timeout, b.Expires)
		}
		if d := math.Abs(float64(a.Expires - b.Expires)); d > 5 {
			t.Errorf("remaining timeouts differ by %.0fs (fw-a %ds, fw-b %ds); want nearly the same", d, a.Expires, b.Expires)
		}
		st := l.waitStats("fw-a", 15*time.Second, "`tandem stats --compare` to count the element on both units", func(st syncStats) bool {
			return st.Local.SetElements[blockedSet] == 1 && st.Peer != nil && st.Peer.SetElements[blockedSet] == 1
		})
		t.Logf("tandem stats --compare: %s has %d element(s) on fw-a and %d on fw-b", blockedSet, st.Local.SetElements[blockedSet], st.Peer.SetElements[blockedSet])

		drops := l.blockDrops("fw-b")
		l.crashActive(nil)
		// The address that is not in the set gets through fw-b: the
		// failover worked (retried while the neighbours learn fw-b).
		waitFor(t, 15*time.Second, secondClient.String()+" through fw-b", func() bool {
			return l.connectFrom(secondClient, 2*time.Second) == nil
		})
		for i := range 3 {
			if err := l.connectFrom(client, 3*time.Second); err == nil {
				t.Fatalf("attempt %d: the blocked client opened a new connection through fw-b", i+1)
			}
		}
		after := l.blockDrops("fw-b")
		if after <= drops {
			t.Fatalf("fw-b's blocklist rule dropped nothing (%d before, %d after): the client failed for another reason", drops, after)
		}
		if err := l.connectFrom(secondClient, 5*time.Second); err != nil {
			t.Fatalf("%s through fw-b after the blocked attempts: %v", secondClient, err)
		}
		t.Logf("with state sync: fw-b (ACTIVE) dropped %d packets of the blocked client's new connections; %s connects", after-drops, secondClient)
	})
	t.Run("without-sync", func(t *testing.T) {
		l := setup(t, "sync: {enabled: false}\n")
		block(t, l)
		if _, ok := findElem(l.blocklist("fw-b"), client.String()); ok {
			t.Fatal("the element is on fw-b without state sync")
		}
		l.crashActive(nil)
		waitFor(t, 15*time.Second, secondClient.String()+" through fw-b", func() bool {
			return l.connectFrom(secondClient, 2*time.Second) == nil
		})
		if err := l.connectFrom(client, 5*time.Second); err != nil {
			t.Fatalf("negative control: the client, blocked on fw-a only, cannot connect through fw-b without state sync either (%v) — the test would prove nothing", err)
		}
		t.Logf("without state sync: fw-b's blocklist is empty and the client blocked on fw-a connects through fw-b")
	})
}

// ---------------------------------------------------------------------------
// 4. A forged sync peer on the HA link.

// acceptAnything is a forger that ignores fw-a's proof and answers with one
// made with the wrong key: it gets as far as a peer without the key can,
// so that fw-a itself must check the proof.
type acceptAnything struct{ syncchan.Authenticator }

func (acceptAnything) Verify(*tls.ConnectionState, uint8, []byte) error { return nil }

// impostor is a syncchan secondary on fw-b's sync address, in fw-b's
// namespace, that speaks the replication protocol as a standby does (a
// repl.Sink over a map): it asks the ACTIVE for its tables. stop ends it.
type impostor struct {
	link   *syncchan.Link
	mu     sync.Mutex
	events []syncchan.Event
	store  *repl.MapStore // what it was fed
	cancel context.CancelFunc
	done   chan error
}

// fwB is fw-b's configuration and key, as its daemon reads them.
func (l *testLab) fwB() (*config.Config, []byte) {
	l.t.Helper()
	cfg, key, err := config.Load(filepath.Join(l.Dir(), "fw-b.yaml"))
	if err != nil {
		l.t.Fatal(err)
	}
	return cfg, key
}

// impostor takes fw-b's place on the sync channel: fw-b's cluster id, role
// (the secondary: it listens) and sync address, and auth instead of the key.
func (l *testLab) impostor(auth syncchan.Authenticator) *impostor {
	l.t.Helper()
	cfg, _ := l.fwB()
	if cfg.Node.Role != config.RoleSecondary {
		l.t.Fatalf("fw-b is the %s; the impostor must listen where the primary dials", cfg.Node.Role)
	}
	port := uint16(cfg.Sync.Port)
	link, err := syncchan.NewLink(syncchan.Config{Auth: auth, ClusterID: uint8(cfg.Cluster.ID), Role: syncchan.RoleSecondary,
		Local: netip.AddrPortFrom(cfg.LocalHAAddress().Addr(), port), Peer: netip.AddrPortFrom(cfg.PeerHAAddress().Addr(), port)})
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	im := &impostor{link: link, store: repl.NewMapStore(), cancel: cancel, done: make(chan error, 1)}
	// Run listens from its own goroutine: run it on the namespace's thread.
	go func() { im.done <- l.Do(lab.RoleFwB, func() error { return link.Run(ctx) }) }()
	go im.loop()
	l.t.Cleanup(im.stop)
	return im
}

// loop records the link's events and runs the replication sink until the
// link's events end.
func (im *impostor) loop() {
	var b [8]byte
	_, _ = rand.Read(b[:])
	sink := repl.NewSink(repl.SinkConfig{SinkID: binary.BigEndian.Uint64(b[:]) | 1}, im.store)
	var session uint64
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-im.link.Events():
			if !ok {
				return
			}
			im.mu.Lock()
			im.events = append(im.events, ev)
			im.mu.Unlock()
			now := time.Now()
			switch ev.Kind {
			case syncchan.Up:
				session = ev.Session
				sink.Connected(now)
			case syncchan.Down:
				session = 0
				sink.Disconnected(now)
			case syncchan.Frame:
				if len(ev.Frame) > 0 && ev.Frame[0] == statesync.KindRepl {
					im.mu.Lock() // the store is read by the test
					_ = sink.Handle(now, ev.Frame[1:])
					im.mu.Unlock()
				}
			}
		case <-tick.C:
		}
		for _, f := range sink.Poll(time.Now(), nil) {
			if session != 0 {
				_ = im.link.SendOn(session, append([]byte{statesync.KindRepl}, f...))
			}
		}
	}
}

// fed is how many entries of each table the impostor was fed.
func (im *impostor) fed() map[string]int {
	im.mu.Lock()
	defer im.mu.Unlock()
	m := map[string]int{}
	for _, t := range im.store.Tables() {
		m[t] = im.store.Len(t)
	}
	return m
}

func (im *impostor) stop() {
	if im.cancel == nil {
		return
	}
	im.cancel()
	<-im.done
	im.cancel = nil
}

// count is the number of events of kind k so far.
func (im *impostor) count(k syncchan.Kind) int {
	im.mu.Lock()
	defer im.mu.Unlock()
	n := 0
	for _, ev := range im.events {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

// frameKinds counts the frames received by their first byte, the statesync
// frame kind ("R" replication, "S" stats).
func (im *impostor) frameKinds() map[string]int {
	im.mu.Lock()
	defer im.mu.Unlock()
	m := map[string]int{}
	for _, ev := range im.events {
		if ev.Kind == syncchan.Frame && len(ev.Frame) > 0 {
			m[string(rune(ev.Frame[0]))]++
		}
	}
	return m
}

func (im *impostor) first(k syncchan.Kind) syncchan.Event {
	im.mu.Lock()
	defer im.mu.Unlock()
	for _, ev := range im.events {
		if ev.Kind == k {
			return ev
		}
	}
	return syncchan.Event{}
}

// logSince is what fw-a logged after offset.
func (l *testLab) logSince(node string, offset int) string {
	b, _ := os.ReadFile(filepath.Join(l.Dir(), node+".log"))
	if offset > len(b) {
		return ""
	}
	return string(b[offset:])
}

func (l *testLab) logSize(node string) int {
	b, _ := os.ReadFile(filepath.Join(l.Dir(), node+".log"))
	return len(b)
}

// TestStateSyncForgedPeerGetsNothing: the standby's daemon is stopped and an
// impostor without the cluster key takes its place on the HA link: it
// listens on fw-b's sync address, where the primary fw-a dials. Two
// forgers: one with a wrong key (it rejects fw-a's proof), one that accepts
// any proof and answers with a wrong-key proof (fw-a must reject it). Each
// gets no session and no frame; fw-a reports the authentication failure
// (its log, `tandem stats`' errors), never marks the link up, stays ACTIVE
// with the same epoch, and its connections are untouched. fw-a itself
// listens on nothing: a forged primary has nowhere to dial. The negative
// control: the same impostor with the cluster key does get a session and
// fw-a's state frames, so the setup would have let a peer in.
func TestStateSyncForgedPeerGetsNothing(t *testing.T) {
	parent := t
	l := syncedLab(t, true)
	const conns = 20
	ss, _ := l.streams(conns)
	l.waitStats("fw-a", 30*time.Second, "fw-a to publish the streams' connections", func(st syncStats) bool {
		return st.Local.Connections >= conns
	})
	l.requireUnmoved()
	if err := l.KillDaemon("fw-b", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	l.waitStates(5*time.Second, "ACTIVE", "stopped")
	l.waitStats("fw-a", 15*time.Second, "fw-a's sync link down and OUT_OF_SYNC", func(st syncStats) bool {
		return !st.Local.LinkUp && st.Local.SyncText == "OUT_OF_SYNC"
	})
	before, err := status(t, l.socket("fw-a"))
	if err != nil {
		t.Fatal(err)
	}
	statsBefore, _, err := compareStats(t, l.socket("fw-a"))
	if err != nil {
		t.Fatal(err)
	}
	ctBefore := len(l.conntrackLines("fw-a", "conntrack", "dport="+strconv.Itoa(streamPort)))

	// fw-a, the primary, has no sync listener: there is nothing to dial.
	cfgB, key := l.fwB()
	fwA := netip.AddrPortFrom(cfgB.PeerHAAddress().Addr(), uint16(cfgB.Sync.Port))
	if err := l.Do(lab.RoleFwB, func() error {
		c, err := net.DialTimeout("tcp4", fwA.String(), 2*time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("fw-a accepted a TCP connection on its sync port %s", fwA)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial fw-a's sync port %s: %v, want connection refused", fwA, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	wrongAuth, err := syncchan.NewKeyAuthenticator(wrong)
	if err != nil {
		t.Fatal(err)
	}
	forgers := []struct {
		name string
		auth syncchan.Authenticator
		// what fw-a logs: it was rejected, or it rejected the forger
		logs string
	}{
		{"wrong-key", wrongAuth, "the peer rejected this unit's proof"},
		{"accepts-any-proof", acceptAnything{wrongAuth}, "the peer's proof was rejected"},
	}
	for _, fg := range forgers {
		t.Run(fg.name, func(t *testing.T) {
			l.t = t
			defer func() { l.t = parent }()
			off := l.logSize("fw-a")
			im := l.impostor(fg.auth)
			// fw-a redials with a backoff of up to 1s: a few attempts.
			waitFor(t, 30*time.Second, "fw-a to fail authentication with the impostor 3 times", func() bool {
				return im.count(syncchan.AuthFailed) >= 3 && strings.Count(l.logSince("fw-a", off), fg.logs) >= 1
			})
			st, _, err := compareStats(t, l.socket("fw-a"))
			if err != nil {
				t.Fatal(err)
			}
			im.stop()
			ls := im.link.Stats()
			t.Logf("impostor: %d auth failures (%v), %d sessions, %d frames in", ls.AuthFailures, im.first(syncchan.AuthFailed).Err, ls.Connects, ls.FramesIn)
			if n, f := im.count(syncchan.Up), im.count(syncchan.Frame); n != 0 || f != 0 || ls.Connects != 0 || ls.FramesIn != 0 || ls.BytesIn != 0 || len(im.fed()) != 0 {
				t.Fatalf("the impostor got %d sessions, %d frames (%d bytes) and tables %v: fw-a fed a peer without the key", n, f, ls.BytesIn, im.fed())
			}
			log := l.logSince("fw-a", off)
			for _, want := range []string{"sync: authentication failed; connection refused", "state sync: peer refused", "kind=AuthFailed", fg.logs} {
				if !strings.Contains(log, want) {
					t.Errorf("fw-a's log lacks %q:\n%s", want, tail(log, 20))
				}
			}
			if strings.Contains(log, "sync: connection up") {
				t.Errorf("fw-a brought the sync connection up with the impostor:\n%s", tail(log, 20))
			}
			if st.Local.LinkUp || st.Local.SyncText != "OUT_OF_SYNC" {
				t.Errorf("fw-a's stats: link up %v, sync %s; want the link down and OUT_OF_SYNC", st.Local.LinkUp, st.Local.SyncText)
			}
			found := false
			for _, e := range st.Local.Errors {
				found = found || strings.Contains(e, "AuthFailed from "+cfgB.LocalHAAddress().Addr().String())
			}
			if !found {
				t.Errorf("`tandem stats` on fw-a lists no AuthFailed error for the impostor: %q", st.Local.Errors)
			}
			t.Logf("fw-a logged: %s", firstLine(log, fg.logs))
		})
	}

	// fw-a is untouched: same state, epoch and history, same connections,
	// all still flowing.
	after, err := status(t, l.socket("fw-a"))
	if err != nil {
		t.Fatal(err)
	}
	if after.State != "ACTIVE" || after.Epoch != before.Epoch || len(after.History) != len(before.History) {
		t.Fatalf("the impostors moved fw-a: %s epoch %d (was %d), %d transitions (were %d)", after.State, after.Epoch, before.Epoch, len(after.History), len(before.History))
	}
	statsAfter, _, err := compareStats(t, l.socket("fw-a"))
	if err != nil {
		t.Fatal(err)
	}
	if statsAfter.Local.Connections != statsBefore.Local.Connections || statsAfter.Local.Role != "source" {
		t.Errorf("fw-a's replicated table changed: %d connections (were %d), role %s", statsAfter.Local.Connections, statsBefore.Local.Connections, statsAfter.Local.Role)
	}
	if n := len(l.conntrackLines("fw-a", "conntrack", "dport="+strconv.Itoa(streamPort))); n != ctBefore {
		t.Errorf("fw-a's kernel has %d entries of the streams, had %d", n, ctBefore)
	}
	since := time.Now()
	waitFor(t, 10*time.Second, "every stream to progress through fw-a", func() bool {
		ok, _ := ss.Progressed(since)
		return ok == conns
	})

	// Negative control: with the cluster key (as fw-b's daemon reads it)
	// the same impostor is let in and fed fw-a's state.
	t.Run("with-the-key", func(t *testing.T) {
		l.t = t
		defer func() { l.t = parent }()
		auth, err := syncchan.NewKeyAuthenticator(key)
		if err != nil {
			t.Fatal(err)
		}
		im := l.impostor(auth)
		waitFor(t, 30*time.Second, "fw-a's connection table fed to the impostor", func() bool {
			return im.count(syncchan.Up) >= 1 && im.fed()[ctsync.TableConntrack] >= conns
		})
		im.stop()
		ls := im.link.Stats()
		t.Logf("negative control: with the key the impostor got %d session(s), %d frames (%d bytes; by kind %v) and fw-a's tables: %v",
			ls.Connects, ls.FramesIn, ls.BytesIn, im.frameKinds(), im.fed())
	})
}

func firstLine(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}
