package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/mount"
)

func (a *app) mountCommand() *cobra.Command {
	var f repoFlags
	var unmount bool
	var cacheMiB int
	cmd := &cobra.Command{
		Use:   "mount MOUNTPOINT",
		Short: "Browse every backup as a read-only file system",
		Long: `Mount the repository read-only at MOUNTPOINT (FUSE) and serve it until
Ctrl-C, SIGTERM or umbra mount --unmount MOUNTPOINT:

  MOUNTPOINT/ids/ID/…              each backup by its short id
  MOUNTPOINT/hosts/HOST/TIME       each host's backups by time (links)
  MOUNTPOINT/latest                the newest backup (a link)

Files keep their modes, owners, times, links and extended attributes; their
contents are read as they are read, through a cache of --cache MiB, the
chunks ahead of a sequential reader loaded together. Nothing is written.
A shared lock is held while mounted: a prune elsewhere deletes nothing a
reader may need. A mount left by an umbra that was killed is cleaned up by
the next umbra mount at the same place.`,
		Example: `  mkdir -p /mnt/umbra && umbra mount /mnt/umbra &
  ls /mnt/umbra/hosts/db1/
  cp /mnt/umbra/latest/etc/nginx/nginx.conf /tmp/
  umbra mount --unmount /mnt/umbra`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if unmount {
				if err := mount.Unmount(args[0]); err != nil {
					return err
				}
				if !a.json {
					fmt.Fprintf(a.stdout, "Unmounted %s.\n", args[0])
				}
				return nil
			}
			repo, ctx, done, err := a.openLocked(cmd.Context(), &f, false, "mount")
			if err != nil {
				return err
			}
			defer done()
			ready := func() {
				if a.json {
					_ = a.printJSON(map[string]any{"mountpoint": args[0], "repository": repo.Backend().Location()})
					return
				}
				fmt.Fprintf(a.stdout, "Mounted %s at %s; Ctrl-C or umbra mount --unmount %s ends it.\n", repo.Backend().Location(), args[0], args[0])
			}
			err = mount.Serve(ctx, repo, args[0], mount.Options{CacheBytes: int64(cacheMiB) << 20}, ready)
			if err == nil && cmd.Context().Err() != nil {
				// Ctrl-C or SIGTERM is how a mount is meant to end.
				return nil
			}
			if err == nil && context.Cause(ctx) != nil && ctx.Err() != nil {
				return lockLost(ctx, ctx.Err())
			}
			return err
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&unmount, "unmount", false, "end the umbra mount at MOUNTPOINT")
	cmd.Flags().IntVar(&cacheMiB, "cache", 256, "MiB of file contents kept in memory")
	return cmd
}
