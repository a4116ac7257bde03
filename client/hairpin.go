package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// RFC 6081's hairpinning extension: two clients behind one NAT that does not
// hairpin cannot reach each other's public mappings, and without local
// discovery (multicast filtered, another subnet) they never learn their
// local endpoints. So an indirect bubble to a peer whose Teredo address
// carries our public IPv4 lists our local endpoints in an Alternate Address
// trailer (Config.LocalAddrs). The peer answers the indirect bubble as
// usual, and also to each private alternate address, with the same answer:
// addressed to our HMAC bubble source, which only the receiver of our
// indirect bubble can know. So an answer that arrives from a LAN endpoint
// proves the peer is there, and we trust it at that endpoint (fromTeredo's
// viaNonce, allowed from a private source for a peer behind our public
// IPv4 only). Our first data packet then reaches the peer from our local
// endpoint; the peer holds it and sends its own bubbles, with its own
// trailer, and trusts us the same way (holdTeredo). Nothing is used before a
// bubble answer verified it. Miredo sends no trailer and ignores ours.
//
// The trailer goes only to peers behind our own public IPv4: they are on our
// side of the NAT, so our local addresses tell them nothing new.

// appendAlternates returns the indirect bubble b to peer with an Alternate
// Address trailer, when the peer is behind our public IPv4 and we know our
// local endpoints; otherwise b.
func (c *Client) appendAlternates(b []byte, peer [16]byte, l *link) []byte {
	if c.cfg.LocalAddrs == nil || proto.MappedBytes(peer[:]).Addr() != l.mapped.Addr() {
		return b
	}
	var t proto.Trailers
	for _, ap := range c.cfg.LocalAddrs() {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !ap.Addr().Is4() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsLoopback() {
			continue
		}
		t.AltAddresses[t.NumAltAddresses] = ap
		if t.NumAltAddresses++; t.NumAltAddresses == proto.MaxAltAddresses {
			break
		}
	}
	if t.NumAltAddresses == 0 {
		return b
	}
	return t.Append(b)
}

// answerAlternates sends answer, our answer to the indirect bubble pkt
// from origin (the sender's public mapping, as its server saw it), to the
// private alternate addresses in pkt's trailer too, when the sender is
// behind our public IPv4. (The bubble's IPv6 source may be the sender's
// HMAC link-local address, so origin is what tells.) Malformed trailers are
// ignored (counted): the bubble itself was fine.
func (c *Client) answerAlternates(pkt *proto.Packet, origin netip.AddrPort, answer []byte, l *link, now time.Time) {
	if len(pkt.Trailer) == 0 || origin.Addr() != l.mapped.Addr() {
		return
	}
	t, err := proto.ParseTrailers(pkt.Trailer)
	if err != nil {
		c.ctr.drop(dropBadTrailer)
		return
	}
	for _, ap := range t.AltAddresses[:t.NumAltAddresses] {
		if !isPrivateIPv4(ap.Addr()) || !c.allowReply(ap, now) {
			continue
		}
		c.ctr.bubbleReplies.Add(1)
		c.write(answer, ap)
	}
}

// sameNATSource reports whether a bubble answer from the private endpoint
// from may come from the Teredo peer src: the peer is behind our public IPv4.
func (c *Client) sameNATSource(src [16]byte, from netip.AddrPort, l *link) bool {
	return isPrivateIPv4(from.Addr()) && from.Port() != 0 && proto.MappedBytes(src[:]).Addr() == l.mapped.Addr()
}
