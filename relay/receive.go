package relay

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/internal/ratelimit"
	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// receive handles one UDP datagram from the Teredo side (RFC 4380 §5.4.2).
func (r *Relay) receive(b []byte, from netip.AddrPort, sc *scratch) {
	var p proto.Packet
	if err := p.Parse(b); err != nil {
		r.ctr.inc(RxDropMalformed)
		return
	}
	ip := p.IPv6
	if r.cfg.Other != nil && (p.HasAuth || p.HasOrigin || !r.inPrefix(ip[8:24]) || r.inPrefix(ip[24:40])) {
		r.cfg.Other(b, from)
		return
	}
	if p.HasAuth || p.HasOrigin {
		// Router advertisements and server-relayed bubbles are for clients.
		r.ctr.inc(RxDropIndication)
		return
	}
	src := [16]byte(ip[8:24])
	if !r.inPrefix(src[:]) {
		r.ctr.inc(RxDropSrcNotTeredo)
		return
	}
	bubble := proto.IsBubble(ip)
	hairpin := !bubble && r.cfg.Hairpin && r.inPrefix(ip[24:40])
	if !bubble && !hairpin && !r.serves(ip) {
		return // counted by serves
	}
	now := r.now()
	if !bubble && r.table.Accept(src, from, now) {
		r.forward(ip, hairpin, sc)
		return
	}

	// Slow path: a bubble, a new peer, or a known peer at a new mapping.
	if !r.cfg.IPv4Filter(proto.ServerBytes(src[:])) || !r.cfg.IPv4Filter(from.Addr()) {
		r.ctr.inc(RxDropFiltered)
		return
	}
	symmetric := false
	if proto.MappedBytes(src[:]) != from {
		// Miredo's tolerance for clients behind symmetric NATs: their
		// packets to us come from another mapping than the one their
		// server saw, but a bubble to our nonce-derived source proves that
		// the sender received our bubble to its Teredo address.
		if !bubble || proto.Dst(ip) != r.bubbleSource(&src) {
			r.ctr.inc(RxDropMappingMismatch)
			if r.cfg.Hairpin {
				r.challenge(&src, from, now, sc)
			}
			return
		}
		symmetric = true
	}
	if !r.allowSource(from, now) {
		return
	}
	create := !bubble && !r.cfg.DropUnknownPeers
	created := false
	pkts := sc.pkts[:0]
	ok := r.table.Update(src, false, now, func(pe *peer.Peer) {
		pe.Trust(from)
		pe.Disarm()
		pkts = pe.TakeQueue(pkts)
	})
	if !ok && create {
		created = r.table.Update(src, true, now, func(pe *peer.Peer) {
			pe.Trust(from)
			pkts = pe.TakeQueue(pkts)
		})
		ok = created
	}
	if !ok {
		r.ctr.inc(RxDropUnknownPeer)
		return
	}
	if created {
		r.ctr.inc(RxNewPeers)
	}
	if symmetric {
		r.ctr.inc(RxSymmetricNAT)
	}
	if len(pkts) > 0 {
		r.sendQueue(pkts, from)
		r.table.Release(pkts)
	}
	sc.pkts = pkts[:0]
	if bubble {
		r.ctr.inc(RxBubbles)
		return
	}
	r.forward(ip, hairpin, sc)
}

// serves reports whether the relay forwards a decapsulated packet with the
// destination of ip to the IPv6 side, counting the reason if not: never
// Teredo, link-local, multicast, loopback or unspecified destinations, and
// in host-specific mode only the host's own addresses.
func (r *Relay) serves(ip []byte) bool {
	if r.inPrefix(ip[24:40]) {
		r.ctr.inc(RxDropDstTeredo)
		return false
	}
	dst := proto.Dst(ip)
	if !dst.IsGlobalUnicast() || dst.Is4In6() {
		// IsGlobalUnicast excludes link-local, multicast, loopback and
		// unspecified addresses (and keeps unique local ones).
		r.ctr.inc(RxDropDstScope)
		return false
	}
	if r.cfg.HostSpecific && !r.cfg.IsLocal(dst) {
		r.ctr.inc(RxDropDstNotServed)
		return false
	}
	return true
}

// deliver writes a decapsulated packet to the IPv6 side, or, with a
// BatchWriter, keeps it for flushDelivered.
func (r *Relay) deliver(ip []byte, sc *scratch) {
	if sc.bw != nil {
		sc.out = append(sc.out, ip)
		return
	}
	if err := r.dev.WritePacket(ip); err != nil {
		r.ctr.inc(RxErrors)
		return
	}
	r.ctr.inc(RxForwarded)
}

// flushDelivered writes the packets deliver kept, counting each as
// forwarded or as an error.
func (r *Relay) flushDelivered(sc *scratch) {
	if len(sc.out) == 0 {
		return
	}
	n, err := sc.bw.WritePackets(sc.out)
	n = min(max(n, 0), len(sc.out))
	r.ctr.add(RxForwarded, uint64(n))
	if n < len(sc.out) {
		r.ctr.add(RxErrors, uint64(len(sc.out)-n))
		r.log.Debug("IPv6-side write failed", "packets", len(sc.out)-n, "err", err)
	}
	clear(sc.out) // the read buffers are reused; drop the references anyway
	sc.out = sc.out[:0]
}

// allowSource charges one packet from from's IPv4 address to the per-source
// rate limit, counting a refusal.
func (r *Relay) allowSource(from netip.AddrPort, now time.Time) bool {
	var k ratelimit.Key
	a4 := from.Addr().As4()
	copy(k[:4], a4[:])
	if !r.rxLimit.Allow(k, now) {
		r.ctr.inc(RxDropRateLimited)
		return false
	}
	return true
}
