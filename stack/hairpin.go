package stack

import (
	"net"
	"net/netip"

	"github.com/teredo-go/teredo/proto"
)

// localAddrs returns the client's source of local endpoints for RFC 6081's
// hairpinning extension, or nil when Config.NoHairpinning turns it off: the
// socket's own address if it is bound to one, else the IPv4 addresses of
// the host's interfaces that are up (loopback excepted), with the socket's
// port. They are read when a bubble needs them, so they follow DHCP.
func (s *Stack) localAddrs() func() []netip.AddrPort {
	if s.cfg.NoHairpinning {
		return nil
	}
	return func() []netip.AddrPort {
		la := s.conn.LocalAddr()
		if la.Port() == 0 {
			return nil
		}
		if !la.Addr().IsUnspecified() {
			return []netip.AddrPort{la}
		}
		ifs, err := net.Interfaces()
		if err != nil {
			return nil
		}
		var out []netip.AddrPort
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, err := ifi.Addrs()
			if err != nil {
				continue
			}
			for _, a := range addrs {
				pfx, ok := a.(*net.IPNet)
				if !ok {
					continue
				}
				ip, ok := netip.AddrFromSlice(pfx.IP)
				if ip = ip.Unmap(); !ok || !ip.Is4() || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
					continue
				}
				out = append(out, netip.AddrPortFrom(ip, la.Port()))
				if len(out) == proto.MaxAltAddresses {
					return out
				}
			}
		}
		return out
	}
}
