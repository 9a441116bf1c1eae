package ctsync

import (
	"context"
	"flag"

	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/tandem-ha/tandem/internal/netnstest"
)

// Benchmarks against the real kernel (root). They are one-shot scenarios:
// run them with -benchtime=1x, e.g.
//
//	go test -run '^$' -bench . -benchtime=1x -ctsync.n=1000000 ./internal/ctsync/
var (
	benchN       = flag.Int("ctsync.n", 20000, "entries per conntrack benchmark")
	benchWorkers = flag.Int("ctsync.workers", 0, "SinkOptions.Workers in the sink benchmarks (0: default)")
	benchBatch   = flag.Int("ctsync.batch", 0, "SinkOptions.BatchSize in the sink benchmarks (0: default)")
)

// benchFlow is the j-th of a family of distinct established TCP/IPv4
// connections, a third of them source-NATed (to a pool, so reply tuples
// never clash).
func benchFlow(j int) conntrack.Flow {
	c := netip.AddrFrom4([4]byte{10, byte(64 + j>>22), byte(j >> 14), byte(j >> 6)})
	s := netip.AddrFrom4([4]byte{172, 16, 0, byte(j % 13)})
	f := conntrack.NewFlow(6, conntrack.StatusSeenReply|conntrack.StatusAssured, c, s, uint16(1024+j&63), 443, 3600, 0)
	f.ProtoInfo = tcpInfo(3, 7, 0x23, 0x23)
	if j%3 == 0 {
		f.TupleReply.IP.DestinationAddress = netip.AddrFrom4([4]byte{100, 64 + byte(j>>22), byte(j >> 14), byte(j >> 6)})
		f.TupleReply.Proto.DestinationPort = uint16(20000 + j&63)
		f.Status |= conntrack.StatusSrcNAT
	}
	return f
}

// raiseConntrackLimits makes room for n entries in every namespace
// (nf_conntrack_max is global, in the root namespace) and a hash table
// sized for them, and restores both when the benchmark ends.
func raiseConntrackLimits(b *testing.B, n int) {
	b.Helper()
	set := func(path string, want int) {
		old, err := os.ReadFile(path)
		if err != nil {
			b.Skipf("skipped: cannot read %s: %v", path, err)
		}
		cur, _ := strconv.Atoi(strings.TrimSpace(string(old)))
		if cur >= want {
			return
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
			b.Skipf("skipped: cannot raise %s to %d: %v", path, want, err)
		}
		b.Cleanup(func() {
			if err := os.WriteFile(path, old, 0o644); err != nil {
				b.Errorf("restore %s: %v", path, err)
			}
		})
	}
	set("/proc/sys/net/netfilter/nf_conntrack_max", 2*n+65536)
	set("/sys/module/nf_conntrack/parameters/hashsize", min(n, 4<<20))
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// createBench creates flows first..first+n-1 in the kernel from w
// goroutines, each with its own socket and batches.
func createBench(b *testing.B, nsh *netnstest.NS, first, n, w int) {
	var wg sync.WaitGroup
	per := (n + w - 1) / w
	var failed atomic.Int64
	for i := range w {
		lo, hi := first+i*per, min(first+(i+1)*per, first+n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialNetfilter(nsh.NsHandle, 8<<20)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			var m msgBuf
			for j := lo; j < hi; j += 256 {
				m.b = m.b[:0]
				var firstSeq uint32
				cnt := min(256, hi-j)
				for k := range cnt {
					f := benchFlow(j + k)
					seq := c.nextSeq()
					if k == 0 {
						firstSeq = seq
					}
					appendFlowMsg(&m, seq, &f, flowMsgOpts{create: true, timeout: f.Timeout})
				}
				setAck(m.b)
				if err := c.batch(m.b, firstSeq, firstSeq+uint32(cnt)-1, func(uint32, syscall.Errno) { failed.Add(1) }); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d creates failed", f)
	}
}

// BenchmarkSourceEvents creates N connections as fast as the kernel takes
// them (two goroutines, batches of 256) while a Source reports them, and
// checks that the report is complete: lost must be 0, whatever the
// overruns.
func BenchmarkSourceEvents(b *testing.B) {
	netnstest.RequireRoot(b)
	n := *benchN
	raiseConntrackLimits(b, n)
	for range b.N {
		b.StopTimer()
		ns := netnstest.New(b, netnstest.Prefix(), "bsrc")
		if _, err := ns.Exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"); err != nil {
			b.Fatal(err)
		}
		src, err := OpenSource(ns.NsHandle, nil, SourceOptions{ResyncInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		keys := make(map[string]struct{}, n)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- src.Run(ctx, func(batch []Change) {
				mu.Lock()
				for _, c := range batch {
					if c.Kind == Put {
						keys[string(c.Key)] = struct{}{}
					} else {
						delete(keys, string(c.Key))
					}
				}
				mu.Unlock()
			})
		}()
		for src.Stats().Dumps == 0 {
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()
		start := time.Now()
		createBench(b, ns, 0, n, 2)
		created := time.Since(start)
		for {
			mu.Lock()
			got := len(keys)
			mu.Unlock()
			if got >= n || time.Since(start) > 10*time.Minute {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		reported := time.Since(start)
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		st := src.Stats()
		_ = src.Close()
		lost := 0
		for j := range n {
			if _, ok := keys[string(Key(benchFlow(j)))]; !ok {
				lost++
			}
		}
		b.ReportMetric(float64(n)/created.Seconds(), "created/s")
		b.ReportMetric(float64(n)/reported.Seconds(), "reported/s")
		b.ReportMetric(float64(lost), "lost")
		b.ReportMetric(float64(st.Overruns), "overruns")
		b.ReportMetric(float64(st.Dumps), "dumps")
		b.Logf("N=%d: created in %v, all reported after %v; stats %+v", n, created, reported, st)
		if lost != 0 {
			b.Errorf("%d of %d connections never reported", lost, n)
		}
	}
}

// putAll puts N entries into the sink, generated on the fly so the
// benchmark itself keeps no copy.
func putAll(k *Sink, n int) {
	var vb []byte
	for j := range n {
		f := benchFlow(j)
		vb = EncodeFlow(vb[:0], f)
		k.Put(TableConntrack, Key(f), vb)
	}
}

func countFlows(b *testing.B, ns *netnstest.NS) int {
	st, err := readSysctl(ns.NsHandle, "net/netfilter/nf_conntrack_count")
	if err != nil {
		b.Fatal(err)
	}
	v, _ := strconv.Atoi(st)
	return v
}

// BenchmarkSinkInject: continuous injection (Inject mode). N Puts arrive
// as fast as the caller can make them; entries/s is until every one is in
// the standby's kernel table; promote is what is left to do at promotion
// (give the entries their replicated timeouts); B/entry is the standby
// process's heap per replicated entry.
func BenchmarkSinkInject(b *testing.B) { benchSink(b, Inject) }

// BenchmarkSinkHoldPromote: commit on promotion (Hold mode). N Puts are
// kept in memory (B/entry); promote writes them all into the kernel.
func BenchmarkSinkHoldPromote(b *testing.B) { benchSink(b, Hold) }

func benchSink(b *testing.B, mode SinkMode) {
	netnstest.RequireRoot(b)
	n := *benchN
	raiseConntrackLimits(b, n)
	for range b.N {
		b.StopTimer()
		ns := netnstest.New(b, netnstest.Prefix(), "bsnk")
		k, err := OpenSink(ns.NsHandle, nil, SinkOptions{Mode: mode, Workers: *benchWorkers, BatchSize: *benchBatch})
		if err != nil {
			b.Fatal(err)
		}
		heap0 := heapInUse()
		b.StartTimer()
		start := time.Now()
		putAll(k, n)
		puts := time.Since(start)
		if err := k.Flush(); err != nil {
			b.Fatal(err)
		}
		stored := time.Since(start)
		b.StopTimer()
		heap1 := heapInUse()
		b.StartTimer()
		ps, err := k.Promote(context.Background())
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		inKernel := countFlows(b, ns)
		st := k.Stats()
		_ = k.Close()
		if inKernel != n || ps.Failed != 0 || st.Failed != 0 {
			b.Fatalf("%d of %d entries in the kernel; promote %+v; stats %+v", inKernel, n, ps, st)
		}
		perEntry := float64(int64(heap1)-int64(heap0)) / float64(n)
		b.ReportMetric(float64(n)/puts.Seconds(), "puts/s")
		if mode == Inject {
			b.ReportMetric(float64(n)/stored.Seconds(), "injected/s")
		} else {
			b.ReportMetric(float64(n)/ps.Duration.Seconds(), "injected/s")
		}
		b.ReportMetric(float64(ps.Duration.Milliseconds()), "promote-ms")
		b.ReportMetric(perEntry, "B/entry")
		b.Logf("%s N=%d: puts %v, in kernel after %v, promote %v (%+v), standby heap %.0f B/entry",
			mode, n, puts, stored, ps.Duration, ps, perEntry)
	}
}
