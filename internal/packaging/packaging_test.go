package packaging

import (
	"bufio"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// commands are the binaries the Containerfile builds and the units run.
var commands = []string{"teredo-socks", "teredo-server", "teredo-relay", "teredo-gateway"}

// containerBuild is the Containerfile's build step: its environment and
// the go build command, with the output directory as /out/.
type containerBuild struct {
	env []string
	cmd string
}

// parseContainerfile reads the ENV instructions and the one RUN
// instruction that runs go build, joining continued lines.
func parseContainerfile(path string) (containerBuild, error) {
	f, err := os.Open(path)
	if err != nil {
		return containerBuild{}, err
	}
	defer f.Close()
	var b containerBuild
	var line string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			line += s + " "
			continue
		}
		line += l
		instr, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		line = ""
		switch strings.ToUpper(instr) {
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				if !strings.Contains(kv, "=") {
					return b, errors.New("ENV without '=': " + rest)
				}
				b.env = append(b.env, kv)
			}
		case "RUN":
			if strings.Contains(rest, "go build") {
				if b.cmd != "" {
					return b, errors.New("more than one RUN go build")
				}
				b.cmd = rest
			}
		}
	}
	if b.cmd == "" {
		return b, errors.New("no RUN go build")
	}
	return b, sc.Err()
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildAsContainerfile runs the Containerfile's go build command, with its
// environment, from the module root into a temporary directory, once per
// test binary.
func buildAsContainerfile(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	buildOnce.Do(func() {
		var b containerBuild
		if b, buildErr = parseContainerfile("../../Containerfile"); buildErr != nil {
			return
		}
		if !strings.Contains(b.cmd, "-o /out/") || !slices.Contains(b.env, "CGO_ENABLED=0") {
			buildErr = errors.New("the Containerfile must build with CGO_ENABLED=0 into /out/: " + b.cmd)
			return
		}
		if binDir, buildErr = os.MkdirTemp("", "packaging-test-"); buildErr != nil {
			return
		}
		cmd := exec.Command("sh", "-c", strings.Replace(b.cmd, "-o /out/", "-o "+binDir+"/", 1))
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), b.env...)
		cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(goTool)+string(os.PathListSeparator)+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New(b.cmd + ": " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// TestContainerfile runs the Containerfile's build command as it is (no
// container engine needed) and checks that it gives every command as a
// static binary that runs.
func TestContainerfile(t *testing.T) {
	dir := buildAsContainerfile(t)
	for _, name := range commands {
		path := filepath.Join(dir, name)
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		libs, _ := f.ImportedLibraries()
		interp := slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP })
		f.Close()
		if len(libs) > 0 || interp {
			t.Errorf("%s is not static: libraries %v, interpreter %v", name, libs, interp)
		}
		out, err := exec.Command(path, "-version").Output()
		if err != nil || !regexp.MustCompile(`^`+name+` \S+ \(.*go1\.\S+\)\n$`).Match(out) {
			t.Errorf("%s -version: %q, %v", name, out, err)
		}
	}
}

// unitRules are lines every unit must have, and the capability of each.
var unitRules = map[string][]string{
	"teredo-server.service": {"AmbientCapabilities=CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_RAW", "DynamicUser=yes"},
	"teredo-relay.service":  {"AmbientCapabilities=CAP_NET_ADMIN", "CapabilityBoundingSet=CAP_NET_ADMIN", "DynamicUser=yes", "DeviceAllow=/dev/net/tun rw"},
	"teredo-socks.service":  {"WantedBy=default.target"}, // a user unit
}

var commonUnitLines = []string{
	"Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
	"RestrictNamespaces=yes", "SystemCallFilter=@system-service", "LockPersonality=yes",
}

// TestSystemdUnits checks the units' hardening and capabilities, that the
// environment variables their comments suggest are flags of the command,
// and, where systemd-analyze is installed, that systemd accepts them with
// ExecStart pointing at the binaries the Containerfile builds.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob("../../contrib/systemd/*.service")
	if err != nil || len(units) != len(unitRules) {
		t.Fatalf("units %v, %v; want one per entry of unitRules", units, err)
	}
	dir := buildAsContainerfile(t)
	tmp := t.TempDir()
	envRE := regexp.MustCompile(`\b(TEREDO_[A-Z0-9_]+)=`)
	for _, path := range units {
		name := filepath.Base(path)
		cmd := strings.TrimSuffix(name, ".service")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		lines := strings.Split(text, "\n")
		for _, want := range append(unitRules[name], commonUnitLines...) {
			if !slices.Contains(lines, want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
		help, _ := exec.Command(filepath.Join(dir, cmd), "-h").CombinedOutput()
		envs := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(help), -1) {
			envs[strings.ToUpper(strings.ReplaceAll(cmd+"_"+m[1], "-", "_"))] = true
		}
		for _, m := range envRE.FindAllStringSubmatch(text, -1) {
			if !envs[m[1]] {
				t.Errorf("%s names %s, which is no flag of %s", name, m[1], cmd)
			}
		}
		// ExecStart at the built binary, so that systemd's check that it
		// is executable means something.
		text = regexp.MustCompile(`(?m)^ExecStart=\S+`).ReplaceAllString(text, "ExecStart="+filepath.Join(dir, cmd))
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing (.ci/run installs systemd)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	c := exec.Command(analyze, "verify", "--man=no")
	for _, u := range units {
		c.Args = append(c.Args, filepath.Join(tmp, filepath.Base(u)))
	}
	out, err := c.CombinedOutput()
	// verify reports unknown directives and bad values on its output
	// without failing, so any output is a failure.
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
