package client

import (
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

// fuzzClient is a qualified client with a trusted peer, a pending peer and
// local discovery on, so that random input reaches every branch.
func fuzzClient(t *testing.T) (*harness, netip.Addr) {
	h := newHarness(t, func(c *Config) { c.LocalDiscovery = true; c.IPv4Filter = proto.AnyIPv4 })
	us := h.qualify()
	h.trustPeer(us, peerMapped)
	h.c.Transmit([][]byte{ipPacket(us, nativeDst, "x")})
	h.net.take()
	return h, us
}

func FuzzReceive(f *testing.F) {
	us := proto.Address{Server: server1, Flags: 0, Mapped: mappedUs}.Addr()
	f.Add(ipPacket(peerAddr, us, "data"), uint16(5000), byte(0))
	f.Add(proto.AppendBubble(nil, peerAddr, us, 0), uint16(3544), byte(1))
	f.Add(append(proto.AppendOrigin(nil, peerMapped), proto.AppendBubble(nil, peerAddr, us, 0)...), uint16(3544), byte(2))
	f.Add(proto.AppendRA(nil, &proto.RAParams{Server: server1, Client: mappedUs, Dst: proto.RSSourceRestricted}), uint16(3544), byte(2))
	f.Add(proto.AppendEcho(nil, nativeDst, us, 64, proto.ICMPEchoReply, 1, 2, make([]byte, 8)), uint16(3544), byte(3))
	f.Add(proto.AppendICMPv6Error(nil, nativeDst, proto.ICMPDestUnreachable, 0, 0, proto.AppendEcho(nil, us, nativeDst, 64, proto.ICMPEchoRequest, 1, 2, make([]byte, 8))), uint16(3544), byte(3))
	// A data packet from an unverified native source through a relay: held
	// for an echo test, or, with bit 8, refused by the spent echo limit.
	f.Add(ipPacket(nativeDst, us, "held"), uint16(3544), byte(3|4))
	f.Add(ipPacket(nativeSrc(1000), us, "refused"), uint16(3544), byte(3|4|8))
	// RFC 6081: an indirect bubble from a peer behind our public IPv4 with an
	// Alternate Address trailer, and a direct bubble from a link-local source.
	var alt proto.Trailers
	alt.NumAltAddresses, alt.AltAddresses[0] = 1, netip.MustParseAddrPort("192.168.1.3:4000")
	f.Add(alt.Append(append(proto.AppendOrigin(nil, netip.AddrPortFrom(mappedUs.Addr(), 6000)), proto.AppendBubble(nil, netip.MustParseAddr("fe80::1"), us, 0)...)), uint16(3544), byte(2|4))
	f.Add(proto.AppendBubble(nil, netip.MustParseAddr("fe80::1"), us, 0), uint16(5000), byte(0|4))
	// RFC 6081 Nonce trailers: on a bubble from a peer's other mapping, on an
	// indirect bubble, and followed by an unknown trailer.
	f.Add(appendNonce(proto.AppendBubble(nil, peerAddr, us, 0), [4]byte{1, 2, 3, 4}), uint16(61000), byte(0))
	f.Add(appendNonce(append(proto.AppendOrigin(nil, peerMapped), proto.AppendBubble(nil, peerAddr, us, 0)...), [4]byte{5, 6, 7, 8}), uint16(3544), byte(2))
	f.Add(append(appendNonce(proto.AppendBubble(nil, peerAddr, us, 0), [4]byte{}), 9, 0), uint16(5000), byte(0))
	f.Fuzz(func(t *testing.T, b []byte, port uint16, which byte) {
		h, us := fuzzClient(t)
		if which&8 != 0 {
			h.flood(us, 0, DefaultInboundEchoBurst)
			h.net.take()
		}
		// The fuzzer rarely finds our random address: patch it in.
		if len(b) >= 40 && which&4 != 0 {
			a := us.As16()
			copy(b[len(b)-40+24:], a[:])
		}
		froms := []netip.Addr{peerMapped.Addr(), server1, server1b, relayAP.Addr(), netip.MustParseAddr("192.168.1.1")}
		from := netip.AddrPortFrom(froms[int(which)%len(froms)], port)
		got := h.c.Receive(b, from)
		if got != nil && (len(got) < 40 || len(got) > len(b)) {
			t.Fatalf("returned %d bytes of %d", len(got), len(b))
		}
		h.c.ReceiveDiscovery(b, from)
		h.advance(10 * retryDelay)
	})
}

func FuzzTransmit(f *testing.F) {
	us := proto.Address{Server: server1, Mapped: mappedUs}.Addr()
	f.Add(ipPacket(us, peerAddr, "x"), 40)
	f.Add(ipPacket(us, nativeDst, "x"), 0)
	f.Add(ipPacket(us, proto.AllNodes, "x"), 3)
	f.Add(tcpPacket(us, nativeDst, tcpACK, "data"), 45) // counted for relay failover
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		h, us := fuzzClient(t)
		if len(b) >= 24 && split&1 != 0 {
			a := us.As16()
			copy(b[8:24], a[:])
		}
		var bufs [][]byte
		if split > 0 && split < len(b) {
			bufs = [][]byte{b[:split], b[split:]}
		} else {
			bufs = [][]byte{b}
		}
		h.c.Transmit(bufs)
		h.advance(10 * retryDelay)
		h.c.Transmit(bufs)
	})
}
