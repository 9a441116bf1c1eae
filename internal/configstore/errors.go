package configstore

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error the store returns wraps at most one of them,
// so callers test with errors.Is; the message around it names the field and
// the value that caused it.
var (
	// ErrNotFound: the document, revision or conflict does not exist (or
	// the document was deleted at the requested revision).
	ErrNotFound = errors.New("not found")
	// ErrUnknownCategory: the category is not one of Categories().
	ErrUnknownCategory = errors.New("unknown category")
	// ErrInvalid: a field of a request is malformed (document name, author,
	// time, revision number, options).
	ErrInvalid = errors.New("invalid")
	// ErrValidation: the category's Validate hook rejected the content;
	// nothing was stored. The error is a *HookError carrying the hook's
	// message.
	ErrValidation = errors.New("validation failed")
	// ErrApply: the category's Apply (or Remove) hook failed after the
	// revision was committed. The revision stays stored and the failure is
	// recorded in the audit log and in DocInfo.ApplyError; the caller should
	// report the unit as out of sync with its stored configuration.
	ErrApply = errors.New("apply failed")
	// ErrGap: ApplyReplicated got a revision that does not directly follow
	// the local head.
	ErrGap = errors.New("revision gap")
	// ErrHashMismatch: ApplyReplicated got content whose sha256 is not the
	// revision's Hash.
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrNoChange: Rollback to a revision whose configuration is the current
	// one; nothing was published.
	ErrNoChange = errors.New("no change")
	// ErrLocked: another Store (in this or another process) has the database
	// file open.
	ErrLocked = errors.New("database is locked by another process")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("config store is closed")
	// ErrReadOnly: Publish or Rollback on a store set read-only (a STANDBY).
	ErrReadOnly = errors.New("config store is read-only on this unit")
)

// HookError is a Validate, Apply or Remove hook's failure for one document.
// It matches ErrValidation (Stage "validate") or ErrApply (Stage "apply",
// "remove") with errors.Is and unwraps to the hook's own error.
type HookError struct {
	Stage    string // "validate", "apply" or "remove"
	Category string
	Name     string
	Revision uint64 // 0 for validation (nothing was stored)
	Err      error
}

func (e *HookError) Error() string {
	if e.Revision != 0 {
		return fmt.Sprintf("%s %s/%s (revision %d): %v", e.Stage, e.Category, e.Name, e.Revision, e.Err)
	}
	return fmt.Sprintf("%s %s/%s: %v", e.Stage, e.Category, e.Name, e.Err)
}

// Unwrap returns the hook's error.
func (e *HookError) Unwrap() error { return e.Err }

// Is reports whether target is ErrValidation or ErrApply, according to Stage.
func (e *HookError) Is(target error) bool {
	switch target {
	case ErrValidation:
		return e.Stage == "validate"
	case ErrApply:
		return e.Stage == "apply" || e.Stage == "remove"
	}
	return false
}

func unknownCategory(c string) error {
	return fmt.Errorf("%w %q: use one of %s", ErrUnknownCategory, c, strings.Join(categories[:], ", "))
}
