package configstore

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

// openT opens a store in a fresh temp dir, closed when the test ends.
func openT(t testing.TB, opts Options) *Store {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "config.db"), opts)
}

func openAt(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	if opts.Node == "" {
		opts.Node = "fw-a"
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// clock returns a deterministic clock advancing a second per call.
func clock() func() time.Time {
	n := 0
	return func() time.Time { n++; return t0.Add(time.Duration(n) * time.Second) }
}

func pub(t testing.TB, s *Store, cat, name, content string) Revision {
	t.Helper()
	r, err := s.Publish(Publish{Category: cat, Name: name, Content: []byte(content), Author: "alice", Message: "set " + name})
	if err != nil {
		t.Fatalf("Publish %s/%s: %v", cat, name, err)
	}
	return r
}

func del(t testing.TB, s *Store, cat, name string) Revision {
	t.Helper()
	r, err := s.Publish(Publish{Category: cat, Name: name, Delete: true, Author: "alice"})
	if err != nil {
		t.Fatalf("delete %s/%s: %v", cat, name, err)
	}
	return r
}

func get(t testing.TB, s *Store, cat, name string, rev uint64) string {
	t.Helper()
	c, _, err := s.Get(cat, name, rev)
	if err != nil {
		t.Fatalf("Get %s/%s@%d: %v", cat, name, rev, err)
	}
	return string(c)
}

func TestPublishGetByteForByte(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	cases := []struct {
		name    string
		content []byte
	}{
		{"text", []byte("table inet filter {\n}\n")},
		{"binary", all},
		{"empty", []byte{}},
		{"nil", nil},
		{"crlf-and-nul", []byte("a\r\nb\x00c\r")},
		{"invalid-utf8", []byte{0xff, 0xfe, 'x'}},
		{"one-mebibyte-random", big},
	}
	s := openT(t, Options{Now: clock()})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := s.Publish(Publish{Category: "system", Name: tc.name, Content: tc.content, Author: "alice", Message: "m", Time: t0})
			if err != nil {
				t.Fatal(err)
			}
			if r.Hash != sha256.Sum256(tc.content) {
				t.Errorf("Hash = %x, want sha256 of content", r.Hash)
			}
			for _, rev := range []uint64{0, r.Number} {
				got, gr, err := s.Get("system", tc.name, rev)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tc.content) {
					t.Errorf("Get@%d = %d bytes, want the %d published", rev, len(got), len(tc.content))
				}
				if diff := cmp.Diff(r, gr); diff != "" {
					t.Errorf("Get@%d revision (-published +got):\n%s", rev, diff)
				}
			}
		})
	}
}

func TestRevisionFields(t *testing.T) {
	s := openT(t, Options{Node: "fw-a", Now: clock()})
	local := time.Date(2025, 3, 1, 14, 0, 0, 5, time.FixedZone("CET", 3600))
	r, err := s.Publish(Publish{Category: "vpn", Name: "site1", Content: []byte("x"), Author: "bob", Message: "add tunnel", Time: local})
	if err != nil {
		t.Fatal(err)
	}
	want := Revision{Number: 1, Author: "bob", Message: "add tunnel", Time: local.UTC(), Category: "vpn", Name: "site1", Hash: sha256.Sum256([]byte("x")), Origin: "fw-a"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("revision (-want +got):\n%s", diff)
	}
	// A zero time means now (the store's clock).
	r2 := pub(t, s, "vpn", "site2", "y")
	if !r2.Time.Equal(t0.Add(time.Second)) {
		t.Errorf("zero Time became %v, want the clock's %v", r2.Time, t0.Add(time.Second))
	}
}

func TestHistoryOrderAndAudit(t *testing.T) {
	s := openT(t, Options{Now: clock()})
	for i := 1; i <= 5; i++ {
		pub(t, s, "policies", "main", fmt.Sprintf("v%d", i))
	}
	del(t, s, "policies", "main")
	h, err := s.History(0)
	if err != nil {
		t.Fatal(err)
	}
	var nums []uint64
	for _, r := range h {
		nums = append(nums, r.Number)
	}
	if diff := cmp.Diff([]uint64{6, 5, 4, 3, 2, 1}, nums); diff != "" {
		t.Errorf("History(0) numbers, newest first (-want +got):\n%s", diff)
	}
	if !h[0].Deleted || h[0].Hash != ([32]byte{}) {
		t.Errorf("deletion revision = %+v, want Deleted with zero Hash", h[0])
	}
	h2, _ := s.History(2)
	if len(h2) != 2 || h2[0].Number != 6 || h2[1].Number != 5 {
		t.Errorf("History(2) = %v", h2)
	}
	a, err := s.Audit(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 6 || a[0].Action != AuditDelete || a[1].Action != AuditPublish || a[0].Seq != 6 || a[5].Revision != 1 || a[5].Author != "alice" {
		t.Errorf("Audit = %+v", a)
	}
	if a1, _ := s.Audit(1); len(a1) != 1 || a1[0].Seq != 6 {
		t.Errorf("Audit(1) = %+v", a1)
	}
}

func TestGetAtRevisionAndList(t *testing.T) {
	s := openT(t, Options{Now: clock()})
	pub(t, s, "policies", "main", "v1")     // 1
	pub(t, s, "interfaces", "lan", "eth0")  // 2
	pub(t, s, "policies", "main", "v2")     // 3
	del(t, s, "interfaces", "lan")          // 4
	pub(t, s, "definitions", "hosts", "h1") // 5

	if got := get(t, s, "policies", "main", 2); got != "v1" {
		t.Errorf("policies/main@2 = %q, want v1", got)
	}
	if got := get(t, s, "policies", "main", 0); got != "v2" {
		t.Errorf("policies/main@head = %q, want v2", got)
	}
	if got := get(t, s, "interfaces", "lan", 3); got != "eth0" {
		t.Errorf("interfaces/lan@3 = %q", got)
	}
	for _, tc := range []struct {
		cat, name string
		rev       uint64
		want      string
	}{
		{"interfaces", "lan", 4, "deleted at revision 4"},
		{"interfaces", "lan", 0, "deleted at revision 4"},
		{"policies", "main", 9, "revision 9: not found (head is 5)"},
		{"definitions", "hosts", 4, "definitions/hosts at revision 4: not found"},
		{"policies", "mai", 0, "not found"},
	} {
		_, _, err := s.Get(tc.cat, tc.name, tc.rev)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Get(%s/%s@%d) = %v, want ErrNotFound mentioning %q", tc.cat, tc.name, tc.rev, err, tc.want)
		}
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range list {
		got = append(got, fmt.Sprintf("%s/%s@%d:%d", d.Category, d.Name, d.Revision.Number, d.Size))
	}
	// Category order: definitions before policies.
	if diff := cmp.Diff([]string{"definitions/hosts@5:2", "policies/main@3:2"}, got); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestRequestErrors(t *testing.T) {
	s := openT(t, Options{})
	cases := []struct {
		name string
		p    Publish
		is   error
		msg  string
	}{
		{"unknown category", Publish{Category: "polices", Name: "main", Author: "a"}, ErrUnknownCategory,
			`unknown category "polices": use one of interfaces, definitions, policies, network, firewall, vpn, users, antivirus, ips, system`},
		{"empty name", Publish{Category: "policies", Name: "", Author: "a"}, ErrInvalid, `invalid document name "": use 1-128 characters`},
		{"slash", Publish{Category: "policies", Name: "a/b", Author: "a"}, ErrInvalid, `invalid document name "a/b"`},
		{"control", Publish{Category: "policies", Name: "a\x00b", Author: "a"}, ErrInvalid, `invalid document name "a\x00b"`},
		{"no author", Publish{Category: "policies", Name: "main"}, ErrInvalid, `invalid author "": every change needs an author`},
		{"delete with content", Publish{Category: "policies", Name: "main", Author: "a", Delete: true, Content: []byte("x")}, ErrInvalid, "carries no content"},
		{"delete missing", Publish{Category: "policies", Name: "main", Author: "a", Delete: true}, ErrNotFound, "delete policies/main"},
		{"time before 1970", Publish{Category: "policies", Name: "main", Author: "a", Time: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)}, ErrInvalid, "invalid time 1960-01-01T00:00:00Z"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Publish(tc.p)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Publish = %v, want %v containing %q", err, tc.is, tc.msg)
			}
		})
	}
	if rev, _ := s.Head(); rev != 0 {
		t.Errorf("head = %d after only failed publishes", rev)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{Hooks: map[string]Hook{"polices": {}}}); !errors.Is(err, ErrUnknownCategory) {
		t.Errorf("Open with a hook for an unknown category = %v, want ErrUnknownCategory", err)
	}
}

func TestValidateFailureStoresNothing(t *testing.T) {
	applied := 0
	s := openT(t, Options{Hooks: map[string]Hook{
		"policies": {
			Validate: func(name string, c []byte) error {
				if bytes.Contains(c, []byte("BAD")) {
					return errors.New("line 1: syntax error, unexpected BAD")
				}
				return nil
			},
			Apply: func(string, []byte) error { applied++; return nil },
		},
	}})
	pub(t, s, "policies", "main", "good")
	headBefore, hashBefore := s.Head()
	histBefore, _ := s.History(0)
	auditBefore, _ := s.Audit(0)

	_, err := s.Publish(Publish{Category: "policies", Name: "main", Content: []byte("BAD"), Author: "alice"})
	if !errors.Is(err, ErrValidation) || errors.Is(err, ErrApply) {
		t.Fatalf("Publish = %v, want ErrValidation", err)
	}
	var he *HookError
	if !errors.As(err, &he) || he.Stage != "validate" || he.Category != "policies" || he.Name != "main" ||
		!strings.Contains(err.Error(), "validate policies/main: line 1: syntax error, unexpected BAD") {
		t.Errorf("error = %#v (%v)", he, err)
	}
	rev, hash := s.Head()
	hist, _ := s.History(0)
	audit, _ := s.Audit(0)
	if rev != headBefore || hash != hashBefore || len(hist) != len(histBefore) || len(audit) != len(auditBefore) {
		t.Errorf("a rejected publish changed the store: head %d->%d, history %d->%d, audit %d->%d",
			headBefore, rev, len(histBefore), len(hist), len(auditBefore), len(audit))
	}
	if got := get(t, s, "policies", "main", 0); got != "good" {
		t.Errorf("content = %q, want the previous one", got)
	}
	if applied != 1 {
		t.Errorf("Apply ran %d times, want 1 (not for the rejected content)", applied)
	}
}

func TestApplyFailureRecorded(t *testing.T) {
	fail := true
	s := openT(t, Options{Now: clock(), Hooks: map[string]Hook{
		"interfaces": {Apply: func(name string, c []byte) error {
			if fail {
				return errors.New("RTNETLINK answers: No such device")
			}
			return nil
		}},
	}})
	r, err := s.Publish(Publish{Category: "interfaces", Name: "wan", Content: []byte("eth9"), Author: "alice"})
	if !errors.Is(err, ErrApply) || errors.Is(err, ErrValidation) {
		t.Fatalf("Publish = %v, want ErrApply", err)
	}
	if r.Number != 1 {
		t.Errorf("returned revision %d, want the stored revision 1 alongside the error", r.Number)
	}
	if !strings.Contains(err.Error(), "apply interfaces/wan (revision 1): RTNETLINK answers: No such device") {
		t.Errorf("error text = %q", err)
	}
	if got := get(t, s, "interfaces", "wan", 0); got != "eth9" {
		t.Errorf("content = %q, want it stored despite the apply failure", got)
	}
	list, _ := s.List()
	if len(list) != 1 || !strings.Contains(list[0].ApplyError, "No such device") {
		t.Errorf("List = %+v, want ApplyError recorded", list)
	}
	if errs, err := s.ApplyErrors(); err != nil || len(errs) != 1 || errs[0] != list[0].ApplyError {
		t.Errorf("ApplyErrors = %q, %v; want List's %q", errs, err, list[0].ApplyError)
	}
	audit, _ := s.Audit(0)
	if len(audit) != 2 || audit[0].Action != AuditApplyFailed || audit[0].Revision != 1 || !strings.Contains(audit[0].Error, "No such device") {
		t.Errorf("Audit = %+v, want publish then apply-failed", audit)
	}
	// A later successful apply clears it.
	fail = false
	pub(t, s, "interfaces", "wan", "eth1")
	list, _ = s.List()
	if list[0].ApplyError != "" {
		t.Errorf("ApplyError = %q after a successful apply", list[0].ApplyError)
	}
	if errs, err := s.ApplyErrors(); err != nil || len(errs) != 0 {
		t.Errorf("ApplyErrors = %q, %v after a successful apply; want none", errs, err)
	}
}

func TestReadOnlyAndClosed(t *testing.T) {
	s := openT(t, Options{})
	pub(t, s, "system", "ntp", "pool")
	s.SetReadOnly(true)
	if _, err := s.Publish(Publish{Category: "system", Name: "ntp", Content: []byte("x"), Author: "a"}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Publish on read-only = %v", err)
	}
	if _, err := s.Rollback(1, "a", time.Time{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Rollback on read-only = %v", err)
	}
	s.SetReadOnly(false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Publish(Publish{Category: "system", Name: "ntp", Content: []byte("x"), Author: "a"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
	if _, _, err := s.Get("system", "ntp", 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestDiff(t *testing.T) {
	s := openT(t, Options{Now: clock()})
	pub(t, s, "policies", "main", "flush ruleset\ntable inet f {\n  chain in {\n    accept\n  }\n}\n") // 1
	pub(t, s, "interfaces", "lan", "eth0\n")                                                           // 2
	pub(t, s, "policies", "main", "flush ruleset\ntable inet f {\n  chain in {\n    drop\n  }\n}\n")   // 3
	del(t, s, "interfaces", "lan")                                                                     // 4
	pub(t, s, "system", "blob", "\x00\x01")                                                            // 5

	got, err := s.Diff(2, 5)
	if err != nil {
		t.Fatal(err)
	}
	want := `--- interfaces/lan@2
+++ /dev/null
@@ -1 +0,0 @@
-eth0
--- policies/main@2
+++ policies/main@5
@@ -1,6 +1,6 @@
 flush ruleset
 table inet f {
   chain in {
-    accept
+    drop
   }
 }
--- /dev/null
+++ system/blob@5
Binary documents /dev/null and system/blob@5 differ (sha256 e3b0c44298fc1c14, b413f47d13ee2fe6)
`
	// The binary note replaces the ---/+++ header.
	want = strings.Replace(want, "--- /dev/null\n+++ system/blob@5\n", "", 1)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Diff(2, 5) (-want +got):\n%s", diff)
	}
	if d, _ := s.Diff(5, 5); d != "" {
		t.Errorf("Diff(5, 5) = %q, want empty", d)
	}
	if d, _ := s.Diff(0, 2); !strings.Contains(d, "--- /dev/null\n+++ interfaces/lan@2\n@@ -0,0 +1 @@\n+eth0\n") {
		t.Errorf("Diff(0, 2) = %q", d)
	}
	if _, err := s.Diff(1, 6); !errors.Is(err, ErrNotFound) {
		t.Errorf("Diff past head = %v", err)
	}
}

func TestUnifiedDiff(t *testing.T) {
	lines := func(n int, f func(i int) string) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			b.WriteString(f(i) + "\n")
		}
		return b.String()
	}
	num := func(i int) string { return fmt.Sprint(i) }
	cases := []struct {
		name, a, b, want string
	}{
		{"same", "x\n", "x\n", "--- a\n+++ b\n"},
		{"insert at start", "b\nc\n", "a\nb\nc\n", "--- a\n+++ b\n@@ -1,2 +1,3 @@\n+a\n b\n c\n"},
		{"append", "a\n", "a\nb\n", "--- a\n+++ b\n@@ -1 +1,2 @@\n a\n+b\n"},
		{"no newline at end", "a\nb", "a\nb\n", "--- a\n+++ b\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"},
		{"empty to text", "", "a\n", "--- a\n+++ b\n@@ -0,0 +1 @@\n+a\n"},
		{"two hunks", lines(20, num), lines(20, func(i int) string {
			if i == 2 || i == 18 {
				return "X"
			}
			return num(i)
		}), "--- a\n+++ b\n@@ -1,5 +1,5 @@\n 1\n-2\n+X\n 3\n 4\n 5\n@@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n+X\n 19\n 20\n"},
		{"close changes merge", lines(10, num), lines(10, func(i int) string {
			if i == 3 || i == 8 {
				return "X"
			}
			return num(i)
		}), "--- a\n+++ b\n@@ -1,10 +1,10 @@\n 1\n 2\n-3\n+X\n 4\n 5\n 6\n 7\n-8\n+X\n 9\n 10\n"},
		{"lcs keeps common lines", "a\nb\nc\nd\n", "b\nx\nd\ny\n", "--- a\n+++ b\n@@ -1,4 +1,4 @@\n-a\n b\n-c\n+x\n d\n+y\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := unifiedDiff("a", "b", []byte(tc.a), []byte(tc.b))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestRollback(t *testing.T) {
	var applied []string
	s := openT(t, Options{Now: clock(), Hooks: map[string]Hook{
		"policies":    {Apply: func(n string, c []byte) error { applied = append(applied, "policies/"+n+"="+string(c)); return nil }},
		"definitions": {Apply: func(n string, c []byte) error { applied = append(applied, "definitions/"+n+"="+string(c)); return nil }},
		"interfaces":  {Remove: func(n string) error { applied = append(applied, "-interfaces/"+n); return nil }},
	}})
	pub(t, s, "policies", "main", "p1")  // 1
	pub(t, s, "definitions", "h", "d1")  // 2
	pub(t, s, "policies", "main", "p2")  // 3
	pub(t, s, "interfaces", "wan", "w1") // 4
	del(t, s, "definitions", "h")        // 5
	pub(t, s, "system", "ntp", "n1")     // 6 (unchanged since it did not exist at 2: deleted)
	_, wantHash := headAt(t, s, 2)
	applied = nil

	r, err := s.Rollback(2, "bob", t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if r.Number != 10 || r.Author != "bob" || r.Message != "rollback to revision 2" {
		t.Errorf("last rollback revision = %+v, want number 10 (four documents differ)", r)
	}
	if _, hash := s.Head(); hash != wantHash {
		t.Errorf("head hash after rollback differs from the state at revision 2")
	}
	if got := get(t, s, "policies", "main", 0); got != "p1" {
		t.Errorf("policies/main = %q", got)
	}
	if _, _, err := s.Get("interfaces", "wan", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("interfaces/wan still present: %v", err)
	}
	// Applied in category order: interfaces, definitions, policies, system.
	if diff := cmp.Diff([]string{"-interfaces/wan", "definitions/h=d1", "policies/main=p1"}, applied); diff != "" {
		t.Errorf("hooks (-want +got):\n%s", diff)
	}
	audit, _ := s.Audit(4)
	for _, a := range audit {
		if a.Action != AuditRollback || a.Author != "bob" {
			t.Errorf("audit %+v, want rollback by bob", a)
		}
	}
	if d, _ := s.Diff(2, 10); d != "" {
		t.Errorf("Diff(2, 10) after rollback = %q, want empty", d)
	}
	if _, err := s.Rollback(2, "bob", time.Time{}); !errors.Is(err, ErrNoChange) {
		t.Errorf("second Rollback = %v, want ErrNoChange", err)
	}
	if _, err := s.Rollback(0, "bob", time.Time{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Rollback(0) = %v", err)
	}
	if _, err := s.Rollback(99, "bob", time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rollback(99) = %v", err)
	}
}

func TestRollbackValidateFailureStoresNothing(t *testing.T) {
	reject := false
	s := openT(t, Options{Hooks: map[string]Hook{
		"policies": {Validate: func(n string, c []byte) error {
			if reject && string(c) == "p1" {
				return errors.New("set @old no longer valid")
			}
			return nil
		}},
	}})
	pub(t, s, "policies", "main", "p1")
	pub(t, s, "policies", "main", "p2")
	reject = true
	if _, err := s.Rollback(1, "bob", time.Time{}); !errors.Is(err, ErrValidation) {
		t.Fatalf("Rollback = %v, want ErrValidation", err)
	}
	if rev, _ := s.Head(); rev != 2 {
		t.Errorf("head = %d, want 2: nothing stored", rev)
	}
}

// headAt returns the state hash a store had at revision n, by replaying
// its history into a fresh store.
func headAt(t *testing.T, s *Store, n uint64) (uint64, [32]byte) {
	t.Helper()
	r := openT(t, Options{})
	revs, contents, err := s.Since(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range revs[:n] {
		if err := r.ApplyReplicated(revs[i], contents[i]); err != nil {
			t.Fatal(err)
		}
	}
	return r.Head()
}

func TestApplyReplicatedErrors(t *testing.T) {
	p := openT(t, Options{Now: clock()})
	pub(t, p, "policies", "main", "v1")
	pub(t, p, "policies", "main", "v2")
	pub(t, p, "policies", "main", "v3")
	revs, contents, err := p.Since(0)
	if err != nil || len(revs) != 3 {
		t.Fatalf("Since(0) = %d revisions, %v", len(revs), err)
	}
	r := openT(t, Options{Node: "fw-b"})
	if err := r.ApplyReplicated(revs[0], contents[0]); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		rev     Revision
		content []byte
		is      error
		msg     string
	}{
		{"gap", revs[2], contents[2], ErrGap, "replicated revision 3 does not follow head 1: send revisions from 2"},
		{"replay", revs[0], contents[0], ErrGap, "replicated revision 1 does not follow head 1"},
		{"wrong content", revs[1], []byte("v2 tampered"), ErrHashMismatch, "replicated revision 2 policies/main: content sha256"},
		{"deletion with content", func() Revision { x := revs[1]; x.Deleted = true; return x }(), nil, ErrHashMismatch, "deletes policies/main but carries"},
		{"bad category", func() Revision { x := revs[1]; x.Category = "polices"; return x }(), contents[1], ErrUnknownCategory, `unknown category "polices"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := r.ApplyReplicated(tc.rev, tc.content)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("ApplyReplicated = %v, want %v containing %q", err, tc.is, tc.msg)
			}
			if rev, _ := r.Head(); rev != 1 {
				t.Errorf("head = %d after a refused revision, want 1", rev)
			}
		})
	}
	for i := 1; i < 3; i++ {
		if err := r.ApplyReplicated(revs[i], contents[i]); err != nil {
			t.Fatal(err)
		}
	}
	assertSame(t, p, r)
	// The replica keeps the publisher's identity of each revision.
	h, _ := r.History(1)
	if h[0].Origin != "fw-a" || h[0].Author != "alice" || !h[0].Time.Equal(revs[2].Time) {
		t.Errorf("replicated revision = %+v", h[0])
	}
	if _, _, err := r.Since(4); !errors.Is(err, ErrNotFound) {
		t.Errorf("Since past head = %v", err)
	}
}

// assertSame checks that two stores have the same head, history and
// documents.
func assertSame(t tb, a, b *Store) {
	ra, ha := a.Head()
	rb, hb := b.Head()
	if ra != rb || ha != hb {
		t.Errorf("heads differ: %d %x vs %d %x", ra, ha[:4], rb, hb[:4])
	}
	histA, _ := a.History(0)
	histB, _ := b.History(0)
	if diff := cmp.Diff(histA, histB); diff != "" {
		t.Errorf("histories differ (-a +b):\n%s", diff)
	}
	la, _ := a.List()
	lb, _ := b.List()
	if diff := cmp.Diff(la, lb); diff != "" {
		t.Errorf("documents differ (-a +b):\n%s", diff)
	}
	if ca, _ := a.HashAt(ra); ca != func() [32]byte { c, _ := b.HashAt(rb); return c }() {
		t.Errorf("history hashes at head differ")
	}
}

func TestHeadHashEqualAcrossHistories(t *testing.T) {
	// Same documents, different histories: same state hash.
	a := openT(t, Options{})
	b := openT(t, Options{})
	pub(t, a, "policies", "main", "x")
	pub(t, a, "system", "ntp", "y")
	pub(t, b, "system", "ntp", "old")
	pub(t, b, "system", "ntp", "y")
	pub(t, b, "policies", "main", "x")
	_, ha := a.Head()
	_, hb := b.Head()
	if ha != hb {
		t.Errorf("state hashes differ for the same documents")
	}
	pub(t, b, "policies", "main", "z")
	if _, hb := b.Head(); ha == hb {
		t.Errorf("state hash unchanged after a content change")
	}
	empty := openT(t, Options{})
	if _, h := empty.Head(); h != sha256.Sum256(nil) {
		t.Errorf("empty store hash = %x", h)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.db")
	s, err := Open(path, Options{Node: "fw-a", Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	pub(t, s, "policies", "main", "v1")
	pub(t, s, "users", "admin", "hash")
	del(t, s, "users", "admin")
	pub(t, s, "policies", "main", "v2")
	// Conflicts too: the peer's history replaces all four revisions.
	other := openT(t, Options{Node: "fw-b"})
	pub(t, other, "policies", "main", "o1")
	d, err := s.Divergent(1, other.HashAt)
	if err != nil || len(d.Moved) != 4 {
		t.Fatalf("Divergent = %+v, %v", d, err)
	}
	replicate(t, other, s)
	pub(t, s, "policies", "main", "v1")
	pub(t, s, "users", "admin", "hash2")
	head, hash := s.Head()
	hist, _ := s.History(0)
	list, _ := s.List()
	audit, _ := s.Audit(0)
	conflicts, _ := s.Conflicts()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, Options{Node: "fw-a"})
	h2, hash2 := s2.Head()
	hist2, _ := s2.History(0)
	list2, _ := s2.List()
	audit2, _ := s2.Audit(0)
	conflicts2, _ := s2.Conflicts()
	if len(conflicts2) != 4 {
		t.Errorf("%d conflicts after reopen, want 4", len(conflicts2))
	}
	if h2 != head || hash2 != hash {
		t.Errorf("head %d/%x after reopen, was %d/%x", h2, hash2[:4], head, hash[:4])
	}
	for _, d := range []string{cmp.Diff(hist, hist2), cmp.Diff(list, list2), cmp.Diff(audit, audit2), cmp.Diff(conflicts, conflicts2)} {
		if d != "" {
			t.Errorf("changed by reopen:\n%s", d)
		}
	}
	if got := get(t, s2, "policies", "main", 1); got != "o1" {
		t.Errorf("policies/main@1 = %q, want the peer's o1", got)
	}
	if c, err := s2.ConflictContent(conflicts2[0].ID); err != nil || string(c) != "v1" {
		t.Errorf("conflict content = %q, %v", c, err)
	}
	pub(t, s2, "policies", "main", "v3")
	if rev, _ := s2.Head(); rev != 4 {
		t.Errorf("next revision after reopen = %d, want 4", rev)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.db")
	openAt(t, path, Options{})
	start := time.Now()
	s2, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of the same file succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another tandem daemon") {
		t.Errorf("second Open = %v, want ErrLocked naming the file", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %s, want about the 200ms timeout", d)
	}
}

func TestOpenCleansStaleSnapshotTemp(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, snapshot.TempPrefix+"deadbeef"+snapshot.TempSuffix)
	if err := os.WriteFile(stale, []byte("half a transfer"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "keep.tmp")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	openAt(t, filepath.Join(dir, "config.db"), Options{})
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale snapshot temp file still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("unrelated file removed: %v", err)
	}
}
