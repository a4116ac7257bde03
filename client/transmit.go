package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// retryDelay is the bubble and echo-test timeout (RFC 4380 §5.2.4: 2 s).
const retryDelay = 2 * time.Second

// echoHopLimit is Miredo's hop limit for echo tests (raised to 128 in 1.0.5
// because some destinations were out of reach with less).
const echoHopLimit = 128

// Transmit routes one outbound IPv6 packet (see the package documentation
// for the contract). The fast path, a trusted and valid peer, takes one
// read-locked map lookup and allocates nothing.
func (c *Client) Transmit(bufs [][]byte) (netip.AddrPort, bool) {
	if len(bufs) == 0 || len(bufs[0]) < proto.IPv6HeaderLen || bufs[0][0]>>4 != 6 {
		c.ctr.drop(dropMalformed)
		return netip.AddrPort{}, false
	}
	h := bufs[0]
	if l := c.up.Load(); l != nil && [16]byte(h[8:24]) == l.addr {
		dst := [16]byte(h[24:40])
		if !proto.IsTeredoBytes(dst[:]) && awaitsAnswer(bufs) {
			// Counted for relay failover (failover.go); a silent relay
			// takes the slow path, which forgets it.
			if ap, n, since, ok := c.peers.RouteAwaiting(dst, c.clk.Now()); ok && !relaySilent(n, since) {
				c.ctr.txFast.Add(1)
				return ap, true
			}
		} else if ap, ok := c.peers.Route(dst, c.clk.Now()); ok {
			c.ctr.txFast.Add(1)
			return ap, true
		}
	}
	return c.transmitSlow(bufs)
}

// action collects what a peer update decided, to be done without locks.
type action struct {
	sendTo   netip.AddrPort // the peer became reachable meanwhile: send now
	fail     bool           // answer the packet with an ICMPv6 error
	bubble   bool           // send direct and indirect bubbles
	local    bool           // the peer is a valid local peer: unicast and discovery bubbles
	direct   netip.AddrPort // direct bubble destination
	ttl      int            // the direct bubble's IPv4 TTL; 0: the socket's
	echo     bool           // send an echo request with nonce
	nonce    [8]byte
	flush    []peer.Packet // queue to flush to flushTo
	flushTo  netip.AddrPort
	failed   []peer.Packet // queue of a peer found unreachable
	dropHeld bool          // an inbound packet is refused: its sender is unreachable
	spare    []peer.Packet // taken from a queue and copied back: only released
}

func (c *Client) transmitSlow(bufs [][]byte) (netip.AddrPort, bool) {
	now := c.clk.Now()
	h := bufs[0]
	l := c.up.Load()
	if l == nil {
		if c.closed.Load() {
			c.ctr.drop(dropClosed)
			return netip.AddrPort{}, false
		}
		c.ctr.drop(dropNotQualified)
		c.unreachable(flatten(bufs), now)
		return netip.AddrPort{}, false
	}
	dst := [16]byte(h[24:40])
	switch {
	case dst[0] == 0xff:
		c.ctr.drop(dropMulticast)
		return netip.AddrPort{}, false
	case [16]byte(h[8:24]) != l.addr:
		// Only our Teredo address may leave through the tunnel; link-local
		// traffic (neighbour discovery, MLD) and stale addresses stay home.
		c.ctr.drop(dropBadSource)
		return netip.AddrPort{}, false
	}
	var a action
	if proto.IsTeredoBytes(dst[:]) {
		if !c.glob(proto.ServerBytes(dst[:])) || !c.glob(proto.MappedBytes(dst[:]).Addr()) {
			// RFC 4380 §5.2.4: MUST silently discard.
			c.ctr.drop(dropNonGlobal)
			return netip.AddrPort{}, false
		}
		c.peers.Update(dst, true, now, func(p *peer.Peer) { c.toTeredo(p, &a, bufs) })
	} else {
		if l.inPublic(&dst) { // another client of our gateway (gateway.go)
			c.ctr.txFast.Add(1)
			return l.serverAP, true
		}
		if c.cfg.FixedRelay.IsValid() {
			c.ctr.txFast.Add(1)
			return c.cfg.FixedRelay, true
		}
		c.peers.Update(dst, true, now, func(p *peer.Peer) { c.toNative(p, &a, l, bufs, now) })
	}
	if a.sendTo.IsValid() {
		c.ctr.txFast.Add(1)
		return a.sendTo, true
	}
	if a.fail {
		c.ctr.drop(dropUnreachable)
		c.unreachable(flatten(bufs), now)
	}
	c.act(&a, dst, l, now)
	return netip.AddrPort{}, false
}

// toTeredo applies RFC 4380 §5.2.4 cases 3 and 5 to a Teredo destination;
// it runs under the peer table's lock.
func (c *Client) toTeredo(p *peer.Peer, a *action, bufs [][]byte) {
	if p.Trusted && p.Valid() {
		a.sendTo = p.Mapping
		return
	}
	if c.viaRelay(p, a) {
		return
	}
	if p.Unreachable && p.BubblesExhausted() {
		a.fail = true
		return
	}
	localValid := p.Local && p.Valid()
	if !p.Trusted && !localValid {
		k := p.Addr().As16()
		p.Mapping = proto.MappedBytes(k[:])
	}
	if p.Enqueue(false, netip.AddrPort{}, bufs...) {
		c.ctr.txQueued.Add(1)
	} else {
		c.ctr.drop(dropQueueFull)
	}
	c.bubble(p, a)
}

// bubble counts and plans the bubbles to an untrusted Teredo peer, and arms
// the retry timer; under the peer table's lock.
func (c *Client) bubble(p *peer.Peer, a *action) {
	if !p.CountBubble() {
		return
	}
	if p.Bubbles() == 1 {
		p.Unreachable = false
	}
	a.bubble = true
	a.local = p.Local && p.Valid()
	a.direct = p.Mapping
	a.ttl = c.ttl.forBubble(p.Bubbles())
	p.Arm(retryDelay)
}

// toNative applies RFC 4380 §5.2.4 case 2 to a non-Teredo destination:
// queue the packet and run the echo test through our server.
func (c *Client) toNative(p *peer.Peer, a *action, l *link, bufs [][]byte, now time.Time) {
	if p.Trusted && p.Valid() && !c.forgetSilentRelay(p) {
		a.sendTo = p.Mapping
		return
	}
	if p.Unreachable && p.PingsExhausted() {
		a.fail = true
		return
	}
	if p.Enqueue(false, netip.AddrPort{}, bufs...) {
		c.ctr.txQueued.Add(1)
	} else {
		c.ctr.drop(dropQueueFull)
	}
	c.ping(p, a, l, now)
}

// ping counts and plans an echo request to p; under the peer table's lock.
func (c *Client) ping(p *peer.Peer, a *action, l *link, now time.Time) {
	if !p.CountPing() {
		return
	}
	if p.Pings() == 1 {
		p.Unreachable = false
		p.Nonce = c.echoNonce(l.addr, p.Addr().As16(), now)
	}
	a.echo = true
	a.nonce = p.Nonce
	p.Arm(retryDelay)
}

// act sends what an update planned for the peer dst.
func (c *Client) act(a *action, dst [16]byte, l *link, now time.Time) {
	peerIP := netip.AddrFrom16(dst)
	if a.bubble {
		c.ctr.bubbles.Add(1)
		if a.local {
			c.write(proto.AppendBubble(nil, l.ip, peerIP, 0), a.direct)
			c.write(proto.AppendBubble(nil, l.ip, proto.AllNodes, 1), netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port))
		} else {
			src := c.bubbleSource(dst)
			b := appendNonce(proto.AppendBubble(nil, src, peerIP, 0), c.bubbleNonce(l.addr, dst))
			if !l.portMapped { // the mapping lets the peer in (portmapped.go)
				c.writeTTL(b, a.direct, a.ttl)
			}
			c.write(c.appendAlternates(b, dst, l), c.serverAP(proto.ServerBytes(dst[:])))
			c.predictPort(dst, l, now) // after the direct bubble: see portpredict.go
		}
	}
	if a.echo {
		c.ctr.echo.Add(1)
		id, seq, data := echoParts(a.nonce)
		c.write(proto.AppendEcho(nil, l.ip, peerIP, echoHopLimit, proto.ICMPEchoRequest, id, seq, data), c.echoVia(dst, l))
	}
	if a.dropHeld {
		c.ctr.drop(dropUnverifiedSource)
	}
	if a.flush != nil {
		for _, pk := range a.flush {
			switch {
			case !pk.Inbound:
				c.ctr.txFlushed.Add(1)
				c.write(pk.Data, a.flushTo)
			case pk.From == a.flushTo:
				// Miredo's stricter case 6: a held packet is delivered only
				// if it came from the endpoint the echo test confirmed.
				c.ctr.rxHeldDelivered.Add(1)
				c.cfg.Deliver(pk.Data)
			default:
				c.ctr.drop(dropUnverifiedSource)
			}
		}
		c.peers.Release(a.flush)
	}
	if a.spare != nil {
		c.peers.Release(a.spare)
	}
	if a.failed != nil {
		for _, pk := range a.failed {
			if pk.Inbound {
				c.ctr.drop(dropUnverifiedSource)
				continue
			}
			c.ctr.drop(dropUnreachable)
			c.unreachable(pk.Data, now)
		}
		c.peers.Release(a.failed)
	}
}

// onPeerTimer retries the bubbles or echo test of a pending peer, and fails
// its queue once they are exhausted.
func (c *Client) onPeerTimer(addr netip.Addr) {
	l := c.up.Load()
	if l == nil {
		return
	}
	now := c.clk.Now()
	dst := addr.As16()
	teredo := proto.IsTeredoBytes(dst[:])
	relayed := teredo && c.cfg.PeerRelay
	var after int
	if relayed {
		after = c.fallbackAfter()
	}
	var a action
	c.peers.Update(dst, false, now, func(p *peer.Peer) {
		if p.Trusted && p.Valid() {
			return
		}
		if relayed {
			c.relayTimer(p, &a, l, now, after)
			return
		}
		var exhausted bool
		// A Teredo source held by case 6 is tested with echo requests too.
		if teredo && (p.Pings() == 0 || p.Bubbles() > 0) {
			c.bubble(p, &a)
			exhausted = !a.bubble && p.BubblesExhausted()
		} else {
			c.ping(p, &a, l, now)
			exhausted = !a.echo && p.PingsExhausted()
		}
		switch {
		case exhausted:
			p.Unreachable = true
			a.failed = p.TakeQueue(nil)
		case !a.bubble && !a.echo:
			// The previous packet went out less than 2 s ago (sent by
			// Transmit): look again when it is due.
			p.Arm(retryDelay / 4)
		}
	})
	if len(a.failed) > 0 || a.bubble || a.echo {
		c.log.Debug("teredo client: peer retry", "peer", addr, "unreachable", a.failed != nil)
	}
	c.act(&a, dst, l, now)
}

// flatten copies a gather list into one buffer, at most what an ICMPv6
// error quotes.
func flatten(bufs [][]byte) []byte {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	n = min(n, proto.MinMTU)
	out := make([]byte, 0, n)
	for _, b := range bufs {
		if len(out)+len(b) > n {
			b = b[:n-len(out)]
		}
		out = append(out, b...)
	}
	return out
}
