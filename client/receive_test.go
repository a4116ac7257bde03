package client

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// trustPeer makes peerAddr trusted at mapping m through the bubble
// exchange, and returns the bubble source the reply was addressed to.
func (h *harness) trustPeer(us netip.Addr, m netip.AddrPort) {
	h.t.Helper()
	h.c.Transmit([][]byte{ipPacket(us, peerAddr, "q")})
	h.net.take()
	reply := proto.AppendBubble(nil, peerAddr, h.c.bubbleSource(peerAddr.As16()), 0)
	if h.c.Receive(reply, m) != nil {
		h.t.Fatal("bubble delivered")
	}
	if h.peerState(peerAddr) != peer.Reachable {
		h.t.Fatalf("peer not trusted: %v", h.c.Status().Counters.Drops)
	}
	h.net.take()
}

func TestReceiveCase1Trusted(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.trustPeer(us, peerMapped)
	in := ipPacket(peerAddr, us, "data")
	dg := append(bytes.Clone(in), 1, 2, 3) // trailing bytes (RFC 6081 trailers) are not part of the packet
	got := h.c.Receive(dg, peerMapped)
	if !bytes.Equal(got, in) || &got[0] != &dg[0] {
		t.Fatalf("case 1: got %x", got)
	}
	// The same peer from another mapping is not case 1 and not case 3.
	if h.c.Receive(in, netip.MustParseAddrPort("203.0.113.5:5001")) != nil {
		t.Fatal("delivered from a wrong mapping")
	}
	// Trusted peers stay valid 30 s after their last packet.
	h.serve()
	h.advance(29 * time.Second)
	h.c.Receive(in, peerMapped)
	h.advance(29 * time.Second)
	if to, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")}); !ok || to != peerMapped {
		t.Fatal("receive did not keep the peer valid")
	}
	h.advance(31 * time.Second)
	if _, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")}); ok {
		t.Fatal("peer valid 31 s after its last packet")
	}
}

func TestReceiveCase3(t *testing.T) {
	tests := []struct {
		name      string
		bubble    bool
		from      netip.AddrPort
		dst       func(h *harness, us netip.Addr) netip.Addr
		trusted   bool
		delivered bool
		reason    string
	}{
		{"data from matching mapping", false, peerMapped, func(_ *harness, us netip.Addr) netip.Addr { return us }, true, true, ""},
		{"bubble from matching mapping", true, peerMapped, func(_ *harness, us netip.Addr) netip.Addr { return us }, true, false, ""},
		{"symmetric peer answers our nonce", true, relay2AP, func(h *harness, _ netip.Addr) netip.Addr { return h.c.bubbleSource(peerAddr.As16()) }, true, false, ""},
		{"bubble to a forged nonce", true, relay2AP, func(h *harness, _ netip.Addr) netip.Addr { return proto.LinkLocalFromID([8]byte{1}) }, false, false, "unverified-bubble"},
		{"bubble from another mapping", true, relay2AP, func(_ *harness, us netip.Addr) netip.Addr { return us }, false, false, "unverified-bubble"},
		{"matching but non-global", false, netip.MustParseAddrPort("10.0.0.1:5000"), func(_ *harness, us netip.Addr) netip.Addr { return us }, false, false, "not-qualified"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			src := peerAddr
			if tt.name == "matching but non-global" {
				src = proto.Address{Server: peerServer, Mapped: tt.from}.Addr()
				tt.reason = "non-global-ipv4"
			}
			// A queued packet waits for the peer.
			queued := ipPacket(us, src, "queued")
			h.c.Transmit([][]byte{queued})
			h.net.take()
			before := h.drops(tt.reason)
			var in []byte
			if tt.bubble {
				in = proto.AppendBubble(nil, src, tt.dst(h, us), 0)
			} else {
				in = ipPacket(src, tt.dst(h, us), "data")
			}
			got := h.c.Receive(in, tt.from)
			if (got != nil) != tt.delivered {
				t.Fatalf("delivered %v", got != nil)
			}
			trusted := h.peerState(src) == peer.Reachable
			if trusted != tt.trusted {
				t.Fatalf("trusted %v", trusted)
			}
			ds := h.net.take()
			if tt.trusted {
				if len(ds) != 1 || ds[0].to != tt.from || !bytes.Equal(ds[0].b, queued) {
					t.Fatalf("queue not flushed to %v: %+v", tt.from, ds)
				}
				if to, ok := h.c.Transmit([][]byte{queued}); !ok || to != tt.from {
					t.Fatalf("fast path to %v %v", to, ok)
				}
			} else if h.drops(tt.reason) != before+1 {
				t.Fatalf("drops %v, want %s", h.c.Status().Counters.Drops, tt.reason)
			}
		})
	}
}

func TestReceiveCase6HeldUntilEcho(t *testing.T) {
	for _, tt := range []struct {
		name    string
		replyBy netip.AddrPort
		deliver bool
	}{
		{"same relay", relayAP, true},
		{"other relay", relay2AP, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			in := ipPacket(nativeDst, us, "from a relay")
			if h.c.Receive(in, relayAP) != nil {
				t.Fatal("unverified native source delivered at once")
			}
			ds := h.net.take()
			if len(ds) != 1 || ds[0].to != ap(server1) {
				t.Fatalf("no echo test: %+v", ds)
			}
			_, dst, _, body := echoRequest(t, ds[0])
			if dst != nativeDst {
				t.Fatalf("echo to %v", dst)
			}
			h.c.Receive(echoReply(nativeDst, us, body), tt.replyBy)
			d := h.takeDelivered()
			if tt.deliver != (len(d) == 1) {
				t.Fatalf("held packet delivered: %d", len(d))
			}
			if tt.deliver && !bytes.Equal(d[0], in) {
				t.Fatal("wrong packet")
			}
			if !tt.deliver && h.drops("unverified-source") != 1 {
				t.Fatalf("drops %v", h.c.Status().Counters.Drops)
			}
			// Afterwards the relay that answered is case 1.
			if got := h.c.Receive(in, tt.replyBy); !bytes.Equal(got, in) {
				t.Fatal("not case 1 after the echo test")
			}
		})
	}
	t.Run("teredo source with another mapping", func(t *testing.T) {
		// A peer behind a symmetric NAT: its packet is held while a bubble
		// series (direct to the mapping in its address, indirect through
		// its server) asks it to answer from the mapping it uses towards
		// us; the answer, to our HMAC bubble source, releases the packet.
		h := newHarness(t, nil)
		us := h.qualify()
		in := ipPacket(peerAddr, us, "nat")
		if h.c.Receive(in, relay2AP) != nil {
			t.Fatal("delivered")
		}
		b, other := bubbles(h.net.take())
		if len(b) != 2 || len(other) != 0 || b[0].to != peerMapped || b[1].to != ap(peerServer) {
			t.Fatalf("bubbles %+v, other %+v", b, other)
		}
		// The retry timer repeats the bubbles.
		h.advance(retryDelay)
		if b, other := bubbles(h.net.take()); len(b) != 2 || len(other) != 0 {
			t.Fatalf("retry: bubbles %+v, other %+v", b, other)
		}
		// An answer from another endpoint proves that one, and the held
		// packet from relay2AP is not delivered by it.
		answer := proto.AppendBubble(nil, peerAddr, h.c.bubbleSource(peerAddr.As16()), 0)
		h.c.Receive(answer, relay2AP)
		if d := h.takeDelivered(); len(d) != 1 || !bytes.Equal(d[0], in) {
			t.Fatalf("held packet not delivered: %d", len(d))
		}
		if got := h.c.Receive(in, relay2AP); !bytes.Equal(got, in) {
			t.Fatal("not case 1 after the bubble answer")
		}
	})
	t.Run("teredo source answered from elsewhere", func(t *testing.T) {
		h := newHarness(t, nil)
		us := h.qualify()
		h.c.Receive(ipPacket(peerAddr, us, "nat"), relay2AP)
		h.net.take()
		answer := proto.AppendBubble(nil, peerAddr, h.c.bubbleSource(peerAddr.As16()), 0)
		h.c.Receive(answer, peerMapped)
		if d := h.takeDelivered(); len(d) != 0 {
			t.Fatal("held packet delivered though the peer answered from another mapping")
		}
		if h.drops("unverified-source") != 1 {
			t.Fatalf("drops %v", h.c.Status().Counters.Drops)
		}
	})
	t.Run("echo tests are rate limited", func(t *testing.T) {
		h := newHarness(t, nil)
		us := h.qualify()
		for range 10 {
			h.c.Receive(ipPacket(nativeDst, us, "x"), relayAP)
		}
		if n := len(h.net.take()); n != 1 {
			t.Fatalf("%d echo requests for 10 packets", n)
		}
		if h.drops("queue-full") != 2 {
			t.Fatalf("drops %v", h.c.Status().Counters.Drops)
		}
	})
}

func TestReceiveDrops(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.trustPeer(us, peerMapped)
	ll := netip.MustParseAddr("fe80::1")
	tests := []struct {
		name   string
		b      []byte
		from   netip.AddrPort
		reason string
	}{
		{"truncated", []byte{0x60, 0}, peerMapped, "truncated"},
		{"not ipv6", append([]byte{0x45}, make([]byte, 50)...), peerMapped, "not-ipv6"},
		{"bad length", append([]byte{0x60, 0, 0, 0, 0x10, 0}, make([]byte, 40)...), peerMapped, "bad-length"},
		{"bad indication", append([]byte{0, 7}, ipPacket(peerAddr, us, "x")...), peerMapped, "bad-indication"},
		{"link-local source", ipPacket(ll, us, "x"), peerMapped, "link-local-source"},
		{"multicast destination", ipPacket(peerAddr, proto.AllNodes, "x"), peerMapped, "multicast"},
		{"not our address", ipPacket(peerAddr, nativeDst, "x"), peerMapped, "not-our-address"},
		{"unspecified source", ipPacket(netip.IPv6Unspecified(), us, "x"), peerMapped, "malformed"},
		{"bubble from native source", proto.AppendBubble(nil, nativeDst, us, 0), relayAP, "unverified-bubble"},
		{"server packet without origin", proto.AppendBubble(nil, nativeDst, us, 0), ap(server1), "server-packet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.drops(tt.reason)
			if h.c.Receive(tt.b, tt.from) != nil {
				t.Fatal("delivered")
			}
			if h.drops(tt.reason) != before+1 {
				t.Fatalf("drops %v", h.c.Status().Counters.Drops)
			}
		})
	}
	h.c.Close()
	if h.c.Receive(ipPacket(peerAddr, us, "x"), peerMapped) != nil {
		t.Fatal("delivered after Close")
	}
}

func TestIndirectBubble(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	initiatorLL := proto.LinkLocalFromID([8]byte{9, 9, 9})
	withOrigin := append(proto.AppendOrigin(nil, peerMapped), proto.AppendBubble(nil, initiatorLL, us, 0)...)
	if h.c.Receive(withOrigin, ap(server1)) != nil {
		t.Fatal("delivered")
	}
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != peerMapped {
		t.Fatalf("direct bubble %+v", ds)
	}
	if src, dst, _ := bubbleInfo(t, ds[0]); src != us || dst != initiatorLL {
		t.Fatalf("reply %v -> %v", src, dst)
	}
	// Rate limited per destination.
	h.c.Receive(withOrigin, ap(server1))
	if len(h.net.take()) != 0 {
		t.Fatal("reply not rate limited")
	}
	h.advance(replyInterval)
	h.c.Receive(withOrigin, ap(server1))
	if len(h.net.take()) != 1 {
		t.Fatal("no reply after the interval")
	}
	// No origin indication: the mapping is guessed from a Teredo source.
	h.advance(replyInterval)
	h.c.Receive(proto.AppendBubble(nil, peerAddr, us, 0), ap(server1))
	if ds := h.net.take(); len(ds) != 1 || ds[0].to != peerMapped {
		t.Fatalf("guessed reply %+v", ds)
	}
	// A non-global origin gets nothing.
	h.c.Receive(append(proto.AppendOrigin(nil, netip.MustParseAddrPort("192.168.0.1:1")), proto.AppendBubble(nil, initiatorLL, us, 0)...), ap(server1))
	if len(h.net.take()) != 0 || h.drops("non-global-ipv4") != 1 {
		t.Fatal("replied to a non-global origin")
	}
	// No peer entry is created for indirect bubbles.
	if h.c.Status().Peers != 0 {
		t.Fatal("peer entry created")
	}
	// Data from the server (acting as a relay) is not an indirect bubble.
	in := ipPacket(nativeDst, us, "relayed")
	h.c.Receive(in, ap(server1))
	if ds := h.net.take(); len(ds) != 1 || ds[0].to != ap(server1) {
		t.Fatalf("server data not held and tested: %+v", ds)
	}
}

func TestLocalDiscovery(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.LocalDiscovery = true })
	us := h.qualify()
	group := netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port)
	// A discovery bubble within the first second, then every 200-300 s.
	h.advance(time.Second)
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != group {
		t.Fatalf("discovery %+v", ds)
	}
	if src, dst, hop := bubbleInfo(t, ds[0]); src != us || dst != proto.AllNodes || hop != 1 {
		t.Fatalf("discovery bubble %v -> %v hop %d", src, dst, hop)
	}
	h.serve()
	h.advance(199 * time.Second)
	if b, _ := bubbles(h.net.take()); len(b) != 0 {
		t.Fatal("discovery bubble before 200 s")
	}
	h.advance(101 * time.Second)
	if b, _ := bubbles(h.net.take()); len(b) != 1 {
		t.Fatal("no discovery bubble by 300 s")
	}

	// A neighbour behind the same NAT (same mapped IPv4, private source).
	nbMapped := netip.AddrPortFrom(mappedUs.Addr(), 50000)
	nb := proto.Address{Server: server1, Mapped: nbMapped}.Addr()
	nbLocal := netip.MustParseAddrPort("192.168.1.20:50000")
	disc := proto.AppendBubble(nil, nb, proto.AllNodes, 1)
	for _, bad := range []struct {
		b    []byte
		from netip.AddrPort
	}{
		{disc, netip.MustParseAddrPort("198.51.100.9:50000")},           // not private
		{proto.AppendBubble(nil, peerAddr, proto.AllNodes, 1), nbLocal}, // other mapped IPv4
		{proto.AppendBubble(nil, nb, us, 1), nbLocal},                   // not to ff02::1
	} {
		h.c.ReceiveDiscovery(bad.b, bad.from)
	}
	if h.drops("discovery") != 3 || len(h.net.take()) != 0 {
		t.Fatalf("bad discovery bubbles accepted: %v", h.c.Status().Counters.Drops)
	}
	h.c.ReceiveDiscovery(disc, nbLocal)
	ds = h.net.take()
	if len(ds) != 1 || ds[0].to != nbLocal {
		t.Fatalf("unicast reply %+v", ds)
	}
	if h.peerState(nb) != peer.Pending {
		t.Fatal("local peer must start untrusted")
	}
	// Transmit: queue, unicast bubble to the local endpoint and a discovery bubble.
	pkt := ipPacket(us, nb, "hi")
	h.advance(3 * time.Second)
	h.c.Transmit([][]byte{pkt})
	ds = h.net.take()
	if len(ds) != 2 || ds[0].to != nbLocal || ds[1].to != group {
		t.Fatalf("local transmit %+v", ds)
	}
	// Its bubble from the local endpoint makes it trusted (case 5).
	h.c.Receive(proto.AppendBubble(nil, nb, us, 0), nbLocal)
	ds = h.net.take()
	if len(ds) != 1 || ds[0].to != nbLocal || !bytes.Equal(ds[0].b, pkt) {
		t.Fatalf("flush %+v", ds)
	}
	if to, ok := h.c.Transmit([][]byte{pkt}); !ok || to != nbLocal {
		t.Fatal("no fast path to the local peer")
	}
	// Local peers stay valid 600 s.
	h.advance(500 * time.Second)
	if to, ok := h.c.Transmit([][]byte{pkt}); !ok || to != nbLocal {
		t.Fatal("local peer invalid before 600 s")
	}
}

func TestLocalDiscoveryOff(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.advance(301 * time.Second)
	for _, d := range h.net.take() {
		if d.to.Addr() == proto.DiscoveryGroup {
			t.Fatal("discovery bubble while off")
		}
	}
	nb := proto.Address{Server: server1, Mapped: netip.AddrPortFrom(mappedUs.Addr(), 5)}.Addr()
	h.c.ReceiveDiscovery(proto.AppendBubble(nil, nb, proto.AllNodes, 1), netip.MustParseAddrPort("192.168.1.2:5"))
	if h.drops("discovery") != 1 {
		t.Fatal("not dropped")
	}
	_ = us
}

func TestCloseStopsTimers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.LocalDiscovery = true; c.ConeProbe = true })
	us := h.qualify()
	h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")})
	h.c.Transmit([][]byte{ipPacket(us, nativeDst, "x")})
	if h.clk.Pending() < 4 {
		t.Fatalf("only %d timers", h.clk.Pending())
	}
	h.c.Close()
	if n := h.clk.Pending(); n != 0 {
		t.Fatalf("%d timers after Close", n)
	}
	if h.c.Start() != ErrClosed {
		t.Fatal("Start after Close")
	}
	if _, ok := h.c.Addr(); ok {
		t.Fatal("address after Close")
	}
	h.net.take()
	h.takeDelivered()
	h.advance(time.Hour)
	if len(h.net.take()) != 0 {
		t.Fatal("sent after Close")
	}
	if _, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")}); ok || len(h.takeDelivered()) != 0 || h.drops("closed") != 1 {
		t.Fatal("transmit after Close must drop silently")
	}
}
