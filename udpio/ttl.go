package udpio

import (
	"errors"
	"net/netip"
)

// TTLWriter is implemented by a Conn that can send one datagram with an IPv4
// time-to-live other than the socket's default, without changing it for the
// datagrams sent concurrently. A Teredo client uses it for bubbles that must
// open its own NAT but die before they reach the peer's (see package client).
type TTLWriter interface {
	// WriteToTTL sends b as one datagram to addr with IPv4 TTL ttl (1-255).
	// Where the platform cannot set it per datagram, it returns an error
	// wrapping errors.ErrUnsupported and sends nothing.
	WriteToTTL(b []byte, addr netip.AddrPort, ttl int) error
}

// ErrBadTTL reports a TTL outside 1-255.
var ErrBadTTL = errors.New("udpio: TTL out of range 1-255")

var _ TTLWriter = (*UDPConn)(nil)
