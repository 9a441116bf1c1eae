package configsync

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
	"github.com/tandem-ha/tandem/internal/syncchan"
)

// frameVersion is the version of the frame format below. 2: revisions
// travel in binary rev frames.
const frameVersion = 2

// revTag starts a binary rev frame: tag, u32 length (big-endian) of the
// JSON frame that follows (the revision, without its content), then the
// content chunk raw. JSON with base64 content cost the standby ~2-4 ms of
// decoding per 100 KB, as much as its bbolt commit.
const (
	revTag = 'R'
	revHdr = 1 + 4
)

// Frame types.
const (
	tHello  = "hello"  // both ways on Up and on a role change: who I am, my role and head
	tHead   = "head"   // STANDBY -> ACTIVE: my head (answer to a hello, after a divergence or a gap)
	tHashes = "hashes" // ACTIVE -> STANDBY: my history hashes, to find the common ancestor
	tRev    = "rev"    // ACTIVE -> STANDBY: one revision (or one chunk of it)
	tAck    = "ack"    // STANDBY -> ACTIVE: applied up to head; Err: apply failures
	tResync = "resync" // STANDBY -> ACTIVE: sync.force asked on the standby
)

// maxHashes bounds a hashes frame (32 bytes each, base64 in JSON).
const maxHashes = 65536

// frame is one KindExtra frame body. JSON: easy to read in a capture;
// the content of a revision follows its JSON raw (revTag).
type frame struct {
	V      int    `json:"v"`
	Schema int    `json:"schema"`
	Type   string `json:"t"`
	Node   string `json:"node,omitempty"`
	Active bool   `json:"active,omitempty"`
	Head   uint64 `json:"head"`
	Chain  []byte `json:"chain,omitempty"` // HashAt(Head)
	Full   bool   `json:"full,omitempty"`
	Err    string `json:"err,omitempty"`
	// hashes: HashAt(From), HashAt(From+1), ... concatenated.
	From   uint64 `json:"from,omitempty"`
	Hashes []byte `json:"hashes,omitempty"`
	// rev: the revision and one chunk of its content.
	Rev     *wireRev `json:"rev,omitempty"`
	Chunk   int      `json:"chunk,omitempty"`
	Chunks  int      `json:"chunks,omitempty"`
	Content []byte   `json:"-"` // after the JSON in a binary rev frame
}

type wireRev struct {
	Number   uint64    `json:"n"`
	Author   string    `json:"author"`
	Message  string    `json:"msg,omitempty"`
	Time     time.Time `json:"time"`
	Category string    `json:"cat"`
	Name     string    `json:"name"`
	Hash     []byte    `json:"hash,omitempty"`
	Deleted  bool      `json:"deleted,omitempty"`
	Origin   string    `json:"origin,omitempty"`
}

func toWire(r configstore.Revision) wireRev {
	w := wireRev{Number: r.Number, Author: r.Author, Message: r.Message, Time: r.Time,
		Category: r.Category, Name: r.Name, Deleted: r.Deleted, Origin: r.Origin}
	if !r.Deleted {
		w.Hash = append([]byte(nil), r.Hash[:]...)
	}
	return w
}

func (w wireRev) revision() (configstore.Revision, error) {
	r := configstore.Revision{Number: w.Number, Author: w.Author, Message: w.Message, Time: w.Time,
		Category: w.Category, Name: w.Name, Deleted: w.Deleted, Origin: w.Origin}
	if len(w.Hash) != 0 && len(w.Hash) != 32 {
		return r, fmt.Errorf("revision %d: hash of %d bytes", w.Number, len(w.Hash))
	}
	copy(r.Hash[:], w.Hash)
	return r, nil
}

func (s *Service) newFrame(t string) frame {
	head, _ := s.store.Head()
	c := s.chainAt(head)
	return frame{V: frameVersion, Schema: s.schema, Type: t, Node: s.node, Active: s.active.Load(), Head: head, Chain: c[:]}
}

func (s *Service) sendFrames(fs ...frame) error {
	if s.send == nil {
		return errors.New("the sync channel to the peer is down")
	}
	out := make([][]byte, 0, len(fs))
	for _, f := range fs {
		b, err := encodeFrame(f)
		if err != nil {
			return err
		}
		out = append(out, b)
	}
	return s.send(out...)
}

// encodeFrame is JSON, or a binary rev frame for a revision.
func encodeFrame(f frame) ([]byte, error) {
	j, err := json.Marshal(f)
	if err != nil || f.Type != tRev {
		return j, err
	}
	b := make([]byte, 0, revHdr+len(j)+len(f.Content))
	b = append(b, revTag)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j)))
	b = append(b, j...)
	return append(b, f.Content...), nil
}

// decodeFrame reads a JSON frame or a binary rev frame; a rev frame's
// Content aliases b.
func decodeFrame(b []byte, f *frame) error {
	if len(b) == 0 || b[0] != revTag {
		return json.Unmarshal(b, f)
	}
	if len(b) < revHdr {
		return fmt.Errorf("short rev frame (%d bytes)", len(b))
	}
	n := binary.BigEndian.Uint32(b[1:])
	if uint64(n) > uint64(len(b)-revHdr) {
		return fmt.Errorf("rev frame header of %d bytes in a frame of %d", n, len(b))
	}
	if err := json.Unmarshal(b[revHdr:revHdr+int(n)], f); err != nil {
		return err
	}
	if f.Type != tRev {
		return fmt.Errorf("binary frame of type %q, want %q", f.Type, tRev)
	}
	f.Content = b[revHdr+int(n):]
	return nil
}

func (s *Service) run() {
	defer close(s.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
			s.periodic()
		case <-s.signal:
			for {
				s.yield.Pause()
				ev, ok := s.next()
				if !ok {
					break
				}
				select {
				case <-s.stop:
					return
				default:
				}
				s.handleEvent(ev)
			}
		}
	}
}

// next takes the next event off the queue. A revision frame goes before
// the snapshot frames queued ahead of it (and only those): applying it
// must not wait for megabytes of snapshot data to be staged. That is
// safe: snapshot frames keep their order among themselves, every other
// event keeps its place, and a snapshot overtaken by a revision is at
// worst refused as stale, which the publish behind that revision has
// already asked the ACTIVE to follow with another snapshot.
func (s *Service) next() (event, bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.queue) == 0 {
		return event{}, false
	}
	i := 0
	for i < len(s.queue) && s.queue[i].snapshotFrame() {
		i++
	}
	if i == len(s.queue) || i > 0 && !s.queue[i].revFrame() {
		i = 0
	}
	ev := s.queue[i]
	if i == 0 {
		s.queue[0] = event{} // release the frame
		s.queue = s.queue[1:]
	} else {
		s.queue = slices.Delete(s.queue, i, i+1)
	}
	if len(s.queue) == 0 {
		s.queue = nil
	}
	return ev, true
}

// snapshotFrame: a snapshot stream frame (data, begin, end, abort) from
// the ACTIVE.
func (ev *event) snapshotFrame() bool {
	if ev.kind != evFrame || len(ev.b) == 0 {
		return false
	}
	if ev.b[0] == snapDataTag {
		return true
	}
	switch frameType(ev.b) {
	case tSnapBegin, tSnapEnd, tSnapAbort:
		return true
	}
	return false
}

func (ev *event) revFrame() bool {
	return ev.kind == evFrame && len(ev.b) > 0 && ev.b[0] == revTag
}

// frameType peeks at a JSON frame's type without decoding it: "t" is the
// third field json.Marshal writes (frame's field order).
func frameType(b []byte) string {
	head := b[:min(len(b), 64)]
	i := bytes.Index(head, []byte(`"t":"`))
	if i < 0 {
		return ""
	}
	rest := head[i+5:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

func (s *Service) handleEvent(ev event) {
	if ev.kind != evFrame || len(ev.b) == 0 || ev.b[0] != snapDataTag {
		defer s.reportSync()
	}
	switch ev.kind {
	case evUp:
		s.snapDown("a new sync channel session began")
		s.send, s.partial, s.sentUpTo = ev.send, nil, 0
		s.mu.Lock()
		s.st.linkUp, s.st.peerKnown = true, false
		s.mu.Unlock()
		s.sayHello()
	case evDown:
		s.snapDown("the sync channel went down")
		s.send, s.partial = nil, nil
		s.mu.Lock()
		s.st.linkUp, s.st.peerKnown, s.st.resyncing = false, false, false
		s.mu.Unlock()
	case evRole:
		s.snapDown("this unit's role changed")
		s.sayHello()
	case evKick:
		s.push()
		s.snapWant()
	case evForce:
		s.force()
	case evFrame:
		if ev.send != nil {
			s.send = ev.send
		}
		s.onFrame(ev.b)
	default:
		s.snapEvent(ev)
	}
}

func (s *Service) sayHello() {
	if s.send == nil {
		return
	}
	if err := s.sendFrames(s.newFrame(tHello)); err != nil {
		s.recordError("send hello to the peer: %v", err)
	}
}

// peerIsStandby: this unit is ACTIVE and the peer a STANDBY that speaks our
// schema: the peer is ours to feed.
func (s *Service) peerIsStandby() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active.Load() && s.st.linkUp && s.st.peerKnown && !s.st.peerActive && s.st.schemaErr == ""
}

func (s *Service) peerIsActive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.active.Load() && s.st.peerKnown && s.st.peerActive && s.st.schemaErr == ""
}

func (s *Service) onFrame(b []byte) {
	if len(b) > 0 && b[0] == snapDataTag {
		s.onSnapData(b)
		return
	}
	var f frame
	if err := decodeFrame(b, &f); err != nil {
		s.recordError("bad frame from the peer: %v", err)
		return
	}
	if f.V != frameVersion {
		s.recordError("the peer sends config-sync frame format %d, this unit reads %d: run the same tandem version on both units", f.V, frameVersion)
		return
	}
	if f.Schema != s.schema {
		msg := fmt.Sprintf("the peer %s reads configuration schema %d, this unit %d: configuration sync refused until both units run the same schema", f.Node, f.Schema, s.schema)
		s.mu.Lock()
		first := s.st.schemaErr == ""
		s.st.schemaErr, s.st.peerKnown, s.st.peerName = msg, true, f.Node
		s.mu.Unlock()
		if first {
			s.recordError("%s", msg)
		}
		return
	}
	s.mu.Lock()
	s.st.schemaErr = ""
	if f.Type == tHello || f.Type == tHead || f.Type == tAck || f.Type == tResync {
		s.st.peerKnown, s.st.peerName, s.st.peerActive = true, f.Node, f.Active
		s.st.peerHead = f.Head
		copy(s.st.peerHash[:], f.Chain)
		s.st.sync.Peer = f.Node
	}
	s.mu.Unlock()

	switch f.Type {
	case tHello:
		switch {
		case s.active.Load() && f.Active:
			s.recordError("collision: the peer %s is ACTIVE too; configuration is not synchronized until one unit steps down", f.Node)
		case s.active.Load():
			if !s.syncPeer(f.Head, f.Chain, false) {
				s.snapWant()
			}
		case f.Active:
			if err := s.sendFrames(s.standbyFrame(tHead)); err != nil {
				s.recordError("send head to the peer: %v", err)
			}
		}
	case tHead, tResync:
		if s.peerIsStandby() {
			s.onAck(f)
			s.syncPeer(f.Head, f.Chain, f.Type == tResync)
			s.snapPeerSeen()
		}
	case tAck:
		s.onAck(f)
		// The standby applied a revision: the channel has drained some.
		if s.pushHeld {
			s.push()
		}
	case tHashes:
		if s.peerIsActive() {
			s.onHashes(f)
		}
	case tRev:
		if s.peerIsActive() {
			s.onRev(f)
		}
	case tSnapBegin, tSnapEnd, tSnapAbort, tSnapResult, tSnapProgress:
		s.onSnapFrame(f, b)
	default:
		s.recordError("unknown config-sync frame %q from the peer", f.Type)
	}
}

// standbyFrame is a head/ack frame carrying the standby's apply failures.
func (s *Service) standbyFrame(t string) frame {
	f := s.newFrame(t)
	f.Err = strings.Join(s.applyErrors(), "; ")
	return f
}

// ---- ACTIVE side ----

// syncPeer brings a standby at peerHead (history hash chain) to this
// unit's head: the missing revisions when its history is a prefix of ours,
// else our history hashes so that it sets its divergent revisions aside.
// It reports whether a snapshot now stands for the missing history
// (catchUpBySnapshot).
func (s *Service) syncPeer(peerHead uint64, chain []byte, full bool) (bySnapshot bool) {
	head, _ := s.store.Head()
	if !full && peerHead <= head {
		if mine, ok := s.store.HashAt(peerHead); ok && sameBytes(mine[:], chain) {
			if s.catchUpBySnapshot(peerHead, head) {
				return true
			}
			// What was queued after peerHead is on its way (the channel
			// is ordered and loses nothing within a session, which
			// starts again from 0): sending it again would only queue
			// duplicates; the periodic check covers a refused one.
			s.sentUpTo = max(s.sentUpTo, peerHead)
			s.push()
			return false
		}
	}
	top := min(head, peerHead)
	if full {
		top = head
	}
	from := uint64(1)
	if top >= maxHashes {
		from = top - maxHashes + 1
	}
	f := s.newFrame(tHashes)
	f.Full, f.From = full, from
	for n := from; n <= top; n++ {
		h, ok := s.store.HashAt(n)
		if !ok {
			break
		}
		f.Hashes = append(f.Hashes, h[:]...)
	}
	s.sentUpTo = head // nothing more until the standby answers with its head
	if err := s.sendFrames(f); err != nil {
		s.recordError("send history hashes to the peer: %v", err)
	}
	return false
}

// DefaultCatchUpSnapshotBytes is Options.CatchUpSnapshotBytes' default.
const DefaultCatchUpSnapshotBytes = 32 << 20

// catchUpBySnapshot brings a standby far behind (a new unit, its database
// empty) to the head with one snapshot of the database instead of the
// whole history revision by revision: it used to get both, the history
// first, then the snapshot a connecting standby gets anyway — twice the
// bytes, and the standby committing and applying every revision. The
// missing bytes are estimated from the database's size, in proportion to
// the revisions missing. Revisions published meanwhile follow the install
// (onSnapResult); a standby that reports a gap meanwhile is not answered
// with the history.
func (s *Service) catchUpBySnapshot(peerHead, head uint64) bool {
	w := &s.snap
	if w.catchUp {
		return true // under way
	}
	if w.catchUpBytes < 0 || head <= peerHead+1 || s.send == nil {
		return false
	}
	fi, err := os.Stat(s.store.get().Path())
	if err != nil || fi.Size()/int64(head)*int64(head-peerHead) < w.catchUpBytes {
		return false
	}
	s.log.Info("config sync: catching the standby up with a snapshot rather than its missing history", "peer_head", peerHead, "head", head, "database_bytes", fi.Size())
	w.catchUp, w.greeted = true, true
	s.sentUpTo = head
	if w.busy || w.taking {
		w.again = true
	} else {
		s.snapStart()
	}
	return true
}

// pushBatchBytes bounds the revision contents push reads from the store
// at a time.
const pushBatchBytes = 4 << 20

// push sends the revisions after sentUpTo to the standby, a batch at a
// time, until it is caught up or the channel pushes back. Backpressure is
// not an error: a standby that lacks a long history (a new unit, or one
// restarted with an old database) fills the channel's queue, and the rest
// follows at the standby's next acknowledgement, tick or publish.
// Measured before the batches: an empty standby made the ACTIVE copy its
// whole 240 MB history into memory again at every publish, and hold
// publishes for up to 680 ms (BENCHMARKS.md, finding 14).
func (s *Service) push() {
	s.pushHeld = false
	if !s.peerIsStandby() || s.snap.catchUp {
		return // a catch-up snapshot is on its way: the rest follows it
	}
	for {
		head, _ := s.store.Head()
		if s.sentUpTo >= head {
			return
		}
		revs, contents, err := s.store.SinceBounded(s.sentUpTo, pushBatchBytes)
		if err != nil {
			s.recordError("read revisions after %d: %v", s.sentUpTo, err)
			return
		}
		s.lastPush = s.now()
		for i, r := range revs {
			s.yield.Pause()
			var fs []frame
			c := contents[i]
			n := max(1, (len(c)+ChunkSize-1)/ChunkSize)
			w := toWire(r)
			for k := range n {
				f := frame{V: frameVersion, Schema: s.schema, Type: tRev, Node: s.node, Active: true, Head: r.Number, Rev: &w, Chunk: k, Chunks: n}
				f.Content = c[min(k*ChunkSize, len(c)):min((k+1)*ChunkSize, len(c))]
				fs = append(fs, f)
			}
			if err := s.sendFrames(fs...); err != nil {
				if errors.Is(err, syncchan.ErrBackpressure) {
					s.pushHeld = true
					return
				}
				// The periodic check sends them again from the peer's head.
				s.recordError("send revision %d to the peer: %v", r.Number, err)
				return
			}
			s.sentUpTo = r.Number
		}
	}
}

func (s *Service) onAck(f frame) {
	if !s.active.Load() {
		return
	}
	head, _ := s.store.Head()
	s.mu.Lock()
	s.st.peerErr = f.Err
	s.st.resyncing = s.st.resyncing && f.Head < head
	now := s.now()
	switch {
	case f.Err != "":
		s.st.sync.Record(snapshot.Result{Finished: now, Error: f.Err})
	case f.Head == head:
		mine := s.chainAt(head)
		if sameBytes(mine[:], f.Chain) {
			s.st.sync.Record(snapshot.Result{Finished: now, OK: true})
		} else {
			s.st.sync.Record(snapshot.Result{Finished: now, Error: "the peer's history differs at the same head"})
		}
	}
	s.mu.Unlock()
}

// periodic resends what the standby lacks after a failed send, and keeps the
// recorded status fresh.
func (s *Service) periodic() {
	if !s.peerIsStandby() {
		return
	}
	head, _ := s.store.Head()
	s.mu.Lock()
	peerHead := s.st.peerHead
	s.mu.Unlock()
	switch {
	case s.pushHeld:
		s.push()
	case peerHead < head && s.now().Sub(s.lastPush) > 3*time.Second:
		s.sentUpTo = peerHead
		s.push()
	}
}

// force is sync.force: a full resynchronization from the ACTIVE.
func (s *Service) force() {
	s.mu.Lock()
	s.st.resyncing = true
	s.mu.Unlock()
	switch {
	case s.peerIsStandby():
		s.mu.Lock()
		peerHead := s.st.peerHead
		s.mu.Unlock()
		s.syncPeer(peerHead, nil, true)
	case s.peerIsActive():
		if err := s.sendFrames(s.standbyFrame(tResync)); err != nil {
			s.recordError("ask the ACTIVE for a resync: %v", err)
		}
	default:
		s.mu.Lock()
		s.st.resyncing = false
		s.mu.Unlock()
	}
}

// ---- STANDBY side ----

func (s *Service) onHashes(f frame) {
	remote := func(n uint64) ([32]byte, bool) {
		var h [32]byte
		if n < f.From || n > f.From+uint64(len(f.Hashes)/32)-1 || len(f.Hashes) == 0 {
			return h, false
		}
		i := int(n-f.From) * 32
		copy(h[:], f.Hashes[i:i+32])
		return h, true
	}
	d, err := s.store.Divergent(f.Head, remote)
	if err != nil && !errors.Is(err, configstore.ErrApply) {
		s.recordError("reconcile with the ACTIVE's history: %v", err)
		return
	}
	if len(d.Moved) > 0 {
		s.recordError("history diverged from the ACTIVE %s after revision %d: %d local revision(s) set aside as conflicts (see `tandem config conflicts`)", f.Node, d.Ancestor, len(d.Moved))
	}
	if f.Full {
		if err := s.store.ApplyAll(); err != nil {
			s.recordError("re-apply every document: %v", err)
		}
	}
	s.partial = nil
	if err := s.sendFrames(s.standbyFrame(tHead)); err != nil {
		s.recordError("send head to the peer: %v", err)
	}
}

func (s *Service) onRev(f frame) {
	if f.Rev == nil || f.Chunks < 1 || f.Chunk < 0 || f.Chunk >= f.Chunks {
		s.recordError("malformed revision frame from the peer")
		return
	}
	if f.Chunks > 1 {
		p := s.partial
		if p == nil || p.rev.Number != f.Rev.Number || len(p.parts) != f.Chunks {
			p = &partialRev{rev: *f.Rev, parts: make([][]byte, f.Chunks)}
			s.partial = p
		}
		if p.parts[f.Chunk] == nil {
			p.got++
		}
		p.parts[f.Chunk] = append([]byte{}, f.Content...)
		if p.got < f.Chunks {
			return
		}
		s.partial = nil
		var all []byte
		for _, b := range p.parts {
			all = append(all, b...)
		}
		f.Content = all
	}
	r, err := f.Rev.revision()
	if err != nil {
		s.recordError("revision from the peer: %v", err)
		return
	}
	if head, _ := s.store.Head(); r.Number <= head {
		return // already here (a resend)
	}
	err = s.store.ApplyReplicated(r, f.Content)
	now := s.now()
	switch {
	case err == nil:
		s.mu.Lock()
		s.st.sync.Record(snapshot.Result{Finished: now, OK: true})
		s.mu.Unlock()
	case errors.Is(err, configstore.ErrApply):
		s.recordError("revision %d from %s stored but its apply hook failed; this unit is OUT_OF_SYNC for configuration: %v", r.Number, f.Node, err)
		s.mu.Lock()
		s.st.sync.Record(snapshot.Result{Finished: now, Error: err.Error()})
		s.mu.Unlock()
	case errors.Is(err, configstore.ErrGap), errors.Is(err, configstore.ErrHashMismatch):
		s.log.Info("config sync: asking the ACTIVE to resend", "err", err)
		if err := s.sendFrames(s.standbyFrame(tHead)); err != nil {
			s.recordError("send head to the peer: %v", err)
		}
		return
	default:
		s.recordError("store revision %d from %s: %v", r.Number, f.Node, err)
		s.mu.Lock()
		s.st.sync.Record(snapshot.Result{Finished: now, Error: err.Error()})
		s.mu.Unlock()
	}
	if err := s.sendFrames(s.standbyFrame(tAck)); err != nil {
		s.recordError("acknowledge revision %d: %v", r.Number, err)
	}
}
