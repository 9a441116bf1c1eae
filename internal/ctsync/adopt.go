package ctsync

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/tandem-ha/tandem/internal/sched"
)

// Adoption: a full copy (after a Reset) is reconciled with what the
// standby's kernel already holds, instead of being written again.
//
// The kernel's table outlives the daemon: after a standby's daemon
// restarts (upgrade, crash, SIGKILL) its kernel still holds every entry the
// previous daemon injected, and the ACTIVE sends the whole table again.
// Writing a million entries back costs 12 s (ctnetlink creates are
// serialised under one mutex, ~80k/s), all of it time in which the standby
// reports OUT_OF_SYNC. So at a Reset of the conntrack table the writer
// dumps the kernel's table once and records every entry with a hash of
// its value as the kernel holds it (the timeout left out); a Put of the
// copy whose value hashes the same is then only recorded, not written.
//
// What the dump found is only ever used to skip a write, never to delete:
// the entries this sink did not write in this run stay as they are, as
// before. Deleting what the copy does not bring back would trust the
// ACTIVE's table to be complete, and it is not always: a unit that took
// over half-synchronised, or is still dumping its own kernel after a
// takeover, sends a partial copy — and the entries it lacks are live
// connections on this unit's kernel (seen in `tandem bench sync`: a false
// failover during a resync deleted 998k of 1M entries on both units).
// The unit's own connections (an entry with one of its addresses in
// either tuple) are not even recorded.

// adoptFilter tells the unit's own entries apart.
type adoptFilter struct {
	local map[netip.Addr]bool
}

func (a *adoptFilter) own(f *conntrack.Flow) bool {
	for _, ad := range [...]netip.Addr{f.TupleOrig.IP.SourceAddress, f.TupleOrig.IP.DestinationAddress,
		f.TupleReply.IP.SourceAddress, f.TupleReply.IP.DestinationAddress} {
		if a.local[ad.Unmap()] {
			return true
		}
	}
	return false
}

// localAddrs lists the addresses configured on the namespace's interfaces
// (loopback included).
func (k *Sink) localAddrs() (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	err := inNS(k.nsh, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out[p.Addr().Unmap()] = true
			}
		}
		return nil
	})
	return out, err
}

// kernelValueHash is the hash a replicated value of f gets (valueHash),
// for f as this standby's kernel reports it: timeout left out, and the
// liberal TCP flags the injector adds taken off again.
func (k *Sink) kernelValueHash(buf []byte, f *conntrack.Flow) ([]byte, uint32) {
	f.Timeout = 0
	if t := f.ProtoInfo.TCP; t != nil && !k.opts.TCPWindowTracking {
		t.OriginalFlags &^= tcpFlagBeLiberal << 8
		t.ReplyFlags &^= tcpFlagBeLiberal << 8
	}
	buf = EncodeFlow(buf[:0], *f)
	return buf, fnv32Add(fnvOffset32, buf)
}

// valueHash is fnv32 of a replicated value without its timeout (0 for a
// value that is not a flow EncodeFlow wrote: never equal to a kernel
// entry's, so always written).
func valueHash(v []byte) uint32 {
	i, j, ok := flowTimeoutSpan(v)
	if !ok {
		return 0
	}
	return hashSkipping(v, i, j)
}

// adoptKernel dumps the kernel's conntrack table into a fresh stale map:
// every entry that is not the unit's own, with its value hash. It runs on
// the writer goroutine, before the changes that follow the Reset.
func (k *Sink) adoptKernel() (*keyMap[entryMeta], error) {
	start := time.Now()
	local, err := k.localAddrs()
	if err != nil {
		return nil, fmt.Errorf("list the unit's addresses: %w", err)
	}
	filter := adoptFilter{local: local}
	k.kernelDumps.Add(1)
	stale := newKeyMap[entryMeta](k.meta[tCT].len() + k.stale[tCT].len())
	c := k.conns[0]
	var m msgBuf
	seq := c.nextSeq()
	appendDump(&m, seq, subsysCT)
	var key, val []byte
	var y sched.Yielder
	own := 0
	err = c.dumpPipelined(m.b, seq, func(msg nlMsg) error {
		y.Pause()
		ev, err := decodeAs(msg, subsysCT)
		if err != nil || ev.Flow == nil {
			return nil
		}
		f := ev.Flow
		if filter.own(f) {
			own++
			return nil
		}
		key = appendKey(key[:0], f.TupleOrig, f.Zone)
		var vh uint32
		fp := fingerprint(f)
		val, vh = k.kernelValueHash(val, f)
		stale.set(key, entryMeta{fp: fp, vh: vh})
		return nil
	})
	if err != nil {
		// A dump cut short leaves the socket mid-dump: a fresh one
		// starts clean for the writes that follow.
		if nc, derr := dialNetfilter(k.nsh, 8<<20); derr == nil {
			_ = c.Close()
			k.conns[0] = nc
		}
		return nil, err
	}
	k.nAdopted.Add(uint64(stale.len()))
	k.log.Info("full copy: reconciling with the kernel's table", "entries", stale.len(), "own", own, "took", time.Since(start))
	return stale, nil
}

// flowTimeout reads the timeout of a value EncodeFlow wrote (0 if it
// cannot).
func flowTimeout(v []byte) uint32 {
	i, _, ok := flowTimeoutSpan(v)
	if !ok {
		return 0
	}
	t, n := binary.Uvarint(v[i:])
	if n <= 0 {
		return 0
	}
	return uint32(t)
}

// KnownKeys lists the connections this Sink knows to be in the kernel:
// those it wrote since its last Reset and those its reconciliation found
// there. For a Source that publishes them by lookup when this unit takes
// over (SourceOptions.KnownKeys); nil when there are more than
// MaxLookupPublish (a dump publishes them then). Call it after Close.
func (k *Sink) KnownKeys() [][]byte {
	k.mu.Lock()
	closed := k.closed
	k.mu.Unlock()
	if !closed || k.meta[tCT].len()+k.adopted.len() > 2*MaxLookupPublish {
		return nil // the writer owns the record; or too many to copy
	}
	out := make([][]byte, 0, k.meta[tCT].len()+k.adopted.len())
	k.meta[tCT].each(func(key []byte, _ entryMeta) bool {
		out = append(out, append([]byte(nil), key...))
		return true
	})
	k.adopted.each(func(key []byte, _ entryMeta) bool {
		if !k.meta[tCT].has(key) {
			out = append(out, append([]byte(nil), key...))
		}
		return true
	})
	return out
}

// publishedMaxAge bounds how old a handed-over record may be when the
// copy's Reset comes: past it, the kernel's table has had time to move on
// and is dumped instead.
const publishedMaxAge = 10 * time.Second

// AdoptPublished hands the Sink the record of the Source that published
// this unit's table until a moment ago (the unit has just stopped being
// ACTIVE). The next full copy is reconciled with it instead of with a dump
// of the kernel's table: the record says what the kernel held, by the same
// value hash, without the dump — which walks every bucket of the kernel's
// conntrack hash (262,144 on a 24 GiB machine: ~7 ms on one CPU that the
// kernel does not give up, whatever the table holds) right at the takeover,
// while the new ACTIVE dumps its own table to publish it. As with a dump,
// what the record holds only ever spares a write; connections the record
// lacks are written, and nothing is deleted for being in it.
func (k *Sink) AdoptPublished(p *Published) {
	if p == nil {
		return
	}
	k.mu.Lock()
	k.published = p
	k.mu.Unlock()
	// Not kept past its use-by time when no copy comes (a million
	// connections' record is tens of megabytes).
	time.AfterFunc(publishedMaxAge, func() {
		k.mu.Lock()
		if k.published == p {
			k.published = nil
		}
		k.mu.Unlock()
	})
}

// adoptPublished turns a handed-over record into the adopted map, or
// returns nil when there is none or it is too old. Runs on the writer
// goroutine.
func (k *Sink) adoptPublished(p *Published) *keyMap[entryMeta] {
	if p == nil {
		return nil
	}
	if age := time.Since(p.at); age > publishedMaxAge {
		k.log.Info("full copy: this unit's last published table is too old to adopt; reading the kernel's", "age", age)
		return nil
	}
	start := time.Now()
	a := newKeyMap[entryMeta](p.live.len())
	var y sched.Yielder
	p.live.each(func(key []byte, li liveInfo) bool {
		y.Pause()
		a.set(key, entryMeta{fp: li.fp, vh: li.hash})
		return true
	})
	k.nAdopted.Add(uint64(a.len()))
	k.log.Info("full copy: reconciling with the table this unit last published", "entries", a.len(), "age", time.Since(p.at), "took", time.Since(start))
	return a
}
