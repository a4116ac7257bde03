// Package listener accepts TCP connections and UDP datagrams on a Teredo
// stack's address, following it across address changes.
package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/teredo-go/teredo/dialer"
)

// Network is the Teredo stack as a listener sees it; *stack.Stack
// implements it.
type Network interface {
	Netstack() *stack.Stack
	NICID() tcpip.NICID
	Addr() netip.Addr
}

// notReady returns why n cannot be used now, for networks that can tell:
// *stack.Stack's Ready method reports stack.ErrNotQualified before it has
// an address and net.ErrClosed after Close; others may have only Closed.
func notReady(n Network) error {
	if r, ok := n.(interface{ Ready() error }); ok {
		return r.Ready()
	}
	if c, ok := n.(interface{ Closed() bool }); ok && c.Closed() {
		return net.ErrClosed
	}
	return nil
}

// bindAddr parses "[host]:port" for a listener. The socket is bound to the
// NIC, not to an address, so that it keeps working when the Teredo address
// changes; host may therefore only be empty, unspecified or the current
// address.
func bindAddr(n Network, proto, network, address string) (tcpip.FullAddress, error) {
	switch network {
	case proto, proto + "6":
	default:
		return tcpip.FullAddress{}, net.UnknownNetworkError(network)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return tcpip.FullAddress{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		p, lerr := net.LookupPort(proto, portStr)
		if lerr != nil {
			return tcpip.FullAddress{}, lerr
		}
		port = uint64(p)
	}
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return tcpip.FullAddress{}, fmt.Errorf("listener: host %q is not an IP address", host)
		}
		if !a.IsUnspecified() && a.WithZone("") != n.Addr() {
			return tcpip.FullAddress{}, fmt.Errorf("listener: %v is not the stack's address %v: %w", a, n.Addr(), syscall.EADDRNOTAVAIL)
		}
	}
	return tcpip.FullAddress{NIC: n.NICID(), Port: uint16(port)}, nil
}

// Listener is a TCP listener on a Teredo stack.
type Listener struct {
	n      Network
	l      *gonet.TCPListener
	port   uint16
	closed atomic.Bool
}

var _ net.Listener = (*Listener)(nil)

// Listen listens for TCP connections on network "tcp" or "tcp6" at
// address ("[::]:port", ":port", or the Teredo address and a port; port 0
// picks one). Accepted connections are *dialer.TCPConn. Like a dial, it
// fails at once with stack.ErrNotQualified through a stack that has no
// Teredo address yet.
func Listen(n Network, network, address string) (*Listener, error) {
	if err := notReady(n); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	full, err := bindAddr(n, "tcp", network, address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l, err := gonet.ListenTCP(n.Netstack(), full, ipv6.ProtocolNumber)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: dialer.TranslateError(err)}
	}
	ln := &Listener{n: n, l: l}
	if a, ok := l.Addr().(*net.TCPAddr); ok {
		ln.port = uint16(a.Port)
	}
	return ln, nil
}

// Accept waits for the next connection. After Close it returns an error
// wrapping net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.l.Accept()
	if err != nil {
		if l.closed.Load() {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		}
		return nil, dialer.TranslateError(err)
	}
	tc, ok := c.(*gonet.TCPConn)
	if !ok {
		c.Close()
		return nil, errors.New("listener: gonet returned an unexpected connection type")
	}
	return dialer.NewTCPConn(tc), nil
}

// Close stops listening; pending and later Accepts fail with net.ErrClosed.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return l.l.Close()
}

// Addr returns the stack's current Teredo address with the listening port.
func (l *Listener) Addr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(l.n.Addr(), l.port))
}

// ListenPacket opens a UDP socket on network "udp" or "udp6" at address
// (as for Listen). The result is a *dialer.UDPConn.
func ListenPacket(n Network, network, address string) (*dialer.UDPConn, error) {
	if err := notReady(n); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	full, err := bindAddr(n, "udp", network, address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	c, err := gonet.DialUDP(n.Netstack(), &full, nil, ipv6.ProtocolNumber)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: dialer.TranslateError(err)}
	}
	return dialer.NewUDPConn(c), nil
}
