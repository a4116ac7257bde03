package proto

import "net/netip"

// IPv4Filter decides whether an IPv4 address may be used as a Teredo server
// or mapped address. Roles take one as configuration so that tests on
// loopback can relax the RFC's rule with AnyIPv4.
type IPv4Filter func(netip.Addr) bool

// IsGlobalUnicastIPv4 implements the "global unicast" rule of RFC 4380
// §5.2.4: every IPv4 address except 0/8, 10/8, 127/8, 169.254/16,
// 172.16/12, 192.168/16, 192.88.99/24 (6to4 anycast), 224/4 and the limited
// broadcast. As in Miredo, 240/4 is allowed and directed broadcasts, which
// depend on attached subnets, are not checked. 198.18.0.0/15 counts as
// global, which the lab relies on.
func IsGlobalUnicastIPv4(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	switch {
	case b[0] == 0, b[0] == 10, b[0] == 127:
		return false
	case b[0] == 169 && b[1] == 254:
		return false
	case b[0] == 172 && b[1]&0xf0 == 16:
		return false
	case b[0] == 192 && b[1] == 168:
		return false
	case b[0] == 192 && b[1] == 88 && b[2] == 99:
		return false
	case b[0]&0xf0 == 224:
		return false
	case b == [4]byte{255, 255, 255, 255}:
		return false
	}
	return true
}

// AnyIPv4 accepts every IPv4 address except the unspecified one; it is the
// switch that turns the global-unicast rule off for tests on loopback.
func AnyIPv4(a netip.Addr) bool { return a.Is4() && !a.IsUnspecified() }
