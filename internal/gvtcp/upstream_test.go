package tcp_test

import (
	"bytes"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// patched lists the files that differ from upstream beyond the mechanical
// rewrites (README.md says why each one does).
var patched = map[string]bool{
	"protocol.go":        true,
	"snd.go":             true,
	"sack_recovery.go":   true,
	"sack_scoreboard.go": true,
	"rcv.go":             true,
	"endpoint.go":        true,
}

// ours lists files of this copy that upstream does not have.
var ours = map[string]bool{"rate.go": true, "pipe.go": true, "sack_compress.go": true}

// TestUpstream checks that this copy is the pinned gVisor package plus
// exactly the documented patches: every unpatched file equals upstream after
// the mechanical rewrites, and every patched file still differs (a patch
// that upstream absorbed must be dropped from the list).
func TestUpstream(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "gvisor.dev/gvisor").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Skipf("gvisor.dev/gvisor is not in the module cache (go list: %v)", err)
	}
	for _, pkg := range []struct{ upstream, local, stateName, newName string }{
		{"pkg/tcpip/transport/tcp", ".", "pkg/tcpip/transport/tcp.", "teredo/internal/gvtcp."},
		{"pkg/tcpip/internal/tcp", "internal/tcp", "pkg/tcpip/internal/tcp.", "teredo/internal/gvtcp/internal/tcp."},
	} {
		upDir := filepath.Join(dir, pkg.upstream)
		up, err := filepath.Glob(filepath.Join(upDir, "*.go"))
		if err != nil || len(up) == 0 {
			t.Fatalf("no upstream files in %s: %v", upDir, err)
		}
		seen := map[string]bool{}
		for _, f := range up {
			name := filepath.Base(f)
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			seen[name] = true
			want, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want = bytes.ReplaceAll(want, []byte(`"gvisor.dev/gvisor/pkg/tcpip/internal/tcp"`), []byte(`"github.com/teredo-go/teredo/internal/gvtcp/internal/tcp"`))
			want = bytes.ReplaceAll(want, []byte(`"`+pkg.stateName), []byte(`"`+pkg.newName))
			if want, err = format.Source(want); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			got, err := os.ReadFile(filepath.Join(pkg.local, name))
			if err != nil {
				t.Errorf("upstream file %s/%s is missing here: %v", pkg.local, name, err)
				continue
			}
			same := bytes.Equal(got, want)
			isPatched := pkg.local == "." && patched[name]
			switch {
			case !same && !isPatched:
				t.Errorf("%s/%s differs from upstream but is not a documented patch", pkg.local, name)
			case same && isPatched:
				t.Errorf("%s/%s no longer differs from upstream: drop it from the patch list", pkg.local, name)
			}
		}
		local, _ := filepath.Glob(filepath.Join(pkg.local, "*.go"))
		for _, f := range local {
			name := filepath.Base(f)
			if !seen[name] && !strings.HasSuffix(name, "_test.go") && !(pkg.local == "." && ours[name]) {
				t.Errorf("%s/%s is not upstream and not listed as ours", pkg.local, name)
			}
		}
	}
}
