package relay

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// TestHairpin follows a packet from one Teredo client (behind a symmetric NAT,
// talking to the relay first) to another: the relay challenges the first, which
// becomes trusted at its mapping towards the relay; its next packet is queued
// for the second while the relay bubbles it through its server; the second's
// answer flushes it, with the hop limit one lower; and the way back is direct.
func TestHairpin(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Hairpin = true })
	symAddr := teredoAddr(serverIP, clientMap2)                           // its address carries clientMap2
	symFrom := netip.AddrPortFrom(clientMap2.Addr(), clientMap2.Port()+9) // its mapping towards the relay
	sym, err := h.net.Listen(symFrom)
	if err != nil {
		t.Fatal(err)
	}
	defer sym.Close()
	peerAddr := teredoAddr(serverIP, clientMap) // h.client

	first := udpPacket(symAddr, peerAddr, []byte("one"))
	h.receive(first, symFrom)
	if h.r.Counter(RxDropMappingMismatch) != 1 || h.r.Counter(PeersChallenged) != 1 {
		t.Fatalf("mismatch %d, challenged %d", h.r.Counter(RxDropMappingMismatch), h.r.Counter(PeersChallenged))
	}
	sv := recv(t, h.server)
	if len(sv) != 1 || !proto.IsBubble(sv[0].Buffers[0]) || proto.Dst(sv[0].Buffers[0]) != symAddr {
		t.Fatalf("challenge: %d datagrams to the server", len(sv))
	}
	// More packets within the bubble interval challenge no more.
	h.receive(first, symFrom)
	if n := len(recv(t, h.server)); n != 0 || h.r.Counter(PeersChallenged) != 1 {
		t.Fatalf("%d more challenges", n)
	}
	// The answer, from the mapping towards the relay, makes it trusted.
	h.receive(bubbleAnswer(symAddr, sv[0].Buffers[0]), symFrom)
	if h.r.Counter(RxSymmetricNAT) != 1 {
		t.Fatal("answer to the challenge not accepted")
	}

	second := udpPacket(symAddr, peerAddr, []byte("two"))
	want := bytes.Clone(second)
	want[7]--
	h.receive(second, symFrom)
	sv = recv(t, h.server)
	if len(sv) != 1 || proto.Dst(sv[0].Buffers[0]) != peerAddr || h.r.Counter(TxQueued) != 1 {
		t.Fatalf("no bubble to the destination: %d datagrams, queued %d", len(sv), h.r.Counter(TxQueued))
	}
	if w := h.dev.take(); len(w) != 0 {
		t.Fatalf("%d packets written to the IPv6 side", len(w))
	}
	h.receive(bubbleAnswer(peerAddr, sv[0].Buffers[0]), clientMap)
	got := recv(t, h.client)
	if len(got) != 1 {
		t.Fatalf("%d datagrams flushed to the destination", len(got))
	}
	if !bytes.Equal(got[0].Buffers[0], want) {
		t.Fatalf("flushed %x, want %x", got[0].Buffers[0], want)
	}

	// Back: both are trusted, so the packet goes straight through.
	back := udpPacket(peerAddr, symAddr, []byte("back"))
	h.receive(back, clientMap)
	got = recv(t, sym)
	if len(got) != 1 || proto.Src(got[0].Buffers[0]) != peerAddr || h.r.Counter(RxHairpinned) != 1 {
		t.Fatalf("%d datagrams back, hairpinned %d", len(got), h.r.Counter(RxHairpinned))
	}
	// A packet whose hop limit would run out is dropped.
	dead := udpPacket(peerAddr, symAddr, []byte("ttl"))
	dead[7] = 1
	h.receive(dead, clientMap)
	if n := len(recv(t, sym)); n != 0 || h.r.Counter(RxDropHopLimit) != 1 {
		t.Fatalf("%d datagrams, hop-limit drops %d", n, h.r.Counter(RxDropHopLimit))
	}
	if w := h.dev.take(); len(w) != 0 {
		t.Fatalf("%d packets written to the IPv6 side", len(w))
	}
}

// TestHairpinChallengeUnanswered: a challenge nobody answers is repeated by the
// bubble schedule and then forgotten, without writing anything to the IPv6 side.
func TestHairpinChallengeUnanswered(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Hairpin = true })
	spoofed := teredoAddr(serverIP, clientMap2)
	h.receive(udpPacket(spoofed, native, nil), clientMap)
	for range 6 {
		h.clk.Advance(2 * time.Second)
	}
	if n := len(recv(t, h.server)); n != 4 {
		t.Fatalf("%d bubbles to the server, want the schedule's 4", n)
	}
	if h.r.Counter(PeersUnreachable) != 1 || h.r.Status().Peers != 0 {
		t.Fatalf("entry not dropped: %+v", h.r.Status())
	}
	if w := h.dev.take(); len(w) != 0 {
		t.Fatalf("%d packets written to the IPv6 side", len(w))
	}
}

// TestHairpinOff: without Hairpin, both cases are the RFC's drops.
func TestHairpinOff(t *testing.T) {
	h := newHarness(t, nil)
	peerAddr := teredoAddr(serverIP, clientMap)
	h.receive(udpPacket(peerAddr, teredoAddr(serverIP, clientMap2), nil), clientMap)
	h.receive(udpPacket(teredoAddr(serverIP, clientMap2), native, nil), clientMap)
	if h.r.Counter(RxDropDstTeredo) != 1 || h.r.Counter(RxDropMappingMismatch) != 1 || h.r.Counter(PeersChallenged) != 0 {
		t.Fatalf("counters: %+v", h.r.Status().Counters)
	}
	if n := len(recv(t, h.server)); n != 0 {
		t.Fatalf("%d bubbles", n)
	}
}

func TestHairpinHostSpecific(t *testing.T) {
	h := newHarness(t, nil)
	_, err := New(Config{Conn: h.r.conn, Device: h.dev, HostSpecific: true, IsLocal: func(netip.Addr) bool { return true }, Hairpin: true})
	if err == nil {
		t.Fatal("a host-specific relay with Hairpin was accepted")
	}
}

// FuzzReceiveHairpin is FuzzReceive with Hairpin: packets between Teredo
// clients, challenges and the hop-limit rule must neither panic nor write
// a packet for a Teredo destination to the IPv6 side.
func FuzzReceiveHairpin(f *testing.F) {
	peerAddr := teredoAddr(serverIP, clientMap)
	other := teredoAddr(serverIP, clientMap2)
	f.Add(udpPacket(peerAddr, other, []byte("x")), uint16(40000))
	f.Add(udpPacket(other, peerAddr, []byte("x")), uint16(40001))
	f.Add(proto.AppendBubble(nil, peerAddr, netip.MustParseAddr("fe80::1"), 0), uint16(1))
	dev := &teredoWatch{}
	r, err := New(Config{Conn: &nullConn{}, Device: dev, SourceRate: -1, Hairpin: true})
	if err != nil {
		f.Fatal(err)
	}
	defer r.table.Close()
	var sc scratch
	f.Fuzz(func(t *testing.T, b []byte, port uint16) {
		r.receive(b, netip.AddrPortFrom(clientMap.Addr(), port), &sc)
		if dev.teredo.Load() {
			t.Fatalf("a packet for a Teredo address went to the IPv6 side: %x", b)
		}
	})
}

// teredoWatch is a null Device that notes a packet for a Teredo destination
// other than the relay's own ICMPv6 errors (type below 128; its bubble
// timers write them for the IPv6 side to route back to the relay): a
// hairpinned packet, ICMPv6 informational messages included, must never
// reach the IPv6 side.
type teredoWatch struct {
	nullDevice
	teredo atomic.Bool
}

func (d *teredoWatch) WritePacket(p []byte) error {
	ownError := p[6] == proto.ProtoICMPv6 && len(p) > proto.IPv6HeaderLen && p[proto.IPv6HeaderLen] < 128
	if len(p) >= proto.IPv6HeaderLen && proto.IsTeredoBytes(p[24:40]) && !ownError {
		d.teredo.Store(true)
	}
	return nil
}
