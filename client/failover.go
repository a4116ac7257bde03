package client

import (
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Relay failover. A native peer's entry points at the relay its echo test
// found. When that relay dies, RFC 4380 alone notices only when the entry's
// validity (30 s after the last receive) runs out, and TCP's backed-off
// retransmissions then find the new relay a minute after the failure. So
// the client watches, per native peer, the TCP segments it sends that call
// for an answer (SYN, FIN or data; pure ACKs and RSTs call for none, and UDP
// and ICMPv6 are never counted, as a one-way UDP flow is normal): once
// relaySilentPackets of them were sent through the relay, the first at
// least relaySilentAfter ago, with nothing received from the peer through
// that relay since, the relay is forgotten. The packet that noticed it
// waits in the peer's queue while the echo test runs again through the
// server, and goes out at once through whichever relay answers, so traffic
// moves within seconds instead of at TCP's next backed-off retransmission.
//
// Why these thresholds. A live peer answers every such segment within one
// round trip plus its delayed-ACK time (at most 500 ms): well under a second
// on Teredo paths, where relays are chosen for being near. relaySilentAfter
// is 3 s, the conservative RTT bound TCP itself falls back to (RFC 6298
// §5.7: the RTO is reset to 3 s when a SYN goes unanswered), so a healthy
// but slow path keeps three times its round trip before it is re-tested.
// Three segments rule out a single lost segment or a single late answer:
// TCP must have retransmitted. With gVisor's RTO (200 ms minimum, doubled
// on each timeout) a bulk transfer notices at its retransmission 3 s
// after the failure (0.2, 0.6, 1.4, 3.0 s) or at the next (6.2 s); a SYN
// (sent at 0, 1 and 3 s) at 3 s. An idle flow sends nothing and a healthy
// flow keeps getting answers, so neither is ever re-tested; a one-way UDP
// flow keeps RFC 4380's 30 s validity rule.
//
// A false alarm (a peer that stopped answering while its relay is fine)
// costs one echo test: the reply comes back through the same relay, which
// is trusted again, and the queued packet goes out after one round trip.
// If the echo test fails, the peer is unreachable, as it would be once its
// validity ran out.
//
// Config.FixedRelay bypasses the peer list, so it is never failed over:
// there is no other relay to move to, and the operator chose it.
const (
	relaySilentPackets = 3
	relaySilentAfter   = 3 * time.Second
)

// relaySilent reports whether n packets awaiting an answer, the first sent
// since ago, mean the peer's relay went silent.
func relaySilent(n int, since time.Duration) bool {
	return n >= relaySilentPackets && since >= relaySilentAfter
}

// forgetSilentRelay is the slow path's check of a trusted native peer: if
// its relay went silent it forgets the mapping, counts a failover and
// reports true, and the caller queues the packet and runs the echo test.
// Under the peer table's lock.
func (c *Client) forgetSilentRelay(p *peer.Peer) bool {
	if !relaySilent(p.Awaiting()) {
		return false
	}
	p.Trusted = false
	c.ctr.relayFailovers.Add(1)
	n, since := p.Awaiting()
	c.log.Info("teredo client: relay went silent, running the echo test again",
		"peer", p.Addr(), "relay", p.Mapping, "unanswered", n, "for", since)
	return true
}

// awaitsAnswer reports whether the outbound IPv6 packet, given as a gather
// list whose first element holds the 40-byte header, is a TCP segment that
// its receiver must answer: SYN, FIN, or any data. Extension headers make
// it report false (the packet is just not counted).
func awaitsAnswer(bufs [][]byte) bool {
	h := bufs[0]
	if h[6] != proto.ProtoTCP {
		return false
	}
	off, ok := byteAt(bufs, proto.IPv6HeaderLen+12)
	if !ok {
		return false
	}
	flags, _ := byteAt(bufs, proto.IPv6HeaderLen+13)
	const fin, syn = 0x01, 0x02
	if flags&(fin|syn) != 0 {
		return true
	}
	payload := int(h[4])<<8 | int(h[5])
	return payload > int(off>>4)*4
}

// byteAt returns byte i of the gather list bufs.
func byteAt(bufs [][]byte, i int) (byte, bool) {
	for _, b := range bufs {
		if i < len(b) {
			return b[i], true
		}
		i -= len(b)
	}
	return 0, false
}
