package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/control"
	"github.com/tandem-ha/tandem/internal/statesync"
)

// statsReply is the daemon's answer to "stats".
type statsReply struct {
	Node  string            `json:"node"`
	State string            `json:"state"`
	Local statesync.Status  `json:"local"`
	Peer  *statesync.Status `json:"peer"`
}

func newStatsCmd() *cobra.Command {
	var socket, output string
	var compare bool
	cmd := &cobra.Command{
		Use:   "stats [--compare]",
		Short: "State-sync statistics: connections, expectations, set elements, sequence and lag",
		Long: "Show this unit's state-sync statistics. With --compare, show both units side by side (the peer's figures come over the sync channel):\n" +
			"a large difference in connection counts confirms a sync failure, as seed 003's `stats` comparison does.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context(), 5*time.Second)
			defer cancel()
			var r statsReply
			if err := control.Call(ctx, socket, control.Request{Op: "stats"}, &r); err != nil {
				return err
			}
			if !compare {
				r.Peer = nil
			}
			if output == "json" {
				enc := json.NewEncoder(c.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printStats(c.OutOrStdout(), &r, compare)
			return nil
		},
	}
	socketFlag(cmd, &socket)
	outputFlag(cmd, &output)
	cmd.Flags().BoolVar(&compare, "compare", false, "show both units side by side")
	return cmd
}

func printStats(w io.Writer, r *statsReply, compare bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	col := func(f func(s *statesync.Status) string) string {
		out := f(&r.Local)
		if compare {
			peer := "(no report)"
			if r.Peer != nil {
				peer = f(r.Peer)
			}
			out += "\t" + peer
		}
		return out
	}
	head := r.Node + " (" + r.State + ")"
	if compare {
		head += "\tpeer"
	}
	fmt.Fprintf(tw, "\t%s\n", head)
	fmt.Fprintf(tw, "role\t%s\n", col(func(s *statesync.Status) string { return s.Role }))
	fmt.Fprintf(tw, "sync\t%s\n", col(func(s *statesync.Status) string { return s.SyncText }))
	fmt.Fprintf(tw, "sync link\t%s\n", col(func(s *statesync.Status) string {
		if s.LinkUp {
			return "up"
		}
		return "down"
	}))
	fmt.Fprintf(tw, "connections\t%s\n", col(func(s *statesync.Status) string { return fmt.Sprint(s.Connections) }))
	fmt.Fprintf(tw, "expectations\t%s\n", col(func(s *statesync.Status) string { return fmt.Sprint(s.Expects) }))
	var sets []string
	for k := range r.Local.SetElements {
		sets = append(sets, k)
	}
	if r.Peer != nil {
		for k := range r.Peer.SetElements {
			if !slices.Contains(sets, k) {
				sets = append(sets, k)
			}
		}
	}
	slices.Sort(sets)
	for _, set := range sets {
		fmt.Fprintf(tw, "set %s\t%s\n", set, col(func(s *statesync.Status) string { return fmt.Sprint(s.SetElements[set]) }))
	}
	fmt.Fprintf(tw, "last sync seq\t%s\n", col(func(s *statesync.Status) string { return fmt.Sprint(s.Seq) }))
	fmt.Fprintf(tw, "lag\t%s\n", col(func(s *statesync.Status) string {
		return fmt.Sprintf("%d entries, %.1f ms", s.LagEntries, s.LagMs)
	}))
	tw.Flush()
}
