// Package control serves a running appliance's control API (HTTP+JSON on a
// unix socket, /run/appliance/NAME.sock) and is the client every
// "talking to a running appliance" command uses. Start with Listen (server)
// or NewClient.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Dir holds the control sockets.
var Dir = "/run/appliance"

// ErrNotRunning is returned by the client when no appliance has the name.
var ErrNotRunning = errors.New("not running")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidateName checks an instance name: letters, digits, '.', '_', '-', at
// most 64 bytes, so it is safe as a file name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("instance name %q: use 1-64 letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// SocketPath is where the instance name listens.
func SocketPath(name string) string { return filepath.Join(Dir, name+".sock") }

// Server serves the control API.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	wg   sync.WaitGroup
}

// Listen creates the socket for name (owner-only permissions) and serves h
// on it. It fails if a live appliance already holds the name; a stale socket
// left by a crashed one is replaced.
func Listen(name string, h http.Handler, log *slog.Logger) (*Server, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, fmt.Errorf("control dir %s: %w", Dir, err)
	}
	path := SocketPath(name)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("an appliance named %q is already running (%s)", name, path)
	}
	_ = os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s := &Server{path: path, ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.wg.Wait()
	_ = os.Remove(s.path)
	return err
}

// Client talks to one running appliance.
type Client struct {
	name string
	hc   *http.Client
}

// NewClient returns a client for the instance name.
func NewClient(name string) (*Client, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	path := SocketPath(name)
	return &Client{name: name, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}, nil
}

// Close closes the client's idle connections (each holds a goroutine in
// the appliance until it times out).
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an error the appliance answered with.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Do sends method path with body in (JSON, may be nil) and decodes the
// answer into out (may be nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://appliance"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no appliance named %q is running (%s): %w", c.name, SocketPath(c.name), ErrNotRunning)
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// WriteJSON writes v as the answer.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers with an error message.
func WriteError(w http.ResponseWriter, status int, err error) {
	WriteJSON(w, status, map[string]string{"error": err.Error()})
}
