package main

import (
	"io"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{name: "defaults", check: func(t *testing.T, c *Config) {
			if c.Listen != "127.0.0.1:1080" || !reflect.DeepEqual(c.Servers, []string{DefaultServer}) || c.IPv4 != "direct" || c.Prefer != "ipv4" || c.Bind.IsValid() {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "servers and bind", args: []string{"-server", "a.example, b.example", "-bind", "0.0.0.0:3545"}, check: func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.Servers, []string{"a.example", "b.example"}) || c.Bind != netip.MustParseAddrPort("0.0.0.0:3545") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "env", env: map[string]string{"TEREDO_SOCKS_LISTEN": "[::1]:9050", "TEREDO_SOCKS_PREFER": "ipv6", "TEREDO_SOCKS_FORWARD": "80=127.0.0.1:8080,22=localhost:22", "TEREDO_SOCKS_V": "true"}, check: func(t *testing.T, c *Config) {
			if c.Listen != "[::1]:9050" || c.Prefer != "ipv6" || !c.Verbose || len(c.Forwards) != 2 || c.Forwards[1] != (Forward{Port: 22, Target: "localhost:22"}) {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "flag beats env", args: []string{"-prefer", "ipv4", "-forward", "8080=127.0.0.1:80"}, env: map[string]string{"TEREDO_SOCKS_PREFER": "ipv6", "TEREDO_SOCKS_FORWARD": "80=127.0.0.1:8080"}, check: func(t *testing.T, c *Config) {
			if c.Prefer != "ipv4" || len(c.Forwards) != 1 || c.Forwards[0].Port != 8080 {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "open proxy refused", args: []string{"-listen", "0.0.0.0:1080"}, wantErr: "open proxy"},
		{name: "open proxy with auth", args: []string{"-listen", "0.0.0.0:1080", "-user", "u", "-pass", "p"}},
		{name: "user without pass", args: []string{"-user", "u"}, wantErr: "go together"},
		{name: "max sessions", args: []string{"-max-sessions", "12000"}, check: func(t *testing.T, c *Config) {
			if c.MaxSessions != 12000 {
				t.Fatalf("MaxSessions %d", c.MaxSessions)
			}
		}},
		{name: "max sessions zero", args: []string{"-max-sessions", "0"}, wantErr: "at least 1"},
		{name: "bad ipv4 mode", args: []string{"-ipv4", "maybe"}, wantErr: "direct or reject"},
		{name: "bad prefer", args: []string{"-prefer", "ipv5"}, wantErr: "ipv4 or ipv6"},
		{name: "ipv6 auto by default", check: func(t *testing.T, c *Config) {
			if c.IPv6 != "auto" {
				t.Fatalf("-ipv6 %q", c.IPv6)
			}
		}},
		{name: "ipv6 from env", env: map[string]string{"TEREDO_SOCKS_IPV6": "direct"}, check: func(t *testing.T, c *Config) {
			if c.IPv6 != "direct" {
				t.Fatalf("-ipv6 %q", c.IPv6)
			}
		}},
		{name: "bad ipv6", args: []string{"-ipv6", "native"}, wantErr: "auto, teredo or direct"},
		{name: "forward needs teredo", args: []string{"-ipv6", "direct", "-forward", "80=a:1"}, wantErr: "Teredo address"},
		{name: "bad bind", args: []string{"-bind", "[::1]:80"}, wantErr: "IPv4:port"},
		{name: "bad forward", args: []string{"-forward", "80"}, wantErr: "PORT=HOST:PORT"},
		{name: "bad forward port", args: []string{"-forward", "0=a:1"}, wantErr: "bad port"},
		{name: "bad forward target", args: []string{"-forward", "80=nohost"}, wantErr: "HOST:PORT"},
		{name: "duplicate forward", args: []string{"-forward", "80=a:1", "-forward", "80=b:2"}, wantErr: "twice"},
		{name: "bad env names the variable", env: map[string]string{"TEREDO_SOCKS_BIND": "nowhere"}, wantErr: "TEREDO_SOCKS_BIND"},
		{name: "open proxy from env", env: map[string]string{"TEREDO_SOCKS_LISTEN": "0.0.0.0:1080"}, wantErr: "TEREDO_SOCKS_LISTEN"},
		{name: "flag overrides a bad env", args: []string{"-bind", "0.0.0.0:1"}, env: map[string]string{"TEREDO_SOCKS_BIND": "nowhere"}, check: func(t *testing.T, c *Config) {
			if c.Bind != netip.MustParseAddrPort("0.0.0.0:1") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "bad flag over env names the flag", args: []string{"-bind", "nowhere"}, env: map[string]string{"TEREDO_SOCKS_BIND": "0.0.0.0:1"}, wantErr: "-bind"},
		{name: "auth from env opens listen", env: map[string]string{"TEREDO_SOCKS_LISTEN": "[::]:1080", "TEREDO_SOCKS_USER": "u", "TEREDO_SOCKS_PASS": "p"}, check: func(t *testing.T, c *Config) {
			if c.User != "u" || c.Pass != "p" || c.Listen != "[::]:1080" {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "demo", args: []string{"-demo", "-status", "127.0.0.1:9090"}, check: func(t *testing.T, c *Config) {
			if !c.Demo || c.Status != "127.0.0.1:9090" {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "bad env", env: map[string]string{"TEREDO_SOCKS_V": "perhaps"}, wantErr: "TEREDO_SOCKS_V"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "not defined"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected argument"},
		{name: "log flags", args: []string{"-log-format", "json", "-log-level", "warn"}, check: func(t *testing.T, c *Config) {
			if c.LogFormat != "json" || c.LogLevel != "warn" {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "log flags from env", env: map[string]string{"TEREDO_SOCKS_LOG_FORMAT": "json"}, check: func(t *testing.T, c *Config) {
			if c.LogFormat != "json" {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantErr: "-log-format"},
		{name: "bad log level", env: map[string]string{"TEREDO_SOCKS_LOG_LEVEL": "loud"}, wantErr: "-log-level"},
		{name: "empty server", args: []string{"-server", " , "}, wantErr: "at least one"},
		{name: "client option defaults", check: func(t *testing.T, c *Config) {
			if !c.PortMap || c.LocalDiscovery || c.ConeProbe || c.Secondary.IsValid() {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "client options", args: []string{"-portmap=false", "-local-discovery", "-cone-probe", "-secondary", "198.18.0.3"}, check: func(t *testing.T, c *Config) {
			if c.PortMap || !c.LocalDiscovery || !c.ConeProbe || c.Secondary != netip.MustParseAddr("198.18.0.3") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "client options from env", env: map[string]string{"TEREDO_SOCKS_PORTMAP": "false", "TEREDO_SOCKS_LOCAL_DISCOVERY": "true", "TEREDO_SOCKS_CONE_PROBE": "1", "TEREDO_SOCKS_SECONDARY": "198.18.0.3"}, check: func(t *testing.T, c *Config) {
			if c.PortMap || !c.LocalDiscovery || !c.ConeProbe || c.Secondary != netip.MustParseAddr("198.18.0.3") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "bad secondary", args: []string{"-secondary", "2001:db8::1"}, wantErr: "want an IPv4 address"},
		{name: "bad secondary from env", env: map[string]string{"TEREDO_SOCKS_SECONDARY": "x"}, wantErr: "TEREDO_SOCKS_SECONDARY"},
		{name: "peer relay defaults", check: func(t *testing.T, c *Config) {
			if !c.PeerRelay || c.FixedRelay.IsValid() {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "peer relay off, fixed relay", args: []string{"-peer-relay=false", "-relay", "198.18.0.4"}, check: func(t *testing.T, c *Config) {
			if c.PeerRelay || c.FixedRelay != netip.MustParseAddrPort("198.18.0.4:3544") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "fixed relay with port from env", env: map[string]string{"TEREDO_SOCKS_RELAY": "198.18.0.4:3545", "TEREDO_SOCKS_PEER_RELAY": "0"}, check: func(t *testing.T, c *Config) {
			if c.PeerRelay || c.FixedRelay != netip.MustParseAddrPort("198.18.0.4:3545") {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "bad relay", args: []string{"-relay", "2001:db8::1"}, wantErr: "-relay"},
		{name: "bad relay port", args: []string{"-relay", "198.18.0.4:0"}, wantErr: "want IPv4 or IPv4:port"},
		{name: "bad relay from env", env: map[string]string{"TEREDO_SOCKS_RELAY": "relay.example"}, wantErr: "TEREDO_SOCKS_RELAY"},
		{name: "bad portmap from env", env: map[string]string{"TEREDO_SOCKS_PORTMAP": "maybe"}, wantErr: "TEREDO_SOCKS_PORTMAP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			c, err := parseConfig(tt.args, getenv, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// FuzzParseForward checks that -forward values never panic and that what
// is accepted is usable: a non-zero port and a HOST:PORT target.
func FuzzParseForward(f *testing.F) {
	for _, s := range []string{"80=127.0.0.1:8080", "22=localhost:22", "8080=[::1]:80", "0=a:1", "80=", "=a:1", "80=a:0", "65536=a:1", "1=a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := parseForward(s)
		if err != nil {
			return
		}
		host, port, err := net.SplitHostPort(fw.Target)
		if fw.Port == 0 || err != nil || host == "" || port == "" || port == "0" {
			t.Fatalf("accepted %q as %+v", s, fw)
		}
		var l forwardList
		if err := l.Set(l.String()); err != nil || len(l) != 0 {
			t.Fatalf("empty list round trip: %v", err)
		}
		l = forwardList{fw}
		var back forwardList
		if !strings.Contains(fw.Target, ",") {
			if err := back.Set(l.String()); err != nil || len(back) != 1 || back[0] != fw {
				t.Fatalf("%q: round trip of %+v gave %+v, %v", s, fw, back, err)
			}
		}
	})
}
