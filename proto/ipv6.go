package proto

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/net/ipv6"
)

// IPv6 next-header values used here.
const (
	ProtoICMPv6 = 58
	ProtoNoNext = 59
	ProtoTCP    = 6
	ProtoUDP    = 17
)

// ICMPv6 types used by Teredo (values from golang.org/x/net/ipv6).
const (
	ICMPDestUnreachable = uint8(ipv6.ICMPTypeDestinationUnreachable)
	ICMPPacketTooBig    = uint8(ipv6.ICMPTypePacketTooBig)
	ICMPTimeExceeded    = uint8(ipv6.ICMPTypeTimeExceeded)
	ICMPParamProblem    = uint8(ipv6.ICMPTypeParameterProblem)
	ICMPEchoRequest     = uint8(ipv6.ICMPTypeEchoRequest)
	ICMPEchoReply       = uint8(ipv6.ICMPTypeEchoReply)
	ICMPRouterSolicit   = uint8(ipv6.ICMPTypeRouterSolicitation)
	ICMPRouterAdvert    = uint8(ipv6.ICMPTypeRouterAdvertisement)
)

// Destination Unreachable codes (RFC 4443 §3.1).
const (
	UnreachNoRoute    = 0
	UnreachProhibited = 1
	UnreachAddress    = 3
	UnreachPort       = 4
)

// MinMTU is the IPv6 minimum MTU and Teredo's link MTU (RFC 4380 §5.1.2),
// the one MTU constant of this module.
const MinMTU = 1280

// The accessors below take a validated IPv6 packet (see Packet.Parse): at
// least 40 bytes, version 6.

// Src returns the source address of an IPv6 packet.
func Src(ip []byte) netip.Addr { return netip.AddrFrom16([16]byte(ip[8:24])) }

// Dst returns the destination address of an IPv6 packet.
func Dst(ip []byte) netip.Addr { return netip.AddrFrom16([16]byte(ip[24:40])) }

// NextHeader returns the next-header field.
func NextHeader(ip []byte) uint8 { return ip[6] }

// HopLimit returns the hop-limit field.
func HopLimit(ip []byte) uint8 { return ip[7] }

// Payload returns the bytes after the fixed header.
func Payload(ip []byte) []byte { return ip[IPv6HeaderLen:] }

// IsBubble reports whether ip is a Teredo bubble: an IPv6 header with no
// next header and no payload.
func IsBubble(ip []byte) bool {
	return len(ip) >= IPv6HeaderLen && ip[6] == ProtoNoNext && ip[4] == 0 && ip[5] == 0
}

// ICMPv6 returns the type, code and body (after the 4-byte ICMPv6 header) of
// an ICMPv6 packet carried directly in ip, with ok false if ip is not one.
func ICMPv6(ip []byte) (typ, code uint8, body []byte, ok bool) {
	if len(ip) < IPv6HeaderLen+4 || ip[6] != ProtoICMPv6 {
		return 0, 0, nil, false
	}
	p := ip[IPv6HeaderLen:]
	return p[0], p[1], p[4:], true
}

// appendHeader appends an IPv6 header with the given payload length.
func appendHeader(b []byte, next, hop uint8, plen int, src, dst netip.Addr) []byte {
	b = append(b, 0x60, 0, 0, 0, byte(plen>>8), byte(plen), next, hop)
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	return append(b, d[:]...)
}

// AppendBubble appends a bubble from src to dst. Miredo uses hop limit 0
// for unicast bubbles; RFC 4380 §5.2.8 asks 1 for discovery bubbles.
func AppendBubble(b []byte, src, dst netip.Addr, hopLimit uint8) []byte {
	return appendHeader(b, ProtoNoNext, hopLimit, 0, src, dst)
}

// Checksum computes the Internet checksum of an upper-layer payload with the
// IPv6 pseudo-header (RFC 8200 §8.1), over the given chunks.
func Checksum(src, dst netip.Addr, next uint8, payload ...[]byte) uint16 {
	var sum uint64
	s, d := src.As16(), dst.As16()
	sum = sumBytes(sum, s[:])
	sum = sumBytes(sum, d[:])
	n := 0
	odd := false
	var carry byte
	for _, p := range payload {
		n += len(p)
		if odd && len(p) > 0 {
			sum += uint64(carry)<<8 | uint64(p[0])
			p = p[1:]
			odd = false
		}
		if len(p)%2 == 1 {
			carry = p[len(p)-1]
			p = p[:len(p)-1]
			odd = true
		}
		sum = sumBytes(sum, p)
	}
	if odd {
		sum += uint64(carry) << 8
	}
	sum += uint64(n) + uint64(next)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func sumBytes(sum uint64, b []byte) uint64 {
	for len(b) >= 8 {
		sum += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// ValidICMPv6Checksum reports whether the ICMPv6 message in ip carries a
// correct checksum.
func ValidICMPv6Checksum(ip []byte) bool {
	if len(ip) < IPv6HeaderLen+4 || ip[6] != ProtoICMPv6 {
		return false
	}
	return Checksum(Src(ip), Dst(ip), ProtoICMPv6, ip[IPv6HeaderLen:]) == 0
}

// AppendICMPv6 appends an IPv6 packet carrying an ICMPv6 message of the
// given type and code whose body (after the checksum) is the concatenation
// of body, and fills in the checksum.
func AppendICMPv6(b []byte, src, dst netip.Addr, hopLimit, typ, code uint8, body ...[]byte) []byte {
	n := 4
	for _, p := range body {
		n += len(p)
	}
	b = appendHeader(b, ProtoICMPv6, hopLimit, n, src, dst)
	start := len(b)
	b = append(b, typ, code, 0, 0)
	for _, p := range body {
		b = append(b, p...)
	}
	c := Checksum(src, dst, ProtoICMPv6, b[start:])
	binary.BigEndian.PutUint16(b[start+2:], c)
	return b
}

// AppendEcho appends an ICMPv6 echo request or reply.
func AppendEcho(b []byte, src, dst netip.Addr, hopLimit, typ uint8, id, seq uint16, data []byte) []byte {
	var hdr [4]byte
	binary.BigEndian.PutUint16(hdr[0:], id)
	binary.BigEndian.PutUint16(hdr[2:], seq)
	return AppendICMPv6(b, src, dst, hopLimit, typ, 0, hdr[:], data)
}

// AppendICMPv6Error appends an ICMPv6 error (destination unreachable, packet
// too big, time exceeded or parameter problem) about the packet invoking,
// from src to the invoking packet's source. The quote is truncated so that
// the error fits in the IPv6 minimum MTU (RFC 4443 §2.4). param is the
// 32-bit field after the checksum (MTU or pointer; 0 otherwise).
func AppendICMPv6Error(b []byte, src netip.Addr, typ, code uint8, param uint32, invoking []byte) []byte {
	max := MinMTU - IPv6HeaderLen - 8
	if len(invoking) > max {
		invoking = invoking[:max]
	}
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], param)
	return AppendICMPv6(b, src, Src(invoking), 64, typ, code, p[:], invoking)
}

// MayReplyWithError reports whether RFC 4443 §2.4(e) allows an ICMPv6
// error about ip: not about an error message, not to a multicast or
// unspecified source, not about a multicast destination.
func MayReplyWithError(ip []byte) bool {
	if len(ip) < IPv6HeaderLen {
		return false
	}
	src, dst := Src(ip), Dst(ip)
	if src.IsMulticast() || src.IsUnspecified() || dst.IsMulticast() {
		return false
	}
	if typ, _, _, ok := ICMPv6(ip); ok && typ < 128 {
		return false
	}
	return true
}
