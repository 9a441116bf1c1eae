package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Load reads the configuration file at path, parses it, and reads and
// checks the cluster key file it names. It is the only function of this
// package that touches the file system.
//
// A relative auth_key_file is resolved against the directory of path, and
// the returned config holds the resolved path. The key is returned without
// one trailing newline.
//
// An unreadable configuration file is returned as the file system error.
// Everything else, key problems included, is reported in one *Problems
// error; the config is then still returned when the file could be decoded,
// but the key is returned only when there is no problem at all.
func Load(path string) (*Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read configuration: %w", err)
	}
	cfg, err := Parse(data)
	if cfg == nil {
		return nil, nil, err
	}
	var probs Problems
	if pe := (*Problems)(nil); errors.As(err, &pe) {
		probs = *pe
	}
	if cfg.Cluster.AuthKeyFile == "" {
		return cfg, nil, probs.err() // already reported as missing
	}
	keyPath := cfg.Cluster.AuthKeyFile
	if !filepath.IsAbs(keyPath) {
		keyPath = filepath.Join(filepath.Dir(path), keyPath)
	}
	key, keyProb := readKey(keyPath)
	if keyProb != "" {
		probs.add("cluster.auth_key_file", cfg.Cluster.AuthKeyFile, "%s", keyProb)
	}
	cfg.Cluster.AuthKeyFile = keyPath
	if len(probs) > 0 {
		return cfg, nil, probs.err()
	}
	return cfg, key, nil
}

// readKey reads the cluster key, or says what is wrong with it and how to
// fix that.
func readKey(path string) ([]byte, string) {
	generate := fmt.Sprintf("create it with `openssl rand -hex 32 > %s`, chmod 600, and copy the same file to both units", path)
	key, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Sprintf("key file %s does not exist; %s", path, generate)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Sprintf("key file %s cannot be read (permission denied); make it readable by the user running tandem (root, mode 0600)", path)
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already in the message
		}
		return nil, fmt.Sprintf("key file %s cannot be read: %v; it must be a regular file holding at least %d bytes", path, err, MinKeySize)
	}
	key = bytes.TrimSuffix(key, []byte("\n"))
	if len(key) < MinKeySize {
		return nil, fmt.Sprintf("key file %s holds %d bytes, but the key must be at least %d bytes; %s", path, len(key), MinKeySize, generate)
	}
	return key, ""
}
