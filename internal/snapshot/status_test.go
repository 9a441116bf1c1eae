package snapshot_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/snapshot"
)

func TestDecideStatus(t *testing.T) {
	cases := []struct {
		ha, connected, bothActive bool
		last                      snapshot.Outcome
		want                      string
	}{
		{false, false, false, snapshot.OutcomeNone, "No HA"},
		{false, true, true, snapshot.OutcomeOK, "No HA"},
		{true, true, true, snapshot.OutcomeOK, "Collision"},
		{true, false, true, snapshot.OutcomeOK, "Collision"},
		{true, false, false, snapshot.OutcomeOK, "Communication problem"},
		{true, false, false, snapshot.OutcomeFailed, "Communication problem"},
		{true, true, false, snapshot.OutcomeOK, "Synchronized"},
		{true, true, false, snapshot.OutcomeFailed, "Some servers could not be synchronized"},
		{true, true, false, snapshot.OutcomeNone, "Some servers could not be synchronized"},
	}
	for _, tc := range cases {
		if got := snapshot.DecideStatus(tc.ha, tc.connected, tc.bothActive, tc.last); got != tc.want {
			t.Errorf("DecideStatus(ha=%v, connected=%v, bothActive=%v, last=%v) = %q, want %q",
				tc.ha, tc.connected, tc.bothActive, tc.last, got, tc.want)
		}
	}
}

func TestPeerSync(t *testing.T) {
	p := snapshot.PeerSync{Peer: "fw-b"}
	p.Refresh(true, true, false)
	if p.Status != snapshot.StatusNotSynced || p.Outcome() != snapshot.OutcomeNone {
		t.Errorf("before any attempt: %+v", p)
	}
	m := snapshot.Manifest{ID: [16]byte{1}, Size: 1000, StreamBytes: 400, Duration: time.Second}
	t1 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p.Record(snapshot.NewResult("fw-b", m, nil, t1))
	p.Refresh(true, true, false)
	want := snapshot.PeerSync{Peer: "fw-b", Status: "Synchronized", LastSync: t1, LastAttempt: t1, Bytes: 400, Duration: time.Second}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("after success (-want +got):\n%s", diff)
	}
	t2 := t1.Add(time.Hour)
	failed := snapshot.NewResult("fw-b", m, errors.New("snapshot corrupt: chunk 3"), t2)
	// The notification crosses the sync channel as JSON.
	raw, err := json.Marshal(failed)
	if err != nil {
		t.Fatal(err)
	}
	var got snapshot.Result
	if err := json.Unmarshal(raw, &got); err != nil || !cmp.Equal(got, failed) {
		t.Errorf("JSON round trip: %+v, %v", got, err)
	}
	p.Record(got)
	p.Refresh(true, true, false)
	if p.Status != snapshot.StatusNotSynced || p.LastError != "snapshot corrupt: chunk 3" || !p.LastSync.Equal(t1) || !p.LastAttempt.Equal(t2) {
		t.Errorf("after failure: %+v", p)
	}
	p.Refresh(true, false, false)
	if p.Status != snapshot.StatusCommunication {
		t.Errorf("disconnected: %q", p.Status)
	}
}
