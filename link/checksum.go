package link

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// validChecksum verifies the transport checksum of an inbound IPv6 packet
// whose upper-layer header follows the fixed header directly (TCP, UDP or
// ICMPv6). The endpoint needs it when GRO is on: gVisor's GRO only merges
// TCP segments if the stack skips checksum verification, which the NIC
// capability turns off for every packet, so the endpoint checks the rest.
// Packets it cannot check (extension headers, fragments, other protocols)
// and malformed ones (which the stack drops) pass; they still had the outer
// UDP checksum verified by the kernel. With skipTCP, TCP is left to GRO,
// which verifies it before merging.
func validChecksum(ip []byte, skipTCP bool) bool {
	if len(ip) < header.IPv6MinimumSize {
		return true
	}
	h := header.IPv6(ip)
	plen := int(h.PayloadLength())
	if header.IPv6MinimumSize+plen > len(ip) {
		return true
	}
	payload := ip[header.IPv6MinimumSize : header.IPv6MinimumSize+plen]
	var proto tcpip.TransportProtocolNumber
	switch next := h.NextHeader(); next {
	case uint8(header.TCPProtocolNumber):
		if skipTCP || len(payload) < header.TCPMinimumSize {
			return true
		}
		proto = header.TCPProtocolNumber
	case uint8(header.UDPProtocolNumber):
		if len(payload) < header.UDPMinimumSize {
			return true
		}
		if binary.BigEndian.Uint16(payload[6:]) == 0 {
			return false // mandatory over IPv6 (RFC 8200 §8.1)
		}
		proto = header.UDPProtocolNumber
	case uint8(header.ICMPv6ProtocolNumber):
		if len(payload) < header.ICMPv6MinimumSize {
			return true
		}
		proto = header.ICMPv6ProtocolNumber
	default:
		return true
	}
	sum := header.PseudoHeaderChecksum(proto, h.SourceAddress(), h.DestinationAddress(), uint16(plen))
	return checksum.Checksum(payload, sum) == 0xffff
}
