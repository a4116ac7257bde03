//go:build !linux

package stack

import (
	"net"
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
