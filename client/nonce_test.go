package client

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/peer"
	"github.com/teredo-go/teredo/proto"
)

// trailerBytes returns what follows the IPv6 packet in a datagram the client
// sent.
func trailerBytes(t *testing.T, d sent) []byte {
	t.Helper()
	var p proto.Packet
	if err := p.Parse(d.b); err != nil {
		t.Fatal(err)
	}
	return p.Trailer
}

// ourBubbles makes the client bubble to dst and returns the direct and the
// indirect bubble.
func ourBubbles(t *testing.T, h *harness, us, dst netip.Addr) (direct, indirect sent) {
	t.Helper()
	h.c.Transmit([][]byte{ipPacket(us, dst, "x")})
	b, other := bubbles(h.net.take())
	if len(b) != 2 || len(other) != 0 {
		t.Fatalf("bubbles %+v, other %+v", b, other)
	}
	return b[0], b[1]
}

// TestNonceTrailerSent: the direct and the indirect bubble to a peer end in
// the same Nonce trailer (01 04 and four bytes); the nonce stays the same
// for the retries of a series and differs between peers.
func TestNonceTrailerSent(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.serve()
	direct, indirect := ourBubbles(t, h, us, peerAddr)
	tr := trailerBytes(t, direct)
	if len(tr) != 6 || tr[0] != 0x01 || tr[1] != 4 {
		t.Fatalf("direct bubble's trailer % x, want a Nonce trailer", tr)
	}
	if len(direct.b) != proto.IPv6HeaderLen+6 {
		t.Fatalf("direct bubble of %d bytes", len(direct.b))
	}
	// The indirect bubble carries an origin-free IPv6 bubble and the same
	// trailer (no Alternate Address trailer: the peer is behind another NAT).
	if got := trailerBytes(t, indirect); !bytes.Equal(got, tr) || indirect.to != ap(peerServer) {
		t.Fatalf("indirect bubble to %v, trailer % x, want % x", indirect.to, got, tr)
	}

	h.advance(retryDelay)
	retry, _ := bubbles(h.net.take())
	if len(retry) != 2 || !bytes.Equal(trailerBytes(t, retry[0]), tr) {
		t.Fatalf("retry %+v, want the nonce % x", retry, tr)
	}

	other := proto.Address{Server: peerServer, Mapped: netip.MustParseAddrPort("203.0.113.6:5000")}.Addr()
	d2, _ := ourBubbles(t, h, us, other)
	if bytes.Equal(trailerBytes(t, d2), tr) {
		t.Fatalf("two peers share the nonce % x", tr)
	}
}

// TestNonceTrailerWithAlternates: towards a peer behind our own public IPv4
// the indirect bubble carries the Nonce trailer, then the Alternate Address
// trailer; the direct bubble the nonce only.
func TestNonceTrailerWithAlternates(t *testing.T) {
	h := newHarness(t, withLocalAddrs(ourLAN))
	us := h.qualify()
	h.serve()
	direct, indirect := ourBubbles(t, h, us, samePeer)
	n := trailerBytes(t, direct)
	a := ourLAN.Addr().As4()
	want := append(append([]byte(nil), n...), 0x03, 8, 0, 0, a[0], a[1], a[2], a[3], byte(ourLAN.Port()>>8), byte(ourLAN.Port()))
	if got := trailerBytes(t, indirect); !bytes.Equal(got, want) {
		t.Fatalf("indirect bubble's trailer % x, want % x", got, want)
	}
}

// TestNonceEchoed: the answers to an indirect bubble (from our server) and to
// a direct bubble from a link-local source carry the bubble's nonce, byte for
// byte; a bubble without one, or with a malformed trailer, gets an answer
// without a trailer, as before RFC 6081.
func TestNonceEchoed(t *testing.T) {
	ll := netip.MustParseAddr("fe80::aaaa:bbbb:cccc:dddd")
	symmetric := netip.MustParseAddrPort("203.0.113.5:61000")
	nonce := []byte{0x01, 0x04, 0xde, 0xad, 0xbe, 0xef}
	for _, tc := range []struct {
		name    string
		trailer []byte
		want    []byte // the answer's trailer
		bad     uint64 // bad-trailer drops
	}{
		{"nonce", nonce, nonce, 0},
		{"unknown trailer first", append([]byte{0x02, 1, 9}, nonce...), nonce, 0},
		{"nonce and alternate address", append(append([]byte(nil), nonce...), 0x03, 8, 0, 0, 10, 0, 0, 1, 0x10, 0), nonce, 0},
		{"no trailer (Miredo)", nil, nil, 0},
		{"padding", []byte{0, 0}, nil, 0},
		{"nonce of the wrong length", []byte{0x01, 3, 1, 2, 3}, nil, 0},
		{"truncated nonce", []byte{0x01, 4, 1, 2}, nil, 0},
	} {
		t.Run("indirect/"+tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			h.c.Receive(indirectWithTrailer(ll, us, peerMapped, tc.trailer), ap(server1))
			b, other := bubbles(h.net.take())
			if len(b) != 1 || len(other) != 0 || b[0].to != peerMapped {
				t.Fatalf("answers %+v, other %+v", b, other)
			}
			want := append(proto.AppendBubble(nil, us, ll, 0), tc.want...)
			if !bytes.Equal(b[0].b, want) {
				t.Fatalf("answer\n% x\nwant\n% x", b[0].b, want)
			}
		})
		t.Run("direct/"+tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			h.c.Receive(append(proto.AppendBubble(nil, ll, us, 0), tc.trailer...), symmetric)
			b, other := bubbles(h.net.take())
			if len(b) != 1 || len(other) != 0 || b[0].to != symmetric {
				t.Fatalf("answers %+v, other %+v", b, other)
			}
			want := append(proto.AppendBubble(nil, us, ll, 0), tc.want...)
			if !bytes.Equal(b[0].b, want) {
				t.Fatalf("answer\n% x\nwant\n% x", b[0].b, want)
			}
		})
	}
}

// TestNonceVerified: a bubble from the peer that only the answer to our
// bubbles explains (to our HMAC bubble source, or to our address from
// another mapping than the peer's address names) is judged by its nonce when
// it has one: ours makes the peer trusted at the bubble's source and flushes
// the queue there; another is dropped and counted. Without a trailer the old
// rules decide (Miredo). A bubble from the peer's own mapping is accepted
// whatever its nonce (RFC 4380).
func TestNonceVerified(t *testing.T) {
	symmetric := netip.MustParseAddrPort("203.0.113.5:61000") // the peer's mapping towards us
	otherNonce := []byte{0x01, 4, 1, 2, 3, 4}
	for _, tc := range []struct {
		name    string
		toUs    bool // to our Teredo address, else to our bubble source
		from    netip.AddrPort
		trailer func(ours []byte) []byte
		flushTo netip.AddrPort // where the queued packet goes; zero: nowhere
		drop    string
	}{
		{"bubble source, our nonce", false, symmetric, func(o []byte) []byte { return o }, symmetric, ""},
		{"bubble source, other nonce", false, symmetric, func([]byte) []byte { return otherNonce }, netip.AddrPort{}, "bubble-nonce"},
		{"bubble source, no trailer (Miredo)", false, symmetric, func([]byte) []byte { return nil }, symmetric, ""},
		{"bubble source, malformed trailer", false, symmetric, func([]byte) []byte { return []byte{0x01, 9} }, symmetric, ""},
		{"our address from another mapping, our nonce", true, symmetric, func(o []byte) []byte { return o }, symmetric, ""},
		{"our address from another mapping, other nonce", true, symmetric, func([]byte) []byte { return otherNonce }, netip.AddrPort{}, "bubble-nonce"},
		{"our address from another mapping, no trailer", true, symmetric, func([]byte) []byte { return nil }, netip.AddrPort{}, "unverified-bubble"},
		{"our address from the peer's mapping, other nonce", true, peerMapped, func([]byte) []byte { return otherNonce }, peerMapped, ""},
		{"our address from the peer's mapping, our nonce", true, peerMapped, func(o []byte) []byte { return o }, peerMapped, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			h.serve()
			direct, _ := ourBubbles(t, h, us, peerAddr)
			ours := trailerBytes(t, direct)
			src, _, _ := bubbleInfo(t, direct)
			dst := src
			if tc.toUs {
				dst = us
			}
			h.c.Receive(append(proto.AppendBubble(nil, peerAddr, dst, 0), tc.trailer(ours)...), tc.from)
			ds := h.net.take()
			if !tc.flushTo.IsValid() {
				if len(ds) != 0 || h.c.PeerState(peerAddr) == peer.Reachable {
					t.Fatalf("sent %+v, peer %v", ds, h.c.PeerState(peerAddr))
				}
			} else if len(ds) != 1 || ds[0].to != tc.flushTo || !bytes.Equal(ds[0].b, ipPacket(us, peerAddr, "x")) {
				t.Fatalf("sent %+v, want the queued packet to %v", ds, tc.flushTo)
			}
			if tc.drop != "" && h.drops(tc.drop) != 1 {
				t.Fatalf("drops %v, want one %s", h.c.Status().Counters.Drops, tc.drop)
			}
			if tc.drop == "" && len(h.c.Status().Counters.Drops) != 0 {
				t.Fatalf("drops %v", h.c.Status().Counters.Drops)
			}
		})
	}
}

// TestNonceNewAddress: a new qualification (another mapping, so another
// Teredo address) changes the nonce, so answers to the old bubbles are stale.
func TestNonceNewAddress(t *testing.T) {
	h := newHarness(t, nil)
	us := h.qualify()
	h.serve()
	d1, _ := ourBubbles(t, h, us, peerAddr)
	l := h.c.up.Load()
	n1 := h.c.bubbleNonce(l.addr, peerAddr.As16())
	if !bytes.Equal(trailerBytes(t, d1), appendNonce(nil, n1)) {
		t.Fatalf("trailer % x, want % x", trailerBytes(t, d1), appendNonce(nil, n1))
	}
	other := proto.Address{Server: server1, Mapped: mappedUs2}.Addr().As16()
	if h.c.bubbleNonce(other, peerAddr.As16()) == n1 {
		t.Fatal("the nonce does not depend on our address")
	}
}
