package apitest

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// goTool returns the go command, or skips the test without one.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	t.Skip("no go command in PATH or GOROOT: cannot build the outside module")
	return ""
}

// TestOutsideModule builds testdata/outside as a module of its own that
// requires this one through a replace directive, as an application that
// embeds the library would: any internal type in a public signature it
// touches, or a public package it cannot import, fails the build. It runs
// offline (GOPROXY=off) from the module cache the main module's build
// filled.
func TestOutsideModule(t *testing.T) {
	goCmd := goTool(t)
	root := moduleRoot(t)
	src, err := os.ReadFile(filepath.Join("testdata", "outside", "main.go"))
	if err != nil {
		t.Fatal(err)
	}

	// The program must import every public package, so that a new one is
	// added here too.
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", src, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	imported := map[string]bool{}
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		imported[p] = true
	}
	for _, dir := range publicPackages(t, root) {
		if p := modulePath + "/" + dir; !imported[p] {
			t.Errorf("testdata/outside/main.go does not import public package %s", p)
		}
	}

	dir := t.TempDir()
	gomod := "module example.com/outside\n\ngo 1.26\n\n" +
		"require " + modulePath + " v0.0.0\n\n" +
		"replace " + modulePath + " => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(),
		"GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	for _, args := range [][]string{
		{"build", "-o", filepath.Join(dir, "outside"), "."},
		{"vet", "."},
	} {
		cmd := exec.Command(goCmd, args...)
		cmd.Dir, cmd.Env = dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s in an outside module: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cmd := exec.Command(filepath.Join(dir, "outside"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("outside program: %v\n%s", err, out)
	}
}
