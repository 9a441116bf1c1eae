package snapshot

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Temp files (the receiver's staging file) are named
// TempPrefix + random hex + TempSuffix and live in the database's directory.
// While in use each holds a shared flock; one without it is left over from a
// crash.
const (
	TempPrefix = ".tandem-snapshot-"
	TempSuffix = ".tmp"
)

func isTempName(name string) bool {
	return strings.HasPrefix(name, TempPrefix) && strings.HasSuffix(name, TempSuffix)
}

// createTemp creates and locks a new temp file in dir.
func createTemp(dir string) (*os.File, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	path := filepath.Join(dir, TempPrefix+hex.EncodeToString(rnd[:])+TempSuffix)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// removeTemp closes and removes a temp file; safe to call twice.
func removeTemp(f *os.File) {
	if f == nil {
		return
	}
	_ = f.Close()
	_ = os.Remove(f.Name())
}

// CleanTemp removes the snapshot temp files in dir that no process is
// using: those a crash (or a kill) left behind mid-transfer. It returns the
// paths it removed. Files in use by a running Take or Receive are kept.
// configstore.Open calls it for the database's directory.
func CleanTemp(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !isTempName(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		f, err := os.Open(path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		// In use: someone holds the shared lock.
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue
		}
		// Make sure the path still names the file we locked.
		fi1, err1 := f.Stat()
		fi2, err2 := os.Lstat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi1, fi2) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			} else {
				removed = append(removed, path)
			}
		}
		f.Close()
	}
	return removed, errors.Join(errs...)
}
