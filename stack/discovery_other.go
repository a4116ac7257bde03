//go:build !linux

package stack

import (
	"net"
	"net/netip"
	"syscall"
)

// discoveryControl shares nothing outside Linux: the discovery socket gets
// port 3544 only when no other socket holds it, and otherwise the stack
// runs without local discovery.
func discoveryControl(_, _ string, _ syscall.RawConn) error { return nil }

// scopeMulticast keeps the system's multicast defaults (TTL 1 on the
// systems Go supports) outside Linux.
func scopeMulticast(syscallConn, *net.Interface) error {
	return nil
}

// linkSender has no way to pick the outgoing interface per datagram
// outside Linux: discovery bubbles go out once, where the routing table
// sends them.
func linkSender(syscallConn) (func(b []byte, to netip.AddrPort, ifindex int) error, error) {
	return nil, nil
}
