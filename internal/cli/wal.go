package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/repository"
)

// openWAL opens the repository for WAL archiving: config and key only.
func (a *app) openWAL(ctx context.Context, f *repoFlags) (*repository.Repository, func(), error) {
	return a.openRepoWith(ctx, f, repository.OpenWAL)
}

func (a *app) walPushCommand() *cobra.Command {
	var f repoFlags
	var wname string
	cmd := &cobra.Command{
		Use:   "wal-push PATH",
		Short: "Archive one PostgreSQL WAL file (archive_command)",
		Long: `Archive the WAL file at PATH into the repository, for point-in-time
restore (umbra restore ID --until TIME). Set it as PostgreSQL's
archive_command; it runs as the postgres user, so that user needs the
repository's location and a password file it can read, and read access to
the repository's config and keys/ and write access to its wal/:

  archive_mode    = on
  archive_command = 'UMBRA_REPO=/var/backups/umbra UMBRA_PASSWORD_FILE=/etc/umbra/wal.pass umbra wal-push --writer postgres:main %p'

--writer names the server's writer instance, so that several servers can
archive into one repository; restore --until fetches with the same name.
Archiving a file again with the same content succeeds (PostgreSQL retries
after a crash); other content under an archived name fails. A backup of
the server prunes archived WAL older than the oldest backup of it.`,
		Example: "  umbra wal-push pg_wal/000000010000000000000003",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			repo, done, err := a.openWAL(cmd.Context(), &f)
			if err != nil {
				return err
			}
			defer done()
			return repo.SaveWAL(cmd.Context(), backup.WALKey(wname, filepath.Base(args[0])), data)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVarP(&wname, "writer", "w", "", "the writer instance of this server, such as postgres:main")
	return cmd
}

func (a *app) walFetchCommand() *cobra.Command {
	var f repoFlags
	var wname string
	var prefetch int
	cmd := &cobra.Command{
		Use:   "wal-fetch NAME PATH",
		Short: "Fetch one archived WAL file (restore_command)",
		Long: `Write the archived WAL file NAME to PATH. umbra restore --until sets
restore_command to call it; it exits 1 when NAME was never archived, which
PostgreSQL takes as the end of the archive, and 126 when it cannot read the
repository or write PATH, which stops recovery.

--prefetch N also fetches the next N segments of NAME's timeline (at most
256 MiB) into .umbra-prefetch beside PATH, and a later wal-fetch of one of
them only moves it into place: opening the repository costs about half a
second of key derivation, once per segment without it. restore removes
the directory once recovery is over.`,
		Example: "  umbra wal-fetch 000000010000000000000003 pg_wal/RECOVERYXLOG",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if prefetch > 0 {
				if ok, err := backup.TakeSpooled(args[0], args[1]); ok || err != nil {
					if err != nil {
						return &exitError{code: exitFatal, err: err}
					}
					return nil
				}
			}
			repo, done, err := a.openWAL(cmd.Context(), &f)
			if err != nil {
				// Not "the archive ends here" (exit 1): recovery must stop.
				return &exitError{code: exitFatal, err: err}
			}
			defer done()
			data, err := repo.LoadWAL(cmd.Context(), backup.WALKey(wname, args[0]))
			if err == nil {
				err = os.WriteFile(args[1], data, 0o600)
			}
			if err == nil {
				// Ahead of what recovery asks next; a failure here only
				// means the next runs open the repository themselves.
				if perr := backup.PrefetchWAL(cmd.Context(), repo, wname, args[0], args[1], prefetch); perr != nil {
					a.logger().Warn("prefetching archived WAL failed", "err", perr)
				}
			}
			if err != nil && !errors.Is(err, repository.ErrNoWAL) {
				// Exit status 1 tells PostgreSQL the archive ends here; a
				// failure must stop recovery instead (above 125).
				return &exitError{code: exitFatal, err: err}
			}
			return err
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVarP(&wname, "writer", "w", "", "the writer instance whose archive to read, as given to wal-push")
	cmd.Flags().IntVar(&prefetch, "prefetch", 0, "also fetch the next N segments into .umbra-prefetch beside PATH")
	return cmd
}

// walPrefetch is how many segments restore_command fetches ahead.
const walPrefetch = 32

// walFetchCommand is the restore_command that fetches archived WAL from
// the repository this run uses: umbra's own executable, with the run's
// UMBRA_* settings except a password itself, which must come from a file.
func (a *app) walFetchShell(f *repoFlags, writerName string) (string, error) {
	loc, err := a.location(f)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(loc, "s3:") {
		return "", errors.New("--until with an S3 repository is not supported yet: PostgreSQL's restore_command would need the S3 credentials written into its configuration; restore without --until, or from a local copy of the repository")
	}
	pwFile, err := a.passwordFile()
	if err != nil {
		return "", err
	}
	if pwFile == "" {
		return "", errors.New("--until needs a password file the postgres user can read (UMBRA_PASSWORD_FILE, or password_file in the configuration's [repository]): PostgreSQL fetches archived WAL with umbra wal-fetch, and a password must not be written into its configuration")
	}
	if pwFile, err = filepath.Abs(pwFile); err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	// The command runs in the data directory: paths must be absolute.
	if !strings.Contains(loc, ":") {
		if loc, err = filepath.Abs(loc); err != nil {
			return "", err
		}
	}
	env := map[string]string{"UMBRA_REPO": loc, "UMBRA_PASSWORD_FILE": pwFile}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "UMBRA_") && k != "UMBRA_PASSWORD" && k != "UMBRA_REPO" && k != "UMBRA_PASSWORD_FILE" {
			env[k] = v
		}
	}
	var keys []string
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, shellQuote(env[k]))
	}
	fmt.Fprintf(&b, "%s wal-fetch --prefetch %d --writer %s %%f %%p", shellQuote(self), walPrefetch, shellQuote(writerName))
	return b.String(), nil
}

// shellQuote quotes s for /bin/sh, which runs restore_command.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}
