package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestEnvName(t *testing.T) {
	for _, tt := range []struct{ cmd, flag, want string }{
		{"teredo-server", "primary", "TEREDO_SERVER_PRIMARY"},
		{"teredo-server", "any-ipv4", "TEREDO_SERVER_ANY_IPV4"},
		{"teredo-socks", "log-format", "TEREDO_SOCKS_LOG_FORMAT"},
		{"teredo-relay", "", "TEREDO_RELAY_"},
	} {
		if got := EnvName(tt.cmd, tt.flag); got != tt.want {
			t.Errorf("EnvName(%q, %q) = %q, want %q", tt.cmd, tt.flag, got, tt.want)
		}
	}
}

func newFlags(c *Common) (*flag.FlagSet, *int) {
	fs := flag.NewFlagSet("teredo-test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	n := fs.Int("max-peers", 5, "")
	c.Register(fs)
	return fs, n
}

func TestParse(t *testing.T) {
	env := map[string]string{"TEREDO_TEST_MAX_PEERS": "7", "TEREDO_TEST_LOG_FORMAT": "json"}
	getenv := func(k string) string { return env[k] }
	var c Common
	fs, n := newFlags(&c)
	if err := Parse(fs, []string{"-max-peers", "9"}, getenv); err != nil || *n != 9 || c.LogFormat != "json" || c.LogLevel != "info" {
		t.Fatalf("flag over environment: %d %+v %v", *n, c, err)
	}

	for _, tt := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"-nope"}, "", "flag provided but not defined: -nope"},
		{[]string{"extra"}, "", `unexpected argument "extra"`},
		{nil, "x", "environment variable TEREDO_TEST_MAX_PEERS: "},
	} {
		var c Common
		fs, _ := newFlags(&c)
		err := Parse(fs, tt.args, func(k string) string {
			if k == "TEREDO_TEST_MAX_PEERS" {
				return tt.env
			}
			return ""
		})
		var ue UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q, env %q: %v, want a UsageError with %q", tt.args, tt.env, err, tt.want)
		}
	}
}

func TestExit(t *testing.T) {
	for _, tt := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, ExitOK, ""},
		{flag.ErrHelp, ExitOK, ""},
		{Usagef("-port %d is outside 1..65535", 0), ExitUsage, "teredo-test: -port 0 is outside 1..65535\nRun 'teredo-test -h' for the flags.\n"},
		{errors.New("cannot bind"), ExitFailure, "teredo-test: cannot bind\n"},
	} {
		var sb strings.Builder
		if code := Exit(&sb, "teredo-test", tt.err); code != tt.code || sb.String() != tt.stderr {
			t.Errorf("Exit(%v) = %d, %q; want %d, %q", tt.err, code, sb.String(), tt.code, tt.stderr)
		}
	}
}

func TestLogger(t *testing.T) {
	for _, tt := range []struct {
		c         Common
		debug     bool
		info      bool
		json      bool
		wantCheck bool
	}{
		{Common{LogFormat: "text", LogLevel: "info"}, false, true, false, true},
		{Common{LogFormat: "json", LogLevel: "warn"}, false, false, true, true},
		{Common{LogFormat: "text", LogLevel: "warn", Verbose: true}, true, true, false, true},
		{Common{LogFormat: "xml", LogLevel: "info"}, false, true, false, false},
		{Common{LogFormat: "text", LogLevel: "loud"}, false, true, false, false},
	} {
		if err := tt.c.Check(); (err == nil) != tt.wantCheck {
			t.Errorf("%+v: Check = %v", tt.c, err)
			continue
		}
		var sb strings.Builder
		log := tt.c.Logger(&sb)
		log.Debug("d")
		log.Info("i")
		out := sb.String()
		if strings.Contains(out, "d") != tt.debug || strings.Contains(out, `"i"`) && !tt.json || strings.Contains(out, "msg=i") == (tt.json || !tt.info) {
			t.Errorf("%+v logged %q", tt.c, out)
		}
		if tt.json && out != "" {
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil {
				t.Errorf("%+v: not JSON: %q", tt.c, out)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	if v := Version("teredo-test"); !strings.HasPrefix(v, "teredo-test ") || !strings.Contains(v, "go1.") {
		t.Errorf("Version = %q", v)
	}
}
