package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds one `go build` of a project command.
const buildTimeout = 5 * time.Minute

// builds caches the binaries built by BuildCommand for the life of a test binary whose
// TestMain calls Main; without Main each test builds into its own t.TempDir.
var builds struct {
	mu   sync.Mutex
	dir  string            // set by Main, removed when Main returns
	bins map[string]string // package → binary
}

// Main runs the tests of a package that uses the lab, with BuildCommand's binaries
// built once and shared by all tests, and removes them afterwards. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(lab.Main(m)) }
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "teredo-lab-bin-")
	if err == nil {
		builds.mu.Lock()
		builds.dir, builds.bins = dir, map[string]string{}
		builds.mu.Unlock()
		defer func() {
			builds.mu.Lock()
			builds.dir, builds.bins = "", nil
			builds.mu.Unlock()
			os.RemoveAll(dir)
		}()
	}
	return m.Run()
}

// BuildCommand builds the project's main package pkg (a path relative to the module
// root such as "./cmd/teredo-server", or an import path) and returns the binary's path.
func BuildCommand(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock() // serialises builds: two at once would only compete for 2 cores
	if bin, ok := builds.bins[pkg]; ok {
		return bin
	}
	dir := builds.dir
	if dir == "" {
		dir = t.TempDir()
	}
	bin, err := goBuild(pkg, dir)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	if builds.bins != nil {
		builds.bins[pkg] = bin
	}
	return bin
}

// goBuild runs `go build` of pkg from the module root into dir.
func goBuild(pkg, dir string) (string, error) {
	goTool, err := findGo()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	modOut, err := runCmd(ctx, exec.CommandContext(ctx, goTool, "env", "GOMOD"))
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(modOut)
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("build %s: not inside a Go module", pkg)
	}
	name := filepath.Base(strings.TrimSuffix(pkg, "/"))
	out, err := os.MkdirTemp(dir, name+"-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(out, name)
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, pkg)
	cmd.Dir = filepath.Dir(gomod)
	if _, err := runCmd(ctx, cmd); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	return bin, nil
}

// findGo locates the go command: PATH, then GOROOT, then the toolchain that built the
// test binary (go test does not put go on PATH for the binary).
func findGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, root := range []string{os.Getenv("GOROOT"), runtime.GOROOT(), "/usr/local/go"} {
		if root == "" {
			continue
		}
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("go command not found")
}
