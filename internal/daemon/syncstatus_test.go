package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/ha"
)

func TestWorseSync(t *testing.T) {
	u, in, out := ha.SyncUnknown, ha.SyncInSync, ha.SyncOutOfSync
	for _, c := range []struct{ a, b, want ha.SyncStatus }{
		{in, in, in}, {in, u, u}, {u, in, u}, {u, u, u},
		{out, in, out}, {in, out, out}, {out, u, out}, {u, out, out}, {out, out, out},
	} {
		if got := worseSync(c.a, c.b); got != c.want {
			t.Errorf("worseSync(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// fakeConfig is configuration sync reporting whatever the test says.
type fakeConfig struct{ sync chan ha.SyncStatus }

func (f *fakeConfig) HandleRequest(op string, _ json.RawMessage, _ []byte, active bool, _, _ string) (any, error) {
	if op == "config.status" {
		return configsync.Status{Sync: "OUT_OF_SYNC", Peers: []configsync.PeerView{{Peer: "fw-a", Status: "Some servers could not be synchronized"}}}, nil
	}
	return nil, errors.New("not in this test")
}
func (f *fakeConfig) SetActive(bool)                    {}
func (f *fakeConfig) Head() (uint64, [8]byte)           { return 0, [8]byte{} }
func (f *fakeConfig) SyncChanges() <-chan ha.SyncStatus { return f.sync }
func (f *fakeConfig) SetPeerActive(bool)                {}

// TestConfigApplyFailureMakesStandbyOutOfSync: a standby whose
// configuration failed to apply advertises OUT_OF_SYNC (state sync is off
// here, so configuration sync alone decides), a failover to it is refused
// on either unit without --force, and it is eligible again once the
// configuration applies.
func TestConfigApplyFailureMakesStandbyOutOfSync(t *testing.T) {
	port := 30000 + rand.IntN(20000)
	key := []byte(strings.Repeat("k", 32))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfgB := &fakeConfig{sync: make(chan ha.SyncStatus, 1)}
	var units []*Daemon
	var dones []chan error
	for _, role := range []string{"primary", "secondary"} {
		o := Options{}
		if role == "secondary" {
			o.Config = cfgB
		}
		d, err := New(loopbackConfig(t, role, port), key, o)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		units, dones = append(units, d), append(dones, done)
	}
	defer func() {
		cancel()
		for _, d := range dones {
			<-d
		}
	}()
	status := func(d *Daemon) Status {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		v, err := d.Control(c, control.Request{Op: "status"})
		if err != nil {
			t.Fatal(err)
		}
		return v.(Status)
	}
	wait := func(what string, cond func(a, b Status) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			a, b := status(units[0]), status(units[1])
			if cond(a, b) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: fw-a %s sync %s (peer sync %s), fw-b %s sync %s", what, a.State, a.Sync, a.Peer.Sync, b.State, b.Sync)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("fw-a ACTIVE, fw-b STANDBY", func(a, b Status) bool { return a.State == "ACTIVE" && b.State == "STANDBY" })

	cfgB.sync <- ha.SyncOutOfSync
	wait("fw-b OUT_OF_SYNC, as fw-a hears it", func(a, b Status) bool {
		return b.Sync == "OUT_OF_SYNC" && a.Peer.Sync == "OUT_OF_SYNC"
	})
	if b := status(units[1]); b.Config == nil || b.Config.Sync != "OUT_OF_SYNC" || len(b.Config.Peers) != 1 || b.Config.Peers[0].Peer != "fw-a" {
		t.Fatalf("fw-b's status shows no configuration peers: %+v", b.Config)
	}
	for i, want := range []error{ha.ErrPeerOutOfSync, ha.ErrOutOfSync} {
		_, err := units[i].Control(ctx, control.Request{Op: "failover"})
		if err == nil || !strings.Contains(err.Error(), want.Error()) {
			t.Fatalf("failover on %s: err = %v, want %v", []string{"fw-a", "fw-b"}[i], err, want)
		}
	}

	cfgB.sync <- ha.SyncInSync
	wait("fw-b no longer OUT_OF_SYNC", func(a, b Status) bool {
		return b.Sync != "OUT_OF_SYNC" && a.Peer.Sync != "OUT_OF_SYNC"
	})
	if _, err := units[0].Control(ctx, control.Request{Op: "failover"}); err != nil {
		t.Fatalf("failover once fw-b's configuration applies: %v", err)
	}
	wait("fw-b ACTIVE after the failover", func(a, b Status) bool { return b.State == "ACTIVE" && a.State == "STANDBY" })
}
