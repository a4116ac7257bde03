// Package ndproxy answers IPv6 neighbor solicitations for a whole prefix
// on an Ethernet interface (proxy NDP, RFC 4861 §7.2.8), so that a /64
// that a provider puts on-link on a VPS's interface reaches a gateway that
// routes it elsewhere. The kernel's own proxy NDP needs one
// "ip -6 neigh add proxy" entry per address, which cannot cover a /64.
//
// ParseNS and AppendNA are the pure wire format; Proxy (Linux) reads
// solicitations from a packet socket in all-multicast mode, because
// solicitations go to a solicited-node group per address and joining
// 2^24 groups is not possible.
package ndproxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"github.com/teredo-go/teredo/proto"
)

// ICMPv6 neighbor discovery message types and options.
const (
	typeNS        = 135
	typeNA        = 136
	optSourceLL   = 1
	optTargetLL   = 2
	flagRouter    = 0x80
	flagSolicited = 0x40
)

// Errors of ParseNS; callers count them.
var (
	ErrNotNS     = errors.New("ndproxy: not a neighbor solicitation")
	ErrMalformed = errors.New("ndproxy: malformed neighbor solicitation")
	// ErrDAD marks a duplicate address detection probe (unspecified
	// source), which a proxy does not answer: the address would then look
	// taken to the host that probes it.
	ErrDAD = errors.New("ndproxy: duplicate address detection probe")
)

// NS is a validated neighbor solicitation.
type NS struct {
	Src, Dst, Target netip.Addr
	// SourceLL is the source link-layer address option, if present.
	SourceLL net.HardwareAddr
}

// ParseNS validates pkt, an IPv6 packet, as a neighbor solicitation as
// RFC 4861 §7.1.1 requires (hop limit 255, code 0, valid checksum, a
// unicast target, options of non-zero length, the solicited-node group
// of the target or the target itself as destination).
func ParseNS(pkt []byte) (NS, error) {
	var ns NS
	if len(pkt) < 40 || pkt[0]>>4 != 6 || pkt[6] != 58 {
		return ns, ErrNotNS
	}
	if int(binary.BigEndian.Uint16(pkt[4:])) != len(pkt)-40 {
		return ns, ErrMalformed
	}
	icmp := pkt[40:]
	if len(icmp) < 24 || icmp[0] != typeNS {
		return ns, ErrNotNS
	}
	if pkt[7] != 255 || icmp[1] != 0 {
		return ns, ErrMalformed
	}
	ns.Src, ns.Dst = proto.Src(pkt), proto.Dst(pkt)
	if proto.Checksum(ns.Src, ns.Dst, 58, icmp) != 0 {
		return ns, ErrMalformed
	}
	ns.Target = netip.AddrFrom16([16]byte(icmp[8:24]))
	if ns.Target.IsMulticast() || ns.Target.IsUnspecified() {
		return ns, ErrMalformed
	}
	if ns.Dst != ns.Target && ns.Dst != SolicitedNode(ns.Target) {
		return ns, ErrMalformed
	}
	for opts := icmp[24:]; len(opts) > 0; {
		if len(opts) < 8 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return ns, ErrMalformed
		}
		l := int(opts[1]) * 8
		if opts[0] == optSourceLL && l == 8 {
			ns.SourceLL = net.HardwareAddr(opts[2:8])
		}
		opts = opts[l:]
	}
	if ns.Src.IsUnspecified() {
		if ns.SourceLL != nil {
			return ns, ErrMalformed
		}
		return ns, ErrDAD
	}
	return ns, nil
}

// SolicitedNode is the solicited-node multicast group of a:
// ff02::1:ffXX:XXXX with a's low 24 bits.
func SolicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	g := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
	return netip.AddrFrom16(g)
}

// AppendNA appends a solicited neighbor advertisement answering ns for
// its target with the link-layer address mac: from the target to the
// solicitation's source, router flag set (the gateway routes the
// prefix), override flag clear as a proxy's must be.
func AppendNA(b []byte, ns *NS, mac net.HardwareAddr) []byte {
	var body [4 + 16 + 8]byte
	body[0] = flagRouter | flagSolicited
	t := ns.Target.As16()
	copy(body[4:20], t[:])
	body[20], body[21] = optTargetLL, 1
	copy(body[22:28], mac)
	return proto.AppendICMPv6(b, ns.Target, ns.Src, 255, typeNA, 0, body[:])
}
