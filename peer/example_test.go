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
