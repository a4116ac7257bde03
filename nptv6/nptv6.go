// Package nptv6 rewrites IPv6 packets between two /64 prefixes, statelessly
// and one to one, as RFC 6296 network prefix translation does, so that a
// Teredo gateway's clients appear on the operator's prefix.
//
// The 64-bit prefix is replaced and the interface identifier kept: a
// Teredo address 2001:0:<server>:<flags>:<port>:<client> becomes
// <outside /64>:<flags>:<port>:<client>, so that the client's Teredo
// address can be read back from its public one. RFC 6296's checksum-neutral
// mapping would instead alter 16 bits of the identifier; here the transport
// checksums (TCP, UDP, ICMPv6, including those of the packet an ICMPv6
// error quotes) are updated incrementally as RFC 1624 describes. The update
// adds the same constant a correct checksum needs, so a packet whose
// checksum was wrong before translation is still wrong after it.
//
// The translator is pure: it works in place on a packet and allocates
// nothing, so it sits on a relay's per-packet path.
package nptv6

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Errors returned by the translations. The packet is left unchanged.
var (
	// ErrMalformed: the packet is too short for its headers.
	ErrMalformed = errors.New("nptv6: malformed packet")
	// ErrNotMapped: the address to translate is not in the prefix the
	// direction maps from.
	ErrNotMapped = errors.New("nptv6: address outside the mapped prefix")
)

// IP protocol numbers the translator looks at.
const (
	protoHopByHop = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDstOpts  = 60
)

const headerLen = 40

// maxExtHeaders bounds the extension-header walk.
const maxExtHeaders = 8

// Translator maps addresses between an inside and an outside /64. The zero
// value is not usable; create one with New. It is safe for concurrent use.
type Translator struct {
	inside, outside [8]byte
	// toOut and toIn are the ones' complement sums that a checksum covering
	// an address gains when its prefix changes in each direction.
	toOut, toIn uint16
}

// New returns a translator between inside and outside, both /64 prefixes.
func New(inside, outside netip.Prefix) (*Translator, error) {
	for _, p := range []netip.Prefix{inside, outside} {
		if !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() != 64 {
			return nil, fmt.Errorf("nptv6: prefix %v is not an IPv6 /64", p)
		}
	}
	t := &Translator{}
	in, out := inside.Masked().Addr().As16(), outside.Masked().Addr().As16()
	copy(t.inside[:], in[:8])
	copy(t.outside[:], out[:8])
	t.toOut = delta(t.inside[:], t.outside[:])
	t.toIn = delta(t.outside[:], t.inside[:])
	return t, nil
}

// Inside and Outside return the translator's prefixes.
func (t *Translator) Inside() netip.Prefix  { return prefix(t.inside) }
func (t *Translator) Outside() netip.Prefix { return prefix(t.outside) }

func prefix(p [8]byte) netip.Prefix {
	var a [16]byte
	copy(a[:], p[:])
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// ToOutside returns the outside address of a, which must be in the inside
// prefix (ok reports whether it was).
func (t *Translator) ToOutside(a netip.Addr) (netip.Addr, bool) { return swap(a, t.inside, t.outside) }

// ToInside returns the inside address of a, which must be in the outside
// prefix (ok reports whether it was).
func (t *Translator) ToInside(a netip.Addr) (netip.Addr, bool) { return swap(a, t.outside, t.inside) }

func swap(a netip.Addr, from, to [8]byte) (netip.Addr, bool) {
	if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	if [8]byte(b[:8]) != from {
		return netip.Addr{}, false
	}
	copy(b[:8], to[:])
	return netip.AddrFrom16(b).WithZone(""), true
}

// Outbound rewrites pkt, an IPv6 packet leaving the inside, in place: its
// source moves from the inside to the outside prefix, and in an ICMPv6
// error the quoted packet's destination (the inside host the error is
// about) moves with it. It returns ErrNotMapped if the source is not
// inside.
func (t *Translator) Outbound(pkt []byte) error {
	return t.translate(pkt, 8, 24, t.inside, t.outside, t.toOut)
}

// Inbound rewrites pkt, an IPv6 packet entering the inside, in place: its
// destination moves from the outside to the inside prefix, and in an ICMPv6
// error the quoted packet's source moves with it. It returns ErrNotMapped
// if the destination is not in the outside prefix.
func (t *Translator) Inbound(pkt []byte) error {
	return t.translate(pkt, 24, 8, t.outside, t.inside, t.toIn)
}

// translate rewrites the address at offset at of pkt from prefix from to
// prefix to, and in a quoted packet the address at offset quoted.
func (t *Translator) translate(pkt []byte, at, quoted int, from, to [8]byte, d uint16) error {
	if len(pkt) < headerLen || pkt[0]>>4 != 6 {
		return ErrMalformed
	}
	if [8]byte(pkt[at:at+8]) != from {
		return ErrNotMapped
	}
	next, off, ok := transport(pkt)
	if !ok {
		return ErrMalformed
	}
	var csum int // offset of the transport checksum, or -1
	switch {
	case off < 0:
		csum = -1 // a later fragment: its first fragment carries the checksum
	default:
		csum = checksumOffset(next, off)
		if csum >= 0 && csum+2 > len(pkt) {
			return ErrMalformed
		}
	}
	// An ICMPv6 error quotes the packet that caused it; the quoted
	// packet travelled the other way, so its other address is ours.
	var q []byte
	if next == protoICMPv6 && off >= 0 && off+8 <= len(pkt) && pkt[off] < 128 {
		if e := pkt[off+8:]; len(e) >= headerLen && e[0]>>4 == 6 && [8]byte(e[quoted:quoted+8]) == from {
			q = e
		}
	}

	copy(pkt[at:at+8], to[:])
	if csum >= 0 {
		c := adjust(binary.BigEndian.Uint16(pkt[csum:]), d, next == protoUDP)
		if q != nil {
			c = t.translateQuoted(q, quoted, to, d, c)
		}
		binary.BigEndian.PutUint16(pkt[csum:], c)
	}
	return nil
}

// translateQuoted rewrites the quoted packet q of an ICMPv6 error and
// returns the error's checksum c adjusted for every byte it changed.
// Quotes are often truncated: the quoted transport checksum is updated
// only if it is present.
func (t *Translator) translateQuoted(q []byte, at int, to [8]byte, d uint16, c uint16) uint16 {
	copy(q[at:at+8], to[:])
	c = adjust(c, d, false)
	next, off, ok := transport(q)
	if !ok || off < 0 {
		return c
	}
	qc := checksumOffset(next, off)
	if qc < 0 || qc+2 > len(q) {
		return c
	}
	old := binary.BigEndian.Uint16(q[qc:])
	if next == protoUDP && old == 0 {
		return c
	}
	nw := adjust(old, d, next == protoUDP)
	binary.BigEndian.PutUint16(q[qc:], nw)
	return adjust(c, fold(uint32(^old)+uint32(nw)), false)
}

// transport walks the extension headers of pkt and returns the transport
// protocol and the offset of its header, or off -1 for a fragment other
// than the first. ok is false if a header is truncated.
func transport(pkt []byte) (next uint8, off int, ok bool) {
	next, off = pkt[6], headerLen
	for range maxExtHeaders {
		switch next {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+2 > len(pkt) {
				return 0, 0, false
			}
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case protoAH:
			if off+2 > len(pkt) {
				return 0, 0, false
			}
			next, off = pkt[off], off+(int(pkt[off+1])+2)*4
		case protoFragment:
			if off+8 > len(pkt) {
				return 0, 0, false
			}
			if binary.BigEndian.Uint16(pkt[off+2:])&^7 != 0 {
				return pkt[off], -1, true
			}
			next, off = pkt[off], off+8
		default:
			return next, off, off <= len(pkt)
		}
	}
	return 0, 0, false
}

// checksumOffset is where the checksum of transport protocol next, whose
// header starts at off, is; -1 for protocols without a checksum over the
// addresses.
func checksumOffset(next uint8, off int) int {
	switch next {
	case protoTCP:
		return off + 16
	case protoUDP:
		return off + 6
	case protoICMPv6:
		return off + 2
	}
	return -1
}

// delta is the ones' complement sum of the 16-bit words that replace old
// with new: sum(~old) + sum(new) (RFC 1624, equation 3).
func delta(old, new []byte) uint16 {
	var s uint32
	for i := 0; i < len(old); i += 2 {
		s += uint32(^binary.BigEndian.Uint16(old[i:]))
		s += uint32(binary.BigEndian.Uint16(new[i:]))
	}
	return fold(s)
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// adjust returns checksum c updated by d: ~(~c + d). A UDP checksum of 0
// means "none" in IPv4 and is invalid in IPv6; it stays 0, and a computed 0
// is sent as 0xffff (RFC 768).
func adjust(c, d uint16, udp bool) uint16 {
	if udp && c == 0 {
		return 0
	}
	r := ^fold(uint32(^c) + uint32(d))
	if udp && r == 0 {
		r = 0xffff
	}
	return r
}
