package process

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCredentialHasSupplementaryGroups: a server started as its user gets
// the groups a login would (Debian's postgres is in ssl-cert, to read its
// TLS key), as id -G lists them.
func TestCredentialHasSupplementaryGroups(t *testing.T) {
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("needs the postgres user (Debian's postgresql package): %v", err)
	}
	out, err := exec.Command("id", "-G", "postgres").Output()
	if err != nil {
		t.Skipf("id -G postgres: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c := Credential(uid, gid)
	for _, g := range strings.Fields(string(out)) {
		n, _ := strconv.ParseUint(g, 10, 32)
		if !slices.Contains(c.Groups, uint32(n)) && uint32(n) != c.Gid {
			t.Errorf("credential %+v lacks group %s of id -G postgres (%s)", c, g, strings.TrimSpace(string(out)))
		}
	}
}

// TestNamed: this test binary is itself, and is not a database server; a
// process that is gone is nothing.
func TestNamed(t *testing.T) {
	self := filepath.Base(os.Args[0])
	if !Named(os.Getpid(), self) {
		t.Errorf("Named(self, %q) = false", self)
	}
	if Named(os.Getpid(), "mariadbd", "redis-server") {
		t.Error("the test binary taken for a database server")
	}
	if Named(1<<22+1, self) {
		t.Error("a pid that does not exist named something")
	}
}
