package client

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/proto"
)

// nullNet discards datagrams.
type nullNet struct{}

func (nullNet) WriteTo([]byte, netip.AddrPort) error { return nil }

// benchClient returns a client on the real clock, qualified, with peerAddr
// trusted at peerMapped.
func benchClient(b *testing.B) (*Client, netip.Addr) {
	b.Helper()
	var last []byte
	tr := transportFunc(func(p []byte, to netip.AddrPort) error { last = bytes.Clone(p); return nil })
	c, err := New(Config{
		Transport: tr,
		Deliver:   func([]byte) {},
		Clock:     clock.Real{},
		Rand:      rand.NewChaCha8([32]byte{7}),
		Servers:   []netip.Addr{server1},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	c.Start()
	r, _ := parseRS(sent{b: last})
	c.Receive(ra(r, server1, mappedUs, 0), ap(server1))
	us, ok := c.Addr()
	if !ok {
		b.Fatal("not qualified")
	}
	c.Receive(proto.AppendBubble(nil, peerAddr, us, 0), peerMapped)
	if _, ok := c.Transmit([][]byte{ipPacket(us, peerAddr, "x")}); !ok {
		b.Fatal("peer not trusted")
	}
	return c, us
}

type transportFunc func([]byte, netip.AddrPort) error

func (f transportFunc) WriteTo(b []byte, to netip.AddrPort) error { return f(b, to) }

func BenchmarkTransmitTrusted(b *testing.B) {
	c, us := benchClient(b)
	pkt := ipPacket(us, peerAddr, string(make([]byte, 1200)))
	bufs := [][]byte{pkt[:40], pkt[40:]}
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, ok := c.Transmit(bufs); !ok {
			b.Fatal("slow path")
		}
	}
}

func BenchmarkReceiveTrusted(b *testing.B) {
	c, us := benchClient(b)
	pkt := ipPacket(peerAddr, us, string(make([]byte, 1200)))
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if c.Receive(pkt, peerMapped) == nil {
			b.Fatal("slow path")
		}
	}
}

func BenchmarkTransmitTrustedParallel(b *testing.B) {
	c, us := benchClient(b)
	pkt := ipPacket(us, peerAddr, string(make([]byte, 1200)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		bufs := [][]byte{pkt}
		for pb.Next() {
			c.Transmit(bufs)
		}
	})
}

func TestFastPathsDoNotAllocate(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.trustPeer(us, peerMapped)
	out := [][]byte{ipPacket(us, peerAddr, "x")}
	in := ipPacket(peerAddr, us, "y")
	n := testing.AllocsPerRun(200, func() {
		if _, ok := h.c.Transmit(out); !ok {
			t.Fatal("slow transmit")
		}
		if h.c.Receive(in, peerMapped) == nil {
			t.Fatal("slow receive")
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per packet pair", n)
	}
}

// BenchmarkReceiveUnverifiedFlood is a stream of data packets from ever new
// native sources through a relay: each would start an echo test.
func BenchmarkReceiveUnverifiedFlood(b *testing.B) {
	c, us := benchClient(b)
	pkt := ipPacket(nativeDst, us, string(make([]byte, 100)))
	b.ReportAllocs()
	var i uint32
	for b.Loop() {
		i++
		pkt[8+12], pkt[8+13], pkt[8+14], pkt[8+15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		c.Receive(pkt, relayAP)
	}
}
