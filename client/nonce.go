package client

import (
	"github.com/teredo-go/teredo/proto"
)

// RFC 6081's Nonce trailer (type 0x01, 4 bytes) makes a bubble answer
// provable: our direct and indirect bubbles to a peer carry a nonce, a peer
// that implements the trailer copies the nonce of the bubble it answers into
// its answer, and we take an answer from an unexpected mapping (a peer
// behind a symmetric NAT, or behind our own NAT at a LAN endpoint) only if
// its nonce is ours. The indirect bubble reaches the peer only through its
// server, at the mapping the server verified, so only the peer (or whoever
// sits on that path) knows the nonce.
//
// This client already proves answers a second way, the one Miredo uses: its
// bubbles come from an HMAC-derived link-local source (bubbleSource), and an
// answer addressed to it comes from the peer that got the bubble. The nonce
// is checked on top of that when present; a peer that sends no trailer
// (Miredo 1.2.6, and any RFC 4380 client) is judged by the old rules alone,
// so nothing changes for it. A trailer with another nonce than ours, on an
// answer that only a nonce or our bubble source could make acceptable, is
// dropped and counted as "bubble-nonce": a stale answer (from before our
// address changed) or a forged one. A bubble from the peer's own mapping (RFC
// 4380's rules accept it anyway) is not judged by its nonce: it may be the
// peer's own opening bubble, carrying its nonce, not ours.
//
// What the nonce adds over the bubble source: a Teredo peer that answers to
// our Teredo address (not to the link-local source) from another mapping
// than its address names, as an RFC 6081 client behind a symmetric NAT does,
// is accepted when it echoes our nonce. Without the nonce such a bubble
// proves nothing and is dropped.
//
// Nonce values need no state: each is an HMAC, under the client's secret
// key, of our Teredo address and the peer's, so that a peer entry evicted
// and made again sends the same nonce, and a new qualification (a new
// address) invalidates every answer still in flight.

// nonceCheck is what a bubble's trailer says about its nonce.
type nonceCheck uint8

const (
	nonceAbsent nonceCheck = iota // no Nonce trailer, or a malformed trailer
	nonceOurs                     // the nonce of our bubbles to the sender
	nonceOther                    // a nonce that is not ours
)

// bubbleNonce is the nonce of our bubbles to peer while our address is self.
func (c *Client) bubbleNonce(self, peer [16]byte) [4]byte {
	m := c.mac("bubble-nonce", self[:], peer[:])
	return [4]byte(m[:4])
}

// appendNonce appends a Nonce trailer carrying n to b.
func appendNonce(b []byte, n [4]byte) []byte {
	return append(b, proto.TrailerNonce, 4, n[0], n[1], n[2], n[3])
}

// trailerNonce returns the nonce in the trailer tr. A malformed trailer
// counts as none: the bubble before it is judged by RFC 4380's rules, and
// the code that reads the rest of the trailer (hairpin.go) counts it.
func trailerNonce(tr []byte) (n [4]byte, ok bool) {
	if len(tr) == 0 {
		return n, false
	}
	t, err := proto.ParseTrailers(tr)
	if err != nil || !t.HasNonce {
		return n, false
	}
	return t.Nonce, true
}

// echoNonceOf appends to the bubble answer the Nonce trailer of the bubble
// it answers, whose trailer is tr, if it had one: RFC 6081's answer.
func echoNonceOf(answer, tr []byte) []byte {
	if n, ok := trailerNonce(tr); ok {
		return appendNonce(answer, n)
	}
	return answer
}

// checkNonce judges the Nonce trailer tr of a bubble from the Teredo
// address src to us (link l).
func (c *Client) checkNonce(tr []byte, src [16]byte, l *link) nonceCheck {
	n, ok := trailerNonce(tr)
	switch {
	case !ok:
		return nonceAbsent
	case n == c.bubbleNonce(l.addr, src):
		return nonceOurs
	}
	return nonceOther
}
