package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/umbra-backup/umbra/internal/archive"
	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/catalog"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/restore"
	"github.com/umbra-backup/umbra/internal/retention"
	"github.com/umbra-backup/umbra/internal/writer"
)

// warningsError ends a run that completed with warnings: exit status 3.
type warningsError struct{ n int }

func (e *warningsError) Error() string {
	return fmt.Sprintf("completed with %d warnings", e.n)
}

func (a *app) backupCommand() *cobra.Command {
	var (
		f           repoFlags
		tags        []string
		host        string
		parent      string
		force       bool
		writerSpecs []string
		keepShadows bool
		retries     int
		jobName     string
		fallback    bool
		strict      bool
		noTruncate  []string
		verifyAfter bool
		// truncateAfter: "stored" or "verified"
		truncateAfter string
	)
	cmd := &cobra.Command{
		Use:   "backup [--writer SPEC]... [PATH]...",
		Short: "Back up applications, files and directories into the repository",
		Long: `Back up each PATH into the repository. Files are cut into chunks (fixed
16 KiB blocks for database and disk-image files, content-defined ~1 MiB
chunks for the rest); only chunks the repository lacks are stored,
compressed and encrypted. Files whose size, mtime, ctime and inode match the
last backup of the same paths from this host are not read again.

Files that cannot be read, or change while being read, are reported and the
backup goes on; it then exits with status 3, "completed with warnings".

With writers (--writer, or every writer of the configuration file when no
PATH is given) the backup is application-consistent: umbra makes a shadow
set of the writers' data and the PATHs (umbra help shadow), reads it from
the shadow copies, stores what the writers hand on (PostgreSQL's backup
label and WAL), records each writer's metadata, positions and consistency
in the backup, and only once the backup is durable tells the writers it
succeeded, which is when they may truncate logs. Any failure before that
aborts the writers and truncates nothing. A retryable failure of the set
(a busy writer or volume, a time-out) is tried again --retries times.

A writer that still fails is left out, as VSS leaves out a failing
component: the other writers and the PATHs are stored, the backup records
the writer as failed with its reason, nothing of it is stored and none of
its logs truncated, and umbra exits with status 4, "partial". With --strict
(or strict = true in a job) it fails the whole backup instead; with
--fallback its data is stored crash-consistently.

--verify (verify = true in a job) verifies the stored backup as umbra verify
does and exits 5 if it fails. --truncate-after verified (truncate_after =
"verified") verifies it before the writers hear of it: only a backup that
passed lets them truncate their logs (binary log purge, WAL archive
pruning); one that failed truncates nothing.`,
		Example: `  umbra backup /etc /srv/www
  umbra backup --tag nightly --json /home
  umbra backup --writer postgres:host=/run/postgresql,user=postgres
  umbra backup                    # every writer in the configuration file
  umbra backup --job nightly      # a [[job]] of the configuration file
  MYSQL_PWD=… umbra backup --writer mariadb:socket=/run/mysqld/mysqld.sock --fallback`,
		RunE: func(cmd *cobra.Command, paths []string) error {
			ctx := cmd.Context()
			cfg, err := a.config()
			if err != nil {
				return err
			}
			b := job.Backup{Tags: tags, Host: host, Force: force, KeepShadows: keepShadows,
				Retries: retries, Fallback: fallback, Strict: strict, NoTruncate: noTruncate,
				Verify: verifyAfter || truncateAfter == "verified", TruncateAfterVerified: truncateAfter == "verified"}
			switch truncateAfter {
			case "stored", "verified":
			default:
				return usagef("--truncate-after %s: want stored or verified", truncateAfter)
			}
			// With no PATH, or with a job, the configured writers take part.
			useConfig := len(paths) == 0
			var jobWriters []string
			if jobName != "" {
				j, err := cfg.Job(jobName)
				if err != nil {
					return &usageError{err}
				}
				if j.Type != "backup" {
					return usagef("job %s is a %s job, which umbra serve runs; by hand: umbra %s", j.Name, j.Type, map[string]string{"verify": "verify latest", "prune": "forget --keep-… --prune"}[j.Type])
				}
				useConfig, jobWriters = true, j.Writers
				paths = append(slices.Clone(j.Paths), paths...)
				b.Tags = append(slices.Clone(j.Tags), tags...)
				b.Fallback = fallback || j.Fallback
				b.Strict = strict || j.Strict
				b.KeepShadows = keepShadows || j.KeepShadows
				b.NoTruncate = append(slices.Clone(j.NoTruncate), noTruncate...)
				if !cmd.Flags().Changed("retries") && j.Retries >= 0 {
					b.Retries = j.Retries
				}
				b.Keep = retention.Policy(j.Keep)
				b.Verify = b.Verify || j.Verify || j.TruncateAfter == "verified"
				b.TruncateAfterVerified = b.TruncateAfterVerified || j.TruncateAfter == "verified"
			}
			wrs, specs, err := a.writersAndSpecs(cfg, writerSpecs, useConfig)
			if err != nil {
				return err
			}
			if len(jobWriters) > 0 {
				wrs, specs = job.OnlyWriters(wrs, specs, jobWriters, len(writerSpecs))
			}
			if len(wrs) > 0 {
				b.Writers, b.Specs, b.Paths = wrs, specs, paths
				return a.appBackup(cmd, &f, cfg, b)
			}
			if len(paths) == 0 {
				return &usageError{errors.New("nothing to back up: give PATH..., --writer SPEC, or configure writers in the configuration file")}
			}
			abs, err := job.ExistingPaths(paths)
			if err != nil {
				return err
			}
			repo, ctx, done, err := a.openLocked(ctx, &f, false, "backup")
			if err != nil {
				return err
			}
			defer done()
			if host == "" {
				host, _ = os.Hostname()
			}
			prog := &archive.Progress{}
			var expected atomic.Int64 // the last backup's size, for an ETA
			stop := a.showProgress(func(elapsed time.Duration) string {
				seen := prog.Bytes.Load()
				return fmt.Sprintf("%d files, %s seen, %s read (%s/s), %s added%s", prog.Files.Load(), size(seen),
					size(prog.BytesRead.Load()), size(rate(prog.BytesRead.Load(), elapsed)), size(prog.BytesAdded.Load()),
					eta(seen, expected.Load(), elapsed))
			})
			out, err := backup.RunPaths(ctx, repo, backup.PathsJob{
				Paths: abs, Host: host, Tags: tags, Parent: parent, Force: force, Progress: prog,
				Started: expected.Store, Pause: testPause,
			})
			stop()
			if err != nil {
				return lockLost(ctx, err)
			}
			id, m := out.ID, out.Manifest
			if a.json {
				if err := a.printJSON(struct {
					ID repository.ID `json:"id"`
					*repository.Manifest
					StoreRetries int64 `json:"store_retries"`
				}{id, m, a.storeRetries()}); err != nil {
					return err
				}
			} else {
				for _, w := range m.Warnings {
					fmt.Fprintf(a.stderr, "warning: %s\n", w)
				}
				s := m.Stats
				fmt.Fprintf(a.stdout, "Backup %s of %s: %s, %s, %s; %s new or changed, %s read, %s added, in %s.\n",
					id.Short(), strings.Join(m.Paths, " "), count(s.Files, "file"), count(s.Dirs, "directory"), size(s.Bytes), count(s.FilesChanged, "file"),
					size(s.BytesRead), size(s.BytesAdded), (time.Duration(s.DurationMS) * time.Millisecond).Round(time.Millisecond))
			}
			if n := len(m.Warnings); n > 0 {
				if !a.json {
					return &warningsError{n}
				}
				return &reportedError{&warningsError{n}}
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "label the backup (repeatable)")
	cmd.Flags().StringVar(&host, "host", "", "host name to record (default this machine's)")
	cmd.Flags().StringVar(&parent, "parent", "", "compare with this backup instead of the last one of the same paths")
	cmd.Flags().BoolVar(&force, "force", false, "read every file, even unchanged ones")
	cmd.Flags().StringArrayVarP(&writerSpecs, "writer", "w", nil, "back up this writer's data, application-consistent (repeatable), as TYPE:KEY=VALUE,...")
	cmd.Flags().BoolVar(&keepShadows, "keep-shadows", false, "keep the shadow set after the backup (umbra shadow list shows it)")
	cmd.Flags().IntVar(&retries, "retries", 3, "how often to try the shadow set again after a retryable failure (busy, time-out), waiting 5s, 10s, ...")
	cmd.Flags().StringVar(&jobName, "job", "", "run the [[job]] of this name from the configuration file (flags add to it)")
	cmd.Flags().BoolVar(&fallback, "fallback", false, "back up a writer that fails crash-consistently instead of leaving it out (recorded as crash)")
	cmd.Flags().BoolVar(&strict, "strict", false, "fail the whole backup if a writer fails, instead of storing the others (exit 4, partial)")
	cmd.Flags().StringArrayVar(&noTruncate, "no-truncate", nil, "tell this writer the backup is a copy, so it truncates no log (repeatable)")
	cmd.Flags().BoolVar(&verifyAfter, "verify", false, "verify the backup once it is stored (umbra verify); exit 5 if it fails")
	cmd.Flags().StringVar(&truncateAfter, "truncate-after", "stored", `when writers may truncate their logs: "stored", or "verified" (verify first; nothing truncated if it fails)`)
	return cmd
}

// parseTime reads a moment: RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" in local
// time.
func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999", "2006-01-02 15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("not a date and time")
}

// rate is n per second over d.
func rate(n int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}

// eta estimates the time left from progress done of total, or says nothing
// when the total is unknown.
func eta(done, total int64, elapsed time.Duration) string {
	if total <= 0 || done <= 0 || done >= total {
		return ""
	}
	left := time.Duration(float64(elapsed) * float64(total-done) / float64(done))
	return fmt.Sprintf(", ETA %s", left.Round(time.Second))
}

// showProgress prints status(elapsed) on stderr once a second while on a
// terminal, and returns the function that stops it.
func (a *app) showProgress(status func(elapsed time.Duration) string) func() {
	f, ok := a.stderr.(*os.File)
	if a.json || !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}
	}
	start := time.Now()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(f, "\r\033[K")
				return
			case <-t.C:
				elapsed := time.Since(start)
				fmt.Fprintf(f, "\r\033[K[%s] %s", elapsed.Round(time.Second), status(elapsed))
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// size formats a byte count for people.
// count says n things: "1 file", "2 files", "3 directories".
func count[N int | int64](n N, word string) string {
	if n == 1 {
		return "1 " + word
	}
	if strings.HasSuffix(word, "y") {
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(word, "y"))
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (a *app) backupsCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "backups",
		Short: "List the backups in the repository",
		Long: `List the backups: id, time, host, files, size, bytes added, the writers'
freeze window, the last verification (umbra verify: ok or FAILED, and when;
"-" if never verified), each writer with its consistency, and the paths.`,
		Example: "  umbra backups\n  umbra backups --json | jq '.[-1].id'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, done, err := a.openRepo(cmd.Context(), &f)
			if err != nil {
				return err
			}
			defer done()
			all, err := catalog.Backups(cmd.Context(), repo)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(all)
			}
			if len(all) == 0 {
				fmt.Fprintln(a.stdout, "No backups yet.")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tHOST\tFILES\tSIZE\tADDED\tFREEZE\tVERIFIED\tWRITERS\tPATHS")
			for _, e := range all {
				writers, freeze, checked := "-", "-", "-"
				if info, err := backup.ReadInfo(e.Manifest); err == nil && info != nil {
					var ws []string
					for _, w := range info.Writers {
						ws = append(ws, w.Name+" ("+string(w.Consistency)+")")
					}
					if len(ws) > 0 {
						writers = strings.Join(ws, ", ")
					}
					freeze = fmt.Sprintf("%.1f ms", info.FreezeMS)
				}
				if v := e.Verification; v != nil {
					checked = map[bool]string{true: "ok", false: "FAILED"}[v.OK] + " " + v.Time.Local().Format("01-02 15:04")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID.Short(), e.Time.Local().Format(time.DateTime), e.Host,
					e.Stats.Files, size(e.Stats.Bytes), size(e.Stats.BytesAdded), freeze, checked, writers, strings.Join(e.Paths, " "))
			}
			return tw.Flush()
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func (a *app) lsCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:     "ls ID [PATH]",
		Short:   "List the files of a backup",
		Long:    "List every file of backup ID (an id, a unique prefix, or \"latest\"), or only those under PATH.",
		Example: "  umbra ls latest /etc\n  umbra ls 3f9a2c1b --json",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("ls takes a backup id and an optional path")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, e, done, err := a.openBackup(cmd.Context(), &f, args[0])
			if err != nil {
				return err
			}
			defer done()
			under := "/"
			if len(args) == 2 {
				under = filepath.Clean(args[1])
			}
			type entry struct {
				Path string `json:"path"`
				repository.Node
			}
			var list []entry
			var walk func(id repository.ID, dir string) error
			walk = func(id repository.ID, dir string) error {
				t, err := repo.LoadTree(cmd.Context(), id)
				if err != nil {
					return err
				}
				for _, n := range t.Nodes {
					p := filepath.Join(dir, string(n.Name))
					if p == under || strings.HasPrefix(p, strings.TrimSuffix(under, "/")+"/") {
						list = append(list, entry{p, n})
					}
					if n.Subtree != nil && (strings.HasPrefix(under, p) || strings.HasPrefix(p, under)) {
						if err := walk(*n.Subtree, p); err != nil {
							return err
						}
					}
				}
				return nil
			}
			if err := walk(e.Tree, "/"); err != nil {
				return err
			}
			if len(list) == 0 && under != "/" {
				return fmt.Errorf("backup %s holds nothing at %s; umbra ls %s lists what it holds", e.ID.Short(), under, e.ID.Short())
			}
			if a.json {
				for i := range list {
					list[i].Content, list[i].ContentLists = nil, nil // ids are of no use to a script
				}
				if list == nil {
					list = []entry{}
				}
				return a.printJSON(list)
			}
			for _, x := range list {
				fmt.Fprintf(a.stdout, "%s %8s %-8s %10d %s %s\n", modeString(x.Node), x.User, x.Group, x.Size,
					time.Unix(0, x.MTime).Local().Format("2006-01-02 15:04"), x.Path)
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func modeString(n repository.Node) string {
	kinds := map[repository.NodeType]string{repository.NodeDir: "d", repository.NodeSymlink: "l", repository.NodeFifo: "p",
		repository.NodeDev: "b", repository.NodeCharDev: "c", repository.NodeSocket: "s"}
	k, ok := kinds[n.Type]
	if !ok {
		k = "-"
	}
	return k + os.FileMode(n.Mode & 0o777).String()[1:]
}

func (a *app) restoreCommand() *cobra.Command {
	var (
		f          repoFlags
		target     string
		includes   []string
		force      bool
		filesOnly  bool
		only       []string
		components []string
		toDataDir  string
		toPort     int
		until      string
		table      writer.TableCopy
	)
	cmd := &cobra.Command{
		Use:   "restore ID [--target DIR] [--force] [--writer NAME] [--component NAME] [--include PATTERN]...",
		Short: "Restore a backup: applications in place, or files under a directory",
		Long: `Restore backup ID (an id, a unique prefix, or "latest"; with --writer,
"latest" is the newest backup that holds those writers).

A backup made with writers is restored application by application, in the
order of the backup: the writer stops the application and moves its files
aside (PreRestore), its components' files come back, then the files it
handed on at backup time (PostgreSQL's backup_label and WAL), and the
writer recovers, starts and checks the application (PostRestore). In place
this replaces live data, so it asks for --force when the data exists. With
--target DIR everything lands under DIR and nothing live is touched; the
writer readies the files there (PostgreSQL: recovery.signal) but starts
nothing. --writer and --component restore a part. --to-datadir DIR
--to-port N bring a database up beside production: PostgreSQL's copy gets
its own data directory (tablespaces in DIR.tablespaces, the configuration
copied in), listens on N, archives nothing, and is started. --until TIME
recovers PostgreSQL to that moment with the WAL archived by umbra wal-push
after the backup (restore_command runs umbra wal-fetch).

Files, and backups of plain paths, come back under --target DIR: a file
backed up as /srv/app/x comes back as DIR/srv/app/x, with its content
(holes as holes), owner, mode, modification time, xattrs and ACLs, and hard
links. Restore never overwrites. --include restores only paths matching a
shell pattern (repeatable); a matching directory brings everything below
it. --files-only restores a writer backup as plain files.

One table (item-level restore): --table NAME with one --writer starts the
application from the backup on a private socket (as umbra run does, nothing
restored first), dumps the table with the application's own tool
(pg_dump, mariadb-dump, or SQLite's schema and rows) and loads it into the
live application, which keeps serving: its rows, indexes, constraints and
triggers, in one transaction. --into NAME gives it another name (to look
at it beside the current one); --where COND keeps only the rows COND
selects; a table of that name in the live application is refused unless
--force replaces it. PostgreSQL: --table SCHEMA.TABLE and --database DB
(default the writer's); MariaDB: --table DATABASE.TABLE.`,
		Example: `  umbra restore latest --force                     # every application in the backup, in place
  umbra restore 3f9a2c1b --target /srv/restore      # beside production
  umbra restore latest --writer postgres:main --force
  umbra restore latest --writer postgres:main --to-datadir /srv/pg-copy --to-port 5433
  umbra restore latest --force --until "2026-11-22 10:29:00"   # to just before the mistake
  umbra restore latest --files-only --target /tmp/r --include '/etc/ssh/*'
  umbra restore latest --writer postgres:main --database shop --table public.orders
  umbra restore latest --writer postgres:main --table public.orders --into public.orders_yesterday --where "created > now() - interval '2 days'"
  umbra restore latest --writer mariadb:main --table shop.orders --force`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A shared lock: a prune beside the restore deletes nothing it reads.
			repo, ctx, done, err := a.openLocked(cmd.Context(), &f, false, "restore")
			if err != nil {
				return err
			}
			defer done()
			if table.Table != "" {
				table.Force = force
				return a.restoreTable(ctx, repo, args[0], only, table)
			}
			var untilTime time.Time
			if until != "" {
				if untilTime, err = parseTime(until); err != nil {
					return usagef("--until %q: %v; write it like 2026-11-22T10:30:00+01:00 or \"2026-11-22 10:30:00\" (local time)", until, err)
				}
			}
			var e repository.ManifestEntry
			if until != "" {
				e, err = backup.FindBackupUntil(ctx, repo, args[0], only, untilTime)
			} else {
				e, err = backup.FindBackup(ctx, repo, args[0], only)
			}
			if err != nil {
				return err
			}
			info, err := backup.ReadInfo(e.Manifest)
			if err != nil {
				return err
			}
			if info != nil && len(info.Writers) > 0 && !filesOnly {
				if len(includes) > 0 {
					return usagef("--include selects files; with an application backup use --component, or --files-only")
				}
				job := backup.RestoreJob{
					Target: target, Force: force, Only: only, Components: components, ToDataDir: toDataDir, ToPort: toPort,
					Notify: func(msg string) { fmt.Fprintf(a.stderr, "umbra: %s\n", msg) }, Pause: testPause,
				}
				// Recovery reads the WAL archive whenever it can, also
				// without --until: it must see the archived timeline
				// histories, or it would pick a timeline already taken.
				_, fetchErr := a.walFetchShell(&f, "")
				if fetchErr == nil {
					job.FetchLog = func(name string) string {
						cmd, _ := a.walFetchShell(&f, name)
						return cmd
					}
				}
				if until != "" {
					job.Until = untilTime
					if fetchErr != nil {
						return fetchErr
					}
				}
				return a.appRestore(cmd, repo, e, info, job)
			}
			if target == "" {
				return usagef("--target DIR is required: restore writes under a directory, never over live data")
			}
			prog := &restore.Progress{}
			stop := a.showProgress(func(elapsed time.Duration) string {
				done := prog.Bytes.Load()
				return fmt.Sprintf("%d files, %s of %s (%s/s)%s", prog.Files.Load(), size(done), size(e.Stats.Bytes),
					size(rate(done, elapsed)), eta(done, e.Stats.Bytes, elapsed))
			})
			start := time.Now()
			stats, err := restore.Run(ctx, repo, e.Tree, target, restore.Options{Include: includes, Progress: prog})
			stop()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"id": e.ID, "target": target, "stats": stats})
			}
			fmt.Fprintf(a.stdout, "Restored %s, %s, %s from %s to %s in %s.\n",
				count(stats.Files, "file"), count(stats.Dirs, "directory"), size(stats.Bytes), e.ID.Short(), target, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&target, "target", "", "restore under this directory instead of in place")
	cmd.Flags().StringArrayVar(&includes, "include", nil, "restore only paths matching this shell pattern (repeatable)")
	cmd.Flags().BoolVar(&force, "force", false, "restore in place over existing data (the writer stops the application first)")
	cmd.Flags().BoolVar(&filesOnly, "files-only", false, "restore a writer backup as plain files under --target")
	cmd.Flags().StringArrayVarP(&only, "writer", "w", nil, "restore only this writer instance, such as postgres:main (repeatable)")
	cmd.Flags().StringArrayVar(&components, "component", nil, "restore only this component of the writers (repeatable)")
	cmd.Flags().StringVar(&toDataDir, "to-datadir", "", "bring a database writer's copy up in this new data directory, beside the original")
	cmd.Flags().IntVar(&toPort, "to-port", 0, "the port of the copy started with --to-datadir")
	cmd.Flags().StringVar(&table.Table, "table", "", "restore this one table into the live application (with one --writer)")
	cmd.Flags().StringVar(&table.Into, "into", "", "with --table: the table's name in the live application (default its own)")
	cmd.Flags().StringVar(&table.Where, "where", "", "with --table: restore only the rows this SQL condition selects")
	cmd.Flags().StringVar(&table.Database, "database", "", "with --table: PostgreSQL's database of the table (default the writer's)")
	cmd.Flags().StringVar(&until, "until", "", "recover PostgreSQL to this moment from WAL archived by umbra wal-push (needs a password file postgres can read: UMBRA_PASSWORD_FILE or the configuration's [repository] password_file)")
	return cmd
}

func (a *app) checkCommand() *cobra.Command {
	var (
		f        repoFlags
		readData bool
	)
	cmd := &cobra.Command{
		Use:   "check [--read-data]",
		Short: "Verify the repository",
		Long: `Verify that every indexed pack exists and every backup's trees are intact and
name only stored data. With --read-data, read every pack and authenticate
every blob: damage is found and the backups it affects are named; backups
that do not use a damaged pack still restore. Exit status 1 if anything is
wrong.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Exclusive: no prune deletes packs while they are checked.
			repo, ctx, done, err := a.openLocked(cmd.Context(), &f, true, "check")
			if err != nil {
				return err
			}
			defer done()
			var read, total int
			var mu sync.Mutex
			stop := a.showProgress(func(elapsed time.Duration) string {
				mu.Lock()
				defer mu.Unlock()
				return fmt.Sprintf("%d of %d packs read%s", read, total, eta(int64(read), int64(total), elapsed))
			})
			rep, err := repo.Check(ctx, readData, func(d, t int) {
				mu.Lock()
				read, total = d, t
				mu.Unlock()
			})
			stop()
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "%d backups, %d trees, %d blobs in %d packs", rep.Backups, rep.Trees, rep.Blobs, rep.Packs)
				if readData {
					fmt.Fprintf(a.stdout, " (%d read)", rep.PacksRead)
				}
				fmt.Fprintln(a.stdout, ".")
				for _, n := range rep.Notes {
					fmt.Fprintf(a.stdout, "note: %s\n", n)
				}
				for _, e := range rep.Errors {
					fmt.Fprintf(a.stdout, "error: %s\n", e)
				}
				for _, id := range rep.AffectedBackups {
					fmt.Fprintf(a.stdout, "damaged backup: %s\n", id)
				}
			}
			if !rep.OK() {
				err := fmt.Errorf("the repository has %d errors; %d backups are affected", len(rep.Errors), len(rep.AffectedBackups))
				if a.json {
					return &reportedError{err}
				}
				return err
			}
			if !a.json {
				fmt.Fprintln(a.stdout, "No errors.")
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&readData, "read-data", false, "also read and authenticate every pack")
	return cmd
}
