package client

import (
	"github.com/teredo-go/teredo/proto"
	"net/netip"
	"testing"
)

// TestSecondaryPort classifies the NAT against a single-address server
// whose secondary role is on another port of its primary address.
func TestSecondaryPort(t *testing.T) {
	sec := netip.AddrPortFrom(server1, 3545)
	for _, tt := range []struct {
		name   string
		mapped netip.AddrPort
		want   NATType
	}{
		{"restricted", mappedUs, NATRestricted},
		{"symmetric", mappedUs2, NATSymmetric},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.SecondaryPort = sec.Port()
			})
			h.c.Start()
			r := h.takeRS()
			h.c.Receive(ra(r[0], server1, mappedUs, 0), ap(server1))
			h.takeEvents()
			p := h.takeRS()
			if len(p) != 1 || p[0].to != sec || p[0].cone {
				t.Fatalf("secondary probe %+v, want a restricted RS to %v", p, sec)
			}
			// An RA from the primary port does not answer the probe.
			h.c.Receive(ra(p[0], server1, tt.mapped, 0), ap(server1))
			if st := h.c.Status(); st.NAT != NATUnknown {
				t.Fatalf("NAT %v after an RA from the wrong port", st.NAT)
			}
			h.c.Receive(ra(p[0], server1, tt.mapped, 0), sec)
			if st := h.c.Status(); st.NAT != tt.want || st.State != StateQualified {
				t.Fatalf("status %+v, want NAT %v", st, tt.want)
			}
		})
	}
}

// TestPublicAddr qualifies with a gateway that announces its public
// prefix: the client reports its public address, and a refresh that
// drops the prefix clears it.
func TestPublicAddr(t *testing.T) {
	pub := netip.MustParsePrefix("2001:db8:2::/64")
	h := newHarness(t, nil)
	h.c.Start()
	r := h.takeRS()
	h.c.Receive(proto.AppendRA(nil, &proto.RAParams{Nonce: r[0].nonce, Server: server1, Client: mappedUs, Dst: r[0].src, Public: pub}), ap(server1))
	st := h.c.Status()
	if st.State != StateQualified {
		t.Fatalf("status %+v", st)
	}
	a, p := st.Addr.As16(), st.PublicAddr.As16()
	if !pub.Contains(st.PublicAddr) || [8]byte(a[8:]) != [8]byte(p[8:]) {
		t.Fatalf("public address %v for %v, want %v with its interface identifier", st.PublicAddr, st.Addr, pub)
	}
	ev := h.takeEvents()
	if len(ev) != 1 || ev[0].(Qualified).Public != st.PublicAddr {
		t.Fatalf("events %v", ev)
	}
	h.takeRS() // the NAT probe
	h.advance(RefreshInterval)
	r = h.takeRS()
	if len(r) == 0 {
		t.Fatal("no refresh RS")
	}
	h.c.Receive(ra(r[len(r)-1], server1, mappedUs, 0), ap(server1))
	if st := h.c.Status(); st.PublicAddr.IsValid() || st.State != StateQualified {
		t.Fatalf("after an RA without the prefix: %+v", st)
	}
}
