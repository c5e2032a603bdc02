// Package repoopen opens a repository from where it is (a directory or an
// S3 URL) and its password, for the umbra command and the daemon alike.
package repoopen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/local"
	"github.com/umbra-backup/umbra/internal/backend/retry"
	"github.com/umbra-backup/umbra/internal/backend/s3"
	"github.com/umbra-backup/umbra/internal/repository"
)

// DefaultLocation is the repository used when nothing names one: a local
// directory, in Debian's place for backups.
const DefaultLocation = "/var/backups/umbra"

// Backend opens (or, with create, makes) the backend at loc. An S3 one
// retries transient failures for retryFor (0: not at all) and is returned
// a second time as the retrying wrapper, whose count callers report.
func Backend(ctx context.Context, loc string, create bool, retryFor time.Duration, log *slog.Logger) (backend.Backend, *retry.Backend, error) {
	if strings.HasPrefix(loc, "s3:") {
		be, err := openS3(ctx, loc, create)
		if err != nil {
			return nil, nil, err
		}
		budget := retryFor
		if budget <= 0 {
			budget = -1 // none
		}
		r := retry.New(be, retry.Options{Budget: budget, Log: log})
		return r, r, nil
	}
	if create {
		be, err := local.Create(loc)
		return be, nil, err
	}
	be, err := local.Open(loc)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("no repository at %s; create one with umbra init --repo %s, or point --repo / UMBRA_REPO at yours", loc, loc)
	}
	return be, nil, err
}

// openS3 opens (or creates) an S3 repository. Credentials come from the
// environment, never from the URL or the command line, where ps shows them.
func openS3(ctx context.Context, loc string, create bool) (backend.Backend, error) {
	cfg, err := s3.ParseURL(loc)
	if err != nil {
		return nil, err
	}
	cfg.AccessKey = os.Getenv("AWS_ACCESS_KEY_ID")
	cfg.SecretKey = os.Getenv("AWS_SECRET_ACCESS_KEY")
	cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
	if create {
		return s3.Create(ctx, cfg)
	}
	return s3.Open(ctx, cfg)
}

// ReadSecret reads the password in file (a line end after it is not part
// of it); what names where the file was given, for errors.
func ReadSecret(file, what string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("%s %s is empty", what, file)
	}
	return p, nil
}

// Opener opens one repository again and again (a daemon's every run).
type Opener struct {
	Location string
	Password string
	RetryFor time.Duration
	Log      *slog.Logger
}

// Open opens the repository without reading its index (repository.OpenToLock):
// the caller locks it, which loads the index. done closes it.
func (o *Opener) Open(ctx context.Context) (*repository.Repository, func(), error) {
	be, _, err := Backend(ctx, o.Location, false, o.RetryFor, o.Log)
	if err != nil {
		return nil, nil, err
	}
	repo, err := repository.OpenToLock(ctx, be, o.Password)
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	return repo, func() { repo.Close(); be.Close() }, nil
}
