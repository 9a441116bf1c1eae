package wire

// ReplayGuard rejects heartbeats that are not newer than the last one
// accepted from one peer over one path. Keep one per (peer, path): each path
// delivers its own copy of every heartbeat.
//
// A heartbeat is newer when its BootID is greater (the peer restarted) or
// its BootID is the same and its Seq is greater. A guard that has accepted
// nothing yet takes any pair.
//
// The zero value is ready to use. A ReplayGuard is not safe for concurrent
// use.
type ReplayGuard struct {
	bootID, seq uint64
	seen        bool
}

// Check returns nil if (bootID, seq) is newer than the last accepted pair,
// else [ErrReplay]. It does not record anything: call [ReplayGuard.Accept]
// once the whole packet has been accepted.
func (g *ReplayGuard) Check(bootID, seq uint64) error {
	switch {
	case !g.seen, bootID > g.bootID:
		return nil
	case bootID == g.bootID && seq > g.seq:
		return nil
	}
	return ErrReplay
}

// Accept records (bootID, seq) as the last accepted pair. Call it only after
// [ReplayGuard.Check] succeeded and every other check on the packet passed.
func (g *ReplayGuard) Accept(bootID, seq uint64) {
	g.bootID, g.seq, g.seen = bootID, seq, true
}

// Last returns the last accepted pair; ok is false if none was accepted
// since the guard was created or reset.
func (g *ReplayGuard) Last() (bootID, seq uint64, ok bool) {
	return g.bootID, g.seq, g.seen
}

// Reset forgets the last accepted pair, so that the next heartbeat is taken
// whatever its BootID and Seq. It is meant for an explicit operator action;
// nothing in the protocol calls it on its own, since that would reopen the
// door to replays.
func (g *ReplayGuard) Reset() { *g = ReplayGuard{} }
