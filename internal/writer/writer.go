// Package writer defines the contract between umbra's coordinator and the
// adapters ("writers") that bring an application to a consistent state.
//
// A Writer implements only Name and Identify; every other phase is an
// optional interface found by type assertion, so a writer implements just
// the phases it needs. The coordinator calls phases in this order for one
// snapshot set, each at most once:
//
//	Identify → PrepareBackup → PrepareSnapshot → Freeze → (providers commit) →
//	Thaw → PostSnapshot → (requester reads) → CopyComplete → BackupComplete
//
// Abort may come at any point after Identify, including while a phase of the
// same writer is still running on another goroutine (it then gets a context
// that has been cancelled). Abort must be safe to call more than once and
// after any phase, and it must release anything Freeze holds. A writer that
// was frozen always gets Thaw or Abort. Phases of one writer never run
// concurrently with each other, except Abort as above; different writers run
// in parallel.
//
// Errors: a phase returns an error wrapping ErrRetryable when trying again
// later may succeed (busy, time-out); any other error is taken as a
// misconfiguration that will not go away by itself. Error text names what
// went wrong and how to fix it.
//
// A writer must also release its own freeze if the coordinator process dies:
// hold freezes with resources the kernel frees on exit (connections, file
// locks), never with state that outlives the process.
package writer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrRetryable marks failures that may succeed when tried again.
var ErrRetryable = errors.New("retryable")

// Phase names a step of the protocol (DESIGN §1).
type Phase string

// The phases, in protocol order, then the restore phases.
const (
	PhaseIdentify        Phase = "identify"
	PhasePrepareBackup   Phase = "prepare-backup"
	PhasePrepareSnapshot Phase = "prepare-snapshot"
	PhaseFreeze          Phase = "freeze"
	PhaseCommit          Phase = "commit"
	PhaseThaw            Phase = "thaw"
	PhasePostSnapshot    Phase = "post-snapshot"
	PhaseCopyComplete    Phase = "copy-complete"
	PhaseBackupComplete  Phase = "backup-complete"
	PhaseAbort           Phase = "abort"
	PhasePreRestore      Phase = "pre-restore"
	PhasePostRestore     Phase = "post-restore"
)

// BackupType says what the requester will make of the set; it decides what a
// writer may truncate at BackupComplete.
type BackupType string

// Backup types. A copy backup never truncates anything.
const (
	Full        BackupType = "full"
	Incremental BackupType = "incremental"
	Log         BackupType = "log"
	Copy        BackupType = "copy"
)

// Truncates reports whether a successful backup of this type may truncate logs.
func (t BackupType) Truncates() bool { return t == Full || t == Incremental || t == Log }

// Writer is the required core of every writer.
type Writer interface {
	// Name is the writer's instance name, unique in one configuration,
	// such as "sqlite:app". It names locks, state and error messages.
	Name() string
	// Identify describes the writer's data. It is called first in every set
	// and may be called on its own (umbra writers); it must not change the
	// application's state.
	Identify(ctx context.Context) (Metadata, error)
}

// Set tells a writer about the snapshot set it takes part in. Volumes is
// empty before the commit and filled from PostSnapshot on.
type Set struct {
	ID      string
	Type    BackupType
	Volumes []Volume
	// Scratch is a private directory of the set where writers keep the
	// files they hand on (a backup label, copied WAL) until the set is
	// deleted. A writer uses ScratchFor(its name), made on first use.
	Scratch string
	// OwnCopies names the components ("writer/component") that no
	// provider can copy consistently and whose writer makes the copy
	// itself (Component.OwnCopy): known from PrepareBackup on.
	OwnCopies []string
}

// CopiesOwn reports whether the writer makes the copy of its component
// itself in this set.
func (s Set) CopiesOwn(writerName, component string) bool {
	return slices.Contains(s.OwnCopies, writerName+"/"+component)
}

// ScratchFor returns the writer's own scratch directory in the set, creating
// it (mode 0700) if needed.
func (s Set) ScratchFor(writerName string) (string, error) {
	if s.Scratch == "" {
		return "", errors.New("the set has no scratch directory")
	}
	dir := filepath.Join(s.Scratch, strings.NewReplacer("/", "_", ":", "_").Replace(writerName))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	return dir, nil
}

// Volume maps a source directory to where its shadow copy can be read.
type Volume struct {
	Source   string // directory on the live system
	Snapshot string // the same directory in the shadow copy
	// Live says there is no copy: Snapshot is the live directory, read
	// by the requester while the application goes on (DESIGN §3).
	Live bool
}

// LiveFor reports whether path lies on a volume of the set that is read
// live.
func (s Set) LiveFor(path string) bool {
	for _, v := range s.Volumes {
		if v.Live && (path == v.Source || strings.HasPrefix(path, strings.TrimSuffix(v.Source, "/")+"/")) {
			return true
		}
	}
	return false
}

// BackupPreparer checks preconditions (archiving on, credentials, versions).
type BackupPreparer interface {
	PrepareBackup(ctx context.Context, set Set) error
}

// Checker is a writer whose PrepareBackup checks can run with no effect on
// the application (no user command, nothing held): umbra writers runs
// Check, so that a writer certain to fail the next backup is not shown as
// ready.
type Checker interface {
	Check(ctx context.Context) error
}

// SnapshotPreparer does slow work that does not block the application
// (checkpoint, pg_backup_start, BGSAVE).
type SnapshotPreparer interface {
	PrepareSnapshot(ctx context.Context, set Set) error
}

// Freezer blocks new commits between Freeze and Thaw. Queued work waits;
// nothing is rejected. Freeze is bounded by the set's freeze limit.
type Freezer interface {
	Freeze(ctx context.Context, set Set) error
	Thaw(ctx context.Context, set Set) error
}

// Guarder is a writer whose freeze would outlive the umbra process (a
// stopped process, a flag file, a lock held by a helper): it names the
// command that releases the freeze. umbra's thaw guard, a separate process
// started before Freeze, runs it if umbra dies, or the freeze limit passes,
// before the set is thawed. The command must be safe to run after a normal
// Thaw, and more than once.
type Guarder interface {
	ThawGuard(set Set) (Command, bool)
}

// Command is a program to run, with its environment (KEY=VALUE).
type Command struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
}

// PostSnapshotter records what the copy needs once the shadow copies exist.
type PostSnapshotter interface {
	PostSnapshot(ctx context.Context, set Set) (Report, error)
}

// PosArchiveFrom is the Report position naming the oldest file of the
// writer's log archive (umbra wal-push) that a restore of this backup can
// need: the requester prunes archived logs older than the oldest backup's.
const PosArchiveFrom = "archive_from"

// Report is what a writer hands on after the snapshot: log positions and
// files the requester must store alongside the shadow copy.
type Report struct {
	Positions map[string]string `json:"positions,omitempty"`
	Files     []HandOn          `json:"files,omitempty"`
	// Copies say, for a component the writer copies itself
	// (Set.OwnCopies), where each of its paths is to be read instead of
	// the live system; every path of such a component needs one.
	Copies []OwnCopy `json:"copies,omitempty"`
	// Started is how the application's server was started (its command
	// line and user), for a restore in place to start it the same way
	// when the writer has no start command configured.
	Started *Started `json:"started,omitempty"`
	// Warnings are what the operator must hear although the backup is
	// good (WAL archiving that fails): the backup completes with warnings.
	Warnings []string `json:"warnings,omitempty"`
}

// Started is a server's command line as the kernel saw it, and its user.
type Started struct {
	Argv []string `json:"argv"`
	UID  int      `json:"uid"`
	GID  int      `json:"gid"`
}

// OwnCopy is the writer's own consistent copy of one component path: Source
// is read and stored as Path. An empty Source leaves Path out of the
// backup (an SQLite -wal file that the copy has folded in).
type OwnCopy struct {
	Path   string `json:"path"`
	Source string `json:"source,omitempty"`
}

// CopyCompleter is a writer whose hand-on files can only be made once the
// requester has read the set: PostgreSQL must stay in backup mode while a
// volume is read live, and pg_backup_stop then gives the label and the
// WAL. The requester calls CopyComplete after reading every shadow copy and
// before it writes the manifest; the report is added to PostSnapshot's.
type CopyCompleter interface {
	CopyComplete(ctx context.Context, set Set) (Report, error)
}

// HandOn is a file the writer produced for the backup (a backup label, WAL),
// stored by the requester at Path relative to the component's restore root.
type HandOn struct {
	Component string `json:"component"`
	Path      string `json:"path"`
	Source    string `json:"source"` // where to read it now
}

// Completer learns the requester's verdict. Only a successful component of a
// backup type that Truncates may have its logs truncated.
type Completer interface {
	BackupComplete(ctx context.Context, c Completion) error
}

// Completion carries the requester's verdict per component.
type Completion struct {
	Set        Set
	Components map[string]bool // component name → stored successfully
}

// Aborter undoes anything in flight. It must be idempotent and safe after
// any phase.
type Aborter interface {
	Abort(ctx context.Context, set Set) error
}

// Restorer brings the application back from restored files.
type Restorer interface {
	// PreRestore stops the service and moves live files aside.
	PreRestore(ctx context.Context, r Restore) error
	// PostRestore recovers, starts and checks the application. When More is
	// set, further restores follow and the application must not start yet.
	PostRestore(ctx context.Context, r Restore) error
}

// Check is one check a Verifier ran on a sandboxed copy of the backup.
type Check struct {
	Name string `json:"name"` // "integrity_check", "pg_amcheck"
	OK   bool   `json:"ok"`
	// Detail says what the check found: what is damaged on failure (a
	// relation, a table, a file), with an excerpt of the application's log.
	Detail   string        `json:"detail,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Verifier checks a backup of its application with the application's own
// tools. r.Target holds the writer's components as a restore under a target
// leaves them (PostRestore done). Verify may start the application there,
// privately (a socket in r.Target, no TCP, nothing that talks to the
// outside), must stop it before it returns, and never touches the live
// application. It returns the checks it ran; a check that fails is not an
// error, an error means the verification itself could not run.
type Verifier interface {
	Verify(ctx context.Context, r Restore) ([]Check, error)
}

// FetchSpoolDir is the directory, beside the file a Restore's FetchLog
// command is asked to write, where that command may leave log files it
// fetched ahead; the writer removes it once recovery is over.
const FetchSpoolDir = ".umbra-prefetch"

// RestoreChecker is a Restorer that can tell, with the application still
// running, that its restore would fail: the restore checks every writer
// before it stops any.
type RestoreChecker interface {
	CheckRestore(ctx context.Context, r Restore) error
}

// Restore describes one restore of a writer's components.
type Restore struct {
	Metadata Metadata
	// Report is what the writer handed on when the backup was made
	// (positions, such as a key count to compare with).
	Report     Report
	Components []string
	Target     string // directory the files go to; empty means in place
	More       bool
	// DataDir and Port, with a Target, ask a Relocator to make the copy a
	// server of its own beside the original: its files moved from Target
	// to DataDir, listening on Port, started (umbra restore --to-datadir).
	DataDir string
	Port    int
	// Socket, with DataDir, makes the copy a sandbox (verification): it
	// listens on no TCP address, only on a Unix socket in this directory,
	// and follows no primary. For a Runner it is where the copy's socket
	// goes, beside Listen.
	Socket string
	// Listen is the address a Runner's copy listens on with Port; empty
	// means the socket alone.
	Listen string
	// Crash says the files are a crash-consistent copy (the backup fell
	// back without the writer): recover as after a power cut, with
	// nothing handed on.
	Crash bool
	// Until asks for recovery to this moment (point-in-time restore), from
	// the log archive that FetchLog fetches from (PostgreSQL:
	// restore_command, with %f and %p).
	Until    time.Time
	FetchLog string
}

// AsideMover is a Restorer whose PreRestore moves the live data aside: it
// says where, so that a restore that cannot finish tells the operator where
// the previous data is and how to put it back. MovedAside lists what the
// last PreRestore moved.
type AsideMover interface {
	Restorer
	MovedAside() []Moved
}

// Moved is a live path that PreRestore renamed.
type Moved struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Relocator is a writer that can bring a restored copy up in another data
// directory on another port, beside the original.
type Relocator interface {
	Restorer
	Relocates()
}

// Runner is a writer whose application can be started on its files where
// they lie, under r.Target as the backup holds them (a writable view of a
// backup: instant recovery, item-level restore), reachable on
// r.Port at r.Listen and on a socket in r.Socket, with a verification's
// rules otherwise: nothing archived, no primary followed, no replica.
// With r.DataDir set it starts instead on that data directory, which an
// earlier Start's copy was cleanly stopped in and which was then copied
// there (umbra run --migrate).
type Runner interface {
	Writer
	Start(ctx context.Context, r Restore) (*Running, error)
}

// Running is an application a Runner started.
type Running struct {
	// Connect tells a client how to reach it: a connection string, a
	// socket, or for an application without a server the file itself.
	Connect string `json:"connect"`
	// Socket is the Unix socket it listens on, if any.
	Socket string `json:"socket,omitempty"`
	// DataDir is the directory its data lies in (what --migrate copies);
	// for SQLite the database file.
	DataDir string `json:"data_dir"`
	// Stop shuts it down cleanly, so that DataDir may be copied and
	// started elsewhere; nil for an application without a server.
	Stop func(ctx context.Context) error `json:"-"`
	// NoMigrate, if set, says why DataDir cannot simply be copied and
	// started elsewhere.
	NoMigrate string `json:"-"`
}

// TableCopier is a Runner that can copy one table from a copy it started
// (Runner.Start, private) into the live application, with the
// application's own dump and load tools: item-level restore. It runs in
// the process that serves the backup's view (FUSE): it must not map the
// view's files into memory (SQLite's -shm does), as a page fault there
// can deadlock with its own server; plain reads, or another process, are
// safe.
type TableCopier interface {
	Runner
	CopyTable(ctx context.Context, from *Running, t TableCopy) (TableCopied, error)
}

// TableCopy says which table to copy, and where to.
type TableCopy struct {
	// Database holds the table (PostgreSQL); empty means the writer's.
	Database string
	// Table is the table as the backup has it (SCHEMA.TABLE or TABLE;
	// for MariaDB DATABASE.TABLE), Into its name in the live application
	// (default the same).
	Table, Into string
	// Where, if set, keeps only the rows it selects (an SQL condition).
	Where string
	// Force replaces a table of that name in the live application;
	// without it, one there is an error and nothing is touched.
	Force bool
}

// TableCopied is what a table copy did.
type TableCopied struct {
	Database string `json:"database,omitempty"`
	Table    string `json:"table"`
	Rows     int64  `json:"rows"`
	Replaced bool   `json:"replaced"`
}

// ErrTableExists is returned when the live application has a table of the
// name a copy would make, and Force was not given.
var ErrTableExists = errors.New("the table exists in the live application")

// AsideList records what a writer's PreRestore moved aside, for
// MovedAside; its zero value is empty, and it is safe for concurrent use.
type AsideList struct {
	mu    sync.Mutex
	moved []Moved
}

// Reset forgets what an earlier PreRestore moved.
func (l *AsideList) Reset() {
	l.mu.Lock()
	l.moved = nil
	l.mu.Unlock()
}

// Add records that from was renamed to to.
func (l *AsideList) Add(from, to string) {
	l.mu.Lock()
	l.moved = append(l.moved, Moved{From: from, To: to})
	l.mu.Unlock()
}

// List returns what was moved.
func (l *AsideList) List() []Moved {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.moved)
}

// systemdRunning reports whether systemd is the service manager (a
// variable for tests).
var systemdRunning = func() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// pgTemplateUnit is postgresql-common's unit of one cluster.
var pgTemplateUnit = regexp.MustCompile(`^postgresql@([0-9.]+)-([^.]+)(\.service)?$`)

// ServiceCommand is the command that does action ("start", "stop") to a
// service named as systemd names it (service = "postgresql@15-main"):
// systemctl where systemd runs; without it (containers, sysvinit),
// postgresql-common's pg_ctlcluster for a cluster's unit, else the init
// script through service(8), which takes the name without its instance.
func ServiceCommand(action, unit string) (string, []string) {
	if systemdRunning() {
		return "systemctl", []string{action, unit}
	}
	if m := pgTemplateUnit.FindStringSubmatch(unit); m != nil {
		return "pg_ctlcluster", []string{m[1], m[2], action}
	}
	name := strings.TrimSuffix(unit, ".service")
	name, _, _ = strings.Cut(name, "@")
	return "service", []string{name, action}
}

// MountPoint reports whether path is where a filesystem is mounted.
func MountPoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	esc := strings.NewReplacer(`\`, `\134`, " ", `\040`, "\t", `\011`, "\n", `\012`).Replace(filepath.Clean(path))
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == esc {
			return true
		}
	}
	return false
}

// EmptyDir reports whether dir holds nothing but, on a fresh ext4,
// lost+found: a new volume mounted where the lost data was.
func EmptyDir(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() != "lost+found" {
			return false
		}
	}
	return true
}

// AsideDirPrefix begins the name of the directory that MoveAside moves
// live data into, at the top of its filesystem.
const AsideDirPrefix = ".umbra-before-restore-"

// MoveAside moves path, before a restore writes in its place, to
// TOP/.umbra-before-restore-STAMP/PATH, TOP being the highest directory
// above path on the same filesystem (a rename, never a copy): not beside
// path, where a tool that scans path's directory would mistake it for the
// live thing (postgresql-common takes every directory in
// /etc/postgresql/15/ for a cluster). It returns where path went, or ""
// if path does not exist.
func MoveAside(path, stamp string) (string, error) {
	path = filepath.Clean(path)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	to, err := PrepareAside(path, stamp)
	if err != nil {
		return "", err
	}
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("move %s aside to %s: %w", path, to, err)
	}
	return to, nil
}

// PrepareAside makes the directory MoveAside(path, stamp) moves path into,
// and returns where path will go: called before the application is
// stopped, it finds a place that cannot be written while the application
// still runs.
func PrepareAside(path, stamp string) (string, error) {
	path = filepath.Clean(path)
	top, err := filesystemTop(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	to := filepath.Join(top, AsideDirPrefix+stamp, path)
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return "", fmt.Errorf("move %s aside: %w", path, err)
	}
	return to, nil
}

// filesystemTop returns the highest directory above dir (dir included) on
// dir's filesystem: a mount point, or a btrfs subvolume's root.
func filesystemTop(dir string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "", &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	top := dir
	for top != "/" {
		up := filepath.Dir(top)
		var ust unix.Stat_t
		if err := unix.Stat(up, &ust); err != nil || ust.Dev != st.Dev {
			break
		}
		top = up
	}
	return top, nil
}

// CheckRoom returns an error, naming the fix, unless the filesystem of dir
// (a set's scratch directory) has room for a copy of the files under
// paths: a writer's own copy must not fill the disk the application
// writes to.
func CheckRoom(dir string, paths ...string) error {
	var need int64
	for _, p := range paths {
		_ = filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // gone meanwhile, or unreadable: the copy will say
			}
			if d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					need += fi.Size()
				}
			}
			return nil
		})
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", dir, err)
	}
	// What is left must stay above a twentieth of the filesystem (at most
	// 1 GiB): the application may write to the same one.
	free := int64(st.Bavail) * int64(st.Bsize)
	reserve := min(int64(st.Blocks)*int64(st.Bsize)/20, 1<<30)
	if free-need < reserve {
		return fmt.Errorf("the copy needs %d MiB in %s, which has %d MiB free, and %d MiB must stay free: make room there, or give umbra a state directory on a larger filesystem (--state-dir, state_dir in the configuration)",
			need>>20, dir, free>>20, reserve>>20)
	}
	return nil
}
