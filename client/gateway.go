package client

// Clients of one teredo-gateway reaching each other by public address.
//
// A gateway's clients appear on the IPv6 internet in its public /64, which
// it announces in its RA (proto.OptPublicPrefix). To another client of the
// same gateway that address looks native, so RFC 4380 §5.2.4 case 2 would
// start an echo test through the server, and the receiving client, seeing
// a non-Teredo source arrive from a relay it has not verified, holds the
// packet and starts its own echo test (Miredo's stricter case 6). Each
// client then holds the echo request the other's test waits for: neither
// test can finish, and both give up with "unreachable" after the pings run
// out (8 s), although every packet went through (the gateway hairpins
// them in process). It takes one side that does not hold to break the
// cycle: so our client reaches a Miredo client of its gateway by public
// address and back, while two Miredo clients of one gateway still cannot.
//
// They need not ask: only the gateway can send from or reach its public
// /64, and the gateway is our server, at the endpoint we qualified with.
// So a packet to an address in our own public /64 goes straight to the
// server's endpoint (its relay half), and a packet from such an address is
// accepted when it comes from that endpoint, and only then; from anywhere
// else it is held and tested like any native source. Trusting the server
// for this adds nothing to the trust a client already gives it: the server
// could equally forge bubbles or RAs.

// inPublic reports whether a is in the public /64 of l's server, when the
// server is a gateway that announced one.
func (l *link) inPublic(a *[16]byte) bool {
	if !l.public.IsValid() {
		return false
	}
	p := l.public.As16()
	return [8]byte(a[:8]) == [8]byte(p[:8])
}
