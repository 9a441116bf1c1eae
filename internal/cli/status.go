package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/daemon"
)

func outputFlag(c *cobra.Command, p *string) {
	c.Flags().StringVarP(p, "output", "o", "table", "output format: table or json")
}

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return &exitError{2, fmt.Errorf("--output %q: use table or json", o)}
	}
	return nil
}

func newStatusCmd() *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this unit's HA state, its view of the peer, every heartbeat path and the transition history",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context(), 5*time.Second)
			defer cancel()
			var st daemon.Status
			if err := control.Call(ctx, socket, control.Request{Op: "status"}, &st); err != nil {
				return err
			}
			return printStatus(c.OutOrStdout(), output, &st)
		},
	}
	socketFlag(cmd, &socket)
	outputFlag(cmd, &output)
	return cmd
}

func printStatus(w io.Writer, output string, st *daemon.Status) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s (%s, priority %d)\tcluster %d\ttandem %s\n", st.Node, st.Role, st.Priority, st.ClusterID, st.Version)
	vip := "no virtual IPs held"
	if st.HoldsVIPs {
		vip = "holds the virtual IPs"
	}
	fmt.Fprintf(tw, "state\t%s\tepoch %d\tsync %s\t%s\n", st.State, st.Epoch, st.Sync, vip)
	if len(st.FailedLinks) > 0 {
		var fl []string
		for k, v := range st.FailedLinks {
			fl = append(fl, k+" ("+v+")")
		}
		fmt.Fprintf(tw, "failed\t%s\t\t\t\n", strings.Join(fl, ", "))
	}
	p := st.Peer
	switch {
	case !p.Known:
		fmt.Fprintf(tw, "peer\tnever heard\t\t\t\n")
	default:
		life := "alive"
		if p.Resigned {
			life = "resigned (shut down)"
		} else if !p.Alive {
			life = "dead on all paths"
		}
		fmt.Fprintf(tw, "peer\t%s (%s, priority %d)\tepoch %d\tsync %s\t%s, tandem %s\n", p.State, p.Role, p.Priority, p.Epoch, p.Sync, life, p.Version)
	}
	fmt.Fprintf(tw, "timing\theartbeat %gms\tdead %gms\tpreempt %v\t\n", st.Heartbeat.HeartbeatMs, st.Heartbeat.DeadMs, st.Preempt)
	if c := st.Config; c != nil {
		peer, same := "peer unknown", ""
		if c.PeerKnown {
			peer, same = fmt.Sprintf("peer revision %d (%s)", c.PeerRevision, c.PeerHash), "same as the peer"
			if c.Differ {
				same = "DIFFERS from the peer"
			}
		}
		fmt.Fprintf(tw, "config\trevision %d (%s)\t%s\t%s\t\n", c.Revision, c.Hash, peer, same)
		for _, cp := range c.Peers {
			fmt.Fprintf(tw, "config sync\t%s\n", configPeerCells(cp, time.Now()))
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tLOCAL\tPEER\tLAST HEARD\tSTATUS\tDROPPED")
	for _, ps := range st.Paths {
		heard, status := "never", "down"
		if ps.LastHeardMs != nil {
			heard = fmt.Sprintf("%.1fms ago", *ps.LastHeardMs)
		}
		if ps.Alive {
			status = "up"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", ps.Name, ps.Local, ps.Peer, heard, status, ps.Drops.Total())
	}
	tw.Flush()
	for _, warn := range st.Warnings {
		fmt.Fprintf(w, "\nWARNING: %s\n", warn)
	}
	if len(st.History) > 0 {
		fmt.Fprintln(w, "\nHISTORY")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, t := range st.History {
			fmt.Fprintf(tw, "%s\t%s -> %s\tepoch %d\t%s\n", t.At.Format("2006-01-02 15:04:05.000"), t.From, t.To, t.Epoch, t.Reason)
		}
		tw.Flush()
	}
	return nil
}

func newFailoverCmd() *cobra.Command {
	var socket, output string
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Move the ACTIVE role to the other unit (run on either unit)",
		Long: "On the ACTIVE unit: step down in favour of the peer. On the STANDBY: ask the ACTIVE to step down and take over.\n" +
			"Refused with the reason when the target is OUT_OF_SYNC, FAULT or not heard, unless --force (which skips only the sync check).\n" +
			"The unit moved off by hand does not preempt back until the next failover.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context(), 5*time.Second+wait)
			defer cancel()
			var before daemon.Status
			if err := control.Call(ctx, socket, control.Request{Op: "status"}, &before); err != nil {
				return err
			}
			var st daemon.Status
			if err := control.Call(ctx, socket, control.Request{Op: "failover", Force: force}, &st); err != nil {
				return err
			}
			// The switch completes when this unit's state flips.
			want := "ACTIVE"
			if before.State == "ACTIVE" {
				want = "STANDBY"
			}
			deadline := time.Now().Add(wait)
			for st.State != want || st.Peer.State == st.State {
				if time.Now().After(deadline) {
					printStatus(c.OutOrStdout(), output, &st)
					return fmt.Errorf("failover requested, but after %v this unit is %s and the peer %s", wait, st.State, st.Peer.State)
				}
				time.Sleep(5 * time.Millisecond)
				if err := control.Call(ctx, socket, control.Request{Op: "status"}, &st); err != nil {
					return err
				}
			}
			if output == "json" {
				return printStatus(c.OutOrStdout(), output, &st)
			}
			fmt.Fprintf(c.OutOrStdout(), "failover done: %s is %s, the peer is %s (epoch %d)\n", st.Node, st.State, st.Peer.State, max(st.Epoch, st.Peer.Epoch))
			return nil
		},
	}
	socketFlag(cmd, &socket)
	outputFlag(cmd, &output)
	cmd.Flags().BoolVar(&force, "force", false, "switch even when the target is OUT_OF_SYNC")
	cmd.Flags().DurationVar(&wait, "wait", 5*time.Second, "how long to wait for the switch to complete")
	return cmd
}

func newPromoteCmd() *cobra.Command {
	var socket string
	var force bool
	cmd := &cobra.Command{
		Use:   "promote --force",
		Short: "Disaster recovery: make this unit ACTIVE whatever the peer says",
		Long:  "Make this unit ACTIVE at once, with a new epoch that outranks the old ACTIVE's, so that if the old ACTIVE returns it yields. For when the old ACTIVE is gone for good; use `tandem failover` otherwise.",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), 5*time.Second)
			defer cancel()
			var st daemon.Status
			if err := control.Call(ctx, socket, control.Request{Op: "promote", Force: force}, &st); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s is %s (epoch %d)\n", st.Node, st.State, st.Epoch)
			return nil
		},
	}
	socketFlag(cmd, &socket)
	cmd.Flags().BoolVar(&force, "force", false, "confirm: the old ACTIVE is gone for good")
	return cmd
}
