package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Receive processes one datagram from the client's UDP socket (see the
// package documentation for the contract). The fast path, a data packet
// from a trusted peer whose mapping matches (RFC 4380 §5.2.3 case 1), takes
// one read-locked map lookup and allocates nothing.
func (c *Client) Receive(b []byte, from netip.AddrPort) []byte {
	var pkt proto.Packet
	if err := pkt.Parse(b); err != nil {
		c.ctr.dropParse(err)
		return nil
	}
	ip := pkt.IPv6
	if c.isServerPort(from.Port()) && len(ip) > proto.IPv6HeaderLen && ip[6] == proto.ProtoICMPv6 && ip[proto.IPv6HeaderLen] == proto.ICMPRouterAdvert {
		c.handleRA(&pkt, from)
		return nil
	}
	if c.opening.Load() != nil && c.isServerPort(from.Port()) && c.openedMapping(&pkt, from) {
		return nil
	}
	l := c.up.Load()
	if l == nil {
		if c.closed.Load() {
			c.ctr.drop(dropClosed)
		} else {
			c.ctr.drop(dropNotQualified)
		}
		return nil
	}
	if !pkt.HasOrigin && ip[6] != proto.ProtoNoNext && [16]byte(ip[24:40]) == l.addr &&
		c.peers.Accept([16]byte(ip[8:24]), from, c.clk.Now()) {
		c.ctr.rxDelivered.Add(1)
		return ip
	}
	return c.receiveSlow(&pkt, from, l)
}

func isLinkLocal(a *[16]byte) bool { return a[0] == 0xfe && a[1]&0xc0 == 0x80 }

func (c *Client) receiveSlow(pkt *proto.Packet, from netip.AddrPort, l *link) []byte {
	now := c.clk.Now()
	ip := pkt.IPv6
	src, dst := [16]byte(ip[8:24]), [16]byte(ip[24:40])
	bubble := proto.IsBubble(ip)
	if from == l.serverAP && bubble {
		c.indirectBubble(pkt, from, l, now)
		return nil
	}
	// Other packets from the server go on: it may also be a relay.
	switch {
	case dst[0] == 0xff || src[0] == 0xff:
		c.ctr.drop(dropMulticast)
		return nil
	case isLinkLocal(&src):
		if bubble && dst == l.addr {
			c.directBubble(src, pkt.Trailer, from, l, now)
			return nil
		}
		// Keeps RAs and other link-local traffic out of the stack.
		c.ctr.drop(dropLinkLocalSource)
		return nil
	case src == [16]byte{}:
		c.ctr.drop(dropMalformed)
		return nil
	}
	dstOurs := dst == l.addr
	if !dstOurs && !(bubble && isLinkLocal(&dst) && proto.IsTeredoBytes(src[:])) {
		c.ctr.drop(dropNotOurs)
		return nil
	}
	if dstOurs && ip[6] == proto.ProtoICMPv6 {
		typ, code, body, _ := proto.ICMPv6(ip)
		switch {
		case typ == proto.ICMPEchoReply && code == 0:
			if c.echoProof(src, body, from, l, now) {
				return nil
			}
		case typ == proto.ICMPDestUnreachable:
			if c.unreachableProof(src, body, from, l, now) {
				return nil
			}
		}
	}
	if dstOurs && pkt.HasOrigin && from == l.serverAP && c.serverEcho(pkt, &src) {
		c.ctr.rxDelivered.Add(1)
		return ip
	}
	if proto.IsTeredoBytes(src[:]) {
		return c.fromTeredo(pkt, src, dst, from, dstOurs, bubble, l, now)
	}
	if (c.cfg.FixedRelay.IsValid() && from == c.cfg.FixedRelay) || (from == l.serverAP && l.inPublic(&src)) {
		if bubble {
			return nil
		}
		c.ctr.rxDelivered.Add(1)
		return ip
	}
	if bubble {
		c.ctr.drop(dropUnverifiedBubble)
		return nil
	}
	c.holdAndTest(ip, src, from, l, now)
	return nil
}

// indirectBubble answers a bubble relayed by our server with a direct bubble
// to the origin, which opens our NAT to the peer (RFC 4380 §5.2.3).
func (c *Client) indirectBubble(pkt *proto.Packet, from netip.AddrPort, l *link, now time.Time) {
	ip := pkt.IPv6
	if [16]byte(ip[24:40]) != l.addr {
		c.ctr.drop(dropNotOurs)
		return
	}
	var to netip.AddrPort
	switch {
	case pkt.HasOrigin:
		to = pkt.Origin
	case proto.IsTeredoBytes(ip[8:24]):
		// Some servers insert no origin indication; Miredo guesses from the
		// source address.
		to = proto.MappedBytes(ip[8:24])
	default:
		c.ctr.drop(dropUnknownServerPacket)
		return
	}
	if !c.glob(to.Addr()) || to.Port() == 0 {
		c.ctr.drop(dropNonGlobal)
		return
	}
	answer := echoNonceOf(proto.AppendBubble(nil, l.ip, proto.Src(ip), 0), pkt.Trailer)
	// Before the origin's bound: a Random Port trailer comes in a second
	// indirect bubble right after the first (portpredict.go).
	c.answerRandomPort(pkt, to, answer, now)
	if !c.allowReply(to, now) {
		return
	}
	c.ctr.bubbleReplies.Add(1)
	c.write(answer, to)
	c.answerAlternates(pkt, to, answer, l, now)
}

// echoProof is RFC 4380 §5.2.3 case 2: an echo reply carrying the nonce of
// our echo test to src proves that from (its relay) reaches it.
func (c *Client) echoProof(src [16]byte, body []byte, from netip.AddrPort, l *link, now time.Time) bool {
	return c.prove(src, body, from, l, now)
}

// unreachableProof accepts, as Miredo does, a Destination Unreachable that
// quotes our echo request and comes from its target itself: some nodes and
// firewalls refuse echo but still prove the path.
func (c *Client) unreachableProof(src [16]byte, body []byte, from netip.AddrPort, l *link, now time.Time) bool {
	const quoteMin = 4 + proto.IPv6HeaderLen + 4 + 12
	if len(body) < quoteMin {
		return false
	}
	q := body[4:]
	if q[0]>>4 != 6 || q[6] != proto.ProtoICMPv6 || [16]byte(q[8:24]) != l.addr || [16]byte(q[24:40]) != src {
		return false
	}
	e := q[proto.IPv6HeaderLen:]
	if e[0] != proto.ICMPEchoRequest {
		return false
	}
	return c.prove(src, e[4:], from, l, now)
}

func (c *Client) prove(src [16]byte, echo []byte, from netip.AddrPort, l *link, now time.Time) bool {
	if !c.glob(from.Addr()) || from.Port() == 0 {
		return false
	}
	var a action
	matched := false
	c.peers.Update(src, false, now, func(p *peer.Peer) {
		if p.Pings() == 0 || !isEcho(echo, p.Nonce) {
			return
		}
		matched = true
		p.Trust(from)
		c.provedPath(p, from, now)
		p.Disarm()
		a.flush = p.TakeQueue(nil)
		a.flushTo = from
	})
	if matched {
		c.act(&a, src, l, now)
	}
	return matched
}

// fromTeredo handles a packet from a Teredo source that is not a trusted
// peer with a matching mapping (RFC 4380 §5.2.3 cases 3 and 5, and the
// symmetric-NAT extension).
func (c *Client) fromTeredo(pkt *proto.Packet, src, dst [16]byte, from netip.AddrPort, dstOurs, bubble bool, l *link, now time.Time) []byte {
	ip := pkt.IPv6
	match := proto.MappedBytes(src[:]) == from
	// A bubble back to the HMAC-derived source of our own bubble proves the
	// sender got it, so its actual source is its mapping even if it differs
	// from its address (a peer behind a symmetric NAT).
	viaNonce := bubble && !dstOurs && netip.AddrFrom16(dst) == c.bubbleSource(src)
	if bubble && len(pkt.Trailer) > 0 && (viaNonce || (dstOurs && !match)) {
		// RFC 6081's Nonce trailer (nonce.go), where it decides.
		switch c.checkNonce(pkt.Trailer, src, l) {
		case nonceOther:
			c.ctr.drop(dropBubbleNonce)
			return nil
		case nonceOurs:
			viaNonce = true
		}
	}
	if (match || viaNonce) && (!c.glob(from.Addr()) || from.Port() == 0) && !(viaNonce && c.sameNATSource(src, from, l)) {
		c.ctr.drop(dropNonGlobal)
		return nil
	}
	var a action
	accepted := false
	c.peers.Update(src, match || viaNonce, now, func(p *peer.Peer) {
		if !(match || viaNonce || (p.Local && p.Mapping == from)) {
			return
		}
		accepted = true
		p.Trust(from)
		p.Disarm()
		a.flush = p.TakeQueue(nil)
		a.flushTo = from
	})
	if accepted {
		c.act(&a, src, l, now)
		if bubble || !dstOurs {
			return nil
		}
		c.ctr.rxDelivered.Add(1)
		return ip
	}
	if bubble {
		c.ctr.drop(dropUnverifiedBubble)
		return nil
	}
	c.holdAndTest(ip, src, from, l, now)
	return nil
}

// Defaults of Config.InboundEchoRate and InboundEchoBurst.
//
// Each echo test sends at most peer.DefaultPingLimit.Max (4) requests, 2 s
// apart, so inbound packets make the client send at most 4 × (32 + 10/s × t)
// echo requests (84-byte datagrams): 40 a second, under 4 KB/s, in the long
// run, however many spoofed sources a hostile relay makes up (CVE-2006-6266,
// the case-6 test as a packet generator). A legitimate native peer costs one
// test: once trusted, its packets from the same relay take the fast path for
// as long as its entry lives. The burst covers a few dozen peers reaching us
// at once (a server being connected to after qualification, a swarm); 10
// tests a second is the rate of Miredo's ICMPv6 error limit.
//
// Miredo has no client-wide limit, only the per-peer CountPing (4 requests,
// 2 s apart) and the peer list size (1024 entries without libJudy), a full
// list refusing new peers. A flood there gets 4 echo requests per list entry
// as fast as its packets come, then locks new legitimate peers out until
// entries expire. Here the rate is capped whatever the table size, and a
// refused packet creates no entry, so it evicts no peer either.
const (
	DefaultInboundEchoRate  = 10
	DefaultInboundEchoBurst = 32
)

// holdAndTest is Miredo's stricter case 6: a packet from an unverified
// source waits in the peer's queue while an echo test through our server
// finds out whether from really is the way to src. A test this starts takes
// a token of the client-wide echo limit; one in progress (started by either
// direction) holds the packet for free.
func (c *Client) holdAndTest(ip []byte, src [16]byte, from netip.AddrPort, l *link, now time.Time) {
	var a action
	if !c.peers.Update(src, false, now, func(p *peer.Peer) { c.hold(p, &a, ip, from, l, now, false) }) {
		// A new entry always starts a test: pay first, so that a refused
		// packet creates no entry. If another goroutine creates it in
		// between, the token is spent on this packet anyway.
		if !c.echoLimit.Allow(now) {
			c.ctr.drop(dropEchoRate)
			return
		}
		c.peers.Update(src, true, now, func(p *peer.Peer) { c.hold(p, &a, ip, from, l, now, true) })
	}
	c.act(&a, src, l, now)
}

// hold queues the inbound packet ip on p and plans its echo test; paid says
// a token of the echo limit was already taken. Under the peer table's lock.
func (c *Client) hold(p *peer.Peer, a *action, ip []byte, from netip.AddrPort, l *link, now time.Time, paid bool) {
	if k := p.Addr().As16(); proto.IsTeredoBytes(k[:]) {
		if c.relayCandidate(p, from) {
			c.holdRelayed(p, a, ip, from, l, now, paid)
			return
		}
		c.holdTeredo(p, a, ip, from, now, paid)
		return
	}
	if p.Unreachable && p.PingsExhausted() {
		a.dropHeld = true
		return
	}
	if !paid && c.startsEchoTest(p) && !c.echoLimit.Allow(now) {
		c.ctr.drop(dropEchoRate)
		return
	}
	if !p.Enqueue(true, from, ip) {
		c.ctr.drop(dropQueueFull)
	}
	c.ping(p, a, l, now)
}

// startsEchoTest reports whether an echo request to p now would start a new
// series (CountPing's rule): none yet, or the last one exhausted and its
// window over.
func (c *Client) startsEchoTest(p *peer.Peer) bool {
	return p.Pings() == 0 || (p.Pings() >= c.pingMax && !p.PingsExhausted())
}
