package bench

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// selfCopy copies the running executable (/proc/self/exe: the file this
// process was started from, even if its path has been rebuilt since) to a
// private directory, so that every daemon, probe agent and burner of a run
// is the very binary the report names, whatever happens to the build
// directory meanwhile. It returns the copy's path and SHA-256.
func selfCopy() (path, sum string, cleanup func(), err error) {
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", "", nil, fmt.Errorf("open own executable: %w", err)
	}
	defer src.Close()
	dir, err := os.MkdirTemp("", "tandem-bench-")
	if err != nil {
		return "", "", nil, err
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	path = filepath.Join(dir, "tandem")
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		cleanup()
		return "", "", nil, err
	}
	h := sha256.New()
	_, cerr := io.Copy(io.MultiWriter(dst, h), src)
	if err := dst.Close(); cerr == nil {
		cerr = err
	}
	if cerr != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("copy own executable: %w", cerr)
	}
	return path, hex.EncodeToString(h.Sum(nil)), cleanup, nil
}

// SelfArg stands for the benchmark's private copy of its executable in
// ProbeCommand and BurnCommand.
const SelfArg = "{self}"

func withSelf(argv []string, self string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = strings.ReplaceAll(a, SelfArg, self)
	}
	return out
}
