package lab

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/teredo-go/teredo/internal/lab/impair"
)

// TestWANImpairment checks that the WAN hop in front of a NAT gives each
// profile's round trip and loss: 200 pings (one every 5 ms) from a client behind
// an impaired home router to the server. No ping returns sooner than the
// profile's RTT, the median within 5 ms of it, and every lost ping is one packet
// the hop dropped (the request on the way up or the reply on the way down).
func TestWANImpairment(t *testing.T) {
	l := New(t, Options{Clients: []ClientSpec{{"a1", HomeRouter}}, NoRelay: true, NoV6Host: true})
	a := l.Clients["a1"]
	w := l.ImpairWAN(t, a, impair.Profile{}, 1)
	const n = 200
	for _, p := range impair.Profiles {
		t.Run(p.Name, func(t *testing.T) {
			w.SetProfile(p)
			up0, down0 := w.Up.Stats(), w.Down.Stats()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rtts, lost, err := pingSeries(ctx, a, ServerPrimary, n, 5*time.Millisecond, p.RTT+300*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			up, down := w.Up.Stats(), w.Down.Stats()
			dropped := (up.Lost - up0.Lost) + (down.Lost - down0.Lost)
			sent := (up.In - up0.In) + (down.In - down0.In)
			slices.Sort(rtts)
			t.Logf("%s: %d of %d pings answered, RTT min %v median %v max %v; the hop dropped %d of %d packets", p, len(rtts), n, rtts[0], rtts[len(rtts)/2], rtts[len(rtts)-1], dropped, sent)
			if rtts[0] < p.RTT {
				t.Errorf("fastest ping %v, below the profile's %v", rtts[0], p.RTT)
			}
			if med := rtts[len(rtts)/2]; med > p.RTT+5*time.Millisecond {
				t.Errorf("median ping %v, more than 5 ms over the profile's %v", med, p.RTT)
			}
			if uint64(lost) != dropped {
				t.Errorf("%d pings lost, the hop dropped %d packets", lost, dropped)
			}
			// Each direction drops with probability Loss: within 5 standard
			// deviations of the binomial over the packets the hop saw.
			mean := p.Loss * float64(sent)
			if sd := math.Sqrt(float64(sent) * p.Loss * (1 - p.Loss)); math.Abs(float64(dropped)-mean) > 5*sd+0.5 {
				t.Errorf("dropped %d of %d packets, want about %.1f ± %.1f", dropped, sent, mean, 5*sd)
			}
			if up.Overflow != up0.Overflow || down.Overflow != down0.Overflow {
				t.Errorf("the hop overflowed: up %+v, down %+v", up, down)
			}
		})
	}
}

// pingSeries sends n ICMP echo requests from h to the IPv4 address dst, one every
// interval, waits up to wait after the last one for replies, and returns the round
// trips of the answered requests and the number left unanswered.
func pingSeries(ctx context.Context, h *Host, dst netip.Addr, n int, interval, wait time.Duration) (rtts []time.Duration, lost int, err error) {
	pc, err := h.ListenPacket("ip4:icmp", "")
	if err != nil {
		return nil, 0, err
	}
	defer pc.Close()
	id := rand.IntN(0xffff)
	var mu sync.Mutex
	sent := make([]time.Time, n)
	got := make([]time.Duration, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			m, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			at := time.Now()
			if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(dst.AsSlice()) {
				continue
			}
			rm, err := icmp.ParseMessage(1, buf[:m])
			if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			e, ok := rm.Body.(*icmp.Echo)
			if !ok || e.ID != id || e.Seq >= n {
				continue
			}
			mu.Lock()
			if got[e.Seq] == 0 {
				got[e.Seq] = at.Sub(sent[e.Seq])
			}
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := range n {
		wb, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("teredo-lab-wan")}}).Marshal(nil)
		if err != nil {
			return nil, 0, err
		}
		mu.Lock()
		sent[seq] = time.Now()
		mu.Unlock()
		if _, err := pc.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return nil, 0, fmt.Errorf("lab: ping %v from %s: %w", dst, h.Name, err)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	select {
	case <-time.After(wait):
	case <-ctx.Done():
	}
	pc.Close()
	<-done
	for _, d := range got {
		if d == 0 {
			lost++
		} else {
			rtts = append(rtts, d)
		}
	}
	if len(rtts) == 0 {
		return nil, lost, fmt.Errorf("lab: ping %v from %s: no reply to %d requests", dst, h.Name, n)
	}
	return rtts, lost, nil
}
