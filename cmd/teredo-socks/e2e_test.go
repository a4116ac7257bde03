package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests in this file build the command and run it as a user would:
// -demo, real curl, real signals.

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// commandBinary builds teredo-socks once per test run.
func commandBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the command; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("-demo needs Linux (the whole 127.0.0.0/8 on loopback)")
	}
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "teredo-socks-test")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "teredo-socks")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, goTool, "build", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// process is a running teredo-socks.
type process struct {
	cmd    *exec.Cmd
	out    *lineWriter
	stderr bytes.Buffer
	done   chan struct{}
	err    error // Wait's, once done is closed
}

func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	bin := commandBinary(t)
	p := &process{out: newLineWriter(), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	// Only our flags: no TEREDO_SOCKS_* from the environment.
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	p.cmd.Stdout = p.out
	p.cmd.Stderr = &lockedBuffer{b: &p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("stderr of teredo-socks:\n%s", p.stderr.String())
		}
	})
	return p
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// exit waits for the process to end and returns its exit code.
func (p *process) exit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("teredo-socks still running after %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// TestDemoWithCurl is the README's first command, checked with Debian's
// curl: start -demo, fetch the IPv6-only page through the proxy by address
// and by name, read /status, then stop it with SIGTERM while a SOCKS
// session is open.
func TestDemoWithCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl is missing; .ci/run must install it")
		}
		t.Skip("curl is not installed (apt-get install curl); skipping the end-to-end test with a real client")
	}
	// Port 0 for both, read back from the output: a port picked free
	// beforehand can be taken by a parallel test before teredo-socks
	// binds it (seen in CI: "bind: address already in use").
	p := startProcess(t, "-demo", "-listen", "127.0.0.1:0", "-status", "127.0.0.1:0")
	m := p.out.wait(t, qualifiedRe, 60*time.Second)
	teredo, listen := m[1], m[2]
	if ap, err := netip.ParseAddrPort(listen); err != nil || ap.Port() == 0 || !ap.Addr().IsLoopback() {
		t.Fatalf("qualified line names SOCKS5 on %q, want the bound loopback address", listen)
	}
	p.out.wait(t, regexp.MustCompile(`^teredo-socks: NAT type: restricted$`), 15*time.Second)
	status := p.out.wait(t, statusRe, 15*time.Second)[1]
	p.out.wait(t, regexp.MustCompile(`demo: try +curl --socks5-hostname `+regexp.QuoteMeta(listen)+` http://\[2001:db8::80\]/`), time.Second)

	for _, url := range []string{"http://[2001:db8::80]/", "http://ipv6.demo/"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, curl, "-sS", "--max-time", "20", "--socks5-hostname", listen, url).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", url, err, out)
		}
		if !strings.Contains(string(out), "Hello over IPv6") || !strings.Contains(string(out), teredo) {
			t.Fatalf("curl %s got:\n%s", url, out)
		}
	}

	cl := &http.Client{Timeout: 10 * time.Second}
	res, err := cl.Get("http://" + status + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	err = json.NewDecoder(res.Body).Decode(&st)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"state", "version", "uptime_seconds", "counters", "drops", "address", "server", "mapped", "nat", "peers", "socks5"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status has no %q", k)
		}
	}
	if st["state"] != "qualified" || st["address"] != teredo {
		t.Errorf("status: %v", st)
	}
	if s5 := st["socks5"].(map[string]any); s5["accepted"].(float64) < 2 {
		t.Errorf("socks5 counters: %v", s5)
	}

	// A session left open must not hold the shutdown up.
	open, err := socksConnect(listen, "ipv6.demo", 80)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.exit(t, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	p.out.wait(t, regexp.MustCompile(`shutting down`), time.Second)
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Error("open SOCKS session still answers after exit")
	}
	// No leftover: the ports are free again.
	for _, a := range []string{listen, status} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("port %s still taken after exit: %v", a, err)
			continue
		}
		ln.Close()
	}
}

// TestSIGINT stops the demo with Ctrl-C's signal.
func TestSIGINT(t *testing.T) {
	p := startProcess(t, "-demo", "-listen", "127.0.0.1:0")
	p.out.wait(t, qualifiedRe, 60*time.Second)
	p.cmd.Process.Signal(os.Interrupt)
	if code := p.exit(t, 15*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGINT, want 0", code)
	}
}

// TestBadFlagsExit checks the message and exit code 2 of the built
// command, the way a shell sees them.
func TestBadFlagsExit(t *testing.T) {
	p := startProcess(t, "-prefer", "ipv5")
	if code := p.exit(t, 10*time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if s := p.stderr.String(); !strings.Contains(s, `-prefer "ipv5": want ipv4 or ipv6`) {
		t.Fatalf("stderr: %s", s)
	}
}

// TestRealMainExitCodes runs the command's entry point in process.
func TestRealMainExitCodes(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tt := range []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		inStderr string
	}{
		{"help", []string{"-h"}, nil, 0, "TEREDO_SOCKS_LISTEN"},
		{"bad flag", []string{"-ipv4", "sometimes"}, nil, 2, "want direct or reject"},
		{"bad env", nil, map[string]string{"TEREDO_SOCKS_BIND": "nowhere"}, 2, "TEREDO_SOCKS_BIND"},
		{"open proxy", []string{"-listen", "0.0.0.0:1080"}, nil, 2, "open proxy"},
		{"unknown flag", []string{"-nope"}, nil, 2, "teredo-socks: flag provided but not defined: -nope\nRun 'teredo-socks -h' for the flags.\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := realMain(tt.args, env(tt.env), &stdout, &stderr); code != tt.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.inStderr) {
				t.Fatalf("stderr lacks %q:\n%s", tt.inStderr, stderr.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"-version"}, env(nil), &stdout, &stderr); code != 0 ||
		!strings.HasPrefix(stdout.String(), "teredo-socks ") || !strings.Contains(stdout.String(), "go1.") {
		t.Errorf("-version: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
