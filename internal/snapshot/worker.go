package snapshot

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/sched"
)

// A Runner takes and stages snapshots: InProcess in the calling process, a
// Worker in a child process.
type Runner interface {
	Take(db *bbolt.DB, w io.Writer, opts Options) (Manifest, error)
	Stage(r io.Reader, dir string, opts Options) (*Staged, error)
}

// InProcess runs Take and Stage in the calling goroutine.
var InProcess Runner = inProcess{}

type inProcess struct{}

func (inProcess) Take(db *bbolt.DB, w io.Writer, opts Options) (Manifest, error) {
	return Take(db, w, opts)
}

func (inProcess) Stage(r io.Reader, dir string, opts Options) (*Staged, error) {
	return Stage(r, dir, opts)
}

// Worker runs the bulk half of Take and Stage — reading, compressing and
// tagging the database; checking, decompressing, writing and fsyncing a
// received copy — in a child process at normal priority (SCHED_OTHER,
// nice Nice), below a realtime daemon. Inside the daemon that work shared
// the HA loop's priority, its CPUs and its Go heap: a 280 MB transfer
// held the event loop and the ACTIVE's publishes for hundreds of
// milliseconds (BENCHMARKS.md, findings 16, 18 and 22). In its own
// process the kernel preempts it for any of the daemon's threads, and its
// allocations never touch the daemon's heap.
//
// What stays in the daemon is what must: the read transaction that keeps
// the pages of the copy from being reused (the worker reads them from the
// file; the daemon hands it the meta pages of its transaction), and the
// temp file with its lock (the worker writes into it). The daemon only
// forwards the stream between the worker's pipes and the sync channel.
type Worker struct {
	// Command runs RunWorker in the child: the tandem binary and
	// "snapshot-worker".
	Command []string
	// Env is added to the child's environment (tests).
	Env []string
	// Nice is the child's nice value; 0 means DefaultWorkerNice.
	Nice int

	mu   sync.Mutex
	last workerResult // the last job's report: how it was scheduled (tests)
}

func (wk *Worker) noteScheduling(r workerResult) {
	wk.mu.Lock()
	wk.last = r
	wk.mu.Unlock()
}

// DefaultWorkerNice is the worker's nice value: it yields to the daemon's
// threads, and to other work of the machine, by a wide margin.
const DefaultWorkerNice = 10

// WorkerStall is how long a worker may send nothing (take) or take
// nothing (stage) before it is killed: a stuck worker must not hold the
// read transaction, or the configuration loop, for ever.
var WorkerStall = 30 * time.Second

// workerPipe is the capacity asked for the stream's pipes: a whole sync
// window in flight without the sender waiting on the reader.
const workerPipe = 1 << 20

// workerResult is what the worker reports on fd 3 when it is done.
type workerResult struct {
	Manifest Manifest `json:"manifest"`
	Error    string   `json:"error,omitempty"`
	Kind     string   `json:"kind,omitempty"` // "corrupt", "truncated": the error's class
	// How the worker was scheduled: the policy (0 = SCHED_OTHER) and nice.
	Policy int `json:"policy"`
	Nice   int `json:"nice"`
}

// workerError is an error the worker reported, with its class.
type workerError struct {
	msg  string
	kind error
}

func (e *workerError) Error() string { return e.msg }
func (e *workerError) Unwrap() error { return e.kind }

func (r workerResult) err() error {
	if r.Error == "" {
		return nil
	}
	var kind error
	switch r.Kind {
	case "corrupt":
		kind = ErrCorrupt
	case "truncated":
		kind = ErrTruncated
	}
	return &workerError{msg: r.Error, kind: kind}
}

// Take sends a snapshot of db to w like Take, the copy made by the worker.
func (wk *Worker) Take(db *bbolt.DB, w io.Writer, opts Options) (Manifest, error) {
	start := time.Now()
	opts = opts.withDefaults()
	// Opened before the transaction and checked after it: a store swapped
	// in between would give the worker another file than the meta pages.
	f, err := os.Open(db.Path())
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: open %s for the worker: %w", db.Path(), err)
	}
	defer f.Close()
	tx, err := db.Begin(false)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: %w", err)
	}
	// Held until the worker has exited: no page of the copy is reused.
	defer func() { _ = tx.Rollback() }()
	if fi, err := f.Stat(); err != nil {
		return Manifest{}, fmt.Errorf("snapshot: %w", err)
	} else if pi, err := os.Stat(db.Path()); err != nil || !os.SameFile(fi, pi) {
		return Manifest{}, fmt.Errorf("snapshot: %s was replaced while the snapshot started; the next one will copy the new file", db.Path())
	}
	meta, err := captureMeta(tx)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: %w", err)
	}
	cmd := wk.command("take", "--size", strconv.FormatInt(tx.Size(), 10), "--meta", strconv.Itoa(len(meta)),
		"--chunk-size", strconv.Itoa(opts.ChunkSize), "--level", strconv.Itoa(opts.Level), "--workers", strconv.Itoa(opts.Workers))
	cmd.Stdin = bytes.NewReader(meta)
	out, outW, err := os.Pipe()
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: %w", err)
	}
	defer out.Close()
	cmd.Stdout = outW
	res, err := wk.run(cmd, outW, f)
	if err != nil {
		return Manifest{}, err
	}
	setPipeSize(out)
	_, copyErr := io.CopyBuffer(writerOnly{w}, stallReader{out}, make([]byte, 256<<10))
	if copyErr != nil {
		_ = cmd.Process.Kill() // started here; Wait below reaps it
		if errors.Is(copyErr, os.ErrDeadlineExceeded) {
			copyErr = fmt.Errorf("the worker process sent nothing for %s; killed it", WorkerStall)
		}
	}
	r, err := res.wait()
	wk.noteScheduling(r)
	switch {
	case copyErr != nil:
		return r.Manifest, fmt.Errorf("snapshot: %w", copyErr)
	case err != nil:
		return r.Manifest, err
	}
	r.Manifest.Duration = time.Since(start)
	return r.Manifest, nil
}

// Stage receives a snapshot from r into a temp file in dir like Stage,
// the checking and writing done by the worker.
func (wk *Worker) Stage(r io.Reader, dir string, opts Options) (*Staged, error) {
	start := time.Now()
	opts = opts.withDefaults()
	_, _ = CleanTemp(dir) // best effort, as Stage
	f, err := createTemp(dir)
	if err != nil {
		return &Staged{}, fmt.Errorf("snapshot: temp file: %w", err)
	}
	cmd := wk.command("stage", "--path", f.Name(), "--workers", strconv.Itoa(opts.Workers))
	in, inW, err := os.Pipe()
	if err != nil {
		removeTemp(f)
		return &Staged{}, fmt.Errorf("snapshot: %w", err)
	}
	cmd.Stdin = in
	// The worker opens the temp file by its path: the lock stays with this
	// process's descriptor alone, so it ends with this process (a unit
	// killed mid-transfer leaves a file the next CleanTemp removes).
	res, err := wk.run(cmd, in, nil)
	if err != nil {
		inW.Close()
		removeTemp(f)
		return &Staged{}, err
	}
	setPipeSize(inW)
	// The worker stops reading at the trailer (or at an error): a failed
	// write ends the forwarding and its result says why. A failed read is
	// the caller abandoning the transfer.
	var readErr error
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_ = inW.SetWriteDeadline(time.Now().Add(WorkerStall))
			if _, werr := inW.Write(buf[:n]); werr != nil {
				if errors.Is(werr, os.ErrDeadlineExceeded) {
					readErr = fmt.Errorf("the worker process took nothing for %s; killed it", WorkerStall)
					_ = cmd.Process.Kill()
				}
				break
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			_ = cmd.Process.Kill() // started here; wait reaps it
			break
		}
	}
	inW.Close()
	rr, err := res.wait()
	wk.noteScheduling(rr)
	if readErr != nil {
		err = fmt.Errorf("snapshot: stage: %w", readErr)
	}
	if err == nil {
		err = checkStaged(f.Name(), rr.Manifest, opts.Check)
	}
	return staged(f, rr.Manifest, err, start)
}

// command is the worker's command line for one job.
func (wk *Worker) command(args ...string) *exec.Cmd {
	nice := wk.Nice
	if nice == 0 {
		nice = DefaultWorkerNice
	}
	args = append(args, "--nice", strconv.Itoa(nice))
	cmd := exec.Command(wk.Command[0], append(append([]string{}, wk.Command[1:]...), args...)...)
	cmd.Env = append(os.Environ(), wk.Env...)
	return cmd
}

// pendingResult is a started worker: its result pipe and stderr.
type pendingResult struct {
	cmd    *exec.Cmd
	r      *os.File
	stderr *tailBuffer
}

// run starts cmd with fd 3 its result pipe
// and fd 4 file (if any); childEnd (the child's end of the stream pipe) is closed
// here once the child has it.
func (wk *Worker) run(cmd *exec.Cmd, childEnd, file *os.File) (*pendingResult, error) {
	defer childEnd.Close()
	resR, resW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer resW.Close()
	stderr := &tailBuffer{max: 4096}
	cmd.Stderr = stderr
	cmd.ExtraFiles = []*os.File{resW}
	if file != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, file)
	}
	// The worker leaves the daemon's realtime policy and raises its nice
	// value itself, first thing (RunWorker's --nice, sched.LeaveRealtime). Not
	// by forking from a thread taken out of realtime: Go forks with
	// vfork, which holds the forking thread's P, with signals blocked,
	// until the child execs — a child at normal priority, starved by the
	// realtime threads, then held the collector's stop-the-world, and
	// with it the whole daemon, for up to a second (finding 26).
	if err := cmd.Start(); err != nil {
		resR.Close()
		return nil, fmt.Errorf("snapshot: start the worker process %s: %w", cmd.Path, err)
	}
	return &pendingResult{cmd: cmd, r: resR, stderr: stderr}, nil
}

// wait reads the worker's result and reaps it.
func (p *pendingResult) wait() (workerResult, error) {
	var r workerResult
	data, rerr := io.ReadAll(p.r)
	p.r.Close()
	werr := p.cmd.Wait()
	if rerr == nil && len(data) > 0 {
		if err := json.Unmarshal(data, &r); err == nil {
			return r, r.err()
		}
	}
	msg := strings.TrimSpace(p.stderr.String())
	if msg == "" {
		msg = "no output"
	}
	return r, fmt.Errorf("snapshot: the worker process ended without a result (%v): %s", werr, msg)
}

// captureMeta returns the two meta pages tx.WriteTo would write for tx:
// the worker copies the rest of the file itself.
func captureMeta(tx *bbolt.Tx) ([]byte, error) {
	c := &metaCapture{want: 2 * tx.DB().Info().PageSize}
	_, err := tx.WriteTo(c)
	if !errors.Is(err, errMetaCaptured) || len(c.buf) != c.want {
		return nil, fmt.Errorf("capture the meta pages: got %d of %d bytes (%v)", len(c.buf), c.want, err)
	}
	return c.buf, nil
}

var errMetaCaptured = errors.New("meta pages captured")

type metaCapture struct {
	buf  []byte
	want int
}

func (c *metaCapture) Write(p []byte) (int, error) {
	if len(c.buf) >= c.want {
		return 0, errMetaCaptured
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// RunWorker is the worker process: `tandem snapshot-worker take|stage`,
// started by a Worker with the result pipe on fd 3 and, to take, the
// database file on fd 4. It returns the exit code.
func RunWorker(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "take" && args[0] != "stage") {
		fmt.Fprintln(stderr, "snapshot-worker: take or stage expected; this command is started by the tandem daemon, not by hand")
		return 2
	}
	fl := flag.NewFlagSet("snapshot-worker "+args[0], flag.ContinueOnError)
	fl.SetOutput(stderr)
	size := fl.Int64("size", 0, "database bytes (take)")
	metaLen := fl.Int("meta", 0, "meta page bytes on standard input (take)")
	chunk := fl.Int("chunk-size", DefaultChunkSize, "raw bytes per chunk (take)")
	level := fl.Int("level", 0, "zstd level (take)")
	workers := fl.Int("workers", 1, "goroutines")
	path := fl.String("path", "", "the temp file's path (stage)")
	nice := fl.Int("nice", DefaultWorkerNice, "this process's nice value")
	if err := fl.Parse(args[1:]); err != nil {
		return 2
	}
	res := os.NewFile(3, "result")
	if res == nil {
		fmt.Fprintln(stderr, "snapshot-worker: no result pipe (fd 3); this command is started by the tandem daemon")
		return 2
	}
	if err := sched.LeaveRealtime(*nice); err != nil {
		fmt.Fprintln(stderr, "snapshot-worker: scheduling:", err) // it still works, at the daemon's
	}
	opts := Options{ChunkSize: *chunk, Level: *level, Workers: *workers}
	var m Manifest
	var err error
	switch args[0] {
	case "take":
		m, err = workerTake(stdin, stdout, os.NewFile(4, "database"), *size, *metaLen, opts)
	case "stage":
		m, err = workerStage(stdin, *path, opts.withDefaults())
	}
	r := workerResult{Manifest: m}
	if attr, aerr := unix.SchedGetAttr(0, 0); aerr == nil {
		r.Policy, r.Nice = int(attr.Policy), int(attr.Nice)
	}
	code := 0
	if err != nil {
		r.Error, code = err.Error(), 1
		switch {
		case errors.Is(err, ErrCorrupt):
			r.Kind = "corrupt"
		case errors.Is(err, ErrTruncated):
			r.Kind = "truncated"
		}
	}
	if err := json.NewEncoder(res).Encode(r); err != nil {
		fmt.Fprintln(stderr, "snapshot-worker: report:", err)
		return 1
	}
	return code
}

// workerStage writes the snapshot on stdin into the temp file at path,
// which the daemon created and holds locked (and checks as a database
// once this is done: the worker never locks it).
func workerStage(stdin io.Reader, path string, opts Options) (Manifest, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: temp file: %w", err)
	}
	defer f.Close()
	return stageInto(stdin, f, opts)
}

// workerTake streams the snapshot of the file whose meta pages come on
// stdin, size bytes in all, to stdout.
func workerTake(stdin io.Reader, stdout io.Writer, file *os.File, size int64, metaLen int, opts Options) (Manifest, error) {
	if file == nil {
		return Manifest{}, errors.New("snapshot: no database file (fd 4); this command is started by the tandem daemon")
	}
	if metaLen <= 0 || int64(metaLen) >= size {
		return Manifest{}, fmt.Errorf("snapshot: bad worker arguments: meta %d bytes of a %d-byte database", metaLen, size)
	}
	meta := make([]byte, metaLen)
	if _, err := io.ReadFull(stdin, meta); err != nil {
		return Manifest{}, fmt.Errorf("snapshot: read the meta pages: %w", err)
	}
	src := io.MultiReader(bytes.NewReader(meta), io.NewSectionReader(file, int64(metaLen), size-int64(metaLen)))
	bw := bufio.NewWriterSize(stdout, 256<<10)
	m, err := take(size, func(cw io.Writer) error {
		_, err := io.Copy(cw, src)
		return err
	}, bw, opts)
	if err == nil {
		if err = bw.Flush(); err != nil {
			err = fmt.Errorf("snapshot: send trailer: %w", err)
		}
	}
	return m, err
}

// setPipeSize asks for a larger pipe (best effort). Through SyscallConn:
// Fd would put the pipe in blocking mode.
func setPipeSize(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, workerPipe) })
	}
}

// writerOnly hides ReadFrom, so that a copy uses the buffer it is given.
type writerOnly struct{ io.Writer }

// stallReader reads the worker's output, each read failing once the
// worker has sent nothing for WorkerStall (and hiding WriteTo, as
// writerOnly hides ReadFrom).
type stallReader struct{ f *os.File }

func (r stallReader) Read(p []byte) (int, error) {
	_ = r.f.SetReadDeadline(time.Now().Add(WorkerStall))
	return r.f.Read(p)
}

// tailBuffer keeps the last max bytes written (the worker's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
