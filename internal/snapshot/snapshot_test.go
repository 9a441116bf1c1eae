package snapshot_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// content returns n bytes of mildly compressible text, like a ruleset
// with per-rule comments: roughly half of it random.
func content(rng *rand.Rand, n int) []byte {
	const hexd = "0123456789abcdef"
	b := make([]byte, 0, n+80)
	for len(b) < n {
		b = fmt.Appendf(b, "rule %d ip saddr 10.%d.%d.0/24 tcp dport %d accept # ", rng.IntN(1e6), rng.IntN(256), rng.IntN(256), rng.IntN(65536))
		for range 24 {
			b = append(b, hexd[rng.IntN(16)])
		}
		b = append(b, '\n')
	}
	return b[:n]
}

type storeSpec struct {
	docs, revisions, size int
}

// build fills a new store at dir/config.db: docs documents, revisions
// publishes in all, each of about size bytes.
func build(t testing.TB, dir string, spec storeSpec, seed uint64) *configstore.Store {
	t.Helper()
	s, err := configstore.Open(filepath.Join(dir, "config.db"), configstore.Options{Node: "fw-a", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	cats := configstore.Categories()
	for i := range spec.revisions {
		d := i % spec.docs
		_, err := s.Publish(configstore.Publish{
			Category: cats[d%len(cats)], Name: fmt.Sprintf("doc%05d", d),
			Content: content(rng, spec.size), Author: "builder", Message: fmt.Sprint("change ", i),
			Time: time.Unix(1700000000+int64(i), 0),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func takeBytes(t testing.TB, s *configstore.Store, opts snapshot.Options) ([]byte, snapshot.Manifest) {
	t.Helper()
	var buf bytes.Buffer
	m, err := snapshot.Take(s.DB(), &buf, opts)
	if err != nil {
		t.Fatalf("Take: %v", err)
	}
	if int64(buf.Len()) != m.StreamBytes {
		t.Errorf("StreamBytes = %d, wrote %d", m.StreamBytes, buf.Len())
	}
	return buf.Bytes(), m
}

// onlyFiles lists dir's entries.
func onlyFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func assertSameStore(t testing.TB, a, b *configstore.Store) {
	t.Helper()
	ra, ha := a.Head()
	rb, hb := b.Head()
	if ra != rb || ha != hb {
		t.Errorf("heads differ: %d %x / %d %x", ra, ha[:4], rb, hb[:4])
	}
	histA, _ := a.History(0)
	histB, _ := b.History(0)
	if diff := cmp.Diff(histA, histB); diff != "" {
		t.Errorf("histories differ:\n%s", diff)
	}
	auditA, _ := a.Audit(0)
	auditB, _ := b.Audit(0)
	if diff := cmp.Diff(auditA, auditB); diff != "" {
		t.Errorf("audit logs differ:\n%s", diff)
	}
}

func TestRoundTrip(t *testing.T) {
	srcDir := t.TempDir()
	src := build(t, srcDir, storeSpec{docs: 40, revisions: 400, size: 3000}, 1)
	defer src.Close()
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprint("workers=", workers), func(t *testing.T) {
			testRoundTrip(t, src, srcDir, workers)
		})
	}
}

func testRoundTrip(t *testing.T, src *configstore.Store, srcDir string, workers int) {
	stream, taken := takeBytes(t, src, snapshot.Options{ChunkSize: 64 << 10, Workers: workers})
	if taken.Chunks < 10 {
		t.Fatalf("only %d chunks; the test wants many", taken.Chunks)
	}
	if got := onlyFiles(t, srcDir); !slices.Equal(got, []string{"config.db"}) {
		t.Errorf("source dir after Take = %v, want only the database", got)
	}

	dstDir := t.TempDir()
	got, err := snapshot.Receive(bytes.NewReader(stream), dstDir, "config.db", snapshot.Options{Check: true, Workers: workers})
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if diff := cmp.Diff(taken, got, cmpManifest); diff != "" {
		t.Errorf("manifests differ (-taken +received):\n%s", diff)
	}
	if names := onlyFiles(t, dstDir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("destination dir = %v, want only config.db", names)
	}
	dst, err := configstore.Open(filepath.Join(dstDir, "config.db"), configstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	assertSameStore(t, src, dst)
	if rev, _ := dst.Head(); rev != 400 {
		t.Errorf("received head = %d, want 400", rev)
	}
}

// cmpManifest ignores what differs by side (Duration).
var cmpManifest = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Duration" }, cmp.Ignore())

// A standby replaces its live store: close, swap, reopen.
func TestReceiveSwapsLiveStore(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 10, revisions: 60, size: 2000}, 2)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{})

	dir := t.TempDir()
	path := filepath.Join(dir, "config.db")
	standby, err := configstore.Open(path, configstore.Options{Node: "fw-b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := standby.Publish(configstore.Publish{Category: "system", Name: "old", Content: []byte("x"), Author: "a"}); err != nil {
		t.Fatal(err)
	}
	var calls []string
	m, err := snapshot.Receive(bytes.NewReader(stream), dir, path, snapshot.Options{Swap: snapshot.Swap{
		Close: func() error { calls = append(calls, "close"); return standby.Close() },
		Reopen: func() error {
			calls = append(calls, "reopen")
			var err error
			standby, err = configstore.Open(path, configstore.Options{Node: "fw-b"})
			return err
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close()
	if !slices.Equal(calls, []string{"close", "reopen"}) {
		t.Errorf("swap calls = %v", calls)
	}
	assertSameStore(t, src, standby)
	res := snapshot.NewResult("fw-b", m, nil, time.Unix(5, 0))
	if !res.OK || res.ID != m.IDString() || res.Size != m.Size || res.Bytes != int64(len(stream)) {
		t.Errorf("NewResult = %+v", res)
	}
}

// frame is one region of a stream: the header, a chunk record or the trailer.
type frame struct {
	name       string
	start, end int
}

// frames parses a stream's layout (header 56 bytes, records of 32 bytes plus
// data, trailer 52 bytes).
func frames(t *testing.T, stream []byte) []frame {
	t.Helper()
	fs := []frame{{"header", 0, 56}}
	chunks := int(binary.BigEndian.Uint32(stream[48:]))
	off := 56
	for i := range chunks {
		n := int(binary.BigEndian.Uint32(stream[off+8:]))
		fs = append(fs, frame{fmt.Sprintf("chunk %d", i), off, off + 32 + n})
		off += 32 + n
	}
	fs = append(fs, frame{"trailer", off, off + 52})
	if off+52 != len(stream) {
		t.Fatalf("parsed %d bytes of a %d-byte stream", off+52, len(stream))
	}
	return fs
}

func TestCorruptStreamRejected(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 20, revisions: 100, size: 4000}, 3)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{ChunkSize: 32 << 10})
	fs := frames(t, stream)

	// The standby's previous database, which must survive every rejection.
	dir := t.TempDir()
	target, oldBytes := previousDatabase(t, dir, 4)

	type tcase struct {
		name   string
		stream []byte
		is     error
		msg    string
	}
	var cases []tcase
	flip := func(i int) []byte {
		b := slices.Clone(stream)
		b[i] ^= 0x40
		return b
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, f := range fs {
		// A byte of the frame's own header fields, and one of its data.
		cases = append(cases, tcase{"flip in " + f.name + " start", flip(f.start + rng.IntN(min(20, f.end-f.start))), snapshot.ErrCorrupt, ""})
		cases = append(cases, tcase{"flip in " + f.name + " body", flip(f.start + rng.IntN(f.end-f.start)), snapshot.ErrCorrupt, ""})
	}
	for _, n := range []int{0, 1, 55, 56, 100, fs[1].end, fs[len(fs)/2].start + 30, fs[len(fs)-1].start, len(stream) - 1} {
		cases = append(cases, tcase{fmt.Sprintf("truncated at %d", n), stream[:n], snapshot.ErrTruncated, "ended in the"})
	}
	// A consistent stream (valid crcs) whose whole-file digest is wrong.
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	wrong := slices.Clone(stream)
	tr := fs[len(fs)-1].start
	wrong[tr+20] ^= 1
	binary.BigEndian.PutUint32(wrong[tr+48:], crc32.Checksum(wrong[tr:tr+48], castagnoli))
	cases = append(cases, tcase{"wrong whole-file digest", wrong, snapshot.ErrCorrupt, "digest of the chunk tags"})
	// Two chunks swapped, indexes rewritten: every crc holds, the tags
	// (bound to the index) do not.
	swapped := slices.Clone(stream[:fs[1].start])
	swapped = append(swapped, stream[fs[2].start:fs[2].end]...)
	swapped = append(swapped, stream[fs[1].start:fs[1].end]...)
	swapped = append(swapped, stream[fs[3].start:]...)
	binary.BigEndian.PutUint32(swapped[fs[1].start:], 0)
	binary.BigEndian.PutUint32(swapped[fs[1].start+fs[2].end-fs[2].start:], 1)
	cases = append(cases, tcase{"chunks swapped", swapped, snapshot.ErrCorrupt, "tag"})
	// A chunk replaced by another stream's chunk 0 (other id, other key).
	other, _ := takeBytes(t, src, snapshot.Options{ChunkSize: 32 << 10})
	ofs := frames(t, other)
	replaced := slices.Clone(stream[:fs[1].start])
	replaced = append(replaced, other[ofs[1].start:ofs[1].end]...)
	replaced = append(replaced, stream[fs[2].start:]...)
	cases = append(cases, tcase{"chunk of another snapshot", replaced, snapshot.ErrCorrupt, "tag"})
	cases = append(cases, tcase{"not a snapshot", []byte(strings.Repeat("GET / HTTP/1.1\r\n", 10)), snapshot.ErrCorrupt, "not a tandem snapshot"})

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			swapped := false
			_, err := snapshot.Receive(bytes.NewReader(tc.stream), dir, target, snapshot.Options{Workers: 1 + i%2, Swap: snapshot.Swap{
				Close: func() error { swapped = true; return nil },
			}})
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Receive = %v, want %v containing %q", err, tc.is, tc.msg)
			}
			if swapped {
				t.Errorf("the live database was closed for an unverified snapshot")
			}
			now, err := os.ReadFile(target)
			if err != nil || !bytes.Equal(now, oldBytes) {
				t.Errorf("previous database changed (%v)", err)
			}
			if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
				t.Errorf("dir after rejection = %v, want the temp file removed", names)
			}
		})
	}
}

// Receive reads exactly the snapshot, leaving what follows on the channel.
func TestReceiveReadsExactly(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 3, revisions: 3, size: 100}, 5)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{})
	r := bytes.NewReader(append(slices.Clone(stream), "NEXT MESSAGE"...))
	if _, err := snapshot.Receive(r, t.TempDir(), "config.db", snapshot.Options{}); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "NEXT MESSAGE" {
		t.Errorf("left %q on the reader", rest)
	}
}

func TestStaleTempCleanup(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 3, revisions: 3, size: 100}, 6)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{})

	dir := t.TempDir()
	stale := filepath.Join(dir, snapshot.TempPrefix+"0123456789abcdef"+snapshot.TempSuffix)
	if err := os.WriteFile(stale, []byte("a transfer killed halfway"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temp file in use (locked) by another transfer is kept.
	busyPath := filepath.Join(dir, snapshot.TempPrefix+"busy"+snapshot.TempSuffix)
	busy, err := os.Create(busyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := syscall.Flock(int(busy.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Receive(bytes.NewReader(stream), dir, "config.db", snapshot.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temp file not removed: %v", err)
	}
	if _, err := os.Stat(busyPath); err != nil {
		t.Errorf("temp file in use was removed: %v", err)
	}
	busy.Close() // lock released: now it is stale
	removed, err := snapshot.CleanTemp(dir)
	if err != nil || !slices.Equal(removed, []string{busyPath}) {
		t.Errorf("CleanTemp = %v, %v", removed, err)
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after -= len(p); w.after < 0 {
		return 0, errors.New("connection reset by peer")
	}
	return len(p), nil
}

func TestTakeErrorsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	src := build(t, dir, storeSpec{docs: 5, revisions: 20, size: 5000}, 7)
	defer src.Close()
	for _, after := range []int{0, 100, 10000} {
		_, err := snapshot.Take(src.DB(), &failingWriter{after: after}, snapshot.Options{ChunkSize: 16 << 10})
		if err == nil || !strings.Contains(err.Error(), "connection reset by peer") {
			t.Errorf("Take to a failing writer = %v", err)
		}
	}
	if _, err := snapshot.Take(src.DB(), io.Discard, snapshot.Options{ChunkSize: 100}); err == nil {
		t.Errorf("Take with a 100-byte chunk size succeeded")
	}
	if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("dir after failed Takes = %v, want only the database", names)
	}
}

func TestStageAndInstall(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 3, revisions: 3, size: 100}, 8)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "config.db")
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}

	st, err := snapshot.Stage(bytes.NewReader(stream), dir, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Close fails: nothing installed, the staged file kept for a retry.
	err = st.Install(target, snapshot.Swap{Close: func() error { return errors.New("busy") }})
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("Install with a failing Close = %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "old" {
		t.Errorf("target changed after a failed Close")
	}
	if err := st.Install(filepath.Join(t.TempDir(), "config.db"), snapshot.Swap{}); err == nil || !strings.Contains(err.Error(), "not in") {
		t.Errorf("Install into another directory = %v", err)
	}
	reopened := false
	if err := st.Install(target, snapshot.Swap{Reopen: func() error { reopened = true; return nil }}); err != nil || !reopened {
		t.Fatalf("Install = %v (reopened %v)", err, reopened)
	}
	if err := st.Install(target, snapshot.Swap{}); err == nil {
		t.Errorf("second Install succeeded")
	}
	st.Discard()
	if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("dir = %v", names)
	}
	s, err := configstore.Open(target, configstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	assertSameStore(t, src, s)

	// Discard without Install removes the temp file.
	st, err = snapshot.Stage(bytes.NewReader(stream), dir, snapshot.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Path() == "" {
		t.Fatal("no staged path")
	}
	st.Discard()
	if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("dir after Discard = %v", names)
	}
}

// publisher publishes 100 KB documents until stop closes, recording each
// Publish's latency while measuring is set.
type publisher struct {
	mu        sync.Mutex
	measuring bool
	lat       []time.Duration
	stop      chan struct{}
	done      chan error
	gap       time.Duration // between publishes
}

func startPublisher(s *configstore.Store, size int) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan error, 1), gap: 2 * time.Millisecond}
	go func() {
		rng := rand.New(rand.NewPCG(42, 42))
		doc := content(rng, size)
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				p.done <- nil
				return
			default:
			}
			doc[i%len(doc)]++
			time.Sleep(p.gap)
			start := time.Now()
			_, err := s.Publish(configstore.Publish{Category: "policies", Name: fmt.Sprint("live", i%50), Content: doc, Author: "load"})
			d := time.Since(start)
			if err != nil {
				p.done <- err
				return
			}
			p.mu.Lock()
			if p.measuring {
				p.lat = append(p.lat, d)
			}
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *publisher) measure(on bool) {
	p.mu.Lock()
	p.measuring = on
	p.mu.Unlock()
}

func (p *publisher) finish() ([]time.Duration, error) {
	close(p.stop)
	err := <-p.done
	slices.Sort(p.lat)
	return p.lat, err
}

// takeAndReceive streams a snapshot of s through a pipe into
// dir/received.db.
func takeAndReceive(s *configstore.Store, dir string) (snapshot.Manifest, error) {
	return takeAndReceiveOpts(s, dir, snapshot.Options{})
}

func takeAndReceiveOpts(s *configstore.Store, dir string, opts snapshot.Options) (snapshot.Manifest, error) {
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := snapshot.Take(s.DB(), pw, opts)
		pw.CloseWithError(err)
		errc <- err
	}()
	m, rerr := snapshot.Receive(pr, dir, "received.db", snapshot.Options{Workers: opts.Workers})
	pr.CloseWithError(errors.New("receiver done"))
	return m, errors.Join(<-errc, rerr)
}

// Publishing goes on while a snapshot of a large database is taken: no
// Publish waits for the Take (a writer blocked by the snapshot's read
// transaction would wait about as long as the Take). The bound is relative
// so that it holds under -race and on a loaded machine;
// BenchmarkSnapshot200MB reports the real latencies.
func TestTakeDoesNotBlockWriters(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds a large database")
	}
	docs := 400 // 45 MB
	if raceEnabled {
		docs = 50 // zstd is pure Go: 20x slower under -race
	}
	dir := t.TempDir()
	s := build(t, dir, storeSpec{docs: docs, revisions: docs, size: 100 << 10}, 10)
	s.Close()
	s, err := configstore.Open(filepath.Join(dir, "config.db"), configstore.Options{Node: "fw-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	p := startPublisher(s, 100<<10)
	time.Sleep(50 * time.Millisecond)
	p.measure(true)
	headBefore, _ := s.Head()
	var stream bytes.Buffer
	start := time.Now()
	m, err := snapshot.Take(s.DB(), &stream, snapshot.Options{})
	took := time.Since(start)
	p.measure(false)
	lat, perr := p.finish()
	if err != nil || perr != nil {
		t.Fatalf("Take: %v; publisher: %v", err, perr)
	}
	// The copy taken while writers went on is a consistent database.
	recvDir := t.TempDir()
	if _, err := snapshot.Receive(&stream, recvDir, "config.db", snapshot.Options{Check: true}); err != nil {
		t.Fatalf("Receive: %v", err)
	}
	got, err := configstore.Open(filepath.Join(recvDir, "config.db"), configstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	head, _ := got.Head()
	hist, _ := got.History(0)
	if head < headBefore || len(hist) != int(head) {
		t.Errorf("snapshot head %d with %d revisions; the store was at %d when Take started", head, len(hist), headBefore)
	}
	list, err := got.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list {
		if _, _, err := got.Get(d.Category, d.Name, 0); err != nil {
			t.Errorf("snapshot: %v", err)
		}
	}
	if len(lat) == 0 {
		t.Fatalf("no publish completed during a %s Take: writers were blocked", took)
	}
	maxLat := lat[len(lat)-1]
	t.Logf("Take of %d MB took %s; %d publishes during it, p50 %s, max %s", m.Size>>20, took, len(lat), lat[len(lat)/2], maxLat)
	if maxLat > took/2 {
		t.Errorf("a publish took %s during a %s Take: blocked by it", maxLat, took)
	}
}
