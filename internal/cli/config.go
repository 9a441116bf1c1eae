package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/config"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check the configuration file",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check [FILE]",
		Short: "Validate a configuration file and its key; list every problem at once",
		Long:  "Validate a configuration file (default " + config.DefaultPath + ") and the key file it names. Every problem is listed with the field, the bad value and the fix; the exit status is 0 when the file is valid and 2 when it is not.",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path := config.DefaultPath
			if len(args) == 1 {
				path = args[0]
			}
			cfg, _, err := config.Load(path)
			var probs *config.Problems
			switch {
			case errors.As(err, &probs):
				w := c.OutOrStdout()
				fmt.Fprintf(w, "%s: %d problem(s):\n", path, len(*probs))
				for _, p := range *probs {
					fmt.Fprintf(w, "  %s\n", p)
				}
				return &exitError{2, fmt.Errorf("%s is not valid", path)}
			case err != nil:
				return &exitError{2, err}
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: valid (node %s, %s, cluster %d, %d interface(s))\n",
				path, cfg.Node.Name, cfg.Node.Role, cfg.Cluster.ID, len(cfg.Interfaces))
			return nil
		},
	})
	cmd.AddCommand(configDocCommands()...)
	return cmd
}
