package configstore

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

// TestCarryOverAndApplyPending: a received database patched with
// CarryOver keeps the receiver's conflicts (with their contents) and
// replaces the sender's; documents that differ are marked to be applied,
// and the mark survives a crash between the install and the apply: the
// next Open's ApplyPending applies them, once.
func TestCarryOverAndApplyPending(t *testing.T) {
	a := openT(t, Options{Node: "fw-a"})
	pub(t, a, "system", "dns", "a1")
	pub(t, a, "users", "admins", "alice")

	dir := t.TempDir()
	path := filepath.Join(dir, "config.db")
	b := openAt(t, path, Options{Node: "fw-b"})
	pub(t, b, "system", "dns", "b's own")
	d, err := b.Divergent(2, func(uint64) ([32]byte, bool) { return [32]byte{}, false })
	if err != nil || len(d.Moved) != 1 {
		t.Fatalf("Divergent = %+v, %v", d, err)
	}
	local, err := b.Local()
	if err != nil || local.Conflicts() != 1 {
		t.Fatalf("Local = %v conflicts, %v", local.Conflicts(), err)
	}

	var stream bytes.Buffer
	if _, err := snapshot.Take(a.DB(), &stream, snapshot.Options{}); err != nil {
		t.Fatal(err)
	}
	st, err := snapshot.Stage(&stream, dir, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	recv, err := OpenReceived(st.Path())
	if err != nil {
		t.Fatal(err)
	}
	if rev, _ := recv.Head(); rev != 2 {
		t.Fatalf("received head %d", rev)
	}
	if h, ok := recv.HashAt(2); !ok || h != must(a.HashAt(2)) {
		t.Fatalf("received HashAt(2) differs from the sender's")
	}
	if _, ok := recv.HashAt(3); ok {
		t.Fatal("HashAt past the head")
	}
	recv.Close()
	var need bool
	if err := st.Patch(func(tx *bbolt.Tx) error {
		var err error
		need, err = CarryOver(tx, local, AuditRecord{Origin: "fw-a", Message: "test restore"})
		return err
	}); err != nil || !need {
		t.Fatalf("CarryOver: need apply %v, %v", need, err)
	}
	// The install, then a crash before ApplyPending: b is closed, the
	// file renamed, nothing applied.
	if err := st.Install(path, snapshot.Swap{Close: b.Close}); err != nil {
		t.Fatal(err)
	}
	var applied []string
	hooks := map[string]Hook{"system": {Apply: func(name string, c []byte) error {
		applied = append(applied, name+"="+string(c))
		return nil
	}}}
	r := openAt(t, path, Options{Node: "fw-b", Hooks: hooks})
	if did, err := r.ApplyPending(); !did || err != nil || strings.Join(applied, ",") != "dns=a1" {
		t.Fatalf("ApplyPending = %v, %v; applied %v", did, err, applied)
	}
	if did, err := r.ApplyPending(); did || err != nil {
		t.Fatalf("second ApplyPending = %v, %v", did, err)
	}
	cs, err := r.Conflicts()
	if err != nil || len(cs) != 1 || cs[0].Revision.Origin != "fw-b" {
		t.Fatalf("conflicts after the install = %+v, %v", cs, err)
	}
	if c, err := r.ConflictContent(cs[0].ID); err != nil || string(c) != "b's own" {
		t.Fatalf("conflict content = %q, %v", c, err)
	}
	if get(t, r, "system", "dns", 0) != "a1" {
		t.Fatal("the received documents are not installed")
	}
	audit, _ := r.Audit(1)
	if len(audit) != 1 || audit[0].Action != AuditRestore || audit[0].Message != "test restore" {
		t.Fatalf("last audit record = %+v", audit)
	}

	// Not a config store: refused.
	if _, err := OpenReceived(filepath.Join(t.TempDir(), "none.db")); err == nil {
		t.Fatal("OpenReceived of a missing file succeeded")
	}
	empty := filepath.Join(t.TempDir(), "empty.db")
	db, err := bbolt.Open(empty, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := OpenReceived(empty); !errors.Is(err, ErrInvalid) {
		t.Fatalf("OpenReceived of an empty bolt file = %v, want ErrInvalid", err)
	}
}

func must(h [32]byte, _ bool) [32]byte { return h }
