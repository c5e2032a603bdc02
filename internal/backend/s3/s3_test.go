package s3

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/backendtest"
	"github.com/umbra-backup/umbra/internal/testenv"
)

// server is a private MinIO that hands out fresh buckets.
type server struct {
	cfg     Config // without bucket
	buckets atomic.Int64
}

func newServer(t *testing.T) *server {
	t.Helper()
	endpoint, access, secret := testenv.MinIO(t)
	return &server{cfg: Config{Endpoint: endpoint, AccessKey: access, SecretKey: secret, Insecure: true}}
}

// config names a bucket no test has used.
func (s *server) config(prefix string) Config {
	cfg := s.cfg
	cfg.Bucket = fmt.Sprintf("umbra-test-%d", s.buckets.Add(1))
	cfg.Prefix = prefix
	return cfg
}

func (s *server) create(t *testing.T, prefix string) *Backend {
	t.Helper()
	be, err := Create(t.Context(), s.config(prefix))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return be
}

func TestBackend(t *testing.T) {
	srv := newServer(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend { return srv.create(t, "") })
}

func TestBackendPrefix(t *testing.T) {
	srv := newServer(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend { return srv.create(t, "some/prefix") })
}

// TestLayout checks the object keys, and that repositories under different
// prefixes of one bucket do not see each other.
func TestLayout(t *testing.T) {
	srv := newServer(t)
	ctx := t.Context()
	cfg := srv.config("")
	root, err := Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Prefix = "repos/a"
	nested, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.Repeat("ab", 32)
	for _, h := range []backend.Handle{
		{Type: backend.TypeConfig, Name: "config"},
		{Type: backend.TypeKey, Name: id},
		{Type: backend.TypePack, Name: id},
		{Type: backend.TypePack, Name: "z"},
		{Type: backend.TypeIndex, Name: id},
		{Type: backend.TypeManifest, Name: id},
		{Type: backend.TypeLock, Name: id},
		{Type: backend.TypeMark, Name: id},
		{Type: backend.TypeWAL, Name: "000000010000000000000001"},
		{Type: backend.TypeVerification, Name: id},
	} {
		for _, be := range []*Backend{root, nested} {
			if err := be.Save(ctx, h, 1, strings.NewReader("x")); err != nil {
				t.Fatalf("save %s in %s: %v", h, be.Location(), err)
			}
		}
	}
	var keys []string
	for obj := range root.client.ListObjectsIter(ctx, cfg.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	var want []string
	for _, p := range []string{"", "repos/a/"} {
		want = append(want, p+"config", p+"keys/"+id, p+"data/ab/"+id, p+"data/z/z",
			p+"index/"+id, p+"manifests/"+id, p+"locks/"+id, p+"marks/"+id, p+"wal/000000010000000000000001",
			p+"verifications/"+id)
	}
	slices.Sort(keys)
	slices.Sort(want)
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("object keys -want +got:\n%s", diff)
	}
	// The root repository's listing does not reach into repos/a, whose
	// keys do not fit its layout.
	for _, typ := range backend.Types {
		n := 0
		if err := root.List(ctx, typ, func(backend.FileInfo) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		want := 1
		if typ == backend.TypePack {
			want = 2
		}
		if n != want {
			t.Errorf("list %s at the bucket's root: got %d files, want %d", typ, n, want)
		}
	}
}

func TestCreate(t *testing.T) {
	srv := newServer(t)
	ctx := t.Context()
	cfg := srv.config("x")
	be, err := Create(ctx, cfg)
	if err != nil {
		t.Fatalf("create with a new bucket: %v", err)
	}
	// Nothing saved yet: creating again is fine.
	if _, err := Create(ctx, cfg); err != nil {
		t.Errorf("create over an empty prefix: %v", err)
	}
	if err := be.Save(ctx, backend.Handle{Type: backend.TypeConfig, Name: "config"}, 1, strings.NewReader("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, cfg); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "x/config") {
		t.Errorf("create over a repository: got %v, want an error wrapping fs.ErrExist naming x/config", err)
	}
	other := cfg
	other.Prefix = "y"
	if _, err := Create(ctx, other); err != nil {
		t.Errorf("create under another prefix of the bucket: %v", err)
	}
	other.Prefix = ""
	if _, err := Create(ctx, other); !errors.Is(err, fs.ErrExist) {
		t.Errorf("create at the root of a bucket holding a repository: got %v, want fs.ErrExist", err)
	}
}

func TestOpenErrors(t *testing.T) {
	srv := newServer(t)
	ctx := t.Context()
	good := srv.config("")
	if _, err := Create(ctx, good); err != nil {
		t.Fatal(err)
	}

	missing := srv.config("")
	_, err := Open(ctx, missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), fmt.Sprintf("bucket %q does not exist", missing.Bucket)) ||
		!strings.Contains(err.Error(), "create the repository") {
		t.Errorf("open with a missing bucket: got %v, want an error wrapping fs.ErrNotExist naming the bucket and the fix", err)
	}

	for name, cfg := range map[string]Config{
		"WrongSecret": {Endpoint: good.Endpoint, Bucket: good.Bucket, Insecure: true, AccessKey: good.AccessKey, SecretKey: "wrong-secret-123"},
		"UnknownKey":  {Endpoint: good.Endpoint, Bucket: good.Bucket, Insecure: true, AccessKey: "nobody", SecretKey: "wrong-secret-123"},
	} {
		t.Run(name, func(t *testing.T) {
			be, err := Open(ctx, cfg)
			if err == nil {
				_ = be.Close()
				t.Fatalf("open with %s: got no error", name)
			}
			msg := err.Error()
			if !strings.Contains(msg, "AWS_ACCESS_KEY_ID") || !strings.Contains(msg, cfg.Bucket) {
				t.Errorf("open with %s: got %q, want it to name the bucket and point at AWS_ACCESS_KEY_ID", name, msg)
			}
			if strings.Contains(msg, cfg.SecretKey) {
				t.Errorf("open with %s: error %q shows the secret key", name, msg)
			}
		})
	}

	noCreds := good
	noCreds.AccessKey, noCreds.SecretKey = "", ""
	if _, err := Open(ctx, noCreds); err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("open without credentials: got %v, want an error pointing at the environment variables", err)
	}

	be, err := Open(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if loc := be.Location(); strings.Contains(loc, good.SecretKey) || strings.Contains(loc, good.AccessKey) {
		t.Errorf("Location %q shows credentials", loc)
	}
}

// TestConditionalFallback puts a proxy in front of MinIO that refuses
// If-None-Match on PUT as some stores do, with 501 Not Implemented.
func TestConditionalFallback(t *testing.T) {
	srv := newServer(t)
	ctx := t.Context()
	target, err := url.Parse("http://" + srv.cfg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.Header.Get("If-None-Match") != "" {
			refused.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	cfg := srv.config("")
	if _, err := Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Endpoint = strings.TrimPrefix(front.URL, "http://")

	// A seekable reader is sent again without the condition.
	be, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := backend.Handle{Type: backend.TypeIndex, Name: "a1"}
	content := bytes.Repeat([]byte("umbra"), 1000)
	if err := be.Save(ctx, h, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatalf("save through a server without conditional writes: %v", err)
	}
	rd, err := be.Load(ctx, h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	_ = rd.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Errorf("load after the fallback: got %d bytes, %v; want the %d saved", len(got), err, len(content))
	}
	if err := be.Save(ctx, h, 1, strings.NewReader("y")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("save existing without conditional writes: got %v, want fs.ErrExist", err)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("conditional PUTs sent: got %d, want 1 before the backend stopped trying", n)
	}

	// Found out when the backend opens: a reader that cannot be rewound
	// is sent once, without the condition.
	refused.Store(0)
	be, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if be.ConditionalWrites() {
		t.Error("a server that refuses conditional writes is believed to honour them")
	}
	h.Name = "a2"
	if err := be.Save(ctx, h, 3, io.MultiReader(strings.NewReader("abc"))); err != nil {
		t.Errorf("save of an unseekable reader: %v", err)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("conditional PUTs sent: got %d, want 1 (the probe)", n)
	}
}

// TestConditionalIgnored: a server that answers a conditional PUT of an
// existing name by replacing it is found out when the backend opens; one
// that honours the condition (MinIO) is believed.
func TestConditionalIgnored(t *testing.T) {
	srv := newServer(t)
	ctx := t.Context()
	cfg := srv.config("p")
	if _, err := Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	be, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !be.ConditionalWrites() {
		t.Error("MinIO honours If-None-Match, but the backend does not believe it")
	}
	target, err := url.Parse("http://" + srv.cfg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	// In front of MinIO, a server that lets a conditional PUT replace.
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method == http.MethodPut && r.StatusCode == http.StatusPreconditionFailed {
			r.StatusCode, r.Status = http.StatusOK, "200 OK"
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("")), 0
			r.Header.Del("Content-Length")
			r.Header.Set("ETag", `"0"`)
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	cfg.Endpoint = strings.TrimPrefix(front.URL, "http://")
	be, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if be.ConditionalWrites() {
		t.Error("a server that ignores If-None-Match is believed to honour it")
	}
	var leftover []string
	for obj := range be.client.ListObjectsIter(ctx, cfg.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		leftover = append(leftover, obj.Key)
	}
	if len(leftover) != 0 {
		t.Errorf("the probe left %v behind", leftover)
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Config
	}{
		{"s3:https://host:9000/bucket/some/prefix", Config{Endpoint: "host:9000", Bucket: "bucket", Prefix: "some/prefix"}},
		{"s3:http://127.0.0.1:9000/bucket", Config{Endpoint: "127.0.0.1:9000", Bucket: "bucket", Insecure: true}},
		{"s3:http://127.0.0.1:9000/bucket/", Config{Endpoint: "127.0.0.1:9000", Bucket: "bucket", Insecure: true}},
		{"s3:https://s3.amazonaws.com/my-bucket/p/", Config{Endpoint: "s3.amazonaws.com", Bucket: "my-bucket", Prefix: "p"}},
		{"s3:s3.example.org/bucket.v2/x", Config{Endpoint: "s3.example.org", Bucket: "bucket.v2", Prefix: "x"}},
		{"s3:https://[::1]:9000/bucket", Config{Endpoint: "[::1]:9000", Bucket: "bucket"}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseURL(tc.in)
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tc.in, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseURL(%q) -want +got:\n%s", tc.in, diff)
			}
			back, err := ParseURL(got.Location())
			if err != nil || back != got {
				t.Errorf("ParseURL(%q) of its Location %q: got %+v, %v; want %+v", tc.in, got.Location(), back, err, got)
			}
		})
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"https://host/bucket", "want s3:"},
		{"s3:", "no host"},
		{"s3:https://host", "no bucket"},
		{"s3:https://host/", "no bucket"},
		{"s3:ftp://host/bucket", "scheme must be http or https"},
		{"s3:https://key:secret@host/bucket", "AWS_ACCESS_KEY_ID"},
		{"s3:https://host/bucket?region=x", "query"},
		{"s3:https://host/Bucket_Name", "invalid bucket name"},
		{"s3:https://host/bucket//p", "invalid prefix"},
		{"s3:https://host/bucket/a/../b", "invalid prefix"},
		{"s3:https://host/bucket/./b", "invalid prefix"},
		{"s3:https://:9000/bucket", "no host"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseURL(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseURL(%q): got %+v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q): error %q shows the password", tc.in, err)
			}
		})
	}
}
