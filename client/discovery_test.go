package client

import (
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// TestLocalDiscoveryTrustedPeer covers a neighbour we already trust (its
// bubble came from the mapping in its address) that does not trust us yet:
// it sends a discovery bubble with each packet it queues for us, and only
// our unicast bubble can make us trusted on its side. Without the answer
// its packets would wait until its bubbles run out.
func TestLocalDiscoveryTrustedPeer(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.LocalDiscovery = true })
	us := h.qualify()
	h.advance(time.Second)
	h.serve()
	h.net.take()

	// A neighbour behind our NAT, trusted at its mapping.
	nbMapped := netip.AddrPortFrom(mappedUs.Addr(), 50000)
	nb := proto.Address{Server: server1, Mapped: nbMapped}.Addr()
	nbLocal := netip.MustParseAddrPort("192.168.1.20:50000")
	h.c.Receive(proto.AppendBubble(nil, nb, us, 0), nbMapped)
	if h.peerState(nb) != peer.Reachable {
		t.Fatalf("neighbour %v after its bubble from its mapping", h.peerState(nb))
	}
	h.net.take()

	h.advance(3 * time.Second)
	disc := proto.AppendBubble(nil, nb, proto.AllNodes, 1)
	h.c.ReceiveDiscovery(disc, nbLocal)
	ds := h.net.take()
	if len(ds) != 1 || ds[0].to != nbLocal {
		t.Fatalf("answer to the trusted neighbour's discovery bubble: %+v", ds)
	}
	if src, dst, _ := bubbleInfo(t, ds[0]); src != us || dst != nb {
		t.Fatalf("answer %v -> %v, want %v -> %v", src, dst, us, nb)
	}
	// The proven mapping stays.
	if h.peerState(nb) != peer.Reachable {
		t.Fatal("neighbour no longer trusted")
	}
	if to, ok := h.c.Transmit([][]byte{ipPacket(us, nb, "x")}); !ok || to != nbMapped {
		t.Fatalf("fast path to %v (%v), want the proven mapping %v", to, ok, nbMapped)
	}
	// The bubble limit holds: a second discovery bubble at once is not
	// answered.
	h.c.ReceiveDiscovery(disc, nbLocal)
	if ds := h.net.take(); len(ds) != 0 {
		t.Fatalf("answered twice within 2 s: %+v", ds)
	}
}
