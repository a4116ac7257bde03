package client

import (
	"errors"
	"net/netip"
	"sync/atomic"
)

// Hop-limited direct bubbles, for NATs without an input firewall.
//
// RFC 4380 §5.2.4 opens the way to a Teredo peer with two bubbles at once: a
// direct one to the peer's mapping, which opens our NAT towards it, and an
// indirect one through the peer's server, which makes the peer answer with a
// direct bubble that our now open NAT lets in. The direct bubble itself is
// expected to die at the peer's NAT. A NAT whose WAN side has no input
// firewall (plain Linux masquerade, many carrier NATs) does not drop it: the
// router accepts it as addressed to itself and conntrack confirms an entry
// "us → peer-NAT:P" for it. When the peer then answers our indirect bubble
// from its port P towards us, masquerade finds the tuple taken and maps the
// answer to another port, which our NAT does not know: it creates the same
// kind of entry on our side, and the two never meet (measured in the lab:
// 39625 became 20386; internal/lab/DESIGN.md, "unsolicited packets").
//
// The fix is to make the first direct bubbles only as far as they need to
// go: across our own NAT, where they create our mapping, and no further. A
// bubble sent with IPv4 TTL 2 crosses one router (ours) and is discarded by
// the next, which on the internet is never the peer's NAT: between two NATs
// there are at least the access routers of both sides. The indirect bubble
// still reaches the peer, whose answer now finds our NAT open and no
// poisoned entry on its own. Peers behind a firewalled NAT, a cone NAT or no
// NAT lose nothing: their NAT dropped the direct bubble anyway, or they
// answer the indirect one. Only a peer that cannot get our indirect bubble
// needed the direct one to arrive.
//
// We do not measure the hops to the peer's NAT (that would need the ICMP
// time-exceeded messages, IP_RECVERR, and several round trips before the
// first packet); a fixed TTL with a fallback costs nothing when it works:
// the first bubble uses BubbleTTL, the retry 2 s later one more (a second
// NAT of ours, a carrier NAT, is then opened too), and the last two go with
// the socket's TTL, as RFC 4380 has it, for peers that only a direct bubble
// reaches. The retries only happen when the exchange failed, so the later
// bubbles cannot poison a path that was working. The lab checks it behind
// two open-masquerade NATs two routed hops apart (TestClientPoisonedNATs).

// DefaultBubbleTTL is the IPv4 TTL of the first direct bubble to a Teredo
// peer: it crosses the client's own NAT and dies at the next router.
const DefaultBubbleTTL = 2

// shortBubbles is how many direct bubbles of a series are hop-limited: the
// first with BubbleTTL, the second with one more.
const shortBubbles = 2

// TTLTransport is a Transport that can also send one datagram with a chosen
// IPv4 TTL, without changing the TTL of other datagrams (udpio.UDPConn and
// the udpiotest endpoints implement it). WriteToTTL returns an error
// wrapping errors.ErrUnsupported where it cannot; the client then sends
// with the socket's TTL from then on.
type TTLTransport interface {
	Transport
	WriteToTTL(b []byte, to netip.AddrPort, ttl int) error
}

// hopLimiter decides the TTL of direct bubbles and sends them.
type hopLimiter struct {
	w    TTLTransport // nil: the transport cannot, or BubbleTTL < 0
	base int
	off  atomic.Bool // the transport reported ErrUnsupported
	// symmetric is set while our NAT is classified symmetric (see forBubble).
	symmetric atomic.Bool
}

func (h *hopLimiter) init(t Transport, ttl int) {
	if ttl < 0 {
		return
	}
	if ttl == 0 {
		ttl = DefaultBubbleTTL
	}
	h.base = min(ttl, 255-shortBubbles)
	h.w, _ = t.(TTLTransport)
}

// forBubble returns the TTL of the n-th direct bubble of a series (1-based),
// 0 for the socket's.
//
// Behind a symmetric NAT the short TTL only costs time: the peer's answer to
// our indirect bubble goes to the port in our address, which our NAT keeps
// for the server only, so the one way in is our direct bubble reaching a
// peer whose NAT lets it through (full cone, port mapping, no NAT), and an
// answer to it (see symmetric.go). Every bubble then uses the socket's TTL.
func (h *hopLimiter) forBubble(n int) int {
	if h.w == nil || h.off.Load() || h.symmetric.Load() || n < 1 || n > shortBubbles {
		return 0
	}
	return h.base + n - 1
}

// writeTTL sends b to to with IPv4 TTL ttl (0: the socket's).
func (c *Client) writeTTL(b []byte, to netip.AddrPort, ttl int) {
	if ttl == 0 || c.ttl.w == nil {
		c.write(b, to)
		return
	}
	err := c.ttl.w.WriteToTTL(b, to, ttl)
	switch {
	case err == nil:
		c.ctr.ttlBubbles.Add(1)
	case errors.Is(err, errors.ErrUnsupported):
		c.ttl.off.Store(true)
		c.log.Debug("teredo client: no per-datagram TTL; bubbles use the socket's", "err", err)
		c.write(b, to)
	default:
		c.ctr.drop(dropSendError)
		c.log.Debug("teredo client: send failed", "to", to, "ttl", ttl, "err", err)
	}
}
