package mounts

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/umbra-backup/umbra/internal/provider"
	"github.com/umbra-backup/umbra/internal/testenv"
)

const fixture = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 27 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 27 0:45 / /srv/my\040data ro,relatime shared:7 - btrfs /dev/mapper/vg-my\134data rw,space_cache=v2,subvolid=5,subvol=/
41 40 0:46 / /srv/my\040data/sub rw,relatime - xfs /dev/sdb1 ro,attr2
42 27 0:47 / /srv/mydata2 rw - tmpfs tmpfs rw

43 27 0:48 / /srv/mydata2 rw - xfs /dev/sdc1 rw
`

func TestParse(t *testing.T) {
	got, err := parse(strings.NewReader(fixture))
	if err != nil {
		t.Fatal(err)
	}
	want := []provider.Volume{
		{Mount: "/proc", Device: "proc", FSType: "proc"},
		{Mount: "/", Device: "/dev/vda", FSType: "ext4"},
		{Mount: "/mnt/parent", Device: "/dev/root", FSType: "ext3"},
		{Mount: "/srv/my data", Device: `/dev/mapper/vg-my\data`, FSType: "btrfs", ReadOnly: true},
		{Mount: "/srv/my data/sub", Device: "/dev/sdb1", FSType: "xfs", ReadOnly: true},
		{Mount: "/srv/mydata2", Device: "tmpfs", FSType: "tmpfs"},
		{Mount: "/srv/mydata2", Device: "/dev/sdc1", FSType: "xfs"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parse(fixture) mismatch (-want +got):\n%s", diff)
	}
}

func TestParseMalformed(t *testing.T) {
	for _, line := range []string{
		"22 27 0:21 / /proc rw,relatime proc proc rw",
		"22 27 0:21 / /proc rw - proc",
		"22 27 - proc proc rw",
	} {
		if got, err := parse(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("parse(%q) = %v, nil; want error", line, got)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:         "/plain",
		`/a\040b`:        "/a b",
		`/tab\011nl\012`: "/tab\tnl\n",
		`/back\134slash`: `/back\slash`,
		`/short\04`:      `/short\04`,
		`/not\999octal`:  `/not\999octal`,
		`\040\040`:       "  ",
		`/trailing\`:     `/trailing\`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVolumeOf(t *testing.T) {
	// Build a tree that mirrors the table's mount points under a temp dir.
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"srv/data/sub/deep", "srv/data2", "srv/other", "link-target"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "srv/data/sub/deep/file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "srv/data/sub"), filepath.Join(root, "srv/other/link")); err != nil {
		t.Fatal(err)
	}
	table := []provider.Volume{
		{Mount: "/", Device: "/dev/vda", FSType: "ext4"},
		{Mount: root + "/srv/data", Device: "/dev/sda", FSType: "btrfs"},
		{Mount: root + "/srv/data/sub", Device: "/dev/sdb", FSType: "xfs"},
		{Mount: root + "/srv/data/sub", Device: "/dev/sdc", FSType: "xfs"}, // over-mounts the one above
	}
	for _, tc := range []struct {
		path string
		want string // Device
	}{
		{root + "/srv/data", "/dev/sda"},
		{root + "/srv/data/", "/dev/sda"},
		{root + "/srv/data2", "/dev/vda"}, // not under /srv/data: component boundary
		{root + "/srv/data/sub/deep/file", "/dev/sdc"},
		{root + "/srv/data/sub", "/dev/sdc"},
		{root + "/srv/other/link/deep", "/dev/sdc"}, // through a symlink
		{root + "/srv/data/../other", "/dev/vda"},
		{root, "/dev/vda"},
	} {
		got, err := VolumeOf(table, tc.path)
		if err != nil {
			t.Errorf("VolumeOf(%s): %v", tc.path, err)
			continue
		}
		if got.Device != tc.want {
			t.Errorf("VolumeOf(%s) = %+v, want device %s", tc.path, got, tc.want)
		}
	}

	t.Run("relative", func(t *testing.T) {
		t.Chdir(filepath.Join(root, "srv/data"))
		got, err := VolumeOf(table, "sub/deep")
		if err != nil || got.Device != "/dev/sdc" {
			t.Errorf("VolumeOf(sub/deep) in %s/srv/data = %+v, %v; want device /dev/sdc", root, got, err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(root, "srv/data/nope")
		_, err := VolumeOf(table, path)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("VolumeOf(%s) = %v, want fs.ErrNotExist", path, err)
		}
		if want := "path " + path + ": no such file or directory"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("VolumeOf(%s) error %q, want prefix %q", path, err, want)
		}
	})

	t.Run("no mount", func(t *testing.T) {
		if got, err := VolumeOf(table[1:2], root); err == nil {
			t.Errorf("VolumeOf(%s) with only %s mounted = %+v, want error", root, table[1].Mount, got)
		}
	})
}

func TestTable(t *testing.T) {
	table, err := Table()
	if err != nil {
		t.Fatal(err)
	}
	root, err := VolumeOf(table, "/")
	if err != nil {
		t.Fatal(err)
	}
	if root.Mount != "/" || root.FSType == "" {
		t.Errorf("VolumeOf(/) = %+v, want mount / with a type", root)
	}

	t.Run("loop", func(t *testing.T) {
		lfs := testenv.Btrfs(t)
		dir := filepath.Join(lfs.Mount, "a dir")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		table, err := Table()
		if err != nil {
			t.Fatal(err)
		}
		got, err := VolumeOf(table, dir)
		if err != nil {
			t.Fatal(err)
		}
		want := provider.Volume{Mount: lfs.Mount, Device: lfs.Device, FSType: "btrfs"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("VolumeOf(%s) mismatch (-want +got):\n%s", dir, diff)
		}
	})
}
