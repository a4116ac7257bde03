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

// TestAnswerDirectBubbles: the first direct bubble of an unknown peer gets a
// direct bubble back, once; without the option it gets none.
func TestAnswerDirectBubbles(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := newHarness(t, func(c *Config) { c.AnswerDirectBubbles = on })
		us := h.qualify()
		bubble := proto.AppendBubble(nil, peerAddr, us, 0)
		h.c.Receive(bubble, peerMapped)
		bub, _ := bubbles(h.net.take())
		if !on {
			if len(bub) != 0 {
				t.Fatalf("off: answered %+v", bub)
			}
			continue
		}
		if len(bub) != 1 || bub[0].to != peerMapped {
			t.Fatalf("answer %+v", bub)
		}
		if src, dst, _ := bubbleInfo(t, bub[0]); src != us || dst != peerAddr {
			t.Fatalf("answer %v -> %v", src, dst)
		}
		// The peer is trusted now: its next bubble is not answered.
		h.advance(replyInterval)
		h.c.Receive(bubble, peerMapped)
		if bub, _ := bubbles(h.net.take()); len(bub) != 0 {
			t.Fatalf("answered a trusted peer's bubble: %+v", bub)
		}
	}
}

// TestAnswerDirectBubbleLinkLocal: a direct bubble from the link-local
// source a peer derives for its bubbles is answered to where it came from,
// addressed to that source; without the option it is dropped.
func TestAnswerDirectBubbleLinkLocal(t *testing.T) {
	ll := proto.LinkLocalFromID([8]byte{7, 7, 7})
	for _, on := range []bool{false, true} {
		h := newHarness(t, func(c *Config) { c.AnswerDirectBubbles = on })
		us := h.qualify()
		h.c.Receive(proto.AppendBubble(nil, ll, us, 0), peerMapped)
		bub, _ := bubbles(h.net.take())
		if !on {
			if len(bub) != 0 || h.drops("link-local-source") != 1 {
				t.Fatalf("off: answered %+v", bub)
			}
			continue
		}
		if len(bub) != 1 || bub[0].to != peerMapped {
			t.Fatalf("answer %+v", bub)
		}
		if src, dst, _ := bubbleInfo(t, bub[0]); src != us || dst != ll {
			t.Fatalf("answer %v -> %v", src, dst)
		}
		// Rate limited per destination.
		h.c.Receive(proto.AppendBubble(nil, ll, us, 0), peerMapped)
		if bub, _ := bubbles(h.net.take()); len(bub) != 0 {
			t.Fatalf("answer not rate limited: %+v", bub)
		}
		// A non-global source gets nothing.
		h.c.Receive(proto.AppendBubble(nil, ll, us, 0), netip.MustParseAddrPort("10.0.0.1:5000"))
		if bub, _ := bubbles(h.net.take()); len(bub) != 0 {
			t.Fatalf("answered a non-global source: %+v", bub)
		}
	}
}
