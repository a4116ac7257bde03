//go:build !linux || udpio_portable

package udpio

import (
	"errors"
	"net/netip"
)

// WriteToTTL implements TTLWriter. The portable socket has no per-datagram
// TTL (changing the socket's option would also hit concurrent writers), so it
// reports errors.ErrUnsupported and the caller sends with the default TTL.
func (c *UDPConn) WriteToTTL(b []byte, addr netip.AddrPort, ttl int) error {
	return c.opError("write", addr, errors.ErrUnsupported)
}
