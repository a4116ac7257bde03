package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Peers behind symmetric NATs (RFC 6081's Symmetric NAT Support, in the form
// Miredo and this client use: bubbles from an HMAC-derived link-local source).
//
// A peer behind a symmetric NAT sends to us from another public port than
// the one in its address (the one its server saw). Its direct bubble reaches
// us only where our NAT lets anything in (a full-cone NAT, a port mapping, no
// NAT). RFC 4380 has no answer to a direct bubble: we would answer its
// indirect bubble, to the port in its address, which its NAT drops, and the
// peer never hears from us. So a direct bubble, one that carries the peer's
// link-local bubble source and our Teredo address, is answered where it came
// from: the answer goes back through the peer's new mapping, and the peer
// accepts it because it is addressed to the HMAC source it made (fromTeredo's
// viaNonce). The bubble does not carry the peer's Teredo address, so no peer
// entry is made here: the peer's first data packet comes from a mapping that
// does not match its address, and the echo test (Miredo's stricter case 6)
// proves that mapping before anything is delivered.
//
// The answer is a bubble of the size of the one received, sent to its
// source: no amplification, and a spoofed source gets one bubble. Answers
// are still bounded per destination (allowReply) and client-wide.

// Client-wide bound on answers to direct bubbles: a few dozen peers may
// open at once, and a flood of spoofed bubbles gets at most 10 a second.
const (
	answerRate  = 10
	answerBurst = 32
)

// directBubble answers a direct bubble from a peer's link-local bubble
// source src, received from from, with a bubble back to from; the answer
// carries the bubble's nonce, if its trailer tr had one (nonce.go).
func (c *Client) directBubble(src [16]byte, tr []byte, from netip.AddrPort, l *link, now time.Time) {
	if !c.glob(from.Addr()) || from.Port() == 0 {
		c.ctr.drop(dropNonGlobal)
		return
	}
	if !c.allowReply(from, now) {
		return
	}
	if !c.answerLimit.Allow(now) {
		c.ctr.drop(dropAnswerRate)
		return
	}
	c.ctr.bubbleReplies.Add(1)
	c.write(echoNonceOf(proto.AppendBubble(nil, l.ip, netip.AddrFrom16(src), 0), tr), from)
}

// holdTeredo is case 6 for a Teredo source whose packet came from another
// mapping than the one in its address: a peer behind a symmetric NAT whose
// direct bubble we answered. The packet waits in the peer's queue while a
// bubble series finds out whether from is really the peer's way to us: the
// indirect bubble reaches the peer through its server at the mapping the
// server verified, and the peer's answer, addressed to our HMAC bubble
// source (which only the peer saw), comes from its mapping towards us
// (fromTeredo's viaNonce). Then the queue is delivered if it came from that
// mapping. An echo test through the server cannot do it: the server hands
// the request to the peer from the server's address, which the peer's
// client does not take as its peer's. A test this starts takes a token of
// the echo limit, like an echo test. Under the peer table's lock.
func (c *Client) holdTeredo(p *peer.Peer, a *action, ip []byte, from netip.AddrPort, now time.Time, paid bool) {
	if p.Unreachable && p.BubblesExhausted() {
		a.dropHeld = true
		return
	}
	if !paid && p.Bubbles() == 0 && !c.echoLimit.Allow(now) {
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
	c.bubble(p, a)
}
