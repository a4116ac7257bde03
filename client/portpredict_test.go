package client

import (
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// fakeProbe is a PortProbe that records probes; the test answers them.
type fakeProbe struct {
	local uint16
	calls []probeCall
}

type probeCall struct {
	rs   rs
	done func([]byte)
}

func (f *fakeProbe) LocalPort() uint16 { return f.local }

func (f *fakeProbe) Probe(b []byte, to netip.AddrPort, timeout time.Duration, done func([]byte)) {
	r, ok := parseRS(sent{b: b, to: to})
	if !ok || timeout <= 0 {
		panic("probe is not an RS")
	}
	f.calls = append(f.calls, probeCall{r, done})
}

func (f *fakeProbe) take() []probeCall {
	c := f.calls
	f.calls = nil
	return c
}

// qualifyMapped qualifies with mapping primary and answers the NAT probe to
// the secondary address with secondary.
func (h *harness) qualifyMapped(primary, secondary netip.AddrPort) netip.Addr {
	h.t.Helper()
	if err := h.c.Start(); err != nil {
		h.t.Fatal(err)
	}
	r := h.takeRS()
	h.c.Receive(ra(r[0], server1, primary, 0), ap(server1))
	probe := h.takeRS()
	if len(probe) != 1 || probe[0].to != ap(server1b) {
		h.t.Fatalf("NAT probe %+v", probe)
	}
	h.c.Receive(ra(probe[0], server1, secondary, 0), ap(server1b))
	h.takeEvents()
	a, _ := h.c.Addr()
	return a
}

func TestNATPortsClassification(t *testing.T) {
	at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(mappedUs.Addr(), port) }
	for _, tc := range []struct {
		name               string
		probe              bool
		primary, secondary netip.AddrPort
		want               NATPorts
	}{
		{"sequential", true, at(40000), at(40001), NATPortsSequential},
		{"sequential step 2", true, at(40000), at(40002), NATPortsSequential},
		{"sequential wrapping", true, at(65535), at(1), NATPortsSequential},
		{"port-preserving", true, at(5000), at(61234), NATPortsPreserving},
		{"random", true, at(40000), at(12345), NATPortsRandom},
		{"backwards", true, at(40001), at(40000), NATPortsRandom},
		{"address-symmetric", true, at(40000), netip.MustParseAddrPort("198.51.100.8:40001"), NATPortsUnknown},
		{"restricted", true, at(40000), at(40000), NATPortsUnknown},
		{"no probe", false, at(40000), at(40001), NATPortsUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				if tc.probe {
					c.PortProbe = &fakeProbe{local: 5000}
				}
			})
			h.qualifyMapped(tc.primary, tc.secondary)
			if st := h.c.Status(); st.NATPorts != tc.want {
				t.Fatalf("NATPorts %q (NAT %v), want %q", st.NATPorts, st.NAT, tc.want)
			}
		})
	}
}

// randomPortOf returns the Random Port trailer of d, or 0.
func randomPortOf(t *testing.T, d sent) uint16 {
	t.Helper()
	tr := trailerOf(t, d)
	if !tr.HasRandomPort {
		return 0
	}
	return tr.RandomPort
}

// TestPortPrediction checks the sequential case: a bubble to a new peer, a
// probe from a new socket after it, and the indirect bubble with the probe's
// port minus the step; retries reuse the prediction; a failed probe is
// counted and tried again at the next bubble.
func TestPortPrediction(t *testing.T) {
	fp := &fakeProbe{local: 5000}
	h := newHarness(t, func(c *Config) { c.PortProbe = fp })
	seq := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(mappedUs.Addr(), port) }
	us := h.qualifyMapped(seq(40000), seq(40002)) // step 2
	h.serve()
	h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")})
	b, _ := bubbles(h.net.take())
	if len(b) != 2 || b[0].to != peerMapped || b[1].to != ap(peerServer) || randomPortOf(t, b[1]) != 0 {
		t.Fatalf("first bubbles %+v", b)
	}
	calls := fp.take()
	if len(calls) != 1 || calls[0].rs.to != ap(server1) || calls[0].rs.cone {
		t.Fatalf("probes %+v", calls)
	}
	// A second packet while the probe is out starts no other probe.
	h.c.Transmit([][]byte{ipPacket(us, peerAddr, "y")})
	if n := len(fp.take()); n != 0 {
		t.Fatalf("%d more probes", n)
	}
	// The probe's flow got 40008: our bubble had 40006.
	calls[0].done(ra(calls[0].rs, server1, seq(40008), 0))
	b, other := bubbles(h.net.take())
	if len(b) != 1 || len(other) != 0 || b[0].to != ap(peerServer) || randomPortOf(t, b[0]) != 40006 {
		t.Fatalf("bubble after the probe %+v, other %+v", b, other)
	}
	if src, dst, _ := bubbleInfo(t, b[0]); src != h.c.bubbleSource(peerAddr.As16()) || dst != peerAddr {
		t.Fatalf("random port bubble %v → %v", src, dst)
	}
	if tr := trailerOf(t, b[0]); !tr.HasNonce || tr.Nonce != h.c.bubbleNonce(us.As16(), peerAddr.As16()) {
		t.Fatalf("random port bubble trailer %+v", tr)
	}
	// The retry 2 s later repeats the prediction without a probe.
	h.advance(retryDelay)
	b, _ = bubbles(h.net.take())
	if len(b) != 3 || randomPortOf(t, b[2]) != 40006 || len(fp.take()) != 0 {
		t.Fatalf("retry %+v", b)
	}
	st := h.c.Status().Counters
	if st.PortPredictions != 1 || st.RandomPortBubbles != 2 || st.PortPredictionFailures != 0 {
		t.Fatalf("counters %+v", st)
	}

	// Another peer: the probe is not answered, or answered wrongly.
	other2 := proto.Address{Server: peerServer, Mapped: netip.MustParseAddrPort("203.0.113.6:6000")}.Addr()
	h.c.Transmit([][]byte{ipPacket(us, other2, "x")})
	h.net.take()
	calls = fp.take()
	if len(calls) != 1 {
		t.Fatalf("probes %+v", calls)
	}
	calls[0].done(nil)
	if b, _ := bubbles(h.net.take()); len(b) != 0 {
		t.Fatalf("bubble after a failed probe: %+v", b)
	}
	h.advance(retryDelay) // the retry probes again
	h.net.take()
	calls = fp.take()
	if len(calls) != 1 {
		t.Fatalf("probes at the retry %+v", calls)
	}
	wrong := calls[0].rs
	wrong.nonce[0] ^= 1
	calls[0].done(ra(wrong, server1, seq(40020), 0))
	if b, _ := bubbles(h.net.take()); len(b) != 0 {
		t.Fatalf("bubble after a probe answer with another nonce: %+v", b)
	}
	if n := h.c.Status().Counters.PortPredictionFailures; n != 2 {
		t.Fatalf("failures %d", n)
	}
}

// TestPortPredictionOnlySequential checks that a random or port-preserving
// symmetric NAT sends no probes.
func TestPortPredictionOnlySequential(t *testing.T) {
	for _, secondary := range []uint16{12345, 40001} {
		fp := &fakeProbe{local: 40000} // 40000 is our own port: port-preserving
		h := newHarness(t, func(c *Config) { c.PortProbe = fp })
		us := h.qualifyMapped(netip.AddrPortFrom(mappedUs.Addr(), 40000), netip.AddrPortFrom(mappedUs.Addr(), secondary))
		h.serve()
		h.c.Transmit([][]byte{ipPacket(us, peerAddr, "x")})
		if n := len(fp.take()); n != 0 {
			t.Fatalf("secondary %d (%v): %d probes", secondary, h.c.Status().NATPorts, n)
		}
	}
}

// TestRandomPortAnswered checks the receiving side: an indirect bubble with
// a Random Port trailer is answered at its origin and at the trailer's port
// of the origin's IPv4, with the same answer.
func TestRandomPortAnswered(t *testing.T) {
	ll := netip.MustParseAddr("fe80::aaaa:bbbb:cccc:dddd")
	origin := netip.MustParseAddrPort("203.0.113.5:5000")
	for _, tc := range []struct {
		name string
		tr   proto.Trailers
		want []netip.AddrPort
	}{
		{"random port", proto.Trailers{HasRandomPort: true, RandomPort: 40006}, []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:40006"), origin}},
		{"same port", proto.Trailers{HasRandomPort: true, RandomPort: 5000}, []netip.AddrPort{origin}},
		{"port 0", proto.Trailers{HasRandomPort: true}, []netip.AddrPort{origin}},
		{"none", proto.Trailers{}, []netip.AddrPort{origin}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			tr := tc.tr
			tr.HasNonce, tr.Nonce = true, [4]byte{1, 2, 3, 4}
			h.c.Receive(indirectWithTrailer(ll, us, origin, tr.Append(nil)), ap(server1))
			b, other := bubbles(h.net.take())
			if len(other) != 0 || len(b) != len(tc.want) {
				t.Fatalf("answers %+v, other %+v", b, other)
			}
			for i, d := range b {
				if d.to != tc.want[i] || string(d.b) != string(b[0].b) {
					t.Fatalf("answer %d to %v, want %v (same bytes)", i, d.to, tc.want[i])
				}
				if got := trailerOf(t, d); !got.HasNonce || got.Nonce != tr.Nonce || got.HasRandomPort {
					t.Fatalf("answer trailer %+v", got)
				}
			}
			if n := h.c.Status().Counters.RandomPortAnswers; n != uint64(len(tc.want)-1) {
				t.Fatalf("RandomPortAnswers %d", n)
			}
		})
	}
	// The sender's plain indirect bubble comes first; the one with the
	// trailer, right after it, still gets its answer at the random port.
	h := newHarness(t, nil)
	us := h.qualify()
	h.c.Receive(indirectWithTrailer(ll, us, origin, nil), ap(server1))
	tr := proto.Trailers{HasRandomPort: true, RandomPort: 40006}
	h.c.Receive(indirectWithTrailer(ll, us, origin, tr.Append(nil)), ap(server1))
	b, _ := bubbles(h.net.take())
	if len(b) != 2 || b[0].to != origin || b[1].to != netip.MustParseAddrPort("203.0.113.5:40006") {
		t.Fatalf("answers %+v", b)
	}
}
