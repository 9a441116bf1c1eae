package configstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// tb is what both *testing.T and *rapid.T offer.
type tb interface {
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
}

// replicate feeds to the revisions from has after to's head.
func replicate(t tb, from, to *Store) {
	head, _ := to.Head()
	revs, contents, err := from.Since(head)
	if err != nil {
		t.Fatalf("Since(%d): %v", head, err)
	}
	for i, r := range revs {
		if err := to.ApplyReplicated(r, contents[i]); err != nil {
			t.Fatalf("ApplyReplicated(%d): %v", r.Number, err)
		}
	}
}

type op struct {
	cat, name, content string
	del                bool
}

func run(t testing.TB, s *Store, ops []op) {
	t.Helper()
	for _, o := range ops {
		if o.del {
			del(t, s, o.cat, o.name)
		} else {
			pub(t, s, o.cat, o.name, o.content)
		}
	}
}

func TestDivergent(t *testing.T) {
	p := func(name, content string) op { return op{cat: "policies", name: name, content: content} }
	d := func(name string) op { return op{cat: "policies", name: name, del: true} }
	cases := []struct {
		name         string
		common       []op
		local        []op // on the unit that yields
		remote       []op
		wantAncestor uint64
		wantMoved    []string // content of the moved revisions ("-" for a deletion)
		wantApplied  []string // hooks run by Divergent to restore the ancestor state
	}{
		{
			name:   "only behind: nothing diverged",
			common: []op{p("main", "v1")}, remote: []op{p("main", "v2"), p("aux", "a")},
			wantAncestor: 1,
		},
		{
			name:         "identical",
			common:       []op{p("main", "v1"), p("aux", "a")},
			wantAncestor: 2,
		},
		{
			name:   "both published during the partition",
			common: []op{p("main", "v1")}, local: []op{p("main", "L2"), p("new", "L3")}, remote: []op{p("main", "R2")},
			wantAncestor: 1, wantMoved: []string{"L2", "L3"},
			wantApplied: []string{"main=v1", "-new"},
		},
		{
			name:   "local ahead of a peer that took over",
			common: []op{p("main", "v1"), p("aux", "a")}, local: []op{p("aux", "L3")},
			wantAncestor: 2, wantMoved: []string{"L3"},
			wantApplied: []string{"aux=a"},
		},
		{
			name:  "no common history",
			local: []op{p("main", "L1")}, remote: []op{p("main", "R1"), p("main", "R2")},
			wantAncestor: 0, wantMoved: []string{"L1"},
			wantApplied: []string{"-main"},
		},
		{
			name:   "a local deletion is kept as a conflict",
			common: []op{p("main", "v1"), p("aux", "a")}, local: []op{d("aux"), p("main", "L4")}, remote: []op{p("aux", "R3")},
			wantAncestor: 2, wantMoved: []string{"-", "L4"},
			wantApplied: []string{"aux=a", "main=v1"},
		},
		{
			name:   "long histories",
			common: slices.Repeat([]op{p("main", "c1"), p("main", "c2")}, 20), local: slices.Repeat([]op{p("x", "L")}, 7), remote: slices.Repeat([]op{p("y", "R")}, 13),
			wantAncestor: 40, wantMoved: slices.Repeat([]string{"L"}, 7),
			wantApplied: []string{"-x"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var applied []string
			hooks := map[string]Hook{"policies": {
				Apply:  func(n string, c []byte) error { applied = append(applied, n+"="+string(c)); return nil },
				Remove: func(n string) error { applied = append(applied, "-"+n); return nil },
			}}
			local := openT(t, Options{Node: "fw-a", Now: clock(), Hooks: hooks})
			remote := openT(t, Options{Node: "fw-b", Now: clock()})
			run(t, remote, tc.common)
			replicate(t, remote, local)
			run(t, local, tc.local)
			run(t, remote, tc.remote)
			localHead, _ := local.Head()
			remoteHead, _ := remote.Head()

			calls := 0
			applied = nil
			div, err := local.Divergent(remoteHead, func(n uint64) ([32]byte, bool) { calls++; return remote.HashAt(n) })
			if err != nil {
				t.Fatal(err)
			}
			if div.Ancestor != tc.wantAncestor || div.LocalHead != localHead || div.RemoteHead != remoteHead {
				t.Errorf("Divergent = ancestor %d local %d remote %d, want ancestor %d local %d remote %d",
					div.Ancestor, div.LocalHead, div.RemoteHead, tc.wantAncestor, localHead, remoteHead)
			}
			if calls > 8 {
				t.Errorf("remoteHashAt called %d times, want O(log n)", calls)
			}
			if head, _ := local.Head(); head != tc.wantAncestor {
				t.Errorf("local head = %d after Divergent, want the ancestor %d", head, tc.wantAncestor)
			}
			conflicts, err := local.Conflicts()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(div.Moved, conflicts); diff != "" {
				t.Errorf("Conflicts differ from Moved (-moved +listed):\n%s", diff)
			}
			var moved []string
			for i, c := range conflicts {
				if c.Revision.Number != tc.wantAncestor+uint64(i)+1 || c.Ancestor != tc.wantAncestor || c.RemoteHead != remoteHead || c.Revision.Origin != "fw-a" {
					t.Errorf("conflict %d = %+v", i, c)
				}
				content, err := local.ConflictContent(c.ID)
				if err != nil {
					t.Fatal(err)
				}
				if c.Revision.Deleted {
					moved = append(moved, "-")
				} else {
					moved = append(moved, string(content))
				}
			}
			if diff := cmp.Diff(tc.wantMoved, moved); diff != "" {
				t.Errorf("moved revisions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantApplied, applied); diff != "" {
				t.Errorf("hooks run to restore the ancestor (-want +got):\n%s", diff)
			}
			// Then the local unit accepts the peer's history.
			replicate(t, remote, local)
			assertSame(t, remote, local)
			if audit, _ := local.Audit(0); len(tc.wantMoved) > 0 && !slices.ContainsFunc(audit, func(a AuditRecord) bool { return a.Action == AuditConflict }) {
				t.Errorf("no conflict audit record")
			}
			// A second reconciliation finds nothing.
			rh, _ := remote.Head()
			div2, err := local.Divergent(rh, remote.HashAt)
			if err != nil || len(div2.Moved) != 0 || div2.Ancestor != rh {
				t.Errorf("second Divergent = %+v, %v", div2, err)
			}
		})
	}
	t.Run("unknown conflict", func(t *testing.T) {
		s := openT(t, Options{})
		if _, err := s.ConflictContent(7); !errors.Is(err, ErrNotFound) {
			t.Errorf("ConflictContent(7) = %v", err)
		}
	})
}

// rapidDir makes a fresh directory for one rapid iteration.
func rapidDir(t *testing.T, rt *rapid.T) string {
	dir, err := os.MkdirTemp(t.TempDir(), "")
	if err != nil {
		rt.Fatal(err)
	}
	return dir
}

func rapidOpen(t *testing.T, rt *rapid.T, node string) *Store {
	s, err := Open(filepath.Join(rapidDir(t, rt), "c.db"), Options{Node: node, NoSync: true})
	if err != nil {
		rt.Fatal(err)
	}
	rt.Cleanup(func() { s.Close() })
	return s
}

// randomOps applies n random publishes, deletions and rollbacks to s.
func randomOps(rt *rapid.T, s *Store, n int, label string) {
	for i := range n {
		cat := rapid.SampledFrom([]string{"policies", "definitions", "system"}).Draw(rt, fmt.Sprintf("%s-cat%d", label, i))
		name := rapid.SampledFrom([]string{"a", "b", "c"}).Draw(rt, fmt.Sprintf("%s-name%d", label, i))
		switch rapid.IntRange(0, 5).Draw(rt, fmt.Sprintf("%s-kind%d", label, i)) {
		case 0: // delete (if present)
			if _, _, err := s.Get(cat, name, 0); err == nil {
				if _, err := s.Publish(Publish{Category: cat, Name: name, Delete: true, Author: "r"}); err != nil {
					rt.Fatal(err)
				}
			}
		case 1: // rollback
			if head, _ := s.Head(); head > 0 {
				to := rapid.Uint64Range(1, head).Draw(rt, fmt.Sprintf("%s-rollback%d", label, i))
				if _, err := s.Rollback(to, "r", time.Time{}); err != nil && !errors.Is(err, ErrNoChange) {
					rt.Fatal(err)
				}
			}
		default:
			content := rapid.SliceOfN(rapid.Byte(), 0, 40).Draw(rt, fmt.Sprintf("%s-content%d", label, i))
			if _, err := s.Publish(Publish{Category: cat, Name: name, Content: content, Author: "r"}); err != nil {
				rt.Fatal(err)
			}
		}
	}
}

// A replica fed Since() of the primary, at any points, ends with the same
// head, history and documents.
func TestPropertyReplicaConverges(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		primary := rapidOpen(t, rt, "fw-a")
		replica := rapidOpen(t, rt, "fw-b")
		rounds := rapid.IntRange(1, 4).Draw(rt, "rounds")
		for r := range rounds {
			randomOps(rt, primary, rapid.IntRange(0, 8).Draw(rt, fmt.Sprintf("ops%d", r)), fmt.Sprint(r))
			if rapid.Bool().Draw(rt, fmt.Sprintf("sync%d", r)) {
				replicate(rt, primary, replica)
			}
		}
		replicate(rt, primary, replica)
		assertSame(rt, primary, replica)
	})
}

// After any partition, the unit that yields ends identical to the peer and
// keeps every revision it made after the common ancestor as a conflict.
func TestPropertyDivergenceKeepsEverything(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		local := rapidOpen(t, rt, "fw-a")
		remote := rapidOpen(t, rt, "fw-b")
		randomOps(rt, remote, rapid.IntRange(0, 6).Draw(rt, "common"), "c")
		replicate(rt, remote, local)
		common, _ := local.Head()
		randomOps(rt, local, rapid.IntRange(0, 6).Draw(rt, "local"), "l")
		randomOps(rt, remote, rapid.IntRange(0, 6).Draw(rt, "remote"), "r")
		localHead, _ := local.Head()
		localRevs, localContents, _ := local.Since(common)
		remoteHead, _ := remote.Head()

		div, err := local.Divergent(remoteHead, remote.HashAt)
		if err != nil {
			rt.Fatal(err)
		}
		wantMoved := int(localHead - common)
		if div.Ancestor != common && !(wantMoved == 0 && div.Ancestor == localHead) {
			rt.Fatalf("ancestor %d, want %d", div.Ancestor, common)
		}
		conflicts, _ := local.Conflicts()
		if len(conflicts) != wantMoved {
			rt.Fatalf("%d conflicts, want the %d local revisions after the ancestor", len(conflicts), wantMoved)
		}
		for i, c := range conflicts {
			if diff := cmp.Diff(localRevs[i], c.Revision); diff != "" {
				rt.Fatalf("conflict %d (-local revision +kept):\n%s", i, diff)
			}
			content, err := local.ConflictContent(c.ID)
			if err != nil || string(content) != string(localContents[i]) {
				rt.Fatalf("conflict %d content %q, %v; want %q", i, content, err, localContents[i])
			}
		}
		replicate(rt, remote, local)
		assertSame(rt, remote, local)
	})
}
