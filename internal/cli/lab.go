package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/bench"
	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/daemon"
	"github.com/tandem-ha/tandem/internal/lab"
)

func init() { extraCommands = append(extraCommands, newLabCmd) }

// nodeState asks a lab daemon for its HA state.
func nodeState(ctx context.Context, socket string) (string, error) {
	var st daemon.Status
	if err := control.Call(ctx, socket, control.Request{Op: "status"}, &st); err != nil {
		return "", err
	}
	return st.State, nil
}

func labOptions(name, profile string, w io.Writer, verbose bool) lab.Options {
	lvl := slog.LevelWarn
	if verbose {
		lvl = slog.LevelInfo
	}
	return lab.Options{Name: name, Profile: profile, NodeState: nodeState,
		Logger: slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))}
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return &exitError{2, fmt.Errorf("the lab creates network namespaces and needs root: run it with sudo")}
	}
	return nil
}

func newLabCmd() *cobra.Command {
	var name, profile, output string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "An HA firewall pair in network namespaces on this machine (root)",
		Long: "tandem lab builds namespaces client, fw-a, fw-b and server: a LAN bridge (client, fw-a, fw-b), a WAN bridge (fw-a, fw-b, server) and a\n" +
			"dedicated HA link (fw-a <-> fw-b), a stateful nftables firewall with SNAT to the WAN virtual IP on both units, and a `tandem run` in fw-a and fw-b.",
		PersistentPreRunE: func(*cobra.Command, []string) error { return requireRoot() },
	}
	cmd.PersistentFlags().StringVar(&name, "name", lab.DefaultName, "lab name (several labs can coexist)")
	cmd.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log what the lab does")

	up := &cobra.Command{
		Use:   "up",
		Short: "Build a lab and start both units",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := lab.Up(c.Context(), labOptions(name, profile, c.ErrOrStderr(), verbose))
			if err != nil {
				return err
			}
			if _, err := waitElected(c.Context(), l, 10*time.Second); err != nil {
				return err
			}
			return printLab(c.OutOrStdout(), "table", l.Status(c.Context()))
		},
	}
	up.Flags().StringVar(&profile, "profile", lab.DefaultProfile, "timing profile: "+strings.Join(profileNames(), ", "))

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab: its daemons, namespaces and files (also after a crash)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := lab.Down(labOptions(name, "", c.ErrOrStderr(), verbose)); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "lab %s removed\n", name)
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show a lab's namespaces, addresses and units",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			l, err := lab.Open(labOptions(name, "", c.ErrOrStderr(), verbose))
			if err != nil {
				return err
			}
			return printLab(c.OutOrStdout(), output, l.Status(c.Context()))
		},
	}
	outputFlag(status, &output)
	crash := &cobra.Command{
		Use:   "crash NODE",
		Short: "Power failure of a unit: its daemon SIGKILLed and all its links down at the same instant",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			l, err := lab.Open(labOptions(name, "", c.ErrOrStderr(), verbose))
			if err != nil {
				return err
			}
			if err := l.Crash(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s is off; bring it back with `tandem lab restore --name %s %s`\n", args[0], name, args[0])
			return nil
		},
	}
	restore := &cobra.Command{
		Use:   "restore NODE",
		Short: "Power a crashed unit back on: links up, daemon restarted",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			l, err := lab.Open(labOptions(name, "", c.ErrOrStderr(), verbose))
			if err != nil {
				return err
			}
			if err := l.Restore(c.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s restored\n", args[0])
			return nil
		},
	}
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Bring a lab up, run traffic through it, pull the plug on the ACTIVE and show the takeover",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runDemo(c.Context(), c.OutOrStdout(), labOptions(name, profile, c.ErrOrStderr(), verbose))
		},
	}
	demo.Flags().StringVar(&profile, "profile", lab.DefaultProfile, "timing profile: "+strings.Join(profileNames(), ", "))
	cmd.AddCommand(up, down, status, crash, restore, demo)
	return cmd
}

func profileNames() []string {
	var names []string
	for n := range lab.Profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// waitElected waits until one unit is ACTIVE and the other STANDBY, and
// returns the ACTIVE's name.
func waitElected(ctx context.Context, l *lab.Lab, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		st := l.Status(ctx)
		var active, standby []string
		for _, n := range st.Nodes {
			switch n.State {
			case "ACTIVE":
				active = append(active, n.Name)
			case "STANDBY":
				standby = append(standby, n.Name)
			}
		}
		if len(active) == 1 && len(standby) == 1 {
			return active[0], nil
		}
		if time.Now().After(deadline) {
			var states []string
			for _, n := range st.Nodes {
				states = append(states, n.Name+" "+n.State)
			}
			return "", fmt.Errorf("no election after %v (%s); see the logs in %s", timeout, strings.Join(states, ", "), st.Dir)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func printLab(w io.Writer, output string, st lab.Status) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(w, "lab %s (profile %s, files in %s)\n", st.Name, st.Profile, st.Dir)
	fmt.Fprintf(w, "client %s  ->  virtual IPs %v  ->  server %s\n\n", st.ClientIP, st.VirtualIPs, st.ServerIP)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UNIT\tNETNS\tPID\tSTATE\tCONTROL SOCKET")
	for _, n := range st.Nodes {
		pid := "-"
		if n.Running {
			pid = fmt.Sprint(n.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Netns, pid, n.State, n.ControlSocket)
	}
	return tw.Flush()
}

const probePort = 7999

// runDemo is `tandem lab demo`.
func runDemo(ctx context.Context, w io.Writer, o lab.Options) error {
	fmt.Fprintf(w, "== building lab %s: namespaces client, fw-a, fw-b, server; LAN and WAN bridges; HA link; nftables on both units\n", o.Name)
	l, err := lab.Up(ctx, o)
	if err != nil {
		return err
	}
	active, err := waitElected(ctx, l, 10*time.Second)
	if err != nil {
		return err
	}
	st := l.Status(ctx)
	if err := printLab(w, "table", st); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		fmt.Fprintf(w, "\n== tandem status --socket %s\n", n.ControlSocket)
		var ds daemon.Status
		if err := control.Call(ctx, n.ControlSocket, control.Request{Op: "status"}, &ds); err != nil {
			return err
		}
		_ = printStatus(w, "table", &ds)
	}

	fmt.Fprintf(w, "\n== traffic: the client probes the server (%s:%d) every millisecond through the virtual IPs\n", st.ServerIP, probePort)
	var echo *bench.EchoServer
	if err := l.Do(lab.RoleServer, func() (err error) { echo, err = bench.ListenEcho(probePort); return }); err != nil {
		return err
	}
	defer echo.Close()
	var prober *bench.Prober
	if err := l.Do(lab.RoleClient, func() (err error) {
		prober, err = bench.DialProbe(netip.AddrPortFrom(st.ServerIP, probePort), time.Millisecond)
		return
	}); err != nil {
		return err
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { prober.Run(pctx); close(done) }()
	defer func() { stop(); <-done }()
	time.Sleep(time.Second)
	fmt.Fprintf(w, "   %d of ~1000 probes answered in the last second\n", prober.Answered())

	fmt.Fprintf(w, "\n== pulling the plug on %s (the ACTIVE): daemon SIGKILLed, every link down at once\n", active)
	mark := prober.Mark()
	if err := l.Crash(active); err != nil {
		return err
	}
	other := "fw-a"
	if active == "fw-a" {
		other = "fw-b"
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := prober.GapAfter(mark); ok && prober.Mark()-mark > 500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("traffic did not come back within 10s of the crash; see the logs in %s", st.Dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
	gap, _ := prober.GapAfter(mark)
	st = l.Status(ctx)
	_ = printLab(w, "table", st)
	for _, n := range st.Nodes {
		if n.Name != other {
			continue
		}
		var ds daemon.Status
		if err := control.Call(ctx, n.ControlSocket, control.Request{Op: "status"}, &ds); err == nil && len(ds.History) > 0 {
			t := ds.History[len(ds.History)-1]
			fmt.Fprintf(w, "\n%s: %s -> %s, epoch %d: %s\n", other, t.From, t.To, t.Epoch, t.Reason)
		}
	}
	fmt.Fprintf(w, "\n== outage seen by the client: %.1f ms (longest gap between answered probes; profile %s)\n", float64(gap)/1e6, st.Profile)
	fmt.Fprintf(w, "\nThe lab is still up. Try:\n")
	fmt.Fprintf(w, "  sudo tandem lab restore --name %s %s       # power the crashed unit back on (it preempts back if it is the primary)\n", o.Name, active)
	fmt.Fprintf(w, "  sudo tandem status --socket %s\n", st.Nodes[0].ControlSocket)
	fmt.Fprintf(w, "  sudo tandem lab down --name %s               # remove everything\n", o.Name)
	return nil
}
