package cli

import (
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

// WriterFactory builds the writer instance name ("postgres:main") from its
// options.
type WriterFactory func(name string, opts map[string]string) (writer.Writer, error)

// Registry is what umbra runs with: the writer types by name, and the
// providers in the order they are preferred. The commands build nothing
// else themselves, so a daemon or a test can hand down its own.
type Registry struct {
	Writers   map[string]WriterFactory
	Providers func() []provider.Provider
}

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
