package snapshot_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// TestPatch: a staged snapshot can be changed in one transaction before
// Install; a failed patch leaves it as it was; the staged file stays
// locked (a CleanTemp meanwhile keeps it) and is installed patched.
func TestPatch(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 3, revisions: 5, size: 1000}, 9)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "config.db")

	st, err := snapshot.Stage(bytes.NewReader(stream), dir, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	boom := errors.New("boom")
	err = st.Patch(func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucket([]byte("half")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failing patch = %v", err)
	}
	if err := st.Patch(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("local"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	if removed, err := snapshot.CleanTemp(dir); err != nil || len(removed) != 0 {
		t.Fatalf("CleanTemp removed %v (%v) while the staged file is in use", removed, err)
	}
	if err := st.Install(target, snapshot.Swap{}); err != nil {
		t.Fatal(err)
	}
	if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("dir = %v", names)
	}
	s, err := configstore.Open(target, configstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	assertSameStore(t, src, s)
	err = s.DB().View(func(tx *bbolt.Tx) error {
		if tx.Bucket([]byte("half")) != nil {
			return errors.New("the failed patch's bucket is there")
		}
		if b := tx.Bucket([]byte("local")); b == nil || string(b.Get([]byte("k"))) != "v" {
			return errors.New("the patch is missing")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Patch(func(*bbolt.Tx) error { return nil }); err == nil {
		t.Fatal("Patch after Install succeeded")
	}
	_ = os.Remove(target)
}
