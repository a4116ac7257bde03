package proto

import (
	"net/netip"
	"testing"
)

func TestRAPublicPrefix(t *testing.T) {
	params := RAParams{
		Nonce:  [8]byte{1, 2, 3, 4, 5, 6, 7, 8},
		Server: netip.MustParseAddr("198.18.0.1"),
		Client: netip.MustParseAddrPort("198.18.1.10:40000"),
		Dst:    RSSourceRestricted,
		MTU:    1280,
	}
	for _, tt := range []struct {
		name   string
		public netip.Prefix
		want   netip.Prefix
	}{
		{"none", netip.Prefix{}, netip.Prefix{}},
		{"operator /64", netip.MustParsePrefix("2001:db8:2::/64"), netip.MustParsePrefix("2001:db8:2::/64")},
		{"not a /64 is ignored", netip.MustParsePrefix("2001:db8:2::/48"), netip.Prefix{}},
		{"Teredo is ignored", netip.MustParsePrefix("2001:0:1:2::/64"), netip.Prefix{}},
		{"link-local is ignored", netip.MustParsePrefix("fe80::/64"), netip.Prefix{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := params
			p.Public = tt.public
			var pkt Packet
			if err := pkt.Parse(AppendRA(nil, &p)); err != nil {
				t.Fatal(err)
			}
			ra, err := ParseRA(&pkt)
			if err != nil {
				t.Fatal(err)
			}
			if ra.Public != tt.want || ra.Server != params.Server || ra.MTU != 1280 {
				t.Fatalf("RA %+v, want public %v", ra, tt.want)
			}
		})
	}
}
