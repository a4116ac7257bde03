package client

import (
	"bytes"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/peer"
)

// nativeSrc is the i-th of many native IPv6 sources a hostile relay makes up.
func nativeSrc(i int) netip.Addr {
	a := netip.MustParseAddr("2600:2::").As16()
	a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.AddrFrom16(a)
}

// takeEchoes returns the destinations of the echo requests sent since the
// last take, failing on any other datagram or on one not sent to server1.
func (h *harness) takeEchoes() []netip.Addr {
	h.t.Helper()
	var dsts []netip.Addr
	for _, d := range h.net.take() {
		if d.to != ap(server1) {
			h.t.Fatalf("datagram to %v, not the server", d.to)
		}
		_, dst, _, _ := echoRequest(h.t, d)
		dsts = append(dsts, dst)
	}
	return dsts
}

// flood receives one data packet from each of the sources first..first+n-1
// through relayAP.
func (h *harness) flood(us netip.Addr, first, n int) {
	h.t.Helper()
	for i := first; i < first+n; i++ {
		if h.c.Receive(ipPacket(nativeSrc(i), us, "flood"), relayAP) != nil {
			h.t.Fatalf("unverified source %v delivered", nativeSrc(i))
		}
	}
}

func TestInboundEchoLimit(t *testing.T) {
	for _, tt := range []struct {
		name        string
		wantRate    int // tests allowed per second
		wantBurst   int
		configRate  float64
		configBurst int
	}{
		{name: "defaults", wantRate: DefaultInboundEchoRate, wantBurst: DefaultInboundEchoBurst},
		{name: "zero means default", configRate: 0, configBurst: -5, wantRate: DefaultInboundEchoRate, wantBurst: DefaultInboundEchoBurst},
		{name: "NaN means default", configRate: math.NaN(), wantRate: DefaultInboundEchoRate, wantBurst: DefaultInboundEchoBurst},
		{name: "configured", configRate: 2, configBurst: 4, wantRate: 2, wantBurst: 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.InboundEchoRate, c.InboundEchoBurst = tt.configRate, tt.configBurst })
			us := h.qualify()
			burst, rate := tt.wantBurst, tt.wantRate
			n := 3 * burst
			h.flood(us, 0, n)
			got := h.takeEchoes()
			if len(got) != burst {
				t.Fatalf("%d echo requests for %d new sources, want the burst %d", len(got), n, burst)
			}
			for i, dst := range got {
				if dst != nativeSrc(i) {
					t.Fatalf("echo %d to %v, want %v", i, dst, nativeSrc(i))
				}
			}
			st := h.c.Status()
			if d := st.Counters.Drops["echo-rate-limit"]; d != uint64(n-burst) {
				t.Fatalf("echo-rate-limit drops %d, want %d (%v)", d, n-burst, st.Counters.Drops)
			}
			if st.Peers != burst || st.Counters.EchoRequests != uint64(burst) {
				t.Fatalf("%d peers, %d echo requests: refused packets must create no entry", st.Peers, st.Counters.EchoRequests)
			}
			if h.peerState(nativeSrc(burst)) != peer.Unknown {
				t.Fatal("refused source has an entry")
			}

			// A second packet from a source under test waits for free.
			h.c.Receive(ipPacket(nativeSrc(0), us, "again"), relayAP)
			if e := h.takeEchoes(); len(e) != 0 || h.drops("echo-rate-limit") != uint64(n-burst) {
				t.Fatalf("packet of a test in progress: echoes %v, drops %v", e, h.c.Status().Counters.Drops)
			}

			// One second later, rate more tests may start.
			h.advance(time.Second)
			h.flood(us, n, n)
			if got := h.takeEchoes(); len(got) != rate || got[0] != nativeSrc(n) {
				t.Fatalf("after 1 s: echo requests %v, want %d from %v", got, rate, nativeSrc(n))
			}
			if d := h.drops("echo-rate-limit"); d != uint64(2*n-burst-rate) {
				t.Fatalf("echo-rate-limit drops %d, want %d", d, 2*n-burst-rate)
			}

			// Retries of started tests are bounded per peer, not charged:
			// the burst's first repeat goes out 2 s after it.
			h.advance(retryDelay - time.Second)
			if got := h.takeEchoes(); len(got) != burst {
				t.Fatalf("%d retries, want %d", len(got), burst)
			}
		})
	}
}

// TestInboundEchoLimitDisabled checks that a negative rate turns the limit
// off, as for every rate limit of the module: every new source gets its
// echo test.
func TestInboundEchoLimitDisabled(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.InboundEchoRate = -1 })
	us := h.qualify()
	n := 3 * DefaultInboundEchoBurst
	h.flood(us, 0, n)
	if got := h.takeEchoes(); len(got) != n {
		t.Fatalf("%d echo requests for %d new sources, want all", len(got), n)
	}
	if d := h.drops("echo-rate-limit"); d != 0 {
		t.Fatalf("echo-rate-limit drops %d with the limit off", d)
	}
}

func TestInboundEchoLimitSparesOutbound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.InboundEchoBurst = 4 })
	us := h.qualify()
	h.flood(us, 0, 50)
	if got := h.takeEchoes(); len(got) != 4 {
		t.Fatalf("%d echo requests", len(got))
	}
	drops := h.drops("echo-rate-limit")

	// The application's own packet to a new destination still starts its
	// echo test under the flood.
	out := ipPacket(us, nativeDst, "hello")
	if _, ok := h.c.Transmit([][]byte{out}); ok {
		t.Fatal("untested native destination on the fast path")
	}
	got := h.net.take()
	if len(got) != 1 {
		t.Fatalf("outbound echo test: %+v", got)
	}
	_, dst, _, body := echoRequest(t, got[0])
	if dst != nativeDst {
		t.Fatalf("echo to %v", dst)
	}

	// Its answer through a relay is held, not refused: the test in
	// progress covers it.
	in := ipPacket(nativeDst, us, "answer")
	h.c.Receive(in, relayAP)
	if e := h.takeEchoes(); len(e) != 0 || h.drops("echo-rate-limit") != drops {
		t.Fatalf("reply of the peer under test: echoes %v, drops %v", e, h.c.Status().Counters.Drops)
	}
	h.c.Receive(echoReply(nativeDst, us, body), relayAP)
	flushed := h.net.take()
	if len(flushed) != 1 || flushed[0].to != relayAP || !bytes.Equal(flushed[0].b, out) {
		t.Fatalf("queued packet not flushed to the relay: %+v", flushed)
	}
	if d := h.takeDelivered(); len(d) != 1 || !bytes.Equal(d[0], in) {
		t.Fatalf("held packet not delivered: %d", len(d))
	}
	if h.c.Receive(in, relayAP) == nil {
		t.Fatal("tested peer not on the fast path")
	}
}

func TestInboundEchoLimitTeredoSource(t *testing.T) {
	// A Teredo source from another mapping is tested with bubbles (see
	// holdTeredo), and pays for it like an echo test.
	h := newHarness(t, func(c *Config) { c.InboundEchoBurst = 1 })
	us := h.qualify()
	h.c.Receive(ipPacket(peerAddr, us, "nat"), relay2AP)
	if b, other := bubbles(h.net.take()); len(b) != 2 || len(other) != 0 {
		t.Fatalf("bubbles %v, other %v", b, other)
	}
	h.flood(us, 0, 1)
	if got := h.takeEchoes(); len(got) != 0 || h.drops("echo-rate-limit") != 1 {
		t.Fatalf("echo requests %v, drops %v", got, h.c.Status().Counters.Drops)
	}
}

func TestInboundEchoLimitNewSeries(t *testing.T) {
	// A source whose test failed may be tested again after the ping
	// window; that new test is charged too.
	h := newHarness(t, func(c *Config) { c.InboundEchoBurst, c.InboundEchoRate = 1, 1e-6 })
	us := h.qualify()
	h.serve()
	h.flood(us, 0, 1)
	for range peer.DefaultPingLimit.Max {
		if got := h.takeEchoes(); len(got) != 1 {
			t.Fatalf("echo requests %v", got)
		}
		h.advance(retryDelay)
	}
	if h.peerState(nativeSrc(0)) != peer.Unreachable {
		t.Fatalf("state %v after the test failed", h.peerState(nativeSrc(0)))
	}
	h.advance(peer.DefaultPingLimit.Window)
	h.flood(us, 0, 1)
	if got := h.takeEchoes(); len(got) != 0 || h.drops("echo-rate-limit") != 1 {
		t.Fatalf("new series: echo requests %v, drops %v", got, h.c.Status().Counters.Drops)
	}
}
