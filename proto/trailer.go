package proto

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// RFC 6081 trailer types. Each trailer is type (1 byte), length of the value
// (1 byte), value.
const (
	TrailerNonce        = 0x01
	TrailerAltAddress   = 0x03
	TrailerNeighborDisc = 0x04
	TrailerRandomPort   = 0x05
)

// MaxAltAddresses is the most address/port pairs an alternate address
// trailer carries (RFC 6081 §4).
const MaxAltAddresses = 4

// Trailers holds the RFC 6081 trailers of a packet. Unknown trailers are
// skipped and counted, as the RFC requires receivers to ignore them.
type Trailers struct {
	HasNonce bool
	Nonce    [4]byte

	NumAltAddresses int
	AltAddresses    [MaxAltAddresses]netip.AddrPort

	HasNeighborDiscovery bool
	DiscoveryType        byte // 0 solicitation, 1 advertisement

	HasRandomPort bool
	RandomPort    uint16

	Unknown int
}

// ParseTrailers parses the bytes that follow the IPv6 packet.
func ParseTrailers(b []byte) (Trailers, error) {
	var t Trailers
	for len(b) > 0 {
		if len(b) < 2 {
			return t, fmt.Errorf("%w: %d stray bytes", ErrBadTrailer, len(b))
		}
		typ, l := b[0], int(b[1])
		if len(b) < 2+l {
			return t, fmt.Errorf("%w: type %#x length %d", ErrBadTrailer, typ, l)
		}
		v := b[2 : 2+l]
		switch typ {
		case TrailerNonce:
			if l != 4 {
				return t, fmt.Errorf("%w: nonce length %d", ErrBadTrailer, l)
			}
			t.HasNonce = true
			copy(t.Nonce[:], v)
		case TrailerAltAddress:
			if l < 8 || (l-2)%6 != 0 || (l-2)/6 > MaxAltAddresses {
				return t, fmt.Errorf("%w: alternate address length %d", ErrBadTrailer, l)
			}
			n := (l - 2) / 6
			for i := 0; i < n; i++ {
				e := v[2+6*i:]
				port := binary.BigEndian.Uint16(e[4:6])
				if port == 0 {
					return t, fmt.Errorf("%w: alternate address port 0", ErrBadTrailer)
				}
				t.AltAddresses[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{e[0], e[1], e[2], e[3]}), port)
			}
			t.NumAltAddresses = n
		case TrailerNeighborDisc:
			if l != 4 {
				return t, fmt.Errorf("%w: neighbor discovery length %d", ErrBadTrailer, l)
			}
			t.HasNeighborDiscovery = true
			t.DiscoveryType = v[0]
		case TrailerRandomPort:
			if l != 2 {
				return t, fmt.Errorf("%w: random port length %d", ErrBadTrailer, l)
			}
			t.HasRandomPort = true
			t.RandomPort = binary.BigEndian.Uint16(v)
		default:
			t.Unknown++
		}
		b = b[2+l:]
	}
	return t, nil
}

// Append appends the known trailers of t to b (unknown ones are not kept).
func (t *Trailers) Append(b []byte) []byte {
	if t.HasNonce {
		b = append(b, TrailerNonce, 4)
		b = append(b, t.Nonce[:]...)
	}
	if t.NumAltAddresses > 0 {
		b = append(b, TrailerAltAddress, byte(2+6*t.NumAltAddresses), 0, 0)
		for _, ap := range t.AltAddresses[:t.NumAltAddresses] {
			a := ap.Addr().As4()
			b = append(b, a[:]...)
			b = binary.BigEndian.AppendUint16(b, ap.Port())
		}
	}
	if t.HasNeighborDiscovery {
		b = append(b, TrailerNeighborDisc, 4, t.DiscoveryType, 0, 0, 0)
	}
	if t.HasRandomPort {
		b = append(b, TrailerRandomPort, 2)
		b = binary.BigEndian.AppendUint16(b, t.RandomPort)
	}
	return b
}
