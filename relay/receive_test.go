package relay

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// bubbleAnswer is what a client sends back after an indirect bubble: a
// bubble from its Teredo address to the relay bubble's source.
func bubbleAnswer(from netip.Addr, indirect []byte) []byte {
	return proto.AppendBubble(nil, from, proto.Src(indirect), 0)
}

func TestReceiveRules(t *testing.T) {
	peerAddr := teredoAddr(serverIP, clientMap)
	hostLocal := netip.MustParseAddr("2001:db8::53")
	withOrigin := func(ip []byte) []byte {
		p := proto.Packet{HasOrigin: true, Origin: clientMap, IPv6: ip}
		return p.Append(nil)
	}
	tests := []struct {
		name    string
		pkt     []byte
		from    netip.AddrPort
		cfg     func(*Config)
		known   bool // a bubble series is pending for peerAddr
		counter Counter
		deliver bool
	}{
		{name: "malformed", pkt: []byte{1, 2, 3}, from: clientMap, counter: RxDropMalformed},
		{name: "origin indication", pkt: withOrigin(udpPacket(peerAddr, native, nil)), from: clientMap, counter: RxDropIndication},
		{name: "src not teredo", pkt: udpPacket(native2, native, nil), from: clientMap, counter: RxDropSrcNotTeredo},
		{name: "dst teredo", pkt: udpPacket(peerAddr, teredoAddr(serverIP, clientMap2), nil), from: clientMap, counter: RxDropDstTeredo},
		{name: "dst link-local", pkt: udpPacket(peerAddr, netip.MustParseAddr("fe80::1"), nil), from: clientMap, counter: RxDropDstScope},
		{name: "dst multicast", pkt: udpPacket(peerAddr, proto.AllNodes, nil), from: clientMap, counter: RxDropDstScope},
		{name: "dst loopback", pkt: udpPacket(peerAddr, netip.IPv6Loopback(), nil), from: clientMap, counter: RxDropDstScope},
		{name: "dst v4-mapped", pkt: udpPacket(peerAddr, netip.MustParseAddr("::ffff:192.0.2.1"), nil), from: clientMap, counter: RxDropDstScope},
		{name: "mapping mismatch", pkt: udpPacket(peerAddr, native, nil), from: clientMap2, counter: RxDropMappingMismatch},
		{name: "mapping mismatch known", pkt: udpPacket(peerAddr, native, nil), from: clientMap2, known: true, counter: RxDropMappingMismatch},
		{name: "server not global", pkt: udpPacket(teredoAddr(netip.MustParseAddr("127.0.0.1"), clientMap), native, nil), from: clientMap, counter: RxDropFiltered},
		{name: "source not global", pkt: udpPacket(teredoAddr(serverIP, netip.MustParseAddrPort("10.1.1.1:9")), native, nil), from: netip.MustParseAddrPort("10.1.1.1:9"), counter: RxDropFiltered},
		{name: "filter off", pkt: udpPacket(teredoAddr(netip.MustParseAddr("127.0.0.1"), clientMap), native, nil), from: clientMap, cfg: func(c *Config) { c.IPv4Filter = proto.AnyIPv4 }, counter: RxNewPeers, deliver: true},
		{name: "unknown peer accepted", pkt: udpPacket(peerAddr, native, []byte("x")), from: clientMap, counter: RxNewPeers, deliver: true},
		{name: "unknown peer dropped like Miredo", pkt: udpPacket(peerAddr, native, nil), from: clientMap, cfg: func(c *Config) { c.DropUnknownPeers = true }, counter: RxDropUnknownPeer},
		{name: "known peer", pkt: udpPacket(peerAddr, native, nil), from: clientMap, known: true, counter: RxForwarded, deliver: true},
		{name: "unknown peer bubble", pkt: proto.AppendBubble(nil, peerAddr, native, 0), from: clientMap, counter: RxDropUnknownPeer},
		{name: "known peer bubble", pkt: proto.AppendBubble(nil, peerAddr, native, 0), from: clientMap, known: true, counter: RxBubbles},
		{name: "host-specific own address", pkt: udpPacket(peerAddr, hostLocal, nil), from: clientMap, counter: RxForwarded, deliver: true,
			cfg: func(c *Config) { c.HostSpecific, c.IsLocal = true, func(a netip.Addr) bool { return a == hostLocal } }},
		{name: "host-specific other address", pkt: udpPacket(peerAddr, native, nil), from: clientMap, counter: RxDropDstNotServed,
			cfg: func(c *Config) { c.HostSpecific, c.IsLocal = true, func(a netip.Addr) bool { return a == hostLocal } }},
		{name: "ula destination", pkt: udpPacket(peerAddr, netip.MustParseAddr("fd00::1"), nil), from: clientMap, counter: RxForwarded, deliver: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			if tt.known {
				h.transmit(udpPacket(native, peerAddr, []byte("q")))
				recv(t, h.server)
			}
			h.receive(tt.pkt, tt.from)
			if got := h.r.Counter(tt.counter); got != 1 {
				t.Errorf("%v = %d, want 1", tt.counter, got)
			}
			w := h.dev.take()
			if tt.deliver != (len(w) == 1) {
				t.Fatalf("delivered %d packets, want %v", len(w), tt.deliver)
			}
			if tt.deliver {
				var p proto.Packet
				p.Parse(tt.pkt)
				if !bytes.Equal(w[0], p.IPv6) {
					t.Errorf("delivered %x, want %x", w[0], p.IPv6)
				}
			}
		})
	}
}

// TestEchoTestThroughRelay follows the relay's half of a client's echo test:
// the native host's reply is queued, bubbled through the server, and flushed
// to the client once it answers; the client's next packets then pass.
func TestEchoTestThroughRelay(t *testing.T) {
	for _, symmetric := range []bool{false, true} {
		name := "cone"
		if symmetric {
			name = "symmetric"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			peerAddr := teredoAddr(serverIP, clientMap)
			reply := proto.AppendEcho(nil, native, peerAddr, 64, proto.ICMPEchoReply, 1, 1, []byte("nonce"))
			h.transmit(reply)
			sv := recv(t, h.server)
			if len(sv) != 1 {
				t.Fatalf("no indirect bubble")
			}
			// The client's NAT maps it to another port towards the relay if
			// symmetric: the answer arrives from there.
			from := clientMap
			if symmetric {
				from = netip.AddrPortFrom(clientMap.Addr(), clientMap.Port()+7)
			}
			sender := h.client
			if symmetric {
				c, err := h.net.Listen(from)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				sender = c
			}
			h.receive(bubbleAnswer(peerAddr, sv[0].Buffers[0]), from)
			got := recv(t, sender)
			if len(got) != 1 || !bytes.Equal(got[0].Buffers[0], reply) {
				t.Fatalf("queued echo reply not flushed to %v: %d datagrams", from, len(got))
			}
			if h.r.Counter(RxBubbles) != 1 || h.r.Counter(TxFlushed) != 1 {
				t.Errorf("bubbles %d flushed %d", h.r.Counter(RxBubbles), h.r.Counter(TxFlushed))
			}
			if symmetric && h.r.Counter(RxSymmetricNAT) != 1 {
				t.Error("symmetric NAT acceptance not counted")
			}
			// The client's first data packet, from the same mapping.
			data := udpPacket(peerAddr, native, []byte("GET /"))
			h.receive(data, from)
			if w := h.dev.take(); len(w) != 1 || !bytes.Equal(w[0], data) {
				t.Fatalf("client data not delivered")
			}
			// The host's answer goes straight to the mapping.
			h.transmit(udpPacket(native, peerAddr, []byte("200")))
			if got := recv(t, sender); len(got) != 1 {
				t.Fatalf("answer not forwarded to %v", from)
			}
			if h.r.Counter(TxForwarded) != 1 {
				t.Error("answer not counted as forwarded")
			}
			// No timer fires any more bubbles.
			h.clk.Advance(10 * time.Second)
			if n := len(recv(t, h.server)); n != 0 {
				t.Errorf("%d bubbles after the peer answered", n)
			}
			if symmetric {
				// A bubble to a wrong link-local from the odd mapping is refused.
				bad := proto.AppendBubble(nil, peerAddr, netip.MustParseAddr("fe80::1"), 0)
				h.receive(bad, netip.AddrPortFrom(clientMap.Addr(), 999))
				if h.r.Counter(RxDropMappingMismatch) != 1 {
					t.Error("forged bubble accepted")
				}
			}
		})
	}
}

// TestPeerRevalidation: a trusted peer that has been silent for 30 s is
// bubbled again before more data goes to it; a relay restart (no entry)
// still accepts a client whose mapping checks out.
func TestPeerRevalidation(t *testing.T) {
	h := newHarness(t, nil)
	peerAddr := teredoAddr(serverIP, clientMap)
	h.receive(udpPacket(peerAddr, native, nil), clientMap) // unknown, accepted
	h.dev.take()
	h.transmit(udpPacket(native, peerAddr, nil))
	if len(recv(t, h.client)) != 1 {
		t.Fatal("not forwarded to a new trusted peer")
	}
	h.clk.Advance(31 * time.Second)
	h.transmit(udpPacket(native, peerAddr, []byte("later")))
	if len(recv(t, h.client)) != 0 || len(recv(t, h.server)) != 1 {
		t.Fatal("stale peer not bubbled")
	}
	h.receive(proto.AppendBubble(nil, peerAddr, netip.MustParseAddr("fe80::2"), 0), clientMap)
	if got := recv(t, h.client); len(got) != 1 {
		t.Fatalf("queue not flushed after revalidation: %d", len(got))
	}
}

func TestReceiveSourceRateLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SourceRate, c.SourceBurst = 10, 5 })
	for i := range 20 {
		m := netip.AddrPortFrom(clientMap.Addr(), uint16(1000+i))
		h.receive(udpPacket(teredoAddr(serverIP, m), native, nil), m)
	}
	if got := h.r.Counter(RxNewPeers); got != 5 {
		t.Errorf("new peers = %d, want 5 (burst)", got)
	}
	if got := h.r.Counter(RxDropRateLimited); got != 15 {
		t.Errorf("rate-limited = %d, want 15", got)
	}
	// Another source has its own budget.
	h.receive(udpPacket(teredoAddr(serverIP, clientMap2), native, nil), clientMap2)
	if got := h.r.Counter(RxNewPeers); got != 6 {
		t.Errorf("other source limited too")
	}
	h.clk.Advance(100 * time.Millisecond)
	m := netip.AddrPortFrom(clientMap.Addr(), 2000)
	h.receive(udpPacket(teredoAddr(serverIP, m), native, nil), m)
	if got := h.r.Counter(RxNewPeers); got != 7 {
		t.Errorf("budget not refilled after 100 ms")
	}
}

func TestTransmitSourceRateLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SourceRate, c.SourceBurst = 10, 3 })
	for i := range 10 {
		m := netip.AddrPortFrom(clientMap.Addr(), uint16(1000+i))
		h.transmit(udpPacket(native, teredoAddr(serverIP, m), nil))
	}
	if h.r.Counter(TxQueued) != 3 || h.r.Counter(TxDropRateLimited) != 7 {
		t.Errorf("queued %d limited %d", h.r.Counter(TxQueued), h.r.Counter(TxDropRateLimited))
	}
	if h.r.table.Len() != 3 {
		t.Errorf("table has %d entries", h.r.table.Len())
	}
}

func TestTableBound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxPeers = 8; c.SourceRate = -1 })
	for i := range 100 {
		m := netip.AddrPortFrom(clientMap.Addr(), uint16(1000+i))
		h.transmit(udpPacket(native, teredoAddr(serverIP, m), nil))
	}
	if n := h.r.table.Len(); n != 8 {
		t.Errorf("table has %d entries, want 8", n)
	}
	if st := h.r.Status(); st.PeersEvicted != 92 || st.Counters["tx_queued"] != 100 {
		t.Errorf("status %+v", st)
	}
}
