package snapshot_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

// The test binary is its own worker process: with workerEnv set, TestMain
// runs snapshot.RunWorker instead of the tests. workerDieEnv makes that
// worker exit at once — no cleanup, no result, as under SIGKILL — after it
// has read (stage) or written (take) that many stream bytes.
const (
	workerEnv     = "TANDEM_SNAPSHOT_TEST_WORKER"
	workerDieEnv  = "TANDEM_SNAPSHOT_TEST_WORKER_DIE_AFTER"
	workerHangEnv = "TANDEM_SNAPSHOT_TEST_WORKER_HANG" // never reads or writes
)

func runTestWorker() int {
	if os.Getenv(workerHangEnv) != "" {
		time.Sleep(time.Hour) // until the Worker kills it
	}
	var in io.Reader = os.Stdin
	var out io.Writer = os.Stdout
	if n, err := strconv.ParseInt(os.Getenv(workerDieEnv), 10, 64); err == nil {
		d := &dieAfter{left: n}
		in, out = readFunc(func(p []byte) (int, error) {
			k, err := os.Stdin.Read(p)
			d.count(k)
			return k, err
		}), writeFunc(func(p []byte) (int, error) {
			d.count(len(p))
			return os.Stdout.Write(p)
		})
	}
	return snapshot.RunWorker(os.Args[1:], in, out, os.Stderr)
}

type dieAfter struct{ left int64 }

func (d *dieAfter) count(n int) {
	if d.left -= int64(n); d.left < 0 {
		os.Exit(9)
	}
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

type writeFunc func([]byte) (int, error)

func (f writeFunc) Write(p []byte) (int, error) { return f(p) }

func testWorker(env ...string) *snapshot.Worker {
	return &snapshot.Worker{Command: []string{os.Args[0]}, Env: append([]string{workerEnv + "=1"}, env...)}
}

// transfer takes a snapshot of src with take and stages it into dir with
// stage, through a pipe as between the two daemons.
func transfer(t *testing.T, src *configstore.Store, take, stage snapshot.Runner, dir string, opts snapshot.Options) (snapshot.Manifest, *snapshot.Staged, error, error) {
	t.Helper()
	pr, pw := io.Pipe()
	var sent snapshot.Manifest
	var takeErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		sent, takeErr = take.Take(src.DB(), pw, opts)
		pw.CloseWithError(takeErr) // nil: EOF
	})
	st, stageErr := stage.Stage(pr, dir, opts)
	pr.CloseWithError(errors.New("stage returned"))
	wg.Wait()
	return sent, st, takeErr, stageErr
}

func TestWorkerRoundTrip(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 20, revisions: 200, size: 4000}, 11)
	defer src.Close()
	wk := testWorker()
	for _, tc := range []struct {
		name        string
		take, stage snapshot.Runner
		workers     int
	}{
		{"worker takes", wk, snapshot.InProcess, 1},
		{"worker stages", snapshot.InProcess, wk, 2},
		{"worker both ends", wk, wk, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sent, st, takeErr, stageErr := transfer(t, src, tc.take, tc.stage, dir, snapshot.Options{ChunkSize: 32 << 10, Workers: tc.workers, Check: true})
			if takeErr != nil || stageErr != nil {
				t.Fatalf("take: %v; stage: %v", takeErr, stageErr)
			}
			got := st.Manifest()
			if got.ID != sent.ID || got.Digest != sent.Digest || got.Size != sent.Size || got.StreamBytes != sent.StreamBytes || got.Chunks != sent.Chunks {
				t.Errorf("staged manifest %+v, sent %+v", got, sent)
			}
			dst := installAndOpen(t, st, dir)
			assertSameStore(t, src, dst)
			if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
				t.Errorf("dir = %v, want only the installed database", names)
			}
		})
	}
	// The worker ran below the test (SCHED_OTHER, nice 10 or more).
	if policy, nice := snapshot.LastScheduling(wk); policy != 0 || nice < snapshot.DefaultWorkerNice {
		t.Errorf("the worker ran at policy %d nice %d, want SCHED_OTHER (0) at nice >= %d", policy, nice, snapshot.DefaultWorkerNice)
	}
}

// The worker's copy is the database as of the snapshot's start, however
// much is published meanwhile: the daemon's read transaction keeps its
// pages, and the worker reads them from the file.
func TestWorkerTakeWhilePublishing(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 50, revisions: 300, size: 8000}, 12)
	defer src.Close()
	before, _ := src.Head()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var published int
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Rewrites of existing documents free pages that a later
			// commit reuses — unless the snapshot's transaction holds them.
			if _, err := src.Publish(configstore.Publish{Category: "policies", Name: "doc00003", Content: bytes.Repeat([]byte{byte(i)}, 20000), Author: "w"}); err != nil {
				t.Error(err)
				return
			}
			published++
		}
	})
	dir := t.TempDir()
	_, st, takeErr, stageErr := transfer(t, src, testWorker(), snapshot.InProcess, dir, snapshot.Options{ChunkSize: 16 << 10, Check: true})
	close(stop)
	wg.Wait()
	if takeErr != nil || stageErr != nil {
		t.Fatalf("take: %v; stage: %v", takeErr, stageErr)
	}
	dst := installAndOpen(t, st, dir)
	head, _ := dst.Head()
	if head < before {
		t.Fatalf("snapshot head %d, before it %d", head, before)
	}
	hash, _ := dst.HashAt(head)
	if h, ok := src.HashAt(head); !ok || h != hash {
		t.Errorf("snapshot at revision %d has hash %x, the source had %x there", head, hash[:4], h[:4])
	}
	t.Logf("%d publishes during the transfer; the snapshot holds revision %d (started at %d)", published, head, before)
}

// What the worker rejects is rejected as in the daemon: the same classes
// of error, no temp file left, the previous database untouched.
func TestWorkerStageRejects(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 20, revisions: 100, size: 4000}, 13)
	defer src.Close()
	stream, _ := takeBytes(t, src, snapshot.Options{ChunkSize: 32 << 10})
	dir := t.TempDir()
	target, oldBytes := previousDatabase(t, dir, 14)
	flipped := slices.Clone(stream)
	flipped[len(stream)/2] ^= 0x20
	for _, tc := range []struct {
		name   string
		stream []byte
		is     error
	}{
		{"flipped byte", flipped, snapshot.ErrCorrupt},
		{"truncated", stream[:len(stream)/2], snapshot.ErrTruncated},
		{"not a snapshot", []byte(strings.Repeat("GET / HTTP/1.1\r\n", 10)), snapshot.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testWorker().Stage(bytes.NewReader(tc.stream), dir, snapshot.Options{Workers: 2})
			if !errors.Is(err, tc.is) {
				t.Fatalf("Stage = %v, want %v", err, tc.is)
			}
			assertUntouched(t, dir, target, oldBytes)
		})
	}
}

// installAndOpen installs a staged snapshot as dir/config.db and opens it
// (closed at the test's end).
func installAndOpen(t *testing.T, st *snapshot.Staged, dir string) *configstore.Store {
	t.Helper()
	if err := st.Install("config.db", snapshot.Swap{}); err != nil {
		t.Fatal(err)
	}
	dst, err := configstore.Open(filepath.Join(dir, "config.db"), configstore.Options{Node: "fw-b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	return dst
}

// previousDatabase puts a small database at dir/config.db, the standby's
// before a transfer, and returns its path and bytes.
func previousDatabase(t testing.TB, dir string, seed uint64) (string, []byte) {
	t.Helper()
	old := build(t, dir, storeSpec{docs: 3, revisions: 5, size: 100}, seed)
	old.Close()
	target := filepath.Join(dir, "config.db")
	oldBytes, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	return target, oldBytes
}

func assertUntouched(t *testing.T, dir, target string, oldBytes []byte) {
	t.Helper()
	if now, err := os.ReadFile(target); err != nil || !bytes.Equal(now, oldBytes) {
		t.Errorf("previous database changed (%v)", err)
	}
	if names := onlyFiles(t, dir); !slices.Equal(names, []string{"config.db"}) {
		t.Errorf("dir = %v, want the temp file removed", names)
	}
}

// A worker killed halfway fails its job cleanly: the daemon's side removes
// the temp file (stage) or releases the read transaction (take).
func TestWorkerKilled(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 20, revisions: 200, size: 4000}, 15)
	stream, _ := takeBytes(t, src, snapshot.Options{ChunkSize: 32 << 10})
	dir := t.TempDir()
	target, oldBytes := previousDatabase(t, dir, 16)
	die := workerDieEnv + "=" + strconv.Itoa(len(stream)/2)

	_, err := testWorker(die).Stage(bytes.NewReader(stream), dir, snapshot.Options{})
	if err == nil || !strings.Contains(err.Error(), "without a result") {
		t.Errorf("stage with the worker killed = %v, want an error saying it ended without a result", err)
	}
	assertUntouched(t, dir, target, oldBytes)

	_, err = testWorker(die).Take(src.DB(), io.Discard, snapshot.Options{ChunkSize: 32 << 10})
	if err == nil || !strings.Contains(err.Error(), "without a result") {
		t.Errorf("take with the worker killed = %v, want an error saying it ended without a result", err)
	}
	closeWithin(t, src, 5*time.Second)
}

// A send that fails (the transfer cancelled) ends the worker and releases
// the read transaction.
func TestWorkerTakeSendFails(t *testing.T) {
	src := build(t, t.TempDir(), storeSpec{docs: 20, revisions: 200, size: 4000}, 17)
	errCancelled := errors.New("cancelled")
	var sent int
	w := writeFunc(func(p []byte) (int, error) {
		if sent += len(p); sent > 64<<10 {
			return 0, errCancelled
		}
		return len(p), nil
	})
	if _, err := testWorker().Take(src.DB(), w, snapshot.Options{ChunkSize: 16 << 10}); !errors.Is(err, errCancelled) {
		t.Errorf("Take = %v, want the send's error", err)
	}
	closeWithin(t, src, 5*time.Second)
}

// A worker that hangs — sends nothing, or takes nothing — is killed after
// WorkerStall: it must not keep the read transaction, or the daemon's
// configuration loop, for ever.
func TestWorkerStallKilled(t *testing.T) {
	defer func(d time.Duration) { snapshot.WorkerStall = d }(snapshot.WorkerStall)
	snapshot.WorkerStall = 300 * time.Millisecond
	src := build(t, t.TempDir(), storeSpec{docs: 5, revisions: 20, size: 4000}, 19)
	start := time.Now()
	_, err := testWorker(workerHangEnv+"=1").Take(src.DB(), io.Discard, snapshot.Options{})
	if err == nil || !strings.Contains(err.Error(), "sent nothing") {
		t.Errorf("take with a hung worker = %v, want it killed for sending nothing", err)
	}
	closeWithin(t, src, 5*time.Second)

	dir := t.TempDir()
	// More than the pipe holds, so that the writes block.
	_, err = testWorker(workerHangEnv+"=1").Stage(io.LimitReader(zeros{}, 8<<20), dir, snapshot.Options{})
	if err == nil || !strings.Contains(err.Error(), "took nothing") {
		t.Errorf("stage with a hung worker = %v, want it killed for taking nothing", err)
	}
	if names := onlyFiles(t, dir); len(names) != 0 {
		t.Errorf("dir after a killed stage = %v, want it empty", names)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the hung workers took %s to be dealt with", d)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// closeWithin closes s, failing if that waits on a read transaction left
// open (bbolt's Close waits for every one).
func closeWithin(t *testing.T, s *configstore.Store, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(d):
		t.Fatalf("the store did not close within %s: a snapshot's read transaction was left open", d)
	}
}

// In the daemon every thread is realtime; the worker it starts must not
// be: it leaves the realtime policy, every thread of it, first thing —
// and starting it changes nothing of this process's threads.
func TestWorkerFromRealtimeProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (SCHED_RR threads, as in the daemon)")
	}
	src := build(t, t.TempDir(), storeSpec{docs: 5, revisions: 20, size: 4000}, 18)
	defer src.Close()
	setAllThreads(t, unix.SCHED_RR, 1)
	defer setAllThreads(t, 0, 0)
	wk := testWorker()
	dir := t.TempDir()
	if _, _, takeErr, stageErr := transfer(t, src, wk, wk, dir, snapshot.Options{}); takeErr != nil || stageErr != nil {
		t.Fatalf("take: %v; stage: %v", takeErr, stageErr)
	}
	if policy, nice := snapshot.LastScheduling(wk); policy != 0 || nice != snapshot.DefaultWorkerNice {
		t.Errorf("the worker ran at policy %d nice %d, want SCHED_OTHER (0) at nice %d", policy, nice, snapshot.DefaultWorkerNice)
	}
	// Every thread of this process is still realtime (an earlier version
	// lowered the forking thread for the moment of the fork).
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		attr, err := unix.SchedGetAttr(tid, 0)
		if err == nil && attr.Policy != unix.SCHED_RR {
			t.Errorf("thread %d is at policy %d after starting workers, want SCHED_RR", tid, attr.Policy)
		}
	}
}

// setAllThreads puts every thread of the process under policy at prio
// (0, 0: SCHED_OTHER).
func setAllThreads(t *testing.T, policy, prio int) {
	t.Helper()
	runtime.GC() // start the collector's threads now, so they are caught
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: uint32(policy), Priority: uint32(prio)}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
			t.Fatalf("thread %d: %v", tid, err)
		}
	}
}
