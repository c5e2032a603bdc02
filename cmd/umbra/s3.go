package main

import (
	"context"
	"errors"

	"github.com/umbra-backup/umbra/internal/backend"
)

// openS3 opens an S3 repository location.
func openS3(ctx context.Context, loc string, create bool) (backend.Backend, error) {
	return nil, errors.New("s3 repositories are not wired in yet; use a local directory")
}
