package bench

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/tandem-ha/tandem/internal/lab"
)

// ProbePort is the UDP port of the echo server in the lab's server namespace.
const ProbePort = 7999

// ProbeInterval is the prober's period: the resolution of every outage.
const ProbeInterval = time.Millisecond

// traffic is a prober in the client namespace sending through the virtual
// IPs to an echo server in the server namespace, running until stop.
type traffic struct {
	prober probes
	stopFn func()
}

// startTraffic starts the echo server and the prober in lab l.
func startTraffic(l *lab.Lab) (*traffic, error) {
	var echo *EchoServer
	if err := l.Do(lab.RoleServer, func() (err error) { echo, err = ListenEcho(ProbePort); return }); err != nil {
		return nil, fmt.Errorf("echo server in the server namespace: %w", err)
	}
	var p *Prober
	target := netip.AddrPortFrom(lab.ServerAddr.Addr(), ProbePort)
	if err := l.Do(lab.RoleClient, func() (err error) { p, err = DialProbe(target, ProbeInterval); return }); err != nil {
		echo.Close()
		return nil, fmt.Errorf("prober in the client namespace: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	return &traffic{prober: p, stopFn: func() {
		cancel()
		<-done
		_ = echo.Close()
	}}, nil
}

// stop ends the prober and the echo server; it is idempotent.
func (t *traffic) stop() {
	if t == nil || t.stopFn == nil {
		return
	}
	t.stopFn()
	t.stopFn = nil
}
