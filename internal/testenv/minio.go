package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// minioStartLimit bounds how long MinIO may take to answer its health check.
const minioStartLimit = 30 * time.Second

// MinIO starts a private MinIO server for the test and returns its endpoint
// (host:port on 127.0.0.1, plain HTTP) and random root credentials, once the
// server answers its health checks (at most 30s, else the test fails with
// the server's output). The server keeps its data in t.TempDir and is
// stopped by t.Cleanup (SIGTERM, then SIGKILL after 10s). Every call starts its own server: one starts in well under
// a second, and no test can see another's buckets.
//
// It skips the test unless a minio binary is on PATH or in $GOPATH/bin;
// scripts/test.sh installs it there.
func MinIO(t testing.TB) (endpoint, accessKey, secretKey string) {
	t.Helper()
	s := StartMinIO(t)
	return s.Endpoint, s.AccessKey, s.SecretKey
}

// MinIOServer is a private MinIO server that a test can stop and start
// again, on the same address with the same data: a store that goes away in
// the middle of a backup.
type MinIOServer struct {
	Endpoint, AccessKey, SecretKey string

	bin, home string
	stop      func()
}

// StartMinIO is MinIO, returning the server.
func StartMinIO(t testing.TB) *MinIOServer {
	t.Helper()
	bin := minioBinary()
	if bin == "" {
		t.Skip("needs the minio server; scripts/test.sh installs it with go install")
	}
	s := &MinIOServer{AccessKey: "umbra-" + randomHex(t, 6), SecretKey: randomHex(t, 20), bin: bin}
	// The free port is found by binding and releasing it, so another
	// process may take it first; a few tries make that harmless.
	var lastErr error
	for range 3 {
		addr, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoint, s.home = addr, t.TempDir()
		if lastErr = s.start(t); lastErr == nil {
			return s
		}
		if !errors.Is(lastErr, errPortTaken) {
			break
		}
	}
	t.Fatalf("start minio: %v", lastErr)
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 10s) and waits for it.
func (s *MinIOServer) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Start starts the stopped server again, on its address with its data,
// and returns once it is healthy.
func (s *MinIOServer) Start(t testing.TB) {
	t.Helper()
	if err := s.start(t); err != nil {
		t.Fatalf("start minio again: %v", err)
	}
}

var errPortTaken = errors.New("port taken")

// minioBinary finds the server on PATH or in the first $GOPATH/bin, where
// go install puts it.
func minioBinary() string {
	if p, err := exec.LookPath("minio"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	if list := filepath.SplitList(gopath); len(list) > 0 {
		p := filepath.Join(list[0], "bin", "minio")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func (s *MinIOServer) start(t testing.TB) error {
	t.Helper()
	bin, addr, home, accessKey, secretKey := s.bin, s.Endpoint, s.home, s.AccessKey, s.SecretKey
	cmd := exec.Command(bin, "server",
		"--address", addr,
		"--certs-dir", filepath.Join(home, "certs"),
		"--quiet",
		filepath.Join(home, "data"))
	cmd.Env = append(os.Environ(),
		"HOME="+home, // MinIO makes ~/.minio; keep it private
		"MINIO_ROOT_USER="+accessKey,
		"MINIO_ROOT_PASSWORD="+secretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	out := &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return
		case <-time.After(10 * time.Second):
		}
		_ = cmd.Process.Kill()
		<-exited
	}

	// Live means the process serves HTTP; the cluster check passes only
	// once the object layer, IAM and bucket metadata are up, before which
	// S3 requests fail with "Server not initialized yet".
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + addr + "/minio/health/live"
	deadline := time.Now().Add(minioStartLimit)
	for {
		select {
		case <-exited:
			if strings.Contains(out.String(), "address already in use") {
				return fmt.Errorf("%s: %w", addr, errPortTaken)
			}
			return fmt.Errorf("minio exited before answering on %s: %v\n%s", addr, waitErr, out)
		default:
		}
		if healthy(client, url) && healthy(client, "http://"+addr+"/minio/health/cluster") {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("minio on %s not healthy within %v:\n%s", addr, minioStartLimit, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop = stop
	t.Cleanup(func() {
		stop()
		if t.Failed() && out.String() != "" {
			t.Logf("minio output:\n%s", out)
		}
	})
	return nil
}

func healthy(client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random credentials: %v", err)
	}
	return hex.EncodeToString(b)
}
