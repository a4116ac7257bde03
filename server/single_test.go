package server

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// TestSingleAddress runs the server on one address, with and without a
// secondary port, and checks which RSs get RAs from where.
func TestSingleAddress(t *testing.T) {
	for _, tt := range []struct {
		name    string
		secPort uint16
	}{
		{"primary only", 0},
		{"secondary port", 3545},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, base := startServer(t, func(c *Config) {
				c.SingleAddress = true
				c.SecondaryPort = tt.secPort
				c.Secondary = netip.MustParseAddr("127.0.0.9") // ignored
			})
			primary, secondary := s.Addrs()
			if tt.secPort == 0 && secondary.IsValid() {
				t.Fatalf("secondary %v, want none", secondary)
			}
			if tt.secPort != 0 && secondary != netip.AddrPortFrom(primary.Addr(), tt.secPort) {
				t.Fatalf("secondary %v, want %v:%d", secondary, primary.Addr(), tt.secPort)
			}
			c := newTestClient(t, addrIn(base, 10))
			n := [8]byte{1, 2, 3, 4, 5, 6, 7, byte(rand.IntN(256))}
			c.send(proto.AppendRS(nil, n, false), primary)
			if _, from := c.recv(); from != primary {
				t.Fatalf("restricted RA from %v, want %v", from, primary)
			}
			c.send(proto.AppendRS(nil, n, true), primary)
			if tt.secPort == 0 {
				// Nothing can answer a cone RS: no reply, a counted drop.
				c.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, _, err := c.conn.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
					t.Fatal("cone RS answered by a single-address server")
				}
				if d := s.Stats().Drops[DropNoSecondary]; d != 1 {
					t.Fatalf("no_secondary drops = %d, want 1", d)
				}
				return
			}
			if _, from := c.recv(); from != secondary {
				t.Fatalf("cone RA from %v, want %v", from, secondary)
			}
			c.send(proto.AppendRS(nil, n, false), secondary)
			if _, from := c.recv(); from != secondary {
				t.Fatalf("restricted RA to the secondary port from %v", from)
			}
		})
	}
}

func TestSingleAddressConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Primary: tPrimary, SecondaryPort: 4000},
		{Primary: tPrimary, SingleAddress: true, SecondaryPort: proto.Port},
	} {
		if _, err := NewProcessor(cfg); err == nil {
			t.Errorf("NewProcessor(%+v) succeeded", cfg)
		}
	}
}
