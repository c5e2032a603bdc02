package instant

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/umbra-backup/umbra/internal/writer"
)

// privatePort names the private copy's socket (PostgreSQL's socket file
// carries the port); nothing listens on TCP.
const privatePort = 5432

// RestoreTable restores one table from the backup into the live
// application (item-level restore): the writer's application is started
// from the backup on a private socket only (o.Listen and o.Port are
// ignored; o.Work and o.SocketDir are made under scratch), the writer
// copies the table across with its own tools, and the copy is thrown away.
func RestoreTable(ctx context.Context, o Options, scratch string, t writer.TableCopy) (writer.TableCopied, error) {
	tc, ok := o.Writer.(writer.TableCopier)
	if !ok {
		return writer.TableCopied{}, fmt.Errorf("writer %s cannot restore a table: postgres, mariadb and sqlite can", o.Info.Name)
	}
	box, err := os.MkdirTemp(scratch, "umbra-table-")
	if err != nil {
		return writer.TableCopied{}, err
	}
	defer os.RemoveAll(box)
	if err := os.Chmod(box, 0o755); err != nil {
		return writer.TableCopied{}, err
	}
	o.Work, o.SocketDir = filepath.Join(box, "work"), filepath.Join(box, "sock")
	o.Listen, o.Port = "", privatePort
	in, err := Start(ctx, o)
	if err != nil {
		return writer.TableCopied{}, err
	}
	res, err := tc.CopyTable(ctx, in.app, t)
	if serr := in.Stop(context.WithoutCancel(ctx)); err == nil && serr != nil {
		err = fmt.Errorf("the table was restored, but stopping the backup's copy failed: %w", serr)
	}
	return res, err
}
