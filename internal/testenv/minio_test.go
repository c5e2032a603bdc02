package testenv

import (
	"net"
	"net/http"
	"testing"
	"time"
)

func TestMinIO(t *testing.T) {
	var endpoint string
	t.Run("serve", func(t *testing.T) {
		var access, secret string
		endpoint, access, secret = MinIO(t)
		if access == "" || len(secret) < 8 {
			t.Errorf("MinIO credentials %q/%q: want a user and a password of at least 8 characters", access, secret)
		}
		// Anonymous requests reach the S3 API and are refused.
		resp, err := http.Get("http://" + endpoint + "/")
		if err != nil {
			t.Fatalf("GET / on %s: %v", endpoint, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("anonymous GET / on %s: got status %d, want %d", endpoint, resp.StatusCode, http.StatusForbidden)
		}
		other, otherAccess, _ := MinIO(t)
		if other == endpoint || otherAccess == access {
			t.Errorf("second MinIO: got %s user %s, same as the first; want a server of its own", other, otherAccess)
		}
	})
	if endpoint == "" {
		return // skipped
	}
	// The subtest's clean-up has stopped the server.
	conn, err := net.DialTimeout("tcp", endpoint, time.Second)
	if err == nil {
		_ = conn.Close()
		t.Errorf("MinIO at %s still accepts connections after its test ended", endpoint)
	}
}

func TestMinIOSkipsWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("GOPATH", t.TempDir())
	var skipped bool
	t.Run("inner", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		MinIO(t)
	})
	if !skipped {
		t.Errorf("MinIO without a minio binary: test went on, want it skipped")
	}
}
