package client

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// TestDirectBubbleAnswer checks the answers to direct bubbles from a peer's
// link-local bubble source: back to where the bubble came from, addressed to
// that source, at most one a second per destination and answerBurst at once
// for the whole client; sources that are not global get none.
func TestDirectBubbleAnswer(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	ll := netip.MustParseAddr("fe80::1234:5678:9abc:def0")
	from := netip.MustParseAddrPort("203.0.113.9:61000") // the peer's symmetric mapping
	bubble := proto.AppendBubble(nil, ll, us, 0)

	if h.c.Receive(bubble, from) != nil {
		t.Fatal("bubble delivered")
	}
	b, other := bubbles(h.net.take())
	if len(b) != 1 || len(other) != 0 || b[0].to != from {
		t.Fatalf("answer %+v, other %+v", b, other)
	}
	if src, dst, _ := bubbleInfo(t, b[0]); src != us || dst != ll {
		t.Fatalf("answer %v → %v, want %v → %v", src, dst, us, ll)
	}
	// Within a second, the same destination gets nothing more.
	h.c.Receive(bubble, from)
	if ds := h.net.take(); len(ds) != 0 {
		t.Fatalf("second answer within 1 s: %+v", ds)
	}
	// A private source is not answered.
	h.c.Receive(bubble, netip.MustParseAddrPort("192.168.1.9:5000"))
	if ds := h.net.take(); len(ds) != 0 || h.drops("non-global-ipv4") != 1 {
		t.Fatalf("answered a private source: %+v, drops %v", ds, h.c.Status().Counters.Drops)
	}
	// A bubble to another address, or a bubble-shaped data packet, is not
	// answered.
	h.c.Receive(proto.AppendBubble(nil, ll, peerAddr, 0), from)
	if ds := h.net.take(); len(ds) != 0 {
		t.Fatalf("answered a bubble for someone else: %+v", ds)
	}
	// The client-wide bound: answerBurst-1 more (one was spent), then drops.
	for i := range answerBurst + 5 {
		h.c.Receive(bubble, netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", 10+i)), 4000))
	}
	if n := len(h.net.take()); n != answerBurst-1 {
		t.Fatalf("%d answers to a flood, want %d", n, answerBurst-1)
	}
	if h.drops("answer-rate-limit") != 6 {
		t.Fatalf("drops %v", h.c.Status().Counters.Drops)
	}
}

// TestBubbleTTLSymmetric checks that behind a symmetric NAT every direct
// bubble uses the socket's TTL.
func TestBubbleTTLSymmetric(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Transport = ttlNet{fakeNet: c.Transport.(*fakeNet)} })
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	r := h.takeRS()
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	probe := h.takeRS()
	h.c.Receive(ra(probe[0], server1, mappedUs2, 0), ap(server1b)) // another mapping: symmetric
	if st := h.c.Status(); st.NAT != NATSymmetric {
		t.Fatalf("NAT %v", st.NAT)
	}
	us, _ := h.c.Addr()
	h.serve()
	h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")})
	b, _ := bubbles(h.net.take())
	if len(b) != 2 || b[0].to != peerMapped || b[0].ttl != 0 {
		t.Fatalf("direct bubble behind a symmetric NAT: %+v", b)
	}
}
