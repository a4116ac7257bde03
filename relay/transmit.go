package relay

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/internal/ratelimit"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// transmit handles one IPv6 packet from the Device (RFC 4380 §5.4.1),
// sending it on its own.
func (r *Relay) transmit(pkt []byte, sc *scratch) {
	r.send(pkt, sc, TxForwarded)
}

// send routes pkt (see route) and, if it may go now, writes it to the peer,
// counting it as sent.
func (r *Relay) send(pkt []byte, sc *scratch, sent Counter) {
	pkt, to := r.route(pkt, sc)
	if !to.IsValid() {
		return // queued, bubbled or dropped, and counted, by route
	}
	if err := r.conn.WriteTo(pkt, to); err != nil {
		r.ctr.inc(TxErrors)
		return
	}
	r.ctr.inc(sent)
}

// route applies the transmit rules to one IPv6 packet from the Device. If
// the packet may go to a trusted peer now, it returns the packet trimmed to
// its IPv6 length and the peer's mapping, for the caller to send and count
// as forwarded; otherwise it handles the packet (queue, bubbles, ICMPv6,
// drop) and returns an invalid destination.
func (r *Relay) route(pkt []byte, sc *scratch) ([]byte, netip.AddrPort) {
	if len(pkt) < proto.IPv6HeaderLen || pkt[0]>>4 != 6 ||
		proto.IPv6HeaderLen+int(binary.BigEndian.Uint16(pkt[4:6])) > len(pkt) {
		r.ctr.inc(TxDropMalformed)
		return nil, netip.AddrPort{}
	}
	pkt = pkt[:proto.IPv6HeaderLen+int(binary.BigEndian.Uint16(pkt[4:6]))]
	dst := [16]byte(pkt[24:40])
	if dst[0] == 0xff {
		r.ctr.inc(TxDropMulticast)
		return nil, netip.AddrPort{}
	}
	if !r.inPrefix(dst[:]) {
		// Only the Teredo prefix should be routed to us: a routing mistake.
		r.ctr.inc(TxDropNotTeredo)
		r.unreachable(pkt, sc)
		return nil, netip.AddrPort{}
	}
	mapped := proto.MappedBytes(dst[:])
	if !r.cfg.IPv4Filter(proto.ServerBytes(dst[:])) || !r.cfg.IPv4Filter(mapped.Addr()) {
		r.ctr.inc(TxDropFiltered) // RFC 4380 §5.4.1: silently discarded
		return nil, netip.AddrPort{}
	}
	now := r.now()
	if to, ok := r.table.Route(dst, now); ok {
		return pkt, to
	}
	return pkt, r.transmitSlow(pkt, &dst, mapped, now, sc)
}

// transmitSlow queues a packet for a peer that is not trusted and valid and
// starts the bubble series if none is running. If the peer turned out to be
// trusted meanwhile, it returns its mapping for the caller to send the
// packet to.
func (r *Relay) transmitSlow(pkt []byte, dst *[16]byte, mapped netip.AddrPort, now time.Time, sc *scratch) netip.AddrPort {
	var (
		direct  netip.AddrPort // the peer became trusted meanwhile
		queued  bool
		bubble  bool
		mapping netip.AddrPort
	)
	f := func(p *peer.Peer) {
		if p.Trusted && p.Valid() {
			direct = p.Mapping
			p.Touch(false)
			return
		}
		if !p.Mapping.IsValid() {
			p.Mapping = mapped
		}
		queued = p.Enqueue(false, netip.AddrPort{}, pkt)
		if p.Bubbles() == 0 && p.CountBubble() {
			bubble = true
			mapping = p.Mapping
			p.Arm(r.cfg.Bubble.Interval)
		}
	}
	if !r.table.Update(*dst, false, now, f) {
		var src ratelimit.Key
		copy(src[:8], pkt[8:16]) // per /64: one host, or one site's hosts
		if !r.txLimit.Allow(src, now) {
			r.ctr.inc(TxDropRateLimited)
			return netip.AddrPort{}
		}
		if !r.table.Update(*dst, true, now, f) {
			return netip.AddrPort{} // table closed
		}
	}
	switch {
	case direct.IsValid():
		return direct
	case queued:
		r.ctr.inc(TxQueued)
	default:
		r.ctr.inc(TxDropQueueFull)
	}
	if bubble {
		sc.buf = r.sendBubbles(sc.buf[:0], dst, mapping)
	}
	return netip.AddrPort{}
}

// sendBubbles sends a bubble to the peer at dst through its server (an
// indirect bubble, RFC 4380 §5.4.1) and, if configured, directly to its
// mapping. b is scratch space, returned for reuse.
func (r *Relay) sendBubbles(b []byte, dst *[16]byte, mapping netip.AddrPort) []byte {
	src := r.bubbleSource(dst)
	b = proto.AppendBubble(b[:0], src, netip.AddrFrom16(*dst), 0)
	server := netip.AddrPortFrom(proto.ServerBytes(dst[:]), proto.Port)
	if err := r.conn.WriteTo(b, server); err != nil {
		r.ctr.inc(TxErrors)
	} else {
		r.ctr.inc(TxBubblesIndirect)
	}
	if r.cfg.DirectBubbles && mapping.IsValid() {
		if err := r.conn.WriteTo(b, mapping); err != nil {
			r.ctr.inc(TxErrors)
		} else {
			r.ctr.inc(TxBubblesDirect)
		}
	}
	return b
}

// onTimer runs the bubble schedule of one peer: another bubble every
// Bubble.Interval until Bubble.Max are spent, then one more interval of
// waiting, then the entry goes and its queue is answered with ICMPv6
// "address unreachable".
func (r *Relay) onTimer(addr netip.Addr) {
	a := addr.As16()
	now := r.now()
	var (
		pkts    []peer.Packet
		mapping netip.AddrPort
		flush   bool
		bubble  bool
		giveUp  bool
	)
	r.table.Update(a, false, now, func(p *peer.Peer) {
		switch {
		case p.Trusted && p.Valid():
			// Trusted by a receive that took the fast path.
			flush = true
			mapping = p.Mapping
			pkts = p.TakeQueue(pkts)
		case p.CountBubble():
			bubble = true
			mapping = p.Mapping
			p.Arm(r.cfg.Bubble.Interval)
		case p.BubblesExhausted():
			giveUp = true
			p.Unreachable = true
			pkts = p.TakeQueue(pkts)
		default:
			p.Arm(r.cfg.Bubble.Interval)
		}
	})
	bp, _ := r.timerPool.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	sc := scratch{buf: *bp}
	switch {
	case flush:
		r.sendQueue(pkts, mapping)
	case bubble:
		sc.buf = r.sendBubbles(sc.buf, &a, mapping)
	case giveUp:
		r.table.Delete(a)
		r.ctr.inc(PeersUnreachable)
		r.ctr.add(TxDropUnreachable, uint64(len(pkts)))
		r.log.Debug("teredo peer unreachable", "peer", addr, "queued", len(pkts))
		for i := range pkts {
			r.unreachable(pkts[i].Data, &sc)
		}
	}
	r.table.Release(pkts)
	*bp = sc.buf[:0]
	r.timerPool.Put(bp)
}

// sendQueue sends packets taken from a peer's queue to its mapping. The
// caller releases them.
func (r *Relay) sendQueue(pkts []peer.Packet, to netip.AddrPort) {
	for i := range pkts {
		if pkts[i].Inbound {
			continue
		}
		if err := r.conn.WriteTo(pkts[i].Data, to); err != nil {
			r.ctr.inc(TxErrors)
			continue
		}
		r.ctr.inc(TxFlushed)
	}
}

// unreachable answers the packet pkt from the IPv6 side with an ICMPv6
// "address unreachable", at most one per ICMPInterval (RFC 4443 §2.4(f)).
func (r *Relay) unreachable(pkt []byte, sc *scratch) {
	if !proto.MayReplyWithError(pkt) {
		return
	}
	if !r.icmpLimit.Allow(r.now()) {
		r.ctr.inc(ICMPRateLimited)
		return
	}
	src := r.cfg.ICMPSource
	if !src.IsValid() {
		src = proto.Dst(pkt)
	}
	sc.buf = proto.AppendICMPv6Error(sc.buf[:0], src, proto.ICMPDestUnreachable, proto.UnreachAddress, 0, pkt)
	if err := r.dev.WritePacket(sc.buf); err != nil {
		r.ctr.inc(RxErrors)
		return
	}
	r.ctr.inc(ICMPSent)
}
