package configstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Snapshot restore support. The snapshot package copies and installs the
// whole database file; what is left to this package is what the file
// means: reading a received database's history before it is installed
// (stale or divergent?), and carrying over what belongs to the receiving
// unit itself — its conflicts and its own apply outcomes — into the
// received file before it replaces the live one.

// AuditRestore: a snapshot of the peer's database replaced this unit's.
const AuditRestore = "restore"

// kPendingApply marks a database installed from a snapshot whose
// documents have not all been applied on this unit yet (ApplyPending).
var kPendingApply = []byte("pendingapply")

// Received is a read-only view of a received database file, before it is
// installed: its head and history hashes.
type Received struct {
	db   *bbolt.DB
	head headState
}

// OpenReceived opens a received database file read-only and checks that
// it is a config store of this format. Close it before installing the
// file.
func OpenReceived(path string) (*Received, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open received database: %w", err)
	}
	r := &Received{db: db}
	err = db.View(func(tx *bbolt.Tx) error {
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("%w: received database has no %q bucket: not a tandem config store", ErrInvalid, b)
			}
		}
		v := tx.Bucket(bMeta).Get(kFormat)
		if len(v) != 8 || binary.BigEndian.Uint64(v) != formatVersion {
			return fmt.Errorf("%w: received database format %x, this version reads format %d", ErrInvalid, v, formatVersion)
		}
		r.head = readHead(tx)
		if _, err := chainAt(tx, r.head.rev); err != nil {
			return fmt.Errorf("received database: head %d: %w", r.head.rev, err)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return r, nil
}

// Head is the received database's head revision and content hash.
func (r *Received) Head() (rev uint64, hash [32]byte) { return r.head.rev, r.head.hash }

// HashAt is the received database's history hash at rev, as Store.HashAt.
func (r *Received) HashAt(rev uint64) (hash [32]byte, ok bool) {
	if rev > r.head.rev {
		return hash, false
	}
	_ = r.db.View(func(tx *bbolt.Tx) error {
		c, err := chainAt(tx, rev)
		hash, ok = c, err == nil
		return nil
	})
	return hash, ok
}

// Close closes the view.
func (r *Received) Close() error { return r.db.Close() }

type kv struct{ k, v []byte }

// Local is what a snapshot install keeps of the receiving unit's own
// database: the revisions it set aside as conflicts (with their contents)
// and the outcome of its own apply hooks.
type Local struct {
	head        headState
	conflicts   []kv
	conflictSeq uint64
	blobs       []kv // contents of the conflicts' revisions
	applyErr    []kv
}

// Head is the local head when Local was read.
func (l *Local) Head() uint64 { return l.head.rev }

// Conflicts is how many conflicts are carried over.
func (l *Local) Conflicts() int { return len(l.conflicts) }

// Local reads what CarryOver keeps. Read it after the last write before
// the install (a STANDBY writes only through its replication worker).
func (s *Store) Local() (*Local, error) {
	l := &Local{}
	err := s.view(func(tx *bbolt.Tx) error {
		l.head = readHead(tx)
		cb := tx.Bucket(bConflicts)
		l.conflictSeq = cb.Sequence()
		seen := map[[32]byte]bool{}
		err := cb.ForEach(func(k, v []byte) error {
			l.conflicts = append(l.conflicts, kv{clone(k), clone(v)})
			c, err := decodeConflict(v)
			if err != nil {
				return err
			}
			if h := c.Revision.Hash; !c.Revision.Deleted && !seen[h] {
				seen[h] = true
				if b := tx.Bucket(bBlobs).Get(h[:]); b != nil {
					l.blobs = append(l.blobs, kv{clone(h[:]), clone(b)})
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bApplyErr).ForEach(func(k, v []byte) error {
			l.applyErr = append(l.applyErr, kv{clone(k), clone(v)})
			return nil
		})
	})
	return l, err
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// CarryOver writes, in a read-write transaction on a received database
// that is about to replace this unit's (snapshot.Staged.Patch), what is
// this unit's own:
//
//   - its conflicts replace the received ones (IDs, records and their
//     contents unchanged): what this unit set aside after a partition is
//     never lost to a restore, and the peer's own conflicts stay on the
//     peer;
//   - when the received documents are the ones this unit already holds
//     (same content hash), its apply failures replace the received ones;
//     otherwise the apply failures are cleared and the database is marked
//     to be applied (ApplyPending, also at the next Open after a crash);
//   - an audit record of the restore (rec; Action and Time are filled in).
//
// It returns whether the documents must be applied after the install.
func CarryOver(tx *bbolt.Tx, l *Local, rec AuditRecord) (needApply bool, err error) {
	for _, b := range allBuckets {
		if tx.Bucket(b) == nil {
			return false, fmt.Errorf("%w: received database has no %q bucket", ErrInvalid, b)
		}
	}
	if err := tx.DeleteBucket(bConflicts); err != nil {
		return false, err
	}
	cb, err := tx.CreateBucket(bConflicts)
	if err != nil {
		return false, err
	}
	for _, e := range l.conflicts {
		if err := cb.Put(e.k, e.v); err != nil {
			return false, err
		}
	}
	if err := cb.SetSequence(l.conflictSeq); err != nil {
		return false, err
	}
	blobs := tx.Bucket(bBlobs)
	for _, e := range l.blobs {
		if blobs.Get(e.k) == nil {
			if err := blobs.Put(e.k, e.v); err != nil {
				return false, err
			}
		}
	}
	if err := tx.DeleteBucket(bApplyErr); err != nil {
		return false, err
	}
	ab, err := tx.CreateBucket(bApplyErr)
	if err != nil {
		return false, err
	}
	meta := tx.Bucket(bMeta)
	needApply = readHead(tx).hash != l.head.hash
	if needApply {
		if err := meta.Put(kPendingApply, []byte{1}); err != nil {
			return false, err
		}
	} else {
		for _, e := range l.applyErr {
			if err := ab.Put(e.k, e.v); err != nil {
				return false, err
			}
		}
		if err := meta.Delete(kPendingApply); err != nil {
			return false, err
		}
	}
	rec.Action = AuditRestore
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	return needApply, addAudit(tx, rec)
}

// ApplyPending runs ApplyAll if the database was installed from a
// snapshot whose documents were not applied yet (CarryOver), and clears
// the mark. It reports whether it applied. Hook failures are recorded as
// ApplyAll's and still clear the mark.
func (s *Store) ApplyPending() (bool, error) {
	var pending bool
	if err := s.view(func(tx *bbolt.Tx) error {
		pending = tx.Bucket(bMeta).Get(kPendingApply) != nil
		return nil
	}); err != nil || !pending {
		return false, err
	}
	err := s.ApplyAll()
	if err != nil && !errors.Is(err, ErrApply) {
		return true, err
	}
	s.mu.Lock()
	uerr := s.update(func(tx *bbolt.Tx) error { return tx.Bucket(bMeta).Delete(kPendingApply) })
	s.mu.Unlock()
	return true, errors.Join(err, uerr)
}
