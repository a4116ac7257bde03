package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Errors returned by the parsers. Callers count drops by these.
var (
	ErrTruncated  = errors.New("teredo: truncated packet")
	ErrNotIPv6    = errors.New("teredo: not an IPv6 packet")
	ErrBadLength  = errors.New("teredo: IPv6 payload length exceeds UDP payload")
	ErrIndication = errors.New("teredo: malformed indication")
	ErrBadTrailer = errors.New("teredo: malformed trailer")
)

// IPv6HeaderLen is the length of the fixed IPv6 header.
const IPv6HeaderLen = 40

// MaxIndicationsLen bounds the bytes in front of the IPv6 packet: an
// authentication indication with 255-byte id and value plus an origin
// indication.
const MaxIndicationsLen = 4 + 255 + 255 + 9 + 8

// Auth is the authentication indication (RFC 4380 §5.1.1). ClientID and
// Value alias the parsed buffer.
type Auth struct {
	ClientID     []byte
	Value        []byte
	Nonce        [8]byte
	Confirmation byte
}

// Len returns the encoded length of a.
func (a *Auth) Len() int { return 4 + len(a.ClientID) + len(a.Value) + 9 }

// AppendAuth appends the encoding of a to b. ClientID and Value must be at
// most 255 bytes each.
func AppendAuth(b []byte, a *Auth) []byte {
	b = append(b, 0, 1, byte(len(a.ClientID)), byte(len(a.Value)))
	b = append(b, a.ClientID...)
	b = append(b, a.Value...)
	b = append(b, a.Nonce[:]...)
	return append(b, a.Confirmation)
}

// OriginLen is the length of an origin indication.
const OriginLen = 8

// AppendOrigin appends an origin indication carrying the obfuscated
// endpoint ap (an IPv4 address and port).
func AppendOrigin(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().As4()
	p := ^ap.Port()
	return append(b, 0, 0, byte(p>>8), byte(p), ^a[0], ^a[1], ^a[2], ^a[3])
}

// Packet is a Teredo UDP payload split into its parts. The zero value is
// ready for Parse; the byte slices alias the parsed buffer.
type Packet struct {
	HasAuth   bool
	Auth      Auth
	HasOrigin bool
	Origin    netip.AddrPort // de-obfuscated
	// IPv6 is the encapsulated IPv6 packet, exactly 40 + payload length bytes.
	IPv6 []byte
	// Trailer holds the bytes after the IPv6 packet (RFC 6081 trailers, or
	// padding); see ParseTrailers.
	Trailer []byte
}

// Parse splits a UDP payload into indications, the IPv6 packet and the
// trailing bytes. It validates the IPv6 version and that the payload length
// fits; it does not look inside the IPv6 packet. It does not allocate.
func (p *Packet) Parse(b []byte) error {
	*p = Packet{}
	for len(b) >= 2 && b[0] == 0 {
		switch b[1] {
		case 1: // authentication
			if p.HasAuth || p.HasOrigin {
				return fmt.Errorf("%w: authentication out of order", ErrIndication)
			}
			if len(b) < 4 {
				return ErrTruncated
			}
			idLen, auLen := int(b[2]), int(b[3])
			n := 4 + idLen + auLen + 9
			if len(b) < n {
				return ErrTruncated
			}
			p.HasAuth = true
			p.Auth.ClientID = b[4 : 4+idLen : 4+idLen]
			p.Auth.Value = b[4+idLen : 4+idLen+auLen : 4+idLen+auLen]
			copy(p.Auth.Nonce[:], b[4+idLen+auLen:])
			p.Auth.Confirmation = b[n-1]
			b = b[n:]
		case 0: // origin
			if p.HasOrigin {
				return fmt.Errorf("%w: duplicate origin", ErrIndication)
			}
			if len(b) < OriginLen {
				return ErrTruncated
			}
			p.HasOrigin = true
			port := ^binary.BigEndian.Uint16(b[2:4])
			p.Origin = netip.AddrPortFrom(netip.AddrFrom4([4]byte{^b[4], ^b[5], ^b[6], ^b[7]}), port)
			b = b[OriginLen:]
		default:
			return fmt.Errorf("%w: unknown type %d", ErrIndication, b[1])
		}
	}
	if len(b) < IPv6HeaderLen {
		return ErrTruncated
	}
	if b[0]>>4 != 6 {
		return ErrNotIPv6
	}
	n := IPv6HeaderLen + int(binary.BigEndian.Uint16(b[4:6]))
	if n > len(b) {
		return ErrBadLength
	}
	p.IPv6 = b[:n:n]
	p.Trailer = b[n:]
	return nil
}

// Append appends the encoding of p (indications, IPv6 packet, trailer) to b.
func (p *Packet) Append(b []byte) []byte {
	if p.HasAuth {
		b = AppendAuth(b, &p.Auth)
	}
	if p.HasOrigin {
		b = AppendOrigin(b, p.Origin)
	}
	b = append(b, p.IPv6...)
	return append(b, p.Trailer...)
}
