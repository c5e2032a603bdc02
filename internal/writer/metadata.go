package writer

import "fmt"

// Metadata is a writer's description of its data, stored in every backup.
type Metadata struct {
	Writer     string      `json:"writer"`   // kind, such as "sqlite"
	Instance   string      `json:"instance"` // instance name, as Writer.Name
	Version    string      `json:"version,omitempty"`
	Components []Component `json:"components"`
	// LogsOwnedBy is set when another tool owns the application's logs (an
	// archive_command that is not umbra's, a replica reading the binlog):
	// it says which, and the set becomes a copy backup that truncates
	// nothing (DESIGN §1).
	LogsOwnedBy string `json:"logs_owned_by,omitempty"`
}

// Kind says what a component holds.
type Kind string

// Component kinds.
const (
	KindDatabase Kind = "database"
	KindFiles    Kind = "files"
	KindLogs     Kind = "logs"
)

// Need is the kind of copy a component can be made consistent from
// (DESIGN §3).
type Need string

// Copy needs, strictest first.
const (
	// NeedAtomic needs a point-in-time snapshot of the whole volume.
	NeedAtomic Need = "atomic"
	// NeedQuiesced is satisfied by any copy made while the writer is frozen.
	NeedQuiesced Need = "quiesced"
	// NeedLive is satisfied by any copy, even one made after Thaw.
	NeedLive Need = "live"
)

// RestoreMethod says how a component comes back.
type RestoreMethod struct {
	Method  string `json:"method"` // stop-service, restore-if-absent, custom
	Service string `json:"service,omitempty"`
}

// LogFacts says what BackupComplete truncates.
type LogFacts struct {
	Truncates string `json:"truncates,omitempty"`
}

// Component is one selectable unit of a writer's data.
type Component struct {
	Name        string        `json:"name"`
	Kind        Kind          `json:"kind"`
	Paths       []string      `json:"paths"`
	Excludes    []string      `json:"excludes,omitempty"`
	Selectable  bool          `json:"selectable"`
	BackupTypes []BackupType  `json:"backup_types"`
	Needs       Need          `json:"needs"`
	Restore     RestoreMethod `json:"restore"`
	Logs        LogFacts      `json:"logs,omitzero"`
	// OwnCopy says the writer can make a consistent copy of the component
	// itself (SQLite's online backup API) where no provider meets Needs,
	// as on ext4: the coordinator then tells it so in Set.OwnCopies, and
	// the writer's Report.Copies say where its copy is to be read.
	OwnCopy bool `json:"own_copy,omitempty"`
}

// Validate reports the first thing wrong with md.
func (md Metadata) Validate() error {
	if md.Writer == "" || md.Instance == "" {
		return fmt.Errorf("metadata: writer and instance must be set")
	}
	seen := map[string]bool{}
	for _, c := range md.Components {
		if c.Name == "" {
			return fmt.Errorf("metadata %s: component without a name", md.Instance)
		}
		if seen[c.Name] {
			return fmt.Errorf("metadata %s: component %q twice", md.Instance, c.Name)
		}
		seen[c.Name] = true
		switch c.Needs {
		case NeedAtomic, NeedQuiesced, NeedLive:
		default:
			return fmt.Errorf("metadata %s: component %q: needs %q, want atomic, quiesced or live", md.Instance, c.Name, c.Needs)
		}
	}
	return nil
}
