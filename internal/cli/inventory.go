package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/mounts"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

// writerView is one writer as umbra writers shows it.
type writerView struct {
	Name     string              `json:"name"`
	State    string              `json:"state"` // stable, in-use, failed, unreachable, misconfigured
	Metadata *writer.Metadata    `json:"metadata,omitempty"`
	Error    string              `json:"error,omitempty"`
	LastSet  *shadow.WriterState `json:"last_result,omitempty"`
}

func (a *app) writersCommand() *cobra.Command {
	var specs []string
	cmd := &cobra.Command{
		Use:   "writers [--writer SPEC]...",
		Short: "List writers, their components, state and last result",
		Long: `List every configured writer (and each --writer) the way "vssadmin list
writers" does: whether it answers, its components with their paths and the
copy they need, its state (stable; in-use while a set runs; failed when its
last set failed; not ready when the checks a backup starts with fail now;
unreachable; misconfigured) and its last result.`,
		Example: "  umbra writers\n  umbra writers --writer sqlite:path=/srv/app/app.db --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			// A writer whose options are wrong is shown as such, beside
			// the others (one missing password_file hid them all).
			wrs, _, broken, err := a.buildWriters(cfg, specs, true)
			if err != nil {
				return err
			}
			store, err := a.store(cfg)
			if err != nil {
				return err
			}
			views := []writerView{}
			for _, wr := range wrs {
				views = append(views, a.describeWriter(cmd.Context(), store, wr))
			}
			for _, b := range broken {
				var bw *job.BrokenWriter
				if errors.As(b, &bw) {
					views = append(views, writerView{Name: bw.Name, State: "misconfigured", Error: bw.Err.Error()})
				}
			}
			if a.json {
				return a.printJSON(views)
			}
			if len(views) == 0 {
				fmt.Fprintf(a.stdout, "No writers configured; add them to the configuration file or give --writer.\n")
			}
			for _, v := range views {
				fmt.Fprintf(a.stdout, "Writer %s\n  State: %s\n", v.Name, v.State)
				if v.Error != "" {
					fmt.Fprintf(a.stdout, "  Error: %s\n", v.Error)
				}
				if v.Metadata != nil {
					if v.Metadata.Version != "" {
						fmt.Fprintf(a.stdout, "  Version: %s\n", v.Metadata.Version)
					}
					if v.Metadata.LogsOwnedBy != "" {
						fmt.Fprintf(a.stdout, "  Copy backups only: %s; umbra truncates none of its logs\n", v.Metadata.LogsOwnedBy)
					}
					for _, c := range v.Metadata.Components {
						fmt.Fprintf(a.stdout, "  Component %s (%s, needs %s): %s\n", c.Name, c.Kind, needsCopy(c.Needs), strings.Join(c.Paths, " "))
						if c.Logs.Truncates != "" {
							fmt.Fprintf(a.stdout, "    Truncates: %s\n", c.Logs.Truncates)
						}
					}
				}
				if l := v.LastSet; l != nil {
					result := "ok"
					if !l.OK {
						result = "failed in " + l.Phase + ": " + l.Error
					}
					fmt.Fprintf(a.stdout, "  Last result: %s (set %s, %s)\n", result, l.SetID, l.Time.Local().Format(time.DateTime))
				} else {
					fmt.Fprintf(a.stdout, "  Last result: none yet\n")
				}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&specs, "writer", "w", nil, "also list this writer (repeatable), as TYPE:KEY=VALUE,...")
	return cmd
}

func (a *app) describeWriter(ctx context.Context, store *shadow.Store, wr writer.Writer) writerView {
	v := writerView{Name: wr.Name(), State: "stable"}
	if last, ok, err := store.WriterState(wr.Name()); err == nil && ok {
		v.LastSet = &last
		if !last.OK {
			v.State = "failed"
		}
	}
	if store.Locked("writer", wr.Name()) {
		v.State = "in-use"
		return v // Identify could interfere with the running set
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	md, err := wr.Identify(ctx)
	if err != nil {
		v.State = "unreachable"
		v.Error = err.Error()
		return v
	}
	v.Metadata = &md
	if c, ok := wr.(writer.Checker); ok {
		if err := c.Check(ctx); err != nil {
			v.State = "not ready"
			v.Error = "the next backup would fail: " + err.Error()
		}
	}
	return v
}

// needsCopy names the copy a component needs: "an atomic copy".
func needsCopy(n writer.Need) string {
	if n != "" && strings.ContainsRune("aeiou", rune(n[0])) {
		return "an " + string(n) + " copy"
	}
	return "a " + string(n) + " copy"
}

func describeCopy(c provider.Copy) string {
	switch c {
	case provider.CopyAtomic:
		return "atomic snapshot of the volume"
	case provider.CopyPerFile:
		return "per-file copy while writers are frozen"
	case provider.CopyNone:
		return "no copy"
	}
	return string(c)
}

type providerView struct {
	Name    string         `json:"name"`
	Copy    provider.Copy  `json:"copy"`
	Volumes []volumeReport `json:"volumes"`
}

type volumeReport struct {
	provider.Volume
	Serves bool   `json:"serves"`
	Reason string `json:"reason,omitempty"`
}

func (a *app) providersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "providers",
		Short: "List providers and the mounted volumes each can serve",
		Long: `List each provider, the kind of copy it makes, and which mounted block-device
volumes it can serve. For each volume umbra uses the first provider that can
serve it, in this order, unless --provider says otherwise:

  btrfs    atomic read-only subvolume snapshot
  reflink  per-file copy-on-write clone (XFS with reflink=1, btrfs)
  live     no copy: only for data whose writer allows a live copy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			table, err := mounts.Table()
			if err != nil {
				return err
			}
			var views []providerView
			for _, p := range a.reg.Providers() {
				pv := providerView{Name: p.Name(), Copy: p.Capabilities().Copy, Volumes: []volumeReport{}}
				for _, vol := range table {
					if !strings.HasPrefix(vol.Device, "/") {
						continue // proc, tmpfs, cgroup…: no block device behind
					}
					r := volumeReport{Volume: vol, Serves: true}
					if err := p.CanServe(vol); err != nil {
						r.Serves, r.Reason = false, err.Error()
					}
					pv.Volumes = append(pv.Volumes, r)
				}
				views = append(views, pv)
			}
			if a.json {
				return a.printJSON(views)
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			for _, pv := range views {
				fmt.Fprintf(tw, "Provider %s (%s)\n", pv.Name, describeCopy(pv.Copy))
				for _, r := range pv.Volumes {
					if r.Serves {
						fmt.Fprintf(tw, "  %s\t%s\t%s\tyes\n", r.Mount, r.FSType, r.Device)
					} else {
						fmt.Fprintf(tw, "  %s\t%s\t%s\tno: %s\n", r.Mount, r.FSType, r.Device, r.Reason)
					}
				}
			}
			return tw.Flush()
		},
	}
}
