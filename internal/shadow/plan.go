package shadow

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/writer"
)

// plan maps every writer component's paths and the user's paths to volumes,
// picks a provider per volume, refuses combinations that cannot be
// consistent, and locks the volumes. Nothing has touched an application or a
// volume yet, so a refusal here has no side effect.
func (r *creation) plan(ctx context.Context, userPaths []string) error {
	byMount := map[string]*plan{}
	add := func(path string) (*plan, error) {
		vol, err := r.c.volumeOf(path)
		if err != nil {
			return nil, err
		}
		p, ok := byMount[vol.Mount]
		if !ok {
			p = &plan{vol: vol}
			byMount[vol.Mount] = p
		}
		if !contains(p.paths, path) {
			p.paths = append(p.paths, path)
		}
		return p, nil
	}

	// Needs per volume: the strictest need of any component on it, and who.
	type need struct {
		need   writer.Need
		who    string
		writer string
		own    string // "writer/component" when the writer can copy it itself
	}
	needs := map[string][]need{}
	for _, wr := range sortedWriters(r.wrs) {
		md := r.metadata[wr.Name()]
		for _, comp := range md.Components {
			for _, path := range comp.Paths {
				p, err := add(filepath.Clean(path))
				if err != nil {
					return &PhaseError{Who: wr.Name(), Phase: writer.PhaseIdentify, Err: fmt.Errorf("component %s: %w", comp.Name, err)}
				}
				n := need{need: comp.Needs, who: fmt.Sprintf("%s component %s", wr.Name(), comp.Name), writer: wr.Name()}
				if comp.OwnCopy {
					n.own = wr.Name() + "/" + comp.Name
				}
				needs[p.vol.Mount] = append(needs[p.vol.Mount], n)
			}
		}
	}
	var cleaned []string
	for _, path := range userPaths {
		abs, err := filepath.Abs(path)
		if err != nil {
			return &PhaseError{Phase: writer.PhaseIdentify, Err: err}
		}
		if _, err := os.Lstat(abs); err != nil {
			return &PhaseError{Phase: writer.PhaseIdentify, Err: fmt.Errorf("path %s does not exist; check the path", abs)}
		}
		if _, err := add(abs); err != nil {
			return &PhaseError{Phase: writer.PhaseIdentify, Err: err}
		}
		cleaned = append(cleaned, abs)
	}
	if len(byMount) == 0 {
		return &PhaseError{Phase: writer.PhaseIdentify, Err: errors.New("nothing to copy: give a path or a writer with data")}
	}

	mounts := make([]string, 0, len(byMount))
	for m := range byMount {
		mounts = append(mounts, m)
	}
	sort.Strings(mounts)
	for _, m := range mounts {
		p := byMount[m]
		var reqs []writer.Need
		var whos, writers, owns []string
		for _, n := range needs[m] {
			reqs = append(reqs, n.need)
			whos = append(whos, n.who)
			writers = append(writers, n.writer)
			owns = append(owns, n.own)
		}
		prov, own, err := r.c.chooseProvider(p.vol, reqs, whos, owns)
		if err != nil {
			// Name the writer no provider can serve, so that a backup
			// can go on without it.
			return &PhaseError{Who: r.c.unservable(p.vol, reqs, writers, owns), Phase: writer.PhaseIdentify, Err: err}
		}
		for _, o := range own {
			if !contains(r.set.OwnCopies, o) {
				r.set.OwnCopies = append(r.set.OwnCopies, o)
			}
		}
		if r.c.opts.FSFreeze && !prov.Capabilities().FrozenCommit {
			return &PhaseError{Phase: writer.PhaseIdentify, Err: fmt.Errorf(
				"--fsfreeze: provider %s on %s writes through the filesystem and would block on a frozen one; "+
					"%s; drop --fsfreeze and let writers make the data consistent", prov.Name(), m, fsfreezeAdvice(prov))}
		}
		p.prov = prov
		sort.Strings(p.paths)
		r.plans = append(r.plans, *p)
		l, err := r.c.lock(ctx, "volume", m)
		if err != nil {
			return phaseError("", writer.PhaseIdentify, err)
		}
		r.locks = append(r.locks, l)
		r.set.Planned = append(r.set.Planned, Planned{Volume: p.vol, Provider: prov.Name(), Paths: p.paths})
	}
	if _, needed := r.guardPlan(r.set.writerSet()); needed && r.c.opts.Guard == nil {
		return &PhaseError{Phase: writer.PhaseIdentify, Err: errors.New("a thaw guard is needed (--fsfreeze or a guarded writer) but none is configured")}
	}
	r.fillResults(cleaned)
	return nil
}

func fsfreezeAdvice(p provider.Provider) string {
	if p.Capabilities().Copy == provider.CopyAtomic {
		return "its snapshots are already crash-consistent for the whole volume"
	}
	return "its copies are consistent only for data a writer quiesces"
}

// chooseProvider picks the first provider, or the forced one, that can serve
// vol and give every component on it the copy it needs. Failing that, it
// picks the first one whose only shortfalls are components whose writers
// can copy them themselves (owns[i] names such a component, "" none), and
// returns those.
func (c *Coordinator) chooseProvider(vol provider.Volume, needs []writer.Need, whos, owns []string) (provider.Provider, []string, error) {
	candidates := c.providers
	if c.opts.Provider != "" {
		candidates = nil
		for _, p := range c.providers {
			if p.Name() == c.opts.Provider {
				candidates = []provider.Provider{p}
			}
		}
		if candidates == nil {
			return nil, nil, fmt.Errorf("provider %q does not exist; umbra providers lists them", c.opts.Provider)
		}
	}
	var why []string
	var fallback provider.Provider
	var fallbackOwn []string
	for _, p := range candidates {
		if err := p.CanServe(vol); err != nil {
			why = append(why, fmt.Sprintf("%s: %v", p.Name(), err))
			continue
		}
		short := unmet(p.Capabilities().Copy, needs)
		if len(short) == 0 {
			return p, nil, nil
		}
		i := short[0]
		why = append(why, fmt.Sprintf("%s: makes %s, but %s needs %s", p.Name(), copyPhrase(p.Capabilities().Copy), whos[i], needPhrase(needs[i])))
		if fallback == nil && !slices.ContainsFunc(short, func(i int) bool { return owns[i] == "" }) {
			fallback = p
			for _, i := range short {
				fallbackOwn = append(fallbackOwn, owns[i])
			}
		}
	}
	if fallback != nil {
		return fallback, fallbackOwn, nil
	}
	return nil, nil, fmt.Errorf("no provider can serve %s (%s on %s): %s; %s",
		vol.Mount, vol.FSType, vol.Device, strings.Join(why, "; "), placementAdvice(needs))
}

// unservable returns the first writer whose need on vol no provider that
// can serve it meets, and that cannot copy itself; "" if the fault is no
// one writer's.
func (c *Coordinator) unservable(vol provider.Volume, needs []writer.Need, writers, owns []string) string {
	for i, who := range writers {
		if who == "" || owns[i] != "" {
			continue
		}
		met := false
		for _, p := range c.providers {
			if (c.opts.Provider == "" || p.Name() == c.opts.Provider) && p.CanServe(vol) == nil &&
				len(unmet(p.Capabilities().Copy, needs[i:i+1])) == 0 {
				met = true
				break
			}
		}
		if !met {
			return who
		}
	}
	return ""
}

// copyPhrase names a kind of copy in a sentence.
func copyPhrase(c provider.Copy) string {
	switch c {
	case provider.CopyAtomic:
		return "an atomic copy"
	case provider.CopyNone:
		return "no copy"
	}
	return "a " + string(c) + " copy"
}

// needPhrase names a need in a sentence.
func needPhrase(n writer.Need) string {
	switch n {
	case writer.NeedAtomic:
		return "an atomic copy"
	case writer.NeedQuiesced:
		return "a copy made while it is quiesced"
	}
	return "any copy"
}

// placementAdvice says where data with these needs can live: an atomic need
// wants a volume snapshot, which a per-file clone is not.
func placementAdvice(needs []writer.Need) string {
	if slices.Contains(needs, writer.NeedAtomic) {
		return "data that needs an atomic copy must be on a volume with snapshots (btrfs here; LVM and ZFS are planned): move it there, or leave that writer out"
	}
	return "put the data on btrfs, or on XFS made with reflink=1, or choose another provider with --provider"
}

// unmet returns the indexes of the needs a copy kind cannot meet.
func unmet(copy provider.Copy, needs []writer.Need) []int {
	var short []int
	for i, n := range needs {
		switch {
		case n == writer.NeedAtomic && copy != provider.CopyAtomic:
			short = append(short, i)
		case n == writer.NeedQuiesced && copy == provider.CopyNone:
			short = append(short, i)
		}
	}
	return short
}

// fillResults sets each component's and user path's consistency as the
// set will have it if every phase succeeds.
func (r *creation) fillResults(userPaths []string) {
	for _, wr := range r.wrs {
		md := r.metadata[wr.Name()]
		res := WriterResult{Name: wr.Name(), Consistency: Application, Metadata: md}
		for _, comp := range md.Components {
			res.Components = append(res.Components, ComponentResult{Name: comp.Name, Consistency: Application, Paths: comp.Paths})
		}
		r.set.Writers = append(r.set.Writers, res)
	}
	for _, path := range userPaths {
		level := None
		if p := r.planFor(path); p != nil && p.prov.Capabilities().Copy == provider.CopyAtomic {
			level = Crash
		}
		r.set.Paths = append(r.set.Paths, PathResult{Path: path, Consistency: level})
	}
}

func (r *creation) planFor(path string) *plan {
	for i := range r.plans {
		if contains(r.plans[i].paths, path) {
			return &r.plans[i]
		}
	}
	return nil
}

// volumeOf finds the volume of path, or of its nearest existing parent
// (a writer's log file may not exist yet).
func (c *Coordinator) volumeOf(path string) (provider.Volume, error) {
	p := path
	for {
		if _, err := os.Lstat(p); err == nil {
			vol, err := c.opts.Mounts(p)
			// A file that came and went meanwhile (an SQLite -journal
			// in rollback mode): its directory says as much.
			if !errors.Is(err, fs.ErrNotExist) {
				return vol, err
			}
		}
		parent := filepath.Dir(p)
		if parent == p {
			return c.opts.Mounts(p)
		}
		p = parent
	}
}

func sortedWriters(wrs []writer.Writer) []writer.Writer {
	out := append([]writer.Writer(nil), wrs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
