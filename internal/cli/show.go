package cli

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-backup/umbra/internal/backup"
	"github.com/umbra-backup/umbra/internal/repository"
	"github.com/umbra-backup/umbra/internal/verify"
)

func (a *app) showCommand() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a backup's whole manifest: writers, consistency, positions, statistics",
		Long: `Show backup ID (an id, a unique prefix, or "latest"): when and where it was
made, what it holds, and for a backup made with writers each writer's
components with their consistency, the log positions it recorded, the files
it handed on, the set's type and freeze window, and every verification of
it (umbra verify). --json prints the manifest as stored, with the writers'
part decoded under "app" and the verifications under "verifications".`,
		Example: "  umbra show latest\n  umbra show 3f9a2c1b --json | jq .app.writers",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, e, done, err := a.openBackup(cmd.Context(), &f, args[0])
			if err != nil {
				return err
			}
			defer done()
			info, err := backup.ReadInfo(e.Manifest)
			if err != nil {
				return err
			}
			records, err := repo.Verifications(cmd.Context())
			if err != nil {
				return err
			}
			type verification struct {
				Time    time.Time             `json:"time"`
				Host    string                `json:"host"`
				OK      bool                  `json:"ok"`
				Writers []verify.WriterResult `json:"writers"`
			}
			var checks []verification
			for _, v := range records {
				if v.Backup != e.ID {
					continue
				}
				ws, err := verify.Results(v)
				if err != nil {
					return err
				}
				checks = append(checks, verification{Time: v.Time, Host: v.Host, OK: v.OK, Writers: ws})
			}
			if a.json {
				return a.printJSON(struct {
					ID repository.ID `json:"id"`
					*repository.Manifest
					// The manifest's raw extra is what app decodes.
					Extra         json.RawMessage `json:"extra,omitempty"`
					App           *backup.Info    `json:"app,omitempty"`
					Verifications []verification  `json:"verifications,omitempty"`
				}{e.ID, e.Manifest, nil, info, checks})
			}
			a.printShow(e, info)
			for _, v := range checks {
				fmt.Fprintf(a.stdout, "Verification %s on %s:\n", v.Time.Local().Format(time.DateTime), v.Host)
				a.printVerification(e.ID.Short(), v.OK, v.Writers)
			}
			return nil
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func (a *app) printShow(e repository.ManifestEntry, info *backup.Info) {
	w := a.stdout
	s := e.Stats
	fmt.Fprintf(w, "Backup %s\n  Time: %s\n  Host: %s\n  Paths: %s\n", e.ID, e.Time.Local().Format(time.DateTime), e.Host, strings.Join(e.Paths, " "))
	if e.Parent != nil {
		fmt.Fprintf(w, "  Parent: %s\n", e.Parent.Short())
	}
	if len(e.Tags) > 0 {
		fmt.Fprintf(w, "  Tags: %s\n", strings.Join(e.Tags, ", "))
	}
	fmt.Fprintf(w, "  Files: %d in %d directories, %s; %s read, %s added, in %s\n", s.Files, s.Dirs, size(s.Bytes),
		size(s.BytesRead), size(s.BytesAdded), (time.Duration(s.DurationMS) * time.Millisecond).Round(time.Millisecond))
	for _, warn := range e.Warnings {
		fmt.Fprintf(w, "  Warning: %s\n", warn)
	}
	if info == nil {
		fmt.Fprintln(w, "  Plain files (no writers).")
		return
	}
	fmt.Fprintf(w, "  Shadow set: %s (%s), freeze window %.1f ms\n", info.Set, info.Type, info.FreezeMS)
	if info.CopyReason != "" {
		fmt.Fprintf(w, "  Copy backup, nothing truncated: %s\n", info.CopyReason)
	}
	for _, wi := range info.Writers {
		fmt.Fprintf(w, "Writer %s (%s %s): %s\n", wi.Name, wi.Metadata.Writer, wi.Metadata.Version, wi.Consistency)
		for _, c := range wi.Components {
			how := ""
			if slices.Contains(wi.OwnCopies, c.Name) {
				how = " (copied by the writer itself: no volume snapshot)"
			}
			fmt.Fprintf(w, "  Component %s: %s%s, %s\n", c.Name, c.Consistency, how, strings.Join(c.Paths, " "))
		}
		for _, k := range sortedKeys(wi.Report.Positions) {
			fmt.Fprintf(w, "  Position %s: %s\n", k, wi.Report.Positions[k])
		}
		for _, f := range wi.Report.Files {
			fmt.Fprintf(w, "  Handed on: %s (component %s)\n", f.Path, f.Component)
		}
	}
	for _, p := range info.Paths {
		fmt.Fprintf(w, "Path %s: %s\n", p.Path, p.Consistency)
	}
}
