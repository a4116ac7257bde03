package client

import (
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// FuzzReceivePeerRelay feeds random datagrams to a client with PeerRelay and
// a fixed relay, which has a Teredo peer moved to the relay and another held
// for a relay-path echo test, from the server, the relay and others: the
// paths of peerrelay.go (serverEcho, holdRelayed, the echo proof, relayTimer)
// must neither panic nor return more than they got.
func FuzzReceivePeerRelay(f *testing.F) {
	us := proto.Address{Server: server1, Mapped: mappedUs}.Addr()
	echo := func(src netip.Addr, typ uint8) []byte {
		return proto.AppendEcho(nil, src, us, 64, typ, 1, 2, make([]byte, 8))
	}
	f.Add(ipPacket(peerAddr, us, "through a relay"), uint16(3544), byte(1|4))
	f.Add(append(proto.AppendOrigin(nil, peerMapped), echo(peerAddr, proto.ICMPEchoRequest)...), uint16(3544), byte(2|4))
	f.Add(echo(peerAddr, proto.ICMPEchoReply), uint16(3544), byte(1|4))
	f.Add(echo(peerAddr, proto.ICMPEchoReply), uint16(3544), byte(3|4))
	f.Add(proto.AppendBubble(nil, peerAddr, us, 0), uint16(5000), byte(0))
	f.Fuzz(func(t *testing.T, b []byte, port uint16, which byte) {
		h := newHarness(t, func(c *Config) {
			c.PeerRelay, c.FixedRelay, c.IPv4Filter = true, relayAP, proto.AnyIPv4
		})
		us := h.qualify()
		h.serve()
		// A peer moved to the relay, and one held for a relay-path test.
		moved := proto.Address{Server: peerServer, Mapped: netip.MustParseAddrPort("203.0.113.9:9")}.Addr()
		h.c.Transmit([][]byte{ipPacket(us, moved, "x")})
		h.advance(5 * retryDelay)
		h.c.Receive(ipPacket(peerAddr, us, "held"), relay2AP)
		h.net.take()
		if len(b) >= 40 && which&4 != 0 {
			a := us.As16()
			copy(b[len(b)-40+24:], a[:])
		}
		froms := []netip.Addr{peerMapped.Addr(), relay2AP.Addr(), server1, relayAP.Addr(), peerServer}
		from := netip.AddrPortFrom(froms[int(which)%len(froms)], port)
		got := h.c.Receive(b, from)
		if got != nil && (len(got) < 40 || len(got) > len(b)) {
			t.Fatalf("returned %d bytes of %d", len(got), len(b))
		}
		h.advance(10 * retryDelay)
		h.c.Transmit([][]byte{ipPacket(us, peerAddr, "y")})
		h.c.Transmit([][]byte{ipPacket(us, moved, "z")})
	})
}
