package lab

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// TestClientQualifies has the project's client qualify behind every NAT kind with
// both servers, and checks the NAT type it reports and that its Teredo address
// carries the mapping conntrack shows.
func TestClientQualifies(t *testing.T) {
	cases := []struct {
		name, client string
		cone         bool
		want         string
	}{
		{"a", "a1", false, "restricted"},
		{"b", "b", false, "restricted"},
		{"c", "c", false, "symmetric"},
		{"d-cone-probe", "d", true, "cone"},
		{"d", "d", false, "restricted"},
	}
	for _, impl := range serverImpls {
		t.Run(impl.name, func(t *testing.T) {
			impl.require(t)
			l := New(t, Options{
				Clients:  []ClientSpec{{"a1", HomeRouter}, {"b", OpenMasquerade}, {"c", Symmetric}, {"d", FullCone}},
				NoRelay:  true,
				NoV6Host: true,
			})
			srv := impl.start(t, l)
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					h := l.Clients[tc.client]
					// Each case starts from a NAT without state, as a fresh client would.
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					if err := h.NAT.FlushConntrack(ctx); err != nil {
						t.Fatal(err)
					}
					p := startProbe(t, h, srv, probeOptions{ConeProbe: tc.cone})
					defer p.Proc.Stop(stopGrace)
					st := p.waitNAT(t, 15*time.Second)
					if st.NAT != tc.want {
						t.Errorf("%s NAT (cone probe %v) classified %q, want %q", h.NAT.Kind, tc.cone, st.NAT, tc.want)
					}
					if st.State != "qualified" || st.Addr != p.Addr {
						t.Errorf("status %s with address %v, want qualified with %v", st.State, st.Addr, p.Addr)
					}
					checkMapping(t, ctx, h, srv, p)
				})
			}
		})
	}
}

// checkMapping compares our client's Teredo address with the NAT's real mapping.
func checkMapping(t *testing.T, ctx context.Context, h *Host, srv *TeredoServer, p *probeClient) {
	t.Helper()
	if p.Teredo.Server != srv.Primary {
		t.Errorf("Teredo address %v names server %v, want %v", p.Addr, p.Teredo.Server, srv.Primary)
	}
	flows, err := h.NAT.ClientFlows(ctx, netip.AddrPortFrom(h.IPv4[0], p.Local.Port()), netip.AddrPortFrom(srv.Primary, proto.Port))
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("want exactly one conntrack flow from %v:%d to %v:%d, got %+v", h.IPv4[0], p.Local.Port(), srv.Primary, proto.Port, flows)
	}
	if got, want := p.Teredo.Mapped, flows[0].Mapped(); got != want {
		t.Errorf("Teredo address %v carries mapping %v; the NAT assigned %v", p.Addr, got, want)
	}
	if p.Teredo.Mapped.Addr() != h.NAT.WAN {
		t.Errorf("mapped address %v is not the NAT's WAN address %v", p.Teredo.Mapped.Addr(), h.NAT.WAN)
	}
	if h.NAT.Kind == FullCone && p.Teredo.Mapped.Port() != h.NAT.ConePort {
		t.Errorf("full-cone mapping %v does not use the cone port %d", p.Teredo.Mapped, h.NAT.ConePort)
	}
}
