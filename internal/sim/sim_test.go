package sim

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/ha"
)

var (
	flagN    = flag.Int("sim.n", 3000, "number of seeded scenarios TestScenarios runs")
	flagBase = flag.Uint64("sim.base", 1, "first seed; scenarios use base .. base+n-1")
	flagSeed = flag.Uint64("sim.seed", 0, "replay this one seed with a full trace")
)

// TestScenarios runs thousands of seeded failure scenarios against the real
// state machine. A failure prints its seed and the command that replays it
// with a trace.
func TestScenarios(t *testing.T) {
	if *flagSeed != 0 {
		o := Run(*flagSeed, Options{Trace: func(l string) { t.Log(l) }})
		t.Logf("%s", o)
		if o.Err != nil {
			t.Fatalf("violation: %v", o.Err)
		}
		return
	}
	n := *flagN
	if testing.Short() {
		n = 300
	}
	start := time.Now()
	outcomes := runMany(*flagBase, n, Options{})
	families := map[string]int{}
	failed := 0
	for _, o := range outcomes {
		families[o.Family]++
		if o.Err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("%s\n  violation: %v\n  replay: go test ./internal/sim -run 'TestScenarios$' -sim.seed=%d -v", o, o.Err, o.Seed)
			}
		}
	}
	t.Logf("sim: %d scenarios, seeds %d..%d, %v; families %v; %d failed", n, *flagBase, *flagBase+uint64(n)-1, time.Since(start).Round(time.Millisecond), families, failed)
	fmt.Printf("sim: %d scenarios, seeds %d..%d, %d failed\n", n, *flagBase, *flagBase+uint64(n)-1, failed)
}

func runMany(base uint64, n int, o Options) []Outcome {
	outcomes := make([]Outcome, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				outcomes[i] = Run(base+uint64(i), o)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return outcomes
}

// TestScenarioIsReproducible: the same seed plays the same scenario, event
// for event.
func TestScenarioIsReproducible(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		var a, b []string
		Run(seed, Options{Trace: func(l string) { a = append(a, l) }})
		Run(seed, Options{Trace: func(l string) { b = append(b, l) }})
		if len(a) == 0 || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("seed %d: two runs differ (%d and %d trace lines)", seed, len(a), len(b))
		}
	}
}

// TestBrokenEpochRuleIsCaught plants a broken rule — a unit that ignores the
// peer's epoch, so a stale ACTIVE no longer yields — and checks that the
// simulator catches it. A simulator that cannot fail proves nothing.
func TestBrokenEpochRuleIsCaught(t *testing.T) {
	ignoreEpoch := func(receiver *ha.Machine, a *ha.Advert) {
		if receiver.Advert().Role == ha.RolePrimary {
			a.Epoch = receiver.Epoch() // the primary believes every peer is its equal
		}
	}
	outcomes := runMany(1, 400, Options{Mutate: ignoreEpoch})
	caught := 0
	for _, o := range outcomes {
		if o.Err != nil {
			caught++
			if caught == 1 {
				t.Logf("caught by %s: %v", o, o.Err)
			}
		}
	}
	if caught == 0 {
		t.Fatal("the simulator did not notice a unit that ignores epochs")
	}
	t.Logf("the broken epoch rule failed %d of %d scenarios", caught, len(outcomes))
}

// TestHALinkCutKeepsActive: the named scenario of the issue, without
// randomness — the HA link is cut for a long time while a watched path
// delivers; nothing changes, even with the standby OUT_OF_SYNC.
func TestHALinkCutKeepsActive(t *testing.T) {
	T := Timing{Heartbeat: 100 * time.Millisecond, Dead: 300 * time.Millisecond, PreemptDelay: time.Second, Preempt: true}
	s := New(7, T, 2)
	s.Start(0)
	s.Start(1)
	if err := s.RunFor(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	s.ForbidTransitions(s.Now)
	s.SetPath(0, PathState{Cut: true})
	s.SetSync(1, ha.SyncOutOfSync)
	if err := s.RunFor(time.Minute); err != nil {
		t.Fatal(err)
	}
	if a := s.Active(); len(a) != 1 || a[0] != 0 {
		t.Fatalf("want the primary alone ACTIVE, got %s", s.Describe())
	}
	// Negative control: cut the watched path too and the standby takes over.
	s.ForbidTransitions(time.Time{})
	s.SetPath(1, PathState{Cut: true})
	if err := s.RunFor(T.Dead + T.Heartbeat); err != nil {
		t.Fatal(err)
	}
	if s.Nodes[1].M.State() != ha.StateActive {
		t.Fatalf("with every path cut the standby must take over: %s", s.Describe())
	}
}
