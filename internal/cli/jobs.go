package cli

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/daemon"
)

// daemonClient talks to a running umbra serve on its Unix socket.
type daemonClient struct {
	socket string
	http   *http.Client
}

func (a *app) daemonClient(socket string) (*daemonClient, error) {
	if socket == "" {
		cfg, err := a.config()
		if err != nil {
			return nil, err
		}
		socket = cmp.Or(cfg.Serve.Socket, daemon.DefaultSocket)
	}
	return &daemonClient{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}}, nil
}

// call sends a request and decodes a 2xx answer into v; other answers
// become the API's error.
func (c *daemonClient) call(ctx context.Context, method, path string, body, v any) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://umbra"+daemon.APIPrefix+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("no umbra serve answers on %s (%v); start it (systemctl start umbra) or give --socket", c.socket, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("umbra serve: %s", cmp.Or(e.Error, resp.Status))
	}
	if v != nil {
		return json.Unmarshal(b, v)
	}
	return nil
}

// followIdle is how long follow waits for an event: the daemon sends one
// every half second while a run runs.
const followIdle = 30 * time.Second

// follow reads a run's events until its end and returns the run.
func (c *daemonClient) follow(ctx context.Context, id string, progress func(daemon.Progress)) (daemon.Run, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(followIdle, func() {
		cancel(fmt.Errorf("umbra serve sent nothing about run %s for %s; umbra jobs shows whether it still runs", id, followIdle))
	})
	defer idle.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://umbra"+daemon.APIPrefix+"/runs/"+id+"/events", nil)
	if err != nil {
		return daemon.Run{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return daemon.Run{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	event := ""
	for sc.Scan() {
		idle.Reset(followIdle)
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			var p daemon.Progress
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &p); err != nil {
				return daemon.Run{}, err
			}
			if event == "end" {
				return p.Run, nil
			}
			progress(p)
		}
	}
	if err := sc.Err(); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return daemon.Run{}, cause
		}
		return daemon.Run{}, err
	}
	return daemon.Run{}, fmt.Errorf("umbra serve closed the events of run %s before its end", id)
}

// runExit is the command line's exit status for a run's status.
func runExit(r daemon.Run) error {
	switch r.Status {
	case daemon.StatusOK:
		return nil
	case daemon.StatusWarning:
		return &warningsError{max(len(r.Warnings), 1)}
	case daemon.StatusPartial:
		return &exitError{code: exitPartial, err: fmt.Errorf("run %s: %s", r.ID, r.Error)}
	case daemon.StatusUnverified:
		return &exitError{code: exitUnverified, err: fmt.Errorf("run %s: %s", r.ID, r.Error)}
	}
	return fmt.Errorf("run %s %s: %s", r.ID, r.Status, r.Error)
}

func (a *app) jobsCommand() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List the jobs of a running umbra serve, or run one",
		Long: `Ask the umbra serve running on this machine (its Unix socket: --socket,
[serve] socket, or ` + daemon.DefaultSocket + `) for its jobs: schedule, next
run, last run and last success.`,
		Example: `  umbra jobs
  umbra jobs run nightly --wait
  umbra --json jobs | jq '.[] | select(.last_run.status != "ok")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.daemonClient(socket)
			if err != nil {
				return err
			}
			var jobs []daemon.JobView
			if err := c.call(cmd.Context(), http.MethodGet, "/jobs", nil, &jobs); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(jobs)
			}
			if len(jobs) == 0 {
				fmt.Fprintln(a.stdout, "umbra serve has no jobs: add [[job]] sections to the configuration and reload it.")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tSCHEDULE\tNEXT RUN\tLAST RUN\tLAST SUCCESS")
			when := func(t time.Time) string {
				if t.IsZero() {
					return "-"
				}
				return t.Local().Format("2006-01-02 15:04:05")
			}
			for _, j := range jobs {
				last := "-"
				switch {
				case j.Running != nil:
					last = "running since " + when(j.Running.Started)
				case j.LastRun != nil:
					last = j.LastRun.Status + " " + when(j.LastRun.Ended)
				}
				success := "never"
				if j.LastSuccess != nil {
					success = when(j.LastSuccess.Ended)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Name, cmp.Or(j.Schedule, "on request"), when(j.NextRun), last, success)
			}
			return tw.Flush()
		},
	}
	cmd.PersistentFlags().StringVar(&socket, "socket", "", "umbra serve's Unix socket (default [serve] socket, or "+daemon.DefaultSocket+")")
	var wait bool
	run := &cobra.Command{
		Use:   "run JOB",
		Short: "Have umbra serve run a job now",
		Long: `Ask umbra serve to run JOB now, beside its schedule. With --wait, follow the
run to its end and exit as umbra backup would (0 ok, 3 warnings, 4 partial,
5 verification failed, 1 failed).`,
		Example: "  umbra jobs run nightly --wait",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.daemonClient(socket)
			if err != nil {
				return err
			}
			var r daemon.Run
			if err := c.call(cmd.Context(), http.MethodPost, "/jobs/"+args[0]+"/run", nil, &r); err != nil {
				return err
			}
			if r.ID == "" {
				fmt.Fprintf(a.stderr, "umbra: job %s waits for its writers or a free slot; umbra jobs shows when it runs\n", args[0])
				return nil
			}
			if !wait {
				if a.json {
					return a.printJSON(r)
				}
				fmt.Fprintf(a.stdout, "Run %s of job %s started.\n", r.ID, r.Job)
				return nil
			}
			var last atomic.Pointer[daemon.Progress]
			stop := a.showProgress(func(time.Duration) string {
				if p := last.Load(); p != nil {
					return fmt.Sprintf("%d files, %s read, %s added", p.Files, size(p.BytesRead), size(p.BytesAdded))
				}
				return "starting"
			})
			final, err := c.follow(cmd.Context(), r.ID, func(p daemon.Progress) { last.Store(&p) })
			stop()
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(final); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "Run %s of job %s: %s in %s", final.ID, final.Job, final.Status, final.Duration().Round(time.Millisecond))
				if final.Backup != "" {
					fmt.Fprintf(a.stdout, ", backup %.8s", final.Backup)
				}
				fmt.Fprintln(a.stdout, ".")
			}
			return runExit(final)
		},
	}
	run.Flags().BoolVar(&wait, "wait", false, "follow the run to its end; exit with its status")
	cmd.AddCommand(run)
	return cmd
}
