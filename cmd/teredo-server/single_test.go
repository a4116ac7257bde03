package main

import (
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestParseFlagsSingleAddress(t *testing.T) {
	p := netip.MustParseAddr("198.18.0.1")
	for _, tt := range []struct {
		args    []string
		want    options
		wantErr string
	}{
		{[]string{"-primary", "198.18.0.1", "-single-address"},
			options{primary: p, single: true, port: 3544, mtu: 1280, raw: rawAuto, rate: 50, burst: 100}, ""},
		{[]string{"-primary", "198.18.0.1", "-single-address", "-secondary-port", "3545"},
			options{primary: p, single: true, secondaryPort: 3545, port: 3544, mtu: 1280, raw: rawAuto, rate: 50, burst: 100}, ""},
		{[]string{"-primary", "198.18.0.1", "-secondary-port", "3545"}, options{}, "needs -single-address"},
		{[]string{"-primary", "198.18.0.1", "-single-address", "-secondary", "198.18.0.9"}, options{}, "exclude each other"},
		{[]string{"-primary", "198.18.0.1", "-single-address", "-secondary-port", "3544"}, options{}, "other than -port"},
		{[]string{"-primary", "198.18.0.1", "-single-address", "-secondary-port", "65536"}, options{}, "other than -port"},
	} {
		got, err := parseFlags(tt.args, io.Discard)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err = %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %+v, %v\nwant %+v", tt.args, got, err, tt.want)
		}
		if cfg := got.config(nil); !cfg.SingleAddress || cfg.SecondaryPort != tt.want.secondaryPort {
			t.Errorf("%q: config %+v", tt.args, cfg)
		}
	}
}
