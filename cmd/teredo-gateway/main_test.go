package main

import (
	"context"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	base := []string{"-addr", "198.18.0.7", "-prefix6", "2001:db8:2::/64"}
	o, err := parseFlags(base, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.bind != netip.MustParseAddrPort("198.18.0.7:3544") || o.prefix6 != netip.MustParsePrefix("2001:db8:2::/64") || o.tun != "teredo-gw" {
		t.Fatalf("options %+v", o)
	}
	o, err = parseFlags(append(base, "-bind", "10.0.0.5:3544", "-secondary-port", "3545", "-ndp-proxy", "eth0"), noEnv, io.Discard)
	if err != nil || o.bind.Addr() != netip.MustParseAddr("10.0.0.5") || o.secondaryPort != 3545 || o.ndpProxy != "eth0" {
		t.Fatalf("options %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{},
		{"-addr", "198.18.0.7"},
		{"-addr", "2001:db8::1", "-prefix6", "2001:db8:2::/64"},
		{"-addr", "198.18.0.7", "-prefix6", "2001:db8:2::/48"},
		{"-addr", "198.18.0.7", "-prefix6", "2001:0:1:2::/64"},
		append(base, "-secondary-port", "3544"),
		append(base, "-secondary-port", "70000"),
		append(base, "-mtu", "1000"),
		append(base, "-tun", "a-name-that-is-far-too-long"),
		append(base, "-bind", "[::1]:3544"),
		append(base, "extra"),
		append(base, "-log-format", "xml"),
	} {
		if _, err := parseFlags(args, noEnv, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded", args)
		}
	}
}

func TestRunBadFlags(t *testing.T) {
	var stderr strings.Builder
	if code := run(context.Background(), []string{"-addr", "x"}, noEnv, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.HasPrefix(stderr.String(), "teredo-gateway: -addr") || !strings.HasSuffix(stderr.String(), "\nRun 'teredo-gateway -h' for the flags.\n") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

func noEnv(string) string { return "" }

// TestConventions checks the environment variables and -version every
// command shares.
func TestConventions(t *testing.T) {
	env := map[string]string{"TEREDO_GATEWAY_ADDR": "198.18.0.7", "TEREDO_GATEWAY_PREFIX6": "2001:db8:2::/64", "TEREDO_GATEWAY_NDP_PROXY": "eth1"}
	o, err := parseFlags([]string{"-ndp-proxy", "eth0"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || o.addr != netip.MustParseAddr("198.18.0.7") || o.prefix6 != netip.MustParsePrefix("2001:db8:2::/64") || o.ndpProxy != "eth0" {
		t.Errorf("from the environment: %+v, %v", o, err)
	}
	var stdout strings.Builder
	if code := run(context.Background(), []string{"-version"}, noEnv, &stdout, io.Discard); code != 0 ||
		!strings.HasPrefix(stdout.String(), "teredo-gateway ") || !strings.Contains(stdout.String(), "go1.") {
		t.Errorf("-version: exit %d, stdout %q", code, stdout.String())
	}
}

func TestParseNetstackFlags(t *testing.T) {
	base := []string{"-addr", "198.18.0.7", "-prefix6", "2001:db8:2::/64"}
	o, err := parseFlags(append(base, "-netstack", "-netstack-forward", "80=127.0.0.1:8080", "-netstack-forward", "22=[::1]:22"), noEnv, io.Discard)
	if err != nil || !o.netstack || len(o.forwards) != 2 || o.forwards[0] != (forwardSpec{80, "127.0.0.1:8080"}) || o.forwards[1] != (forwardSpec{22, "[::1]:22"}) {
		t.Fatalf("options %+v, %v", o, err)
	}
	for _, args := range [][]string{
		append(base, "-netstack-forward", "80=127.0.0.1:8080"), // without -netstack
		append(base, "-netstack", "-ndp-proxy", "eth0"),
		append(base, "-netstack", "-netstack-forward", "80"),
		append(base, "-netstack", "-netstack-forward", "0=127.0.0.1:1"),
		append(base, "-netstack", "-netstack-forward", "70000=127.0.0.1:1"),
		append(base, "-netstack", "-netstack-forward", "80=127.0.0.1"),
		append(base, "-netstack", "-netstack-forward", "80=:8080"),
		append(base, "-netstack", "-netstack-forward", "80=127.0.0.1:0"),
		append(base, "-netstack", "-netstack-forward", "80=a:1", "-netstack-forward", "80=b:2"),
	} {
		if _, err := parseFlags(args, noEnv, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded", args)
		}
	}
}
