package job

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/writer"
)

// Runner finds writer name (the only one, if name is empty) in the backup
// ref of repo and builds its writer as a writer.Runner, for umbra run and
// item-level restore: an application-consistent copy of a writer that can
// start its application where the files lie.
func (e *Env) Runner(ctx context.Context, repo *repository.Repository, ref, name string) (repository.ManifestEntry, backup.WriterInfo, writer.Runner, error) {
	var wi backup.WriterInfo
	var only []string
	if name != "" {
		only = []string{name} // "latest" is the newest that holds it
	}
	entry, err := backup.FindBackup(ctx, repo, ref, only)
	if err != nil {
		return entry, wi, nil, err
	}
	info, err := backup.ReadInfo(entry.Manifest)
	if err != nil {
		return entry, wi, nil, err
	}
	if info == nil || len(info.Writers) == 0 {
		return entry, wi, nil, fmt.Errorf("backup %s holds no application (it was made without writers): umbra mount shows its files", entry.ID.Short())
	}
	var names []string
	found := false
	for _, w := range info.Writers {
		names = append(names, w.Name)
		if w.Name == name || (name == "" && len(info.Writers) == 1) {
			wi, found = w, true
		}
	}
	switch {
	case !found && name == "":
		return entry, wi, nil, fmt.Errorf("backup %s holds %s: choose one with --writer", entry.ID.Short(), strings.Join(names, ", "))
	case !found:
		return entry, wi, nil, fmt.Errorf("backup %s holds no writer %s (it holds %s)", entry.ID.Short(), name, strings.Join(names, ", "))
	case wi.Failed:
		return entry, wi, nil, fmt.Errorf("writer %s failed in backup %s, which holds nothing of it", wi.Name, entry.ID.Short())
	case wi.Error != "":
		return entry, wi, nil, fmt.Errorf("writer %s in backup %s is only crash-consistent (%s): it cannot be started from the backup; umbra restore brings it back", wi.Name, entry.ID.Short(), wi.Error)
	}
	wrs, err := e.BackupWriters(info, []string{wi.Name})
	if err != nil {
		return entry, wi, nil, err
	}
	r, ok := wrs[wi.Name].(writer.Runner)
	if !ok {
		return entry, wi, nil, fmt.Errorf("writer %s (%s) cannot be started from a backup: postgres, mariadb, redis and sqlite can; umbra restore --target brings its files back", wi.Name, wi.Spec.Type)
	}
	return entry, wi, r, nil
}

// InstanceDir is where umbra run records the instance of writer name.
func (e *Env) InstanceDir(name string) string {
	return filepath.Join(e.StateDirectory(), "run", fileName(name))
}

// InstanceWork is where the instance of writer name keeps its mounts and
// writes unless told otherwise: on disk (not a tmpfs /tmp), reachable by
// the application's own user.
func InstanceWork(name string) string {
	return filepath.Join(DefaultScratch, "umbra-run-"+fileName(name))
}

// InstanceSockets is where the instance of writer name puts its socket
// unless told otherwise.
func InstanceSockets(name string) string {
	return filepath.Join("/run/umbra", fileName(name))
}

func fileName(name string) string {
	return strings.NewReplacer(":", "_", "/", "_").Replace(name)
}
