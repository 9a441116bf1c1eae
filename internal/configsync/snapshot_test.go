package configsync

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/ha"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

func init() {
	// Many small frames and chunks: a test database of a few hundred KB
	// travels in dozens of frames.
	snapFrameData = 16 << 10
	snapChunkSize = 32 << 10
}

// openSnap opens a Service with fast snapshots.
func openSnap(t *testing.T, node string, interval time.Duration, hooks map[string]configstore.Hook) *Service {
	t.Helper()
	s, err := OpenWith(Options{Path: filepath.Join(t.TempDir(), "config.db"), Node: node, Hooks: hooks, HA: true, NoSync: true,
		SnapshotInterval: interval, SnapshotDebounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func snapPair(t *testing.T, interval time.Duration) (a, b *Service) {
	a = openSnap(t, "fw-a", interval, nil)
	b = openSnap(t, "fw-b", 0, nil)
	a.SetActive(true)
	return a, b
}

// connectTap is connect with a tap on every frame (nil: none): it may
// change a frame (return it) or drop it (return nil), and cut the link.
func connectTap(a, b *Service, tap func(l *memLink, to *Service, f []byte) []byte) *memLink {
	l := &memLink{up: true}
	var toA, toB func(...[]byte) error
	mk := func(dst *Service, back *func(...[]byte) error) func(...[]byte) error {
		return func(fs ...[]byte) error {
			for _, f := range fs {
				if !l.isUp() {
					return errors.New("not connected")
				}
				f = append([]byte(nil), f...)
				if tap != nil {
					if f = tap(l, dst, f); f == nil {
						continue
					}
				}
				deliver := func() { dst.Frame(f, *back) }
				l.mu.Lock()
				if !l.ready {
					l.held = append(l.held, deliver)
					l.mu.Unlock()
					continue
				}
				l.mu.Unlock()
				deliver()
			}
			return nil
		}
	}
	toB = mk(b, &toA)
	toA = mk(a, &toB)
	a.Up(toB)
	b.Up(toA)
	l.mu.Lock()
	held := l.held
	l.ready, l.held = true, nil
	for _, f := range held {
		f()
	}
	l.mu.Unlock()
	return l
}

func isData(f []byte) bool { return len(f) > 0 && f[0] == snapDataTag }

// randomDoc is n bytes that compress a little.
func randomDoc(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = "abcdefghij\n0123456789"[r.IntN(21)]
	}
	return b
}

// fill publishes n documents of size bytes on s.
func fill(t *testing.T, s *Service, n, size int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	cats := configstore.Categories()
	for i := range n {
		publish(t, s, cats[i%len(cats)], fmt.Sprintf("doc%d", i), randomDoc(r, size))
	}
}

func peer(s *Service, active bool) PeerView { return s.Status(active).Peers[0] }

// snapshotsOK waits until s reports at least n snapshots installed and the
// last one succeeded.
func snapshotsOK(t *testing.T, s *Service, active bool, n uint64) PeerView {
	t.Helper()
	var p PeerView
	waitFor(t, fmt.Sprintf("%s to report %d snapshot(s) installed", s.node, n), func() bool {
		p = peer(s, active)
		return p.Snapshots >= n && p.LastSnapshot != nil && p.LastSnapshot.OK && !p.SnapshotInFlight
	})
	return p
}

func tempFiles(t *testing.T, s *Service) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(s.path), snapshot.TempPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dump is everything a store holds that a snapshot replicates, except the
// audit log: documents with their contents, the history, the heads.
func dump(t *testing.T, s *Service) string {
	t.Helper()
	d, err := dumpErr(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tryDump is dump for a store that an install may be replacing.
func tryDump(s *Service) (string, bool) {
	d, err := dumpErr(s)
	return d, err == nil
}

func dumpErr(s *Service) (string, error) {
	st := s.Store()
	var b strings.Builder
	rev, hash := st.Head()
	chain, _ := st.HashAt(rev)
	fmt.Fprintf(&b, "head %d %x %x\n", rev, hash, chain)
	docs, err := st.List()
	if err != nil {
		return "", err
	}
	for _, d := range docs {
		c, _, err := st.Get(d.Category, d.Name, 0)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "doc %s/%s %+v %q\n", d.Category, d.Name, d.Revision, c)
	}
	hist, err := st.History(0)
	if err != nil {
		return "", err
	}
	for _, r := range hist {
		fmt.Fprintf(&b, "rev %+v\n", r)
	}
	return b.String(), nil
}

func audits(t *testing.T, s *Service, action string) []configstore.AuditRecord {
	t.Helper()
	all, err := s.Store().Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	var out []configstore.AuditRecord
	for _, a := range all {
		if a.Action == action {
			out = append(out, a)
		}
	}
	return out
}

// TestSnapshotAfterPublish: a publish makes the ACTIVE send a snapshot,
// which the standby installs: documents and history identical, the
// ACTIVE's audit log with it, nothing left in either directory, both
// sides showing the snapshot in config.status.
func TestSnapshotAfterPublish(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 30, 10<<10, 1)
	connect(a, b)
	snapshotsOK(t, a, true, 1)

	before := peer(a, true).Snapshots
	publish(t, a, "system", "dns", []byte("after the first snapshot\x00\xff"))
	pa := snapshotsOK(t, a, true, before+1)
	pb := snapshotsOK(t, b, false, 1)
	waitFor(t, "fw-a to show fw-b Synchronized", func() bool {
		pa = peer(a, true)
		return pa.Status == snapshot.StatusSynchronized && pa.Peer == "fw-b" && pa.LastSync != nil
	})
	if s := pa.LastSnapshot; s.ID == "" || s.Size == 0 || s.Bytes == 0 || s.DurationMs <= 0 {
		t.Fatalf("fw-a's last snapshot = %+v", s)
	}
	if pb.LastSnapshot.Head == 0 {
		t.Fatalf("fw-b's last snapshot = %+v", pb.LastSnapshot)
	}
	waitFor(t, "the same head on both units", func() bool { return sameHead(a, b) })
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a after the snapshot:\nfw-a:\n%s\nfw-b:\n%s", da, db)
	}
	// The ACTIVE's audit log came with the database (fw-b published
	// nothing itself), and the restore is recorded.
	if pubs := audits(t, b, configstore.AuditPublish); len(pubs) != 31 || pubs[0].Origin != "fw-a" {
		t.Fatalf("fw-b's audit log has %d publish records, want fw-a's 31", len(pubs))
	}
	if rs := audits(t, b, configstore.AuditRestore); len(rs) == 0 || rs[0].Origin != "fw-a" || !strings.Contains(rs[0].Message, "kept 0 local conflict(s)") {
		t.Fatalf("fw-b's restore records = %+v", rs)
	}
	if ta, tb := tempFiles(t, a), tempFiles(t, b); len(ta)+len(tb) > 0 {
		t.Fatalf("snapshot files left behind: %v %v", ta, tb)
	}
	// The standby is read-only after the install, and still answers.
	if _, err := b.Handle("config.publish", json.RawMessage(`{"category":"system","name":"x","content":"y","author":"t"}`), true, "", ""); !errors.Is(err, ErrReadOnlyStandby) {
		t.Fatalf("publish on fw-b after the install: %v", err)
	}
	if c, err := get(b, "system", "dns"); err != nil || string(c) != "after the first snapshot\x00\xff" {
		t.Fatalf("fw-b system/dns = %q, %v", c, err)
	}
}

// TestSnapshotCoalesced: a burst of publishes during a transfer costs one
// more snapshot, not one each.
func TestSnapshotCoalesced(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 5, 50<<10, 2)
	connect(a, b)
	snapshotsOK(t, a, true, 1)
	n0 := peer(a, true).Snapshots
	for i := range 20 {
		publish(t, a, "network", "routes", fmt.Appendf(nil, "burst %d", i))
	}
	snapshotsOK(t, a, true, n0+1)
	time.Sleep(200 * time.Millisecond)
	p := snapshotsOK(t, a, true, n0+1)
	if p.Snapshots > n0+10 {
		t.Fatalf("20 publishes cost %d snapshots, want them coalesced", p.Snapshots-n0)
	}
	waitFor(t, "the same head on both units", func() bool { return sameHead(a, b) })
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a:\n%s\n%s", da, db)
	}
}

// TestSnapshotPeriodic: with snapshot_interval set, snapshots go out
// without any publish.
func TestSnapshotPeriodic(t *testing.T) {
	a, b := snapPair(t, 100*time.Millisecond)
	fill(t, a, 3, 1<<10, 3)
	connect(a, b)
	snapshotsOK(t, a, true, 1)
	head, _ := a.Head()
	snapshotsOK(t, a, true, 4)
	snapshotsOK(t, b, false, 4)
	if now, _ := a.Head(); now != head {
		t.Fatalf("fw-a's head moved from %d to %d without a publish", head, now)
	}
	waitFor(t, "fw-a to show fw-b Synchronized", func() bool { return peer(a, true).Status == snapshot.StatusSynchronized })
}

// TestSnapshotCorruptChunkRejected: a flipped byte in the stream is
// caught; the standby keeps its database as it was, removes the temp
// file, and says why; the ACTIVE shows the failure; the next clean
// snapshot installs.
func TestSnapshotCorruptChunkRejected(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 10, 20<<10, 4)
	var corrupt atomic.Bool
	corrupt.Store(true)
	connectTap(a, b, func(_ *memLink, to *Service, f []byte) []byte {
		if to == b && isData(f) && corrupt.Load() && len(f) > snapDataHdr+200 {
			f[len(f)-7] ^= 0x20
		}
		return f
	})
	waitFor(t, "fw-a to see the snapshot rejected", func() bool {
		p := peer(a, true)
		return p.LastSnapshot != nil && !p.LastSnapshot.OK && strings.Contains(p.LastSnapshot.Error, "corrupt")
	})
	if p := peer(a, true); p.Status != snapshot.StatusNotSynced || !strings.Contains(p.LastError, "corrupt") {
		t.Fatalf("fw-a's view of fw-b after a corrupt snapshot = %+v", p)
	}
	waitFor(t, "fw-b's revisions", func() bool { return sameHead(a, b) })
	pb := peer(b, false)
	if pb.LastSnapshot == nil || pb.LastSnapshot.OK || pb.Snapshots != 0 {
		t.Fatalf("fw-b's last snapshot = %+v", pb)
	}
	// fw-b's database is the one the revisions built: its own audit log,
	// no restore.
	if rs := audits(t, b, configstore.AuditRestore); len(rs) != 0 {
		t.Fatalf("fw-b installed a corrupt snapshot: %+v", rs)
	}
	if reps := audits(t, b, configstore.AuditReplicate); len(reps) != 10 {
		t.Fatalf("fw-b's audit log has %d replicate records, want its own 10", len(reps))
	}
	if tb := tempFiles(t, b); len(tb) > 0 {
		t.Fatalf("temp files left on fw-b: %v", tb)
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a:\n%s\n%s", da, db)
	}

	corrupt.Store(false)
	publish(t, a, "system", "ntp", []byte("pool.ntp.org"))
	snapshotsOK(t, a, true, 1)
	waitFor(t, "fw-a to show fw-b Synchronized after a clean snapshot", func() bool {
		return peer(a, true).Status == snapshot.StatusSynchronized
	})
	if rs := audits(t, b, configstore.AuditRestore); len(rs) != 1 {
		t.Fatalf("fw-b's restore records = %+v", rs)
	}
	// The database is still a valid store after all this.
	reopenCheck(t, b)
}

// reopenCheck closes s and opens its file as a store: it must open, and
// bbolt's consistency check must pass.
func reopenCheck(t *testing.T, s *Service) {
	t.Helper()
	want := dump(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := configstore.Open(s.path, configstore.Options{})
	if err != nil {
		t.Fatalf("%s's database does not open: %v", s.node, err)
	}
	defer st.Close()
	if err := checkDB(st); err != nil {
		t.Fatalf("%s's database: %v", s.node, err)
	}
	r := &Service{path: s.path, node: s.node}
	r.store.p.Store(st)
	if got := dump(t, r); got != want {
		t.Fatalf("%s's database reopened differs:\n%s\nwant\n%s", s.node, got, want)
	}
}

// TestSnapshotConnectionDropMidTransfer: the channel goes down halfway
// through a transfer; the standby drops the partial file and keeps its
// database; after the reconnection the next transfer succeeds.
func TestSnapshotConnectionDropMidTransfer(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 10, 50<<10, 5)
	var frames atomic.Int32
	var cutOnce sync.Once
	cut := make(chan struct{})
	connectTap(a, b, func(l *memLink, to *Service, f []byte) []byte {
		if to == b && isData(f) && frames.Add(1) == 10 {
			cutOnce.Do(func() { l.cut(a, b); close(cut) })
			return nil
		}
		return f
	})
	<-cut
	waitFor(t, "both sides to give the transfer up", func() bool {
		pa, pb := peer(a, true), peer(b, false)
		return pa.LastSnapshot != nil && !pa.LastSnapshot.OK && !pa.SnapshotInFlight &&
			pb.LastSnapshot != nil && !pb.LastSnapshot.OK && !pb.SnapshotInFlight
	})
	if p := peer(b, false); !strings.Contains(p.LastSnapshot.Error, "abandoned") || p.Snapshots != 0 {
		t.Fatalf("fw-b's view = %+v", p.LastSnapshot)
	}
	if tb := tempFiles(t, b); len(tb) > 0 {
		t.Fatalf("temp files left on fw-b: %v", tb)
	}
	// fw-b's database is intact: whatever revisions it got, a prefix of
	// fw-a's history, readable.
	head, _ := b.Head()
	mine, _ := b.Store().HashAt(head)
	theirs, _ := a.Store().HashAt(head)
	if mine != theirs {
		t.Fatalf("fw-b's history at %d differs from fw-a's", head)
	}
	if _, err := b.Handle("config.list", nil, false, "", ""); err != nil {
		t.Fatal(err)
	}

	connect(a, b)
	snapshotsOK(t, a, true, 1)
	snapshotsOK(t, b, false, 1)
	waitFor(t, "the same head on both units", func() bool { return sameHead(a, b) })
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a:\n%s\n%s", da, db)
	}
	if ta, tb := tempFiles(t, a), tempFiles(t, b); len(ta)+len(tb) > 0 {
		t.Fatalf("snapshot files left behind: %v %v", ta, tb)
	}
	reopenCheck(t, b)
}

// TestSnapshotKeepsConflicts: the revisions a standby set aside after a
// partition survive every snapshot install, contents included (they never
// existed on the ACTIVE).
func TestSnapshotKeepsConflicts(t *testing.T) {
	a, b := snapPair(t, 0)
	l := connect(a, b)
	publish(t, a, "system", "dns", []byte("shared"))
	waitFor(t, "the first revision on fw-b", func() bool { return sameHead(a, b) })
	l.cut(a, b)
	b.SetActive(true)
	publish(t, a, "system", "dns", []byte("a's change"))
	publish(t, b, "system", "dns", []byte("b's change"))
	publish(t, b, "vpn", "tunnels", []byte("b's tunnel\x00"))
	b.SetActive(false)
	n := peer(b, false).Snapshots
	connect(a, b)
	waitFor(t, "fw-b to converge to fw-a's head", func() bool { return sameHead(a, b) })
	cs0, err := b.Store().Conflicts()
	if err != nil || len(cs0) != 2 {
		t.Fatalf("fw-b conflicts = %+v, %v", cs0, err)
	}
	for range 2 {
		publish(t, a, "ips", "rules", fmt.Appendf(nil, "%d", n))
		n++
		snapshotsOK(t, b, false, n)
	}
	cs, err := b.Store().Conflicts()
	if err != nil || !slices.EqualFunc(cs, cs0, func(x, y configstore.Conflict) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
		t.Fatalf("fw-b conflicts after the installs = %+v, %v; want %+v", cs, err, cs0)
	}
	for i, want := range []string{"b's change", "b's tunnel\x00"} {
		c, err := b.Store().ConflictContent(cs[i].ID)
		if err != nil || string(c) != want {
			t.Fatalf("conflict %d content = %q, %v; want %q", cs[i].ID, c, err, want)
		}
	}
	if v, _ := a.Handle("config.conflicts", nil, true, "", ""); len(v.([]ConflictView)) != 0 {
		t.Fatalf("fw-a conflicts = %+v, want none", v)
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a:\n%s\n%s", da, db)
	}
}

// takeSnapshot takes a snapshot of s's database into memory.
func takeSnapshot(t *testing.T, s *Service) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	if _, err := snapshot.Take(s.Store().DB(), &buf, snapshot.Options{}); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func stage(t *testing.T, s *Service, stream *bytes.Buffer) *snapshot.Staged {
	t.Helper()
	st, err := snapshot.Stage(stream, filepath.Dir(s.path), snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSnapshotSetsDivergedHistoryAside: a snapshot that reaches a standby
// whose history diverged (before the revision stream reconciled it) first
// sets the local revisions aside as conflicts, then installs.
func TestSnapshotSetsDivergedHistoryAside(t *testing.T) {
	a, b := snapPair(t, 0)
	publish(t, a, "system", "dns", []byte("a's"))
	b.SetActive(true)
	publish(t, b, "system", "dns", []byte("b's"))
	publish(t, b, "users", "admins", []byte("bob"))
	publish(t, b, "users", "admins", []byte("bob, eve"))
	b.SetActive(false)
	_, stale, err := b.install(stage(t, b, takeSnapshot(t, a)), "fw-a")
	if err != nil || stale {
		t.Fatalf("install: stale %v, %v", stale, err)
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-b differs from fw-a:\n%s\n%s", da, db)
	}
	cs, err := b.Store().Conflicts()
	if err != nil || len(cs) != 3 || cs[0].Ancestor != 0 {
		t.Fatalf("fw-b conflicts = %+v, %v; want its 3 revisions", cs, err)
	}
	if c, err := b.Store().ConflictContent(cs[2].ID); err != nil || string(c) != "bob, eve" {
		t.Fatalf("conflict content = %q, %v", c, err)
	}
	if tb := tempFiles(t, b); len(tb) > 0 {
		t.Fatalf("temp files left on fw-b: %v", tb)
	}
}

// TestSnapshotStaleRefused: a snapshot older than the standby's head of
// the same history is not installed.
func TestSnapshotStaleRefused(t *testing.T) {
	a, b := snapPair(t, 0)
	publish(t, a, "system", "dns", []byte("1"))
	publish(t, a, "system", "dns", []byte("2"))
	old := takeSnapshot(t, a)
	publish(t, a, "system", "dns", []byte("3"))
	l := connect(a, b)
	waitFor(t, "fw-b at fw-a's head", func() bool { return sameHead(a, b) })
	snapshotsOK(t, b, false, 1)
	l.cut(a, b)
	want := dump(t, b)
	n := len(audits(t, b, configstore.AuditRestore))
	_, stale, err := b.install(stage(t, b, old), "fw-a")
	if !stale || err == nil || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("install of an old snapshot: stale %v, err %v", stale, err)
	}
	if got := dump(t, b); got != want {
		t.Fatalf("fw-b changed by a refused stale snapshot:\n%s\nwant\n%s", got, want)
	}
	if got := len(audits(t, b, configstore.AuditRestore)); got != n {
		t.Fatalf("restore records %d, want %d", got, n)
	}
	if tb := tempFiles(t, b); len(tb) > 0 {
		t.Fatalf("temp files left on fw-b: %v", tb)
	}
	// The same head is not stale: it installs.
	if _, stale, err := b.install(stage(t, b, takeSnapshot(t, a)), "fw-a"); stale || err != nil {
		t.Fatalf("install at the same head: stale %v, %v", stale, err)
	}
}

// TestSnapshotReadsAnsweredDuringInstalls: requests on the standby never
// see a closed store while snapshots are installed one after another.
func TestSnapshotReadsAnsweredDuringInstalls(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 10, 20<<10, 6)
	connect(a, b)
	snapshotsOK(t, b, false, 1)
	stop := make(chan struct{})
	errs := make(chan error, 1)
	var reads atomic.Int64
	go func() {
		defer close(errs)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, op := range []string{"config.list", "config.history", "config.status"} {
				if _, err := b.Handle(op, nil, false, "", ""); err != nil {
					errs <- fmt.Errorf("%s: %w", op, err)
					return
				}
			}
			if _, err := b.Handle("config.get", json.RawMessage(`{"category":"interfaces","name":"doc0"}`), false, "", ""); err != nil {
				errs <- fmt.Errorf("config.get: %w", err)
				return
			}
			reads.Add(1)
		}
	}()
	for i := range 5 {
		publish(t, a, "system", "motd", fmt.Appendf(nil, "%d", i))
		snapshotsOK(t, b, false, uint64(i+2))
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatalf("a read failed during the installs: %v", err)
	}
	t.Logf("%d rounds of reads during %d installs", reads.Load(), peer(b, false).Snapshots)
}

// TestSnapshotStatusCollision: both units ACTIVE as the HA machine sees it
// shows Collision even when the sync channel is down.
func TestSnapshotStatusCollision(t *testing.T) {
	a := openSnap(t, "fw-a", 0, nil)
	a.SetActive(true)
	if p := peer(a, true); p.Status != snapshot.StatusCommunication {
		t.Fatalf("status without a channel = %q", p.Status)
	}
	a.SetPeerActive(true)
	if p := peer(a, true); p.Status != snapshot.StatusCollision {
		t.Fatalf("status with the peer ACTIVE too = %q", p.Status)
	}
	a.SetPeerActive(false)
	if p := peer(a, true); p.Status != snapshot.StatusCommunication {
		t.Fatalf("status after the collision = %q", p.Status)
	}
}

// TestApplyFailureFeedsHASync: a revision that fails to apply on the
// standby makes its configuration sync status, which the daemon feeds to
// the HA machine, OUT_OF_SYNC until it applies.
func TestApplyFailureFeedsHASync(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	hooks := map[string]configstore.Hook{"firewall": {Apply: func(string, []byte) error {
		if fail.Load() {
			return errors.New("rule 7: unknown chain")
		}
		return nil
	}}}
	a := openSnap(t, "fw-a", 0, nil)
	b := openSnap(t, "fw-b", 0, hooks)
	a.SetActive(true)
	last := func(s *Service, cur *ha.SyncStatus) ha.SyncStatus {
		select {
		case st := <-s.SyncChanges():
			*cur = st
		default:
		}
		return *cur
	}
	var sa, sb ha.SyncStatus
	waitFor(t, "both IN_SYNC at start", func() bool {
		return last(a, &sa) == ha.SyncInSync && last(b, &sb) == ha.SyncInSync
	})
	connect(a, b)
	publish(t, a, "firewall", "main", []byte("rules"))
	waitFor(t, "fw-b OUT_OF_SYNC", func() bool { return last(b, &sb) == ha.SyncOutOfSync })
	// A snapshot install keeps the standby's own apply failure.
	snapshotsOK(t, b, false, 1)
	if st := b.Status(false); st.Sync != "OUT_OF_SYNC" {
		t.Fatalf("fw-b config status after the snapshot = %+v", st)
	}
	if last(b, &sb) != ha.SyncOutOfSync || last(a, &sa) != ha.SyncInSync {
		t.Fatalf("sync: fw-a %v, fw-b %v", sa, sb)
	}
	fail.Store(false)
	if _, err := a.Handle("sync.force", nil, true, "", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fw-b IN_SYNC after the fix", func() bool { return last(b, &sb) == ha.SyncInSync })
}

// TestSnapshotNotLeftInProcess: after Close nothing of the snapshot
// machinery keeps running or leaves files.
func TestSnapshotNothingLeftAfterClose(t *testing.T) {
	a, b := snapPair(t, 20*time.Millisecond)
	fill(t, a, 5, 20<<10, 8)
	connect(a, b)
	snapshotsOK(t, b, false, 2)
	dirA, dirB := filepath.Dir(a.path), filepath.Dir(b.path)
	if err := errors.Join(a.Close(), b.Close()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dirA, dirB} {
		es, _ := os.ReadDir(d)
		for _, e := range es {
			if e.Name() != "config.db" {
				t.Errorf("left in %s: %s", d, e.Name())
			}
		}
	}
}

// checkDB runs bbolt's consistency check on a store's database.
func checkDB(st *configstore.Store) error {
	return st.DB().View(func(tx *bbolt.Tx) error {
		var errs []error
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return errors.Join(errs...)
	})
}

// TestSnapshotAfterFailover: the unit that becomes ACTIVE sends its
// database to the new standby without waiting for a publish.
func TestSnapshotAfterFailover(t *testing.T) {
	a, b := snapPair(t, 0)
	fill(t, a, 4, 4<<10, 9)
	connect(a, b)
	snapshotsOK(t, a, true, 1)
	a.SetActive(false)
	b.SetActive(true)
	// The counts are of both directions: one received, one sent.
	snapshotsOK(t, b, true, 2)
	snapshotsOK(t, a, false, 2)
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("fw-a differs from fw-b after the failover:\n%s\n%s", da, db)
	}
	if rs := audits(t, a, configstore.AuditRestore); len(rs) == 0 || rs[0].Origin != "fw-b" {
		t.Fatalf("fw-a's restore records = %+v", rs)
	}
}

// TestCatchUpBySnapshot: a new standby (empty database) and an ACTIVE with
// a history far above CatchUpSnapshotBytes. The standby gets the database
// by one snapshot, not the history revision by revision as well; what is
// published during the transfer follows it, and both units end at the same
// head with the same documents. Negative control: with the option off, the
// whole history is replayed.
func TestCatchUpBySnapshot(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold int64
		bySnap    bool
	}{{"by snapshot", 64 << 10, true}, {"replayed (off)", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			mk := func(node string) *Service {
				s, err := OpenWith(Options{Path: filepath.Join(t.TempDir(), "config.db"), Node: node, HA: true, NoSync: true,
					SnapshotDebounce: 10 * time.Millisecond, CatchUpSnapshotBytes: tc.threshold})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			}
			a, b := mk("fw-a"), mk("fw-b")
			a.SetActive(true)
			const revs = 40
			fill(t, a, revs, 16<<10, 3)

			var mu sync.Mutex
			revFrames, snapBegun := 0, false
			published := false
			connectTap(a, b, func(l *memLink, to *Service, f []byte) []byte {
				if to != b {
					return f
				}
				var fr frame
				mu.Lock()
				defer mu.Unlock()
				switch {
				case len(f) > 0 && f[0] == revTag && decodeFrame(f, &fr) == nil && fr.Chunk == 0:
					revFrames++
				case isData(f) && !published:
					// A publish while the snapshot is on its way.
					published = true
					go func() {
						args, _ := json.Marshal(PublishArgs{Category: "system", Name: "during", ContentBase64: base64.StdEncoding.EncodeToString([]byte("published during the transfer")), Author: "test"})
						if _, err := a.Handle("config.publish", args, true, "", ""); err != nil {
							t.Errorf("publish during the transfer: %v", err)
						}
					}()
				case len(f) > 0 && f[0] == '{' && strings.Contains(string(f), `"`+tSnapBegin+`"`):
					snapBegun = true
				}
				return f
			})
			// A snapshot install swaps the store under a reader: compare
			// until both units read alike with nothing in flight.
			var da, db string
			waitFor(t, "the same documents and history on both units", func() bool {
				ha, _ := a.store.Head()
				if ha != revs+1 || peer(a, true).SnapshotInFlight || peer(b, false).SnapshotInFlight {
					return false
				}
				var okA, okB bool
				da, okA = tryDump(a)
				db, okB = tryDump(b)
				return okA && okB && da == db
			})
			mu.Lock()
			defer mu.Unlock()
			t.Logf("revision frames sent: %d, snapshot sent: %v", revFrames, snapBegun)
			if tc.bySnap && (revFrames != 1 || !snapBegun) {
				t.Errorf("%d revisions sent besides the snapshot (sent: %v); want only the one published during the transfer, once", revFrames, snapBegun)
			}
			if !tc.bySnap && revFrames < revs {
				t.Errorf("%d revision frames with the option off, want the whole history (%d)", revFrames, revs)
			}
		})
	}
}
