package configsync

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// PublishArgs are config.publish's arguments. Content is the document as a
// JSON string; ContentBase64, when set, takes precedence and carries any
// bytes exactly.
type PublishArgs struct {
	Category      string `json:"category"`
	Name          string `json:"name"`
	Content       string `json:"content,omitempty"`
	ContentBase64 string `json:"content_base64,omitempty"`
	Delete        bool   `json:"delete,omitempty"`
	Message       string `json:"message,omitempty"`
	Author        string `json:"author,omitempty"`
}

// GetArgs are config.get's.
type GetArgs struct {
	Category string `json:"category"`
	Name     string `json:"name"`
	Rev      uint64 `json:"rev,omitempty"`
}

// DiffArgs are config.diff's.
type DiffArgs struct {
	Rev1 uint64 `json:"rev1"`
	Rev2 uint64 `json:"rev2"`
}

// RollbackArgs are config.rollback's.
type RollbackArgs struct {
	Rev    uint64 `json:"rev"`
	Author string `json:"author,omitempty"`
}

// ConflictArgs are config.conflict's: which conflict (ConflictView.ID).
type ConflictArgs struct {
	ID uint64 `json:"id"`
}

// HistoryArgs are config.history's.
type HistoryArgs struct {
	Limit int `json:"limit,omitempty"`
}

// RevisionView is a revision as the control socket shows it.
type RevisionView struct {
	Number   uint64    `json:"number"`
	Author   string    `json:"author"`
	Message  string    `json:"message"`
	Time     time.Time `json:"time"`
	Category string    `json:"category"`
	Name     string    `json:"name"`
	Hash     string    `json:"hash"` // sha256 hex; "" for a deletion
	Deleted  bool      `json:"deleted"`
	Origin   string    `json:"origin"`
}

// View converts a store revision.
func View(r configstore.Revision) RevisionView {
	v := RevisionView{Number: r.Number, Author: r.Author, Message: r.Message, Time: r.Time,
		Category: r.Category, Name: r.Name, Deleted: r.Deleted, Origin: r.Origin}
	if !r.Deleted {
		v.Hash = hex.EncodeToString(r.Hash[:])
	}
	return v
}

// PublishResult is config.publish's and config.rollback's answer.
type PublishResult struct {
	Revision   RevisionView `json:"revision"`
	ApplyError string       `json:"apply_error,omitempty"`
	// DurationMs is the time the daemon took from receiving the request
	// to storing and applying the revision (waiting for the store
	// included): what a writer is held by this unit, without its own
	// round trip to the control socket.
	DurationMs float64 `json:"duration_ms"`
}

// Document is config.get's answer.
type Document struct {
	Revision      RevisionView `json:"revision"`
	ContentBase64 string       `json:"content_base64"`
}

// DocView is one entry of config.list.
type DocView struct {
	Category   string       `json:"category"`
	Name       string       `json:"name"`
	Size       int          `json:"size"`
	Revision   RevisionView `json:"revision"`
	ApplyError string       `json:"apply_error,omitempty"`
}

// ConflictView is one entry of config.conflicts.
type ConflictView struct {
	ID         uint64       `json:"id"`
	Detected   time.Time    `json:"detected"`
	Ancestor   uint64       `json:"ancestor"`
	RemoteHead uint64       `json:"remote_head"`
	Revision   RevisionView `json:"revision"`
}

// PeerView is one peer's synchronization status.
type PeerView struct {
	Peer        string     `json:"peer"`
	Status      string     `json:"status"`
	Role        string     `json:"role"`
	Head        uint64     `json:"head"`
	LastSync    *time.Time `json:"last_sync,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	// The management-database snapshots (see SnapshotView).
	LastSnapshot     *SnapshotView `json:"last_snapshot,omitempty"`
	Snapshots        uint64        `json:"snapshots"` // installed since the daemon started
	SnapshotInFlight bool          `json:"snapshot_in_flight"`
}

// Status is config.status's answer.
type Status struct {
	Node        string     `json:"node"`
	Role        string     `json:"role"` // ACTIVE (writable) or STANDBY (read-only)
	Head        uint64     `json:"head"`
	Hash        string     `json:"hash"` // first 8 bytes of the content hash, hex
	Sync        string     `json:"sync"` // IN_SYNC or OUT_OF_SYNC (this unit's documents applied or not)
	ApplyErrors []string   `json:"apply_errors"`
	Conflicts   int        `json:"conflicts"`
	Resyncing   bool       `json:"resyncing"`
	LinkUp      bool       `json:"link_up"`
	Peers       []PeerView `json:"peers"`
	Errors      []string   `json:"errors"`
}

// IsOp reports whether op is one of the Service's (the daemon routes these).
func IsOp(op string) bool { return strings.HasPrefix(op, "config.") || op == "sync.force" }

func decode(args json.RawMessage, v any) error {
	if len(args) == 0 {
		return nil
	}
	if err := json.Unmarshal(args, v); err != nil {
		return fmt.Errorf("bad arguments: %w", err)
	}
	return nil
}

// slowWrite is the publish or rollback time above which Handle logs where
// the time went: the store lock (a snapshot install) or the commit itself.
const slowWrite = 50 * time.Millisecond

// Handle answers one control request. active says whether this unit is the
// ACTIVE now, activeName and activeAddr which unit is (for the refusal
// message on the STANDBY; empty when not known).
func (s *Service) Handle(op string, args json.RawMessage, active bool, activeName, activeAddr string) (any, error) {
	return s.HandleRequest(op, args, nil, active, activeName, activeAddr)
}

// HandleRequest is Handle with the request's binary payload: the content
// of a publish, sent beside its JSON arguments rather than inside them
// (control.Request.Payload).
func (s *Service) HandleRequest(op string, args json.RawMessage, payload []byte, active bool, activeName, activeAddr string) (any, error) {
	if s.closed.Load() {
		return nil, configstore.ErrClosed
	}
	start := time.Now()
	// Never against a store a snapshot install has closed: wait for it.
	s.storeMu.RLock()
	defer s.storeMu.RUnlock()
	switch op {
	case "config.publish", "config.rollback":
		if !active || !s.active.Load() {
			if activeName == "" {
				s.mu.Lock()
				if s.st.peerKnown && s.st.peerActive {
					activeName = s.st.peerName
				}
				s.mu.Unlock()
			}
			return nil, &ReadOnlyError{Node: s.node, ActiveName: activeName, ActiveAddr: activeAddr}
		}
		write := s.rollback
		if op == "config.publish" {
			write = func(args json.RawMessage) (any, error) { return s.publish(args, payload) }
		}
		locked := time.Now()
		v, err := write(args)
		if r, ok := v.(PublishResult); ok {
			took := time.Since(start)
			r.DurationMs = float64(took.Microseconds()) / 1000
			v = r
			if took > slowWrite {
				attrs := []any{"op", op, "revision", r.Revision.Number, "took", took.Round(time.Microsecond),
					"store_lock_wait", locked.Sub(start).Round(time.Microsecond), "commit_and_apply", time.Since(locked).Round(time.Microsecond)}
				if op == "config.publish" {
					wt := s.store.LastPublishTimes()
					attrs = append(attrs, "writer_wait", wt.LockWait.Round(time.Microsecond), "bbolt_begin", wt.Begin.Round(time.Microsecond),
						"build", wt.Build.Round(time.Microsecond), "commit", wt.Commit.Round(time.Microsecond), "apply", wt.Apply.Round(time.Microsecond))
				}
				s.log.Info("config sync: slow write", attrs...)
			}
		}
		return v, err
	case "config.get":
		var a GetArgs
		if err := decode(args, &a); err != nil {
			return nil, err
		}
		c, r, err := s.store.Get(a.Category, a.Name, a.Rev)
		if err != nil {
			return nil, err
		}
		return Document{Revision: View(r), ContentBase64: base64.StdEncoding.EncodeToString(c)}, nil
	case "config.list":
		docs, err := s.store.List()
		if err != nil {
			return nil, err
		}
		out := []DocView{}
		for _, d := range docs {
			out = append(out, DocView{Category: d.Category, Name: d.Name, Size: d.Size, Revision: View(d.Revision), ApplyError: d.ApplyError})
		}
		return out, nil
	case "config.history":
		var a HistoryArgs
		if err := decode(args, &a); err != nil {
			return nil, err
		}
		revs, err := s.store.History(a.Limit)
		if err != nil {
			return nil, err
		}
		out := []RevisionView{}
		for _, r := range revs {
			out = append(out, View(r))
		}
		return out, nil
	case "config.diff":
		var a DiffArgs
		if err := decode(args, &a); err != nil {
			return nil, err
		}
		return s.store.Diff(a.Rev1, a.Rev2)
	case "config.conflicts":
		cs, err := s.store.Conflicts()
		if err != nil {
			return nil, err
		}
		out := []ConflictView{}
		for _, c := range cs {
			out = append(out, ConflictView{ID: c.ID, Detected: c.Detected, Ancestor: c.Ancestor, RemoteHead: c.RemoteHead, Revision: View(c.Revision)})
		}
		return out, nil
	case "config.conflict":
		// One set-aside revision with its content: nothing a partition
		// set aside is out of the operator's reach.
		var a ConflictArgs
		if err := decode(args, &a); err != nil {
			return nil, err
		}
		c, err := s.store.ConflictContent(a.ID)
		if err != nil {
			return nil, err
		}
		cs, err := s.store.Conflicts()
		if err != nil {
			return nil, err
		}
		for _, x := range cs {
			if x.ID == a.ID {
				return Document{Revision: View(x.Revision), ContentBase64: base64.StdEncoding.EncodeToString(c)}, nil
			}
		}
		return nil, fmt.Errorf("conflict %d: %w", a.ID, configstore.ErrNotFound)
	case "config.status":
		return s.status(active), nil
	case "sync.force":
		s.mu.Lock()
		ok := s.st.linkUp && s.st.peerKnown
		s.mu.Unlock()
		if !ok {
			return nil, errors.New("cannot resynchronize the configuration: the peer is not connected (see `tandem status`)")
		}
		s.enqueue(event{kind: evForce})
		return s.status(active), nil
	}
	return nil, fmt.Errorf("unknown configuration operation %q", op)
}

func (s *Service) publish(args json.RawMessage, payload []byte) (any, error) {
	var a PublishArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	content := []byte(a.Content)
	if payload != nil {
		if a.Content != "" || a.ContentBase64 != "" {
			return nil, errors.New("publish: the content came twice, as the request's payload and in content or content_base64; send it once")
		}
		content = payload
	}
	if a.ContentBase64 != "" {
		var err error
		if content, err = base64.StdEncoding.DecodeString(a.ContentBase64); err != nil {
			return nil, fmt.Errorf("content_base64: %w", err)
		}
	}
	if len(content) > maxDocument {
		return nil, fmt.Errorf("document %s/%s is %d bytes; at most %d bytes are accepted", a.Category, a.Name, len(content), maxDocument)
	}
	if a.Author == "" {
		a.Author = "unknown"
	}
	r, err := s.store.Publish(configstore.Publish{Category: a.Category, Name: a.Name, Content: content, Delete: a.Delete, Author: a.Author, Message: a.Message})
	return s.written(r, err)
}

func (s *Service) rollback(args json.RawMessage) (any, error) {
	var a RollbackArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	if a.Author == "" {
		a.Author = "unknown"
	}
	r, err := s.store.Rollback(a.Rev, a.Author, time.Time{})
	return s.written(r, err)
}

// written answers a publish or rollback: a failed apply still stored the
// revision, which is replicated and reported.
func (s *Service) written(r configstore.Revision, err error) (any, error) {
	if r.Number == 0 {
		if errors.Is(err, configstore.ErrReadOnly) {
			return nil, &ReadOnlyError{Node: s.node}
		}
		return nil, err
	}
	s.enqueue(event{kind: evKick})
	res := PublishResult{Revision: View(r)}
	if err != nil {
		res.ApplyError = err.Error()
		return nil, fmt.Errorf("revision %d stored and sent to the peer, but it failed to apply on this unit: %w", r.Number, err)
	}
	return res, nil
}

// status is Status with the store lock held.
func (s *Service) status(active bool) Status {
	head, hash := s.Head()
	st := Status{Node: s.node, Role: "STANDBY", Head: head, Hash: hex.EncodeToString(hash[:]), Sync: "IN_SYNC",
		ApplyErrors: s.applyErrors(), Errors: []string{}, Peers: []PeerView{}}
	if active {
		st.Role = "ACTIVE"
	}
	if st.ApplyErrors == nil {
		st.ApplyErrors = []string{}
	}
	if len(st.ApplyErrors) > 0 {
		st.Sync = "OUT_OF_SYNC"
	}
	chain := s.chainAt(head)
	if cs, err := s.store.Conflicts(); err == nil {
		st.Conflicts = len(cs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.LinkUp, st.Resyncing = s.st.linkUp, s.st.resyncing
	st.Errors = append(st.Errors, s.st.errors...)
	if s.st.schemaErr != "" {
		st.Errors = append(st.Errors, s.st.schemaErr)
	}
	ps := s.st.sync
	connected := s.st.linkUp && s.st.peerKnown && s.st.schemaErr == ""
	ps.Refresh(s.ha, connected, active && (s.st.peerKnown && s.st.peerActive || s.peerHA.Load()))
	if connected && ps.Status == snapshot.StatusSynchronized {
		// The last attempt succeeded; still not synchronized while the
		// standby lacks revisions or failed to apply some.
		switch {
		case active && s.st.peerErr != "":
			ps.Status, ps.LastError = snapshot.StatusNotSynced, s.st.peerErr
		case !active && len(st.ApplyErrors) > 0:
			ps.Status, ps.LastError = snapshot.StatusNotSynced, strings.Join(st.ApplyErrors, "; ")
		case active && s.st.peerHead != head:
			ps.Status = snapshot.StatusNotSynced
		}
	}
	if connected && ps.Status == snapshot.StatusNotSynced && ps.LastAttempt.IsZero() && s.st.peerHead == head && s.st.peerHash == chain && s.st.peerActive != active {
		ps.Status = snapshot.StatusSynchronized // nothing to send: same head
	}
	pv := PeerView{Peer: ps.Peer, Status: ps.Status, Head: s.st.peerHead, LastError: ps.LastError, Role: "unknown"}
	if s.st.peerKnown {
		pv.Role = "STANDBY"
		if s.st.peerActive {
			pv.Role = "ACTIVE"
		}
	}
	if !ps.LastSync.IsZero() {
		t := ps.LastSync
		pv.LastSync = &t
	}
	if !ps.LastAttempt.IsZero() {
		t := ps.LastAttempt
		pv.LastAttempt = &t
	}
	s.snapView(&pv)
	st.Peers = append(st.Peers, pv)
	return st
}
