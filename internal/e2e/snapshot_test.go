package e2e

// Management-database snapshots between two real daemons on loopback: a
// standby killed (SIGKILL) while a large snapshot is being written into
// its state directory restarts with a valid database and converges to the
// ACTIVE's; an ACTIVE killed mid-transfer leaves both databases valid, and
// the pair converges once it is back.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

func configStatus(t testing.TB, socket string) (configsync.Status, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var st configsync.Status
	err := control.Call(ctx, socket, control.Request{Op: "config.status"}, &st)
	return st, err
}

func (p *pair) stateDir(n string) string { return filepath.Join(p.dir, n+".state") }
func (p *pair) dbPath(n string) string   { return filepath.Join(p.stateDir(n), "config.db") }

// snapTemps lists the snapshot temp files (spool or staging) in n's state
// directory.
func (p *pair) snapTemps(n string) []string {
	ents, _ := os.ReadDir(p.stateDir(n))
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), snapshot.TempPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// buildStore writes n documents of size random (incompressible) bytes
// into a new store at path, before any daemon runs: a database of about
// n*size bytes. The categories have no hooks in the loopback pair.
func buildStore(t testing.TB, path string, n, size int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := configstore.Open(path, configstore.Options{Node: "fw-a", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	cats := []string{"definitions", "network", "system", "users", "vpn"}
	buf := make([]byte, size)
	for i := range n {
		_, _ = rand.Read(buf)
		if _, err := s.Publish(configstore.Publish{Category: cats[i%len(cats)], Name: fmt.Sprintf("blob%03d", i), Content: buf, Author: "e2e", Message: "bulk"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Written without fsync for speed: flush it now, or the daemon's first
	// commit would wait for the whole file to reach the disk.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built a %.1f MB management database", float64(fi.Size())/(1<<20))
}

// checkStoreFile opens a database file no daemon holds, as the daemon
// would (removing snapshot leftovers), and checks it page by page. It
// returns the head.
func checkStoreFile(t *testing.T, path string) uint64 {
	t.Helper()
	s, err := configstore.Open(path, configstore.Options{})
	if err != nil {
		t.Fatalf("the database %s does not open: %v", path, err)
	}
	defer s.Close()
	err = s.DB().View(func(tx *bbolt.Tx) error {
		var errs []error
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("the database %s is damaged: %v", path, err)
	}
	docs, err := s.List()
	if err != nil {
		t.Fatalf("list %s: %v", path, err)
	}
	for _, d := range docs {
		if _, _, err := s.Get(d.Category, d.Name, 0); err != nil {
			t.Fatalf("%s: %s/%s: %v", path, d.Category, d.Name, err)
		}
	}
	head, _ := s.Head()
	return head
}

// killDuringTransfer publishes on fw-a (each publish sends a snapshot)
// until it sees a snapshot being written into fw-b's state directory,
// then SIGKILLs victim at once.
func (p *pair) killDuringTransfer(t *testing.T, victim *proc, name string) {
	t.Helper()
	file := filepath.Join(p.dir, "kick.txt")
	sent := func() uint64 {
		st, err := configStatus(t, p.socket("fw-a"))
		if err != nil || len(st.Peers) != 1 {
			return 0
		}
		return st.Peers[0].Snapshots
	}
	for try := range 10 {
		n0 := sent()
		if err := os.WriteFile(file, fmt.Appendf(nil, "kick %d %d", try, time.Now().UnixNano()), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, code := runCLI(t, "config", "publish", "--socket", p.socket("fw-a"), "--category", "system", "--name", "kick", "--file", file); code != 0 {
			t.Fatalf("publish on fw-a: exit %d: %s", code, out)
		}
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if tmp := p.snapTemps("fw-b"); len(tmp) > 0 {
				if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				t.Logf("SIGKILLed %s while fw-b was receiving a snapshot into %v (try %d)", name, tmp, try)
				waitFor(t, 10*time.Second, name+" gone", func() bool { return victim.cmd.Process.Signal(syscall.Signal(0)) != nil })
				return
			}
			if sent() > n0 && len(p.snapTemps("fw-b")) == 0 {
				break // it went through before we looked: the next publish sends another
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Fatal("never saw a snapshot in transfer to fw-b")
}

// converged waits until both units hold the same configuration head and
// hash, the ACTIVE reports the standby Synchronized with a snapshot
// installed after since, and no snapshot file is left in either
// directory.
func (p *pair) converged(t testing.TB, since time.Time, timeout time.Duration) configsync.Status {
	t.Helper()
	var a, b configsync.Status
	waitFor(t, timeout, "both units at the same configuration head, the standby Synchronized by a snapshot", func() bool {
		var errA, errB error
		a, errA = configStatus(t, p.socket("fw-a"))
		b, errB = configStatus(t, p.socket("fw-b"))
		if errA != nil || errB != nil || a.Head == 0 || a.Head != b.Head || a.Hash != b.Hash {
			return false
		}
		act := a
		if b.Role == "ACTIVE" {
			act = b
		}
		pv := act.Peers[0]
		return pv.Status == snapshot.StatusSynchronized && pv.LastSnapshot != nil && pv.LastSnapshot.OK && !pv.SnapshotInFlight &&
			pv.LastSnapshot.At.After(since) && pv.Role == "STANDBY" && act.Role == "ACTIVE" &&
			len(p.snapTemps("fw-a"))+len(p.snapTemps("fw-b")) == 0
	})
	return a
}

// TestLoopbackSnapshotSurvivesKills: a ~24 MB management database is sent
// by snapshot; SIGKILL of the standby in the middle of a transfer leaves
// its previous database valid, the leftover temp file is removed at the
// next start, and the restarted standby converges; SIGKILL of the ACTIVE
// in the middle of a transfer leaves both databases valid, the standby
// takes over with its copy, and the pair converges when the old ACTIVE
// returns.
func TestLoopbackSnapshotSurvivesKills(t *testing.T) {
	start := time.Now()
	p := newPair(t, 50*time.Millisecond, 250*time.Millisecond, 600*time.Millisecond)
	buildStore(t, p.dbPath("fw-a"), 24, 1<<20)
	// fw-a, holding the configuration, is ACTIVE before fw-b (empty)
	// starts: an empty unit ACTIVE first would make fw-a set its whole
	// history aside as conflicts when it yields.
	a := p.start(t, "fw-a")
	waitFor(t, 10*time.Second, "fw-a ACTIVE alone", func() bool { return p.state(t, "fw-a") == "ACTIVE" })
	b := p.start(t, "fw-b")
	p.waitElected(t)
	since := func() time.Duration { return time.Since(start).Round(time.Millisecond) }
	st := p.converged(t, start, 120*time.Second)
	head := st.Head
	t.Logf("%v: fw-b synchronized at revision %d: %+v", since(), head, st.Peers[0].LastSnapshot)

	// 1. The standby dies in the middle of a transfer.
	p.killDuringTransfer(t, b, "fw-b")
	left := p.snapTemps("fw-b")
	t.Logf("%v: left in fw-b's state directory by the kill: %v", since(), left)
	bHead := checkStoreFile(t, p.dbPath("fw-b"))
	if bHead < head {
		t.Fatalf("fw-b's database went back from revision %d to %d", head, bHead)
	}
	if tmp := p.snapTemps("fw-b"); len(tmp) > 0 {
		t.Fatalf("opening fw-b's database left snapshot files behind: %v", tmp)
	}
	restart := time.Now()
	b = p.start(t, "fw-b")
	st = p.converged(t, restart, 120*time.Second)
	t.Logf("%v: fw-b restarted and converged at revision %d", since(), st.Head)
	if out, code := runCLI(t, "config", "list", "--socket", p.socket("fw-b")); code != 0 || !strings.Contains(out, "blob023") {
		t.Fatalf("config list on fw-b: exit %d: %s", code, out)
	}

	// 2. The ACTIVE dies in the middle of a transfer.
	p.killDuringTransfer(t, a, "fw-a")
	waitFor(t, 10*time.Second, "fw-b ACTIVE after fw-a was killed", func() bool { return p.state(t, "fw-b") == "ACTIVE" })
	// fw-b dropped the partial snapshot and answers from its database.
	waitFor(t, 10*time.Second, "fw-b to drop the partial snapshot", func() bool { return len(p.snapTemps("fw-b")) == 0 })
	sb, err := configStatus(t, p.socket("fw-b"))
	if err != nil || sb.Head < st.Head {
		t.Fatalf("fw-b after fw-a's death: %+v, %v (was at revision %d)", sb, err, st.Head)
	}
	if out, code := runCLI(t, "config", "list", "--socket", p.socket("fw-b")); code != 0 || !strings.Contains(out, "blob023") {
		t.Fatalf("config list on fw-b: exit %d: %s", code, out)
	}
	aHead := checkStoreFile(t, p.dbPath("fw-a"))
	t.Logf("%v: after fw-a's death: fw-a's database at revision %d, fw-b serving revision %d", since(), aHead, sb.Head)
	if tmp := p.snapTemps("fw-a"); len(tmp) > 0 {
		t.Fatalf("opening fw-a's database left snapshot files behind: %v", tmp)
	}
	restart = time.Now()
	p.start(t, "fw-a")
	st = p.converged(t, restart, 120*time.Second)
	t.Logf("%v: fw-a restarted; the pair converged at revision %d", since(), st.Head)
	for _, n := range []string{"fw-a", "fw-b"} {
		if out, code := runCLI(t, "config", "list", "--socket", p.socket(n)); code != 0 || !strings.Contains(out, "blob023") {
			t.Fatalf("config list on %s: exit %d: %s", n, code, out)
		}
	}
}
