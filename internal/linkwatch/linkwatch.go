package linkwatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Event is the state of one watched link.
type Event struct {
	Name   string
	Index  int
	Up     bool
	Reason string
}

// Reasons.
const (
	ReasonUp          = "up"
	ReasonAdminDown   = "admin down"
	ReasonCarrierLost = "carrier lost"
	ReasonRemoved     = "link removed"
	ReasonMissing     = "link missing"
)

// resubscribeDelay is the pause before subscribing again after the netlink
// socket failed.
const resubscribeDelay = 100 * time.Millisecond

// Watch sends the state of the links named names in namespace nsh on out,
// then every change, until ctx ends (it then returns nil). It returns an
// error only if it cannot start: the namespace cannot be opened or
// subscribed to. Sending on out blocks until it is received or ctx ends.
func Watch(ctx context.Context, nsh netns.NsHandle, names []string, out chan<- Event) error {
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink handle in the watched namespace: %w", err)
	}
	defer h.Close()
	w := &watcher{
		h:       h,
		nsh:     nsh,
		out:     out,
		watched: make(map[string]bool, len(names)),
		last:    make(map[string]Event, len(names)),
		byIndex: make(map[int]string, len(names)),
	}
	for _, n := range names {
		w.watched[n] = true
		w.names = append(w.names, n)
	}
	for first := true; ; first = false {
		err := w.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if first && errors.Is(err, errSubscribe) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(resubscribeDelay):
		}
	}
}

var errSubscribe = errors.New("subscribe to link notifications")

// subscribe is replaced in tests to break subscriptions.
var subscribe = netlink.LinkSubscribeWithOptions

type watcher struct {
	h       *netlink.Handle
	nsh     netns.NsHandle
	out     chan<- Event
	names   []string
	watched map[string]bool
	last    map[string]Event // last emitted per name
	byIndex map[int]string   // index -> watched name, for renames
}

// session subscribes, re-reads the watched links and follows the
// notifications until ctx ends or the subscription fails.
func (w *watcher) session(ctx context.Context) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	errc := make(chan error, 1)
	err := subscribe(updates, done, netlink.LinkSubscribeOptions{
		Namespace:         &w.nsh,
		ListExisting:      true,
		ReceiveBufferSize: 1 << 20,
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	})
	if err != nil {
		close(done)
		return fmt.Errorf("%w: %w", errSubscribe, err)
	}
	defer func() {
		close(done)
		for range updates { // let the subscription goroutine finish
		}
	}()

	// The dump (ListExisting) does not tell which links are absent, and
	// after a resubscription a link may have gone while we were deaf.
	for _, name := range w.names {
		l, err := w.h.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			if !w.send(ctx, stateOf(l), true) {
				return nil
			}
		case errors.As(err, &nf):
			reason := ReasonMissing
			if _, seen := w.last[name]; seen {
				reason = ReasonRemoved
			}
			if !w.send(ctx, Event{Name: name, Reason: reason}, true) {
				return nil
			}
		default:
			return fmt.Errorf("look up link %s: %w", name, err)
		}
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case u, ok := <-updates:
			if !ok {
				return errors.New("link subscription closed")
			}
			if !w.handle(ctx, u) {
				return nil
			}
		}
	}
}

// handle turns one notification into events; false when ctx ended.
func (w *watcher) handle(ctx context.Context, u netlink.LinkUpdate) bool {
	a := u.Link.Attrs()
	// A watched link renamed away: its name is gone.
	if old, ok := w.byIndex[a.Index]; ok && old != a.Name {
		delete(w.byIndex, a.Index)
		if !w.send(ctx, Event{Name: old, Index: a.Index, Reason: ReasonRemoved}, false) {
			return false
		}
	}
	if !w.watched[a.Name] {
		return true
	}
	if u.Header.Type == unix.RTM_DELLINK {
		delete(w.byIndex, a.Index)
		return w.send(ctx, Event{Name: a.Name, Index: a.Index, Reason: ReasonRemoved}, false)
	}
	return w.send(ctx, stateOf(u.Link), false)
}

// send emits e unless it repeats the last event for that link; a
// transitional state (Reason "") is emitted only as a link's first state.
func (w *watcher) send(ctx context.Context, e Event, initial bool) bool {
	if e.Index != 0 && e.Reason != ReasonRemoved {
		w.byIndex[e.Index] = e.Name
	}
	last, seen := w.last[e.Name]
	if e.Reason == "" {
		if seen || !initial {
			return true
		}
		e.Reason = ReasonCarrierLost
	}
	if seen && last == e {
		return true
	}
	w.last[e.Name] = e
	select {
	case w.out <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

// stateOf is the state of l; Reason "" marks the transitional state between
// carrier up and the kernel updating the operational state.
func stateOf(l netlink.Link) Event {
	a := l.Attrs()
	e := Event{Name: a.Name, Index: a.Index}
	running := a.RawFlags&unix.IFF_RUNNING != 0
	lowerUp := a.RawFlags&unix.IFF_LOWER_UP != 0
	switch {
	case a.Flags&net.FlagUp == 0:
		e.Reason = ReasonAdminDown
	case a.OperState == netlink.OperUp || (a.OperState == netlink.OperUnknown && running):
		e.Up, e.Reason = true, ReasonUp
	case !lowerUp:
		e.Reason = ReasonCarrierLost
	case a.OperState == netlink.OperDown || a.OperState == netlink.OperLowerLayerDown:
		// Carrier is up but the kernel's linkwatch has not updated the
		// operational state yet (it does so asynchronously): transitional.
	default:
		e.Reason = "oper state " + a.OperState.String()
	}
	return e
}
