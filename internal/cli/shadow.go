package cli

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/shadow"
	"github.com/umbra-backup/umbra/internal/writer"
)

func (a *app) shadowCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shadow",
		Short: "Create, list, expose, revert and delete shadow sets",
		Long: `A shadow set is a point-in-time copy of every volume that holds the selected
data, made on this machine by the volumes' providers while the writers hold
their applications frozen. Sets stay until deleted.`,
	}
	cmd.AddCommand(a.shadowCreate(), a.shadowList(), a.shadowDelete(), a.shadowExpose(), a.shadowRevert())
	return cmd
}

func (a *app) shadowCreate() *cobra.Command {
	var (
		specs      []string
		noConfig   bool
		backupType string
		over       shadow.Options
	)
	cmd := &cobra.Command{
		Use:   "create [--writer SPEC]... [--provider NAME] [PATH]...",
		Short: "Make an application-consistent shadow set",
		Long: `Make one shadow set of the writers' data and of each PATH.

Each --writer takes part and, when no PATH is given, every writer of the
configuration file (as umbra backup chooses: a PATH alone is files). umbra
identifies the writers, finds the volume of each path, picks a provider per
volume (btrfs, then reflink, then live, unless --provider says), freezes the
writers, takes every shadow at once, thaws, and prints where each shadow is
with each component's consistency:

  application  a writer made the data consistent
  crash        an atomic snapshot: what a power cut would leave
  none         no point-in-time copy (the live provider)

Any failure, time-out or signal aborts the set: every writer is thawed and
every shadow deleted.

Files a writer hands on (PostgreSQL's backup_label and WAL) are kept with the
set and deleted with it. A PostgreSQL component on a volume with no copy
(live) is consistent only while a backup reads it: in a set made here it is
marked "none"; use umbra backup for it.

Passwords never go on the command line (ps shows it to every user): give
password_file=PATH, put the writer in the configuration file, or set the
client's variable (PGPASSWORD, MYSQL_PWD, REDISCLI_AUTH).

A writer SPEC is TYPE:KEY=VALUE[,KEY=VALUE...]:
  postgres:host=/run/postgresql,port=5432,user=postgres[,name=main]
  mariadb:socket=/run/mysqld/mysqld.sock,user=root[,purge_binlogs=true]
  redis:addr=127.0.0.1:6379 (or socket=PATH)[,name=cache]
  sqlite:path=/data/app.db[,name=app]
  script:freeze=CMD,thaw=CMD[,prepare=CMD,post=CMD,abort=CMD,paths=DIR:DIR,timeout=30s]`,
		Example: `  umbra shadow create --writer sqlite:path=/srv/app/app.db /srv/app
  umbra shadow create --provider reflink --json /data
  umbra shadow create --writer 'script:freeze=systemctl kill -s STOP myapp,thaw=systemctl kill -s CONT myapp' /srv`,
		RunE: func(cmd *cobra.Command, paths []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			wrs, err := a.writers(cfg, specs, len(paths) == 0 && !noConfig)
			if err != nil {
				return err
			}
			if len(wrs) == 0 && len(paths) == 0 {
				return usagef("nothing to copy: give a PATH or a --writer")
			}
			switch t := writer.BackupType(backupType); t {
			case writer.Full, writer.Incremental, writer.Log, writer.Copy:
				over.Type = t
			default:
				return usagef("--type %q: want full, incremental, log or copy", backupType)
			}
			store, err := a.store(cfg)
			if err != nil {
				return err
			}
			coord, err := a.coordinator(cfg, store, over)
			if err != nil {
				return err
			}
			start := time.Now()
			set, err := coord.Create(cmd.Context(), wrs, paths)
			if err == nil {
				err = coord.Settle(cmd.Context(), set, wrs)
			}
			return a.reportCreate(set, time.Since(start), err)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&specs, "writer", "w", nil, "add a writer for this run (repeatable), as TYPE:KEY=VALUE,...")
	f.BoolVar(&noConfig, "no-config-writers", false, "leave out the writers of the configuration file")
	f.StringVar(&over.Provider, "provider", "", "use this provider for every volume (btrfs, reflink, live)")
	f.BoolVar(&over.FSFreeze, "fsfreeze", false, "freeze every volume's filesystem during the commit, guarded by a thaw process (block-level providers only)")
	f.DurationVar(&over.FreezeLimit, "freeze-limit", 0, "longest the writers may stay frozen (default 60s)")
	f.DurationVar(&over.CommitLimit, "commit-limit", 0, "longest the providers may take to commit (default 10s)")
	f.StringVar(&backupType, "type", "full", "backup type the writers are told: full, incremental, log or copy")
	return cmd
}

// setView is the JSON form of a set, stable for scripts.
type setView struct {
	ID          string                `json:"id"`
	Status      shadow.Status         `json:"status"`
	Type        writer.BackupType     `json:"type"`
	Created     time.Time             `json:"created"`
	Volumes     []shadow.Volume       `json:"volumes"`
	Writers     []shadow.WriterResult `json:"writers"`
	Paths       []shadow.PathResult   `json:"paths"`
	FreezeMS    float64               `json:"freeze_ms"`
	FreezeStart time.Time             `json:"freeze_start,omitzero"`
	FreezeEnd   time.Time             `json:"freeze_end,omitzero"`
	DurationMS  float64               `json:"duration_ms,omitempty"`
	Exposed     []string              `json:"exposed,omitempty"`
	Error       *errorView            `json:"error,omitempty"`
}

type errorView struct {
	Message   string `json:"message"`
	Phase     string `json:"phase,omitempty"`
	Who       string `json:"who,omitempty"`
	Retryable bool   `json:"retryable"`
}

func viewOf(set *shadow.Set) setView {
	v := setView{
		ID: set.ID, Status: set.Status, Type: set.Type, Created: set.Created,
		Volumes: set.Volumes(), Writers: set.Writers, Paths: set.Paths,
		FreezeStart: set.FreezeStart, FreezeEnd: set.FreezeEnd, Exposed: set.Exposed,
	}
	if !set.FreezeEnd.IsZero() {
		v.FreezeMS = ms(set.FreezeWindow())
	}
	if v.Volumes == nil {
		v.Volumes = []shadow.Volume{}
	}
	if v.Writers == nil {
		v.Writers = []shadow.WriterResult{}
	}
	if v.Paths == nil {
		v.Paths = []shadow.PathResult{}
	}
	if set.Error != "" {
		v.Error = &errorView{Message: set.Error}
	}
	return v
}

func (a *app) reportCreate(set *shadow.Set, took time.Duration, err error) error {
	v := viewOf(set)
	v.DurationMS = ms(took)
	if err != nil {
		v.Error = &errorView{Message: err.Error()}
		var pe *shadow.PhaseError
		if errors.As(err, &pe) {
			v.Error.Phase, v.Error.Who, v.Error.Retryable = string(pe.Phase), pe.Who, pe.Retryable
		}
	}
	if a.json {
		if perr := a.printJSON(v); perr != nil {
			return perr
		}
		if err != nil {
			return &reportedError{err}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("shadow set %s failed and was aborted (every writer thawed, every shadow deleted):\n  %w", set.ID, err)
	}
	fmt.Fprintf(a.stdout, "Shadow set %s (%s) is ready.\n", set.ID, set.Type)
	a.printSet(set)
	fmt.Fprintf(a.stdout, "Freeze window: %.1f ms; whole run %.0f ms.\n", v.FreezeMS, v.DurationMS)
	return nil
}

func (a *app) printSet(set *shadow.Set) {
	if vols := set.Volumes(); len(vols) > 0 {
		tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  VOLUME\tSHADOW COPY\tPROVIDER")
		for _, v := range vols {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Source, v.Snapshot, v.Provider)
		}
		tw.Flush()
	}
	if len(set.Writers)+len(set.Paths) > 0 {
		tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  DATA\tCONSISTENCY")
		for _, w := range set.Writers {
			for _, c := range w.Components {
				fmt.Fprintf(tw, "  %s component %s\t%s\n", w.Name, c.Name, c.Consistency)
			}
			if len(w.Components) == 0 {
				fmt.Fprintf(tw, "  %s\t%s\n", w.Name, w.Consistency)
			}
		}
		for _, p := range set.Paths {
			fmt.Fprintf(tw, "  %s\t%s\n", p.Path, p.Consistency)
		}
		tw.Flush()
	}
}

func (a *app) openCoordinator() (*shadow.Coordinator, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	store, err := a.store(cfg)
	if err != nil {
		return nil, err
	}
	return a.coordinator(cfg, store, shadow.Options{})
}

func (a *app) shadowList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List shadow sets",
		Long: `List every shadow set with its volumes. A set whose creator died while making
it (a crash in the freeze window) is cleaned up here: its shadows are deleted
and it is shown once as failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			coord, err := a.openCoordinator()
			if err != nil {
				return err
			}
			sets, err := coord.List(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				views := []setView{}
				for _, s := range sets {
					views = append(views, viewOf(s))
				}
				return a.printJSON(views)
			}
			if len(sets) == 0 {
				fmt.Fprintln(a.stdout, "No shadow sets.")
				return nil
			}
			for _, s := range sets {
				fmt.Fprintf(a.stdout, "%s  %s  %s  freeze %.1f ms\n", s.ID, s.Status, s.Created.Local().Format(time.DateTime), ms(s.FreezeWindow()))
				if s.Error != "" {
					fmt.Fprintf(a.stdout, "  error: %s\n", s.Error)
				}
				a.printSet(s)
				for _, e := range s.Exposed {
					fmt.Fprintf(a.stdout, "  exposed at %s\n", e)
				}
			}
			return nil
		},
	}
}

func (a *app) shadowDelete() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "delete ID...|--all",
		Short:   "Delete shadow sets",
		Example: "  umbra shadow delete 20261122T103000Z-3f9a2c1b\n  umbra shadow delete --all",
		RunE: func(cmd *cobra.Command, ids []string) error {
			if all == (len(ids) > 0) {
				return usagef("give set ids or --all, not both and not neither")
			}
			coord, err := a.openCoordinator()
			if err != nil {
				return err
			}
			if all {
				sets, err := coord.List(cmd.Context())
				if err != nil {
					return err
				}
				for _, s := range sets {
					if s.Status != shadow.StatusCreating {
						ids = append(ids, s.ID)
					}
				}
			}
			var errs []error
			deleted := []string{}
			for _, id := range ids {
				if err := coord.Delete(cmd.Context(), id); err != nil {
					errs = append(errs, err)
					continue
				}
				deleted = append(deleted, id)
				if !a.json {
					fmt.Fprintf(a.stdout, "Deleted %s.\n", id)
				}
			}
			if a.json {
				if err := a.printJSON(map[string]any{"deleted": deleted}); err != nil {
					return err
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "delete every set")
	return cmd
}

func (a *app) shadowExpose() *cobra.Command {
	return &cobra.Command{
		Use:   "expose ID DIR",
		Short: "Mount a shadow set read-only at a directory",
		Long: `Mount the set's shadow copy read-only at DIR (a bind mount). A set with several
shadowed directories is mounted at DIR/0, DIR/1, … in the order "umbra shadow
list" shows them. "umbra shadow delete" unmounts it.`,
		Example: "  umbra shadow expose 20261122T103000Z-3f9a2c1b /mnt/shadow",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			coord, err := a.openCoordinator()
			if err != nil {
				return err
			}
			dirs, err := coord.Expose(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"id": args[0], "exposed": dirs})
			}
			fmt.Fprintf(a.stdout, "Exposed %s read-only at %s.\n", args[0], strings.Join(dirs, ", "))
			return nil
		},
	}
}

func (a *app) shadowRevert() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "revert ID --yes",
		Short: "Roll volumes back to a shadow set",
		Long: `Replace the live data of every volume in the set with the set's shadow copy.
Everything written since the set was made is lost. Stop the applications that
use the volumes first. Only providers that can revert (btrfs) allow it; the
set itself is kept.`,
		Example: "  umbra shadow revert 20261122T103000Z-3f9a2c1b --yes",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return usagef("revert replaces live data with the shadow copy and loses every later change; add --yes to go ahead")
			}
			coord, err := a.openCoordinator()
			if err != nil {
				return err
			}
			if err := coord.Revert(cmd.Context(), args[0]); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"id": args[0], "reverted": true})
			}
			fmt.Fprintf(a.stdout, "Reverted to %s.\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that live data is to be replaced")
	return cmd
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d arguments, got %d; usage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}
