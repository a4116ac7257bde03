package peer_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
)

func Example() {
	now := time.Unix(0, 0)
	tab := peer.New(peer.Config{})
	dst := netip.MustParseAddr("2001:0:c612:1:3cff:63bf:3fff:fdd2")
	mapped := netip.MustParseAddrPort("192.0.2.45:40000")

	// First packet to an unknown peer: queue it and send a bubble.
	tab.Update(dst.As16(), true, now, func(p *peer.Peer) {
		p.Enqueue(false, netip.AddrPort{}, []byte("ipv6 packet"))
		fmt.Println("bubble:", p.CountBubble())
	})
	fmt.Println(tab.State(dst.As16(), now))

	// The peer answers: trust it and flush the queue.
	var out []peer.Packet
	tab.Update(dst.As16(), false, now, func(p *peer.Peer) {
		p.Trust(mapped)
		out = p.TakeQueue(out)
	})
	fmt.Println(len(out), "queued packet(s) to", mapped)
	tab.Release(out)

	ap, ok := tab.Route(dst.As16(), now.Add(time.Second))
	fmt.Println(ap, ok)
	// Output:
	// bubble: true
	// pending
	// 1 queued packet(s) to 192.0.2.45:40000
	// 192.0.2.45:40000 true
}

// A native peer reached through a relay: segments that call for an answer
// are routed with RouteAwaiting, and the owner gives up on the relay when
// they pile up unanswered.
func ExampleTable_RouteAwaiting() {
	now := time.Unix(0, 0)
	tab := peer.New(peer.Config{})
	dst := netip.MustParseAddr("2600:1::80").As16()
	relay := netip.MustParseAddrPort("192.0.2.1:3544")
	tab.Update(dst, true, now, func(p *peer.Peer) { p.Trust(relay) })

	for i := range 3 {
		_, n, since, _ := tab.RouteAwaiting(dst, now.Add(time.Duration(i)*1500*time.Millisecond))
		fmt.Println(n, "unanswered, the first", since, "ago")
	}
	// An answer through the relay clears the count.
	tab.Accept(dst, relay, now.Add(4*time.Second))
	_, n, _, _ := tab.RouteAwaiting(dst, now.Add(5*time.Second))
	fmt.Println(n, "unanswered")
	// Output:
	// 1 unanswered, the first 0s ago
	// 2 unanswered, the first 1.5s ago
	// 3 unanswered, the first 3s ago
	// 1 unanswered
}
