package statesync

import (
	"errors"
	"os"
	"time"

	"github.com/tandem-ha/tandem/internal/ctsync"
	"github.com/tandem-ha/tandem/internal/repl"
)

// Checkpoints let a restarted standby resume the replication stream
// instead of receiving and reconciling a full copy (at a million
// connections: under a second instead of about five).
//
// While IN_SYNC, the standby saves the conntrack Sink's record of what it
// wrote into the kernel together with the replication engine's position
// (ctsync.Sink.Checkpoint, repl.Sink.Position): when the stream has been
// quiet for checkpointQuiet and the last checkpoint is checkpointEvery
// old, or at the latest checkpointForce after it however busy the stream
// is, and when the daemon stops. The record is written by the sink's
// kernel writer once everything queued before is in the kernel (70 ms
// of that goroutine's time per million entries to encode, 26 bytes per
// entry: BenchmarkEncodeCheckpoint), never by this loop; a promotion
// abandons it.
//
// At the first start of the sink the checkpoint is loaded and checked
// against the kernel (ctsync.Sink.LoadCheckpoint); the engine resumes
// from its position (repl.Sink.Resume) and the ACTIVE continues the stream
// after it — or, when it cannot (another ACTIVE run, changes no longer in
// its retransmit window) or its digests differ, sends a full copy as
// before. The file is removed when the unit becomes ACTIVE: its kernel
// then stops being a copy of anyone's.
//
// Not with dynamic nft sets: their sink keeps no record that a restart
// could check against the kernel's sets (a ruleset reloaded while the
// daemon was down empties them), so a unit that synchronizes sets always
// takes a full copy.
const (
	checkpointQuiet = 200 * time.Millisecond
	checkpointEvery = 10 * time.Second
	checkpointForce = 2 * time.Minute
	// finalCheckpointWait bounds how long a stopping daemon waits for its
	// last checkpoint.
	finalCheckpointWait = 3 * time.Second
)

type checkpointState struct {
	started     bool      // the sink has started once (the checkpoint is loaded only then)
	busy        bool      // a checkpoint is being written
	saved       streamPos // position of the last checkpoint written or loaded
	at          time.Time // when it was taken (zero: none this run)
	held        streamPos // the sink's position as last published
	seen        streamPos // ... at the last look
	seqChanged  time.Time // when it last changed
	failures    int
	lastFailure string
}

// streamPos is a point of one source run's stream.
type streamPos struct{ source, seq uint64 }

type checkpointResult struct {
	pos  streamPos
	info ctsync.CheckpointInfo
	err  error
}

func (e *Engine) checkpointsOn() bool {
	return e.cfg.CheckpointPath != "" && e.cfg.Conntrack && e.cfg.Mode == ctsync.Inject && len(e.cfg.NftSets) == 0
}

// resumeFromCheckpoint loads the checkpoint into the new sink (called once,
// at the first start of the sink, before it connects).
func (e *Engine) resumeFromCheckpoint() {
	if !e.checkpointsOn() || e.store == nil || e.store.ct == nil {
		return
	}
	b, info, err := e.store.ct.LoadCheckpoint(e.cfg.CheckpointPath)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		e.log.Info("state sync: no resume from the checkpoint; the ACTIVE sends a full copy", "reason", err)
		return
	}
	pos, err := repl.ParsePosition(b)
	if err == nil {
		err = e.sink.Resume(pos)
	}
	if err != nil {
		// The record stays: a full copy treats it as what this unit wrote
		// before (stale until replicated again).
		e.log.Warn("state sync: checkpoint position unusable; the ACTIVE sends a full copy", "err", err)
		return
	}
	e.ckpt.saved = streamPos{pos.SourceID, pos.Seq}
	e.ckpt.seen = e.ckpt.saved
	e.log.Info("state sync: resuming from the checkpoint", "seq", pos.Seq, "flows", info.Flows,
		"expectations", info.Expectations, "age", time.Since(info.Saved).Round(time.Millisecond), "took", info.Took)
}

// canCheckpoint: checkpoints on, a conntrack sink whose kernel has
// settled, none being written.
func (e *Engine) canCheckpoint() bool {
	return e.checkpointsOn() && !e.ckpt.busy && e.sink != nil && e.store != nil && e.store.ct != nil && e.settled
}

// checkpointPosition is the sink's position when a checkpoint may be
// taken (the engine IN_SYNC as well).
func (e *Engine) checkpointPosition() (repl.Position, bool) {
	if !e.canCheckpoint() {
		return repl.Position{}, false
	}
	return e.sink.Position()
}

// checkpointDue is when the next checkpoint may be taken (zero: none
// wanted now).
func (e *Engine) checkpointDue() time.Time {
	if !e.canCheckpoint() || e.lastSync != repl.SyncInSync || e.ckpt.seen == e.ckpt.saved {
		return time.Time{}
	}
	t := later(e.ckpt.seqChanged.Add(checkpointQuiet), e.ckpt.at.Add(checkpointEvery))
	if f := e.ckpt.at.Add(checkpointForce); !e.ckpt.at.IsZero() && f.Before(t) {
		t = f
	}
	return t
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// maybeCheckpoint starts a checkpoint when one is due.
func (e *Engine) maybeCheckpoint(now time.Time) {
	if e.sink == nil {
		return
	}
	if e.ckpt.held != e.ckpt.seen {
		e.ckpt.seen, e.ckpt.seqChanged = e.ckpt.held, now
	}
	due := e.checkpointDue()
	if due.IsZero() || now.Before(due) {
		return
	}
	e.startCheckpoint(now)
}

func (e *Engine) startCheckpoint(now time.Time) bool {
	e.ckpt.at = now // also when refused: the next try is checkpointEvery later
	pos, ok := e.checkpointPosition()
	if !ok {
		return false
	}
	e.ckpt.busy = true
	done := e.ckptDone
	at := streamPos{pos.SourceID, pos.Seq}
	e.store.ct.Checkpoint(e.cfg.CheckpointPath, repl.AppendPosition(nil, pos), func(info ctsync.CheckpointInfo, err error) {
		done <- checkpointResult{pos: at, info: info, err: err}
	})
	return true
}

func (e *Engine) checkpointDone(r checkpointResult) {
	e.ckpt.busy = false
	switch {
	case e.active:
		// Promoted meanwhile: the record describes a standby's kernel.
		e.dropCheckpoint()
	case r.err != nil:
		e.ckpt.failures++
		if msg := r.err.Error(); msg != e.ckpt.lastFailure {
			e.ckpt.lastFailure = msg
			e.log.Warn("state sync: checkpoint not written", "err", r.err)
		}
	default:
		e.ckpt.saved = r.pos
		e.log.Debug("state sync: checkpoint written", "seq", r.pos.seq, "flows", r.info.Flows, "bytes", r.info.Bytes, "took", r.info.Took)
	}
}

// finalCheckpoint saves the standby's position as the daemon stops, so
// that its next start resumes from exactly here.
func (e *Engine) finalCheckpoint(now time.Time) {
	if e.ckpt.busy {
		select { // the one being written may be older: wait for it
		case r := <-e.ckptDone:
			e.checkpointDone(r)
		case <-time.After(finalCheckpointWait):
			return
		}
	}
	if pos, ok := e.checkpointPosition(); !ok || (streamPos{pos.SourceID, pos.Seq}) == e.ckpt.saved {
		return
	}
	if !e.startCheckpoint(now) {
		return
	}
	select {
	case r := <-e.ckptDone:
		e.checkpointDone(r)
		if r.err == nil {
			e.log.Info("state sync: checkpoint written for the next start", "seq", r.pos.seq, "flows", r.info.Flows, "took", r.info.Took)
		}
	case <-time.After(finalCheckpointWait):
		e.log.Warn("state sync: the last checkpoint took too long; the next start may need a full copy")
	}
}

// dropCheckpoint removes the checkpoint: this unit's kernel is no longer a
// standby's copy.
func (e *Engine) dropCheckpoint() {
	e.ckpt.saved, e.ckpt.at = streamPos{}, time.Time{}
	if e.cfg.CheckpointPath == "" {
		return
	}
	if err := os.Remove(e.cfg.CheckpointPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("state sync: remove the checkpoint", "err", err)
	}
}
