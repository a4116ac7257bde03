package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CIEnv is the environment variable that turns every missing lab prerequisite from a
// skip into a test failure: CI must run the lab, so it may not silently skip it.
const CIEnv = "CI"

// sbinDirs are searched after PATH because non-login root shells and test runners often
// lack the sbin directories where ip, nft, conntrack and miredo live.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/libexec/miredo"}

// LookTool returns the absolute path of an external tool, searching PATH and then the
// usual sbin directories.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("lab: %s not found in PATH or %s", name, strings.Join(sbinDirs, ":"))
}

// Require skips t (or fails it when CI=true) unless the process is root and every named
// tool exists. The lab's own tools (ip, nft, conntrack, unshare) are always required.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if msg := missing(tools); msg != "" {
		unavailable(t, msg)
	}
}

// missing describes what the lab lacks, or returns "".
func missing(tools []string) string {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "not running as root")
	}
	all := append([]string{"ip", "nft", "conntrack", "unshare"}, tools...)
	seen := map[string]bool{}
	for _, tool := range all {
		if seen[tool] {
			continue
		}
		seen[tool] = true
		if _, err := LookTool(tool); err != nil {
			problems = append(problems, "missing "+tool)
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return strings.Join(problems, ", ")
}

// unavailable skips or, under CI, fails: a lab prerequisite is missing.
func unavailable(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(CIEnv) == "true" {
		t.Fatalf("lab: network-namespace lab unavailable (%s); CI=true requires it (install iproute2 nftables conntrack miredo miredo-server curl and run as root)", msg)
	}
	t.Skipf("lab: skipping network-namespace test (%s); run as root with the tools installed, CI=true turns this skip into a failure", msg)
}
