package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

func ms(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

// fakeProber is a prober with recorded answers and no socket.
func fakeProber(answers ...float64) *Prober {
	p := &Prober{start: time.Now()}
	for _, a := range answers {
		p.answers = append(p.answers, ms(a))
	}
	return p
}

func TestGapBetween(t *testing.T) {
	p := fakeProber(1, 2, 3, 10, 11, 12, 40, 41)
	for _, c := range []struct {
		from, to float64
		want     float64
		ok       bool
	}{
		{0, 100, 28, true},  // 12 -> 40
		{3, 12, 7, true},    // 3 -> 10 ends after 3
		{3.5, 11, 7, true},  // the gap that spans from counts
		{12, 39, 0, false},  // no answer in (12, 39]
		{41, 100, 0, false}, // nothing after the last answer
	} {
		got, ok := p.GapBetween(ms(c.from), ms(c.to))
		if ok != c.ok || got != ms(c.want) {
			t.Errorf("GapBetween(%v, %v) = %v, %v; want %v, %v", c.from, c.to, got, ok, ms(c.want), c.ok)
		}
	}
	if got, ok := p.GapAfter(ms(2.5)); !ok || got != ms(28) {
		t.Errorf("GapAfter(2.5ms) = %v, %v; want 28ms, true", got, ok)
	}
}

func TestLost(t *testing.T) {
	p := &Prober{start: time.Now()}
	for i := range 10 {
		p.sentAt = append(p.sentAt, ms(float64(i)))
		p.answered = append(p.answered, i%3 != 0) // 0, 3, 6, 9 lost
	}
	if lost, sent := p.Lost(ms(2), ms(7)); lost != 2 || sent != 6 {
		t.Errorf("Lost(2, 7) = %d of %d; want 2 of 6", lost, sent)
	}
}

func TestFlowing(t *testing.T) {
	// Answers every ms for the last 400 ms: flowing.
	p := &Prober{start: time.Now().Add(-time.Second)}
	for i := 600; i <= 1000; i++ {
		p.answers = append(p.answers, ms(float64(i)))
	}
	if !p.Flowing(300*time.Millisecond, 50*time.Millisecond) {
		t.Error("steady answers: not flowing")
	}
	// A 60 ms hole inside the window: not flowing.
	q := &Prober{start: p.start}
	for _, a := range p.answers {
		if a < ms(800) || a > ms(860) {
			q.answers = append(q.answers, a)
		}
	}
	if q.Flowing(300*time.Millisecond, 50*time.Millisecond) {
		t.Error("60 ms hole: flowing")
	}
	if fakeProber().Flowing(300*time.Millisecond, 50*time.Millisecond) {
		t.Error("no answers: flowing")
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]Sample{{OK: true, GapMs: 30}, {OK: true, GapMs: 10}, {OK: false, GapMs: 10000}, {OK: true, GapMs: 20}, {OK: true, GapMs: 25}})
	if s.N != 4 || s.Failures != 1 || *s.Min != 10 || *s.Median != 22.5 || *s.Max != 30 {
		t.Errorf("summarize = n %d failures %d min %v median %v max %v", s.N, s.Failures, *s.Min, *s.Median, *s.Max)
	}
	if s := summarize([]Sample{{OK: false}}); s.Min != nil || s.Failures != 1 {
		t.Errorf("all failed: %+v", s)
	}
}

func TestAdvertInt(t *testing.T) {
	for hb, want := range map[time.Duration]string{
		5 * time.Millisecond: "0.01", 10 * time.Millisecond: "0.01", 50 * time.Millisecond: "0.05",
		100 * time.Millisecond: "0.1", time.Second: "1",
	} {
		if got := advertInt(hb); got != want {
			t.Errorf("advertInt(%v) = %s; want %s", hb, got, want)
		}
	}
	if got := masterDown(50*time.Millisecond, 100); got != 180468750*time.Nanosecond {
		t.Errorf("masterDown(50ms, 100) = %v", got)
	}
}

func TestKeepalivedConfig(t *testing.T) {
	p := lab.Profiles["default"]
	a := keepalivedConfig(lab.RoleFwA, p, KeepalivedOptions{})
	b := keepalivedConfig(lab.RoleFwB, p, KeepalivedOptions{RTPriority: 50})
	for _, want := range []string{"vrrp_version 3", "vrrp_sync_group FW", "state BACKUP", "interface lan0", "interface wan0",
		"priority 200", "advert_int 0.05", "preempt_delay 2\n", "172.16.121.1/24 dev lan0", "203.0.113.1/24 dev wan0", "track_interface"} {
		if !strings.Contains(a, want) {
			t.Errorf("fw-a config lacks %q:\n%s", want, a)
		}
	}
	if strings.Contains(a, "vrrp_rt_priority") || !strings.Contains(b, "vrrp_rt_priority 50") || !strings.Contains(b, "priority 100") {
		t.Errorf("fw-b config:\n%s", b)
	}
	if strings.Contains(a, "authentication") || strings.Contains(a, "nopreempt") {
		t.Errorf("fw-a config has authentication or nopreempt:\n%s", a)
	}
}

func TestParseKeepalivedLog(t *testing.T) {
	log := `Sat Nov 21 23:42:50 2026: (LAN) Entering BACKUP STATE (init)
Sat Nov 21 23:42:50 2026: (WAN) Entering BACKUP STATE (init)
Sat Nov 21 23:42:50 2026: (WAN) Receive advertisement timeout
Sat Nov 21 23:42:50 2026: (WAN) Entering MASTER STATE
Sat Nov 21 23:42:50 2026: VRRP_Group(FW) Syncing instances to MASTER state
Sat Nov 21 23:42:50 2026: (LAN) Entering MASTER STATE
Sat Nov 21 23:48:28 2026: (LAN) Entering FAULT STATE
`
	ts, err := parseKeepalivedLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range ts {
		got = append(got, x.Instance+" "+x.State)
	}
	if want := "LAN BACKUP,WAN BACKUP,WAN MASTER,LAN MASTER,LAN FAULT"; strings.Join(got, ",") != want {
		t.Errorf("got %s; want %s", strings.Join(got, ","), want)
	}
}

func TestCheckName(t *testing.T) {
	if CheckName("bnfo") != nil || CheckName("tandem") == nil || CheckName("b") == nil {
		t.Error("CheckName accepts or refuses the wrong names")
	}
}

func TestLossWindowRTTSendGap(t *testing.T) {
	p := &Prober{start: time.Now()}
	// Probes every ms; 5..9 lost; 12 sent 4 ms late (a stall).
	at := 0.0
	for i := range 15 {
		if i == 12 {
			at += 4
		} else if i > 0 {
			at++
		}
		p.sentAt = append(p.sentAt, ms(at))
		lost := i >= 5 && i <= 9
		p.answered = append(p.answered, !lost)
		if !lost {
			p.answers = append(p.answers, ms(at+0.2))
			p.rtts = append(p.rtts, ms(0.2))
		}
	}
	p.rtts[3] = ms(7) // one late answer
	if got := p.LossWindow(0, ms(20)); got != ms(6) {
		t.Errorf("LossWindow = %v; want 6ms (probe 4 to probe 10)", got)
	}
	if got := p.LossWindow(ms(11), ms(20)); got != 0 {
		t.Errorf("LossWindow after the loss = %v; want 0", got)
	}
	if got := p.MaxSendGap(0, ms(20)); got != ms(4) {
		t.Errorf("MaxSendGap = %v; want 4ms", got)
	}
	if got := p.MaxRTT(0, ms(20)); got != ms(7) {
		t.Errorf("MaxRTT = %v; want 7ms", got)
	}
}
