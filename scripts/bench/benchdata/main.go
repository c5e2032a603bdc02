// Command benchdata makes and changes the data sets of scripts/bench.sh,
// deterministically: the same seed gives the same bytes on every machine.
//
//	benchdata dbfile -size BYTES -seed N FILE
//	benchdata change -seed N -percent P -unit pages|files -content random|dbfile -undo UNDO -list LIST
//	benchdata undo UNDO
//
// dbfile writes a database-like file of 8 KiB pages: a binary page header,
// then row-like text (ids, page number, pseudo-random numbers, words) up to a
// per-page fill factor, then zeros, so that it compresses about as well as
// a real table does.
//
// change rewrites, in place and page-aligned, P% of the 8 KiB pages of the
// files named in LIST (one path a line; -unit pages), or the first page of
// P% of the files (-unit files). Pages are picked uniformly at random with
// the seed. Before it writes anything it saves the original bytes to UNDO
// and syncs it, so "benchdata undo UNDO" can always put them back, even
// after an interrupted change. It prints "pages=N bytes=B files=F".
//
// Bash could do the page rewrites with dd, but not generate 2 GiB of
// structured pages at disk speed; this is the one helper that needs Go.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// pageSize is the page size of the data sets and of PostgreSQL.
const pageSize = 8192

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "dbfile":
		err = dbfileCmd(os.Args[2:])
	case "change":
		err = changeCmd(os.Args[2:])
	case "undo":
		err = undoCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchdata %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchdata dbfile|change|undo ... (see the source's doc comment)")
	os.Exit(2)
}

// rng is splitmix64: tiny, fast and, unlike math/rand, fixed forever.
type rng struct{ s uint64 }

func newRNG(parts ...uint64) *rng {
	r := &rng{s: 0x853c49e6748fea9b}
	for _, p := range parts {
		r.s ^= p
		r.next()
	}
	return r
}

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

var words = strings.Fields(`alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo
lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu
invoice payment refund order shipment customer supplier account ledger balance transfer deposit
pending settled cancelled approved rejected open closed north south east west central`)

// dbPage fills p with page number page of a dbfile made with seed;
// version 1 is the original, higher versions are rewrites of it.
func dbPage(p []byte, seed, page, version uint64) {
	r := newRNG(seed, page, version)
	clear(p)
	// Header: LSN, checksum, flags, lower, upper, page number, magic.
	binary.LittleEndian.PutUint64(p[0:], version<<40|page)
	binary.LittleEndian.PutUint16(p[8:], uint16(r.next()))
	binary.LittleEndian.PutUint32(p[16:], uint32(page))
	copy(p[20:24], "UMBD")
	fill := pageSize * (70 + r.intn(30)) / 100
	b := p[24:24]
	var lineBuf [256]byte
	for row := uint64(0); ; row++ {
		line := strconv.AppendUint(lineBuf[:0], page*128+row, 10)
		line = append(line, "|page "...)
		line = strconv.AppendUint(line, page, 10)
		line = append(line, "|acct "...)
		line = strconv.AppendInt(line, int64(r.intn(10_000_000)), 10)
		line = append(line, "|branch "...)
		line = strconv.AppendInt(line, int64(r.intn(100)), 10)
		line = append(line, "|bal "...)
		line = strconv.AppendInt(line, int64(r.intn(2_000_000))-1_000_000, 10)
		line = append(line, "|ts 2026-"...)
		line = appendPadded(line, 1+r.intn(12))
		line = append(line, '-')
		line = appendPadded(line, 1+r.intn(28))
		line = append(line, ' ')
		line = appendPadded(line, r.intn(24))
		line = append(line, ':')
		line = appendPadded(line, r.intn(60))
		line = append(line, ':')
		line = appendPadded(line, r.intn(60))
		line = append(line, '|')
		for n := 2 + r.intn(5); n > 0; n-- {
			line = append(line, words[r.intn(len(words))]...)
			line = append(line, ' ')
		}
		line[len(line)-1] = '\n'
		if 24+len(b)+len(line) > fill {
			break
		}
		b = append(b, line...)
	}
	binary.LittleEndian.PutUint16(p[12:], uint16(24+len(b)))
	binary.LittleEndian.PutUint16(p[14:], uint16(pageSize))
}

func appendPadded(b []byte, n int) []byte {
	if n < 10 {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, int64(n), 10)
}

// randomPage fills p with incompressible bytes for page number page.
func randomPage(p []byte, seed, page uint64) {
	r := newRNG(seed, page, 0x72616e646f6d)
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.next())
	}
	for i := len(p) &^ 7; i < len(p); i++ {
		p[i] = byte(r.next())
	}
}

func dbfileCmd(args []string) error {
	fs := flag.NewFlagSet("dbfile", flag.ExitOnError)
	size := fs.Int64("size", 0, "file size in bytes, a multiple of 8192")
	seed := fs.Uint64("seed", 1, "seed")
	fs.Parse(args)
	if fs.NArg() != 1 || *size <= 0 || *size%pageSize != 0 {
		return errors.New("want -size (a positive multiple of 8192) and one FILE")
	}
	f, err := os.Create(fs.Arg(0))
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	p := make([]byte, pageSize)
	for page := uint64(0); page < uint64(*size/pageSize); page++ {
		dbPage(p, *seed, page, 1)
		if _, err := bw.Write(p); err != nil {
			f.Close()
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// unit is one region that may be rewritten: a page of a file.
type unit struct {
	path   string
	offset int64
	length int
}

func changeCmd(args []string) error {
	fs := flag.NewFlagSet("change", flag.ExitOnError)
	seed := fs.Uint64("seed", 1, "seed")
	percent := fs.Float64("percent", 1, "percentage of pages (or files) to rewrite")
	unitKind := fs.String("unit", "pages", "pages: P% of all 8 KiB pages; files: the first page of P% of the files")
	content := fs.String("content", "random", "random: incompressible bytes; dbfile: the page as a later version of the dbfile generator writes it (needs -dbseed)")
	dbseed := fs.Uint64("dbseed", 1, "seed the dbfile was made with")
	undoPath := fs.String("undo", "", "file to save the original bytes to (required, must not exist)")
	list := fs.String("list", "", "file naming the files to change, one a line (required)")
	fs.Parse(args)
	if *undoPath == "" || *list == "" || fs.NArg() != 0 || *percent <= 0 || *percent > 100 {
		return errors.New("want -undo UNDO -list LIST and 0 < -percent <= 100")
	}
	if *content != "random" && *content != "dbfile" {
		return fmt.Errorf("-content %q: want random or dbfile", *content)
	}
	paths, err := readList(*list)
	if err != nil {
		return err
	}
	// Count the candidates without holding them all: a 2 GiB file has
	// 262144 pages, a big data set many more.
	type file struct {
		path  string
		size  int64
		first int64 // index of its first unit
	}
	var files []file
	var total int64
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() || st.Size() == 0 {
			continue
		}
		n := int64(1)
		if *unitKind == "pages" {
			n = st.Size() / pageSize // a partial last page is never changed
		} else if *unitKind != "files" {
			return fmt.Errorf("-unit %q: want pages or files", *unitKind)
		}
		files = append(files, file{p, st.Size(), total})
		total += n
	}
	if total == 0 {
		return errors.New("no pages to change in the listed files")
	}
	k := int64(float64(total)**percent/100 + 0.5)
	k = max(1, min(k, total))
	// Floyd's algorithm: k distinct indices in [0, total), uniformly.
	r := newRNG(*seed, uint64(total), uint64(k))
	chosen := make(map[int64]bool, k)
	for j := total - k; j < total; j++ {
		t := int64(r.next() % uint64(j+1))
		if chosen[t] {
			t = j
		}
		chosen[t] = true
	}
	picks := make([]int64, 0, k)
	for i := range chosen {
		picks = append(picks, i)
	}
	slices.Sort(picks)
	units := make([]unit, 0, k)
	fi := 0
	for _, idx := range picks {
		for fi+1 < len(files) && files[fi+1].first <= idx {
			fi++
		}
		f := files[fi]
		if *unitKind == "pages" {
			units = append(units, unit{f.path, (idx - f.first) * pageSize, pageSize})
		} else {
			units = append(units, unit{f.path, 0, int(min(f.size, pageSize))})
		}
	}
	if err := saveUndo(*undoPath, units); err != nil {
		return fmt.Errorf("save originals to %s: %w", *undoPath, err)
	}
	var bytes int64
	nfiles := 0
	buf := make([]byte, pageSize)
	err = forEachFile(units, func(f *os.File, us []unit) error {
		nfiles++
		for _, u := range us {
			p := buf[:u.length]
			if *content == "dbfile" {
				dbPage(p, *dbseed, uint64(u.offset/pageSize), 2)
			} else {
				randomPage(p, *seed, uint64(u.offset/pageSize)^hashString(u.path))
			}
			if _, err := f.WriteAt(p, u.offset); err != nil {
				return err
			}
			bytes += int64(u.length)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("pages=%d bytes=%d files=%d\n", len(units), bytes, nfiles)
	return nil
}

func hashString(s string) uint64 {
	h := uint64(0xcbf29ce484222325) // FNV-1a
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}

func readList(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}

// forEachFile opens each file of units (sorted by path, then offset) for
// writing, calls fn with its units, and syncs and closes it.
func forEachFile(units []unit, fn func(*os.File, []unit) error) error {
	for i := 0; i < len(units); {
		j := i
		for j < len(units) && units[j].path == units[i].path {
			j++
		}
		f, err := os.OpenFile(units[i].path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = fn(f, units[i:j])
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", units[i].path, err)
		}
		i = j
	}
	return nil
}

const undoMagic = "benchdata-undo-1\n"

// saveUndo writes the current bytes of every unit to path and syncs it:
// magic, then per unit uint32 path length, path, int64 offset, uint32
// length and the bytes (little-endian).
func saveUndo(path string, units []unit) (err error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriter(out)
	bw.WriteString(undoMagic)
	buf := make([]byte, pageSize)
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for _, u := range units {
		if f == nil || f.Name() != u.path {
			if f != nil {
				f.Close()
			}
			if f, err = os.Open(u.path); err != nil {
				return err
			}
		}
		p := buf[:u.length]
		if _, err := f.ReadAt(p, u.offset); err != nil {
			return fmt.Errorf("%s: %w", u.path, err)
		}
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], uint32(len(u.path)))
		bw.Write(hdr[:])
		bw.WriteString(u.path)
		var pos [12]byte
		binary.LittleEndian.PutUint64(pos[0:], uint64(u.offset))
		binary.LittleEndian.PutUint32(pos[8:], uint32(u.length))
		bw.Write(pos[:])
		bw.Write(p)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Sync()
}

func undoCmd(args []string) error {
	if len(args) != 1 {
		return errors.New("want one UNDO file")
	}
	in, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer in.Close()
	br := bufio.NewReader(in)
	magic := make([]byte, len(undoMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != undoMagic {
		return fmt.Errorf("%s: not an undo file", args[0])
	}
	var units []unit
	var data [][]byte
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("%s: truncated: %w", args[0], err)
		}
		rec := make([]byte, binary.LittleEndian.Uint32(hdr[:])+12)
		if _, err := io.ReadFull(br, rec); err != nil {
			return fmt.Errorf("%s: truncated: %w", args[0], err)
		}
		n := len(rec) - 12
		u := unit{
			path:   string(rec[:n]),
			offset: int64(binary.LittleEndian.Uint64(rec[n:])),
			length: int(binary.LittleEndian.Uint32(rec[n+8:])),
		}
		p := make([]byte, u.length)
		if _, err := io.ReadFull(br, p); err != nil {
			return fmt.Errorf("%s: truncated: %w", args[0], err)
		}
		units = append(units, u)
		data = append(data, p)
	}
	k := 0
	err = forEachFile(units, func(f *os.File, us []unit) error {
		for range us {
			if _, err := f.WriteAt(data[k], units[k].offset); err != nil {
				return err
			}
			k++
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("pages=%d\n", len(units))
	return nil
}
