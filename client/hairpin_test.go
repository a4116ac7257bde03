package client

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/teredo-go/teredo/proto"
)

var (
	// samePeer is a Teredo peer behind our own public IPv4 (mappedUs).
	samePeerMapped = netip.AddrPortFrom(mappedUs.Addr(), 6000)
	samePeer       = proto.Address{Server: server1, Mapped: samePeerMapped}.Addr()
	ourLAN         = netip.MustParseAddrPort("192.168.1.2:40000")
	peerLAN        = netip.MustParseAddrPort("192.168.1.3:41000")
)

func withLocalAddrs(addrs ...netip.AddrPort) func(*Config) {
	return func(c *Config) { c.LocalAddrs = func() []netip.AddrPort { return addrs } }
}

// trailerOf parses the trailer of a datagram the client sent.
func trailerOf(t *testing.T, d sent) proto.Trailers {
	t.Helper()
	var p proto.Packet
	if err := p.Parse(d.b); err != nil {
		t.Fatal(err)
	}
	tr, err := proto.ParseTrailers(p.Trailer)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestAlternateAddressTrailerSent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peer  netip.Addr
		addrs []netip.AddrPort
		want  []netip.AddrPort
	}{
		{"same NAT", samePeer, []netip.AddrPort{ourLAN}, []netip.AddrPort{ourLAN}},
		{"other NAT", peerAddr, []netip.AddrPort{ourLAN}, nil},
		{"filtered and capped", samePeer, []netip.AddrPort{
			netip.MustParseAddrPort("0.0.0.0:40000"), netip.MustParseAddrPort("127.0.0.1:40000"),
			netip.MustParseAddrPort("[::1]:40000"), netip.MustParseAddrPort("10.0.0.1:0"),
			netip.MustParseAddrPort("[::ffff:10.0.0.2]:40000"), ourLAN,
			netip.MustParseAddrPort("10.0.0.3:40000"), netip.MustParseAddrPort("10.0.0.4:40000"),
			netip.MustParseAddrPort("10.0.0.5:40000"),
		}, []netip.AddrPort{
			netip.MustParseAddrPort("10.0.0.2:40000"), ourLAN,
			netip.MustParseAddrPort("10.0.0.3:40000"), netip.MustParseAddrPort("10.0.0.4:40000"),
		}},
		{"nothing usable", samePeer, []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:40000")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, withLocalAddrs(tc.addrs...))
			us := h.qualify()
			h.serve()
			h.c.Transmit([][]byte{ipPacket(us, tc.peer, "x")})
			b, _ := bubbles(h.net.take())
			if len(b) != 2 {
				t.Fatalf("%d bubbles", len(b))
			}
			if tr := trailerOf(t, b[0]); tr.NumAltAddresses != 0 {
				t.Fatalf("direct bubble with alternate addresses %v", tr.AltAddresses)
			}
			tr := trailerOf(t, b[1])
			got := tr.AltAddresses[:tr.NumAltAddresses]
			if len(got) != len(tc.want) {
				t.Fatalf("indirect bubble's alternate addresses %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("indirect bubble's alternate addresses %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// indirectWithTrailer is an indirect bubble from the source ll relayed by
// our server with an origin indication and the trailer tr.
func indirectWithTrailer(ll, us netip.Addr, origin netip.AddrPort, tr []byte) []byte {
	b := proto.AppendOrigin(nil, origin)
	b = proto.AppendBubble(b, ll, us, 0)
	return append(b, tr...)
}

func TestAlternateAddressAnswered(t *testing.T) {
	ll := netip.MustParseAddr("fe80::aaaa:bbbb:cccc:dddd")
	public := netip.MustParseAddrPort("198.51.100.50:7000")
	var tr proto.Trailers
	tr.NumAltAddresses = 2
	tr.AltAddresses[0], tr.AltAddresses[1] = peerLAN, public
	good := tr.Append(nil)
	for _, tc := range []struct {
		name    string
		origin  netip.AddrPort
		trailer []byte
		want    []netip.AddrPort // where the answers go
		drops   uint64           // bad-trailer
	}{
		{"same NAT", samePeerMapped, good, []netip.AddrPort{samePeerMapped, peerLAN}, 0},
		{"other NAT", peerMapped, good, []netip.AddrPort{peerMapped}, 0},
		{"malformed trailer", samePeerMapped, []byte{proto.TrailerAltAddress, 7, 0, 0, 1, 2, 3, 4, 5}, []netip.AddrPort{samePeerMapped}, 1},
		{"no trailer", samePeerMapped, nil, []netip.AddrPort{samePeerMapped}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			us := h.qualify()
			// Our clients' bubbles come from their HMAC link-local address:
			// the origin indication tells where the peer is.
			h.c.Receive(indirectWithTrailer(ll, us, tc.origin, tc.trailer), ap(server1))
			b, other := bubbles(h.net.take())
			if len(other) != 0 || len(b) != len(tc.want) {
				t.Fatalf("answers %+v, other %+v", b, other)
			}
			for i, d := range b {
				if _, dst, _ := bubbleInfo(t, d); dst != ll {
					t.Fatalf("answer to %v, want the peer's link-local %v", dst, ll)
				}
				if d.to != tc.want[i] {
					t.Fatalf("answer %d to %v, want %v", i, d.to, tc.want[i])
				}
				if !bytes.Equal(d.b, b[0].b) {
					t.Fatal("answers differ")
				}
			}
			if n := h.drops("bad-trailer"); n != tc.drops {
				t.Fatalf("bad-trailer drops %d, want %d", n, tc.drops)
			}
		})
	}
}

// TestAlternateAddressVerified checks that a bubble answer from a LAN
// endpoint makes a peer behind our public IPv4 trusted there, flushing our
// queue to it, and that the same answer from a peer behind another NAT does
// not.
func TestAlternateAddressVerified(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peer  netip.Addr
		trust bool
	}{
		{"same NAT", samePeer, true},
		{"other NAT", peerAddr, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, withLocalAddrs(ourLAN))
			us := h.qualify()
			h.serve()
			pkt := ipPacket(us, tc.peer, "queued")
			h.c.Transmit([][]byte{pkt})
			h.net.take()
			answer := proto.AppendBubble(nil, tc.peer, h.c.bubbleSource(tc.peer.As16()), 0)
			h.c.Receive(answer, peerLAN)
			out := h.net.take()
			if !tc.trust {
				if len(out) != 0 || h.drops("non-global-ipv4") != 1 {
					t.Fatalf("sent %+v, drops %v", out, h.c.Status().Counters.Drops)
				}
				return
			}
			if len(out) != 1 || out[0].to != peerLAN || !bytes.Equal(out[0].b, pkt) {
				t.Fatalf("queue not flushed to the LAN endpoint: %+v", out)
			}
			if dst, ok := h.c.Transmit([][]byte{pkt}); !ok || dst != peerLAN {
				t.Fatalf("fast path to %v %v, want %v", dst, ok, peerLAN)
			}
		})
	}
}
