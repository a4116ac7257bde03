package stack

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/teredo-go/teredo/client"
)

// WriteToTTL implements client.TTLTransport, so that the client's
// hop-limited bubbles keep working when local discovery wraps the socket.
func (t *discoveryTransport) WriteToTTL(b []byte, to netip.AddrPort, ttl int) error {
	if w, ok := t.conn.(client.TTLTransport); ok {
		return w.WriteToTTL(b, to, ttl)
	}
	return fmt.Errorf("teredo: per-datagram TTL: %w", errors.ErrUnsupported)
}

var _ client.TTLTransport = (*discoveryTransport)(nil)
