package configsync

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// memLink joins two Services the way statesync's channel does: frames
// queued in order, both ways, until it is cut.
type memLink struct {
	mu sync.Mutex
	up bool
	// Frames sent before both ends were told Up wait here, as the real
	// channel delivers a session's frames only after its Up.
	ready bool
	held  []func()
}

func (l *memLink) isUp() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.up }

func connect(a, b *Service) *memLink { return connectTap(a, b, nil) }

func (l *memLink) cut(a, b *Service) {
	l.mu.Lock()
	l.up = false
	l.mu.Unlock()
	a.Down()
	b.Down()
}

func open(t *testing.T, node string, hooks map[string]configstore.Hook, schema int) *Service {
	t.Helper()
	s, err := OpenWith(Options{Path: filepath.Join(t.TempDir(), "config.db"), Node: node, Hooks: hooks, HA: true, Schema: schema, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func publish(t *testing.T, s *Service, cat, name string, content []byte) PublishResult {
	t.Helper()
	args, _ := json.Marshal(PublishArgs{Category: cat, Name: name, ContentBase64: base64.StdEncoding.EncodeToString(content), Author: "test", Message: "m"})
	v, err := s.Handle("config.publish", args, true, "", "")
	if err != nil {
		t.Fatalf("publish %s/%s on %s: %v", cat, name, s.node, err)
	}
	return v.(PublishResult)
}

func get(s *Service, cat, name string) ([]byte, error) {
	c, _, err := s.store.Get(cat, name, 0)
	return c, err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func pair(t *testing.T, bHooks map[string]configstore.Hook) (a, b *Service, l *memLink) {
	a = open(t, "fw-a", nil, 0)
	b = open(t, "fw-b", bHooks, 0)
	a.SetActive(true)
	b.SetActive(false)
	return a, b, connect(a, b)
}

func sameHead(a, b *Service) bool {
	ra, ha := a.store.Head()
	rb, hb := b.store.Head()
	return ra == rb && ha == hb && a.chainAt(ra) == b.chainAt(rb)
}

func TestPublishReplicatesByteForByte(t *testing.T) {
	a, b, _ := pair(t, nil)
	doc := []byte("line one\r\n\x00\xff binary \t tail without newline")
	r := publish(t, a, "system", "dns", doc)
	waitFor(t, "the document on fw-b", func() bool {
		c, err := get(b, "system", "dns")
		return err == nil && bytes.Equal(c, doc)
	})
	hist, err := b.Handle("config.history", nil, false, "fw-a", "")
	if err != nil {
		t.Fatal(err)
	}
	h := hist.([]RevisionView)
	if len(h) != 1 || h[0].Number != r.Revision.Number || h[0].Origin != "fw-a" || h[0].Hash != r.Revision.Hash {
		t.Fatalf("fw-b history = %+v, want fw-a's revision %+v", h, r.Revision)
	}
	// Reads on the standby answer.
	v, err := b.Handle("config.get", json.RawMessage(`{"category":"system","name":"dns"}`), false, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := base64.StdEncoding.DecodeString(v.(Document).ContentBase64); !bytes.Equal(got, doc) {
		t.Fatalf("config.get on fw-b = %q", got)
	}
	waitFor(t, "fw-a to report fw-b Synchronized", func() bool {
		st := a.Status(true)
		return st.Peers[0].Status == snapshot.StatusSynchronized && st.Peers[0].Peer == "fw-b"
	})
	if st := b.Status(false); st.Sync != "IN_SYNC" || st.Peers[0].Status != snapshot.StatusSynchronized {
		t.Fatalf("fw-b status = %+v", st)
	}
	if ra, ha := a.Head(); true {
		rb, hb := b.Head()
		if ra != rb || ha != hb || ra == 0 {
			t.Fatalf("heads differ: fw-a %d %x, fw-b %d %x", ra, ha, rb, hb)
		}
	}
}

// A document sent as the request's payload (as `tandem config publish`
// does) is stored byte for byte; content given twice is refused.
func TestPublishPayload(t *testing.T) {
	a, b, _ := pair(t, nil)
	doc := []byte("table inet fw {\n\x00\xff\"quoted\"\n}")
	args, _ := json.Marshal(PublishArgs{Category: "policies", Name: "main", Author: "test"})
	if _, err := a.HandleRequest("config.publish", args, doc, true, "", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the document on fw-b", func() bool {
		c, err := get(b, "policies", "main")
		return err == nil && bytes.Equal(c, doc)
	})
	twice, _ := json.Marshal(PublishArgs{Category: "policies", Name: "main", Content: "x", Author: "test"})
	head, _ := a.Head()
	if _, err := a.HandleRequest("config.publish", twice, doc, true, "", ""); err == nil || !strings.Contains(err.Error(), "send it once") {
		t.Fatalf("content twice: %v, want a refusal", err)
	}
	if now, _ := a.Head(); now != head {
		t.Fatalf("a refused publish moved the head from %d to %d", head, now)
	}
}

func TestLargeDocumentIsChunked(t *testing.T) {
	a, b, _ := pair(t, nil)
	doc := bytes.Repeat([]byte("0123456789abcdef\n"), (5*ChunkSize/2)/17)
	publish(t, a, "definitions", "big", doc)
	waitFor(t, "the big document on fw-b", func() bool {
		c, err := get(b, "definitions", "big")
		return err == nil && bytes.Equal(c, doc)
	})
	defer func(n int) { maxDocument = n }(maxDocument)
	maxDocument = 3 * ChunkSize
	big := make([]byte, maxDocument+1)
	args, _ := json.Marshal(PublishArgs{Category: "system", Name: "huge", ContentBase64: base64.StdEncoding.EncodeToString(big), Author: "t"})
	if _, err := a.Handle("config.publish", args, true, "", ""); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("publish over the limit: err = %v", err)
	}
}

func TestCatchUpOnUp(t *testing.T) {
	a := open(t, "fw-a", nil, 0)
	b := open(t, "fw-b", nil, 0)
	a.SetActive(true)
	for i := range 5 {
		publish(t, a, "network", "routes", []byte{byte(i)})
	}
	connect(a, b)
	waitFor(t, "fw-b to catch up", func() bool { return sameHead(a, b) })
}

func TestStandbyWriteRefusedNamingTheActive(t *testing.T) {
	_, b, _ := pair(t, nil)
	args, _ := json.Marshal(PublishArgs{Category: "system", Name: "dns", Content: "x", Author: "t"})
	_, err := b.Handle("config.publish", args, false, "fw-a", "169.254.77.1")
	if !errors.Is(err, ErrReadOnlyStandby) {
		t.Fatalf("err = %v, want ErrReadOnlyStandby", err)
	}
	want := "this unit (fw-b) is the STANDBY and read-only; make changes on the ACTIVE unit fw-a (169.254.77.1)"
	if err.Error() != want {
		t.Fatalf("err = %q\nwant  %q", err, want)
	}
	if _, err := b.Handle("config.rollback", json.RawMessage(`{"rev":1}`), false, "fw-a", "169.254.77.1"); !errors.Is(err, ErrReadOnlyStandby) {
		t.Fatalf("rollback on the standby: err = %v", err)
	}
	// The name comes from the peer's hello when the daemon does not know it.
	waitFor(t, "fw-b to hear fw-a's hello", func() bool {
		_, err := b.Handle("config.publish", args, false, "", "169.254.77.1")
		return err != nil && err.Error() == want
	})
	// Even if the daemon says active, a store not told so refuses.
	if _, err := b.Handle("config.publish", args, true, "", ""); !errors.Is(err, ErrReadOnlyStandby) {
		t.Fatalf("publish on a store not set active: err = %v", err)
	}
	if rev, _ := b.Head(); rev != 0 {
		t.Fatalf("fw-b head = %d after refused writes, want 0", rev)
	}
}

func TestApplyFailureOnStandbyIsReported(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	hooks := map[string]configstore.Hook{"firewall": {Apply: func(name string, _ []byte) error {
		if fail.Load() {
			return errors.New("iptables-restore: line 3 failed")
		}
		return nil
	}}}
	a, b, _ := pair(t, hooks)
	publish(t, a, "firewall", "main", []byte("rules"))
	waitFor(t, "fw-a to see fw-b's apply failure", func() bool {
		p := a.Status(true).Peers[0]
		return p.Status == snapshot.StatusNotSynced && strings.Contains(p.LastError, "line 3 failed")
	})
	st := b.Status(false)
	if st.Sync != "OUT_OF_SYNC" || len(st.ApplyErrors) != 1 || !strings.Contains(st.ApplyErrors[0], "line 3 failed") {
		t.Fatalf("fw-b status = %+v, want OUT_OF_SYNC with the hook's error", st)
	}
	if c, err := get(b, "firewall", "main"); err != nil || string(c) != "rules" {
		t.Fatalf("the revision is stored on fw-b even though it failed to apply: %q %v", c, err)
	}
	// sync.force re-applies on the standby once the cause is fixed.
	fail.Store(false)
	if _, err := a.Handle("sync.force", nil, true, "", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fw-b IN_SYNC after sync.force", func() bool {
		return b.Status(false).Sync == "IN_SYNC" && a.Status(true).Peers[0].Status == snapshot.StatusSynchronized
	})
}

func TestPartitionHealKeepsConflicts(t *testing.T) {
	a, b, l := pair(t, nil)
	publish(t, a, "system", "dns", []byte("shared"))
	waitFor(t, "the first revision on fw-b", func() bool { return sameHead(a, b) })

	l.cut(a, b)
	// Both units are ACTIVE during the partition and both accept changes.
	b.SetActive(true)
	publish(t, a, "system", "dns", []byte("a's change"))
	publish(t, a, "users", "admins", []byte("alice"))
	publish(t, b, "system", "dns", []byte("b's change"))
	publish(t, b, "vpn", "tunnels", []byte("b's tunnel"))
	publish(t, b, "vpn", "tunnels", []byte("b's tunnel v2"))

	// Heal: fw-b yields (the HA machine decided), then the channel returns.
	b.SetActive(false)
	connect(a, b)
	waitFor(t, "fw-b to converge to fw-a's head", func() bool { return sameHead(a, b) })
	if c, _ := get(b, "system", "dns"); string(c) != "a's change" {
		t.Fatalf("fw-b system/dns = %q, want fw-a's", c)
	}
	if _, err := get(b, "vpn", "tunnels"); !errors.Is(err, configstore.ErrNotFound) {
		t.Fatalf("fw-b vpn/tunnels: err = %v, want it set aside", err)
	}
	v, err := b.Handle("config.conflicts", nil, false, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cs := v.([]ConflictView)
	if len(cs) != 3 || cs[0].Ancestor != 1 || cs[0].Revision.Origin != "fw-b" {
		t.Fatalf("fw-b conflicts = %+v, want its 3 divergent revisions after ancestor 1", cs)
	}
	if v, _ := a.Handle("config.conflicts", nil, true, "", ""); len(v.([]ConflictView)) != 0 {
		t.Fatalf("fw-a conflicts = %+v, want none", v)
	}
	// Replication goes on after the heal.
	publish(t, a, "ips", "rules", []byte("after"))
	waitFor(t, "replication after the heal", func() bool { return sameHead(a, b) })
}

func TestSchemaMismatchRefused(t *testing.T) {
	a := open(t, "fw-a", nil, 0)
	b := open(t, "fw-b", nil, 99)
	a.SetActive(true)
	connect(a, b)
	publish(t, a, "system", "dns", []byte("x"))
	waitFor(t, "the schema refusal in both statuses", func() bool {
		sa, sb := a.Status(true), b.Status(false)
		return strings.Contains(strings.Join(sa.Errors, "\n"), "schema") && strings.Contains(strings.Join(sb.Errors, "\n"), "schema")
	})
	time.Sleep(50 * time.Millisecond)
	if rev, _ := b.Head(); rev != 0 {
		t.Fatalf("fw-b took revision %d from a peer of another schema", rev)
	}
	if p := a.Status(true).Peers[0]; p.Status == snapshot.StatusSynchronized {
		t.Fatalf("fw-a shows %s with a peer of another schema", p.Status)
	}
}

func TestNoHA(t *testing.T) {
	s, err := OpenWith(Options{Path: filepath.Join(t.TempDir(), "c.db"), Node: "solo", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Status(true); st.Peers[0].Status != snapshot.StatusNoHA {
		t.Fatalf("status = %+v", st)
	}
}
