package proto

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
)

// Port is the Teredo UDP service port of servers (RFC 4380 §2.7).
const Port = 3544

// Prefix is the Teredo IPv6 prefix 2001::/32 (RFC 4380 §2.6).
var Prefix = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01}), 32)

// DiscoveryGroup is the IPv4 multicast group of local discovery (RFC 4380 §2.17).
var DiscoveryGroup = netip.AddrFrom4([4]byte{224, 0, 0, 253})

// Flag bits of a Teredo address (RFC 4380 §4, RFC 5991).
const (
	// FlagCone is the deprecated cone bit: RFC 5991 clients never set it.
	FlagCone uint16 = 0x8000
	// FlagsUG are the universal/local and individual/group bits, which
	// should be zero.
	FlagsUG uint16 = 0x0300
	// RandomFlagsMask selects the 12 bits that RFC 5991 clients fill with
	// random values so that an attacker who knows the mapping still has to
	// guess among 4096 addresses.
	RandomFlagsMask uint16 = 0x3cff
)

// Address is a decoded Teredo address: the server it was obtained from, the
// flags, and the client's mapped (public) IPv4 endpoint, already
// de-obfuscated.
type Address struct {
	Server netip.Addr     // IPv4 address of the client's Teredo server
	Flags  uint16         // cone bit, UG bits, RFC 5991 random bits
	Mapped netip.AddrPort // the client's public IPv4 address and UDP port
}

// IsTeredo reports whether ip is in 2001::/32.
func IsTeredo(ip netip.Addr) bool {
	if !ip.Is6() || ip.Is4In6() {
		return false
	}
	b := ip.As16()
	return b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0
}

// IsTeredoBytes is IsTeredo for a raw 16-byte address, for the data path.
func IsTeredoBytes(b []byte) bool {
	return len(b) >= 16 && b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0
}

// ParseAddress decodes a Teredo address. It reports false if ip is not in
// 2001::/32.
func ParseAddress(ip netip.Addr) (Address, bool) {
	if !IsTeredo(ip) {
		return Address{}, false
	}
	b := ip.As16()
	return addressFrom16(&b), true
}

// MappedBytes returns the mapped endpoint embedded in a raw Teredo address
// without checking the prefix.
func MappedBytes(b []byte) netip.AddrPort {
	_ = b[15]
	port := ^binary.BigEndian.Uint16(b[10:12])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), port)
}

// ServerBytes returns the server IPv4 embedded in a raw Teredo address.
func ServerBytes(b []byte) netip.Addr {
	_ = b[7]
	return netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]})
}

func addressFrom16(b *[16]byte) Address {
	return Address{
		Server: ServerBytes(b[:]),
		Flags:  binary.BigEndian.Uint16(b[8:10]),
		Mapped: MappedBytes(b[:]),
	}
}

// Addr encodes a as an IPv6 address. Server and Mapped must be IPv4.
func (a Address) Addr() netip.Addr {
	var b [16]byte
	b[0], b[1] = 0x20, 0x01
	s := a.Server.As4()
	copy(b[4:8], s[:])
	binary.BigEndian.PutUint16(b[8:10], a.Flags)
	binary.BigEndian.PutUint16(b[10:12], ^a.Mapped.Port())
	m := a.Mapped.Addr().As4()
	for i := range m {
		b[12+i] = ^m[i]
	}
	return netip.AddrFrom16(b)
}

// Cone reports whether the address carries the cone bit.
func (a Address) Cone() bool { return a.Flags&FlagCone != 0 }

// String returns the IPv6 form of the address.
func (a Address) String() string { return a.Addr().String() }

// ServerPrefix returns the /64 a server advertises: 2001:0:<server>::/64.
func ServerPrefix(server netip.Addr) netip.Prefix {
	var b [16]byte
	b[0], b[1] = 0x20, 0x01
	s := server.As4()
	copy(b[4:8], s[:])
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

// Well-known link-local and multicast addresses used by Teredo.
var (
	// RSSourceRestricted is the link-local source of a restricted (non-cone)
	// router solicitation, as sent by Windows Vista and later and by Miredo.
	RSSourceRestricted = netip.AddrFrom16([16]byte{0xfe, 0x80, 8: 0, 9: 0, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff})
	// RSSourceCone is the link-local source of a cone router solicitation
	// (fe80::8000:5445:5245:444f, "TEREDO" with the cone bit).
	RSSourceCone = netip.AddrFrom16([16]byte{0xfe, 0x80, 8: 0x80, 9: 0x00, 10: 0x54, 11: 0x45, 12: 0x52, 13: 0x45, 14: 0x44, 15: 0x4f})
	// AllNodes is ff02::1.
	AllNodes = netip.AddrFrom16([16]byte{0xff, 0x02, 15: 1})
	// AllRouters is ff02::2.
	AllRouters = netip.AddrFrom16([16]byte{0xff, 0x02, 15: 2})
)

// ServerLinkLocal returns the link-local source a server uses for its router
// advertisements: the Teredo interface identifier of the server itself, with
// the cone bit and the obfuscated port 3544 (fe80::8000:f227:<~server>).
func ServerLinkLocal(server netip.Addr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	binary.BigEndian.PutUint16(b[8:10], FlagCone)
	binary.BigEndian.PutUint16(b[10:12], ^uint16(Port))
	s := server.As4()
	for i := range s {
		b[12+i] = ^s[i]
	}
	return netip.AddrFrom16(b)
}

// LinkLocalFromID returns fe80::/64 with the given interface identifier,
// with the universal/local and group bits cleared. Clients use it for
// bubbles whose source is derived from a secret nonce, so that a reply can be
// recognised even when it arrives from an unexpected mapping.
func LinkLocalFromID(id [8]byte) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	copy(b[8:], id[:])
	b[8] &^= 0x03
	return netip.AddrFrom16(b)
}

// BubbleSource returns the link-local source address of bubbles to peer:
// fe80::/64 with an interface identifier hashed from a role's random secret
// and the peer's address. A bubble sent back to that address proves that
// its sender saw ours, whatever mapping it comes from (a peer behind a
// symmetric NAT), without per-bubble state; the secret keeps anyone else
// from forging one. Client and relay both use it, as Miredo's
// SendBubbleFromDst and CheckBubble do. The input has a fixed length, so a
// secret-prefix hash is a sound MAC here, and it does not allocate.
func BubbleSource(secret *[32]byte, peer *[16]byte) netip.Addr {
	var in [48]byte
	copy(in[:32], secret[:])
	copy(in[32:], peer[:])
	sum := sha256.Sum256(in[:])
	return LinkLocalFromID([8]byte(sum[:8]))
}
