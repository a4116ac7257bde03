package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// Discovery bubbles go out every U(200, 300) s (RFC 4380 §5.2.8).
const (
	discoveryMin = 200 * time.Second
	discoveryMax = 300 * time.Second
)

func (c *Client) onDiscoveryTimer() {
	c.mu.Lock()
	if l := c.up.Load(); l != nil && c.q.state == StateQualified {
		c.ctr.bubbles.Add(1)
		c.queue(proto.AppendBubble(nil, l.ip, proto.AllNodes, 1), netip.AddrPortFrom(proto.DiscoveryGroup, proto.Port))
	}
	if c.q.state != StateClosed {
		c.schedule(&c.disc, c.randomDuration(discoveryMin, discoveryMax), c.onDiscoveryTimer)
	}
	c.unlock()
}

// isPrivateIPv4 is Miredo 1.3's test for a local peer's source: 10/8,
// 172.16/12, 192.168/16 or 169.254/16.
func isPrivateIPv4(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	return b[0] == 10 || b[0] == 172 && b[1]&0xf0 == 16 || b[0] == 192 && b[1] == 168 || b[0] == 169 && b[1] == 254
}

// ReceiveDiscovery processes a datagram received on the local discovery
// socket (224.0.0.253:3544). Only discovery bubbles are accepted: to ff02::1,
// from a Teredo address with the same mapped IPv4 as ours, sent from a
// private IPv4 (RFC 4380 §5.2.8, as Miredo 1.3 narrows it). The sender
// becomes an untrusted local peer, valid for 600 s, and gets a unicast
// bubble; its answer makes it trusted (§5.2.3 case 5). A sender already
// trusted keeps its proven mapping and still gets the bubble, which is what
// makes us trusted on its side.
func (c *Client) ReceiveDiscovery(b []byte, from netip.AddrPort) {
	if !c.cfg.LocalDiscovery {
		c.ctr.drop(dropDiscovery)
		return
	}
	var pkt proto.Packet
	if err := pkt.Parse(b); err != nil {
		c.ctr.dropParse(err)
		return
	}
	l := c.up.Load()
	if l == nil {
		c.ctr.drop(dropNotQualified)
		return
	}
	ip := pkt.IPv6
	src := [16]byte(ip[8:24])
	if !proto.IsBubble(ip) || proto.Dst(ip) != proto.AllNodes || !proto.IsTeredoBytes(src[:]) ||
		src == l.addr || !isPrivateIPv4(from.Addr()) || from.Port() == 0 ||
		proto.MappedBytes(src[:]).Addr() != l.mapped.Addr() {
		c.ctr.drop(dropDiscovery)
		return
	}
	now := c.clk.Now()
	reply := false
	c.peers.Update(src, true, now, func(p *peer.Peer) {
		if p.Trusted && p.Valid() {
			// The sender sends discovery bubbles with what it queues for
			// an untrusted local peer: it does not trust us yet, and our
			// unicast bubble is what makes it. The proven mapping stays.
			reply = p.CountBubble()
			return
		}
		p.Trusted = false
		p.Local = true
		p.Mapping = from
		p.Touch(true)
		reply = p.CountBubble()
	})
	if reply {
		c.ctr.bubbles.Add(1)
		c.write(proto.AppendBubble(nil, l.ip, netip.AddrFrom16(src), 0), from)
	}
}
