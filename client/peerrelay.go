package client

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Teredo peers out of direct reach, through a relay (Config.PeerRelay).
//
// A client behind a symmetric NAT sends to each destination from another
// public port. A peer behind a port-restricted NAT (Linux masquerade with an
// input firewall) lets in only what comes from an address and port it sent
// to, and all it knows of us is the port in our address, which our NAT
// keeps for our server. No bubble meets: not RFC 4380's, not RFC 6081's
// symmetric NAT extension (which needs the peer's NAT to filter by address
// only). Port mapping (package portmap) fixes it when the router offers
// one; without, the one path both ends can use is a Teredo relay: we send
// to it first, so our NAT lets its answers in, and it reaches the peer as
// it reaches any Teredo client (an indirect bubble through the peer's
// server, a direct answer from the peer). A relay with 2001::/32 routed to
// it sends IPv6 for a Teredo destination back out to Teredo; ours does so
// in process with -hairpin (relay.Config.Hairpin).
//
// Sending. A Teredo peer whose direct bubbles got no answer is moved to a
// relay instead of being given up: after the whole RFC series (4 bubbles,
// 8 s) when our NAT is not known to be symmetric, after 2 (4 s) when the
// NAT classification says it is, as then a peer that can answer at all
// answers the first bubble (its answer is what RFC 6081's extension waits
// for). The relay is Config.FixedRelay if set (the operator chose it), else
// the relay our last native echo test proved, for nativeRelayFresh: the
// echo test showed that 2001::/32 is routed to it and that it reaches us,
// which is what a relay for Teredo destinations needs; any other relay
// we might guess is not known to route the prefix. With neither, the peer
// is unreachable as before. The queued packets go to the relay, and so
// does every later packet to the peer; the peer entry remembers the relay
// (peer.Peer.Relay) while it lives, so an idle peer goes back to the relay
// at once instead of bubbling for 8 s again. A relay that does not relay
// between Teredo clients drops the packets: the connection then times out
// instead of failing with "unreachable" after 8 s (see the README).
//
// Receiving. RFC 4380 §5.2.3 drops a packet from a Teredo source that does
// not come from the source's mapping (Miredo and Windows do too), because
// anyone can send one. We hold it instead, as case 6 holds a native source
// from an unverified relay, and prove the path with an echo test: the
// request goes to the peer through the peer's server, and the reply must
// come back, with our nonce, from the endpoint the held packet came from.
// An attacker at another endpoint never sees the nonce (it travels from us
// to the peer's server to the peer), so it cannot make us accept its
// packets, and a relay we were never told about is accepted only for the
// peers it proved it carries. The server checks that the request comes from
// our mapping (RFC 4380 §5.3.1 check 5) and adds it as the origin
// indication, so the peer may deliver it: a client with PeerRelay delivers
// an echo request relayed by its own server whose origin is the mapping in
// its Teredo source (serverEcho), which is no more than what it would
// deliver from that mapping directly. The peer's stack answers; the peer
// sends the reply through its relay, and our echo test accepts it (prove,
// provedPath). From then on the peer is trusted at that relay and our
// answers go back through it, so neither side needs a relay of its own to
// answer; only the side that falls back does. The tests are those of case
// 6: 4 requests 2 s apart, the client-wide InboundEchoRate, the bounded
// queue. Packets from the peer's own public IPv4 (a peer behind a symmetric
// NAT, RFC 6081) and from private addresses (RFC 6081 hairpinning) keep the
// bubble test of symmetric.go and hairpin.go.
//
// Limits. The peer's server must be ours too when our NAT is symmetric:
// it accepts our echo request only from the mapping in our address, which
// our NAT uses for our own server alone (the same holds for indirect
// bubbles). Miredo and Windows drop the relayed packets and never deliver
// the server's echo request, so a peer of theirs stays unreachable from
// behind a symmetric NAT, as before. teredo-gateway hands packets between
// Teredo addresses to its server, which forwards only bubbles and ICMPv6:
// it does not relay Teredo-to-Teredo data.

const (
	// symmetricFallbackBubbles is how many direct bubbles a client behind
	// a symmetric NAT sends before moving a silent peer to the relay.
	symmetricFallbackBubbles = 2
	// nativeRelayFresh is how long the relay a native echo test proved
	// serves as the relay for Teredo peers.
	nativeRelayFresh = 10 * time.Minute
)

// peerRelay is Config.PeerRelay's state and counters.
type peerRelay struct {
	native                              atomic.Pointer[provenRelay]
	fallbacks, tx, proved, serverEchoes atomic.Uint64
}

// provenRelay is a relay a native echo test proved at a time.
type provenRelay struct {
	ap netip.AddrPort
	at time.Time
}

func (r *peerRelay) snapshot(s *Counters) {
	s.PeerRelayFallbacks = r.fallbacks.Load()
	s.PeerRelayTx = r.tx.Load()
	s.PeerRelayProved = r.proved.Load()
	s.PeerRelayServerEchoes = r.serverEchoes.Load()
}

// teredoRelay returns the relay for Teredo peers out of direct reach:
// FixedRelay, else the relay a native echo test proved within
// nativeRelayFresh; invalid if there is none.
func (c *Client) teredoRelay(now time.Time) netip.AddrPort {
	if c.cfg.FixedRelay.IsValid() {
		return c.cfg.FixedRelay
	}
	if r := c.prelay.native.Load(); r != nil && now.Sub(r.at) < nativeRelayFresh {
		return r.ap
	}
	return netip.AddrPort{}
}

// fallbackAfter is the number of unanswered direct bubbles after which a
// Teredo peer moves to the relay. Call without locks.
func (c *Client) fallbackAfter() int {
	c.mu.Lock()
	nat := c.nat.result
	c.mu.Unlock()
	if nat == NATSymmetric {
		return symmetricFallbackBubbles
	}
	return c.peers.Config().Bubble.Max
}

// relayedFrom reports whether a packet from a Teredo peer received from
// from came through a relay, as far as the client can tell: from a global
// endpoint on another IPv4 address than the peer's mapping.
func (c *Client) relayedFrom(peerAddr [16]byte, from netip.AddrPort) bool {
	a := from.Addr()
	return a.Is4() && from.Port() != 0 && c.glob(a) && !isPrivateIPv4(a) &&
		a != proto.MappedBytes(peerAddr[:]).Addr()
}

// viaRelay sends a packet for a Teredo peer that was moved to a relay
// there: to the relay path an echo test proved if the peer is trusted at
// one, else to our relay. Under the peer table's lock (toTeredo).
func (c *Client) viaRelay(p *peer.Peer, a *action) bool {
	if !c.cfg.PeerRelay || !p.Relay.IsValid() {
		return false
	}
	k := p.Addr().As16()
	to := p.Relay
	if p.Trusted && c.relayedFrom(k, p.Mapping) {
		to = p.Mapping
	}
	a.sendTo = to
	p.Touch(false)
	c.prelay.tx.Add(1)
	return true
}

// relayTimer is onPeerTimer for a Teredo peer with PeerRelay: the direct
// bubbles, then the move to the relay instead of giving up, and the echo
// test of a relay path (holdRelayed). Under the peer table's lock.
func (c *Client) relayTimer(p *peer.Peer, a *action, l *link, now time.Time, after int) {
	if !p.Relay.IsValid() {
		if p.Bubbles() >= after {
			if r := c.teredoRelay(now); r.IsValid() {
				c.fallBack(p, a, r)
			}
		}
		if !p.Relay.IsValid() {
			c.bubble(p, a)
		}
	}
	if n := p.Pings(); n > 0 && n < c.pingMax {
		c.ping(p, a, l, now)
	}
	bubblesDone := p.Relay.IsValid() || (!a.bubble && p.BubblesExhausted())
	pingsDone := p.Pings() == 0 || (!a.echo && p.Pings() >= c.pingMax)
	switch {
	case bubblesDone && pingsDone:
		// What is left are packets nothing proved (and, without a relay,
		// the outbound queue of an unreachable peer).
		if !p.Relay.IsValid() {
			p.Unreachable = true
		}
		a.failed = p.TakeQueue(nil)
	case !a.bubble && !a.echo:
		p.Arm(retryDelay / 4)
	}
}

// fallBack moves the peer to relay r: its outbound queue goes there now,
// held inbound packets stay held until an echo test proves their path.
// Under the peer table's lock.
func (c *Client) fallBack(p *peer.Peer, a *action, r netip.AddrPort) {
	p.Relay = r
	p.Unreachable = false
	for _, pk := range p.TakeQueue(nil) {
		if pk.Inbound {
			p.Enqueue(true, pk.From, pk.Data)
			a.spare = append(a.spare, pk)
			continue
		}
		a.flush = append(a.flush, pk)
	}
	a.flushTo = r
	c.prelay.fallbacks.Add(1)
	c.log.Info("teredo client: direct bubbles to a Teredo peer went unanswered, sending through the relay",
		"peer", p.Addr(), "relay", r, "bubbles", p.Bubbles())
}

// relayCandidate reports whether a packet from the Teredo peer p received
// from from is tested as coming through a relay (holdRelayed) rather than
// with bubbles (holdTeredo).
func (c *Client) relayCandidate(p *peer.Peer, from netip.AddrPort) bool {
	return c.cfg.PeerRelay && c.relayedFrom(p.Addr().As16(), from)
}

// holdRelayed queues a packet that a Teredo peer's packet came through a
// relay at from, and runs the echo test through the peer's server whose
// reply must come back through from; the direct bubbles go on too unless
// the peer was moved to a relay. A test this starts takes a token of the
// echo limit. Under the peer table's lock.
func (c *Client) holdRelayed(p *peer.Peer, a *action, ip []byte, from netip.AddrPort, l *link, now time.Time, paid bool) {
	if p.Unreachable && p.PingsExhausted() {
		a.dropHeld = true
		return
	}
	if !paid && c.startsEchoTest(p) && !c.echoLimit.Allow(now) {
		c.ctr.drop(dropEchoRate)
		return
	}
	if !p.Trusted {
		k := p.Addr().As16()
		p.Mapping = proto.MappedBytes(k[:])
	}
	if !p.Enqueue(true, from, ip) {
		c.ctr.drop(dropQueueFull)
	}
	c.ping(p, a, l, now)
	if !p.Relay.IsValid() {
		c.bubble(p, a)
	}
}

// echoVia is where an echo request to dst goes: a Teredo peer's server,
// which hands it to the peer with our mapping as origin, or our own server
// for a native destination.
func (c *Client) echoVia(dst [16]byte, l *link) netip.AddrPort {
	if proto.IsTeredoBytes(dst[:]) {
		return c.serverAP(proto.ServerBytes(dst[:]))
	}
	return l.serverAP
}

// serverEcho reports whether pkt, relayed by our server, is an echo
// request whose origin indication, the endpoint the server received it
// from, is the mapping in its Teredo source src: the server checked that
// (RFC 4380 §5.3.1), so the packet is as good as one received from that
// mapping, and it is delivered for the stack to answer. It is the request
// of a peer's relay-path echo test (holdRelayed).
func (c *Client) serverEcho(pkt *proto.Packet, src *[16]byte) bool {
	if !c.cfg.PeerRelay || !proto.IsTeredoBytes(src[:]) {
		return false
	}
	typ, code, _, ok := proto.ICMPv6(pkt.IPv6)
	if !ok || typ != proto.ICMPEchoRequest || code != 0 {
		return false
	}
	o := pkt.Origin
	if o != proto.MappedBytes(src[:]) || o.Port() == 0 || !c.glob(o.Addr()) {
		return false
	}
	c.prelay.serverEchoes.Add(1)
	return true
}

// provedPath records what an echo reply from from proved for peer p: for a
// native peer, that from is a relay that routes 2001::/32 to us (the relay
// for Teredo peers without FixedRelay); for a Teredo peer, with PeerRelay,
// that from is a relay that carries its traffic, which the peer's packets
// then keep using. Under the peer table's lock.
func (c *Client) provedPath(p *peer.Peer, from netip.AddrPort, now time.Time) {
	k := p.Addr().As16()
	if !proto.IsTeredoBytes(k[:]) {
		if r := c.prelay.native.Load(); r == nil || r.ap != from || now.Sub(r.at) > time.Second {
			c.prelay.native.Store(&provenRelay{ap: from, at: now})
		}
		return
	}
	if !c.cfg.PeerRelay || !c.relayedFrom(k, from) {
		return
	}
	p.Relay = from
	c.prelay.proved.Add(1)
	c.log.Info("teredo client: a relay path to a Teredo peer passed the echo test", "peer", p.Addr(), "relay", from)
}
