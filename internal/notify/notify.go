// Package notify tells operators what umbra serve's jobs did: a JSON POST
// to a webhook, a mail through the system's sendmail, or a command.
// Delivery is tried once, within a time limit; a failure is logged, never
// fatal to the job.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Event kinds.
const (
	Failure    = "failure"    // nothing stored, a writer left out, or the daemon died in the run
	Warning    = "warning"    // stored, with warnings
	Crash      = "crash"      // a writer's data is only crash-consistent (fallback)
	Unverified = "unverified" // the backup failed its verification
	Stale      = "stale"      // no success for longer than the job's alert_after
)

// Kinds are every event kind, the default of a target's "on".
var Kinds = []string{Failure, Warning, Crash, Unverified, Stale}

// Event is what is sent.
type Event struct {
	Kind    string    `json:"event"`
	Job     string    `json:"job"`
	Host    string    `json:"host"`
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
	Run     any       `json:"run,omitempty"` // the run, as the API shows it
}

// Target is one destination and the kinds it wants.
type Target struct {
	On       []string // empty: every kind
	Webhook  string
	Email    string
	Sendmail string // default /usr/sbin/sendmail
	Command  string
}

// Limit bounds each delivery.
const Limit = 30 * time.Second

// Notifier sends events to its targets.
type Notifier struct {
	Targets []Target
	Log     *slog.Logger
	Client  *http.Client
}

// Send delivers e to each target that wants its kind, each in its own
// goroutine; done is closed when all are delivered or have failed.
func (n *Notifier) Send(e Event) (done <-chan struct{}) {
	if e.Host == "" {
		e.Host, _ = os.Hostname()
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	ch := make(chan struct{})
	var pending []Target
	for _, t := range n.Targets {
		if len(t.On) == 0 || slices.Contains(t.On, e.Kind) {
			pending = append(pending, t)
		}
	}
	go func() {
		defer close(ch)
		errs := make(chan error, len(pending))
		for _, t := range pending {
			go func() { errs <- n.deliver(t, e) }()
		}
		for range pending {
			if err := <-errs; err != nil {
				n.Log.Error("notification not delivered", "event", e.Kind, "job", e.Job, "err", err)
			}
		}
	}()
	return ch
}

func (n *Notifier) deliver(t Target, e Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), Limit)
	defer cancel()
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	switch {
	case t.Webhook != "":
		return n.post(ctx, t.Webhook, body)
	case t.Email != "":
		return sendmail(ctx, t, e)
	case t.Command != "":
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", t.Command)
		cmd.Env = append(os.Environ(), "UMBRA_EVENT="+e.Kind, "UMBRA_JOB="+e.Job, "UMBRA_MESSAGE="+e.Message)
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("command %q: %w: %s", t.Command, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return nil
}

// post sends the event to a webhook; an error names only its host, as the
// URL may hold a token.
func (n *Notifier) post(ctx context.Context, hook string, body []byte) error {
	host := "the webhook"
	if u, err := url.Parse(hook); err == nil {
		host = u.Host
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook on %s: bad URL", host)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "umbra")
	c := n.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("webhook on %s: %w", host, bareError(err))
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook on %s answered %s", host, resp.Status)
	}
	return nil
}

// bareError strips the URL from an HTTP client error.
func bareError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// sendmail mails the event through the system's sendmail (-t: recipients
// from the headers).
func sendmail(ctx context.Context, t Target, e Event) error {
	prog := t.Sendmail
	if prog == "" {
		prog = "/usr/sbin/sendmail"
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "To: %s\nSubject: umbra on %s: %s: job %s\nContent-Type: text/plain; charset=utf-8\n\n", t.Email, e.Host, e.Kind, e.Job)
	fmt.Fprintf(&msg, "%s\n\nJob: %s\nHost: %s\nTime: %s\n", e.Message, e.Job, e.Host, e.Time.Format(time.RFC3339))
	if e.Run != nil {
		b, _ := json.MarshalIndent(e.Run, "", "  ")
		fmt.Fprintf(&msg, "\nThe run:\n%s\n", b)
	}
	cmd := exec.CommandContext(ctx, prog, "-t", "-oi")
	cmd.Stdin = strings.NewReader(msg.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, strings.TrimSpace(string(out)))
	}
	return nil
}
