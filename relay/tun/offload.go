package tun

import (
	"encoding/binary"
	"errors"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// A device opened with IFF_VNET_HDR exchanges every packet behind a
// virtio_net_hdr (include/uapi/linux/virtio_net.h, without num_buffers). On
// writes it lets the kernel take one TCP super-segment of up to 64 KiB and
// split it itself (GSO), so that the whole forwarding path runs once per
// super-segment instead of once per 1280-byte packet. The legacy header is in
// the host's byte order.
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetGSONone       = 0 // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv6      = 4 // VIRTIO_NET_HDR_GSO_TCPV6
)

// Limits of a coalesced write.
const (
	ipv6HdrLen     = 40
	tcpHdrLen      = 20
	maxIPv6Payload = 65535
	// MaxSegments is the most TCP segments WritePackets merges into one
	// write.
	MaxSegments = 64
	// maxRuns is how many flows can be coalesced at once in one batch.
	maxRuns = 8
	// maxWrite is the largest write: a header and a full IPv6 packet.
	maxWrite = vnetHdrLen + ipv6HdrLen + maxIPv6Payload
)

// errTooBig is the error for a packet longer than any IPv6 packet.
var errTooBig = errors.New("packet too big")

// vnetHdr is a virtio_net_hdr.
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *vnetHdr) encode(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

func decodeVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// flowKey identifies a TCP flow in one direction.
type flowKey struct {
	addrs [32]byte // source and destination
	ports [4]byte  // source and destination
}

// tcpRun is a sequence of segments of one flow, waiting to be written as one
// super-segment. Its segments are indices into the packets of the batch
// being coalesced.
type tcpRun struct {
	key     flowKey
	segs    [MaxSegments]int32
	n       int
	hdrLen  int    // IPv6 and TCP header of the first segment
	gsoSize int    // payload length of the first segment
	payload int    // payload bytes of all segments
	nextSeq uint32 // sequence number the next segment must have
	psh     bool   // some segment had PSH
}

// segment is what the coalescer learned about one packet.
type segment struct {
	keyed    bool // an IPv6 packet with a TCP header right after the fixed header
	joinable bool // also a data segment that may join a run
	key      flowKey
	hdrLen   int // IPv6 and TCP headers
	seq      uint32
	flags    uint8
}

// writeFunc writes b, a virtio_net_hdr followed by an IPv6 packet, to the
// device; segs is the number of packets it carries.
type writeFunc func(b []byte, segs int) error

// coalescer merges consecutive TCP segments of a flow, among the packets of
// one batch, into GSO super-segments, as the kernel's GRO would have. It is
// not safe for concurrent use.
type coalescer struct {
	runs  [maxRuns]tcpRun
	nruns int
	buf   []byte // maxWrite bytes: the write being built
	pkts  [][]byte
	write writeFunc

	written  int   // packets of this call written
	firstErr error // first write error of this call

	stats *counters
}

// counters are the numbers behind Stats.
type counters struct {
	packets, writes, coalesced, badChecksum, writeErrors, readDrops, gsoFallbacks atomic.Uint64
	readSuper, readSegments                                                       atomic.Uint64
}

func (c *counters) load() Stats {
	return Stats{
		Packets:      c.packets.Load(),
		Writes:       c.writes.Load(),
		Coalesced:    c.coalesced.Load(),
		BadChecksum:  c.badChecksum.Load(),
		WriteErrors:  c.writeErrors.Load(),
		ReadDrops:    c.readDrops.Load(),
		GSOFallbacks: c.gsoFallbacks.Load(),

		ReadSuper:    c.readSuper.Load(),
		ReadSegments: c.readSegments.Load(),
	}
}

func newCoalescer(write writeFunc, stats *counters) *coalescer {
	return &coalescer{buf: make([]byte, maxWrite), write: write, stats: stats}
}

// writeOne writes the single packet p.
func (c *coalescer) writeOne(p []byte) error {
	c.written, c.firstErr = 0, nil
	c.writePlain(p)
	return c.firstErr
}

// coalesce writes pkts, merging what it can; the order of the packets of each
// TCP flow is kept. It returns how many packets were written and the first
// write error: a failed write loses its own packets only. It keeps no
// reference to pkts.
func (c *coalescer) coalesce(pkts [][]byte) (int, error) {
	c.pkts, c.written, c.firstErr = pkts, 0, nil
	for i, p := range pkts {
		s := c.inspect(p)
		if !s.keyed {
			if len(p) >= ipv6HdrLen && p[0]>>4 == 6 && !knownTransport(p[6]) {
				// An extension header may hide a TCP header of an open
				// run: keep the order of everything.
				c.flushAll()
			}
			c.writePlain(p)
			continue
		}
		r := c.find(&s.key)
		if !s.joinable {
			if r != nil {
				c.flush(r)
			}
			c.writePlain(p)
			continue
		}
		if r != nil && !c.join(r, p, &s, i) {
			c.flush(r)
			r = nil
		}
		if r == nil {
			r = c.open(p, &s, i)
		}
		// Unlike the kernel's GRO, a PSH does not end a run: GRO flushes
		// on PSH so as not to hold data back for later packets, but a run
		// is written when its batch ends anyway. gVisor (our client) sets
		// PSH on every segment it splits from one large send.
		if r.n == MaxSegments || len(p)-s.hdrLen < r.gsoSize {
			c.flush(r) // nothing may follow
		}
	}
	c.flushAll()
	c.pkts = nil
	return c.written, c.firstErr
}

// knownTransport reports whether an IPv6 next header value is an upper
// layer other than TCP, so that the packet is not part of any TCP flow.
func knownTransport(nh byte) bool {
	return nh == 17 || nh == 58 || nh == 59 // UDP, ICMPv6, no next header
}

// inspect parses p as far as coalescing needs.
func (c *coalescer) inspect(p []byte) segment {
	var s segment
	if len(p) < ipv6HdrLen+tcpHdrLen || p[0]>>4 != 6 || p[6] != 6 {
		return s
	}
	s.keyed = true
	copy(s.key.addrs[:], p[8:40])
	copy(s.key.ports[:], p[40:44])
	t := p[ipv6HdrLen:]
	th := int(t[12]>>4) * 4
	s.flags = t[13]
	s.seq = binary.BigEndian.Uint32(t[4:])
	s.hdrLen = ipv6HdrLen + th
	if th < tcpHdrLen || len(p) <= s.hdrLen ||
		int(binary.BigEndian.Uint16(p[4:6])) != len(p)-ipv6HdrLen ||
		t[12]&0x0f != 0 || (s.flags != tcpACK && s.flags != tcpACK|tcpPSH) {
		return s
	}
	if tcpChecksum(p, len(p)-ipv6HdrLen) != 0xffff {
		c.stats.badChecksum.Add(1)
		return s
	}
	s.joinable = true
	return s
}

// tcpChecksum is the one's complement sum of the pseudo-header with upper
// layer length l, and of the TCP segment in p, if any (p[40:]).
func tcpChecksum(p []byte, l int) uint16 {
	sum := checksum.Checksum(p[8:40], 0)
	sum = checksum.Combine(sum, uint16(l>>16))
	sum = checksum.Combine(sum, uint16(l))
	sum = checksum.Combine(sum, 6)
	return checksum.Checksum(p[ipv6HdrLen:], sum)
}

func (c *coalescer) find(k *flowKey) *tcpRun {
	for i := range c.nruns {
		if c.runs[i].key == *k {
			return &c.runs[i]
		}
	}
	return nil
}

// open starts a run with packet i, making room by flushing the oldest run if
// the table is full.
func (c *coalescer) open(p []byte, s *segment, i int) *tcpRun {
	if c.nruns == maxRuns {
		oldest := 0
		for j := 1; j < c.nruns; j++ {
			if c.runs[j].segs[0] < c.runs[oldest].segs[0] {
				oldest = j
			}
		}
		c.flush(&c.runs[oldest])
	}
	r := &c.runs[c.nruns]
	c.nruns++
	r.key = s.key
	r.segs[0] = int32(i)
	r.n = 1
	r.hdrLen = s.hdrLen
	r.gsoSize = len(p) - s.hdrLen
	r.payload = r.gsoSize
	r.nextSeq = s.seq + uint32(r.gsoSize)
	r.psh = s.flags&tcpPSH != 0
	return r
}

// join appends packet i to r if it continues r exactly as the first segment
// would have continued: the next sequence number, the same IPv6 header
// fields but the length, the same TCP header but the sequence number, PSH
// and the checksum, and a payload no longer than the first's.
func (c *coalescer) join(r *tcpRun, p []byte, s *segment, i int) bool {
	first := c.pkts[r.segs[0]]
	payload := len(p) - s.hdrLen
	if s.seq != r.nextSeq || s.hdrLen != r.hdrLen || payload > r.gsoSize ||
		r.n == MaxSegments || r.hdrLen-ipv6HdrLen+r.payload+payload > maxIPv6Payload {
		return false
	}
	t, ft := p[ipv6HdrLen:s.hdrLen], first[ipv6HdrLen:r.hdrLen]
	if [4]byte(p[0:4]) != [4]byte(first[0:4]) || p[7] != first[7] || // class, flow label, hop limit
		[4]byte(t[8:12]) != [4]byte(ft[8:12]) || // acknowledgment
		[2]byte(t[14:16]) != [2]byte(ft[14:16]) || // window
		[2]byte(t[18:20]) != [2]byte(ft[18:20]) || // urgent pointer
		string(t[20:]) != string(ft[20:]) { // options
		return false
	}
	r.segs[r.n] = int32(i)
	r.n++
	r.payload += payload
	r.nextSeq += uint32(payload)
	r.psh = r.psh || s.flags&tcpPSH != 0
	return true
}

// flush writes run r and removes it from the table.
func (c *coalescer) flush(r *tcpRun) {
	if r.n == 1 {
		c.writePlain(c.pkts[r.segs[0]])
	} else {
		c.writeRun(r)
	}
	last := &c.runs[c.nruns-1]
	if r != last {
		*r = *last
	}
	c.nruns--
}

func (c *coalescer) flushAll() {
	for c.nruns > 0 {
		c.flush(&c.runs[0])
	}
}

// writeRun builds r's super-segment in c.buf and writes it.
func (c *coalescer) writeRun(r *tcpRun) {
	first := c.pkts[r.segs[0]]
	b := c.buf[:vnetHdrLen+r.hdrLen+r.payload]
	h := vnetHdr{
		flags:      vnetFlagNeedsCsum,
		gsoType:    vnetGSOTCPv6,
		hdrLen:     uint16(r.hdrLen),
		gsoSize:    uint16(r.gsoSize),
		csumStart:  ipv6HdrLen,
		csumOffset: 16,
	}
	h.encode(b)
	pkt := b[vnetHdrLen:]
	copy(pkt, first[:r.hdrLen])
	off := r.hdrLen
	for _, i := range r.segs[:r.n] {
		off += copy(pkt[off:], c.pkts[i][r.hdrLen:])
	}
	l := len(pkt) - ipv6HdrLen
	binary.BigEndian.PutUint16(pkt[4:6], uint16(l))
	t := pkt[ipv6HdrLen:]
	// The kernel's segmentation leaves PSH on the last segment only.
	t[13] = first[ipv6HdrLen+13] &^ tcpPSH
	if r.psh {
		t[13] |= tcpPSH
	}
	// The kernel adds the sum of the TCP header and payload to the
	// pseudo-header sum it finds in the checksum field (NEEDS_CSUM).
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[16:], tcpChecksum(pkt[:ipv6HdrLen], l))
	c.stats.writes.Add(1)
	if err := c.write(b, r.n); err != nil {
		// The kernel took none of it (tun_get_user fails before it hands
		// the packet on): try the segments one by one.
		c.stats.gsoFallbacks.Add(1)
		for _, i := range r.segs[:r.n] {
			c.writePlain(c.pkts[i])
		}
		return
	}
	c.stats.packets.Add(uint64(r.n))
	c.stats.coalesced.Add(uint64(r.n))
	c.written += r.n
}

// writePlain writes p behind a header that asks for nothing.
func (c *coalescer) writePlain(p []byte) {
	if len(p) > maxWrite-vnetHdrLen {
		c.fail(errTooBig)
		return
	}
	b := c.buf[:vnetHdrLen+len(p)]
	clear(b[:vnetHdrLen])
	copy(b[vnetHdrLen:], p)
	c.emit(b, 1)
}

func (c *coalescer) emit(b []byte, segs int) {
	c.stats.writes.Add(1)
	if err := c.write(b, segs); err != nil {
		c.fail(err)
		return
	}
	c.stats.packets.Add(uint64(segs))
	c.written += segs
}

func (c *coalescer) fail(err error) {
	c.stats.writeErrors.Add(1)
	if c.firstErr == nil {
		c.firstErr = err
	}
}
