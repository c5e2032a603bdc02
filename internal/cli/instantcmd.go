package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/instant"
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/process"
)

// stopLimit bounds how long umbra run --stop waits for the instance to
// shut down and take its mounts away.
const stopLimit = 3 * time.Minute

func (a *app) runCommand() *cobra.Command {
	var f repoFlags
	var name, listen, writes, sockets, migrate string
	var port, cacheMiB int
	var stop, list bool
	cmd := &cobra.Command{
		Use:   "run [ID|latest] --writer NAME [--port N] [--migrate DIR]",
		Short: "Start a database straight from a backup (instant recovery)",
		Long: `Start the writer's application directly on the backup, without restoring it
first: the backup is mounted as a writable view (FUSE; each block the
application writes goes to a file in --datadir, the rest is read from the
repository, which is never written), and the application recovers and
serves. The time to the first answered query is the application's
recovery, not the size of its data.

  postgres  recovers from the backup's WAL and serves on --port at
            --listen and on a socket in --socket-dir
  mariadb   InnoDB recovers (with the backup's binary logs); serves on
            --port at --listen and on a socket in --socket-dir
  redis     loads the backup's RDB or AOF; serves on --port at --listen,
            with the writer's password
  sqlite    no server: the backup's database file, writable, by its path

Like a verification's copy it archives nothing, follows no primary and
starts no replica; unlike it, clients reach it, with the backup's own users
and passwords. It serves until Ctrl-C, SIGTERM or umbra run --stop; then
it is shut down and its writes are thrown away.

--migrate DIR keeps it: while the application serves, its data is copied
to DIR (absent or empty), then it is stopped cleanly, what changed
meanwhile is copied, and it is started on DIR on the same port. umbra
reports how long it was stopped and exits; the application runs on.
(PostgreSQL with tablespaces, and SQLite, are refused: restore those.)

With --json each event is one line: {"event":"ready",…} with connect,
socket, data_dir and ready_ms; then "stopped" or "migrated" (stop_ms,
shutdown_ms, sync_ms, start_ms). docs/instant.md has the details.

umbra run --list shows what runs; umbra run --stop --writer NAME ends one.
An instance whose umbra was killed is cleaned up by the next umbra run or
--stop of the same writer.`,
		Example: `  umbra run latest --writer postgres:main --port 5433
  psql -h 127.0.0.1 -p 5433 -U app app
  umbra run --stop --writer postgres:main

  umbra run 3f9a2c1b --writer postgres:main --port 5432 --migrate /var/lib/postgresql/15/restored`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			env := a.env(cfg)
			switch {
			case list:
				return a.listInstances(env)
			case stop:
				return a.stopInstance(cmd.Context(), env, name)
			}
			ref := "latest"
			if len(args) == 1 {
				ref = args[0]
			}
			begun := time.Now()
			repo, ctx, done, err := a.openLocked(cmd.Context(), &f, false, "run")
			if err != nil {
				return err
			}
			defer done()
			entry, wi, runner, err := env.Runner(ctx, repo, ref, name)
			if err != nil {
				return usage(err)
			}
			if port == 0 {
				if port, err = freePort(listen); err != nil {
					return err
				}
			}
			if writes == "" {
				writes = job.InstanceWork(wi.Name)
			}
			if sockets == "" {
				sockets = job.InstanceSockets(wi.Name)
			}
			in, err := instant.Start(ctx, instant.Options{Repo: repo, Entry: entry, Info: wi, Writer: runner, Dir: env.InstanceDir(wi.Name),
				Work: writes, SocketDir: sockets, Port: port, Pause: testPause, Listen: listen, CacheBytes: int64(cacheMiB) << 20, Begun: begun})
			if err != nil {
				return lockLost(ctx, err)
			}
			a.sayReady(in.State, migrate)
			if migrate != "" {
				return a.migrate(ctx, in, migrate)
			}
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopLimit)
			defer cancel()
			if err := in.Stop(sctx); err != nil {
				return fmt.Errorf("stop %s: %w", wi.Name, err)
			}
			a.event("stopped", map[string]any{"writer": wi.Name}, fmt.Sprintf("Stopped %s; its writes are thrown away.", wi.Name))
			if cmd.Context().Err() != nil {
				return nil // Ctrl-C, SIGTERM, umbra run --stop: how it is meant to end
			}
			return lockLost(ctx, ctx.Err())
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVarP(&name, "writer", "w", "", "the writer instance to start, such as postgres:main (needed when the backup holds several)")
	cmd.Flags().IntVar(&port, "port", 0, "TCP port to serve on (default: a free one, printed)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1", "address(es) to listen on with --port; \"\" for the socket alone")
	cmd.Flags().StringVar(&writes, "datadir", "", "directory for the mounts and the application's writes, on a local file system (default /var/tmp/umbra-run-NAME)")
	cmd.Flags().StringVar(&sockets, "socket-dir", "", "directory for the application's socket (default /run/umbra/NAME)")
	cmd.Flags().StringVar(&migrate, "migrate", "", "copy the data to this directory while serving, then switch the application onto it")
	cmd.Flags().IntVar(&cacheMiB, "cache", 256, "MiB of the backup's contents kept in memory")
	cmd.Flags().BoolVar(&stop, "stop", false, "end the instance of --writer (or the only one) and throw its writes away")
	cmd.Flags().BoolVar(&list, "list", false, "list the instances running from backups")
	return cmd
}

// event prints one line: JSON with --json (one object a line, as events
// come), else text.
func (a *app) event(kind string, fields map[string]any, text string) {
	if a.json {
		fields["event"] = kind
		b, _ := json.Marshal(fields)
		fmt.Fprintln(a.stdout, string(b))
		return
	}
	fmt.Fprintln(a.stdout, text)
}

func (a *app) sayReady(st instant.State, migrate string) {
	ready := time.Duration(st.ReadyMS * float64(time.Millisecond)).Round(10 * time.Millisecond)
	fields := map[string]any{"writer": st.Writer, "backup": st.Backup, "port": st.Port, "connect": st.Connect,
		"socket": st.Socket, "data_dir": st.DataDir, "writes": st.Upper, "ready_ms": st.ReadyMS, "pid": st.PID}
	text := fmt.Sprintf("%s of backup %s serves on %s (socket %s), %v after the start.\n", st.Writer, st.Backup[:8], st.Connect, st.Socket, ready)
	if migrate == "" {
		text += fmt.Sprintf("Its writes go to %s and are thrown away when it stops (Ctrl-C, or umbra run --stop --writer %s); --migrate DIR keeps them.", st.Upper, st.Writer)
	} else {
		text += fmt.Sprintf("Copying its data to %s while it serves.", migrate)
	}
	a.event("ready", fields, text)
}

func (a *app) migrate(ctx context.Context, in *instant.Instance, dst string) error {
	last := time.Now()
	m, err := in.Migrate(ctx, dst, func(files int, bytes int64) {
		if time.Since(last) > 5*time.Second && !a.json {
			last = time.Now()
			fmt.Fprintf(a.stderr, "umbra: copied %d files, %s\n", files, size(bytes))
		}
	})
	if err != nil {
		// It still serves from the backup (or could not be brought
		// back): stop it as a plain run would, and say so.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopLimit)
		defer cancel()
		if serr := in.Stop(sctx); serr != nil {
			return fmt.Errorf("%w; then stopping it: %v", err, serr)
		}
		return fmt.Errorf("%w; it was stopped and its writes thrown away", err)
	}
	stopped := time.Duration(m.StopMS * float64(time.Millisecond)).Round(time.Millisecond)
	a.event("migrated", map[string]any{"writer": in.State.Writer, "data_dir": m.DataDir, "connect": m.Connect, "files": m.Files, "bytes": m.Copied,
		"stop_ms": m.StopMS, "shutdown_ms": m.ShutdownMS, "sync_ms": m.SyncMS, "synced_bytes": m.Synced, "start_ms": m.StartMS},
		fmt.Sprintf("%s runs on %s now (%s): %d files, %s copied while it served; it was stopped for %v (shutdown %v, copy of %s changed meanwhile %v, start %v).",
			in.State.Writer, m.DataDir, m.Connect, m.Files, size(m.Copied), stopped,
			msDuration(m.ShutdownMS), size(m.Synced), msDuration(m.SyncMS), msDuration(m.StartMS)))
	return nil
}

func msDuration(v float64) time.Duration {
	return time.Duration(v * float64(time.Millisecond)).Round(time.Millisecond)
}

// instanceDirs lists the instances registered under the state directory.
func instanceDirs(env *job.Env) []string {
	matches, _ := filepath.Glob(filepath.Join(env.StateDirectory(), "run", "*", "instance.json"))
	var dirs []string
	for _, m := range matches {
		dirs = append(dirs, filepath.Dir(m))
	}
	return dirs
}

func (a *app) listInstances(env *job.Env) error {
	var states []instant.State
	for _, d := range instanceDirs(env) {
		if st, alive := instant.Running(d); alive {
			states = append(states, st)
		}
	}
	if a.json {
		if states == nil {
			states = []instant.State{}
		}
		return a.printJSON(states)
	}
	if len(states) == 0 {
		fmt.Fprintln(a.stdout, "Nothing runs from a backup.")
		return nil
	}
	for _, st := range states {
		fmt.Fprintf(a.stdout, "%s of backup %s on %s since %s (umbra pid %d); writes in %s\n", st.Writer, st.Backup[:8], st.Connect, st.Started.Local().Format(time.DateTime), st.PID, st.Upper)
	}
	return nil
}

// stopInstance ends the instance of writer name (the only one if empty):
// SIGTERM to its umbra, which shuts it down, then a wait for that umbra to
// exit; an instance whose umbra is gone is cleaned up here.
func (a *app) stopInstance(ctx context.Context, env *job.Env, name string) error {
	dir := ""
	if name != "" {
		dir = env.InstanceDir(name)
	} else {
		dirs := instanceDirs(env)
		switch len(dirs) {
		case 0:
			return usagef("nothing runs from a backup")
		case 1:
			dir = dirs[0]
		default:
			return usagef("%d instances run from backups: choose one with --writer (umbra run --list)", len(dirs))
		}
	}
	st, alive := instant.Running(dir)
	if !alive {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return usagef("no instance of %s runs from a backup (umbra run --list)", name)
		}
		if err := instant.Clean(dir); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "Cleaned up what a killed umbra run left in %s.\n", dir)
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop umbra run (pid %d): %w", st.PID, err)
	}
	deadline := time.Now().Add(stopLimit)
	for process.Alive(st.PID) {
		if time.Now().After(deadline) {
			return fmt.Errorf("umbra run (pid %d) did not end within %v; kill -9 it, then umbra run --stop --writer %s cleans up", st.PID, stopLimit, st.Writer)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !a.json {
		fmt.Fprintf(a.stdout, "Stopped %s (of backup %s).\n", st.Writer, st.Backup[:8])
	}
	return nil
}

// freePort asks the kernel for a TCP port free on listen.
func freePort(listen string) (int, error) {
	host := listen
	if host == "" {
		host = "127.0.0.1"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w; give --port", host, err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return strconv.Atoi(p)
}

// restoreTable is umbra restore --table: one table from backup ref of
// repo (locked by the caller) of the writer in only into the live
// application.
func (a *app) restoreTable(ctx context.Context, repo *repository.Repository, ref string, only []string, t writer.TableCopy) error {
	if len(only) != 1 {
		return usagef("--table restores from one writer: give one --writer, such as --writer postgres:main")
	}
	cfg, err := a.config()
	if err != nil {
		return err
	}
	env := a.env(cfg)
	begun := time.Now()
	entry, wi, runner, err := env.Runner(ctx, repo, ref, only[0])
	if err != nil {
		return usage(err)
	}
	res, err := instant.RestoreTable(ctx, instant.Options{Repo: repo, Entry: entry, Info: wi, Writer: runner,
		Dir: env.InstanceDir(wi.Name + "-table"), Pause: testPause}, job.DefaultScratch, t)
	if errors.Is(err, writer.ErrTableExists) {
		return &usageError{err}
	}
	if err != nil {
		return lockLost(ctx, err)
	}
	if a.json {
		return a.printJSON(map[string]any{"backup": entry.ID, "writer": wi.Name, "database": res.Database, "table": res.Table,
			"rows": res.Rows, "replaced": res.Replaced, "duration_ms": ms(time.Since(begun))})
	}
	where := ""
	if res.Database != "" {
		where = " of database " + res.Database
	}
	verb := "Restored"
	if res.Replaced {
		verb = "Replaced"
	}
	fmt.Fprintf(a.stdout, "%s table %s%s from backup %s: %s, in %s.\n", verb, res.Table, where, entry.ID.Short(), count(int(res.Rows), "row"), time.Since(begun).Round(time.Millisecond))
	return nil
}
