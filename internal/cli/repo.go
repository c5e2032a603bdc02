package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/local"
	"github.com/umbra-backup/umbra/internal/repoopen"
	"github.com/umbra-backup/umbra/internal/repository"
)

// defaultRepo is the repository used when neither --repo nor UMBRA_REPO
// names one: a local directory, in Debian's place for backups.
const defaultRepo = repoopen.DefaultLocation

// repoFlags are the flags of every command that opens a repository.
type repoFlags struct {
	repo string
}

func (f *repoFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.repo, "repo", "r", "", "repository: a directory, or s3:https://host/bucket/prefix with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set (default $UMBRA_REPO, the configuration's [repository] location, or "+defaultRepo+")")
}

// location is the repository: --repo, UMBRA_REPO, the configuration
// file's [repository] location, or defaultRepo.
func (a *app) location(f *repoFlags) (string, error) {
	switch {
	case f.repo != "":
		return f.repo, nil
	case os.Getenv("UMBRA_REPO") != "":
		return os.Getenv("UMBRA_REPO"), nil
	}
	cfg, err := a.config()
	if err != nil {
		return "", err
	}
	return cmp.Or(cfg.Repository.Location, defaultRepo), nil
}

// passwordFile is the file the repository's password is read from:
// UMBRA_PASSWORD_FILE, else the configuration file's [repository]
// password_file; "" if neither (or UMBRA_PASSWORD) is set.
func (a *app) passwordFile() (string, error) {
	if os.Getenv("UMBRA_PASSWORD") != "" {
		return "", nil
	}
	if file := os.Getenv("UMBRA_PASSWORD_FILE"); file != "" {
		return file, nil
	}
	cfg, err := a.config()
	if err != nil {
		return "", err
	}
	return cfg.Repository.PasswordFile, nil
}

// openBackend opens (or, for init, creates) the backend at the location;
// an S3 one retries transient failures for --retry-for.
func (a *app) openBackend(ctx context.Context, f *repoFlags, create bool) (backend.Backend, error) {
	loc, err := a.location(f)
	if err != nil {
		return nil, err
	}
	be, retrying, err := repoopen.Backend(ctx, loc, create, a.retryFor, a.logger())
	if retrying != nil {
		a.retrying = retrying
	}
	return be, err
}

// password reads the repository password from UMBRA_PASSWORD,
// UMBRA_PASSWORD_FILE, the configuration's password_file or, on a
// terminal, a prompt.
func (a *app) password(prompt string, confirm bool) (string, error) {
	if os.Getenv("UMBRA_PASSWORD") == "" && os.Getenv("UMBRA_PASSWORD_FILE") == "" {
		file, err := a.passwordFile()
		if err != nil {
			return "", err
		}
		if file != "" {
			return readSecret(file, "[repository] password_file")
		}
	}
	return secret("UMBRA_PASSWORD", prompt, confirm)
}

// newPassword reads a password to add from UMBRA_NEW_PASSWORD,
// UMBRA_NEW_PASSWORD_FILE or a prompt.
func newPassword() (string, error) {
	return secret("UMBRA_NEW_PASSWORD", "New password: ", true)
}

func readSecret(file, what string) (string, error) { return repoopen.ReadSecret(file, what) }

// secret reads a password from the variable env, the file named by
// env_FILE, or the terminal.
func secret(env, prompt string, confirm bool) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	if file := os.Getenv(env + "_FILE"); file != "" {
		return readSecret(file, env+"_FILE")
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		return "", fmt.Errorf("no password: set %s or %s_FILE, or run on a terminal", env, env)
	}
	defer tty.Close()
	read := func(prompt string) (string, error) {
		fmt.Fprint(tty, prompt)
		b, err := term.ReadPassword(int(tty.Fd()))
		fmt.Fprintln(tty)
		return string(b), err
	}
	p, err := read(prompt)
	if err != nil {
		return "", err
	}
	if confirm {
		again, err := read("Enter it again: ")
		if err != nil {
			return "", err
		}
		if again != p {
			return "", errors.New("the passwords differ")
		}
	}
	if p == "" {
		return "", errors.New("empty password")
	}
	return p, nil
}

// openRepo opens the repository the flags name.
func (a *app) openRepo(ctx context.Context, f *repoFlags) (*repository.Repository, func(), error) {
	return a.openRepoWith(ctx, f, repository.Open)
}

// openLocked opens the repository and takes a lock before it reads the
// index: shared for backups and restores (which run beside each other and
// beside a prune), exclusive for check. The work runs under the returned
// context, which ends if the lock cannot be kept; done unlocks and closes.
func (a *app) openLocked(ctx context.Context, f *repoFlags, exclusive bool, purpose string) (*repository.Repository, context.Context, func(), error) {
	repo, closeRepo, err := a.openRepoWith(ctx, f, repository.OpenToLock)
	if err != nil {
		return nil, nil, nil, err
	}
	lock, err := repo.Lock(ctx, exclusive, purpose)
	if err != nil && purpose == "restore" && readOnly(err) {
		// A disaster is no time to refuse a restore from a read-only
		// disk or key: read without a lock, and say what that risks.
		fmt.Fprintf(a.stderr, "umbra: cannot write a lock into the repository (%v): restoring without one; a prune running now on another host could remove data this restore reads\n", err)
		if err := repo.LoadIndex(ctx); err != nil {
			closeRepo()
			return nil, nil, nil, err
		}
		return repo, ctx, closeRepo, nil
	}
	if err != nil {
		closeRepo()
		return nil, nil, nil, err
	}
	return repo, lock.Context(), func() { lock.Unlock(ctx); closeRepo() }, nil
}

// readOnly reports whether err says the repository cannot be written.
func readOnly(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)
}

// lockLost puts the lost lock in err's place if that is what stopped the
// work under lctx.
func lockLost(lctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(lctx), repository.ErrLockLost) {
		return context.Cause(lctx)
	}
	return err
}

// openRepoWith opens the repository with open (repository.Open, or
// OpenWAL for the WAL archive alone).
func (a *app) openRepoWith(ctx context.Context, f *repoFlags, open func(context.Context, backend.Backend, string) (*repository.Repository, error)) (*repository.Repository, func(), error) {
	be, err := a.openBackend(ctx, f, false)
	if err != nil {
		return nil, nil, err
	}
	pw, err := a.password("Password for "+be.Location()+": ", false)
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	repo, err := open(ctx, be, pw)
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	return repo, func() { repo.Close(); be.Close() }, nil
}

// openBackup opens the repository and finds the backup ref names.
func (a *app) openBackup(ctx context.Context, f *repoFlags, ref string) (*repository.Repository, repository.ManifestEntry, func(), error) {
	repo, done, err := a.openRepo(ctx, f)
	if err != nil {
		return nil, repository.ManifestEntry{}, nil, err
	}
	e, err := repo.FindManifest(ctx, ref)
	if err != nil {
		done()
		return nil, e, nil, err
	}
	return repo, e, done, nil
}

func (a *app) initCommand() *cobra.Command {
	var f repoFlags
	var blockSize int
	var group, compression string
	cmd := &cobra.Command{
		Use:   "init [--repo LOCATION]",
		Short: "Create a repository",
		Long: `Create an encrypted, deduplicating repository in an empty directory (made if
missing) or S3 bucket. The password comes from UMBRA_PASSWORD,
UMBRA_PASSWORD_FILE or a prompt. Keep it safe: without a password that opens
one of the repository's keys, nothing in it can be read (umbra key add makes
a second one).

A local repository is its owner's alone (files 0600). --group GROUP lets that
group read it and archive WAL into it: PostgreSQL runs archive_command (umbra
wal-push) as postgres, so --group postgres is what point-in-time restore
needs. Anyone in the group can then read every backup with the password.

--compression says how new data is compressed, for the repository's life:
  auto  zstd for everything (the default): database files take about a
        third less room than with fast; their first backup takes about
        twice the CPU (later ones compress only changed blocks)
  fast  LZ4 for database blocks, zstd for other files: the least CPU, the
        most room (what repositories made before this setting do)
  max   zstd's stronger level: a few per cent smaller than auto, several
        times its CPU
Any umbra reads every setting's data: each piece says how it is stored.`,
		Example: `  umbra init --repo /srv/backup
  UMBRA_REPO=s3:https://minio.example:9000/backups umbra init
  UMBRA_PASSWORD_FILE=/etc/umbra/umbra.pass umbra init --group postgres
  umbra init --repo /srv/backup --compression fast   # a busy host with room to spare`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gid := -1
			if group != "" {
				loc, err := a.location(&f)
				if err != nil {
					return err
				}
				if strings.HasPrefix(loc, "s3:") {
					return usagef("--group is for a repository in a local directory; an S3 bucket's access is its credentials'")
				}
				g, err := user.LookupGroup(group)
				if err != nil {
					return usagef("--group %s: %v", group, err)
				}
				if gid, err = strconv.Atoi(g.Gid); err != nil {
					return fmt.Errorf("--group %s: gid %q: %w", group, g.Gid, err)
				}
			}
			cfg := repository.DefaultConfig()
			if blockSize != 0 {
				cfg.Chunker.BlockSize = blockSize
			}
			if !slices.Contains(repository.Compressions, compression) {
				return usagef("--compression %s: want one of %s", compression, strings.Join(repository.Compressions, ", "))
			}
			cfg.Compression = compression
			be, err := a.openBackend(cmd.Context(), &f, true)
			if err != nil {
				return err
			}
			defer be.Close()
			pw, err := a.password("Password for the new repository: ", true)
			if err != nil {
				return err
			}
			repo, err := repository.Init(cmd.Context(), be, pw, repository.Options{Config: cfg})
			if err != nil {
				return err
			}
			defer repo.Close()
			if gid >= 0 {
				if err := local.Share(be.Location(), gid, backend.TypeWAL); err != nil {
					return err
				}
			}
			if a.json {
				return a.printJSON(map[string]any{"id": repo.Config().ID, "location": be.Location(), "config": repo.Config()})
			}
			fmt.Fprintf(a.stdout, "Created repository %s at %s.\nKeep the password safe: without it nothing in the repository can be read.\n", repo.Config().ID[:8], be.Location())
			return nil
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().IntVar(&blockSize, "block-size", 0, "fixed chunk size for database and image files, a power of two (default 16384)")
	cmd.Flags().StringVar(&group, "group", "", "let this group read the repository and write its wal/ (postgres, for wal-push)")
	cmd.Flags().StringVar(&compression, "compression", repository.CompressionAuto, "how new data is compressed: "+strings.Join(repository.Compressions, ", "))
	return cmd
}

func (a *app) keyCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Add, list and remove the repository's passwords",
		Long: `Each key is the repository's master key sealed with one password. Any key
opens the repository; umbra key add asks for the new password in
UMBRA_NEW_PASSWORD, UMBRA_NEW_PASSWORD_FILE or at a prompt.`,
	}
	f.register(cmd.PersistentFlags())
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a password",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, done, err := a.openRepo(cmd.Context(), &f)
			if err != nil {
				return err
			}
			defer done()
			pw, err := newPassword()
			if err != nil {
				return err
			}
			id, err := repo.AddKey(cmd.Context(), pw)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]string{"id": id})
			}
			fmt.Fprintf(a.stdout, "Added key %s.\n", id[:8])
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, done, err := a.openRepo(cmd.Context(), &f)
			if err != nil {
				return err
			}
			defer done()
			keys, err := repo.Keys(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(keys)
			}
			for _, k := range keys {
				cur := " "
				if k.Current {
					cur = "*"
				}
				fmt.Fprintf(a.stdout, "%s %s  %s  %s@%s\n", cur, k.ID[:8], k.Created.Local().Format("2006-01-02 15:04:05"), k.User, k.Host)
			}
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key (not the one in use)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, done, err := a.openRepo(cmd.Context(), &f)
			if err != nil {
				return err
			}
			defer done()
			if err := repo.RemoveKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]string{"removed": args[0]})
			}
			fmt.Fprintf(a.stdout, "Removed key %s.\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}
