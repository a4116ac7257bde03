package peer

import (
	"testing"
	"time"
)

func TestRouteAwaiting(t *testing.T) {
	tab := New(Config{})
	if _, _, _, ok := tab.RouteAwaiting(addrA, t0); ok {
		t.Fatal("route to unknown")
	}
	tab.Update(addrA, true, t0, func(p *Peer) { p.Trust(mapA) })

	type step struct {
		at    time.Duration
		op    string // "send" (RouteAwaiting), "plain" (Route), "recv" (Accept from mapA), "other" (Accept from another mapping), "trust"
		n     int    // awaiting after the step
		since time.Duration
	}
	steps := []step{
		{0, "send", 1, 0},
		{time.Second, "send", 2, time.Second},
		{1500 * time.Millisecond, "plain", 2, 1500 * time.Millisecond}, // Route does not count
		{2 * time.Second, "other", 2, 2 * time.Second},                 // a foreign mapping is no answer
		{3 * time.Second, "send", 3, 3 * time.Second},
		{4 * time.Second, "recv", 0, 0},
		{5 * time.Second, "send", 1, 0}, // the silence starts again at the first send after the answer
		{7 * time.Second, "send", 2, 2 * time.Second},
		{8 * time.Second, "trust", 0, 0},
		{9 * time.Second, "send", 1, 0},
	}
	for _, s := range steps {
		now := t0.Add(s.at)
		switch s.op {
		case "send":
			m, n, since, ok := tab.RouteAwaiting(addrA, now)
			if !ok || m != mapA || n != s.n || since != s.since {
				t.Fatalf("at %v: RouteAwaiting = %v %d %v %v, want %v %d %v", s.at, m, n, since, ok, mapA, s.n, s.since)
			}
		case "plain":
			tab.Route(addrA, now)
		case "recv":
			if !tab.Accept(addrA, mapA, now) {
				t.Fatal("not accepted")
			}
		case "other":
			tab.Accept(addrA, mapOthr, now)
		case "trust":
			tab.Update(addrA, false, now, func(p *Peer) { p.Trust(mapA) })
		}
		tab.Update(addrA, false, now, func(p *Peer) {
			if n, since := p.Awaiting(); n != s.n || since != s.since {
				t.Fatalf("at %v after %s: Awaiting = %d %v, want %d %v", s.at, s.op, n, since, s.n, s.since)
			}
		})
	}
	// An invalid peer (nothing received for 30 s) is not routed, and so not
	// counted either.
	if _, _, _, ok := tab.RouteAwaiting(addrA, t0.Add(40*time.Second)); ok {
		t.Fatal("routed to an invalid peer")
	}
}

func TestRouteAwaitingZeroAlloc(t *testing.T) {
	tab := New(Config{})
	tab.Update(addrA, true, t0, func(p *Peer) { p.Trust(mapA) })
	n := testing.AllocsPerRun(100, func() {
		tab.RouteAwaiting(addrA, t0)
		tab.Accept(addrA, mapA, t0)
	})
	if n != 0 {
		t.Fatalf("%v allocs per lookup", n)
	}
}
