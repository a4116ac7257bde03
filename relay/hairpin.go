package relay

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Relaying between Teredo clients (Config.Hairpin).
//
// Two Teredo clients whose NATs keep every bubble out (one behind a
// symmetric NAT, the other behind a port-restricted one) can both reach a
// relay: a client sends to it first, so its NAT lets the relay's answers
// in, and the relay reaches the other client through its server, as it
// reaches any Teredo client. A relay whose IPv6 side routes 2001::/32 back
// to it would carry such packets through the kernel; this one hands them
// to its own transmit path instead, which works whatever the IPv6 side is
// (a TUN without forwarding, a netstack) and costs no second copy. The
// packet's source was checked as for any packet the relay forwards (its
// mapping, or the symmetric-NAT bubble), the relay acts as the router it
// is (the hop limit goes down by one, and a packet that would leave with
// none is dropped), and the destination gets the relay's usual treatment:
// the peer table, bubbles through its server, queue and rate limits.
//
// A client behind a symmetric NAT reaches the relay from another port than
// the one in its address, and RFC 4380 §5.4.2 drops that. Miredo accepts
// such a client once it answers a bubble to the relay's nonce-derived
// source, but only after the relay bubbled it, which happens when the IPv6
// side has a packet for it: never, for a client that talks to the relay
// first. So with Hairpin, a packet from a mismatched mapping is still
// dropped but the relay bubbles its source through the source's server
// (a challenge, at most one per Bubble.Interval and Bubble.Max per
// Bubble.Window per client, and within the per-source slow-path limit); the
// client's answer comes from its mapping towards the relay and makes it
// trusted there, and its next packet (a retransmission) goes through. A
// spoofed source gets its own server a few bubbles, as anyone on the IPv6
// side can already cause by sending to its address.

// forward hands a packet the receive path accepted to the IPv6 side, or,
// for a Teredo destination with Hairpin, back out to Teredo.
func (r *Relay) forward(ip []byte, hairpin bool, sc *scratch) {
	if !hairpin {
		r.deliver(ip, sc)
		return
	}
	if ip[7] <= 1 {
		r.ctr.inc(RxDropHopLimit)
		return
	}
	ip[7]--
	r.send(ip, sc, RxHairpinned)
}

// challenge bubbles the Teredo client src through its server because a
// packet of its came from from, another mapping than its address's; the
// answer, from its mapping towards us, makes it trusted at that mapping.
func (r *Relay) challenge(src *[16]byte, from netip.AddrPort, now time.Time, sc *scratch) {
	if !r.allowSource(from, now) {
		return
	}
	mapped := proto.MappedBytes(src[:])
	bubble := false
	r.table.Update(*src, true, now, func(p *peer.Peer) {
		if !p.Mapping.IsValid() {
			p.Mapping = mapped
		}
		// The retry timer (onTimer) bubbles again until the client answers
		// or Bubble.Max is spent, and then drops the entry.
		if p.Bubbles() == 0 && p.CountBubble() {
			bubble = true
			p.Arm(r.cfg.Bubble.Interval)
		}
	})
	if !bubble {
		return
	}
	r.ctr.inc(PeersChallenged)
	// Through the server only: the mapping in the address is the one the
	// client's NAT keeps for its server.
	sc.buf = r.sendBubbles(sc.buf[:0], src, netip.AddrPort{})
}
