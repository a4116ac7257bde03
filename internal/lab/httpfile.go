package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// FilePath is the path under which FileServer serves its file.
const FilePath = "/file.bin"

// Digest identifies downloaded content.
type Digest struct {
	Size   int64
	SHA256 string // hex
}

// FileServer serves one generated file of known size and SHA-256 over HTTP from a lab
// host. It runs inside the test process on a listener opened in the host's namespace,
// so it needs no helper binary and stops with the test.
type FileServer struct {
	URL  string // http://addr:port/file.bin
	Want Digest
	Addr netip.AddrPort
}

// ServeFile serves size bytes of deterministic pseudo-random data at addr (port 0
// picks one) from h until t's test ends.
func (h *Host) ServeFile(t testing.TB, addr netip.AddrPort, size int64) *FileServer {
	t.Helper()
	content := fileContent(size)
	sum := sha256.Sum256(content)
	ln := h.listenHTTP(t, "file", addr)
	mux := http.NewServeMux()
	mux.HandleFunc(FilePath, func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "file.bin", time.Time{}, bytes.NewReader(content))
	})
	bound := h.serveHTTP(t, ln, mux)
	return &FileServer{
		URL:  "http://" + bound.String() + FilePath,
		Want: Digest{Size: size, SHA256: hex.EncodeToString(sum[:])},
		Addr: bound,
	}
}

// listenHTTP opens a TCP listener for the what server at addr in h.
func (h *Host) listenHTTP(t testing.TB, what string, addr netip.AddrPort) net.Listener {
	t.Helper()
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	ln, err := h.Listen(network, addr.String())
	if err != nil {
		t.Fatalf("lab: %s server on %s: %v", what, h.Name, err)
	}
	return ln
}

// serveHTTP serves handler on ln until the test ends, and returns the
// address ln is bound to.
func (h *Host) serveHTTP(t testing.TB, ln net.Listener, handler http.Handler) netip.AddrPort {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	})
	bound := ln.Addr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
}

// ErrDigest is returned when downloaded content differs from what was served.
var ErrDigest = errors.New("lab: downloaded content differs")

// Verify checks a download's digest against the served file.
func (f *FileServer) Verify(got Digest) error {
	if got != f.Want {
		return fmt.Errorf("%w: got %d bytes sha256 %s, want %d bytes sha256 %s", ErrDigest, got.Size, got.SHA256, f.Want.Size, f.Want.SHA256)
	}
	return nil
}

// HTTPClient returns an HTTP client whose connections are made from inside the host's
// namespace; URLs must use IP literals. It uses no proxy from the environment.
func (h *Host) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:             nil,
		DialContext:       h.DialContext,
		DisableKeepAlives: true,
	}}
}

// Download fetches url with c and returns the size and SHA-256 of the body.
func Download(ctx context.Context, c *http.Client, url string) (Digest, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Digest{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Digest{}, fmt.Errorf("lab: download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Digest{}, fmt.Errorf("lab: download %s: %s", url, resp.Status)
	}
	hw := sha256.New()
	n, err := io.Copy(hw, resp.Body)
	if err != nil {
		return Digest{}, fmt.Errorf("lab: download %s after %d bytes: %w", url, n, err)
	}
	return digest(hw, n), nil
}

// Curl runs curl in the host's namespace to fetch url (extra flags such as
// "--socks5-hostname", "127.0.0.1:1080" come first) and returns the size and SHA-256
// of what it wrote to standard output.
func (h *Host) Curl(ctx context.Context, url string, extra ...string) (Digest, error) {
	args := append([]string{"--silent", "--show-error", "--fail", "--noproxy", "", "--output", "-"}, extra...)
	args = append(args, url)
	cmd := h.Command(ctx, "curl", args...)
	hw := &countingHash{h: sha256.New()}
	var stderr bytes.Buffer
	cmd.Stdout = hw
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	cmd.Env = curlEnv()
	if err := cmd.Run(); err != nil {
		return Digest{}, fmt.Errorf("lab: curl %s on %s after %d bytes: %w: %s", url, h.Name, hw.n, err, strings.TrimSpace(stderr.String()))
	}
	return digest(hw.h, hw.n), nil
}

// curlEnv drops proxy variables so curl talks only to what the test names.
func curlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		env = append(env, kv)
	}
	return env
}

type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.h.Write(b)
}

func digest(h hash.Hash, n int64) Digest {
	return Digest{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
}

// UploadPath is the path under which UploadServer takes uploads.
const UploadPath = "/upload"

// UploadServer takes HTTP uploads (PUT or POST) on a lab host and answers each with
// the size and SHA-256 of the body it received, so a test can verify an upload on the
// server side. It runs inside the test process, like FileServer.
type UploadServer struct {
	URL  string // http://addr:port/upload
	Addr netip.AddrPort
}

// ServeUpload takes uploads at addr (port 0 picks one) on h until t's test ends.
func (h *Host) ServeUpload(t testing.TB, addr netip.AddrPort) *UploadServer {
	t.Helper()
	ln := h.listenHTTP(t, "upload", addr)
	mux := http.NewServeMux()
	mux.HandleFunc(UploadPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			http.Error(w, "PUT or POST only", http.StatusMethodNotAllowed)
			return
		}
		hw := sha256.New()
		n, err := io.Copy(hw, r.Body)
		if err != nil {
			http.Error(w, fmt.Sprintf("after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x\n", n, hw.Sum(nil))
	})
	bound := h.serveHTTP(t, ln, mux)
	return &UploadServer{URL: "http://" + bound.String() + UploadPath, Addr: bound}
}

// CurlUpload runs curl in the host's namespace to PUT the file at path to url (an
// UploadServer's; extra flags come first) and returns the digest the server computed.
func (h *Host) CurlUpload(ctx context.Context, url, path string, extra ...string) (Digest, error) {
	args := append([]string{"--silent", "--show-error", "--fail", "--noproxy", "", "--upload-file", path}, extra...)
	args = append(args, url)
	cmd := h.Command(ctx, "curl", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	cmd.Env = curlEnv()
	if err := cmd.Run(); err != nil {
		return Digest{}, fmt.Errorf("lab: curl upload to %s on %s: %w: %s", url, h.Name, err, strings.TrimSpace(stderr.String()))
	}
	return parseUploadAnswer(stdout.String())
}

// parseUploadAnswer reads UploadServer's "SIZE SHA256HEX" answer.
func parseUploadAnswer(s string) (Digest, error) {
	var d Digest
	if _, err := fmt.Sscanf(s, "%d %64s\n", &d.Size, &d.SHA256); err != nil || len(d.SHA256) != 64 {
		return Digest{}, fmt.Errorf("lab: upload server answered %q", s)
	}
	return d, nil
}

// WriteFile writes the same deterministic content that ServeFile serves, size bytes,
// to path, and returns its digest: the file an upload test sends.
func WriteFile(path string, size int64) (Digest, error) {
	content := fileContent(size)
	sum := sha256.Sum256(content)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		return Digest{}, fmt.Errorf("lab: %w", err)
	}
	return Digest{Size: size, SHA256: hex.EncodeToString(sum[:])}, nil
}

// fileContent is size bytes of seeded pseudo-random data, the same on every call.
func fileContent(size int64) []byte {
	content := make([]byte, size)
	rng := rand.New(rand.NewChaCha8([32]byte{'t', 'e', 'r', 'e', 'd', 'o', '-', 'l', 'a', 'b'}))
	for i := 0; i < len(content); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(content); j++ {
			content[i+j] = byte(v >> (8 * j))
		}
	}
	return content
}
