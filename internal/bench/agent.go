package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// probes is what a benchmark reads from the probe traffic: a Prober in
// this process, or one in a probe agent process.
type probes interface {
	Mark() time.Duration
	GapBetween(from, to time.Duration) (time.Duration, bool)
	LastAnswer() (time.Duration, bool)
	Flowing(window, maxGap time.Duration) bool
	Lost(from, to time.Duration) (lost, sent int)
	LossWindow(from, to time.Duration) time.Duration
	MaxRTT(from, to time.Duration) time.Duration
	MaxSendGap(from, to time.Duration) time.Duration
}

var _ probes = (*Prober)(nil)

// The probe agent is the measuring instrument in a process of its own: the
// echo server and the prober of a lab, run under SCHED_RR (below the HA
// daemons' priority) so that other load on the machine does not show up as
// outage, answering queries on stdin/stdout one JSON line at a time. It
// starts no process, so its realtime policy reaches nothing else.

type agentReq struct {
	Op     string        `json:"op"` // mark, gap, last, flowing, lost, losswin, rtt, sendgap
	From   time.Duration `json:"from,omitempty"`
	To     time.Duration `json:"to,omitempty"`
	Window time.Duration `json:"window,omitempty"`
	MaxGap time.Duration `json:"max_gap,omitempty"`
}

type agentResp struct {
	D   time.Duration `json:"d"`
	OK  bool          `json:"ok"`
	N   int           `json:"n"`
	M   int           `json:"m"`
	Err string        `json:"err,omitempty"`
}

// RunProbeAgent runs the echo server and the prober in lab name, answers
// queries from in on out, and returns when in ends.
func RunProbeAgent(name string, rtPriority int, in io.Reader, out io.Writer) error {
	l, err := lab.Open(lab.Options{Name: name})
	if err != nil {
		return err
	}
	tr, err := startTraffic(l)
	if err != nil {
		return err
	}
	defer tr.stop()
	if err := setRealtime(rtPriority); err != nil {
		return err
	}
	p := tr.prober.(*Prober)
	enc := json.NewEncoder(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var q agentReq
		var r agentResp
		if err := json.Unmarshal(sc.Bytes(), &q); err != nil {
			r.Err = err.Error()
		} else {
			switch q.Op {
			case "mark":
				r.D, r.OK = p.Mark(), true
			case "gap":
				r.D, r.OK = p.GapBetween(q.From, q.To)
			case "last":
				r.D, r.OK = p.LastAnswer()
			case "flowing":
				r.OK = p.Flowing(q.Window, q.MaxGap)
			case "lost":
				r.N, r.M = p.Lost(q.From, q.To)
				r.OK = true
			case "losswin":
				r.D, r.OK = p.LossWindow(q.From, q.To), true
			case "rtt":
				r.D, r.OK = p.MaxRTT(q.From, q.To), true
			case "sendgap":
				r.D, r.OK = p.MaxSendGap(q.From, q.To), true
			default:
				r.Err = "unknown op " + q.Op
			}
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return sc.Err()
}

// remoteProbes is a probe agent this process started.
type remoteProbes struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan struct{}

	mu  sync.Mutex
	err error
}

// startAgent starts argv (with "{lab}" replaced by the lab's name) and
// waits until its traffic flows.
func startAgent(argv []string, labName string) (*remoteProbes, error) {
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = strings.ReplaceAll(a, "{lab}", labName)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start probe agent: %w", err)
	}
	r := &remoteProbes{cmd: cmd, in: in, out: bufio.NewScanner(outp), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	// The first answer proves it runs.
	if _, ok := r.call(agentReq{Op: "mark"}); !ok {
		err := r.failure()
		r.stop()
		return nil, fmt.Errorf("probe agent: %w", err)
	}
	return r, nil
}

func (r *remoteProbes) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		return errors.New("no answer")
	}
	return r.err
}

func (r *remoteProbes) call(q agentReq) (agentResp, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return agentResp{}, false
	}
	b, _ := json.Marshal(q)
	if _, err := r.in.Write(append(b, '\n')); err != nil {
		r.err = fmt.Errorf("probe agent: %w", err)
		return agentResp{}, false
	}
	if !r.out.Scan() {
		r.err = fmt.Errorf("probe agent exited: %v", r.out.Err())
		return agentResp{}, false
	}
	var a agentResp
	if err := json.Unmarshal(r.out.Bytes(), &a); err != nil {
		r.err = fmt.Errorf("probe agent: %w", err)
		return agentResp{}, false
	}
	if a.Err != "" {
		r.err = fmt.Errorf("probe agent: %s", a.Err)
		return agentResp{}, false
	}
	return a, true
}

func (r *remoteProbes) Mark() time.Duration {
	a, _ := r.call(agentReq{Op: "mark"})
	return a.D
}

func (r *remoteProbes) GapBetween(from, to time.Duration) (time.Duration, bool) {
	a, ok := r.call(agentReq{Op: "gap", From: from, To: to})
	return a.D, ok && a.OK
}

func (r *remoteProbes) LastAnswer() (time.Duration, bool) {
	a, ok := r.call(agentReq{Op: "last"})
	return a.D, ok && a.OK
}

func (r *remoteProbes) Flowing(window, maxGap time.Duration) bool {
	a, ok := r.call(agentReq{Op: "flowing", Window: window, MaxGap: maxGap})
	return ok && a.OK
}

func (r *remoteProbes) Lost(from, to time.Duration) (int, int) {
	a, _ := r.call(agentReq{Op: "lost", From: from, To: to})
	return a.N, a.M
}

func (r *remoteProbes) LossWindow(from, to time.Duration) time.Duration {
	a, _ := r.call(agentReq{Op: "losswin", From: from, To: to})
	return a.D
}

func (r *remoteProbes) MaxRTT(from, to time.Duration) time.Duration {
	a, _ := r.call(agentReq{Op: "rtt", From: from, To: to})
	return a.D
}

func (r *remoteProbes) MaxSendGap(from, to time.Duration) time.Duration {
	a, _ := r.call(agentReq{Op: "sendgap", From: from, To: to})
	return a.D
}

// stop closes the agent's stdin (it stops its traffic and exits) and kills
// it by PID if it has not exited within 3s.
func (r *remoteProbes) stop() {
	_ = r.in.Close()
	select {
	case <-r.done:
	case <-time.After(3 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// startProbes starts the probe traffic of l: in a probe agent when argv is
// set, else in this process.
func startProbes(ctx context.Context, l *lab.Lab, argv []string) (*traffic, error) {
	if len(argv) == 0 {
		return startTraffic(l)
	}
	r, err := startAgent(argv, l.Name())
	if err != nil {
		return nil, err
	}
	return &traffic{prober: r, stopFn: r.stop}, ctx.Err()
}
