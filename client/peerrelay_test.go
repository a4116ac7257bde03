package client

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// qualifyNAT qualifies the client with the NAT probe seeing mappedUs2
// (symmetric) or mappedUs again (restricted).
func (h *harness) qualifyNAT(symmetric bool) netip.Addr {
	h.t.Helper()
	if err := h.c.Start(); err != nil {
		h.t.Fatal(err)
	}
	r := h.takeRS()
	h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
	probe := h.takeRS()
	m := mappedUs
	want := NATRestricted
	if symmetric {
		m, want = mappedUs2, NATSymmetric
	}
	h.c.Receive(ra(probe[0], server1, m, 0), ap(server1b))
	if st := h.c.Status(); st.NAT != want {
		h.t.Fatalf("NAT %v, want %v", st.NAT, want)
	}
	h.takeEvents()
	us, _ := h.c.Addr()
	return us
}

// proveNativeRelay runs a native echo test that relay answers.
func (h *harness) proveNativeRelay(us netip.Addr, relay netip.AddrPort) {
	h.t.Helper()
	h.c.Transmit([][]byte{ipPacket(us, nativeDst, "native")})
	ds := h.net.take()
	if len(ds) != 1 {
		h.t.Fatalf("echo test: %+v", ds)
	}
	_, _, _, body := echoRequest(h.t, ds[0])
	h.c.Receive(echoReply(nativeDst, us, body), relay)
	h.net.take() // the flushed packet
}

// TestPeerRelayFallback: a Teredo peer whose direct bubbles go unanswered is
// moved to the relay (after 4 bubbles, 2 behind a symmetric NAT), its queue
// goes there and so does every later packet; without a relay, or with
// PeerRelay off, the peer is unreachable as RFC 4380 says.
func TestPeerRelayFallback(t *testing.T) {
	for _, tt := range []struct {
		name      string
		peerRelay bool
		fixed     netip.AddrPort
		native    netip.AddrPort // a relay a native echo test proves first
		symmetric bool
		want      netip.AddrPort // the relay the packets go to; invalid: unreachable
		after     time.Duration  // when
	}{
		{"fixed relay", true, relayAP, netip.AddrPort{}, false, relayAP, 4 * retryDelay},
		{"fixed relay, symmetric NAT", true, relayAP, netip.AddrPort{}, true, relayAP, 2 * retryDelay},
		{"native relay", true, netip.AddrPort{}, relay2AP, true, relay2AP, 2 * retryDelay},
		{"no relay", true, netip.AddrPort{}, netip.AddrPort{}, true, netip.AddrPort{}, 4 * retryDelay},
		{"off", false, relayAP, netip.AddrPort{}, true, netip.AddrPort{}, 4 * retryDelay},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.PeerRelay, c.FixedRelay = tt.peerRelay, tt.fixed })
			us := h.qualifyNAT(tt.symmetric)
			h.serve()
			if tt.native.IsValid() {
				h.proveNativeRelay(us, tt.native)
			}
			pkt := ipPacket(us, peerAddr, "to the peer")
			if _, ok := h.c.Transmit([][]byte{pkt}); ok {
				t.Fatal("untrusted peer on the fast path")
			}
			var elapsed time.Duration
			for {
				b, other := bubbles(h.net.take())
				if len(other) > 0 {
					if !tt.want.IsValid() || len(other) != 1 || other[0].to != tt.want || !bytes.Equal(other[0].b, pkt) {
						t.Fatalf("after %v: sent %+v", elapsed, other)
					}
					if len(b) != 0 || elapsed != tt.after {
						t.Fatalf("moved to the relay after %v with %d bubbles, want after %v", elapsed, len(b), tt.after)
					}
					break
				}
				if elapsed > tt.after {
					break
				}
				if elapsed < tt.after && len(b) != 2 {
					t.Fatalf("after %v: %d bubbles", elapsed, len(b))
				}
				h.advance(retryDelay)
				elapsed += retryDelay
			}
			st := h.c.Status().Counters
			if !tt.want.IsValid() {
				d := h.takeDelivered()
				if len(d) != 1 || st.PeerRelayFallbacks != 0 {
					t.Fatalf("delivered %d ICMPv6 errors, %d fallbacks", len(d), st.PeerRelayFallbacks)
				}
				if typ, _, _ := icmpErr(t, d[0]); typ != proto.ICMPDestUnreachable {
					t.Fatalf("ICMPv6 type %d", typ)
				}
				return
			}
			if st.PeerRelayFallbacks != 1 || st.TxFlushed == 0 {
				t.Fatalf("counters %+v", st)
			}
			// Later packets go to the relay at once, and an idle peer stays
			// there.
			for _, wait := range []time.Duration{0, time.Minute} {
				h.advance(wait)
				to, ok := h.c.Transmit([][]byte{pkt})
				if !ok || to != tt.want {
					t.Fatalf("after %v: Transmit = %v, %v", wait, to, ok)
				}
			}
			if b, _ := bubbles(h.net.take()); len(b) != 0 {
				t.Fatalf("bubbles to a relayed peer: %+v", b)
			}
			if st := h.c.Status().Counters; st.PeerRelayTx != 2 {
				t.Fatalf("PeerRelayTx %d", st.PeerRelayTx)
			}
		})
	}
}

// relayedEcho is what holdRelayed sent: the echo request to the peer, which
// must go through the peer's server, and the bubbles.
func relayedEcho(t *testing.T, ds []sent) (body []byte, bubbleCount int) {
	t.Helper()
	b, other := bubbles(ds)
	if len(other) != 1 || other[0].to != ap(peerServer) {
		t.Fatalf("want one echo request to the peer's server, got %+v", other)
	}
	_, dst, _, body := echoRequest(t, other[0])
	if dst != peerAddr {
		t.Fatalf("echo request to %v", dst)
	}
	return body, len(b)
}

// TestPeerRelayHeldUntilEcho: a packet from a Teredo peer that comes from a
// relay's endpoint is held while an echo request goes to the peer through its
// server; a reply through that relay delivers it and trusts the peer there;
// a reply from elsewhere or with another nonce does not, and nothing is
// delivered when no reply comes.
func TestPeerRelayHeldUntilEcho(t *testing.T) {
	for _, tt := range []struct {
		name    string
		replyBy netip.AddrPort
		forge   bool // the reply carries a made-up nonce
		deliver bool
	}{
		{"reply through the relay", relay2AP, false, true},
		{"reply from another endpoint", relayAP, false, false},
		{"forged nonce", relay2AP, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.PeerRelay = true })
			us := h.qualify()
			h.serve()
			in := ipPacket(peerAddr, us, "through a relay")
			if h.c.Receive(in, relay2AP) != nil {
				t.Fatal("relayed Teredo source delivered at once")
			}
			body, nb := relayedEcho(t, h.net.take())
			if nb != 2 {
				t.Fatalf("%d bubbles: the direct path is tried too", nb)
			}
			if tt.forge {
				body = append([]byte(nil), body...)
				body[len(body)-1] ^= 1
			}
			if h.c.Receive(echoReply(peerAddr, us, body), tt.replyBy) != nil {
				t.Fatal("echo reply delivered")
			}
			d := h.takeDelivered()
			if tt.deliver != (len(d) == 1) {
				t.Fatalf("held packet delivered: %d", len(d))
			}
			st := h.c.Status().Counters
			if tt.forge {
				if st.PeerRelayProved != 0 || len(st.Drops) != 0 {
					t.Fatalf("a forged reply proved something: %+v", st)
				}
				return
			}
			if !tt.deliver {
				// The reply proved the other endpoint, which carries the
				// peer now; the packet held from relay2AP is refused.
				if st.PeerRelayProved != 1 || h.drops("unverified-source") != 1 {
					t.Fatalf("counters %+v", st)
				}
				if to, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "answer")}); !ok || to != tt.replyBy {
					t.Fatalf("answer to %v, %v", to, ok)
				}
				return
			}
			if !bytes.Equal(d[0], in) || st.PeerRelayProved != 1 || st.RxHeldDelivered != 1 {
				t.Fatalf("delivered %x, counters %+v", d[0], st)
			}
			// Case 1 from the relay, and the answers go back through it.
			if got := h.c.Receive(in, relay2AP); !bytes.Equal(got, in) {
				t.Fatal("not case 1 after the echo test")
			}
			if to, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "answer")}); !ok || to != relay2AP {
				t.Fatalf("answer to %v, %v", to, ok)
			}
			// Once idle past its validity, the peer is still sent to through
			// the relay it proved, with no bubbles.
			h.advance(time.Minute)
			h.net.take()
			if to, ok := h.c.Transmit([][]byte{ipPacket(us, peerAddr, "later")}); !ok || to != relay2AP {
				t.Fatalf("later to %v, %v", to, ok)
			}
		})
	}
	t.Run("no reply", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.PeerRelay = true })
		us := h.qualify()
		h.c.Receive(ipPacket(peerAddr, us, "through a relay"), relay2AP)
		echoes := 0
		for range 6 {
			for _, d := range h.net.take() {
				var p proto.Packet
				if p.Parse(d.b) == nil && !proto.IsBubble(p.IPv6) {
					echoes++
				}
			}
			h.advance(retryDelay)
		}
		if echoes != 4 {
			t.Fatalf("%d echo requests, want 4", echoes)
		}
		if len(h.takeDelivered()) != 0 || h.drops("unverified-source") != 1 {
			t.Fatalf("delivered or not dropped: %v", h.c.Status().Counters.Drops)
		}
		// Within the echo series' window, more packets are refused at once.
		h.c.Receive(ipPacket(peerAddr, us, "again"), relay2AP)
		if ds := h.net.take(); len(ds) != 0 || h.drops("unverified-source") != 2 {
			t.Fatalf("sent %+v, drops %v", ds, h.c.Status().Counters.Drops)
		}
	})
	t.Run("off: bubbles only", func(t *testing.T) {
		h := newHarness(t, nil)
		us := h.qualify()
		h.c.Receive(ipPacket(peerAddr, us, "through a relay"), relay2AP)
		if b, other := bubbles(h.net.take()); len(b) != 2 || len(other) != 0 {
			t.Fatalf("bubbles %+v, other %+v", b, other)
		}
	})
	t.Run("peer's own address keeps the bubble test", func(t *testing.T) {
		// From the peer's public IPv4 on another port: a peer behind a
		// symmetric NAT (symmetric.go), not a relay.
		h := newHarness(t, func(c *Config) { c.PeerRelay = true })
		us := h.qualify()
		h.c.Receive(ipPacket(peerAddr, us, "symmetric peer"), netip.AddrPortFrom(peerMapped.Addr(), 6000))
		if b, other := bubbles(h.net.take()); len(b) != 2 || len(other) != 0 {
			t.Fatalf("bubbles %+v, other %+v", b, other)
		}
	})
	t.Run("echo tests are rate limited", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.PeerRelay = true; c.InboundEchoBurst = 3; c.InboundEchoRate = 1 })
		us := h.qualify()
		for i := range 20 {
			src := proto.Address{Server: peerServer, Mapped: netip.AddrPortFrom(peerMapped.Addr(), uint16(7000+i))}.Addr()
			h.c.Receive(ipPacket(src, us, "spoofed"), relay2AP)
		}
		echoes := 0
		for _, d := range h.net.take() {
			var p proto.Packet
			if p.Parse(d.b) == nil && !proto.IsBubble(p.IPv6) {
				echoes++
			}
		}
		if echoes != 3 || h.drops("echo-rate-limit") != 17 {
			t.Fatalf("%d echo requests, drops %v", echoes, h.c.Status().Counters.Drops)
		}
	})
}

// TestPeerRelayServerEcho: an echo request relayed by our server is delivered
// only with PeerRelay, when its origin indication is the mapping in its
// Teredo source.
func TestPeerRelayServerEcho(t *testing.T) {
	echoReq := func(src, dst netip.Addr, typ, code uint8) []byte {
		b := proto.AppendEcho(nil, src, dst, 64, typ, 1, 2, []byte("12345678"))
		b[proto.IPv6HeaderLen+1] = code
		return b
	}
	other := proto.Address{Server: peerServer, Mapped: netip.MustParseAddrPort("203.0.113.6:5000")}.Addr()
	for _, tt := range []struct {
		name      string
		peerRelay bool
		origin    netip.AddrPort
		src       netip.Addr
		from      netip.AddrPort
		typ, code uint8
		want      bool
	}{
		{"delivered", true, peerMapped, peerAddr, ap(server1), proto.ICMPEchoRequest, 0, true},
		{"off", false, peerMapped, peerAddr, ap(server1), proto.ICMPEchoRequest, 0, false},
		{"origin is not the source's mapping", true, peerMapped, other, ap(server1), proto.ICMPEchoRequest, 0, false},
		{"another port", true, netip.AddrPortFrom(peerMapped.Addr(), 5001), peerAddr, ap(server1), proto.ICMPEchoRequest, 0, false},
		{"not from our server", true, peerMapped, peerAddr, ap(peerServer), proto.ICMPEchoRequest, 0, false},
		{"echo reply", true, peerMapped, peerAddr, ap(server1), proto.ICMPEchoReply, 0, false},
		{"bad code", true, peerMapped, peerAddr, ap(server1), proto.ICMPEchoRequest, 1, false},
		{"native source", true, peerMapped, nativeDst, ap(server1), proto.ICMPEchoRequest, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.PeerRelay = tt.peerRelay })
			us := h.qualify()
			ip := echoReq(tt.src, us, tt.typ, tt.code)
			b := append(proto.AppendOrigin(nil, tt.origin), ip...)
			got := h.c.Receive(b, tt.from)
			if tt.want != bytes.Equal(got, ip) {
				t.Fatalf("delivered %x", got)
			}
			if n := h.c.Status().Counters.PeerRelayServerEchoes; (n == 1) != tt.want {
				t.Fatalf("PeerRelayServerEchoes %d", n)
			}
		})
	}
}

// TestPeerRelayNativeRelayFresh: the relay of a native echo test serves Teredo
// peers for nativeRelayFresh only.
func TestPeerRelayNativeRelayFresh(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PeerRelay = true })
	us := h.qualify()
	h.serve()
	if r := h.c.teredoRelay(h.clk.Now()); r.IsValid() {
		t.Fatalf("relay %v before any echo test", r)
	}
	h.proveNativeRelay(us, relay2AP)
	if r := h.c.teredoRelay(h.clk.Now()); r != relay2AP {
		t.Fatalf("relay %v", r)
	}
	h.advance(nativeRelayFresh)
	if r := h.c.teredoRelay(h.clk.Now()); r.IsValid() {
		t.Fatalf("relay %v after %v", r, nativeRelayFresh)
	}
}
