package main

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/internal/socksd"
)

// TestRealStartClientOptions: the client flags reach stack.Config.
func TestRealStartClientOptions(t *testing.T) {
	cfg, err := parseConfig([]string{"-server", "127.0.0.1", "-local-discovery", "-cone-probe", "-secondary", "127.0.0.9", "-relay", "127.0.0.7:3545"},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := socksd.StackConfig(&cfg.Config, slog.New(slog.DiscardHandler), fakeLookup(nil))
	if !got.PortMapping || !got.LocalDiscovery || !got.ConeProbe || got.Secondary != netip.MustParseAddr("127.0.0.9") ||
		!got.PeerRelay || got.FixedRelay != netip.MustParseAddrPort("127.0.0.7:3545") {
		t.Fatalf("stack.Config %+v", got)
	}
}
