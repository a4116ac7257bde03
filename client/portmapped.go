package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// A NAT port mapping (Config.PortMapping) on a NAT that does not keep ports.
//
// A port mapping (UPnP-IGD, NAT-PMP, PCP MAP) forwards the mapped external
// port to our socket from anywhere, which is what makes a symmetric NAT
// usable for Teredo (RFC 6081 §4, UPnP-enabled symmetric NAT). But on the
// NATs measured (Linux with miniupnpd 2.3.1 and nftables) the mapping is a
// DNAT rule and nothing else: a flow that we start still leaves through the
// NAT's own translation, from a random port on a symmetric NAT. So our flow
// to the server leaves from port R while our address names the mapped port
// M, and three things break (internal/lab/DESIGN.md, NAT matrix):
//
//   - the server forwards our peers' indirect bubbles to M; conntrack sees
//     a second connection whose reply tuple equals our own flow to the
//     server, and rewrites the server's source port to resolve the clash,
//     so those bubbles no longer come from our server;
//   - the server tells our peers the origin it saw (R), where the NAT
//     refuses their answers;
//   - the server drops our echo requests (RFC 4380 §5.3.1, check 7: our
//     address names M, the packet comes from R), so no relay is found.
//
// Asking the NAT to send our server flow from M does not work there:
// miniupnpd 2.3.1 writes its PCP PEER snat rule for the reverse direction
// (matching packets from the peer to us), and neither UPnP-IGD nor NAT-PMP
// can ask. What every NAT does, though, is send a flow back through the
// translation that created it: if the server's packet to M is the first of
// the flow, conntrack records it as "server → M, DNAT to us", and all our
// later packets to the server are its replies and leave from M. So before
// its first router solicitation to a server the client has the server send
// it a packet through the mapping: a bubble from a random link-local source
// to the Teredo address that carries the mapping, sent to the server's
// secondary address (so that the flow to the primary does not exist yet).
// Every RFC 4380 server forwards it (§5.3.1 check 6: a non-Teredo source
// to one of its clients) from its primary address to the mapped endpoint;
// Miredo's server does the same from either socket. The client waits for
// that bubble (or openWait) and only then qualifies: the server sees M, the
// address carries M whatever Config.MappedEndpoint says, and the three
// problems above do not arise. No check anywhere is relaxed: the server
// forwards only to the endpoint in a Teredo address, as it would for
// anyone, and the bubble is recognised only by its random source.
//
// With the mapping in the address the client sends no direct bubbles of
// its own to Teredo peers (act): the mapping lets every peer in, so they
// open nothing we need, and on a symmetric NAT they would create a flow
// from a random port whose reply tuple the peer's answer to M then clashes
// with (its source port rewritten, as for the server above). Answers to
// bubbles are sent as always: they go back through the translation the
// peer's packet created.
//
// What is left: if the NAT forgets the flow (a router restart, conntrack
// flushed) the next refresh starts a new one from a random port; the
// address keeps M (MappedEndpoint), inbound still works, but the three
// problems return until the client qualifies again.

// openWait bounds the wait for the bubble through the mapping before the
// first router solicitation. It costs that much qualification time when a
// server does not forward it (no secondary address).
const openWait = time.Second

// opener is the bubble that opens the server's way in through the mapping.
type opener struct {
	src  [16]byte       // its random link-local source, which identifies it
	from netip.AddrPort // the server endpoint it must come back from
}

// openMapping sends the bubble that makes the server's first packet to us
// go through the port mapping, and arms the qualification timer for
// openWait; it reports false, doing nothing, without a global mapping.
// Call with c.mu held, while qualifying.
func (c *Client) openMapping() bool {
	if c.cfg.PortMapping == nil {
		return false
	}
	m := c.cfg.PortMapping()
	if !m.IsValid() || !m.Addr().Is4() || !c.glob(m.Addr()) || m.Port() == 0 {
		return false
	}
	var src [16]byte
	src[0], src[1] = 0xfe, 0x80
	c.randomBytes(src[8:])
	src[8] &^= 0x02 // a random interface identifier, not a universal one
	o := &opener{src: src, from: c.serverAP(c.q.srv)}
	dst := proto.Address{Server: c.q.srv, Mapped: m}.Addr()
	c.opening.Store(o)
	c.q.opening = true
	c.ctr.mapOpens.Add(1)
	c.queue(proto.AppendBubble(nil, netip.AddrFrom16(src), dst, 0), c.secondary())
	c.schedule(&c.q.timer, openWait, c.onQualTimer)
	return true
}

// openedMapping recognises the bubble openMapping sent, back from the
// server through the mapping, and qualifies at once. It reports whether
// pkt was that bubble (which is then consumed, late or not).
func (c *Client) openedMapping(pkt *proto.Packet, from netip.AddrPort) bool {
	o := c.opening.Load()
	ip := pkt.IPv6
	if o == nil || !pkt.HasOrigin || !proto.IsBubble(ip) || [16]byte(ip[8:24]) != o.src {
		return false
	}
	if from != o.from {
		// Through another flow (the NAT rewrote the server's port): it
		// opened nothing; qualification goes on when openWait ends.
		c.ctr.drop(dropUnknownServerPacket)
		return true
	}
	c.mu.Lock()
	if c.q.opening && c.q.state == StateQualifying && c.opening.Load() == o {
		c.q.opening = false
		c.ctr.mapOpened.Add(1)
		c.log.Info("teredo client: the server reaches us through the port mapping", "server", from, "seen_from", pkt.Origin)
		c.sendRS(true)
	}
	c.unlock()
	return true
}

// portMapped reports whether a qualified client's address m carries the
// port mapping. Call with c.mu held.
func (c *Client) portMapped(m netip.AddrPort) bool {
	return c.cfg.PortMapping != nil && c.cfg.PortMapping() == m
}
