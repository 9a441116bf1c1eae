package configstore

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Since returns the revisions after rev, oldest first, each with its content
// (nil for a deletion): what the ACTIVE sends to catch a STANDBY up from the
// STANDBY's head. A rev past the local head gives ErrNotFound: the peer has
// history this unit lacks, which is a divergence (see Divergent).
func (s *Store) Since(rev uint64) ([]Revision, [][]byte, error) {
	return s.SinceBounded(rev, 0)
}

// SinceBounded is Since stopping once the contents read reach maxBytes
// (always at least one revision; maxBytes <= 0: no bound), so that
// catching up a standby that lacks a long history reads it a batch at a
// time instead of copying all of it into memory in one read transaction.
func (s *Store) SinceBounded(rev uint64, maxBytes int) ([]Revision, [][]byte, error) {
	var revs []Revision
	var contents [][]byte
	err := s.view(func(tx *bbolt.Tx) error {
		if err := checkRev(tx, rev); err != nil {
			return err
		}
		size := 0
		c := tx.Bucket(bRevs).Cursor()
		for k, v := c.Seek(u64(rev + 1)); k != nil; k, v = c.Next() {
			if maxBytes > 0 && len(revs) > 0 && size >= maxBytes {
				break
			}
			r, _, err := decodeRev(v)
			if err != nil {
				return err
			}
			var content []byte
			if !r.Deleted {
				if content, err = loadBlob(tx, r.Hash); err != nil {
					return err
				}
			}
			size += len(content)
			revs = append(revs, r)
			contents = append(contents, content)
		}
		return nil
	})
	return revs, contents, err
}

// HashAt returns the history hash at revision rev: a hash chained over
// every revision from 1 to rev (number, document, content hash, author,
// message, time, origin). Two stores have the same HashAt(n) exactly when
// their first n revisions are identical. HashAt(0) is the zero hash; ok is
// false past the head. This is what a peer serves as remoteHashAt for
// Divergent.
func (s *Store) HashAt(rev uint64) (hash [32]byte, ok bool) {
	_ = s.view(func(tx *bbolt.Tx) error {
		if rev > headOf(tx) {
			return nil
		}
		c, err := chainAt(tx, rev)
		hash, ok = c, err == nil
		return nil
	})
	return hash, ok
}

// ApplyReplicated stores, on a STANDBY, a revision made by the peer, exactly
// as it was made (number, hash, author, message, time, origin), then runs
// the category's Apply (or Remove) hook so the standby's system is ready for
// a takeover. No Validate hook runs: the peer validated it, and refusing it
// would only break replication.
//
// It refuses a revision whose number is not head+1 (ErrGap: fetch Since(head)
// from the peer) and content whose sha256 is not r.Hash (ErrHashMismatch; a
// deletion carries no content and a zero Hash). Either way nothing is
// stored. A hook failure returns an error matching ErrApply with the
// revision stored, as in Publish.
func (s *Store) ApplyReplicated(r Revision, content []byte) error {
	if err := checkDoc(r.Category, r.Name); err != nil {
		return fmt.Errorf("replicated revision %d: %w", r.Number, err)
	}
	t, err := normTime(r.Time)
	if err != nil {
		return fmt.Errorf("replicated revision %d: %w", r.Number, err)
	}
	r.Time = t
	if r.Deleted {
		if len(content) != 0 || r.Hash != ([32]byte{}) {
			return fmt.Errorf("%w: replicated revision %d deletes %s/%s but carries %d bytes of content and hash %x", ErrHashMismatch, r.Number, r.Category, r.Name, len(content), r.Hash[:8])
		}
		content = nil
	} else if h := sha256.Sum256(content); h != r.Hash {
		return fmt.Errorf("%w: replicated revision %d %s/%s: content sha256 %x, revision hash %x", ErrHashMismatch, r.Number, r.Category, r.Name, h[:8], r.Hash[:8])
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.update(func(tx *bbolt.Tx) error {
		if head := headOf(tx); r.Number != head+1 {
			return fmt.Errorf("%w: replicated revision %d does not follow head %d: send revisions from %d", ErrGap, r.Number, head, head+1)
		}
		if err := appendRev(tx, r, content); err != nil {
			return err
		}
		a := auditFor(AuditReplicate, r)
		a.Time = s.now()
		if err := addAudit(tx, a); err != nil {
			return err
		}
		return finish(tx)
	})
	if err != nil {
		return err
	}
	return s.apply([]Revision{r}, [][]byte{content})
}

// Conflict is a local revision set aside by Divergent: it was made during a
// partition on the unit that yielded, and is kept, listable, until an
// operator re-publishes or discards it. Its Revision.Number is the number
// it had locally; the head now holds the peer's revision of that number.
type Conflict struct {
	ID         uint64
	Detected   time.Time
	Ancestor   uint64 // the last revision both units shared
	RemoteHead uint64 // the peer's head when the divergence was found
	Revision   Revision
}

type conflictRecord struct {
	ID         uint64    `json:"id"`
	Detected   time.Time `json:"detected"`
	Ancestor   uint64    `json:"ancestor"`
	RemoteHead uint64    `json:"remote_head"`
	Rev        []byte    `json:"rev"` // encodeRev
}

func decodeConflict(v []byte) (Conflict, error) {
	var rec conflictRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return Conflict{}, err
	}
	r, _, err := decodeRev(rec.Rev)
	return Conflict{ID: rec.ID, Detected: rec.Detected, Ancestor: rec.Ancestor, RemoteHead: rec.RemoteHead, Revision: r}, err
}

// Divergence is what Divergent found and did.
type Divergence struct {
	// Ancestor is the last revision both histories share; the local head
	// is now Ancestor, ready for the peer's Since(Ancestor).
	Ancestor   uint64
	LocalHead  uint64 // the local head before
	RemoteHead uint64
	// Moved are the local revisions after Ancestor, now in Conflicts,
	// oldest first. Empty when the local history is a prefix of the
	// peer's (nothing diverged: the unit is only behind).
	Moved []Conflict
}

// Divergent reconciles this store with the peer's history before it accepts
// it: call it on the unit that yields after a partition in which both units
// accepted publishes. remoteHead is the peer's head and remoteHashAt(n) the
// peer's HashAt(n) (ok false: the peer has no revision n). It must answer
// reliably: a wrong "no" moves more local revisions aside than needed (kept,
// never lost, but not replicated).
//
// Divergent finds the common ancestor by binary search on the history
// hashes (O(log n) calls of remoteHashAt), then, in one transaction, moves
// every local revision after it into the conflicts bucket with its content,
// removes them from the history, and restores the documents to their state
// at the ancestor. It then runs the Apply/Remove hooks of the documents it
// restored, recording failures as Publish does. Nothing is dropped: the
// moved revisions stay listable with Conflicts and readable with
// ConflictContent.
func (s *Store) Divergent(remoteHead uint64, remoteHashAt func(rev uint64) ([32]byte, bool)) (Divergence, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := Divergence{RemoteHead: remoteHead}
	var localHead uint64
	if err := s.view(func(tx *bbolt.Tx) error { localHead = headOf(tx); return nil }); err != nil {
		return d, err
	}
	d.LocalHead = localHead
	match := func(n uint64) (bool, error) {
		if n == 0 {
			return true, nil
		}
		var local [32]byte
		err := s.view(func(tx *bbolt.Tx) error {
			var err error
			local, err = chainAt(tx, n)
			return err
		})
		if err != nil {
			return false, err
		}
		remote, ok := remoteHashAt(n)
		return ok && remote == local, nil
	}
	// match is true up to the ancestor and false after it (the hashes are
	// chained): find the last true in [0, min(local, remote)].
	lo, hi := uint64(0), min(localHead, remoteHead)
	ok, err := match(hi)
	if err != nil {
		return d, err
	}
	if ok {
		lo = hi
	} else {
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			ok, err := match(mid)
			if err != nil {
				return d, err
			}
			if ok {
				lo = mid
			} else {
				hi = mid
			}
		}
	}
	d.Ancestor = lo
	if d.Ancestor == localHead {
		return d, nil
	}

	var reRevs []Revision
	var reContents [][]byte
	now := s.now().UTC()
	err = s.update(func(tx *bbolt.Tx) error {
		revs, docrevs, conflicts := tx.Bucket(bRevs), tx.Bucket(bDocRevs), tx.Bucket(bConflicts)
		touched := map[string]bool{}
		for n := d.Ancestor + 1; n <= localHead; n++ {
			r, _, err := loadRev(tx, n)
			if err != nil {
				return err
			}
			id, err := conflicts.NextSequence()
			if err != nil {
				return err
			}
			rec := conflictRecord{ID: id, Detected: now, Ancestor: d.Ancestor, RemoteHead: remoteHead, Rev: encodeRev(r, [32]byte{})}
			v, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			if err := conflicts.Put(u64(id), v); err != nil {
				return err
			}
			if err := revs.Delete(u64(n)); err != nil {
				return err
			}
			if err := docrevs.Delete(docRevKey(r.Category, r.Name, n)); err != nil {
				return err
			}
			touched[string(docKey(r.Category, r.Name))] = true
			a := auditFor(AuditConflict, r)
			a.Time = now
			a.Message = fmt.Sprintf("local revision %d set aside as conflict %d: history diverged from the peer (head %d) after revision %d", n, id, remoteHead, d.Ancestor)
			if err := addAudit(tx, a); err != nil {
				return err
			}
			d.Moved = append(d.Moved, Conflict{ID: id, Detected: now, Ancestor: d.Ancestor, RemoteHead: remoteHead, Revision: r})
		}
		if err := tx.Bucket(bMeta).Put(kHead, u64(d.Ancestor)); err != nil {
			return err
		}
		docs, aerr := tx.Bucket(bDocs), tx.Bucket(bApplyErr)
		keys := make([]string, 0, len(touched))
		for k := range touched {
			keys = append(keys, k)
		}
		sortDocs(keys, func(k string) (string, string) { return splitDocKey([]byte(k)) })
		for _, key := range keys {
			cat, name := splitDocKey([]byte(key))
			if err := aerr.Delete([]byte(key)); err != nil {
				return err
			}
			r, content, err := docAt(tx, cat, name, d.Ancestor)
			if err != nil {
				if err := docs.Delete([]byte(key)); err != nil {
					return err
				}
				reRevs = append(reRevs, Revision{Number: d.Ancestor, Category: cat, Name: name, Deleted: true})
				reContents = append(reContents, nil)
				continue
			}
			if err := docs.Put([]byte(key), docEntry{r.Number, r.Hash, uint64(len(content))}.bytes()); err != nil {
				return err
			}
			reRevs = append(reRevs, r)
			reContents = append(reContents, content)
		}
		return finish(tx)
	})
	if err != nil {
		return Divergence{RemoteHead: remoteHead, LocalHead: localHead}, fmt.Errorf("set aside divergent revisions: %w", err)
	}
	return d, s.apply(reRevs, reContents)
}

// Conflicts lists the revisions Divergent set aside, oldest first.
func (s *Store) Conflicts() ([]Conflict, error) {
	var out []Conflict
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bConflicts).ForEach(func(_, v []byte) error {
			c, err := decodeConflict(v)
			out = append(out, c)
			return err
		})
	})
	return out, err
}

// ConflictContent returns the content of a conflict's revision (nil for a
// deletion).
func (s *Store) ConflictContent(id uint64) ([]byte, error) {
	var content []byte
	err := s.view(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bConflicts).Get(u64(id))
		if v == nil {
			return fmt.Errorf("conflict %d: %w", id, ErrNotFound)
		}
		c, err := decodeConflict(v)
		if err != nil || c.Revision.Deleted {
			return err
		}
		content, err = loadBlob(tx, c.Revision.Hash)
		return err
	})
	return content, err
}
