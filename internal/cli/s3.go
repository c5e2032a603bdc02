package cli

import (
	"context"
	"os"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/s3"
)

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
