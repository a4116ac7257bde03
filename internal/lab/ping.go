package lab

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Ping sends ICMP echo requests from inside the host's namespace to dst, one every
// interval (200 ms when zero), until a matching reply arrives or ctx ends, and returns
// the round-trip time of the first reply. It needs no ping binary: the raw socket is
// opened in the namespace by the test process itself.
func (h *Host) Ping(ctx context.Context, dst netip.Addr, interval time.Duration) (time.Duration, error) {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	network, reqType, replyType, proto := "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if dst.Is6() {
		network, reqType, replyType, proto = "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	dst = dst.Unmap()
	pc, err := h.ListenPacket(network, "")
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	id := rand.IntN(0xffff)
	sent := map[int]time.Time{}
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("lab: ping %v from %s: no reply to %d requests: %w", dst, h.Name, seq-1, ctx.Err())
		}
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("teredo-lab")}}
		wb, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err != nil {
			return 0, err
		}
		sent[seq&0xffff] = time.Now()
		if _, err := pc.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			// No route yet (for instance a tunnel still coming up): retry until ctx ends.
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
			continue
		}
		wait := time.Now().Add(interval)
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		for {
			_ = pc.SetReadDeadline(wait)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				break // interval over: send the next request
			}
			ip, ok := from.(*net.IPAddr)
			if !ok {
				continue
			}
			src, _ := netip.AddrFromSlice(ip.IP)
			if src.Unmap() != dst {
				continue
			}
			rm, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || rm.Type != replyType {
				continue
			}
			if echo, ok := rm.Body.(*icmp.Echo); ok && echo.ID == id {
				if at, ok := sent[echo.Seq]; ok {
					return time.Since(at), nil
				}
			}
		}
	}
}
