// Package dialer opens TCP and UDP connections from a Teredo stack to IPv6
// destinations, resolving names to AAAA records, with errors that errors.Is
// matches against the syscall errnos of a kernel socket.
package dialer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"

	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/proto"
)

// Network is the Teredo stack as the dialer and listener see it;
// *stack.Stack implements it.
type Network interface {
	// Netstack returns the gVisor stack.
	Netstack() *stack.Stack
	// NICID returns the NIC carrying the Teredo address.
	NICID() tcpip.NICID
	// Addr returns the current Teredo address.
	Addr() netip.Addr
	// Unreachable reports whether the tunnel has given up on reaching dst
	// (a Teredo peer that never answered its bubbles, a native destination
	// without a relay).
	Unreachable(dst netip.Addr) bool
}

// notReady returns why n cannot be used now, for networks that can tell:
// *stack.Stack's Ready method reports stack.ErrNotQualified before it has
// an address and net.ErrClosed after Close; others may have only Closed.
func notReady(n any) error {
	if r, ok := n.(interface{ Ready() error }); ok {
		return r.Ready()
	}
	if c, ok := n.(interface{ Closed() bool }); ok && c.Closed() {
		return net.ErrClosed
	}
	return nil
}

// Resolver looks up IP addresses; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ErrIPv4 reports a destination that only has IPv4 addresses: Teredo
// carries IPv6 only.
var ErrIPv4 = errors.New("dialer: destination is IPv4-only, Teredo reaches IPv6 only")

// DefaultPollInterval is how often a pending TCP dial asks the tunnel
// whether the peer has been found unreachable.
const DefaultPollInterval = 50 * time.Millisecond

// Dialer dials over a Network. Its zero value is not usable; set Network.
type Dialer struct {
	Network Network
	// Resolver resolves names; nil means the host's (net.DefaultResolver).
	Resolver Resolver
	// PollInterval overrides DefaultPollInterval.
	PollInterval time.Duration
}

// New returns a Dialer over n with the host's resolver.
func New(n Network) *Dialer { return &Dialer{Network: n} }

// Dial is DialContext with a background context.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext connects to address ("host:port", host an IPv6 literal or a
// name with AAAA records) over network "tcp", "tcp6", "udp" or "udp6", or
// opens an ICMPv6 echo socket to host over "ping" or "ping6".
// Addresses are tried in the resolver's order, sharing ctx's deadline.
// TCP connections are *TCPConn, UDP and ping ones *UDPConn. On a ping
// socket, each Write sends one ICMPv6 echo request given from its 8-byte
// header on (type 128; the stack sets the identifier and checksum), and
// each Read returns one echo reply from its header on. Through a stack
// that is not qualified (stack.Start returned before it was) it fails at
// once with the stack's stack.ErrNotQualified, which matches
// syscall.ENETUNREACH.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := notReady(d.Network); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var proto string
	switch network {
	case "tcp", "tcp6":
		proto = "tcp"
	case "udp", "udp6":
		proto = "udp"
	case "ping", "ping6":
		proto = "ping"
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	addrs, err := d.resolve(ctx, proto, address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var first error
	for i, ap := range addrs {
		if ctx.Err() != nil {
			if first == nil {
				first = &net.OpError{Op: "dial", Net: network, Addr: netAddr(proto, ap), Err: ctxError(ctx)}
			}
			break
		}
		dctx := ctx
		var cancel context.CancelFunc = func() {}
		if dl, ok := ctx.Deadline(); ok && len(addrs)-i > 1 {
			// Like the standard library: give each remaining address an
			// equal share of the time left.
			share := time.Until(dl) / time.Duration(len(addrs)-i)
			dctx, cancel = context.WithDeadline(ctx, time.Now().Add(share))
		}
		var c net.Conn
		switch proto {
		case "tcp":
			c, err = d.dialTCP(dctx, ap)
		case "udp":
			c, err = d.dialUDP(ap)
		default:
			c, err = d.dialPing(ap.Addr())
		}
		cancel()
		if err == nil {
			return c, nil
		}
		err = &net.OpError{Op: "dial", Net: network, Addr: netAddr(proto, ap), Err: err}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

func netAddr(proto string, ap netip.AddrPort) net.Addr {
	switch proto {
	case "tcp":
		return net.TCPAddrFromAddrPort(ap)
	case "ping":
		return &net.IPAddr{IP: ap.Addr().AsSlice()}
	}
	return net.UDPAddrFromAddrPort(ap)
}

// resolve turns address into IPv6 destinations.
func (d *Dialer) resolve(ctx context.Context, proto, address string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(address)
	if proto == "ping" {
		// A ping destination has no port; accept "host" and "host:0".
		if err != nil {
			host, portStr = strings.TrimSuffix(strings.TrimPrefix(address, "["), "]"), "0"
		}
		proto = "ip6"
	} else if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		p, lerr := net.LookupPort(proto, portStr)
		if lerr != nil {
			return nil, lerr
		}
		port = uint64(p)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() || a.Is4In6() {
			return nil, fmt.Errorf("%s: %w", host, ErrIPv4)
		}
		return []netip.AddrPort{netip.AddrPortFrom(a.WithZone(""), uint16(port))}, nil
	}
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, "ip6", host)
	var out []netip.AddrPort
	for _, a := range ips {
		if a.Is6() && !a.Is4In6() {
			out = append(out, netip.AddrPortFrom(a.WithZone(""), uint16(port)))
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	if ctx.Err() == nil {
		// Tell "IPv4-only" apart from "no such host".
		if v4, err4 := r.LookupNetIP(ctx, "ip4", host); err4 == nil && len(v4) > 0 {
			return nil, fmt.Errorf("%s: %w", host, ErrIPv4)
		}
	}
	if err == nil {
		err = &net.DNSError{Err: "no AAAA records", Name: host, IsNotFound: true}
	}
	return nil, err
}

// ctxError converts a context's end to the error a dial reports. A passed
// deadline matches both os.ErrDeadlineExceeded and context.DeadlineExceeded.
func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Msg: "i/o timeout", Sentinel: errors.Join(os.ErrDeadlineExceeded, context.DeadlineExceeded)}
	}
	return ctx.Err()
}

func (d *Dialer) unreachable(dst netip.Addr) error {
	return &Error{Msg: "no route to host: " + dst.String() + " unreachable over Teredo", Errno: syscall.EHOSTUNREACH}
}

func (d *Dialer) dialTCP(ctx context.Context, raddr netip.AddrPort) (net.Conn, error) {
	n := d.Network
	dst := raddr.Addr()
	if n.Unreachable(dst) {
		return nil, d.unreachable(dst)
	}
	if err := ctx.Err(); err != nil {
		return nil, ctxError(ctx)
	}
	var wq waiter.Queue
	ep, terr := n.Netstack().NewEndpoint(tcp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		return nil, FromTCPIP(terr)
	}
	// Connect reports completion (or failure) as writability.
	we, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)

	full := tcpip.FullAddress{NIC: n.NICID(), Addr: tcpip.AddrFrom16(dst.As16()), Port: raddr.Port()}
	terr = ep.Connect(full)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		poll := d.PollInterval
		if poll <= 0 {
			poll = DefaultPollInterval
		}
		t := time.NewTicker(poll)
		defer t.Stop()
	wait:
		for {
			select {
			case <-ctx.Done():
				ep.Close()
				return nil, ctxError(ctx)
			case <-notify:
				break wait
			case <-t.C:
				// gVisor ignores the ICMPv6 errors that would end the
				// handshake early; ask the tunnel instead of waiting for
				// the SYN retransmissions to give up after minutes.
				if n.Unreachable(dst) {
					ep.Close()
					return nil, d.unreachable(dst)
				}
			}
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		err := FromTCPIP(terr)
		if e := err.(*Error); e.Errno == syscall.ENETUNREACH && (proto.IsTeredo(dst) || n.Unreachable(dst)) {
			// The tunnel answers a peer that did not reply to its bubbles
			// (or a native host without a relay) with ICMPv6 "no route":
			// the host, not the Teredo network, is out of reach.
			return nil, d.unreachable(dst)
		}
		return nil, err
	}
	return NewTCPConn(gonet.NewTCPConn(&wq, ep)), nil
}

func (d *Dialer) dialUDP(raddr netip.AddrPort) (net.Conn, error) {
	n := d.Network
	if n.Unreachable(raddr.Addr()) {
		return nil, d.unreachable(raddr.Addr())
	}
	full := tcpip.FullAddress{NIC: n.NICID(), Addr: tcpip.AddrFrom16(raddr.Addr().As16()), Port: raddr.Port()}
	c, err := gonet.DialUDP(n.Netstack(), nil, &full, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fromMessage(err.Error())
	}
	return NewUDPConn(c), nil
}

func (d *Dialer) dialPing(dst netip.Addr) (net.Conn, error) {
	n := d.Network
	if n.Unreachable(dst) {
		return nil, d.unreachable(dst)
	}
	var wq waiter.Queue
	ep, terr := n.Netstack().NewEndpoint(icmp.ProtocolNumber6, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		return nil, FromTCPIP(terr)
	}
	if terr := ep.Connect(tcpip.FullAddress{NIC: n.NICID(), Addr: tcpip.AddrFrom16(dst.As16())}); terr != nil {
		ep.Close()
		return nil, FromTCPIP(terr)
	}
	// gonet's UDP adapter is a generic datagram-endpoint adapter: it works
	// for ICMP echo sockets too.
	return NewUDPConn(gonet.NewUDPConn(&wq, ep)), nil
}
