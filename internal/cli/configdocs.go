package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/configsync"
	"github.com/tandem-ha/tandem/internal/control"
)

// configCall sends one configuration operation to the daemon.
func configCall(c *cobra.Command, socket, op string, args any, out any) error {
	return configCallPayload(c, socket, op, args, nil, out)
}

// configCallPayload is configCall with a binary payload after the
// arguments (a published document, byte for byte).
func configCallPayload(c *cobra.Command, socket, op string, args any, payload []byte, out any) error {
	ctx, cancel := context.WithTimeout(c.Context(), 5*time.Minute) // apply hooks may take a while
	defer cancel()
	req := control.Request{Op: op, Payload: payload}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		req.Args = b
	}
	return control.Call(ctx, socket, req, out)
}

// operator names the author of a change for the audit log.
func operator() string {
	name := os.Getenv("SUDO_USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	if name == "" {
		name = "unknown"
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}

func parseRev(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, &exitError{2, fmt.Errorf("revision %q: want a number", s)}
	}
	return n, nil
}

func printRevisions(w io.Writer, revs []configsync.RevisionView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REV\tTIME\tDOCUMENT\tAUTHOR\tORIGIN\tMESSAGE")
	for _, r := range revs {
		doc := r.Category + "/" + r.Name
		if r.Deleted {
			doc += " (deleted)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Number, r.Time.Local().Format(time.DateTime), doc, r.Author, r.Origin, r.Message)
	}
	tw.Flush()
}

// configDocCommands are the `tandem config` subcommands that talk to the
// daemon's configuration store.
func configDocCommands() []*cobra.Command {
	var cmds []*cobra.Command
	add := func(c *cobra.Command, socket *string) {
		socketFlag(c, socket)
		cmds = append(cmds, c)
	}

	var pubSocket, pubCat, pubName, pubFile, pubMsg string
	pub := &cobra.Command{
		Use:   "publish --category C --name N --file F [-m MESSAGE]",
		Short: "Publish a configuration document on the ACTIVE unit (replicated to the standby)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var content []byte
			var err error
			if pubFile == "-" {
				content, err = io.ReadAll(c.InOrStdin())
			} else {
				content, err = os.ReadFile(pubFile)
			}
			if err != nil {
				return &exitError{2, err}
			}
			args := configsync.PublishArgs{Category: pubCat, Name: pubName, Message: pubMsg, Author: operator()}
			var res configsync.PublishResult
			if err := configCallPayload(c, pubSocket, "config.publish", args, content, &res); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "published %s/%s as revision %d (sha256 %s)\n", res.Revision.Category, res.Revision.Name, res.Revision.Number, res.Revision.Hash)
			return nil
		},
	}
	pub.Flags().StringVar(&pubCat, "category", "", "document category (interfaces, definitions, policies, network, firewall, vpn, users, antivirus, ips, system)")
	pub.Flags().StringVar(&pubName, "name", "", "document name")
	pub.Flags().StringVar(&pubFile, "file", "", "file with the document's content (- for standard input)")
	pub.Flags().StringVarP(&pubMsg, "message", "m", "", "what the change is for (audit log)")
	for _, f := range []string{"category", "name", "file"} {
		_ = pub.MarkFlagRequired(f)
	}
	add(pub, &pubSocket)

	var getSocket, getCat, getName string
	var getRev uint64
	get := &cobra.Command{
		Use:   "get --category C --name N [--rev R]",
		Short: "Print a configuration document byte for byte (at the head or at revision R)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return printDocument(c, getSocket, "config.get", configsync.GetArgs{Category: getCat, Name: getName, Rev: getRev})
		},
	}
	get.Flags().StringVar(&getCat, "category", "", "document category")
	get.Flags().StringVar(&getName, "name", "", "document name")
	get.Flags().Uint64Var(&getRev, "rev", 0, "store revision (default: the head)")
	_ = get.MarkFlagRequired("category")
	_ = get.MarkFlagRequired("name")
	add(get, &getSocket)

	var listSocket string
	add(&cobra.Command{
		Use:   "list",
		Short: "List the current configuration documents",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var docs []configsync.DocView
			if err := configCall(c, listSocket, "config.list", nil, &docs); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOCUMENT\tSIZE\tREV\tAUTHOR\tAPPLY")
			for _, d := range docs {
				apply := "ok"
				if d.ApplyError != "" {
					apply = "FAILED: " + d.ApplyError
				}
				fmt.Fprintf(tw, "%s/%s\t%d\t%d\t%s\t%s\n", d.Category, d.Name, d.Size, d.Revision.Number, d.Revision.Author, apply)
			}
			return tw.Flush()
		},
	}, &listSocket)

	var histSocket string
	var histLimit int
	hist := &cobra.Command{
		Use:   "history",
		Short: "List the configuration revisions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var revs []configsync.RevisionView
			if err := configCall(c, histSocket, "config.history", configsync.HistoryArgs{Limit: histLimit}, &revs); err != nil {
				return err
			}
			printRevisions(c.OutOrStdout(), revs)
			return nil
		},
	}
	hist.Flags().IntVar(&histLimit, "limit", 0, "show at most this many revisions (0: all)")
	add(hist, &histSocket)

	var diffSocket string
	add(&cobra.Command{
		Use:   "diff REV1 REV2",
		Short: "Show what changed between two revisions (0 is the empty configuration)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, a []string) error {
			r1, err := parseRev(a[0])
			if err != nil {
				return err
			}
			r2, err := parseRev(a[1])
			if err != nil {
				return err
			}
			var out string
			if err := configCall(c, diffSocket, "config.diff", configsync.DiffArgs{Rev1: r1, Rev2: r2}, &out); err != nil {
				return err
			}
			fmt.Fprint(c.OutOrStdout(), out)
			return nil
		},
	}, &diffSocket)

	var rbSocket string
	add(&cobra.Command{
		Use:   "rollback REV",
		Short: "Publish, as new revisions, the configuration as it was at revision REV (on the ACTIVE)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, a []string) error {
			rev, err := parseRev(a[0])
			if err != nil {
				return err
			}
			var res configsync.PublishResult
			if err := configCall(c, rbSocket, "config.rollback", configsync.RollbackArgs{Rev: rev, Author: operator()}, &res); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "rolled back to revision %d; the head is now revision %d\n", rev, res.Revision.Number)
			return nil
		},
	}, &rbSocket)

	var confSocket string
	var confID uint64
	conf := &cobra.Command{
		Use:   "conflicts [--id ID]",
		Short: "List local revisions set aside after a partition in which both units accepted changes (--id: print one's content byte for byte)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if confID != 0 {
				return printDocument(c, confSocket, "config.conflict", configsync.ConflictArgs{ID: confID})
			}
			var cs []configsync.ConflictView
			if err := configCall(c, confSocket, "config.conflicts", nil, &cs); err != nil {
				return err
			}
			if len(cs) == 0 {
				fmt.Fprintln(c.OutOrStdout(), "no conflicts")
				return nil
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDETECTED\tANCESTOR\tLOCAL REV\tDOCUMENT\tAUTHOR\tMESSAGE")
			for _, x := range cs {
				fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s/%s\t%s\t%s\n", x.ID, x.Detected.Local().Format(time.DateTime), x.Ancestor,
					x.Revision.Number, x.Revision.Category, x.Revision.Name, x.Revision.Author, x.Revision.Message)
			}
			return tw.Flush()
		},
	}
	conf.Flags().Uint64Var(&confID, "id", 0, "print the content of this conflict (its ID in the list)")
	add(conf, &confSocket)

	var stSocket string
	add(&cobra.Command{
		Use:   "status",
		Short: "Show configuration sync: this unit's head, apply failures and each peer's sync status",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var st configsync.Status
			if err := configCall(c, stSocket, "config.status", nil, &st); err != nil {
				return err
			}
			enc := json.NewEncoder(c.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		},
	}, &stSocket)
	return cmds
}

func newSyncCmd() *cobra.Command {
	var socket string
	var force bool
	cmd := &cobra.Command{
		Use:   "sync --force",
		Short: "Resynchronize the whole configuration from the ACTIVE unit",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !force {
				return &exitError{2, fmt.Errorf("sync: pass --force to resynchronize the whole configuration from the ACTIVE unit")}
			}
			var st configsync.Status
			if err := configCall(c, socket, "sync.force", nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "full configuration resync started (this unit %s, %s, revision %d); follow it with `tandem config status`\n", st.Node, st.Role, st.Head)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "confirm the full resynchronization")
	socketFlag(cmd, &socket)
	return cmd
}

// printDocument asks the daemon for one document and writes its content
// byte for byte, as it was published.
func printDocument(c *cobra.Command, socket, op string, args any) error {
	var doc configsync.Document
	if err := configCall(c, socket, op, args, &doc); err != nil {
		return err
	}
	b, err := base64.StdEncoding.DecodeString(doc.ContentBase64)
	if err != nil {
		return err
	}
	_, err = c.OutOrStdout().Write(b)
	return err
}
