package client

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// bubbleInfo decodes a bubble the client sent.
func bubbleInfo(t *testing.T, d sent) (src, dst netip.Addr, hop uint8) {
	t.Helper()
	var p proto.Packet
	if err := p.Parse(d.b); err != nil || !proto.IsBubble(p.IPv6) {
		t.Fatalf("not a bubble: %x", d.b)
	}
	return proto.Src(p.IPv6), proto.Dst(p.IPv6), proto.HopLimit(p.IPv6)
}

func TestTransmitTeredoBubbles(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.serve()
	pkt := ipPacket(us, peerAddr, "hello")
	if _, ok := h.c.Transmit([][]byte{pkt[:40], pkt[40:]}); ok {
		t.Fatal("untrusted peer sent directly")
	}
	b, other := bubbles(h.net.take())
	if len(b) != 2 || len(other) != 0 {
		t.Fatalf("bubbles %d, other %d", len(b), len(other))
	}
	if b[0].to != peerMapped || b[1].to != ap(peerServer) {
		t.Fatalf("bubbles to %v and %v, want direct %v and indirect %v", b[0].to, b[1].to, peerMapped, ap(peerServer))
	}
	src, dst, hop := bubbleInfo(t, b[0])
	if !src.IsLinkLocalUnicast() || dst != peerAddr || hop != 0 || src != h.c.bubbleSource(peerAddr.As16()) {
		t.Fatalf("bubble %v -> %v hop %d", src, dst, hop)
	}
	if h.peerState(peerAddr) != peer.Pending {
		t.Fatalf("state %v", h.peerState(peerAddr))
	}

	// Rate limit: nothing within 2 s of the last bubble, at most 4 per
	// 300 s; the timer repeats them every 2 s.
	var times []time.Duration
	start := h.clk.Now()
	times = append(times, 0)
	for range 20 {
		h.advance(500 * time.Millisecond)
		h.c.Transmit([][]byte{pkt}) // more packets do not speed bubbles up
		if b, _ := bubbles(h.net.take()); len(b) > 0 {
			if len(b) != 2 {
				t.Fatalf("%d bubbles", len(b))
			}
			times = append(times, h.clk.Now().Sub(start))
		}
	}
	want := []time.Duration{0, 2 * time.Second, 4 * time.Second, 6 * time.Second}
	if len(times) != 4 {
		t.Fatalf("bubble times %v, want %v", times, want)
	}
	for i := range want {
		if times[i] != want[i] {
			t.Fatalf("bubble times %v, want %v", times, want)
		}
	}
	// At 8 s the peer was declared unreachable: every queued packet got an
	// ICMPv6 no-route error (queue of 8, so 8; later ones were refused).
	if h.peerState(peerAddr) != peer.Unreachable {
		t.Fatalf("state %v", h.peerState(peerAddr))
	}
	d := h.takeDelivered()
	if len(d) < 8 {
		t.Fatalf("%d errors", len(d))
	}
	typ, code, quote := icmpErr(t, d[0])
	if typ != proto.ICMPDestUnreachable || code != proto.UnreachNoRoute || !bytes.Equal(quote, pkt) || proto.Dst(d[0]) != us {
		t.Fatalf("error %d/%d quoting %x to %v", typ, code, quote, proto.Dst(d[0]))
	}
	if proto.Src(d[0]) == us {
		t.Fatal("error from our own address would be dropped by the stack")
	}
	// While unreachable, new packets fail at once, with no bubble.
	h.advance(2 * time.Second)
	h.takeDelivered()
	h.c.Transmit([][]byte{pkt})
	if len(h.takeDelivered()) != 1 || len(h.net.take()) != 0 {
		t.Fatal("unreachable peer did not fail promptly")
	}
	// 300 s after the first bubble a new series may start.
	h.advance(300*time.Second - h.clk.Now().Sub(start))
	h.c.Transmit([][]byte{pkt})
	if b, _ := bubbles(h.net.take()); len(b) != 2 {
		t.Fatalf("no new series after 300 s: %d", len(b))
	}
	if h.peerState(peerAddr) != peer.Pending {
		t.Fatalf("state %v", h.peerState(peerAddr))
	}
}

func TestTransmitNonGlobalTeredo(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	for _, dst := range []proto.Address{
		{Server: peerServer, Mapped: netip.MustParseAddrPort("192.168.1.2:1000")},
		{Server: netip.MustParseAddr("10.1.1.1"), Mapped: peerMapped},
	} {
		if _, ok := h.c.Transmit([][]byte{ipPacket(us, dst.Addr(), "x")}); ok {
			t.Fatal("sent")
		}
	}
	if len(h.net.take()) != 0 || len(h.takeDelivered()) != 0 || h.drops("non-global-ipv4") != 2 {
		t.Fatalf("non-global destination not silently dropped: %v", h.c.Status().Counters.Drops)
	}
}

func TestTransmitDrops(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	tests := []struct {
		name   string
		bufs   [][]byte
		reason string
	}{
		{"empty", nil, "malformed"},
		{"short", [][]byte{make([]byte, 39)}, "malformed"},
		{"ipv4", [][]byte{append([]byte{0x45}, make([]byte, 39)...)}, "malformed"},
		{"multicast", [][]byte{ipPacket(us, proto.AllNodes, "x")}, "multicast"},
		{"foreign source", [][]byte{ipPacket(nativeDst, peerAddr, "x")}, "bad-source"},
		{"link-local source", [][]byte{ipPacket(proto.RSSourceRestricted, peerAddr, "x")}, "bad-source"},
	}
	for _, tt := range tests {
		before := h.drops(tt.reason)
		if _, ok := h.c.Transmit(tt.bufs); ok {
			t.Fatalf("%s: sent", tt.name)
		}
		if h.drops(tt.reason) != before+1 {
			t.Fatalf("%s: drops %v", tt.name, h.c.Status().Counters.Drops)
		}
	}
	if len(h.net.take()) != 0 {
		t.Fatal("something was sent")
	}
}

func TestTransmitNotQualifiedRateLimit(t *testing.T) {
	h := newHarness(t, nil)
	us := proto.Address{Server: server1, Mapped: mappedUs}.Addr()
	for range 25 {
		h.c.Transmit([][]byte{ipPacket(us, nativeDst, "x")})
	}
	if n := len(h.takeDelivered()); n != icmpBurst {
		t.Fatalf("%d errors in a burst, want %d", n, icmpBurst)
	}
	h.advance(500 * time.Millisecond)
	for range 25 {
		h.c.Transmit([][]byte{ipPacket(us, nativeDst, "x")})
	}
	if n := len(h.takeDelivered()); n != 5 {
		t.Fatalf("%d errors after 0.5 s, want 5", n)
	}
	if h.drops("icmp-rate-limit") != 35 || h.drops("not-qualified") != 50 {
		t.Fatalf("drops %v", h.c.Status().Counters.Drops)
	}
	// No ICMPv6 error about an ICMPv6 error.
	e := proto.AppendICMPv6Error(nil, nativeDst, proto.ICMPDestUnreachable, 0, 0, ipPacket(us, nativeDst, "x"))
	h.advance(time.Second)
	h.c.Transmit([][]byte{e})
	if len(h.takeDelivered()) != 0 {
		t.Fatal("error about an error")
	}
}

// echoRequest decodes the echo request the client sent through its server.
func echoRequest(t testing.TB, d sent) (src, dst netip.Addr, hop uint8, body []byte) {
	t.Helper()
	var p proto.Packet
	if err := p.Parse(d.b); err != nil {
		t.Fatal(err)
	}
	typ, code, body, ok := proto.ICMPv6(p.IPv6)
	if !ok || typ != proto.ICMPEchoRequest || code != 0 || !proto.ValidICMPv6Checksum(p.IPv6) {
		t.Fatalf("not an echo request: %x", d.b)
	}
	return proto.Src(p.IPv6), proto.Dst(p.IPv6), proto.HopLimit(p.IPv6), body
}

// echoReply builds the reply of target to an echo request body.
func echoReply(target, us netip.Addr, body []byte) []byte {
	id := uint16(body[0])<<8 | uint16(body[1])
	seq := uint16(body[2])<<8 | uint16(body[3])
	return proto.AppendEcho(nil, target, us, 60, proto.ICMPEchoReply, id, seq, body[4:])
}

func TestEchoTest(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	pkt1 := ipPacket(us, nativeDst, "one")
	pkt2 := ipPacket(us, nativeDst, "two")
	h.c.Transmit([][]byte{pkt1})
	h.c.Transmit([][]byte{pkt2})
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != ap(server1) {
		t.Fatalf("echo test sent %+v", ds)
	}
	src, dst, hop, body := echoRequest(t, ds[0])
	if src != us || dst != nativeDst || hop != echoHopLimit {
		t.Fatalf("echo %v -> %v hop %d", src, dst, hop)
	}
	if len(body) < 12 || 4+len(body) > 88 {
		t.Fatalf("echo message of %d bytes", 4+len(body))
	}
	// Repeats every 2 s, 4 in all.
	for i := 1; i < 4; i++ {
		h.advance(retryDelay)
		ds := h.net.take()
		if len(ds) != 1 {
			t.Fatalf("repeat %d: %d datagrams", i, len(ds))
		}
		_, _, _, b := echoRequest(t, ds[0])
		if !bytes.Equal(b, body) {
			t.Fatal("nonce changed within a series")
		}
	}
	// A reply with another nonce proves nothing (it is held as case 6).
	bad := bytes.Clone(body)
	bad[len(bad)-1] ^= 1
	if h.c.Receive(echoReply(nativeDst, us, bad), relayAP) != nil {
		t.Fatal("unverified echo reply delivered")
	}
	if h.peerState(nativeDst) == peer.Reachable {
		t.Fatal("trusted on a wrong nonce")
	}
	// The right reply, via the relay: trusted, queue flushed to the relay
	// in order, the reply itself not delivered.
	if h.c.Receive(echoReply(nativeDst, us, body), relayAP) != nil {
		t.Fatal("echo reply delivered")
	}
	ds = h.net.take()
	if len(ds) != 2 || ds[0].to != relayAP || !bytes.Equal(ds[0].b, pkt1) || !bytes.Equal(ds[1].b, pkt2) {
		t.Fatalf("flush %+v", ds)
	}
	if h.peerState(nativeDst) != peer.Reachable {
		t.Fatal("not reachable")
	}
	if to, ok := h.c.Transmit([][]byte{pkt1}); !ok || to != relayAP {
		t.Fatalf("fast path %v %v", to, ok)
	}
	// The held wrong-nonce reply came from the same relay, so it is now
	// delivered as data.
	if d := h.takeDelivered(); len(d) != 1 {
		t.Fatalf("held packets delivered: %d", len(d))
	}
}

func TestEchoTestExhausted(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	pkt := ipPacket(us, nativeDst, "one")
	h.c.Transmit([][]byte{pkt})
	h.advance(3 * retryDelay)
	if n := len(h.net.take()); n != 4 {
		t.Fatalf("%d echo requests", n)
	}
	if len(h.takeDelivered()) != 0 {
		t.Fatal("failed before the last timeout")
	}
	h.advance(retryDelay)
	d := h.takeDelivered()
	if len(d) != 1 {
		t.Fatalf("%d errors", len(d))
	}
	if typ, code, q := icmpErr(t, d[0]); typ != proto.ICMPDestUnreachable || code != 0 || !bytes.Equal(q, pkt) {
		t.Fatalf("error %d/%d", typ, code)
	}
	if h.peerState(nativeDst) != peer.Unreachable {
		t.Fatal("not unreachable")
	}
}

func TestDestUnreachableProof(t *testing.T) {
	for _, tt := range []struct {
		name string
		from netip.Addr // source of the error
		want bool
	}{
		{"from target", nativeDst, true},
		{"from a firewall", netip.MustParseAddr("2600:1::1"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			h.c.Transmit([][]byte{ipPacket(us, nativeDst, "one")})
			ds := h.net.take()
			var p proto.Packet
			p.Parse(ds[0].b)
			e := proto.AppendICMPv6Error(nil, tt.from, proto.ICMPDestUnreachable, proto.UnreachPort, 0, p.IPv6)
			h.c.Receive(e, relayAP)
			if got := h.peerState(nativeDst) == peer.Reachable; got != tt.want {
				t.Fatalf("reachable %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFixedRelay(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FixedRelay = relayAP })
	us := h.qualify()
	if to, ok := h.c.Transmit([][]byte{ipPacket(us, nativeDst, "x")}); !ok || to != relayAP {
		t.Fatalf("%v %v", to, ok)
	}
	in := ipPacket(nativeDst, us, "y")
	if got := h.c.Receive(in, relayAP); !bytes.Equal(got, in) {
		t.Fatal("not delivered from the fixed relay")
	}
	if h.c.Receive(in, relay2AP) != nil {
		t.Fatal("delivered from another relay")
	}
	if h.peerState(nativeDst) != peer.Reachable {
		t.Fatal("state")
	}
}
