package client

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// TestGatewayPublicPrefix checks the rule of gateway.go: with a server
// that announced a public /64, addresses in it go to the server's endpoint
// with no echo test, and packets from them are delivered when they come
// from that endpoint, held for an echo test otherwise. Other native
// addresses keep the echo test.
func TestGatewayPublicPrefix(t *testing.T) {
	pub := netip.MustParsePrefix("2001:db8:2::/64")
	other := netip.MustParseAddr("2001:db8:2::8000:ffff:7f00:1") // another client of the gateway
	h := newHarness(t, nil)
	h.c.Start()
	r := h.takeRS()
	h.c.Receive(proto.AppendRA(nil, &proto.RAParams{Nonce: r[0].nonce, Server: server1, Client: mappedUs, Dst: r[0].src, Public: pub}), ap(server1))
	us, ok := h.c.Addr()
	if !ok {
		t.Fatalf("not qualified: %+v", h.c.Status())
	}
	h.takeRS() // the NAT probe
	h.takeEvents()

	if h.peerState(other) != peer.Reachable {
		t.Errorf("state of %v: %v, want reachable through the gateway", other, h.peerState(other))
	}
	if to, ok := h.c.Transmit([][]byte{ipPacket(us, other, "x")}); !ok || to != ap(server1) {
		t.Fatalf("to %v: sent to %v (%v), want the server %v", other, to, ok, ap(server1))
	}
	in := ipPacket(other, us, "y")
	if got := h.c.Receive(in, ap(server1)); !bytes.Equal(got, in) {
		t.Fatal("a packet from the public /64 through the server was not delivered")
	}
	if sent := h.net.take(); len(sent) != 0 {
		t.Fatalf("sent %d datagrams (echo tests?), want none", len(sent))
	}

	// From another endpoint the source is unverified: held, and tested
	// through the server.
	if h.c.Receive(in, relayAP) != nil {
		t.Fatal("a packet from the public /64 through another relay was delivered")
	}
	if sent := h.net.take(); len(sent) != 1 || sent[0].to != ap(server1) {
		t.Fatalf("sent %+v, want one echo request to the server", sent)
	}
	// Outside the public /64, native destinations keep the echo test.
	if _, ok := h.c.Transmit([][]byte{ipPacket(us, nativeDst, "z")}); ok {
		t.Fatalf("%v sent at once, want an echo test first", nativeDst)
	}
}
