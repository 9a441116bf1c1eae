package configstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// HookTimeout bounds each command a CommandHook or NftHook runs.
const HookTimeout = 2 * time.Minute

// maxHookOutput bounds how much of a failed command's output goes into the
// error (and so into the audit log).
const maxHookOutput = 4 << 10

// CommandHook returns a Hook that runs validateCmd to validate and applyCmd
// to apply a document, each with the document on standard input and its
// name in the environment as TANDEM_DOCUMENT. A nil or empty command leaves
// that step out. A command fails when it exits non-zero (or runs longer than
// HookTimeout); the error carries the command and its output.
//
// For the policies category use NftHook.
func CommandHook(validateCmd, applyCmd []string) Hook {
	var h Hook
	if len(validateCmd) > 0 {
		argv := append([]string(nil), validateCmd...)
		h.Validate = func(name string, content []byte) error { return runHook(argv, name, content) }
	}
	if len(applyCmd) > 0 {
		argv := append([]string(nil), applyCmd...)
		h.Apply = func(name string, content []byte) error { return runHook(argv, name, content) }
	}
	return h
}

// NftHook returns the Hook of the policies category: a document is an nft
// script (typically starting with "flush ruleset" or deleting and
// re-creating its tables). Validate runs `nft -c -f -` (a dry run in the
// kernel) and Apply `nft -f -`, which nft applies atomically: the whole
// script or nothing. nftBinary "" means "nft" from PATH. Deleting a policies
// document removes nothing from the kernel; publish a script that deletes
// its tables instead.
func NftHook(nftBinary string) Hook {
	if nftBinary == "" {
		nftBinary = "nft"
	}
	return Hook{
		Validate: func(name string, content []byte) error {
			return runHook([]string{nftBinary, "-c", "-f", "-"}, name, content)
		},
		Apply: func(name string, content []byte) error {
			return runHook([]string{nftBinary, "-f", "-"}, name, content)
		},
	}
}

func runHook(argv []string, name string, content []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(content)
	cmd.Env = append(os.Environ(), "TANDEM_DOCUMENT="+name)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s", HookTimeout)
	}
	msg := strings.TrimSpace(string(out))
	if len(msg) > maxHookOutput {
		msg = msg[:maxHookOutput] + " [...]"
	}
	if msg == "" {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
}
