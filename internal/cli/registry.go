package cli

import (
	"github.com/umbra-backup/umbra/internal/job"
	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/provider/btrfs"
	"github.com/umbra-backup/umbra/internal/provider/live"
	"github.com/umbra-backup/umbra/internal/provider/reflink"
	"github.com/umbra-backup/umbra/internal/writer"
	"github.com/umbra-backup/umbra/internal/writer/mariadb"
	"github.com/umbra-backup/umbra/internal/writer/postgres"
	"github.com/umbra-backup/umbra/internal/writer/redis"
	"github.com/umbra-backup/umbra/internal/writer/script"
	"github.com/umbra-backup/umbra/internal/writer/sqlite"
)

// WriterFactory builds a writer instance from its options.
type WriterFactory = job.WriterFactory

// Registry is what umbra runs with: the writer types and the providers
// (job.Registry, which the daemon runs jobs with too).
type Registry = job.Registry

// Standard is the registry of the umbra command: every writer and provider
// in this repository.
func Standard() Registry {
	return Registry{
		Writers: map[string]WriterFactory{
			"sqlite":   func(name string, opts map[string]string) (writer.Writer, error) { return sqlite.New(name, opts) },
			"script":   func(name string, opts map[string]string) (writer.Writer, error) { return script.New(name, opts) },
			"postgres": func(name string, opts map[string]string) (writer.Writer, error) { return postgres.New(name, opts) },
			"redis":    func(name string, opts map[string]string) (writer.Writer, error) { return redis.New(name, opts) },
			"mariadb":  func(name string, opts map[string]string) (writer.Writer, error) { return mariadb.New(name, opts) },
		},
		Providers: func() []provider.Provider { return []provider.Provider{btrfs.New(), reflink.New(), live.New()} },
	}
}
