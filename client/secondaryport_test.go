package client

import (
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
