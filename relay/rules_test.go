package relay

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

func wantICMPUnreachable(t *testing.T, got []byte, invoking []byte) {
	t.Helper()
	typ, code, body, ok := proto.ICMPv6(got)
	if !ok || typ != proto.ICMPDestUnreachable || code != proto.UnreachAddress {
		t.Fatalf("want ICMPv6 address unreachable, got type %d code %d ok %v", typ, code, ok)
	}
	if proto.Dst(got) != proto.Src(invoking) {
		t.Errorf("ICMPv6 error to %v, want %v", proto.Dst(got), proto.Src(invoking))
	}
	if !proto.ValidICMPv6Checksum(got) {
		t.Error("bad ICMPv6 checksum")
	}
	if !bytes.Equal(body[4:], invoking) {
		t.Error("ICMPv6 error does not quote the invoking packet")
	}
}

func TestTransmitRules(t *testing.T) {
	peerAddr := teredoAddr(serverIP, clientMap)
	tests := []struct {
		name      string
		pkt       []byte
		cfg       func(*Config)
		counter   Counter
		icmp      bool // an ICMPv6 error goes to the IPv6 side
		bubble    bool // an indirect bubble goes to the server
		direct    bool // a direct bubble goes to the client
		toClient  bool // the packet itself goes to the client
		trustPeer bool
	}{
		{name: "malformed short", pkt: []byte{0x60, 0, 0}, counter: TxDropMalformed},
		{name: "malformed version", pkt: append([]byte{0x40}, udpPacket(native, peerAddr, nil)[1:]...), counter: TxDropMalformed},
		{name: "malformed length", pkt: udpPacket(native, peerAddr, []byte("x"))[:40], counter: TxDropMalformed},
		{name: "multicast", pkt: udpPacket(native, proto.AllNodes, nil), counter: TxDropMulticast},
		{name: "not teredo", pkt: udpPacket(native, otherNat, nil), counter: TxDropNotTeredo, icmp: true},
		{name: "server not global", pkt: udpPacket(native, teredoAddr(netip.MustParseAddr("10.0.0.1"), clientMap), nil), counter: TxDropFiltered},
		{name: "mapping not global", pkt: udpPacket(native, teredoAddr(serverIP, netip.MustParseAddrPort("192.168.1.2:5")), nil), counter: TxDropFiltered},
		{name: "filter off", pkt: udpPacket(native, teredoAddr(serverIP, clientMap), nil), cfg: func(c *Config) { c.IPv4Filter = proto.AnyIPv4 }, counter: TxQueued, bubble: true},
		{name: "unknown peer", pkt: udpPacket(native, peerAddr, []byte("hi")), counter: TxQueued, bubble: true},
		{name: "unknown peer direct bubbles", pkt: udpPacket(native, peerAddr, []byte("hi")), cfg: func(c *Config) { c.DirectBubbles = true }, counter: TxQueued, bubble: true, direct: true},
		{name: "trusted peer", pkt: udpPacket(native, peerAddr, []byte("hi")), trustPeer: true, counter: TxForwarded, toClient: true},
		{name: "trusted peer padded", pkt: append(udpPacket(native, peerAddr, []byte("hi")), 0, 0), trustPeer: true, counter: TxForwarded, toClient: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			if tt.trustPeer {
				h.r.table.Update(peerAddr.As16(), true, h.clk.Now(), func(p *peer.Peer) { p.Trust(clientMap) })
			}
			h.transmit(tt.pkt)
			if got := h.r.Counter(tt.counter); got != 1 {
				t.Errorf("%v = %d, want 1", tt.counter, got)
			}
			w := h.dev.take()
			if tt.icmp != (len(w) == 1) {
				t.Fatalf("ICMPv6 errors written: %d, want %v", len(w), tt.icmp)
			}
			if tt.icmp {
				wantICMPUnreachable(t, w[0], tt.pkt)
			}
			sv := recv(t, h.server)
			if tt.bubble != (len(sv) == 1) {
				t.Fatalf("datagrams at the server: %d, want bubble %v", len(sv), tt.bubble)
			}
			if tt.bubble {
				b := sv[0].Buffers[0]
				if !proto.IsBubble(b) || proto.Dst(b) != proto.Dst(tt.pkt) || !proto.Src(b).IsLinkLocalUnicast() || sv[0].Addr != relayAddr {
					t.Errorf("bad indirect bubble %x from %v", b, sv[0].Addr)
				}
				if h.r.Counter(TxBubblesIndirect) != 1 {
					t.Error("indirect bubble not counted")
				}
			}
			cl := recv(t, h.client)
			want := 0
			if tt.direct || tt.toClient {
				want = 1
			}
			if len(cl) != want {
				t.Fatalf("datagrams at the client: %d, want %d", len(cl), want)
			}
			if tt.toClient && !bytes.Equal(cl[0].Buffers[0], tt.pkt[:40+8+2]) {
				t.Errorf("client got %x", cl[0].Buffers[0])
			}
			if tt.direct && !proto.IsBubble(cl[0].Buffers[0]) {
				t.Errorf("direct bubble is %x", cl[0].Buffers[0])
			}
		})
	}
}

// TestBubbleSchedule follows an unanswered peer: a bubble now and every 2 s
// up to 3 repeats, then after another 2 s the entry goes, the queue is
// answered with ICMPv6 address unreachable, at most one per 100 ms.
func TestBubbleSchedule(t *testing.T) {
	h := newHarness(t, nil)
	peerAddr := teredoAddr(serverIP, clientMap)
	p1 := udpPacket(native, peerAddr, []byte("one"))
	p2 := udpPacket(native2, peerAddr, []byte("two"))
	h.transmit(p1)
	h.transmit(p2) // queued, no second bubble
	if n := len(recv(t, h.server)); n != 1 {
		t.Fatalf("bubbles at t=0: %d, want 1", n)
	}
	for i := 1; i <= 3; i++ {
		h.clk.Advance(time.Second)
		if n := len(recv(t, h.server)); n != 0 {
			t.Fatalf("bubble %d came early", i)
		}
		h.clk.Advance(time.Second)
		if n := len(recv(t, h.server)); n != 1 {
			t.Fatalf("repeat %d: %d bubbles, want 1", i, n)
		}
	}
	if got := h.r.Counter(TxBubblesIndirect); got != 4 {
		t.Fatalf("indirect bubbles = %d, want 4", got)
	}
	if w := h.dev.take(); len(w) != 0 {
		t.Fatalf("ICMPv6 before giving up: %d", len(w))
	}
	h.clk.Advance(2 * time.Second)
	if n := len(recv(t, h.server)); n != 0 {
		t.Fatalf("a fifth bubble was sent")
	}
	w := h.dev.take()
	if len(w) != 1 {
		t.Fatalf("ICMPv6 errors: %d, want 1 (rate limit 1 per 100 ms)", len(w))
	}
	wantICMPUnreachable(t, w[0], p1)
	if h.r.Counter(PeersUnreachable) != 1 || h.r.Counter(TxDropUnreachable) != 2 || h.r.Counter(ICMPRateLimited) != 1 {
		t.Errorf("counters: unreachable %d, dropped %d, icmp limited %d",
			h.r.Counter(PeersUnreachable), h.r.Counter(TxDropUnreachable), h.r.Counter(ICMPRateLimited))
	}
	if h.r.table.Len() != 0 {
		t.Errorf("entry kept after giving up")
	}
	// A later packet starts a new series.
	h.clk.Advance(time.Minute)
	h.transmit(p1)
	if n := len(recv(t, h.server)); n != 1 {
		t.Fatalf("new series: %d bubbles, want 1", n)
	}
}

func TestICMPRateLimit(t *testing.T) {
	h := newHarness(t, nil)
	pkt := udpPacket(native, otherNat, nil) // not Teredo: address unreachable
	for range 25 {
		h.transmit(pkt)
	}
	if n := len(h.dev.take()); n != 1 {
		t.Fatalf("burst: %d errors, want 1", n)
	}
	total := 1
	for range 20 { // one second in 50 ms steps
		h.clk.Advance(50 * time.Millisecond)
		for range 5 {
			h.transmit(pkt)
		}
		total += len(h.dev.take())
	}
	if total < 10 || total > 11 {
		t.Fatalf("%d errors in 1 s, want 10 or 11", total)
	}
	if h.r.Counter(ICMPSent) != uint64(total) || h.r.Counter(ICMPRateLimited) != uint64(125-total) {
		t.Errorf("sent %d, limited %d", h.r.Counter(ICMPSent), h.r.Counter(ICMPRateLimited))
	}
	// Never an error about an error.
	h.clk.Advance(time.Second)
	icmp := proto.AppendICMPv6Error(nil, native2, proto.ICMPDestUnreachable, 0, 0, udpPacket(otherNat, native, nil))
	h.transmit(icmp)
	if n := len(h.dev.take()); n != 0 {
		t.Fatal("ICMPv6 error answered with an error")
	}
}
