package tun

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// A device opened with read offload (TUN_F_CSUM|TUN_F_TSO6) may hand over,
// in one read, a TCP super-packet of up to 64 KiB that the kernel did not
// segment: the virtio_net_hdr says GSO TCPv6 with gso_size the MSS, and
// NEEDS_CSUM with the TCP header at csum_start, whose checksum field holds
// the pseudo-header sum only. The splitter cuts it into the segments
// tcp_gso_segment would have made, so that the relay still sees packets of
// at most the MTU with valid checksums, and the kernel runs its stack once
// per super-packet instead of once per segment. The kernel's hdr_len is
// skb_headlen, a hint, not the header length: the header length is
// csum_start plus the TCP data offset. Between the IPv6 and the TCP header
// only hop-by-hop and destination options are taken, copied into every
// segment; a super-packet with any other extension header, another GSO
// type, an inconsistent header or segments longer than the MTU the device
// had at Open is dropped and counted (ReadDrops).

// More flags and the TCP flag the segmentation treats specially.
const (
	vnetGSOECN = 0x80 // VIRTIO_NET_HDR_GSO_ECN, never asked for
	tcpCWR     = 0x80
)

// IPv6 extension headers a super-packet may carry before its TCP header:
// those that change neither the pseudo-header nor the segmentation.
const (
	ipv6HopByHop = 0
	ipv6DestOpts = 60
)

// splitter turns what one read of a device returned, a virtio_net_hdr and a
// packet that may be a TCP super-packet, into packets of at most mtu bytes.
// It keeps the segments that did not fit a batch for the next one. It is not
// safe for concurrent use.
type splitter struct {
	buf   []byte // the read buffer: a header and a full IPv6 packet
	mtu   int
	stats *counters

	pkt    []byte // what is left to hand out, in buf; nil when nothing is
	super  bool   // pkt is a super-packet to split
	tcpOff int    // where its TCP header starts
	hdrLen int    // its IPv6, extension and TCP headers
	mss    int
	off    int    // payload offset of the next segment
	seq    uint32 // sequence number of the super-packet
	flags  byte   // its TCP flags
	pseudo uint16 // checksum of its addresses and protocol
}

func newSplitter(mtu int, stats *counters) *splitter {
	return &splitter{buf: make([]byte, maxWrite), mtu: mtu, stats: stats}
}

// pending reports whether packets are left from the last read.
func (s *splitter) pending() bool { return s.pkt != nil }

// load takes b (in s.buf), a header and a packet, read from the device. A
// plain packet has its checksum completed if the kernel left it to the
// device; a super-packet is checked and waits to be split. What cannot be
// handed out as valid packets of at most the MTU is dropped and counted.
func (s *splitter) load(b []byte) {
	s.pkt = nil
	if len(b) < vnetHdrLen {
		s.stats.readDrops.Add(1)
		return
	}
	h := decodeVnetHdr(b)
	p := b[vnetHdrLen:]
	if h.gsoType == vnetGSONone {
		if h.flags&vnetFlagNeedsCsum != 0 && !completeChecksum(p, &h) {
			s.stats.readDrops.Add(1)
			return
		}
		s.pkt, s.super = p, false
		return
	}
	if !s.loadSuper(p, &h) {
		s.stats.readDrops.Add(1)
		return
	}
	s.stats.readSuper.Add(1)
}

// loadSuper checks super-packet p against its header h and prepares its
// split.
func (s *splitter) loadSuper(p []byte, h *vnetHdr) bool {
	// Only TCPv6 without ECN is ever advertised, and the kernel always
	// leaves the checksum of a super-packet to the device.
	if h.gsoType != vnetGSOTCPv6 || h.flags&vnetFlagNeedsCsum == 0 || h.csumOffset != 16 || h.gsoSize == 0 {
		return false
	}
	if len(p) < ipv6HdrLen || p[0]>>4 != 6 || int(binary.BigEndian.Uint16(p[4:6])) != len(p)-ipv6HdrLen {
		return false
	}
	tcpOff := int(h.csumStart)
	if !tcpAt(p, tcpOff) || len(p) < tcpOff+tcpHdrLen {
		return false
	}
	th := int(p[tcpOff+12]>>4) * 4
	hdrLen := tcpOff + th
	if th < tcpHdrLen || hdrLen > len(p) || hdrLen+int(h.gsoSize) > s.mtu {
		return false
	}
	s.pkt, s.super = p, true
	s.tcpOff, s.hdrLen, s.mss, s.off = tcpOff, hdrLen, int(h.gsoSize), 0
	s.seq = binary.BigEndian.Uint32(p[tcpOff+4:])
	s.flags = p[tcpOff+13]
	sum := checksum.Checksum(p[8:40], 0)
	s.pseudo = checksum.Combine(sum, 6)
	return true
}

// tcpAt reports whether the IPv6 packet p has its TCP header at off, behind
// nothing but hop-by-hop and destination options: a routing header would
// change the pseudo-header, and a fragment has no place in a super-packet.
func tcpAt(p []byte, off int) bool {
	nh, at := p[6], ipv6HdrLen
	for at < off {
		if nh != ipv6HopByHop && nh != ipv6DestOpts || at+2 > len(p) {
			return false
		}
		nh = p[at]
		at += (int(p[at+1]) + 1) * 8
	}
	return at == off && nh == 6
}

// completeChecksum completes the checksum of p that h says the kernel left
// to the device: the field holds the pseudo-header sum, add the rest.
func completeChecksum(p []byte, h *vnetHdr) bool {
	start, at := int(h.csumStart), int(h.csumStart)+int(h.csumOffset)
	if at+2 > len(p) {
		return false
	}
	sum := ^checksum.Checksum(p[start:], 0)
	if sum == 0 {
		sum = 0xffff // UDP's zero means none; TCP takes both
	}
	binary.BigEndian.PutUint16(p[at:], sum)
	return true
}

// next writes the next packet into dst and returns its length; 0 means the
// packet did not fit in dst and was dropped (and counted). It must be called
// only while pending.
func (s *splitter) next(dst []byte) int {
	if !s.super {
		p := s.pkt
		s.pkt = nil
		if len(p) > len(dst) {
			s.stats.readDrops.Add(1)
			return 0
		}
		return copy(dst, p)
	}
	p, off := s.pkt, s.off
	payload := len(p) - s.hdrLen
	n := min(s.mss, payload-off)
	first, last := off == 0, off+n == payload
	l := s.hdrLen + n
	s.off += n
	if last {
		s.pkt = nil
	}
	if l > len(dst) {
		s.stats.readDrops.Add(1)
		return 0
	}
	copy(dst, p[:s.hdrLen])
	copy(dst[s.hdrLen:l], p[s.hdrLen+off:])
	binary.BigEndian.PutUint16(dst[4:6], uint16(l-ipv6HdrLen))
	t := dst[s.tcpOff:l]
	binary.BigEndian.PutUint32(t[4:], s.seq+uint32(off))
	// As tcp_gso_segment: FIN and PSH on the last segment only, CWR on the
	// first only.
	f := s.flags
	if !last {
		f &^= tcpFIN | tcpPSH
	}
	if !first {
		f &^= tcpCWR
	}
	t[13] = f
	t[16], t[17] = 0, 0
	sum := checksum.Combine(s.pseudo, uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:], ^checksum.Checksum(t, sum))
	s.stats.readSegments.Add(1)
	return l
}
