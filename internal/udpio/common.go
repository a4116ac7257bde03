package udpio

import (
	"fmt"
	"net"
	"net/netip"
)

// listenAddr validates the local address for Listen; the zero AddrPort
// means any IPv4 address and an ephemeral port.
func listenAddr(laddr netip.AddrPort) (netip.AddrPort, error) {
	if !laddr.Addr().IsValid() {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), laddr.Port()), nil
	}
	la, ok := ipv4(laddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("udpio: listen %v: %w", laddr, ErrNotIPv4)
	}
	return la, nil
}

func localAddrPort(pc *net.UDPConn) netip.AddrPort {
	ua, ok := pc.LocalAddr().(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap, _ := ipv4(ua.AddrPort())
	return ap
}

// opError wraps err the way package net does, so callers can use
// errors.Is and errors.As as they would with a *net.UDPConn.
func (c *UDPConn) opError(op string, addr netip.AddrPort, err error) error {
	e := &net.OpError{Op: op, Net: "udp4", Source: net.UDPAddrFromAddrPort(c.laddr), Err: err}
	if addr.IsValid() {
		e.Addr = net.UDPAddrFromAddrPort(addr)
	}
	return e
}
