package server

import (
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

type discardSender struct{ n int }

func (d *discardSender) SendFrom(_ Socket, b []byte, _ netip.AddrPort) error {
	d.n += len(b)
	return nil
}

func benchProcess(b *testing.B, payload []byte, src netip.AddrPort, want Action) {
	p, _ := newTestProcessor(b, func(c *Config) {
		// The limiter runs but never refuses: its cost is part of the path.
		c.RateLimit = RateLimit{PerSecond: 1e12, Burst: 1 << 30}
	})
	tx := &discardSender{}
	if r := p.Process(Primary, payload, src, tx); r.Action != want {
		b.Fatalf("Process = %v/%v", r.Action, r.Reason)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for range b.N {
		p.Process(Primary, payload, src, tx)
	}
}

// BenchmarkProcessBubble forwards an indirect bubble to a client of this
// server, with an origin indication.
func BenchmarkProcessBubble(b *testing.B) {
	benchProcess(b, bubble(teredoA, teredoB), mapA, ForwardedTeredo)
}

// BenchmarkProcessBubbleOtherServer forwards a bubble as is (no origin).
func BenchmarkProcessBubbleOtherServer(b *testing.B) {
	benchProcess(b, bubble(teredoA, teredoC), mapA, ForwardedTeredo)
}

// BenchmarkProcessRS answers a router solicitation.
func BenchmarkProcessRS(b *testing.B) {
	benchProcess(b, proto.AppendRS(nil, nonce, false), mapA, AnsweredRS)
}

// BenchmarkProcessDrop drops a packet at check 7.
func BenchmarkProcessDrop(b *testing.B) {
	benchProcess(b, bubble(native, teredoC), relayUDP, Dropped)
}

// BenchmarkProcessParallel forwards bubbles from many goroutines, as the
// two socket loops do.
func BenchmarkProcessParallel(b *testing.B) {
	p, _ := newTestProcessor(b, func(c *Config) {
		c.RateLimit = RateLimit{PerSecond: 1e12, Burst: 1 << 30}
	})
	payload := bubble(teredoA, teredoB)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		tx := &discardSender{}
		for pb.Next() {
			p.Process(Primary, payload, mapA, tx)
		}
	})
}
