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
	o, err := parseFlags(base, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.bind != netip.MustParseAddrPort("198.18.0.7:3544") || o.prefix6 != netip.MustParsePrefix("2001:db8:2::/64") || o.tun != "teredo-gw" {
		t.Fatalf("options %+v", o)
	}
	o, err = parseFlags(append(base, "-bind", "10.0.0.5:3544", "-secondary-port", "3545", "-ndp-proxy", "eth0"), io.Discard)
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
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded", args)
		}
	}
}

func TestRunBadFlags(t *testing.T) {
	var stderr strings.Builder
	if code := run(context.Background(), []string{"-addr", "x"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "-addr") {
		t.Fatalf("stderr %q", stderr.String())
	}
}
