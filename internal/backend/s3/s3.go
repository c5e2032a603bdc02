// Package s3 stores a repository's files in a bucket of any S3-compatible
// object store (AWS S3, MinIO, Ceph RGW, ...), through minio-go.
//
// Object keys mirror the local backend's layout under an optional prefix,
// so that a local repository copied into a bucket (or back) stays readable:
//
//	<prefix>/config
//	<prefix>/keys/<name>
//	<prefix>/data/<first two chars of name>/<name>
//	<prefix>/index/<name>
//	<prefix>/manifests/<name>
//	<prefix>/locks/<name>
//
// An S3 PUT is atomic: an object is visible complete or not at all, and a
// PUT whose body ends early or fails is discarded by the server. Save sends
// one PUT of exactly the declared size and withholds the last bytes if the
// reader turns out to be longer, so a wrong size never stores anything.
//
// No-overwrite: Save of a non-lock file first asks whether the object
// exists (HEAD), then sends a conditional PUT (If-None-Match: *), which the
// server refuses if another writer stored the name in between. A server that
// answers the condition with 501 Not Implemented makes the backend fall back,
// for the rest of its life, to the HEAD alone: two writers saving the same
// name at the same moment may then both succeed, the later one replacing the
// earlier. The repository above makes that harmless for content-addressed
// files (both wrote the same bytes) and unlikely for the others (random
// names). A server that silently ignores the condition is found out when
// the backend opens (a probe object stored twice) and treated the same way;
// the repository's correctness never rests on the condition (see
// docs/repository.md, locks and marks).
// AWS answers a conditional PUT that races another one for the same name with
// 409 ConditionalRequestConflict; Save returns that as an ordinary error, and
// saving again succeeds or reports fs.ErrExist.
//
// Remove likewise asks first, because S3 deletes of missing objects succeed;
// two concurrent Removes of one file may both report success.
//
// Save reads its reader once, so the client does not retry a failed PUT on
// its own (it does retry the other requests); the caller decides whether to
// save again. Files up to 5 GiB go in one PUT, streamed without buffering;
// larger ones in a multipart upload, which is atomic on completion too.
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/umbra-backup/umbra/internal/backend"
)

// Config says where a repository lives and how to reach it.
type Config struct {
	Endpoint  string // host or host:port, without scheme
	Bucket    string
	Prefix    string // key prefix inside the bucket, without leading or trailing '/'; may be empty
	AccessKey string
	SecretKey string
	Region    string // empty lets the client ask the server
	Insecure  bool   // http instead of https
}

// ParseURL parses a repository URL:
//
//	s3:https://host[:port]/bucket[/prefix/...]
//	s3:http://127.0.0.1:9000/bucket
//	s3:host[:port]/bucket[/prefix/...]   (https)
//
// The URL carries no credentials: the caller reads them from the environment
// (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the optional
// AWS_DEFAULT_REGION) into Config.AccessKey, SecretKey and Region, so that
// they stay out of shell histories, process lists and Location.
func ParseURL(s string) (Config, error) {
	rest, ok := strings.CutPrefix(s, "s3:")
	if !ok {
		return Config{}, fmt.Errorf("s3 repository URL %q: want s3:https://host/bucket[/prefix]", s)
	}
	insecure := false
	switch {
	case strings.HasPrefix(rest, "https://"):
	case strings.HasPrefix(rest, "http://"):
		insecure = true
	case strings.Contains(rest, "://"):
		return Config{}, fmt.Errorf("s3 repository URL %q: scheme must be http or https", s)
	default:
		rest = "https://" + rest
	}
	u, err := url.Parse(rest)
	if err != nil {
		return Config{}, fmt.Errorf("s3 repository URL %q: %w", s, err)
	}
	if u.User != nil {
		return Config{}, fmt.Errorf("s3 repository URL %q: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", redact(s))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Config{}, fmt.Errorf("s3 repository URL %q: unexpected query or fragment", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Config{}, fmt.Errorf("s3 repository URL %q: no host", s)
	}
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if bucket == "" {
		return Config{}, fmt.Errorf("s3 repository URL %q: no bucket; want s3:https://host/bucket[/prefix]", s)
	}
	cfg := Config{
		Endpoint: u.Host,
		Bucket:   bucket,
		Prefix:   strings.TrimSuffix(prefix, "/"),
		Insecure: insecure,
	}
	if err := cfg.check(); err != nil {
		return Config{}, fmt.Errorf("s3 repository URL %q: %w", s, err)
	}
	return cfg, nil
}

// redact hides the password of a URL someone wrote credentials into.
func redact(s string) string {
	if at := strings.LastIndex(s, "@"); at >= 0 {
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			return s[:i+3] + "REDACTED" + s[at:]
		}
	}
	return s
}

// check validates the parts of c that name the location.
func (c Config) check() error {
	if c.Endpoint == "" || strings.ContainsAny(c.Endpoint, "/?#@") {
		return fmt.Errorf("invalid endpoint %q: want host or host:port", c.Endpoint)
	}
	if err := s3utils.CheckValidBucketNameStrict(c.Bucket); err != nil {
		return fmt.Errorf("invalid bucket name %q: %w", c.Bucket, err)
	}
	if c.Prefix != "" {
		if strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") || path.Clean(c.Prefix) != c.Prefix ||
			c.Prefix == "." || c.Prefix == ".." || strings.HasPrefix(c.Prefix, "../") {
			return fmt.Errorf("invalid prefix %q: want a clean path like \"a/b\"", c.Prefix)
		}
	}
	return nil
}

// Location is the repository URL, which ParseURL reads back.
func (c Config) Location() string {
	scheme := "https"
	if c.Insecure {
		scheme = "http"
	}
	loc := "s3:" + scheme + "://" + c.Endpoint + "/" + c.Bucket
	if c.Prefix != "" {
		loc += "/" + c.Prefix
	}
	return loc
}

// Backend is a repository in an S3 bucket.
type Backend struct {
	cfg       Config
	client    *minio.Client
	core      minio.Core // same client, for ranged GETs that report errors at once
	transport *http.Transport
	// conditional is set while the server is believed to honour
	// If-None-Match on PUT.
	conditional atomic.Bool
}

var _ backend.Backend = (*Backend)(nil)

// Open connects to the repository cfg names. It fails, saying what to do, if
// the bucket does not exist (wrapping fs.ErrNotExist) or the credentials are
// refused.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := connect(cfg)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", cfg.Location(), err)
	}
	ok, err := b.client.BucketExists(ctx, cfg.Bucket)
	if err == nil && !ok {
		err = fmt.Errorf("bucket %q does not exist on %s; create the repository first, or check the bucket name: %w",
			cfg.Bucket, cfg.Endpoint, fs.ErrNotExist)
	}
	if err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("open repository %s: %w", cfg.Location(), b.explain(err))
	}
	b.probeConditional(ctx)
	return b, nil
}

// ConditionalWrites reports whether the server is believed to honour
// If-None-Match on PUT.
func (b *Backend) ConditionalWrites() bool { return b.conditional.Load() }

// probeConditional finds out whether the server honours If-None-Match on
// PUT, since some answer a conditional PUT of an existing name by replacing
// it: it stores a probe object (beside the repository's directories, where
// no listing looks) twice with the condition. If the second is let through,
// or the server refuses the condition, Save relies on its HEAD alone. A
// server that will not take the probe (a read-only key) is left believed.
func (b *Backend) probeConditional(ctx context.Context) {
	key := b.dirKey("") + "umbra-probe-" + randomName()
	put := func() error { return b.put(ctx, key, 1, strings.NewReader("p"), true) }
	err := put()
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && (resp.Code == minio.NotImplemented || resp.StatusCode == http.StatusNotImplemented) {
		b.conditional.Store(false)
		return
	}
	if err != nil {
		return
	}
	defer func() {
		_ = b.client.RemoveObject(context.WithoutCancel(ctx), b.cfg.Bucket, key, minio.RemoveObjectOptions{})
	}()
	if err := put(); err == nil {
		b.conditional.Store(false) // the condition was ignored
	}
}

func randomName() string {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// Create makes the bucket if it is missing and returns the backend. It fails
// with an error wrapping fs.ErrExist if objects already exist under the
// prefix: a repository is never created over existing data.
func Create(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := connect(cfg)
	if err != nil {
		return nil, fmt.Errorf("create repository %s: %w", cfg.Location(), err)
	}
	if err := b.create(ctx); err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("create repository %s: %w", cfg.Location(), err)
	}
	return b, nil
}

func (b *Backend) create(ctx context.Context) error {
	ok, err := b.client.BucketExists(ctx, b.cfg.Bucket)
	if err != nil {
		return b.explain(err)
	}
	if !ok {
		err := b.client.MakeBucket(ctx, b.cfg.Bucket, minio.MakeBucketOptions{Region: b.cfg.Region})
		var resp minio.ErrorResponse
		if errors.As(err, &resp) && resp.Code == minio.BucketAlreadyOwnedByYou {
			err = nil // made by a concurrent Create
		}
		if err != nil {
			return fmt.Errorf("make bucket %q: %w", b.cfg.Bucket, b.explain(err))
		}
		return nil
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range b.client.ListObjectsIter(lctx, b.cfg.Bucket, minio.ListObjectsOptions{
		Prefix: b.dirKey(""), Recursive: true, MaxKeys: 1, FetchOwner: new(false),
	}) {
		if obj.Err != nil {
			return b.explain(obj.Err)
		}
		return fmt.Errorf("bucket %q already holds %s; choose an empty bucket or another prefix: %w",
			b.cfg.Bucket, obj.Key, fs.ErrExist)
	}
	return nil
}

func connect(cfg Config) (*Backend, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.AccessKey == "" || cfg.SecretKey == "" {
		return nil, errors.New("no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	tr, err := minio.DefaultTransport(!cfg.Insecure)
	if err != nil {
		return nil, err
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:    !cfg.Insecure,
		Region:    cfg.Region,
		Transport: tr,
	})
	if err != nil {
		return nil, err
	}
	b := &Backend{cfg: cfg, client: client, core: minio.Core{Client: client}, transport: tr}
	b.conditional.Store(true)
	return b, nil
}

// explain turns the server's refusals of the credentials into advice, and
// marks the failures that may pass (5xx, slow down, a connection that
// failed or timed out) as transient.
func (b *Backend) explain(err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		if transient(err) {
			return backend.Transient(err)
		}
		return err
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests ||
		slices.Contains([]string{"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "XMinioServerNotInitialized"}, resp.Code) {
		return backend.Transient(err)
	}
	switch resp.Code {
	case minio.InvalidAccessKeyID, minio.SignatureDoesNotMatch, "InvalidToken", "ExpiredToken":
		return fmt.Errorf("credentials refused (%s: %w); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", resp.Code, err)
	case minio.AccessDenied, "AllAccessDisabled":
		return fmt.Errorf("access to bucket %q denied (%w: %w); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and what the key may do", b.cfg.Bucket, err, fs.ErrPermission)
	case minio.NoSuchBucket:
		// Not fs.ErrNotExist: a file's absence must not be confused with
		// the whole repository's.
		return fmt.Errorf("bucket %q does not exist (%w)", b.cfg.Bucket, err)
	}
	return err
}

// transient reports whether err, not an answer of the server, is one of
// the network's: a refused or reset connection, a timeout.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // ours, not the network's
	}
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// Location returns the repository URL, without credentials.
func (b *Backend) Location() string { return b.cfg.Location() }

// dirKey is the key prefix of the files of type t ("" for the repository's
// root), ending in '/' unless it is the bucket's root.
func (b *Backend) dirKey(t backend.Type) string {
	k := b.cfg.Prefix
	if t != "" {
		k = path.Join(k, string(t))
	}
	if k == "" {
		return ""
	}
	return k + "/"
}

// key returns h's object key. h must be valid.
func (b *Backend) key(h backend.Handle) string {
	return b.dirKey("") + h.Path()
}

// fail wraps the error of op on h, mapping a missing object to
// fs.ErrNotExist.
func (b *Backend) fail(op string, h backend.Handle, err error) error {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code == minio.NoSuchKey {
		return fmt.Errorf("%s %s: %w", op, h, fs.ErrNotExist)
	}
	return fmt.Errorf("%s %s: %w", op, h, b.explain(err))
}

// Save stores exactly size bytes from rd as h. If rd yields fewer or more
// bytes, or fails, Save returns an error and nothing is stored.
func (b *Backend) Save(ctx context.Context, h backend.Handle, size int64, rd io.Reader) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("save %s: negative size %d", h, size)
	}
	key := b.key(h)
	replace := h.Type == backend.TypeLock
	if !replace {
		// Saves a pointless upload in the common case; the conditional PUT
		// closes the race.
		_, err := b.client.StatObject(ctx, b.cfg.Bucket, key, minio.StatObjectOptions{})
		if err == nil {
			return fmt.Errorf("save %s: %w", h, fs.ErrExist)
		}
		if err := b.fail("save", h, err); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// A seekable reader can be sent again if the server refuses the
	// condition before reading the body.
	start := int64(-1)
	seeker, _ := rd.(io.Seeker)
	if seeker != nil {
		if pos, err := seeker.Seek(0, io.SeekCurrent); err == nil {
			start = pos
		}
	}
	for {
		conditional := !replace && b.conditional.Load()
		err := b.put(ctx, key, size, rd, conditional)
		if err == nil {
			return nil
		}
		var resp minio.ErrorResponse
		if !errors.As(err, &resp) {
			return fmt.Errorf("save %s: %w", h, b.explain(err))
		}
		switch {
		case conditional && resp.Code == minio.PreconditionFailed:
			return fmt.Errorf("save %s: %w", h, fs.ErrExist)
		case conditional && (resp.Code == minio.NotImplemented || resp.StatusCode == http.StatusNotImplemented):
			b.conditional.Store(false)
			if start < 0 {
				return backend.Transient(fmt.Errorf("save %s: the server does not support conditional writes (%w); saving again will work without them", h, err))
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return fmt.Errorf("save %s: rewind after the server refused a conditional write: %w", h, err)
			}
			continue
		}
		return fmt.Errorf("save %s: %w", h, b.explain(err))
	}
}

// maxSinglePut is the largest object S3 accepts in one PUT.
const maxSinglePut = 5 << 30

func (b *Backend) put(ctx context.Context, key string, size int64, rd io.Reader, conditional bool) error {
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		// One PUT streams without buffering and is atomic by itself;
		// repository files are far below the limit.
		DisableMultipart: size <= maxSinglePut,
	}
	if conditional {
		opts.SetMatchETagExcept("*")
	}
	if size == 0 {
		// No body to withhold: check the reader before the PUT.
		if err := backend.CheckEnd(rd, 0); err != nil {
			return err
		}
	}
	body := &exactReader{rd: rd, left: size, size: size}
	_, err := b.client.PutObject(ctx, b.cfg.Bucket, key, body, size, opts)
	if berr := body.failure(); err != nil && berr != nil {
		// The reader's own failure says more than the transport's report
		// of the broken body.
		return berr
	}
	return err
}

// exactReader passes on exactly size bytes of rd and fails, rather than
// ending, if rd has fewer or more. It keeps back the last bytes until it
// knows rd ends there, so that a body of the wrong size never completes.
// It hides rd's other methods, so that minio-go reads it once, in order.
//
// net/http may still be reading the body on its own goroutine when
// PutObject returns with an error, so the failure is kept under a lock.
type exactReader struct {
	rd         io.Reader
	left, size int64

	mu  sync.Mutex
	err error
}

func (r *exactReader) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *exactReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.rd.Read(p)
	r.left -= int64(n)
	switch {
	case err == io.EOF && r.left > 0:
		r.err = fmt.Errorf("reader gave %d bytes, want %d: %w", r.size-r.left, r.size, io.ErrUnexpectedEOF)
	case err != nil && err != io.EOF:
		r.err = fmt.Errorf("read: %w", err)
	case r.left == 0 && err == nil:
		r.err = backend.CheckEnd(r.rd, r.size)
	}
	if r.err != nil {
		return 0, r.err
	}
	return n, nil
}

// Load returns length bytes of h from offset, or the rest of h if length is
// 0, in one ranged GET. A range that ends past the end of h fails with an
// error wrapping io.ErrUnexpectedEOF; an offset equal to the size with
// length 0 gives an empty reader.
func (b *Backend) Load(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("load %s: invalid range offset %d length %d", h, offset, length)
	}
	key := b.key(h)
	var opts minio.GetObjectOptions
	ranged := offset > 0 || length > 0
	if ranged {
		end := int64(0) // to the end
		if length > 0 {
			end = offset + length - 1
		}
		if err := opts.SetRange(offset, end); err != nil {
			return nil, fmt.Errorf("load %s: %w", h, err)
		}
	}
	body, info, header, err := b.core.GetObject(ctx, b.cfg.Bucket, key, opts)
	if err != nil {
		var resp minio.ErrorResponse
		if errors.As(err, &resp) && resp.Code == minio.InvalidRange {
			return b.pastEnd(ctx, h, offset, length)
		}
		return nil, b.fail("load", h, err)
	}
	if !ranged {
		return body, nil
	}
	// Servers answer a range that runs past the end with what there is.
	var first, last, total int64
	if header.Get("Content-Range") == "" && offset == 0 && length == info.Size {
		return body, nil // the whole object, sent as such
	}
	if _, err := fmt.Sscanf(header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil {
		_ = body.Close()
		return nil, fmt.Errorf("load %s: server answered range %d+%d with Content-Range %q", h, offset, length, header.Get("Content-Range"))
	}
	got := last - first + 1
	if first != offset || got != info.Size || (length > 0 && got != length) {
		_ = body.Close()
		return nil, fmt.Errorf("load %s: range %d+%d past the end at %d: %w", h, offset, length, total, io.ErrUnexpectedEOF)
	}
	return body, nil
}

// pastEnd answers a Load whose offset the server found unsatisfiable: fine
// at the very end with length 0, an error otherwise.
func (b *Backend) pastEnd(ctx context.Context, h backend.Handle, offset, length int64) (io.ReadCloser, error) {
	fi, err := b.Stat(ctx, h)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load %s: %w", h, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if offset == fi.Size && length == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	return nil, fmt.Errorf("load %s: range %d+%d past the end at %d: %w", h, offset, length, fi.Size, io.ErrUnexpectedEOF)
}

// Stat describes h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := h.Valid(); err != nil {
		return backend.FileInfo{}, err
	}
	info, err := b.client.StatObject(ctx, b.cfg.Bucket, b.key(h), minio.StatObjectOptions{})
	if err != nil {
		return backend.FileInfo{}, b.fail("stat", h, err)
	}
	return backend.FileInfo{Handle: h, Size: info.Size, ModTime: info.LastModified}, nil
}

// Remove deletes h. It asks first, since S3 deletes of missing objects
// succeed.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if _, err := b.Stat(ctx, h); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", h, fs.ErrNotExist)
		}
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := b.client.RemoveObject(ctx, b.cfg.Bucket, b.key(h), minio.RemoveObjectOptions{}); err != nil {
		return b.fail("remove", h, err)
	}
	return nil
}

// List calls fn for every file of type t, skipping objects whose keys the
// layout does not produce.
func (b *Backend) List(ctx context.Context, t backend.Type, fn func(backend.FileInfo) error) error {
	if err := t.Valid(); err != nil {
		return err
	}
	if t == backend.TypeConfig {
		return backend.ListConfig(ctx, b.Stat, fn)
	}
	// Stops the listing when fn fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := b.dirKey(t)
	for obj := range b.client.ListObjectsIter(ctx, b.cfg.Bucket, minio.ListObjectsOptions{
		Prefix: prefix, Recursive: true, FetchOwner: new(false),
	}) {
		if obj.Err != nil {
			return fmt.Errorf("list %s: %w", t, b.explain(obj.Err))
		}
		h := backend.Handle{Type: t, Name: path.Base(obj.Key)}
		if h.Valid() != nil || b.key(h) != obj.Key {
			continue // not ours
		}
		if err := fn(backend.FileInfo{Handle: h, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Close drops idle connections; the backend is unusable afterwards.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}
