package link

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/teredo-go/teredo/proto"
)

// transportPacket builds an IPv6 packet with a correct checksum for the
// given transport protocol and payload.
func transportPacket(p tcpip.TransportProtocolNumber, body []byte) []byte {
	var thLen int
	switch p {
	case header.TCPProtocolNumber:
		thLen = header.TCPMinimumSize
	case header.UDPProtocolNumber:
		thLen = header.UDPMinimumSize
	}
	b := make([]byte, header.IPv6MinimumSize+thLen+len(body))
	src, dst := tcpip.AddrFrom16(addrA.As16()), tcpip.AddrFrom16(addrB.As16())
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(thLen + len(body)), TransportProtocol: p, HopLimit: 64, SrcAddr: src, DstAddr: dst,
	})
	payload := b[header.IPv6MinimumSize:]
	copy(payload[thLen:], body)
	sum := header.PseudoHeaderChecksum(p, src, dst, uint16(len(payload)))
	switch p {
	case header.TCPProtocolNumber:
		th := header.TCP(payload)
		th.Encode(&header.TCPFields{SrcPort: 1, DstPort: 2, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
		th.SetChecksum(^checksum.Checksum(payload, sum))
	case header.UDPProtocolNumber:
		uh := header.UDP(payload)
		uh.Encode(&header.UDPFields{SrcPort: 1, DstPort: 2, Length: uint16(len(payload))})
		uh.SetChecksum(^checksum.Checksum(payload, sum))
	}
	return b
}

func TestValidChecksum(t *testing.T) {
	tcpPkt := transportPacket(header.TCPProtocolNumber, []byte("data"))
	udpPkt := transportPacket(header.UDPProtocolNumber, []byte("data"))
	icmpPkt := proto.AppendEcho(nil, addrA, addrB, 64, proto.ICMPEchoRequest, 1, 2, []byte("data"))
	corrupt := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		b[len(b)-1] ^= 0x40
		return b
	}
	zeroUDP := append([]byte(nil), udpPkt...)
	zeroUDP[header.IPv6MinimumSize+6], zeroUDP[header.IPv6MinimumSize+7] = 0, 0
	extHdr := append([]byte(nil), udpPkt...)
	extHdr[6] = 0 // hop-by-hop options: not checked here

	tests := []struct {
		name    string
		ip      []byte
		skipTCP bool
		want    bool
	}{
		{"tcp", tcpPkt, false, true},
		{"tcp corrupt", corrupt(tcpPkt), false, false},
		{"tcp corrupt left to GRO", corrupt(tcpPkt), true, true},
		{"udp", udpPkt, false, true},
		{"udp corrupt", corrupt(udpPkt), false, false},
		{"udp zero checksum", zeroUDP, false, false},
		{"icmpv6", icmpPkt, false, true},
		{"icmpv6 corrupt", corrupt(icmpPkt), false, false},
		{"extension header", corrupt(extHdr), false, true},
		{"bubble", proto.AppendBubble(nil, addrA, addrB, 0), false, true},
		{"truncated", udpPkt[:30], false, true},
		{"payload length beyond packet", udpPkt[:len(udpPkt)-2], false, true},
	}
	for _, tc := range tests {
		if got := validChecksum(tc.ip, tc.skipTCP); got != tc.want {
			t.Errorf("%s: validChecksum = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func FuzzValidChecksum(f *testing.F) {
	f.Add(transportPacket(header.UDPProtocolNumber, []byte("x")))
	f.Add(transportPacket(header.TCPProtocolNumber, nil))
	f.Add(proto.AppendEcho(nil, addrA, addrB, 64, proto.ICMPEchoRequest, 1, 2, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		validChecksum(b, false)
		validChecksum(b, true)
	})
}
