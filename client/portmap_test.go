package client

import (
	"net/netip"
	"testing"
	"time"

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

// openingBubble returns the bubble the client sent to open its port mapping, or
// fails.
func openingBubble(t *testing.T, h *harness, mapping netip.AddrPort) sent {
	t.Helper()
	ds := h.net.take()
	if len(ds) != 1 {
		t.Fatalf("sent %d datagrams before qualifying, want the opening bubble only: %+v", len(ds), ds)
	}
	d := ds[0]
	var p proto.Packet
	if err := p.Parse(d.b); err != nil || !proto.IsBubble(p.IPv6) {
		t.Fatalf("first datagram is not a bubble: %x (%v)", d.b, err)
	}
	want := proto.Address{Server: server1, Mapped: mapping}.Addr()
	if d.to != ap(server1b) || proto.Dst(p.IPv6) != want || !proto.Src(p.IPv6).IsLinkLocalUnicast() {
		t.Fatalf("opening bubble %v → %v to %v; want link-local → %v to the secondary %v",
			proto.Src(p.IPv6), proto.Dst(p.IPv6), d.to, want, ap(server1b))
	}
	return d
}

// TestPortMapOpening: with a port mapping the client first sends a bubble to
// its own mapped address through the server's secondary, and qualifies when
// the server forwards it back from its primary (the server's flow is then the
// mapping's); a copy through another server port opens nothing, and without
// any answer the client qualifies after openWait. Qualified through the
// mapping, it sends no direct bubbles to a Teredo peer, only the indirect one.
func TestPortMapOpening(t *testing.T) {
	mapping := netip.MustParseAddrPort("198.51.100.7:3544")
	newH := func() *harness {
		return newHarness(t, func(c *Config) { c.PortMapping = func() netip.AddrPort { return mapping } })
	}
	t.Run("answered", func(t *testing.T) {
		h := newH()
		if err := h.c.Start(); err != nil {
			t.Fatal(err)
		}
		d := openingBubble(t, h, mapping)
		var p proto.Packet
		p.Parse(d.b)
		back := append(proto.AppendOrigin(nil, netip.MustParseAddrPort("198.51.100.7:9999")), p.IPv6...)
		// Through a rewritten server port: consumed, no RS yet.
		h.c.Receive(back, netip.AddrPortFrom(server1, 40000))
		if ds := h.net.take(); len(ds) != 0 {
			t.Fatalf("sent %d datagrams after the bubble came from another port", len(ds))
		}
		h.c.Receive(back, ap(server1))
		r := h.takeRS()
		if len(r) != 1 || r[0].to != ap(server1) {
			t.Fatalf("after the opening bubble came back: RS %+v, want one to %v", r, ap(server1))
		}
		h.c.Receive(ra(r[0], server1, mapping, 0), ap(server1))
		us, ok := h.c.Addr()
		if a, _ := proto.ParseAddress(us); !ok || a.Mapped != mapping {
			t.Fatalf("address %v (%v), want one carrying %v", us, ok, mapping)
		}
		ctr := h.c.Status().Counters
		if ctr.PortMapOpens != 1 || ctr.PortMapOpened != 1 {
			t.Fatalf("counters opens %d opened %d, want 1 and 1", ctr.PortMapOpens, ctr.PortMapOpened)
		}
		h.net.take() // the NAT probe
		// A late copy is still recognised, not taken for a peer's bubble.
		h.c.Receive(back, ap(server1))
		if ds := h.net.take(); len(ds) != 0 {
			t.Fatalf("answered a late opening bubble: %+v", ds)
		}
		h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")})
		bub, other := bubbles(h.net.take())
		if len(bub) != 1 || len(other) != 0 || bub[0].to != ap(peerServer) {
			t.Fatalf("bubbles to a peer %+v (other %d); want only the indirect one to %v", bub, len(other), ap(peerServer))
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		h := newH()
		if err := h.c.Start(); err != nil {
			t.Fatal(err)
		}
		openingBubble(t, h, mapping)
		h.advance(openWait - time.Millisecond)
		if ds := h.net.take(); len(ds) != 0 {
			t.Fatalf("sent %d datagrams before openWait", len(ds))
		}
		h.advance(time.Millisecond)
		if r := h.takeRS(); len(r) != 1 || r[0].to != ap(server1) {
			t.Fatalf("after openWait: RS %+v, want one to %v", r, ap(server1))
		}
	})
	t.Run("no mapping", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.PortMapping = func() netip.AddrPort { return netip.AddrPort{} } })
		h.qualify() // fails on anything but an RS first
	})
}
