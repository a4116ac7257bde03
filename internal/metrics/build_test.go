package metrics

import (
	"runtime/debug"
	"testing"
)

func TestBuildFrom(t *testing.T) {
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want BuildInfo
	}{
		{"command", debug.BuildInfo{GoVersion: "go1.26.3", Main: debug.Module{Path: ModulePath, Version: "v1.0.0"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}},
			BuildInfo{Version: "v1.0.0", Revision: "abc-dirty", GoVersion: "go1.26.3"}},
		{"dependency", debug.BuildInfo{GoVersion: "go1.26.3", Main: debug.Module{Path: "example.com/app", Version: "(devel)"},
			Deps:     []*debug.Module{{Path: "golang.org/x/net", Version: "v0.62.0"}, {Path: ModulePath, Version: "v1.2.0"}},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "app-revision"}}},
			BuildInfo{Version: "v1.2.0", GoVersion: "go1.26.3"}},
		{"absent", debug.BuildInfo{GoVersion: "go1.26.3", Main: debug.Module{Path: "example.com/app"}},
			BuildInfo{Version: "unknown", GoVersion: "go1.26.3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := buildFrom(&tt.bi); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if b := Build(); b.GoVersion == "" || b.Version == "" {
		t.Errorf("Build() = %+v", b)
	}
}
