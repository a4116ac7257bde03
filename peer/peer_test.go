package peer

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
)

var (
	t0      = time.Unix(1_000_000, 0)
	addrA   = netip.MustParseAddr("2001:0:c612:1:3cff:63bf:3fff:fdd2").As16()
	mapA    = netip.MustParseAddrPort("192.0.2.45:40000")
	mapOthr = netip.MustParseAddrPort("192.0.2.45:40001")
)

func key(i int) [16]byte {
	a := addrA
	a[14], a[15] = byte(i>>8), byte(i)
	return a
}

func TestLimits(t *testing.T) {
	type step struct {
		at   time.Duration
		want bool
	}
	tests := []struct {
		name  string
		ping  bool
		steps []step
	}{
		{"bubble not within 2s", false, []step{{0, true}, {time.Second, false}, {1999 * time.Millisecond, false}, {2 * time.Second, true}}},
		{"bubble 4 per 300s", false, []step{{0, true}, {2 * time.Second, true}, {4 * time.Second, true}, {6 * time.Second, true}, {8 * time.Second, false}, {299 * time.Second, false}, {300 * time.Second, true}, {301 * time.Second, false}, {302 * time.Second, true}}},
		{"ping 4 then 2s apart", true, []step{{0, true}, {time.Second, false}, {2 * time.Second, true}, {4 * time.Second, true}, {6 * time.Second, true}, {8 * time.Second, false}, {29 * time.Second, false}, {30 * time.Second, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := New(Config{})
			for _, s := range tt.steps {
				var got bool
				tab.Update(addrA, true, t0.Add(s.at), func(p *Peer) {
					if tt.ping {
						got = p.CountPing()
					} else {
						got = p.CountBubble()
					}
				})
				if got != s.want {
					t.Fatalf("at %v: allowed %v, want %v", s.at, got, s.want)
				}
			}
		})
	}
}

func TestExhausted(t *testing.T) {
	tab := New(Config{})
	for i := 0; i < 4; i++ {
		tab.Update(addrA, true, t0.Add(time.Duration(i)*2*time.Second), func(p *Peer) {
			if p.BubblesExhausted() {
				t.Fatalf("exhausted after %d", i)
			}
			p.CountBubble()
		})
	}
	var ex bool
	tab.Update(addrA, false, t0.Add(8*time.Second), func(p *Peer) { ex = p.BubblesExhausted(); p.Unreachable = ex })
	if !ex {
		t.Fatal("not exhausted after 4 bubbles")
	}
	if s := tab.State(addrA, t0.Add(8*time.Second)); s != Unreachable {
		t.Fatalf("state %v", s)
	}
	tab.Update(addrA, false, t0.Add(9*time.Second), func(p *Peer) { p.Trust(mapA) })
	if s := tab.State(addrA, t0.Add(9*time.Second)); s != Reachable {
		t.Fatalf("state after trust %v", s)
	}
}

func TestValidity(t *testing.T) {
	tests := []struct {
		name  string
		local bool
		after time.Duration
		want  bool
	}{
		{"fresh", false, 0, true},
		{"30s", false, 30 * time.Second, true},
		{"31s", false, 31 * time.Second, false},
		{"local 599s", true, 599 * time.Second, true},
		{"local 601s", true, 601 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := New(Config{})
			tab.Update(addrA, true, t0, func(p *Peer) {
				if p.Valid() {
					t.Fatal("new entry is valid")
				}
				p.Local = tt.local
				p.Trust(mapA)
			})
			_, ok := tab.Route(addrA, t0.Add(tt.after))
			if ok != tt.want {
				t.Fatalf("route ok=%v want %v", ok, tt.want)
			}
			want := Pending
			if tt.want {
				want = Reachable
			}
			if s := tab.State(addrA, t0.Add(tt.after)); s != want {
				t.Fatalf("state %v want %v", s, want)
			}
		})
	}
}

func TestRouteAccept(t *testing.T) {
	tab := New(Config{})
	if _, ok := tab.Route(addrA, t0); ok {
		t.Fatal("route to unknown")
	}
	tab.Update(addrA, true, t0, func(p *Peer) {})
	if _, ok := tab.Route(addrA, t0); ok {
		t.Fatal("route to untrusted")
	}
	if tab.Accept(addrA, mapA, t0) {
		t.Fatal("accept from untrusted")
	}
	tab.Update(addrA, false, t0, func(p *Peer) { p.Trust(mapA) })
	if m, ok := tab.Route(addrA, t0.Add(time.Second)); !ok || m != mapA {
		t.Fatalf("route = %v %v", m, ok)
	}
	if tab.Accept(addrA, mapOthr, t0) {
		t.Fatal("accepted another mapping")
	}
	if !tab.Accept(addrA, mapA, t0.Add(25*time.Second)) {
		t.Fatal("not accepted")
	}
	// The receive at 25 s keeps the peer valid until 55 s.
	if _, ok := tab.Route(addrA, t0.Add(50*time.Second)); !ok {
		t.Fatal("receive did not refresh validity")
	}
	tab.Update(addrA, false, t0, func(p *Peer) {
		if !p.LastSend().Equal(t0.Add(50*time.Second)) || !p.LastRecv().Equal(t0.Add(25*time.Second)) {
			t.Fatalf("last send %v recv %v", p.LastSend(), p.LastRecv())
		}
	})
}

func TestQueue(t *testing.T) {
	tab := New(Config{QueuePackets: 3, QueueBytes: 100})
	var ok []bool
	tab.Update(addrA, true, t0, func(p *Peer) {
		ok = append(ok,
			p.Enqueue(false, netip.AddrPort{}, []byte{1, 2}, []byte{3}),
			p.Enqueue(true, mapA, bytes.Repeat([]byte{4}, 60)),
			p.Enqueue(false, netip.AddrPort{}, bytes.Repeat([]byte{5}, 40)), // 103 bytes: over
			p.Enqueue(false, netip.AddrPort{}, []byte{6}),
			p.Enqueue(false, netip.AddrPort{}, []byte{7}), // 4th packet: over
		)
	})
	if fmt.Sprint(ok) != "[true true false true false]" {
		t.Fatalf("enqueue results %v", ok)
	}
	if s := tab.Stats(); s.QueueDrops != 2 {
		t.Fatalf("drops %d", s.QueueDrops)
	}
	var pk []Packet
	tab.Update(addrA, false, t0, func(p *Peer) { pk = p.TakeQueue(nil) })
	if len(pk) != 3 || !bytes.Equal(pk[0].Data, []byte{1, 2, 3}) || !pk[1].Inbound || pk[1].From != mapA || len(pk[1].Data) != 60 || pk[2].Data[0] != 6 {
		t.Fatalf("queue order or content wrong: %+v", pk)
	}
	tab.Release(pk)
	tab.Update(addrA, false, t0, func(p *Peer) {
		if n, b := p.Queued(); n != 0 || b != 0 {
			t.Fatalf("queued %d %d after take", n, b)
		}
		// The ring wraps correctly after a take.
		for i := 0; i < 3; i++ {
			if !p.Enqueue(false, netip.AddrPort{}, []byte{byte(i)}) {
				t.Fatal("enqueue after take")
			}
		}
		got := p.TakeQueue(nil)
		for i, q := range got {
			if q.Data[0] != byte(i) {
				t.Fatalf("order %v", got)
			}
		}
	})
}

func TestEvictionLRU(t *testing.T) {
	tab := New(Config{MaxPeers: 4})
	for i := 0; i < 4; i++ {
		tab.Update(key(i), true, t0, func(p *Peer) { p.Trust(mapA) })
	}
	// One sweep clears every reference bit; then 0 and 2 are used again.
	tab.Update(key(10), true, t0, func(p *Peer) {})
	if tab.Len() != 4 {
		t.Fatalf("len %d", tab.Len())
	}
	if tab.State(key(0), t0) != Unknown {
		t.Fatal("first entry not evicted")
	}
	tab.Route(key(2), t0)
	tab.Update(key(11), true, t0, func(p *Peer) {})
	if tab.State(key(1), t0) != Unknown || tab.State(key(2), t0) != Reachable {
		t.Fatalf("eviction did not spare the recently used entry")
	}
	if s := tab.Stats(); s.Evicted != 2 || s.Created != 6 {
		t.Fatalf("stats %+v", s)
	}
}

func TestExpireAndTimers(t *testing.T) {
	clk := clock.NewFake(t0)
	var fired []netip.Addr
	tab := New(Config{Clock: clk, Expiry: 30 * time.Second, OnTimer: func(a netip.Addr) { fired = append(fired, a) }})
	tab.Update(addrA, true, clk.Now(), func(p *Peer) {
		p.Enqueue(false, netip.AddrPort{}, []byte{1})
		p.Arm(2 * time.Second)
	})
	tab.Update(key(7), true, clk.Now(), func(p *Peer) { p.Arm(5 * time.Second) })
	clk.Advance(2 * time.Second)
	if len(fired) != 1 || fired[0] != netip.AddrFrom16(addrA) {
		t.Fatalf("fired %v", fired)
	}
	tab.Delete(key(7))
	clk.Advance(5 * time.Second)
	if len(fired) != 1 {
		t.Fatal("timer of a deleted entry fired")
	}
	// Without traffic the entry goes within Expiry..1.5*Expiry.
	clk.Advance(40 * time.Second)
	if tab.Len() != 0 {
		t.Fatalf("len %d after expiry", tab.Len())
	}
	if s := tab.Stats(); s.Expired != 1 || s.Dropped != 1 {
		t.Fatalf("stats %+v", s)
	}
	tab.Close()
	if clk.Pending() != 0 {
		t.Fatalf("%d timers left after Close", clk.Pending())
	}
	if tab.Update(addrA, true, clk.Now(), func(*Peer) {}) {
		t.Fatal("update after close")
	}
}

func TestFlush(t *testing.T) {
	tab := New(Config{})
	for i := 0; i < 10; i++ {
		tab.Update(key(i), true, t0, func(p *Peer) { p.Enqueue(false, netip.AddrPort{}, []byte{1}) })
	}
	tab.Flush()
	if tab.Len() != 0 || tab.Stats().Dropped != 10 {
		t.Fatalf("after flush %+v", tab.Stats())
	}
	tab.Update(key(1), true, t0, func(p *Peer) {})
	if tab.Len() != 1 {
		t.Fatal("insert after flush")
	}
}

func TestZeroAlloc(t *testing.T) {
	tab := New(Config{})
	tab.Update(addrA, true, t0, func(p *Peer) { p.Trust(mapA) })
	n := testing.AllocsPerRun(100, func() {
		tab.Route(addrA, t0)
		tab.Accept(addrA, mapA, t0)
	})
	if n != 0 {
		t.Fatalf("%v allocs per lookup", n)
	}
}

func BenchmarkRoute(b *testing.B) {
	tab := New(Config{})
	for i := 0; i < 4096; i++ {
		tab.Update(key(i), true, t0, func(p *Peer) { p.Trust(mapA) })
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := tab.Route(key(7), t0); !ok {
				b.Fatal("no route")
			}
		}
	})
}

func BenchmarkEnqueueTake(b *testing.B) {
	tab := New(Config{})
	pkt := make([]byte, 1280)
	var out []Packet
	b.ReportAllocs()
	for b.Loop() {
		tab.Update(addrA, true, t0, func(p *Peer) {
			p.Enqueue(false, netip.AddrPort{}, pkt)
			out = p.TakeQueue(out[:0])
		})
		tab.Release(out)
	}
}

// TestRelayBubbleSeries follows the relay's use: an indirect bubble every
// 2 s from the retry timer, up to 3 repeats, then the entry is dropped.
func TestRelayBubbleSeries(t *testing.T) {
	clk := clock.NewFake(t0)
	var tab *Table
	var sentAt []time.Duration
	gone := false
	// The relay's table (relay.New): 65536 peers, 30 s expiry, the default
	// bubble limit.
	cfg := Config{MaxPeers: 65536, Expiry: 30 * time.Second}
	cfg.Clock = clk
	cfg.OnTimer = func(a netip.Addr) {
		tab.Update(a.As16(), false, clk.Now(), func(p *Peer) {
			switch {
			case p.CountBubble():
				sentAt = append(sentAt, clk.Now().Sub(t0))
				p.Arm(2 * time.Second)
			case p.BubblesExhausted():
				p.Remove()
				gone = true
			}
		})
	}
	tab = New(cfg)
	defer tab.Close()
	if c := tab.Config(); c.MaxPeers != 65536 || c.Expiry != 30*time.Second {
		t.Fatalf("relay config %+v", c)
	}
	tab.Update(addrA, true, clk.Now(), func(p *Peer) {
		p.Enqueue(false, netip.AddrPort{}, []byte{1})
		p.CountBubble()
		sentAt = append(sentAt, 0)
		p.Arm(2 * time.Second)
	})
	clk.Advance(10 * time.Second)
	if fmt.Sprint(sentAt) != "[0s 2s 4s 6s]" || !gone || tab.Len() != 0 {
		t.Fatalf("bubbles at %v, removed %v, len %d", sentAt, gone, tab.Len())
	}
	if s := tab.Stats(); s.Dropped != 1 {
		t.Fatalf("stats %+v", s)
	}
}
