package stack

import (
	"context"
	"net"
	"net/http"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
)

// The methods below make a Stack a drop-in network for an application, as
// tailscale's tsnet.Server is: the standard net and net/http interfaces on the
// Teredo address. They are thin wrappers over packages dialer and listener,
// which stay for code that holds only a dialer.Network.

// Dial connects to address on the named network ("tcp", "tcp6", "udp",
// "udp6", "ping6") over the Teredo tunnel; see DialContext.
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, address)
}

// DialContext connects to address on the named network over the Teredo
// tunnel, resolving names to AAAA records with Config.Resolver. Errors match
// a kernel socket's (errors.Is with syscall.ECONNREFUSED, EHOSTUNREACH and
// the like); an IPv4-only destination fails with dialer.ErrIPv4.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d := dialer.Dialer{Network: s, Resolver: s.cfg.Resolver}
	return d.DialContext(ctx, network, address)
}

// Listen listens for TCP connections ("tcp" or "tcp6") on the Teredo
// address; address is ":port", "[::]:port" or the Teredo address and a port,
// and port 0 picks one. The listener keeps accepting across address changes.
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	ln, err := listener.Listen(s, network, address)
	if err != nil {
		return nil, err
	}
	return ln, nil
}

// ListenPacket opens a UDP socket ("udp" or "udp6") on the Teredo address,
// with the same addresses as Listen.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	c, err := listener.ListenPacket(s, network, address)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// HTTPClient returns an HTTP client whose connections go over the Teredo
// tunnel (see DialContext), with net/http's default timeouts and no proxy
// from the environment: a proxy would be reached over the tunnel too. Each
// call returns a client with its own transport; its connections end when
// the Stack closes.
func (s *Stack) HTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = s.DialContext
	return &http.Client{Transport: t}
}
