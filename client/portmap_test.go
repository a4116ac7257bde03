package client

import (
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// TestMappedEndpoint: the address carries the port mapping's endpoint, not
// the one the server saw, and a refresh that sees yet another port does not
// change it.
func TestMappedEndpoint(t *testing.T) {
	portMapped := netip.MustParseAddrPort("198.51.100.7:3544")
	h := newHarness(t, func(c *Config) {
		c.MappedEndpoint = func(saw netip.AddrPort) netip.AddrPort {
			if saw.Addr() == portMapped.Addr() {
				return portMapped
			}
			return saw
		}
	})
	us := h.qualify() // the server saw mappedUs (port 40000)
	a, _ := proto.ParseAddress(us)
	if a.Mapped != portMapped {
		t.Fatalf("address carries %v, want the port mapping %v", a.Mapped, portMapped)
	}
	h.serve() // refreshes: the server sees mappedUs again
	h.advance(RefreshInterval + 1)
	for _, ev := range h.takeEvents() {
		if _, ok := ev.(AddressChanged); ok {
			t.Fatalf("address changed at a refresh: %+v", ev)
		}
	}
	if got, _ := h.c.Addr(); got != us {
		t.Fatalf("address %v, want %v", got, us)
	}
}
