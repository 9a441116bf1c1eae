package snapshot

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
)

// Patch runs fn in one read-write bbolt transaction on the staged file,
// before Install: the receiver carries over what is its own (its
// conflicts, its apply outcomes) into the database that will replace its
// live one. The file was verified before (chunks, whole-file hash, meta
// pages); after Patch it no longer matches the Manifest's hash, by
// design. bbolt commits with fsync, so a Patch is durable before the
// rename.
//
// The staged file's shared lock is released while bbolt holds its own
// exclusive one, and taken back after; should the file have been removed
// meanwhile (a CleanTemp that found it unlocked), Patch fails, the staged
// snapshot is discarded and nothing is installed. If fn fails its
// transaction is rolled back and the staged file is as it was: Discard it
// or install it unpatched.
func (st *Staged) Patch(fn func(tx *bbolt.Tx) error) error {
	if st == nil || st.f == nil {
		return errors.New("snapshot: nothing staged (already installed or discarded)")
	}
	path := st.f.Name()
	fd := int(st.f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_UN); err != nil {
		return fmt.Errorf("snapshot: unlock %s: %w", path, err)
	}
	perr := patch(path, fn)
	lerr := syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB)
	if lerr == nil {
		fi1, err1 := st.f.Stat()
		fi2, err2 := os.Lstat(path)
		switch {
		case err1 != nil || err2 != nil:
			lerr = errors.Join(err1, err2)
		case !os.SameFile(fi1, fi2):
			lerr = fmt.Errorf("%s was replaced", path)
		}
	}
	if lerr != nil {
		st.Discard()
		return errors.Join(fmt.Errorf("snapshot: staged file lost during patch: %w", lerr), perr)
	}
	if perr != nil {
		return fmt.Errorf("snapshot: patch %s: %w", path, perr)
	}
	return nil
}

func patch(path string, fn func(tx *bbolt.Tx) error) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: time.Second,
		// Never create: if the staged file is gone, fail rather than
		// patch (and then install) an empty database.
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return os.OpenFile(name, flag&^os.O_CREATE, perm)
		},
	})
	if err != nil {
		return err
	}
	return errors.Join(db.Update(fn), db.Close())
}
