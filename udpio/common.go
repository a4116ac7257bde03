package udpio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
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

// The methods below are the same on every platform: both UDPConn
// implementations keep the socket in pc and the local address in laddr.

// WriteTo implements Conn.
func (c *UDPConn) WriteTo(b []byte, addr netip.AddrPort) error {
	ap, ok := ipv4(addr)
	if !ok {
		return c.opError("write", addr, ErrNotIPv4)
	}
	for retries := 0; ; retries++ {
		_, err := c.pc.WriteToUDPAddrPort(b, ap)
		if err == nil || retries == maxStaleRetries || !errors.Is(err, syscall.ECONNREFUSED) {
			return err
		}
		c.writeTransient.Add(1)
	}
}

// LocalAddr implements Conn.
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.laddr }

// SetReadDeadline implements Conn.
func (c *UDPConn) SetReadDeadline(t time.Time) error { return c.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for blocked writes.
func (c *UDPConn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }

// Close implements Conn.
func (c *UDPConn) Close() error { return c.pc.Close() }
