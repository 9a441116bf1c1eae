package nftsets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
)

// Change is one change to a replicated set: Put (element added or changed)
// or delete, in the replication table Table, as [EncodeKey] and
// [EncodeValue] bytes (Value is nil for a delete).
type Change struct {
	Put   bool
	Table string // "nftset:inet:filter:blocklist", see [SetRef.ReplTable]
	Key   []byte
	Value []byte
}

// DefaultPollInterval is how often a [Source] lists its sets by default.
const DefaultPollInterval = 200 * time.Millisecond

// Source reads the configured sets of one namespace and reports their
// changes. See [Source.Run].
type Source struct {
	// PollInterval is how often the sets are listed and compared with the
	// previous listing. Set it before Run; zero means DefaultPollInterval.
	PollInterval time.Duration

	nsh     netns.NsHandle
	log     *slog.Logger
	sets    []*srcSet
	running atomic.Bool
}

type srcSet struct {
	ref     SetRef
	table   string
	known   map[string]*seen
	gen     uint64
	missing bool // the set was missing at the last listing (logged)
	unsup   bool // the set became a kind the package cannot carry (logged)
	skipped int  // elements skipped at the last listing (logged on change)
	buf     []Element
}

// seen is what a Source last reported of an element.
type seen struct {
	timeout  time.Duration
	deadline time.Time // monotonic; zero for an element without timeout
	data     string
	udata    string
	gen      uint64 // the Source's last listing that had it
	absent   bool   // a listing of several parts missed it
}

// sameAs reports whether an element now listed as n needs no new Put after
// s was reported: same data, same timeout, and an expiry within a small
// tolerance (a refreshed element moves its expiry).
func (s *seen) sameAs(n *seen) bool {
	return s.same(n.timeout, n.deadline, []byte(n.data), []byte(n.udata))
}

func (s *seen) same(timeout time.Duration, deadline time.Time, data, udata []byte) bool {
	if s.data != string(data) || s.udata != string(udata) || absDur(s.timeout-timeout) > 10*time.Millisecond {
		return false
	}
	if s.deadline.IsZero() || deadline.IsZero() {
		return s.deadline.IsZero() == deadline.IsZero()
	}
	return absDur(s.deadline.Sub(deadline)) <= expiryTolerance(timeout)
}

// expiryTolerance is how far a refreshed element's expiry may move before
// it is sent again: 1 s, or a quarter of a short timeout.
func expiryTolerance(timeout time.Duration) time.Duration {
	return min(time.Second, max(timeout/4, 10*time.Millisecond))
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// OpenSource checks that every set exists in the namespace nsh and is of a
// kind the package can carry, and returns a Source for them. nsh must stay
// open while the Source runs; a closed handle means the calling thread's
// namespace.
func OpenSource(nsh netns.NsHandle, sets []SetRef, logger *slog.Logger) (*Source, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c, err := dial(nsh)
	if err != nil {
		return nil, err
	}
	defer c.close()
	s := &Source{nsh: nsh, log: logger}
	dup := map[SetRef]bool{}
	for _, ref := range sets {
		if err := ref.validate(); err != nil {
			return nil, fmt.Errorf("nft set %s: %w", ref, err)
		}
		if dup[ref] {
			return nil, fmt.Errorf("nft set %s is listed twice in sync.nft_sets", ref)
		}
		dup[ref] = true
		if _, err := checkSet(c, ref); err != nil {
			return nil, err
		}
		s.sets = append(s.sets, &srcSet{ref: ref, table: ref.ReplTable()})
	}
	return s, nil
}

// checkSet reads a set's definition and says why it cannot be synchronised.
func checkSet(c *nlConn, ref SetRef) (setInfo, error) {
	info, err := c.getSet(ref)
	if errors.Is(err, errSetMissing) {
		return setInfo{}, fmt.Errorf("nft set %s does not exist: create it or remove it from sync.nft_sets", ref)
	}
	if err != nil {
		return setInfo{}, err
	}
	if err := info.check(); err != nil {
		return setInfo{}, fmt.Errorf("nft set %s cannot be synchronised: %v; remove it from sync.nft_sets", ref, err)
	}
	return info, nil
}

// Run reports the sets' content to out until ctx is done, then returns nil.
// out is called from Run's goroutine, with changes of one set at a time,
// and must not keep the slice.
//
// It first lists every set and reports each element as a Put (a set that
// has gone missing since OpenSource is logged and skipped until it is
// back). The caller should start from empty replication tables, since keys
// that a previous run reported and that are gone now are not deleted.
//
// Then it lists every set again each PollInterval and reports the
// difference with the previous listing: Puts for elements that are new or
// changed (data, comment, timeout, or an expiry moved by a refresh) and
// deletes for elements that are gone, whether deleted or expired. (The
// kernel lists a large set in parts and may miss an element that moved
// meanwhile, so when a listing came in several parts, an element that has
// not run out is deleted only when a second listing misses it too.)
//
// Change detection is polling because the kernel reports neither elements
// added from the packet path ("add @set { ip saddr }" in a rule) nor
// elements that expire: nftables monitor events (NEWSETELEM/DELSETELEM)
// cover only changes made over netlink (nft, an IPS using libnftnl). Run
// subscribes to them anyway and lists the sets a few milliseconds after such
// an event, so those changes are reported within about 10 ms plus the time
// of a listing; packet-path additions and expiries within PollInterval plus
// a listing (about 0.25 s by default). Listing costs CPU in proportion to
// the sets' size (about 15 ms for 10,000 elements), so Run stretches the
// interval to ten times the last listing's duration, and the wait after an
// event to four times: polling never takes more than about a tenth of a
// CPU, and large sets are reported less often.
func (s *Source) Run(ctx context.Context, out func([]Change)) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("nftsets: Source.Run is already running")
	}
	defer s.running.Store(false)
	interval := s.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	c, err := dial(s.nsh)
	if err != nil {
		return err
	}
	defer func() { c.close() }()

	hints := make(chan struct{}, 1)
	var wg sync.WaitGroup
	if mon, err := openMonitor(s.nsh); err != nil {
		s.log.Warn("nft set sync: no nftables monitor; changes are found by polling only", "interval", interval, "err", err)
	} else {
		wg.Go(func() {
			mon.run(func(kind eventKind, family uint8, table, set string) {
				if kind == evLost || s.matches(family, table, set) {
					select {
					case hints <- struct{}{}:
					default:
					}
				}
			})
		})
		defer func() { mon.close(); wg.Wait() }()
	}

	for _, st := range s.sets {
		st.known, st.gen, st.missing, st.unsup, st.skipped = map[string]*seen{}, 0, false, false, 0
	}
	s.log.Info("nft set sync: reading sets", "sets", len(s.sets), "poll_interval", interval)
	failures := 0
	poll := func() time.Duration {
		took, err := s.poll(c, out)
		if err != nil {
			failures++
			if failures == 1 || failures%100 == 0 {
				s.log.Error("nft set sync: listing failed", "failures", failures, "err", err)
			}
			if failures%3 == 0 { // the socket may be broken: open another
				if nc, derr := dial(s.nsh); derr == nil {
					c.close()
					c = nc
				}
			}
		} else {
			failures = 0
		}
		return took
	}
	took := poll()
	timer := time.NewTimer(max(interval, 10*took))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-hints:
			// Let a burst of events (one transaction sends one event per
			// element) settle, and keep listing to a fifth of the time.
			wait := max(2*time.Millisecond, 4*took)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			select {
			case <-hints:
			default:
			}
		}
		took = poll()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		// Big sets: keep polling to a tenth of the time.
		timer.Reset(max(interval, 10*took))
	}
}

func (s *Source) matches(family uint8, table, set string) bool {
	for _, st := range s.sets {
		if st.ref.family() == family && st.ref.Table == table && (set == "" || st.ref.Set == set) {
			return true
		}
	}
	return false
}

// poll lists every set and reports the differences. It returns the time
// the listings took and the first error other than a missing set.
func (s *Source) poll(c *nlConn, out func([]Change)) (took time.Duration, err error) {
	for _, st := range s.sets {
		d, serr := s.pollSet(c, st, out)
		took += d
		if serr != nil && err == nil {
			err = serr
		}
	}
	return took, err
}

func (s *Source) pollSet(c *nlConn, st *srcSet, out func([]Change)) (took time.Duration, err error) {
	info, err := c.getSet(st.ref)
	if err == nil {
		if cerr := info.check(); cerr != nil {
			if !st.unsup {
				s.log.Error("nft set sync: set changed to a kind that cannot be synchronised; its elements are left as they are", "set", st.ref.String(), "err", cerr)
				st.unsup = true
			}
			return 0, nil
		}
		st.unsup = false
	}
	var elems []Element
	var skipped, parts int
	before := time.Now()
	if err == nil {
		elems, skipped, parts, err = c.listElements(st.ref, info, st.buf)
		st.buf = elems
	}
	if errors.Is(err, errSetMissing) {
		if !st.missing {
			s.log.Error("nft set sync: set does not exist; its elements are not synchronised until it is back", "set", st.ref.String())
			st.missing = true
		}
		return time.Since(before), nil
	}
	if err != nil {
		return time.Since(before), err
	}
	if st.missing {
		s.log.Info("nft set sync: set is back", "set", st.ref.String())
		st.missing = false
	}
	if skipped != st.skipped {
		if skipped > 0 {
			s.log.Warn("nft set sync: elements not synchronised (verdict or object data)", "set", st.ref.String(), "count", skipped)
		}
		st.skipped = skipped
	}
	after := time.Now()
	took = after.Sub(before)
	// The kernel computed the expirations during the dump.
	at := before.Add(after.Sub(before) / 2)

	st.gen++
	var changes []Change
	var kb []byte
	for i := range elems {
		e := &elems[i]
		kb = appendKey(kb[:0], e)
		var deadline time.Time
		if e.Timeout > 0 {
			deadline = at.Add(e.Expires)
		}
		if old := st.known[string(kb)]; old != nil && old.same(e.Timeout, deadline, e.Data, e.UserData) {
			old.gen, old.absent = st.gen, false
			continue
		}
		key := bytes.Clone(kb)
		st.known[string(key)] = &seen{timeout: e.Timeout, deadline: deadline, data: string(e.Data), udata: string(e.UserData), gen: st.gen}
		changes = append(changes, Change{Put: true, Table: st.table, Key: key, Value: EncodeValue(*e, at)})
	}
	for k, v := range st.known {
		if v.gen == st.gen {
			continue
		}
		// A listing of several parts may miss an element that is there
		// (see listElements): unless it has run out, an element is gone
		// when two listings in a row miss it.
		if parts > 1 && !v.absent && (v.deadline.IsZero() || v.deadline.After(at)) {
			v.absent = true
			continue
		}
		delete(st.known, k)
		changes = append(changes, Change{Table: st.table, Key: []byte(k)})
	}
	if len(changes) > 0 {
		s.log.Debug("nft set sync: changes", "set", st.ref.String(), "elements", len(elems), "changes", len(changes), "listing", after.Sub(before))
		out(changes)
	}
	return took, nil
}
