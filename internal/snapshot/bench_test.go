package snapshot_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/configstore"
	"github.com/tandem-ha/tandem/internal/snapshot"
)

func TestMain(m *testing.M) {
	// This binary is also the worker process of the Worker tests.
	if os.Getenv(workerEnv) != "" {
		os.Exit(runTestWorker())
	}
	code := m.Run()
	if bigDir != "" {
		os.RemoveAll(bigDir)
	}
	os.Exit(code)
}

var (
	bigOnce sync.Once
	bigDir  string
	bigErr  error
)

// bigDB builds, once per process, a ~200 MB database: 2,000 documents of
// 100 KB of mildly compressible text.
func bigDB(b *testing.B) string {
	bigOnce.Do(func() {
		bigDir, bigErr = os.MkdirTemp("", "tandem-bench-")
		if bigErr != nil {
			return
		}
		start := time.Now()
		s := build(b, bigDir, storeSpec{docs: 2000, revisions: 2000, size: 100 << 10}, 99)
		bigErr = s.Close()
		fi, _ := os.Stat(filepath.Join(bigDir, "config.db"))
		b.Logf("built a %d MB database in %s", fi.Size()>>20, time.Since(start).Round(time.Millisecond))
	})
	if bigErr != nil {
		b.Fatal(bigErr)
	}
	return filepath.Join(bigDir, "config.db")
}

// BenchmarkSnapshot200MB takes a snapshot of a ~200 MB database and
// receives it through an in-memory pipe, while a writer publishes 100 KB
// documents (fsync on, 2 ms apart) the whole time. Each iteration starts
// from a fresh copy of the database. Reported: end-to-end seconds (Take
// start to Receive's return, the file fsynced and renamed), and the
// writer's Publish latencies during the snapshot (max = the worst stall)
// next to the same writer's latencies with no snapshot running.
//
// receiver=same-disk writes the received file on the ACTIVE's own disk
// (its fsync of 200 MB competes with the writer's fsyncs, which a real
// standby on its own machine does not); receiver=tmpfs receives into
// /dev/shm, standing in for the standby's separate disk. The receiver's
// CPU is this machine's too, unlike a real pair.
func BenchmarkSnapshot200MB(b *testing.B) {
	base := bigDB(b)
	type target struct{ name, dir string }
	targets := []target{{"receiver=tmpfs", "/dev/shm"}, {"receiver=same-disk", ""}}
	for _, tg := range targets {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/workers=%d", tg.name, workers), func(b *testing.B) {
				benchSnapshot(b, base, tg.dir, snapshot.Options{Workers: workers})
			})
		}
	}
}

// cpuTime is the CPU time (user + system) this process used so far: the
// writer's, Take's and Receive's together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func benchSnapshot(b *testing.B, base, recvParent string, opts snapshot.Options) {
	if recvParent != "" {
		if _, err := os.Stat(recvParent); err != nil {
			b.Skipf("no %s: %v", recvParent, err)
		}
	}
	recvDir, err := os.MkdirTemp(recvParent, "tandem-bench-recv-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(recvDir)
	work := filepath.Join(b.TempDir(), "config.db")
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	pct := func(l []time.Duration, p float64) time.Duration {
		if len(l) == 0 {
			return 0
		}
		return l[min(len(l)-1, int(float64(len(l))*p))]
	}
	var e2e, cpu time.Duration
	var during, baseline []time.Duration
	var size int64
	b.StopTimer()
	for i := range b.N {
		if err := copyFile(work, base); err != nil {
			b.Fatal(err)
		}
		s, err := configstore.Open(work, configstore.Options{Node: "fw-a"})
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 { // the writer alone, for comparison
			p := startPublisher(s, 100<<10)
			p.measure(true)
			time.Sleep(time.Second)
			if baseline, err = p.finish(); err != nil {
				b.Fatal(err)
			}
		}
		p := startPublisher(s, 100<<10)
		time.Sleep(20 * time.Millisecond)
		p.measure(true)
		b.StartTimer()
		start, cpu0 := time.Now(), cpuTime()
		m, err := takeAndReceiveOpts(s, recvDir, opts)
		e2e += time.Since(start)
		cpu += cpuTime() - cpu0
		b.StopTimer()
		p.measure(false)
		lat, perr := p.finish()
		if err != nil || perr != nil {
			b.Fatalf("snapshot: %v; publisher: %v", err, perr)
		}
		during = append(during, lat...)
		size = m.Size
		s.Close()
		os.Remove(filepath.Join(recvDir, "received.db"))
	}
	slices.Sort(during)
	b.ReportMetric(e2e.Seconds()/float64(b.N), "s-e2e/op")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "s-cpu/op")
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average: %s", bytes.TrimSpace(la))
	}
	b.ReportMetric(float64(size)/(1<<20), "MB-db")
	b.ReportMetric(ms(pct(during, 1)), "ms-max-publish-during")
	b.ReportMetric(ms(pct(during, 0.99)), "ms-p99-publish-during")
	b.ReportMetric(ms(pct(during, 0.5)), "ms-p50-publish-during")
	b.ReportMetric(ms(pct(baseline, 1)), "ms-max-publish-alone")
	b.ReportMetric(ms(pct(baseline, 0.5)), "ms-p50-publish-alone")
	b.ReportMetric(float64(len(during))/float64(b.N), "publishes-during/op")
}

// BenchmarkPublish100KB measures Publish of a 100 KB document, reporting
// p50 and p99 latency: fsync=on is the real thing (two fdatasyncs per
// commit); fsync=off shows the CPU part alone.
func BenchmarkPublish100KB(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		name := "fsync=on"
		if noSync {
			name = "fsync=off"
		}
		b.Run(name, func(b *testing.B) { benchPublish(b, noSync) })
	}
}

func benchPublish(b *testing.B, noSync bool) {
	s, err := configstore.Open(filepath.Join(b.TempDir(), "config.db"), configstore.Options{Node: "fw-a", NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	doc := content(rand.New(rand.NewPCG(1, 2)), 100<<10)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(int64(len(doc)))
	b.ResetTimer()
	for i := range b.N {
		doc[i%len(doc)]++
		start := time.Now()
		if _, err := s.Publish(configstore.Publish{Category: "policies", Name: fmt.Sprint("doc", i%100), Content: doc, Author: "bench"}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "ms-p50")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)])/1e6, "ms-p99")
}
