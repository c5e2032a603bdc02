package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultSocket is where the API listens unless told otherwise.
const DefaultSocket = "/run/umbra/umbra.sock"

// Listen is where the API is served.
type Listen struct {
	// Socket is the Unix socket (DefaultSocket if empty): owner only, or
	// its group too with SocketGroup. Whoever may open it may use the API.
	Socket      string
	SocketGroup string
	// TCP is an address besides the socket, where every call but
	// /metrics needs the token. Plain HTTP only on a loopback address;
	// elsewhere TLSCert and TLSKey are needed.
	TCP            string
	TLSCert        string
	TLSKey         string
	TokenFile      string // default StateDir/serve/token, made if missing
	OnListening    func(socket, tcp string)
	ShutdownWithin time.Duration
}

// Serve answers the API on the socket (and TCP) while the scheduler runs,
// until ctx ends; then it stops the jobs (by on_stop) and the servers.
func (d *Daemon) Serve(ctx context.Context, l Listen) error {
	if l.Socket == "" {
		l.Socket = DefaultSocket
	}
	unixLn, err := listenUnix(l.Socket, l.SocketGroup)
	if err != nil {
		return err
	}
	handler := d.Handler()
	servers := []*http.Server{{Handler: handler, ReadHeaderTimeout: 10 * time.Second}}
	errs := make(chan error, 2)
	go func() { errs <- servers[0].Serve(unixLn) }()
	tcpAddr := ""
	if l.TCP != "" {
		token, err := d.token(l.TokenFile)
		if err != nil {
			unixLn.Close()
			return err
		}
		tls := l.TLSCert != "" || l.TLSKey != ""
		if !tls && !loopback(l.TCP) {
			unixLn.Close()
			return fmt.Errorf("listen %s: plain HTTP is served only on a loopback address (127.0.0.1, [::1]); elsewhere set [serve] tls_cert and tls_key", l.TCP)
		}
		ln, err := net.Listen("tcp", l.TCP)
		if err != nil {
			unixLn.Close()
			return err
		}
		tcpAddr = ln.Addr().String()
		s := &http.Server{Handler: Authenticated(token, handler), ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, s)
		go func() {
			if tls {
				errs <- s.ServeTLS(ln, l.TLSCert, l.TLSKey)
			} else {
				errs <- s.Serve(ln)
			}
		}()
	}
	d.log.Info("umbra serve listening", "socket", l.Socket, "tcp", tcpAddr, "jobs", len(d.Jobs()))
	if l.OnListening != nil {
		l.OnListening(l.Socket, tcpAddr)
	}
	runDone := make(chan struct{})
	go func() {
		_ = d.Run(ctx)
		close(runDone)
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
	}
	<-runDone // Run stops (the jobs aborted or finished) once ctx ends
	within := l.ShutdownWithin
	if within == 0 {
		within = 5 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	_ = os.Remove(l.Socket)
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// listenUnix makes the socket, refusing if another daemon answers on it,
// and gives it to its owner (and group) only.
func listenUnix(path, group string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another umbra serve answers on %s; stop it first, or give --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", path, err)
		}
	}
	old := umask(0o177) // never world-accessible, not even for a moment
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, err
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("[serve] socket_group %s: %w", group, err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// token reads the API token from file, or from (and, if missing, into)
// the state directory.
func (d *Daemon) token(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("[serve] token_file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if len(t) < 16 {
			return "", fmt.Errorf("[serve] token_file %s: the token must have at least 16 characters", file)
		}
		return t, nil
	}
	path := TokenPath(d.opts.StateDir)
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	t := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	d.log.Info("made an API token for TCP calls", "file", path)
	return t, nil
}

// TokenPath is where umbra serve keeps the token it made.
func TokenPath(stateDir string) string { return filepath.Join(stateDir, "serve", "token") }
