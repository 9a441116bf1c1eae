package bench

import (
	"math"
	"slices"
	"time"
)

// Summary is the distribution of one mode's outages, in milliseconds, over
// the trials whose traffic came back. Min, Median and Max are null when no
// trial succeeded.
type Summary struct {
	Min      *float64 `json:"min"`
	Median   *float64 `json:"median"`
	Max      *float64 `json:"max"`
	N        int      `json:"n"`        // trials whose traffic came back
	Failures int      `json:"failures"` // trials whose traffic did not come back (or that could not be run)
}

// summarize computes the Summary of samples.
func summarize(samples []Sample) *Summary {
	var ms []float64
	s := &Summary{}
	for _, x := range samples {
		if x.OK {
			ms = append(ms, x.GapMs)
		} else {
			s.Failures++
		}
	}
	s.N = len(ms)
	if len(ms) == 0 {
		return s
	}
	slices.Sort(ms)
	mn, mx := ms[0], ms[len(ms)-1]
	var med float64
	if n := len(ms); n%2 == 1 {
		med = ms[n/2]
	} else {
		med = (ms[n/2-1] + ms[n/2]) / 2
	}
	med = round2(med)
	s.Min, s.Median, s.Max = &mn, &med, &mx
	return s
}

// millis converts d to milliseconds, rounded to 0.01 ms.
func millis(d time.Duration) float64 { return round2(float64(d) / 1e6) }

func round2(f float64) float64 { return math.Round(f*100) / 100 }
