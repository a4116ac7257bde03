package stack

import (
	"errors"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// TestDiscoveryTransportTTL checks that the discovery wrapper passes a
// per-datagram TTL through to a socket that can set it, and reports
// ErrUnsupported for one that cannot (the client then sends normally).
func TestDiscoveryTransportTTL(t *testing.T) {
	nw := udpiotest.NewNetwork()
	a, err := nw.Listen(netip.MustParseAddrPort("192.0.2.1:3544"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := nw.Listen(netip.MustParseAddrPort("198.51.100.2:4000"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var ttls []int
	nw.SetHook(func(p *udpiotest.Packet) bool { ttls = append(ttls, p.TTL); return true })

	tr := &discoveryTransport{conn: a, log: slog.New(slog.DiscardHandler)}
	if err := tr.WriteToTTL([]byte("x"), b.LocalAddr(), 2); err != nil {
		t.Fatal(err)
	}
	if len(ttls) != 1 || ttls[0] != 2 {
		t.Fatalf("TTLs seen %v, want [2]", ttls)
	}
	plain := &discoveryTransport{conn: &recordingConn{}, log: slog.New(slog.DiscardHandler)}
	if err := plain.WriteToTTL([]byte("x"), b.LocalAddr(), 2); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("plain transport: %v, want ErrUnsupported", err)
	}
	var _ udpio.TTLWriter = tr
}
