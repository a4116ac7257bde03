package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Errors of router advertisement validation.
var (
	ErrNotRA       = errors.New("teredo: not a router advertisement")
	ErrRAPrefix    = errors.New("teredo: router advertisement without exactly one Teredo /64 prefix")
	ErrRANoOrigin  = errors.New("teredo: router advertisement without origin indication")
	ErrRANoAuth    = errors.New("teredo: router advertisement without authentication indication")
	ErrBadChecksum = errors.New("teredo: bad ICMPv6 checksum")
	ErrRAOption    = errors.New("teredo: malformed router advertisement option")
)

// obsoletePrefix is the pre-2006 Teredo prefix 3ffe:831f::/32 that old
// Microsoft servers still advertised.
var obsoletePrefix = [4]byte{0x3f, 0xfe, 0x83, 0x1f}

// AppendRS appends the UDP payload of a router solicitation: an
// authentication indication carrying nonce, then an RS from the restricted
// (or, with cone set, the cone) link-local source to ff02::2.
func AppendRS(b []byte, nonce [8]byte, cone bool) []byte {
	b = AppendAuth(b, &Auth{Nonce: nonce})
	src := RSSourceRestricted
	if cone {
		src = RSSourceCone
	}
	return AppendICMPv6(b, src, AllRouters, 255, ICMPRouterSolicit, 0, []byte{0, 0, 0, 0})
}

// IsRS reports whether ip is a router solicitation from a link-local source
// to ff02::2 (RFC 4380 §5.3.1 check 4), and whether it asks for the cone
// treatment (cone bit in the source's interface identifier).
func IsRS(ip []byte) (rs, cone bool) {
	typ, code, _, ok := ICMPv6(ip)
	if !ok || typ != ICMPRouterSolicit || code != 0 {
		return false, false
	}
	src := Src(ip)
	if !src.IsLinkLocalUnicast() || Dst(ip) != AllRouters {
		return false, false
	}
	return true, ip[16]&0x80 != 0
}

// RAParams describes a router advertisement a server sends.
type RAParams struct {
	Nonce  [8]byte        // the client's nonce, echoed
	Server netip.Addr     // the server's primary IPv4: the prefix and source
	Client netip.AddrPort // the client's mapped endpoint: the origin indication
	Dst    netip.Addr     // the RS's link-local source
	MTU    uint32         // 0 omits the MTU option
	// Public, if valid, adds a public prefix option: the /64 a gateway
	// maps its clients' Teredo addresses to (see OptPublicPrefix).
	Public netip.Prefix
}

// OptPublicPrefix is the type of the option by which a teredo-gateway
// tells its clients the /64 to which it maps their Teredo addresses
// (RFC 6296 style). It is 253, an ND option type that RFC 4727 sets
// aside for experiments: RFC 4861 §4.6 makes every node ignore options it
// does not know, and Miredo and Windows do, whereas a second prefix
// information option makes Miredo refuse the advertisement ("multiple
// Teredo prefixes"). Layout, 24 bytes: type, length 3, prefix length (64),
// a zero byte, the ASCII magic "TGW1", the 16-byte prefix.
const OptPublicPrefix = 253

var publicMagic = [4]byte{'T', 'G', 'W', '1'}

// AppendRA appends the UDP payload of a router advertisement in Miredo's
// layout: authentication and origin indications, then an RA from the
// server's link-local address with retransmit timer 2000 ms, a prefix
// information option 2001:0:<server>::/64 (on-link and autonomous, infinite
// lifetimes) and, if MTU is non-zero, an MTU option.
func AppendRA(b []byte, p *RAParams) []byte {
	b = AppendAuth(b, &Auth{Nonce: p.Nonce})
	b = AppendOrigin(b, p.Client)
	var body [12 + 32 + 8 + 24]byte
	// hop limit, flags, router lifetime, reachable time: 0; retransmit 2000.
	binary.BigEndian.PutUint32(body[8:12], 2000)
	pio := body[12:44]
	pio[0], pio[1], pio[2], pio[3] = 3, 4, 64, 0x40
	binary.BigEndian.PutUint32(pio[4:8], 0xffffffff)
	binary.BigEndian.PutUint32(pio[8:12], 0xffffffff)
	pfx := ServerPrefix(p.Server).Addr().As16()
	copy(pio[16:32], pfx[:])
	n := 44
	if p.MTU != 0 {
		mtu := body[44:52]
		mtu[0], mtu[1] = 5, 1
		binary.BigEndian.PutUint32(mtu[4:8], p.MTU)
		n = 52
	}
	if p.Public.IsValid() && p.Public.Addr().Is6() {
		o := body[n : n+24]
		o[0], o[1], o[2] = OptPublicPrefix, 3, byte(p.Public.Bits())
		copy(o[4:8], publicMagic[:])
		a := p.Public.Masked().Addr().As16()
		copy(o[8:24], a[:])
		n += 24
	}
	return AppendICMPv6(b, ServerLinkLocal(p.Server), p.Dst, 255, ICMPRouterAdvert, 0, body[:n])
}

// RA is a validated router advertisement.
type RA struct {
	Nonce        [8]byte
	Confirmation byte
	// Mapped is the client's mapped endpoint from the origin indication.
	Mapped netip.AddrPort
	// Server is the IPv4 embedded in the advertised prefix.
	Server netip.Addr
	// MTU is the advertised MTU, or 0 if the option was absent or out of
	// the 1280..65535 range (which Miredo ignores).
	MTU uint32
	// Dst is the IPv6 destination of the advertisement.
	Dst netip.Addr
	// Public is the prefix of a public prefix option (OptPublicPrefix),
	// the zero value if there was none or it was not a /64.
	Public netip.Prefix
}

// ParseRA validates a parsed packet as a Teredo router advertisement
// (RFC 4380 §5.2.1): authentication and origin indications present, a valid
// ICMPv6 RA with correct checksum, and exactly one 2001:0::/32 /64 prefix
// (the obsolete 3ffe:831f::/32 is accepted and rewritten, as Miredo does for
// old Microsoft servers). The caller checks the nonce, the destination and
// the server address against its own state.
func ParseRA(p *Packet) (RA, error) {
	var ra RA
	typ, code, body, ok := ICMPv6(p.IPv6)
	if !ok || typ != ICMPRouterAdvert || code != 0 {
		return ra, ErrNotRA
	}
	if !p.HasAuth {
		return ra, ErrRANoAuth
	}
	if !p.HasOrigin {
		return ra, ErrRANoOrigin
	}
	if !ValidICMPv6Checksum(p.IPv6) {
		return ra, ErrBadChecksum
	}
	if len(body) < 12 {
		return ra, fmt.Errorf("%w: short body", ErrNotRA)
	}
	ra.Nonce = p.Auth.Nonce
	ra.Confirmation = p.Auth.Confirmation
	ra.Mapped = p.Origin
	ra.Dst = Dst(p.IPv6)
	prefixes := 0
	opts := body[12:]
	for len(opts) > 0 {
		if len(opts) < 8 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return ra, ErrRAOption
		}
		l := int(opts[1]) * 8
		o := opts[:l]
		switch o[0] {
		case 3: // prefix information
			if l != 32 {
				return ra, ErrRAOption
			}
			pfx := o[16:32]
			teredo := pfx[0] == 0x20 && pfx[1] == 0x01 && pfx[2] == 0 && pfx[3] == 0
			if o[2] != 64 || !(teredo || [4]byte(pfx[0:4]) == obsoletePrefix) {
				// Any other prefix makes the advertisement unusable.
				return ra, ErrRAPrefix
			}
			prefixes++
			ra.Server = netip.AddrFrom4([4]byte(pfx[4:8]))
		case OptPublicPrefix:
			if l == 24 && o[2] == 64 && [4]byte(o[4:8]) == publicMagic {
				a := netip.AddrFrom16([16]byte(o[8:24]))
				if a.IsGlobalUnicast() && !a.Is4In6() && !IsTeredo(a) {
					ra.Public = netip.PrefixFrom(a, 64).Masked()
				}
			}
		case 5: // MTU
			if l != 8 {
				return ra, ErrRAOption
			}
			mtu := binary.BigEndian.Uint32(o[4:8])
			if mtu >= MinMTU && mtu <= 65535 {
				ra.MTU = mtu
			}
		}
		opts = opts[l:]
	}
	if prefixes != 1 {
		return ra, ErrRAPrefix
	}
	return ra, nil
}
